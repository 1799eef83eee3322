"""What the EIR should answer for a simulated handset, at a simulated time.

Owns the simulator's own statement of the national regime (POLICY.md
"Decisions the EIR makes"), as a small table from a handset's *category*
(which the population chose when it made the handset) to its outcome. It
never asks ``eir.policy`` (DESIGN.md 3.5): a simulator that shared the
EIR's logic could only agree with it, and the audit must be able to judge
a vendor's EIR, or ours when it is wrong.

Outcome keys follow the simulator contract: "WHITELISTED", "GREYLISTED",
"BLACKLISTED" (a 2001 answer with that Equipment-Status, TS 29.272 7.3.51)
or "5422" (DIAMETER_ERROR_EQUIPMENT_UNKNOWN, TS 29.272 7.4.3; POLICY.md's
stricter regime in step 12). Reasons are POLICY.md's reason codes.

The table (POLICY.md step that decides, for the default regime):

================  =========  =================================================  ==========
category          role       outcome                                            step
================  =========  =================================================  ==========
white             registered WHITELISTED, the entry's reason (registered or     8
                  legalised  legalised)
grandfathered     observed   WHITELISTED ``grandfathered`` (first home          11
                             sighting before the cut-off)
grey_in_grace,    listed     GREYLISTED ``pending_verification`` while          9, 10
grey_near_expiry,            ``at < first_seen + grace``, then BLACKLISTED
grey_expired                 ``grace_expired`` (the entry's ``since`` is the
                             first sighting)
                  observed   as above, the clock being the first home           12
                             sighting; 5422 under a strict regime
stolen            home,      BLACKLISTED ``stolen``; a roamer too (roamers      3
                  roaming    are exempt from steps 5-12 only)
exception         owner      WHITELISTED ``paired_exception``                   2
                  other      BLACKLISTED ``stolen`` (same IMEI, another SIM)    3
counterfeit       unknown    BLACKLISTED ``unknown_tac``                        5
malformed         (variant)  BLACKLISTED ``malformed``                          1
roamer            known_tac, WHITELISTED ``roaming_exempt`` (before the TAC     4
                  unknown_tac check, so an unknown TAC does not matter)
m2m               module     WHITELISTED ``exempt_class``                       6
clone             owner      WHITELISTED ``registered`` (the registered pair)   7 skips, 8
                  first      WHITELISTED ``registered`` (the IMEI's first-seen  7 skips, 8
                             IMSI is never clone-suspected)
                  member     while the cluster is active: GREYLISTED            7
                             ``clone_suspected`` until its own first sighting
                             + grace, then BLACKLISTED ``clone_suspected``;
                             once the cluster lapses: WHITELISTED
                             ``registered``                                     8
brand_new         unseen     GREYLISTED ``pending_verification`` from the run's 12
                             first check (``first_sent``) until + grace, then
                             BLACKLISTED ``grace_expired``; 5422 under a
                             strict regime
================  =========  =================================================  ==========

Boundary instants. Time is integer UTC seconds on the EIR's side: grey
while ``now < deadline``, black from the deadline (POLICY.md "precise
meanings"). `expected` states that exactly; `changes_at` gives the next
instant an outcome changes, and `ambiguous` says when a check is too close
to it for the answer to be judged: the simulator's clock and the EIR's
differ by the request's latency times the clock speed, and a brand-new
device's clock starts when the EIR *receives* the first check, not when
the simulator sent it. The population itself places no deadline within a
guard band (six hours) of its start time.

A clone cluster is "active" while more than ``clone_threshold`` distinct
home IMSIs of the IMEI were seen within the window (POLICY.md step 7). The
population knows the last sighting of every cluster member as imported;
the check being judged refreshes its own IMSI. A run that keeps checking a
cluster's members keeps it active past the lapse computed here, which this
module cannot see, so `ambiguous` treats a member at or after its lapse as
unjudgeable rather than guess.

Expectations are defined for ``at`` at or after the population's start.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, NamedTuple

if TYPE_CHECKING:
    from simulator.population import Handset

__all__ = [
    "BLACKLISTED",
    "DEFAULT_CUTOFF",
    "GREYLISTED",
    "OUTCOMES",
    "TABLE",
    "UNKNOWN",
    "WHITELISTED",
    "Expectation",
    "Regime",
    "ambiguous",
    "changes_at",
    "clone_lapse",
    "expectation",
    "expected",
]

WHITELISTED: Final = "WHITELISTED"
GREYLISTED: Final = "GREYLISTED"
BLACKLISTED: Final = "BLACKLISTED"
UNKNOWN: Final = "5422"  # DIAMETER_ERROR_EQUIPMENT_UNKNOWN, TS 29.272 7.4.3
OUTCOMES: Final = (WHITELISTED, GREYLISTED, BLACKLISTED, UNKNOWN)

DAY: Final = 86_400
DEFAULT_CUTOFF: Final = "2025-05-25T00:00:00+05:00"  # POLICY.md: the extended cut-off


@dataclass(frozen=True, slots=True)
class Regime:
    """The regime parameters expectations depend on; defaults are POLICY.md's.

    ``strict``: step 12 answers 5422 instead of enrolling the device as grey.
    ``tac_db``: the EIR has a TAC database loaded (steps 5 and 6 apply).
    """

    grace_days: float = 30.0
    cutoff: str = DEFAULT_CUTOFF
    home_mccs: tuple[str, ...] = ("401",)
    strict: bool = False
    clone_threshold: int = 5
    clone_window_days: float = 30.0
    tac_db: bool = True
    grace_s: int = field(init=False, repr=False, compare=False)
    window_s: int = field(init=False, repr=False, compare=False)
    cutoff_epoch: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        cut = datetime.fromisoformat(self.cutoff)
        if cut.tzinfo is None:
            raise ValueError(f"cutoff {self.cutoff!r} needs a UTC offset")
        if not self.grace_days >= 0 or not self.clone_window_days > 0:
            raise ValueError("grace_days must be >= 0 and clone_window_days > 0")
        if self.clone_threshold < 1:
            raise ValueError("clone_threshold must be at least 1")
        for mcc in self.home_mccs:
            if len(mcc) != 3 or not (mcc.isascii() and mcc.isdigit()):
                raise ValueError(f"home MCC {mcc!r} is not 3 decimal digits")
        object.__setattr__(self, "home_mccs", tuple(self.home_mccs))
        object.__setattr__(self, "grace_s", round(self.grace_days * DAY))
        object.__setattr__(self, "window_s", round(self.clone_window_days * DAY))
        object.__setattr__(self, "cutoff_epoch", int(cut.timestamp()))

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for derived in ("grace_s", "window_s", "cutoff_epoch"):
            out.pop(derived)
        out["home_mccs"] = list(self.home_mccs)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Regime:
        known = {"grace_days", "cutoff", "home_mccs", "strict", "clone_threshold",
                 "clone_window_days", "tac_db"}
        kw = {k: v for k, v in data.items() if k in known}
        if "home_mccs" in kw:
            kw["home_mccs"] = tuple(kw["home_mccs"])
        return cls(**kw)


DEFAULT_REGIME: Final = Regime()


class Expectation(NamedTuple):
    """An expected outcome, its POLICY.md reason, and when it next changes (None: never)."""

    outcome: str
    reason: str
    until: int | None


Rule = Callable[["Handset", float, "float | None", Regime], Expectation]


def _fixed(outcome: str, reason: str) -> Rule:
    result = Expectation(outcome, reason, None)

    def rule(h: Handset, at: float, first_sent: float | None, r: Regime) -> Expectation:
        return result
    return rule


def _grace(at: float, start: float, r: Regime, grey: str, black: str) -> Expectation:
    # POLICY.md: grey while now < start + grace, black from that instant. The
    # EIR counts whole seconds; the first sighting is stored in whole seconds.
    deadline = int(start) + r.grace_s
    if at < deadline:
        return Expectation(GREYLISTED, grey, deadline)
    return Expectation(BLACKLISTED, black, None)


def _unknown_device(first_home: float | None, at: float, r: Regime) -> Expectation:
    """Steps 11-12: on no list; ``first_home`` the first home sighting (None: this check)."""
    if first_home is not None and first_home < r.cutoff_epoch:
        return Expectation(WHITELISTED, "grandfathered", None)
    if r.strict:
        return Expectation(UNKNOWN, "unknown", None)
    return _grace(at, first_home if first_home is not None else at, r,
                  "pending_verification", "grace_expired")


def _history(h: Handset, at: float, first_sent: float | None, r: Regime) -> Expectation:
    # Observed devices (grandfathered, implicitly enrolled grey): the imported
    # first sighting decides; the run's own checks come later and change nothing.
    return _unknown_device(h.first_seen, at, r)


def _unseen(h: Handset, at: float, first_sent: float | None, r: Regime) -> Expectation:
    # Never seen before the run: the clock starts at the run's first check of it
    # (a read-only question, first_sent None, sees a first sighting "now").
    return _unknown_device(first_sent, at, r)


def _grey_listed(h: Handset, at: float, first_sent: float | None, r: Regime) -> Expectation:
    assert h.first_seen is not None
    return _grace(at, h.first_seen, r, "pending_verification", "grace_expired")


def _grey(h: Handset, at: float, first_sent: float | None, r: Regime) -> Expectation:
    return (_grey_listed if h.role == "listed" else _history)(h, at, first_sent, r)


def _white(h: Handset, at: float, first_sent: float | None, r: Regime) -> Expectation:
    return Expectation(WHITELISTED, h.role, None)


def _exception(h: Handset, at: float, first_sent: float | None, r: Regime) -> Expectation:
    if h.role == "owner":
        return Expectation(WHITELISTED, "paired_exception", None)
    return Expectation(BLACKLISTED, "stolen", None)


def _tac_checked(outcome: str, reason: str) -> Rule:
    """Steps 5-6 decide only when a TAC database is loaded; else the device is unknown."""
    result = Expectation(outcome, reason, None)

    def rule(h: Handset, at: float, first_sent: float | None, r: Regime) -> Expectation:
        return result if r.tac_db else _unseen(h, at, first_sent, r)
    return rule


def _roamer(h: Handset, at: float, first_sent: float | None, r: Regime) -> Expectation:
    if h.imsi[:3] not in r.home_mccs:
        return Expectation(WHITELISTED, "roaming_exempt", None)
    # A regime that counts the roamer's country as home treats it as a new device.
    if h.role == "unknown_tac" and r.tac_db:
        return Expectation(BLACKLISTED, "unknown_tac", None)
    return _unseen(h, at, first_sent, r)


def clone_lapse(h: Handset, r: Regime) -> int | None:
    """The last second a clone member's cluster counts as active (None: never active).

    Active while more than ``clone_threshold`` home IMSIs were last seen
    within the window; the member's own check always counts (it refreshes
    its own sighting), so ``clone_threshold`` of the others must be recent.
    """
    others = list(h.cluster_seen)
    if h.last_seen is not None and h.last_seen in others:
        others.remove(h.last_seen)
    if len(others) < r.clone_threshold:
        return None
    others.sort(reverse=True)
    return others[r.clone_threshold - 1] + r.window_s


def _clone(h: Handset, at: float, first_sent: float | None, r: Regime) -> Expectation:
    registered = Expectation(WHITELISTED, "registered", None)
    if h.role != "member":
        return registered
    lapse = clone_lapse(h, r)
    if lapse is None or at >= lapse + 1:
        return registered
    assert h.first_seen is not None
    e = _grace(at, h.first_seen, r, "clone_suspected", "clone_suspected")
    until = lapse + 1 if e.until is None else min(e.until, lapse + 1)
    return Expectation(e.outcome, e.reason, until)


TABLE: Final[Mapping[str, Rule]] = MappingProxyType({
    "white": _white,
    "grandfathered": _history,
    "grey_in_grace": _grey,
    "grey_near_expiry": _grey,
    "grey_expired": _grey,
    "stolen": _fixed(BLACKLISTED, "stolen"),
    "exception": _exception,
    "counterfeit": _tac_checked(BLACKLISTED, "unknown_tac"),
    "malformed": _fixed(BLACKLISTED, "malformed"),
    "roamer": _roamer,
    "m2m": _tac_checked(WHITELISTED, "exempt_class"),
    "clone": _clone,
    "brand_new": _unseen,
})
"""Category -> rule giving its expectation; see the module docstring."""


def expectation(h: Handset, at: float, first_sent: float | None = None,
                regime: Regime = DEFAULT_REGIME) -> Expectation:
    """Outcome, reason and next change of ``h`` checked at ``at`` (UTC epoch seconds).

    ``first_sent``: when this run first sent the handset's (IMEI, IMSI);
    None if it has not yet (the check at ``at`` is then its first).
    """
    return TABLE[h.category](h, at, first_sent, regime)


def expected(h: Handset, at: float, first_sent: float | None = None,
             regime: Regime = DEFAULT_REGIME) -> str:
    """The expected outcome key of ``h`` checked at ``at``: see `expectation`."""
    return TABLE[h.category](h, at, first_sent, regime).outcome


def changes_at(h: Handset, at: float, first_sent: float | None = None,
               regime: Regime = DEFAULT_REGIME) -> int | None:
    """The next instant after ``at`` at which the expected outcome changes, if any."""
    return TABLE[h.category](h, at, first_sent, regime).until


def ambiguous(h: Handset, at: float, first_sent: float | None = None,
              regime: Regime = DEFAULT_REGIME, margin: float = 60.0) -> bool:
    """Whether a check at ``at`` is too close to a change of outcome to be judged.

    ``margin`` (simulated seconds) should cover clock skew and latency times
    the clock speed. A brand-new device is ambiguous near ``first_sent +
    grace`` (its clock started when the EIR received the first check); a
    clone member is ambiguous from ``margin`` before its cluster's lapse on,
    since the run's own checks may have kept the cluster active.
    """
    e = TABLE[h.category](h, at, first_sent, regime)
    if e.until is not None and e.until - at <= margin:
        return True
    if h.category == "clone" and h.role == "member":
        lapse = clone_lapse(h, regime)
        if lapse is not None and at >= lapse + 1 - margin:
            return True
    # Just past a change: the EIR may still have answered with the old outcome.
    before = TABLE[h.category](h, at - margin, first_sent, regime)
    return before.outcome != e.outcome
