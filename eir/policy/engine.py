"""The rule engine: `decide(facts, config) -> Decision`, a pure function.

Owns the rule order of POLICY.md ("Decisions the EIR makes"). This issue
implements the plain list lookup, which is the subset of that table that
needs no time, no observations and no TAC database:

====  ==================  ==========================================  ==========
rule  POLICY.md step      condition                                   answer
====  ==================  ==========================================  ==========
1     1                   IMEI malformed or a configured invalid       BLACKLISTED
                          pattern (all zeros by default)               ``malformed``
2     2                   on the black list and (IMEI, IMSI) is a      WHITELISTED
                          registered exception pair                    ``paired_exception``
3     3                   on the black list                            BLACKLISTED, entry's reason
4     9 (no grace yet)    on the grey list                             GREYLISTED, entry's reason
5     8                   on the white list                            WHITELISTED, entry's reason
6     12 (no grace yet)   unknown                                      GREYLISTED ``unknown``, or
                                                                       EQUIPMENT_UNKNOWN (5422)
====  ==================  ==========================================  ==========

The rules are a named table (`RULES`) walked in the order given by
`DecisionConfig.rule_order`, so the remaining national rules (roaming,
TAC, clones, grace, grandfathering) slot in as new table rows without
touching the existing ones. The last rule must always decide.

The engine never reads a clock, a database or a socket: everything it
looks at is in `Facts` (DESIGN.md sections 3 and 4). Decisions for list
entries are interned, because the same few (status, reason, list) triples
recur millions of times and a frozen dataclass is not free to build.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Final, Literal

from eir.policy.model import Decision, Facts, ListEntry, ListName, Reason, Status

__all__ = [
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

# POLICY.md rule 1: all zeros is never a real IMEI. The GSMA test range
# (reporting body 00, i.e. r"00\d{12}") is a deployment choice, so it is
# not on by default.
DEFAULT_INVALID_IMEI_PATTERNS: Final[tuple[str, ...]] = (r"0{14}",)


@dataclass(frozen=True, slots=True)
class DecisionConfig:
    """The knobs of the rule order; defaults follow POLICY.md.

    ``unknown_equipment``: "greylist" answers GREYLISTED ``unknown`` for an
    IMEI on no list; "reject" answers EQUIPMENT_UNKNOWN (5422), the stricter
    regime POLICY.md allows in step 12.

    ``invalid_imei_patterns``: regular expressions matched against the whole
    14-digit IMEI; a match is BLACKLISTED ``malformed``.

    ``rule_order``: names from `RULES`, walked in order; the last one must be
    a rule that always decides ("unknown").
    """

    unknown_equipment: UnknownEquipment = "greylist"
    invalid_imei_patterns: tuple[str, ...] = DEFAULT_INVALID_IMEI_PATTERNS
    rule_order: tuple[str, ...] = ()
    # Derived once here so that decide() does no per-call preparation.
    _invalid_re: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    _rules: tuple[Rule, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.unknown_equipment not in ("greylist", "reject"):
            raise ValueError(
                f"unknown_equipment must be 'greylist' or 'reject', got {self.unknown_equipment!r}"
            )
        order = self.rule_order or DEFAULT_RULE_ORDER
        unknown = [name for name in order if name not in RULES]
        if unknown:
            raise ValueError(f"unknown rule(s) {unknown}; known: {sorted(RULES)}")
        if len(set(order)) != len(order):
            raise ValueError(f"rule_order names a rule twice: {order}")
        if order[-1] not in TERMINAL_RULES:
            raise ValueError(f"rule_order must end with one of {sorted(TERMINAL_RULES)}")
        object.__setattr__(self, "rule_order", tuple(order))
        object.__setattr__(self, "_rules", tuple(RULES[name] for name in order))
        patterns = tuple(self.invalid_imei_patterns)
        compiled: re.Pattern[str] | None = None
        if patterns:
            try:
                # One alternation: one regex call per check however many patterns.
                compiled = re.compile("|".join(f"(?:{p})" for p in patterns))
            except re.error as exc:
                raise ValueError(f"invalid IMEI pattern in {patterns!r}: {exc}") from exc
        object.__setattr__(self, "invalid_imei_patterns", patterns)
        object.__setattr__(self, "_invalid_re", compiled)


def decide(facts: Facts, config: DecisionConfig) -> Decision:
    """Walk the configured rules and return the first decision."""
    for rule in config._rules:
        decision = rule(facts, config)
        if decision is not None:
            return decision
    # DecisionConfig guarantees a terminal rule; reaching here is a bug.
    raise AssertionError(f"no rule decided for {facts!r}")


@lru_cache(maxsize=4096)
def _decision(status: Status | None, reason: str, list_: str | None) -> Decision:
    return Decision(status=status, reason=reason, list=list_)


# Plain str values (not the enum members) so decisions print and compare
# the same whether their reason came from the engine or from a list entry.
_MALFORMED_FORMAT: Final = Decision(
    Status.BLACKLISTED, Reason.MALFORMED.value, None, "IMEI is not 14 or 15 decimal digits"
)
_MALFORMED_PATTERN: Final = Decision(
    Status.BLACKLISTED, Reason.MALFORMED.value, None, "IMEI matches a configured invalid pattern"
)
_PAIRED_EXCEPTION: Final = Decision(
    Status.WHITELISTED, Reason.PAIRED_EXCEPTION.value, ListName.BLACK.value
)
_UNKNOWN_GREY: Final = Decision(Status.GREYLISTED, Reason.UNKNOWN.value, None)
_UNKNOWN_REJECT: Final = Decision(None, Reason.UNKNOWN.value, None)


def _rule_malformed(facts: Facts, config: DecisionConfig) -> Decision | None:
    if facts.imei14 is None:
        return _MALFORMED_FORMAT
    invalid = config._invalid_re
    if invalid is not None and invalid.fullmatch(facts.imei14):
        return _MALFORMED_PATTERN
    return None


def _rule_paired_exception(facts: Facts, config: DecisionConfig) -> Decision | None:
    # POLICY.md step 2: the pair only lifts a black-list block; on any other
    # list the IMEI's own entry (or absence) still decides.
    entry = facts.entry
    if facts.pair_is_exception and entry is not None and entry.list is ListName.BLACK:
        return _PAIRED_EXCEPTION
    return None


def _list_rule(list_name: ListName, status: Status) -> Rule:
    def rule(facts: Facts, config: DecisionConfig) -> Decision | None:
        entry: ListEntry | None = facts.entry
        if entry is not None and entry.list is list_name:
            return _decision(status, entry.reason, list_name.value)
        return None

    rule.__name__ = f"_rule_{list_name.value}"
    return rule


def _rule_unknown(facts: Facts, config: DecisionConfig) -> Decision | None:
    # Reached only when no earlier rule matched, i.e. the IMEI is on no list
    # (or on one the configured order chose to skip).
    return _UNKNOWN_REJECT if config.unknown_equipment == "reject" else _UNKNOWN_GREY


RULES: Final[Mapping[str, Rule]] = MappingProxyType(
    {
        "malformed": _rule_malformed,
        "paired_exception": _rule_paired_exception,
        "black": _list_rule(ListName.BLACK, Status.BLACKLISTED),
        "grey": _list_rule(ListName.GREY, Status.GREYLISTED),
        "white": _list_rule(ListName.WHITE, Status.WHITELISTED),
        "unknown": _rule_unknown,
    }
)

TERMINAL_RULES: Final[frozenset[str]] = frozenset({"unknown"})

DEFAULT_RULE_ORDER: Final[tuple[str, ...]] = (
    "malformed",
    "paired_exception",
    "black",
    "grey",
    "white",
    "unknown",
)
