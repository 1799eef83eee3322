"""eir.policy.ranges and Snapshot.lookup_full: range, TAC and SV entries; the most specific wins.

Specificity (eir.policy.ranges): the narrower range wins; at equal width an
entry restricted to a software version beats one that is not; an exact IMEI
entry beats every range and loses only to an entry for the same IMEI and
the IMEI's SV (lo == hi, sv set).
"""

from __future__ import annotations

from itertools import permutations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eir.policy.engine import DecisionConfig, decide
from eir.policy.model import ListEntry, ListName, Status, imei_to_int, to_epoch
from eir.policy.ranges import RangeEntry, RangeTable
from eir.policy.registry import Snapshot
from eir.policy.tac import TacTable

DAY = 86_400
NOW = to_epoch("2025-10-01T12:00:00Z")
HOME_IMSI = "401011234567890"

TAC = "35209900"
IMEI = "35209900176148"  # inside TAC
KEY = imei_to_int(IMEI)
TAC_LO = imei_to_int(TAC + "000000")
TAC_HI = imei_to_int(TAC + "999999")

STOLEN = ListEntry(ListName.BLACK, "stolen")
COUNTERFEIT = ListEntry(ListName.BLACK, "counterfeit")
REGISTERED = ListEntry(ListName.WHITE, "registered")
PENDING = ListEntry(ListName.GREY, "pending_verification")


def rng(
    lo: str | int,
    hi: str | int,
    entry: ListEntry = STOLEN,
    sv: str | None = None,
    *,
    since: int | None = None,
    grace_until: int | None = None,
) -> RangeEntry:
    lo_i = imei_to_int(lo) if isinstance(lo, str) else lo
    hi_i = imei_to_int(hi) if isinstance(hi, str) else hi
    return RangeEntry(lo_i, hi_i, sv, entry, since, grace_until)


def tac_range(tac: str = TAC, entry: ListEntry = STOLEN, sv: str | None = None,
              **times: int | None) -> RangeEntry:
    return rng(tac + "000000", tac + "999999", entry, sv, **times)


def exact(imei: str, entry: ListEntry, sv: str, **times: int | None) -> RangeEntry:
    """An entry for one IMEI and one software version (a range with lo == hi)."""
    return rng(imei, imei, entry, sv, **times)


# -- RangeTable ----------------------------------------------------------------------


def test_empty_table_finds_nothing() -> None:
    table = RangeTable([])
    assert len(table) == 0 and table.entries == ()
    assert table.find(KEY, None) is None
    assert table.find(KEY, "01") is None


def test_tac_range_covers_its_million_serials() -> None:
    r = tac_range()
    assert (r.lo, r.hi, r.width) == (TAC_LO, TAC_HI, 1_000_000)
    table = RangeTable([r])
    for key in (TAC_LO, TAC_LO + 1, KEY, TAC_HI - 1, TAC_HI):
        assert table.find(key, None) is r
        assert table.find(key, "07") is r  # a plain entry applies to every SV
    assert table.find(TAC_LO - 1, None) is None  # last serial of the previous TAC
    assert table.find(TAC_HI + 1, None) is None  # first serial of the next TAC


def test_range_bounds_are_inclusive() -> None:
    r = rng("35209900100000", "35209900100009")
    table = RangeTable([r])
    assert r.width == 10
    assert table.find(r.lo, None) is r
    assert table.find(r.hi, None) is r
    assert table.find(r.lo - 1, None) is None
    assert table.find(r.hi + 1, None) is None


def test_single_imei_range() -> None:
    r = rng(IMEI, IMEI)
    table = RangeTable([r])
    assert r.width == 1
    assert table.find(KEY, None) is r
    assert table.find(KEY - 1, None) is None and table.find(KEY + 1, None) is None


def test_extremes_of_the_imei_line() -> None:
    low = rng(0, 9)
    high = rng(10**14 - 10, 10**14 - 1, REGISTERED)
    table = RangeTable([high, low])
    assert table.find(0, None) is low
    assert table.find(10**14 - 1, None) is high
    assert table.find(10, None) is None
    assert table.find(10**14 - 11, None) is None


def test_gaps_between_ranges_are_not_covered() -> None:
    a = rng("35209900000000", "35209900000099", STOLEN)
    b = rng("35209900000200", "35209900000299", REGISTERED)
    c = rng("35209900000300", "35209900000399", PENDING)  # adjacent to b
    table = RangeTable([c, a, b])
    assert table.find(a.hi, None) is a
    assert table.find(a.hi + 1, None) is None
    assert table.find(b.lo - 1, None) is None
    assert table.find(b.hi, None) is b
    assert table.find(c.lo, None) is c
    assert table.find(c.hi + 1, None) is None


NESTED = (
    tac_range(entry=STOLEN),  # 1,000,000 wide
    rng("35209900100000", "35209900199999", REGISTERED),  # 100,000 wide
    rng("35209900150000", "35209900150009", PENDING),  # 10 wide
)


@pytest.mark.parametrize("order", list(permutations(range(3))))
def test_nested_ranges_narrowest_wins_in_any_order(order: tuple[int, ...]) -> None:
    wide, mid, narrow = NESTED
    table = RangeTable(NESTED[i] for i in order)
    assert table.entries == RangeTable(NESTED).entries
    assert table.find(TAC_LO, None) is wide
    assert table.find(imei_to_int("35209900099999"), None) is wide
    assert table.find(mid.lo, None) is mid
    assert table.find(narrow.lo - 1, None) is mid
    assert table.find(narrow.lo, None) is narrow
    assert table.find(narrow.hi, None) is narrow
    assert table.find(narrow.hi + 1, None) is mid
    assert table.find(mid.hi, None) is mid
    assert table.find(mid.hi + 1, None) is wide
    assert table.find(TAC_HI, None) is wide


def test_partially_overlapping_ranges_narrower_wins_in_the_overlap() -> None:
    wide = rng("35209900000000", "35209900000999", STOLEN)  # 1000
    narrow = rng("35209900000900", "35209900001099", REGISTERED)  # 200, overlaps 900..999
    for table in (RangeTable([wide, narrow]), RangeTable([narrow, wide])):
        assert table.find(wide.lo, None) is wide
        assert table.find(narrow.lo - 1, None) is wide
        assert table.find(narrow.lo, None) is narrow
        assert table.find(wide.hi, None) is narrow
        assert table.find(wide.hi + 1, None) is narrow
        assert table.find(narrow.hi, None) is narrow
        assert table.find(narrow.hi + 1, None) is None


def test_equal_width_overlap_does_not_depend_on_input_order() -> None:
    a = rng("35209900000000", "35209900000099", STOLEN)
    b = rng("35209900000050", "35209900000149", REGISTERED)
    one, two = RangeTable([a, b]), RangeTable([b, a])
    for key in range(a.lo - 1, b.hi + 2):
        assert one.find(key, None) == two.find(key, None)


# -- software versions --------------------------------------------------------------------


def test_sv_entry_beats_a_plain_range_of_equal_width() -> None:
    plain = tac_range(entry=STOLEN)
    legal_sv = tac_range(entry=REGISTERED, sv="05")
    for table in (RangeTable([plain, legal_sv]), RangeTable([legal_sv, plain])):
        assert table.find(KEY, "05") is legal_sv
        assert table.find(KEY, "06") is plain
        assert table.find(KEY, None) is plain


def test_narrower_plain_range_beats_a_wider_sv_range() -> None:
    sv_tac = tac_range(entry=REGISTERED, sv="05")
    plain = rng("35209900100000", "35209900100099", STOLEN)
    table = RangeTable([sv_tac, plain])
    assert table.find(plain.lo, "05") is plain
    assert table.find(plain.hi + 1, "05") is sv_tac
    assert table.find(plain.hi + 1, "06") is None


def test_narrower_sv_range_beats_a_wider_plain_range() -> None:
    plain = tac_range(entry=STOLEN)
    sv_narrow = rng("35209900100000", "35209900100099", PENDING, "05")
    table = RangeTable([plain, sv_narrow])
    assert table.find(sv_narrow.lo, "05") is sv_narrow
    assert table.find(sv_narrow.lo, "5") is plain  # SVs compare as text
    assert table.find(sv_narrow.hi + 1, "05") is plain


def test_sv_entries_only_apply_to_their_sv() -> None:
    a = tac_range(entry=STOLEN, sv="01")
    b = tac_range(entry=COUNTERFEIT, sv="02")
    table = RangeTable([a, b])
    assert table.find(KEY, "01") is a
    assert table.find(KEY, "02") is b
    assert table.find(KEY, "03") is None
    assert table.find(KEY, None) is None


def test_entries_are_kept_sorted() -> None:
    rows = [tac_range("35209901"), tac_range(sv="02"), tac_range(), tac_range(sv="01")]
    table = RangeTable(rows)
    assert len(table) == 4
    assert [(r.lo, r.sv) for r in table.entries] == [
        (TAC_LO, None), (TAC_LO, "01"), (TAC_LO, "02"), (imei_to_int("35209901000000"), None)]


SMALL = 60  # a short stretch of the IMEI line, so ranges overlap a lot


@st.composite
def small_ranges(draw: st.DrawFn) -> RangeEntry:
    lo = draw(st.integers(0, SMALL))
    hi = draw(st.integers(lo, SMALL))
    sv = draw(st.sampled_from([None, None, "01", "02"]))
    entry = draw(st.sampled_from([STOLEN, REGISTERED, PENDING]))
    return RangeEntry(lo, hi, sv, entry)


@given(st.lists(small_ranges(), max_size=12), st.sampled_from([None, "01", "02", "03"]))
def test_find_returns_a_most_specific_covering_entry(
    ranges: list[RangeEntry], sv: str | None
) -> None:
    table = RangeTable(ranges)
    for key in range(-1, SMALL + 2):
        covering = [r for r in ranges if r.lo <= key <= r.hi and r.sv in (None, sv)]
        found = table.find(key, sv)
        if not covering:
            assert found is None
            continue
        assert found is not None and found in covering
        best = min((r.width, r.sv is None) for r in covering)
        assert (found.width, found.sv is None) == best
    # Input order does not matter.
    shuffled = RangeTable(reversed(ranges))
    for key in range(-1, SMALL + 2):
        a, b = table.find(key, sv), shuffled.find(key, sv)
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            assert (a.width, a.sv) == (b.width, b.sv)


# -- Snapshot.lookup_full -----------------------------------------------------------------


def snapshot(
    entries: list[tuple[str, str, str, int | None]] | None = None,
    ranges: list[RangeEntry] | None = None,
    exceptions: list[tuple[str, str]] | None = None,
    grace_until: dict[int, int] | None = None,
) -> Snapshot:
    return Snapshot.build(entries or [], exceptions or [],
                          ranges=RangeTable(ranges or []), grace_until=grace_until)


def test_exact_entry_with_since_and_grace_until() -> None:
    snap = snapshot([(IMEI, "grey", "pending_verification", NOW - DAY)],
                    grace_until={KEY: NOW + 5 * DAY})
    assert snap.lookup_full(KEY, None, None) == (PENDING, NOW - DAY, NOW + 5 * DAY, False)
    unknown_since = snapshot([(IMEI, "white", "registered", None)])
    assert unknown_since.lookup_full(KEY, None, "01") == (REGISTERED, None, None, False)


def test_no_entry_at_all() -> None:
    assert snapshot().lookup_full(KEY, HOME_IMSI, "01") == (None, None, None, False)
    assert snapshot().ranges is None  # an empty range table is dropped


def test_range_entry_carries_its_since_and_grace_until() -> None:
    grey = tac_range(entry=PENDING, since=NOW - 10 * DAY, grace_until=NOW + DAY)
    snap = snapshot(ranges=[grey])
    assert snap.lookup_full(KEY, None, None) == (PENDING, NOW - 10 * DAY, NOW + DAY, False)
    assert snap.lookup_full(TAC_LO, None, "01") == (PENDING, NOW - 10 * DAY, NOW + DAY, False)
    assert snap.lookup_full(TAC_HI + 1, None, None) == (None, None, None, False)


def test_exact_imei_entry_beats_any_range() -> None:
    snap = snapshot(
        [(IMEI, "white", "legalised", NOW - DAY)],
        ranges=[tac_range(entry=STOLEN, since=NOW - 99 * DAY),
                rng(IMEI[:-2] + "00", IMEI[:-2] + "99", COUNTERFEIT)],
    )
    entry, since, grace, _ = snap.lookup_full(KEY, None, None)
    assert (entry, since, grace) == (ListEntry(ListName.WHITE, "legalised"), NOW - DAY, None)
    assert snap.lookup_full(KEY + 1, None, None)[0] == COUNTERFEIT
    assert snap.lookup_full(TAC_LO, None, None)[0] == STOLEN


def test_exact_imei_entry_beats_a_wider_sv_range() -> None:
    snap = snapshot([(IMEI, "white", "registered", None)],
                    ranges=[tac_range(entry=STOLEN, sv="05")])
    assert snap.lookup_full(KEY, None, "05")[0] == REGISTERED
    assert snap.lookup_full(KEY + 1, None, "05")[0] == STOLEN


def test_exact_imei_and_sv_entry_beats_the_exact_imei_entry_for_that_sv_only() -> None:
    snap = snapshot(
        [(IMEI, "white", "registered", NOW - 50 * DAY)],
        ranges=[exact(IMEI, STOLEN, "05", since=NOW - DAY, grace_until=NOW + DAY),
                tac_range(entry=COUNTERFEIT)],
    )
    assert snap.lookup_full(KEY, None, "05") == (STOLEN, NOW - DAY, NOW + DAY, False)
    assert snap.lookup_full(KEY, None, "06") == (REGISTERED, NOW - 50 * DAY, None, False)
    assert snap.lookup_full(KEY, None, None) == (REGISTERED, NOW - 50 * DAY, None, False)
    # The neighbour with SV 05 only has the TAC range.
    assert snap.lookup_full(KEY + 1, None, "05")[0] == COUNTERFEIT


def test_imei_and_sv_entry_without_an_exact_entry() -> None:
    snap = snapshot(ranges=[exact(IMEI, PENDING, "05"), tac_range(entry=STOLEN, sv="05")])
    assert snap.lookup_full(KEY, None, "05")[0] == PENDING
    assert snap.lookup_full(KEY + 1, None, "05")[0] == STOLEN
    assert snap.lookup_full(KEY, None, "06")[0] is None


def test_exception_pairs_work_with_range_entries() -> None:
    snap = snapshot(ranges=[tac_range(entry=STOLEN)], exceptions=[(IMEI, HOME_IMSI)])
    assert snap.lookup_full(KEY, HOME_IMSI, None) == (STOLEN, None, None, True)
    assert snap.lookup_full(KEY, "401019999999999", None)[3] is False
    assert snap.lookup_full(KEY, None, None)[3] is False
    assert snap.lookup_full(KEY + 1, HOME_IMSI, None)[3] is False


def test_facts_and_decisions_from_range_entries() -> None:
    config = DecisionConfig()
    snap = snapshot(
        ranges=[tac_range(entry=PENDING, since=NOW - 10 * DAY),
                exact(IMEI, PENDING, "05", since=NOW - 10 * DAY, grace_until=NOW - 1),
                tac_range("35209901", entry=STOLEN)],
        exceptions=[("35209901000001", HOME_IMSI)],
    )
    f = snap.facts(IMEI + "3", HOME_IMSI, "01", now=NOW)
    assert (f.entry, f.entry_since, f.entry_grace_until) == (PENDING, NOW - 10 * DAY, None)
    d = decide(f, config)
    assert (d.status, d.rule, d.deadline) == (Status.GREYLISTED, "grey", NOW + 20 * DAY)
    expired = decide(snap.facts(IMEI, HOME_IMSI, "05", now=NOW), config)
    assert (expired.status, expired.reason, expired.deadline) == (
        Status.BLACKLISTED, "grace_expired", NOW - 1)
    stolen = decide(snap.facts("35209901000000", HOME_IMSI, "01", now=NOW), config)
    assert (stolen.status, stolen.reason) == (Status.BLACKLISTED, "stolen")
    paired = decide(snap.facts("35209901000001", HOME_IMSI, "01", now=NOW), config)
    assert paired.reason == "paired_exception"


# -- digest -----------------------------------------------------------------------------

ENTRIES: list[tuple[str, str, str, int | None]] = [
    (IMEI, "black", "stolen", NOW - DAY),
    ("49015420323751", "grey", "pending_verification", NOW - 2 * DAY),
    ("26053179311383", "white", "registered", None),
]
RANGES = [
    tac_range(entry=STOLEN, since=NOW - 3 * DAY),
    tac_range("49015420", entry=PENDING, sv="01", grace_until=NOW + DAY),
    rng("35209900100000", "35209900100999", REGISTERED),
]
TACS = [(35209900, "smartphone"), (49015420, "m2m"), (26053179, "tablet")]


def full(
    entries: list[tuple[str, str, str, int | None]] = ENTRIES,
    ranges: list[RangeEntry] = RANGES,
    tacs: list[tuple[int, str]] = TACS,
    version: int = 1,
) -> Snapshot:
    return Snapshot.build(entries, [(IMEI, HOME_IMSI)], version=version,
                          ranges=RangeTable(ranges), tac=TacTable.build(tacs))


def test_digest_is_equal_for_equal_content_in_any_order() -> None:
    a = full()
    b = full(list(reversed(ENTRIES)), list(reversed(RANGES)), list(reversed(TACS)), version=9)
    c = full([ENTRIES[1], ENTRIES[2], ENTRIES[0]], [RANGES[2], RANGES[0], RANGES[1]],
             [TACS[1], TACS[0], TACS[2]])
    assert a.digest() == b.digest() == c.digest()


def test_empty_range_table_digests_like_no_ranges() -> None:
    plain = Snapshot.build(ENTRIES)
    assert plain.digest() == Snapshot.build(ENTRIES, ranges=RangeTable([])).digest()
    assert plain.digest() == Snapshot.build(ENTRIES, tac=TacTable.empty()).digest()


@pytest.mark.parametrize(
    "changed",
    [
        RANGES[:2],  # one range fewer
        [*RANGES, rng(IMEI, IMEI, PENDING, "07")],  # one more
        [tac_range(entry=COUNTERFEIT, since=NOW - 3 * DAY), *RANGES[1:]],  # reason
        [tac_range(entry=STOLEN, since=NOW - 4 * DAY), *RANGES[1:]],  # since
        [tac_range(entry=STOLEN, since=NOW - 3 * DAY, grace_until=NOW), *RANGES[1:]],  # grace
        [tac_range(entry=STOLEN, sv="01", since=NOW - 3 * DAY), *RANGES[1:]],  # sv
        [*RANGES[:2], rng("35209900100000", "35209900101000", REGISTERED)],  # hi
        [*RANGES[:2], rng("35209900100000", "35209900100999", PENDING)],  # list
    ],
)
def test_digest_changes_when_ranges_change(changed: list[RangeEntry]) -> None:
    assert full(ranges=changed).digest() != full().digest()


@pytest.mark.parametrize(
    "changed",
    [
        TACS[:2],
        [*TACS, (86000000, "smartphone")],
        [(35209900, "m2m"), *TACS[1:]],
        [(35209901, "smartphone"), *TACS[1:]],
        [],
    ],
)
def test_digest_changes_when_tacs_change(changed: list[tuple[int, str]]) -> None:
    assert full(tacs=changed).digest() != full().digest()


def test_digest_changes_with_exact_entry_times() -> None:
    moved = [(IMEI, "black", "stolen", NOW), *ENTRIES[1:]]
    assert full(moved).digest() != full().digest()
    with_grace = Snapshot.build(ENTRIES, grace_until={KEY: NOW})
    assert with_grace.digest() != Snapshot.build(ENTRIES).digest()
