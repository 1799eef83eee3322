"""The rule engine: `decide(facts, config) -> Decision`, a pure function.

Owns the rule order of POLICY.md ("Decisions the EIR makes"), every rule of
its table, and their knobs (`DecisionConfig`):

=====  ================  ===============================================  =====================
step   rule name         condition                                        answer, reason
=====  ================  ===============================================  =====================
1      malformed         IMEI not 14/15 digits, or a configured invalid   BLACKLISTED
                         pattern (all zeros by default)                   ``malformed``
2      paired_exception  black-listed and (IMEI, IMSI) is an exception    WHITELISTED
                                                                          ``paired_exception``
3      black             on the black list                                BLACKLISTED, entry's
4      roaming           IMSI's MCC is not a home MCC (inbound roamer)    WHITELISTED
                                                                          ``roaming_exempt``
5      unknown_tac       a TAC database is loaded and lacks the TAC       BLACKLISTED
                                                                          ``unknown_tac``
6      exempt_class      the TAC's device class is exempt (M2M)           WHITELISTED
                                                                          ``exempt_class``
7      clone             more than N home IMSIs within the window, and    GREYLISTED until the
                         this IMSI is neither a pair nor the first seen   pair's grace ends,
                                                                          then BLACKLISTED;
                                                                          ``clone_suspected``
8      white             on the white list                                WHITELISTED, entry's
9-10   grey              on the grey list: grey until the entry's grace   GREYLISTED
                         end (``grace_until``, else since + grace),       ``pending_verification``
                         black from that instant                          / BLACKLISTED
                                                                          ``grace_expired``
11     grandfathered     on no list, first home sighting before cut-off   WHITELISTED
                                                                          ``grandfathered``
12     unknown           on no list: grey from the first home sighting    GREYLISTED
                         for the grace period, then black; or 5422        ``pending_verification``
                         under a strict regime                            / ``grace_expired`` /
                                                                          5422 ``unknown``
=====  ================  ===============================================  =====================

The rules are a named table (`RULES`) walked in the order given by
`DecisionConfig.rule_order`; leaving a name out switches that rule off.
The last rule must always decide ("unknown").

Precise meanings (POLICY.md): time is UTC epoch seconds and comes in as
``Facts.now``; grey while ``now < start + grace``, black from that instant;
without an IMSI the roaming and clone rules cannot apply and pass; roamers
are exempt from steps 5 to 12 but not from the black list (steps 1 to 3
come first).

The engine never reads a clock, a database or a socket: everything it
looks at is in `Facts` (DESIGN.md sections 3 and 4). Decisions that do not
depend on time are interned, because the same few (status, reason, list)
triples recur millions of times and a dataclass is not free to build.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from types import MappingProxyType
from typing import Final, Literal

from eir.policy.model import Decision, Facts, ListName, Reason, Status

__all__ = [
    "DEFAULT_CUTOFF",
    "DEFAULT_INVALID_IMEI_PATTERNS",
    "DEFAULT_RULE_ORDER",
    "RULES",
    "DecisionConfig",
    "Facts",
    "Rule",
    "UnknownEquipment",
    "decide",
]

UnknownEquipment = Literal["greylist", "reject"]

Rule = Callable[[Facts, "DecisionConfig"], Decision | None]
"""A rule returns a Decision when it applies, None to pass to the next rule."""

DAY: Final = 86_400

# POLICY.md rule 1: all zeros is never a real IMEI. The GSMA test range
# (reporting body 00, i.e. r"00\d{12}") is a deployment choice, so it is
# not on by default.
DEFAULT_INVALID_IMEI_PATTERNS: Final[tuple[str, ...]] = (r"0{14}",)
_ALL_ZEROS: Final = "0" * 14

# POLICY.md "precise meanings": the extended cut-off, 25 May 2025 in Astana.
DEFAULT_CUTOFF: Final = "2025-05-25T00:00:00+05:00"


@dataclass(frozen=True, slots=True)
class DecisionConfig:
    """The knobs of the rule order; defaults follow POLICY.md.

    ``unknown_equipment``: "greylist" (step 12) or "reject", which answers
    EQUIPMENT_UNKNOWN (5422) for an IMEI on no list, the stricter regime
    POLICY.md allows.
    ``invalid_imei_patterns``: regular expressions matched against the whole
    14-digit IMEI; a match is BLACKLISTED ``malformed``.
    ``home_mccs``: MCCs of home networks (Kazakhstan 401); an IMSI from any
    other is an inbound roamer.
    ``exempt_classes``: TAC device classes (lower case) answered WHITELISTED.
    ``grace_days``: the grey grace period; ``cutoff``: ISO 8601 instant
    before which a first home sighting grandfathers a device.
    ``clone_threshold`` / ``clone_window_days``: more than this many distinct
    home IMSIs within the window makes an IMEI clone-suspected.
    ``rule_order``: names from `RULES`, walked in order; the last one must be
    "unknown".
    """

    unknown_equipment: UnknownEquipment = "greylist"
    invalid_imei_patterns: tuple[str, ...] = DEFAULT_INVALID_IMEI_PATTERNS
    rule_order: tuple[str, ...] = ()
    home_mccs: tuple[str, ...] = ("401",)
    exempt_classes: tuple[str, ...] = ("m2m",)
    grace_days: float = 30.0
    cutoff: str = DEFAULT_CUTOFF
    clone_threshold: int = 5
    clone_window_days: float = 30.0
    # Derived once here so that decide() does no per-call preparation.
    _invalid_re: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    _zeros_only: bool = field(init=False, repr=False, compare=False)
    _rules: tuple[Rule, ...] = field(init=False, repr=False, compare=False)
    _home: frozenset[str] = field(init=False, repr=False, compare=False)
    _exempt: frozenset[str] = field(init=False, repr=False, compare=False)
    grace_seconds: int = field(init=False, repr=False, compare=False)
    clone_window_seconds: int = field(init=False, repr=False, compare=False)
    cutoff_epoch: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.unknown_equipment not in ("greylist", "reject"):
            raise ValueError(
                f"unknown_equipment must be 'greylist' or 'reject', got {self.unknown_equipment!r}"
            )
        order = self.rule_order or DEFAULT_RULE_ORDER
        unknown = [name for name in order if name not in RULES]
        if unknown:
            raise ValueError(f"rule_order: unknown rule(s) {unknown}; known: {sorted(RULES)}")
        if len(set(order)) != len(order):
            raise ValueError(f"rule_order names a rule twice: {order}")
        if order[-1] not in TERMINAL_RULES:
            raise ValueError(f"rule_order must end with one of {sorted(TERMINAL_RULES)}")
        for mcc in self.home_mccs:
            if len(mcc) != 3 or not (mcc.isascii() and mcc.isdigit()):
                raise ValueError(f"home_mccs: {mcc!r} is not 3 decimal digits")
        # A century bounds both: deadlines must stay dates a calendar can print.
        if not (math.isfinite(self.grace_days) and 0 <= self.grace_days <= 36_500):
            raise ValueError("grace_days must be between 0 and 36500")
        if not (math.isfinite(self.clone_window_days) and 0 < self.clone_window_days <= 36_500):
            raise ValueError("clone_window_days must be positive, at most 36500")
        if self.clone_threshold < 1:
            raise ValueError("clone_threshold must be at least 1")
        try:
            cutoff = datetime.fromisoformat(self.cutoff)
        except ValueError:
            raise ValueError(f"cutoff {self.cutoff!r} is not an ISO 8601 timestamp") from None
        if cutoff.tzinfo is None:
            raise ValueError(f"cutoff {self.cutoff!r} needs a UTC offset (POLICY.md: UTC)")
        object.__setattr__(self, "rule_order", tuple(order))
        object.__setattr__(self, "_rules", tuple(RULES[name] for name in order))
        patterns = tuple(self.invalid_imei_patterns)
        compiled: re.Pattern[str] | None = None
        if patterns:
            try:
                # One alternation: one regex call per check however many patterns.
                compiled = re.compile("|".join(f"(?:{p})" for p in patterns))
            except re.error as exc:
                raise ValueError(f"invalid_imei_patterns: {patterns!r}: {exc}") from exc
        object.__setattr__(self, "invalid_imei_patterns", patterns)
        # The default pattern is a string compare, not a regex call per ECR.
        object.__setattr__(self, "_zeros_only", patterns == DEFAULT_INVALID_IMEI_PATTERNS)
        object.__setattr__(self, "_invalid_re", compiled)
        object.__setattr__(self, "home_mccs", tuple(self.home_mccs))
        object.__setattr__(self, "_home", frozenset(self.home_mccs))
        exempt = tuple(c.strip().lower() for c in self.exempt_classes)
        object.__setattr__(self, "exempt_classes", exempt)
        object.__setattr__(self, "_exempt", frozenset(exempt))
        object.__setattr__(self, "grace_seconds", round(self.grace_days * DAY))
        object.__setattr__(self, "clone_window_seconds", round(self.clone_window_days * DAY))
        object.__setattr__(self, "cutoff_epoch", int(cutoff.timestamp()))

    def is_home(self, imsi: str | None) -> bool:
        """Whether a sighting with this IMSI is on a home network (no IMSI: assume so)."""
        return imsi is None or imsi[:3] in self._home


def decide(facts: Facts, config: DecisionConfig) -> Decision:
    """Walk the configured rules and return the first decision."""
    for rule in config._rules:
        decision = rule(facts, config)
        if decision is not None:
            return decision
    # DecisionConfig guarantees a terminal rule; reaching here is a bug.
    raise AssertionError(f"no rule decided for {facts!r}")


@lru_cache(maxsize=4096)
def _decision(status: Status | None, reason: str, list_: str | None, rule: str) -> Decision:
    return Decision(status=status, reason=reason, list=list_, rule=rule)


# Plain str values (not the enum members) so decisions print and compare
# the same whether their reason came from the engine or from a list entry.
_MALFORMED_FORMAT: Final = Decision(
    Status.BLACKLISTED, Reason.MALFORMED.value, None, "IMEI is not 14 or 15 decimal digits",
    "malformed",
)
_MALFORMED_PATTERN: Final = Decision(
    Status.BLACKLISTED, Reason.MALFORMED.value, None, "IMEI matches a configured invalid pattern",
    "malformed",
)
_PAIRED_EXCEPTION: Final = Decision(
    Status.WHITELISTED, Reason.PAIRED_EXCEPTION.value, ListName.BLACK.value, None,
    "paired_exception",
)
_ROAMING: Final = Decision(
    Status.WHITELISTED, Reason.ROAMING_EXEMPT.value, None, None, "roaming"
)
_UNKNOWN_TAC: Final = Decision(
    Status.BLACKLISTED, Reason.UNKNOWN_TAC.value, None, "TAC not in the TAC database",
    "unknown_tac",
)
_GRANDFATHERED: Final = Decision(
    Status.WHITELISTED, Reason.GRANDFATHERED.value, None, "first seen before the cut-off",
    "grandfathered",
)
_UNKNOWN_REJECT: Final = Decision(None, Reason.UNKNOWN.value, None, None, "unknown")


def _grace(
    now: int, deadline: int, list_: str | None, rule: str, grey_reason: str, black_reason: str
) -> Decision:
    """Grey while ``now < deadline``, black from that instant (POLICY.md)."""
    if now < deadline:
        days = -(-(deadline - now) // DAY)  # whole days left, rounded up
        return Decision(
            Status.GREYLISTED, grey_reason, list_, f"{days} day(s) of grace left", rule, deadline
        )
    return Decision(Status.BLACKLISTED, black_reason, list_, "grace period over", rule, deadline)


def _rule_malformed(facts: Facts, config: DecisionConfig) -> Decision | None:
    imei14 = facts.imei14
    if imei14 is None:
        return _MALFORMED_FORMAT
    if config._zeros_only:
        return _MALFORMED_PATTERN if imei14 == _ALL_ZEROS else None
    invalid = config._invalid_re
    if invalid is not None and invalid.fullmatch(imei14):
        return _MALFORMED_PATTERN
    return None


def _rule_paired_exception(facts: Facts, config: DecisionConfig) -> Decision | None:
    # POLICY.md step 2: the pair only lifts a black-list block; on any other
    # list the IMEI's own entry (or absence) still decides.
    entry = facts.entry
    if facts.pair_is_exception and entry is not None and entry.list is ListName.BLACK:
        return _PAIRED_EXCEPTION
    return None


def _rule_black(facts: Facts, config: DecisionConfig) -> Decision | None:
    entry = facts.entry
    if entry is not None and entry.list is ListName.BLACK:
        return _decision(Status.BLACKLISTED, entry.reason, "black", "black")
    return None


def _rule_roaming(facts: Facts, config: DecisionConfig) -> Decision | None:
    imsi = facts.imsi
    if imsi is not None and imsi[:3] not in config._home:
        return _ROAMING
    return None


def _rule_unknown_tac(facts: Facts, config: DecisionConfig) -> Decision | None:
    return _UNKNOWN_TAC if facts.tac_known is False else None


def _rule_exempt_class(facts: Facts, config: DecisionConfig) -> Decision | None:
    cls = facts.device_class
    if facts.tac_known and cls is not None and cls in config._exempt:
        return _decision(Status.WHITELISTED, Reason.EXEMPT_CLASS.value, None, "exempt_class")
    return None


def _rule_clone(facts: Facts, config: DecisionConfig) -> Decision | None:
    seen = facts.sightings
    imsi = facts.imsi
    threshold = config.clone_threshold
    # len() first: almost every IMEI has one IMSI, and the window count is a loop.
    if seen is None or imsi is None or len(seen.imsis) <= threshold:
        return None
    if imsi == seen.first_imsi or facts.pair_is_exception:
        return None
    if seen.home_imsis_since(facts.now - config.clone_window_seconds) <= threshold:
        return None
    first = seen.pair_first_seen(imsi)
    start = facts.now if first is None else first
    clone = Reason.CLONE_SUSPECTED.value
    entry = facts.entry
    return _grace(facts.now, start + config.grace_seconds, entry.list.value if entry else None,
                  "clone", clone, clone)


def _rule_white(facts: Facts, config: DecisionConfig) -> Decision | None:
    entry = facts.entry
    if entry is not None and entry.list is ListName.WHITE:
        return _decision(Status.WHITELISTED, entry.reason, "white", "white")
    return None


def _rule_grey(facts: Facts, config: DecisionConfig) -> Decision | None:
    entry = facts.entry
    if entry is None or entry.list is not ListName.GREY:
        return None
    deadline = facts.entry_grace_until
    if deadline is None:
        since = facts.entry_since if facts.entry_since is not None else facts.now
        deadline = since + config.grace_seconds
    return _grace(facts.now, deadline, "grey", "grey", entry.reason,
                  Reason.GRACE_EXPIRED.value)


def _rule_grandfathered(facts: Facts, config: DecisionConfig) -> Decision | None:
    seen = facts.sightings
    if facts.entry is None and seen is not None and seen.first_home is not None \
            and seen.first_home < config.cutoff_epoch:
        return _GRANDFATHERED
    return None


def _rule_unknown(facts: Facts, config: DecisionConfig) -> Decision:
    # Reached only when no earlier rule matched, i.e. the IMEI is on no list
    # (or on one the configured order chose to skip).
    if config.unknown_equipment == "reject":
        return _UNKNOWN_REJECT
    seen = facts.sightings
    first = seen.first_home if seen is not None else None
    start = facts.now if first is None else first
    return _grace(facts.now, start + config.grace_seconds, None, "unknown",
                  Reason.PENDING_VERIFICATION.value, Reason.GRACE_EXPIRED.value)


RULES: Final[Mapping[str, Rule]] = MappingProxyType(
    {
        "malformed": _rule_malformed,
        "paired_exception": _rule_paired_exception,
        "black": _rule_black,
        "roaming": _rule_roaming,
        "unknown_tac": _rule_unknown_tac,
        "exempt_class": _rule_exempt_class,
        "clone": _rule_clone,
        "white": _rule_white,
        "grey": _rule_grey,
        "grandfathered": _rule_grandfathered,
        "unknown": _rule_unknown,
    }
)

TERMINAL_RULES: Final[frozenset[str]] = frozenset({"unknown"})

DEFAULT_RULE_ORDER: Final[tuple[str, ...]] = tuple(RULES)
"""POLICY.md's order: the order of `RULES` above."""

PLAIN_LIST_ORDER: Final[tuple[str, ...]] = (
    "malformed", "paired_exception", "black", "white", "grey", "unknown",
)
"""The plain list lookup of today's EIRs, for comparison (bench) and simple deployments."""
