"""The simulator's expectation table, on hand-made handsets: rules, boundaries, regimes.

The agreement of this table with the real EIR over a whole population is in
test_population.py; here each row of the table and each boundary is pinned
on its own, with times written out, so a change to the table that the EIR
happens to share would still be caught.
"""

from __future__ import annotations

import pytest

from simulator import expect
from simulator.expect import (
    BLACKLISTED,
    GREYLISTED,
    TABLE,
    UNKNOWN,
    WHITELISTED,
    Expectation,
    Regime,
    ambiguous,
    changes_at,
    clone_lapse,
    expectation,
    expected,
)
from simulator.population import CATEGORIES, Handset

DAY = 86_400
START = 1_772_409_600  # 2026-03-02T00:00:00Z
CUTOFF = 1_748_113_200  # 2025-05-25T00:00:00+05:00
STRICT = Regime(strict=True)


def hs(category: str, role: str = "", *, imsi: str = "401011234567890",
       first_seen: int | None = None, last_seen: int | None = None,
       cluster_seen: tuple[int, ...] = ()) -> Handset:
    return Handset(0, category, role, "35209900176148", imsi, "01",
                   "epc.mnc001.mcc401.3gppnetwork.org", first_seen, last_seen,
                   0 if cluster_seen else None, cluster_seen)


def test_defaults_are_policy_md() -> None:
    r = Regime()
    assert (r.grace_days, r.grace_s, r.home_mccs, r.strict) == (30.0, 30 * DAY, ("401",), False)
    assert (r.clone_threshold, r.window_s, r.tac_db) == (5, 30 * DAY, True)
    assert r.cutoff_epoch == CUTOFF
    assert Regime.from_json(r.to_json()) == r
    assert Regime.from_json({"grace_days": 10, "home_mccs": ["401", "250"],
                             "ignored": 1}) == Regime(grace_days=10, home_mccs=("401", "250"))
    for bad in ({"cutoff": "2025-05-25T00:00:00"}, {"home_mccs": ("40",)},
                {"clone_threshold": 0}, {"grace_days": -1}):
        with pytest.raises(ValueError):
            Regime(**bad)


def test_the_table_covers_every_category() -> None:
    assert set(TABLE) == set(CATEGORIES)


@pytest.mark.parametrize(("h", "outcome", "reason"), [
    (hs("white", "registered"), WHITELISTED, "registered"),
    (hs("white", "legalised"), WHITELISTED, "legalised"),
    (hs("stolen", "home"), BLACKLISTED, "stolen"),
    (hs("stolen", "roaming", imsi="250011234567890"), BLACKLISTED, "stolen"),
    (hs("exception", "owner"), WHITELISTED, "paired_exception"),
    (hs("exception", "other"), BLACKLISTED, "stolen"),
    (hs("counterfeit", "unknown"), BLACKLISTED, "unknown_tac"),
    (hs("malformed", "zeros"), BLACKLISTED, "malformed"),
    (hs("roamer", "known_tac", imsi="250011234567890"), WHITELISTED, "roaming_exempt"),
    (hs("roamer", "unknown_tac", imsi="310260123456789"), WHITELISTED, "roaming_exempt"),
    (hs("m2m", "module"), WHITELISTED, "exempt_class"),
    (hs("grandfathered", "observed", first_seen=CUTOFF - 1), WHITELISTED, "grandfathered"),
    (hs("brand_new", "unseen"), GREYLISTED, "pending_verification"),
])
def test_fixed_rows(h: Handset, outcome: str, reason: str) -> None:
    for at in (START, START + 400 * DAY):
        assert expectation(h, at) == Expectation(outcome, reason, None if outcome != GREYLISTED
                                                 else at + 30 * DAY)


@pytest.mark.parametrize("category", ["grey_in_grace", "grey_near_expiry", "grey_expired"])
@pytest.mark.parametrize("role", ["listed", "observed"])
def test_grey_is_grey_until_the_deadline_and_black_from_it(category: str, role: str) -> None:
    first = START - 10 * DAY
    h = hs(category, role, first_seen=first, last_seen=first)
    deadline = first + 30 * DAY
    assert expectation(h, START) == Expectation(GREYLISTED, "pending_verification", deadline)
    assert expected(h, deadline - 1) == expected(h, deadline - 0.001) == GREYLISTED
    assert expectation(h, deadline) == Expectation(BLACKLISTED, "grace_expired", None)
    # a strict regime refuses devices enrolled by sighting only; an entry still counts
    assert expected(h, START, regime=STRICT) == (GREYLISTED if role == "listed" else UNKNOWN)
    # a longer grace moves the deadline
    assert expected(h, deadline, regime=Regime(grace_days=45)) == GREYLISTED


def test_a_first_sighting_at_the_cutoff_is_not_grandfathered() -> None:
    h = hs("grandfathered", "observed", first_seen=CUTOFF, last_seen=CUTOFF)
    assert expectation(h, CUTOFF + DAY).outcome == GREYLISTED
    # under a regime with a later cut-off it is
    assert expected(h, START, regime=Regime(cutoff="2025-06-01T00:00:00+05:00")) == WHITELISTED


def test_brand_new_clock_starts_at_the_first_check() -> None:
    h = hs("brand_new", "unseen")
    first = START + 3 * DAY
    assert expectation(h, first, first).until == first + 30 * DAY
    assert expected(h, first + 30 * DAY - 1, first) == GREYLISTED
    assert expectation(h, first + 30 * DAY, first) == Expectation(BLACKLISTED, "grace_expired",
                                                                  None)
    assert expected(h, START, None, STRICT) == UNKNOWN
    assert expected(h, first + 90 * DAY, first, STRICT) == UNKNOWN


def test_tac_and_roaming_rows_follow_the_regime() -> None:
    no_tacs = Regime(tac_db=False)
    assert expected(hs("counterfeit", "unknown"), START, None, no_tacs) == GREYLISTED
    assert expected(hs("m2m", "module"), START, None, no_tacs) == GREYLISTED
    home_too = Regime(home_mccs=("401", "250"))
    assert expected(hs("roamer", "known_tac", imsi="250011234567890"), START, None,
                    home_too) == GREYLISTED
    assert expectation(hs("roamer", "unknown_tac", imsi="250011234567890"), START, None,
                       home_too) == Expectation(BLACKLISTED, "unknown_tac", None)


def cluster(member_last: int, others: tuple[int, ...], first: int) -> Handset:
    return hs("clone", "member", first_seen=first, last_seen=member_last,
              cluster_seen=tuple(sorted((member_last, *others), reverse=True)))


def test_clone_member_grey_then_black_while_the_cluster_is_active() -> None:
    recent = tuple(START - k * 3600 for k in range(1, 8))  # 7 others, last seen hours ago
    first = START - 20 * DAY
    h = cluster(START - DAY, recent, first)
    lapse = clone_lapse(h, Regime())
    # the 5th most recent other IMSI falls out of the window last
    assert lapse == recent[4] + 30 * DAY
    assert expectation(h, START) == Expectation(GREYLISTED, "clone_suspected", first + 30 * DAY)
    assert expectation(h, first + 30 * DAY) == Expectation(BLACKLISTED, "clone_suspected",
                                                           lapse + 1)
    assert expected(h, lapse) == BLACKLISTED
    assert expectation(h, lapse + 1) == Expectation(WHITELISTED, "registered", None)
    # a higher threshold needs more recent IMSIs than the cluster has
    assert clone_lapse(h, Regime(clone_threshold=8)) is None
    assert expected(h, START, regime=Regime(clone_threshold=8)) == WHITELISTED
    # the member's own stale sighting does not matter: its check refreshes it
    stale = cluster(START - 300 * DAY, recent, first)
    assert clone_lapse(stale, Regime()) == lapse


@pytest.mark.parametrize("role", ["owner", "first"])
def test_clone_owner_and_first_seen_are_white(role: str) -> None:
    h = hs("clone", role, first_seen=START - 90 * DAY, last_seen=START,
           cluster_seen=(START,) * 9)
    assert expectation(h, START) == Expectation(WHITELISTED, "registered", None)
    assert expected(h, START, regime=STRICT) == WHITELISTED


def test_ambiguous_near_changes_only() -> None:
    first = START - 10 * DAY
    h = hs("grey_in_grace", "listed", first_seen=first, last_seen=first)
    deadline = first + 30 * DAY
    assert not ambiguous(h, START)
    assert ambiguous(h, deadline - 30) and ambiguous(h, deadline + 30)
    assert not ambiguous(h, deadline - 61) and not ambiguous(h, deadline + 61)
    assert ambiguous(h, deadline - 3000, margin=3600)
    assert not ambiguous(hs("white", "registered"), START, margin=10 * DAY)
    recent = tuple(START - k * 3600 for k in range(1, 8))
    c = cluster(START - DAY, recent, START - 20 * DAY)
    lapse = clone_lapse(c, Regime())
    assert lapse is not None
    assert not ambiguous(c, START + DAY)
    assert ambiguous(c, lapse - 10) and ambiguous(c, lapse + 50 * DAY)
    new = hs("brand_new", "unseen")
    assert not ambiguous(new, START) and not ambiguous(new, START + 40 * DAY)
    assert ambiguous(new, START + 30 * DAY - 5, START)
    assert changes_at(new, START + DAY, START) == START + 30 * DAY


def test_outcome_keys_are_the_shared_contract() -> None:
    assert expect.OUTCOMES == ("WHITELISTED", "GREYLISTED", "BLACKLISTED", "5422")
