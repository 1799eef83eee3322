"""eir.policy.registry.Snapshot: lookups, version, digest, large arrays."""

from __future__ import annotations

import random
from array import array

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eir.policy.engine import DecisionConfig, decide
from eir.policy.model import ListEntry, ListName, Status
from eir.policy.registry import Registry, Snapshot

BLACK = "35209900176148"
GREY = "49015420323751"
WHITE = "26053179311383"
IMSI = "250011234567890"


def small() -> Snapshot:
    return Snapshot.build(
        [
            (BLACK, "black", "stolen"),
            (GREY, "grey", "pending_verification"),
            (WHITE, "white", "registered"),
        ],
        [(BLACK, IMSI), (WHITE, "00101")],
        version=7,
    )


def test_lookup_hits_and_misses() -> None:
    snap = small()
    assert snap.lookup(BLACK) == (ListEntry(ListName.BLACK, "stolen"), False)
    assert snap.lookup(GREY) == (ListEntry(ListName.GREY, "pending_verification"), False)
    assert snap.lookup(WHITE) == (ListEntry(ListName.WHITE, "registered"), False)
    assert snap.lookup("11111111111111") == (None, False)
    assert snap.lookup("00000000000000") == (None, False)
    assert snap.lookup("99999999999999") == (None, False)
    assert len(snap) == snap.entry_count == 3
    assert snap.version == 7 and snap.exception_count == 2


def test_exception_pairs_match_imei_and_exact_imsi() -> None:
    snap = small()
    assert snap.lookup(BLACK, IMSI)[1] is True
    assert snap.lookup(BLACK, "250011234567891")[1] is False
    assert snap.lookup(BLACK, None)[1] is False
    assert snap.lookup(GREY, IMSI)[1] is False
    # Leading zeros are significant: 00101 is not 101 nor 0101.
    assert snap.lookup(WHITE, "00101")[1] is True
    assert snap.lookup(WHITE, "0101")[1] is False


def test_facts_normalizes_inputs() -> None:
    snap = small()
    f = snap.facts(BLACK + "1", IMSI, "07")
    assert (f.imei, f.imei14, f.imsi, f.software_version) == (BLACK + "1", BLACK, IMSI, "07")
    assert f.entry == ListEntry(ListName.BLACK, "stolen") and f.pair_is_exception
    bad = snap.facts("not-an-imei", IMSI)
    assert (bad.imei14, bad.entry, bad.pair_is_exception) == (None, None, False)
    no_imsi = snap.facts(BLACK, "garbage")
    assert no_imsi.imsi is None and not no_imsi.pair_is_exception


def test_facts_feed_the_engine() -> None:
    snap, cfg = small(), DecisionConfig()
    assert decide(snap.facts(BLACK, IMSI), cfg).status is Status.WHITELISTED
    assert decide(snap.facts(BLACK, "25001999"), cfg).reason == "stolen"
    assert decide(snap.facts(GREY), cfg).status is Status.GREYLISTED
    assert decide(snap.facts("11111111111111"), cfg).reason == "pending_verification"


def test_empty_snapshot() -> None:
    snap = Snapshot.empty(version=3)
    assert snap.lookup(BLACK, IMSI) == (None, False)
    assert len(snap) == 0 and snap.version == 3
    assert snap.counts() == {"white": 0, "grey": 0, "black": 0}


def test_later_entry_replaces_earlier_in_build() -> None:
    snap = Snapshot.build([(BLACK, "grey", "x"), (BLACK, "black", "stolen")])
    assert snap.lookup(BLACK)[0] == ListEntry(ListName.BLACK, "stolen")
    assert len(snap) == 1


def test_build_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        Snapshot.build([("123", "black", "stolen")])
    with pytest.raises(ValueError):
        Snapshot.build([(BLACK, "purple", "stolen")])
    with pytest.raises(ValueError):
        Snapshot.build([(BLACK, "exception", "paired_exception")])


def test_digest_depends_on_content_only() -> None:
    a = small()
    rows = [(WHITE, "white", "registered"), (GREY, "grey", "pending_verification")]
    rows.append((BLACK, "black", "stolen"))
    b = Snapshot.build(rows, [(WHITE, "00101"), (BLACK, IMSI)], version=99)
    assert a.digest() == b.digest()
    assert len(a.digest()) == 64
    changed_reason = Snapshot.build(
        [
            (BLACK, "black", "lost"),
            (GREY, "grey", "pending_verification"),
            (WHITE, "white", "registered"),
        ],
        [(BLACK, IMSI), (WHITE, "00101")],
    )
    assert changed_reason.digest() != a.digest()
    fewer_pairs = Snapshot.build(
        [
            (BLACK, "black", "stolen"),
            (GREY, "grey", "pending_verification"),
            (WHITE, "white", "registered"),
        ],
        [(BLACK, IMSI)],
    )
    assert fewer_pairs.digest() != a.digest()
    assert Snapshot.empty().digest() != a.digest()


def test_constructor_checks_invariants() -> None:
    table = (ListEntry(ListName.BLACK, "stolen"),)
    with pytest.raises(ValueError):
        Snapshot(array("q", [1, 2]), array("H", [0]), table, frozenset(), 0)
    with pytest.raises(TypeError):
        Snapshot(array("l", [1]), array("H", [0]), table, frozenset(), 0)
    unsorted = (ListEntry(ListName.WHITE, "a"), ListEntry(ListName.BLACK, "b"))
    with pytest.raises(ValueError):
        Snapshot(array("q"), array("H"), unsorted, frozenset(), 0)
    repeated = (ListEntry(ListName.BLACK, "b"), ListEntry(ListName.BLACK, "b"))
    with pytest.raises(ValueError):
        Snapshot(array("q"), array("H"), repeated, frozenset(), 0)


def test_kind_typecode_grows_past_65536_kinds() -> None:
    assert Snapshot.kind_typecode(3) == "H"
    assert Snapshot.kind_typecode(0x10000) == "H"
    assert Snapshot.kind_typecode(0x10001) == "I"


def test_counts_with_many_kinds() -> None:
    rows = [(f"{i:014d}", "black" if i % 2 else "white", f"reason {i}") for i in range(100)]
    assert Snapshot.build(rows).counts() == {"white": 50, "grey": 0, "black": 50}


def test_large_snapshot_matches_a_dict_model() -> None:
    rnd = random.Random(2025)
    reasons = ["stolen", "lost", "counterfeit", "registered", "pending_verification"]
    lists = ["black", "black", "black", "white", "grey"]
    model: dict[str, tuple[str, str]] = {}
    while len(model) < 100_000:
        k = rnd.randrange(len(reasons))
        model[f"{rnd.randrange(10**14):014d}"] = (lists[k], reasons[k])
    snap = Snapshot.build(((i, lst, r) for i, (lst, r) in model.items()), version=1)
    assert len(snap) == 100_000
    keys = list(model)
    for imei in rnd.sample(keys, 2_000):
        entry, _ = snap.lookup(imei)
        assert entry is not None and (entry.list.value, entry.reason) == model[imei]
    for _ in range(2_000):
        probe = f"{rnd.randrange(10**14):014d}"
        entry, _ = snap.lookup(probe)
        assert (entry is None) == (probe not in model)
    counts = snap.counts()
    assert sum(counts.values()) == 100_000
    assert counts["black"] == sum(1 for lst, _ in model.values() if lst == "black")
    # Extremes of the array are found too (bisect edge cases).
    ordered = sorted(keys)
    assert snap.lookup(ordered[0])[0] is not None
    assert snap.lookup(ordered[-1])[0] is not None


imeis = st.integers(min_value=0, max_value=10**14 - 1).map(lambda n: f"{n:014d}")


@given(
    st.dictionaries(imeis, st.sampled_from([("black", "stolen"), ("white", "registered")])),
    imeis,
)
def test_lookup_agrees_with_dict(model: dict[str, tuple[str, str]], probe: str) -> None:
    snap = Snapshot.build((i, lst, r) for i, (lst, r) in model.items())
    for imei in [probe, *model]:
        entry, _ = snap.lookup(imei)
        expected = model.get(imei)
        assert (None if entry is None else (entry.list.value, entry.reason)) == expected


def test_sqlite_backend_satisfies_the_protocol(tmp_path: object) -> None:
    from eir.policy.sqlite import SqliteRegistry

    assert isinstance(SqliteRegistry(f"{tmp_path}/r.db"), Registry)


@pytest.mark.parametrize(("kinds", "typecode"), [(1, "H"), (7, "H"), (256, "H"), (300, "H"),
                                                  (5, "I")])
def test_counts_per_list_match_a_plain_count(kinds: int, typecode: str) -> None:
    rng = random.Random(kinds)
    lists = ("white", "grey", "black")
    table = tuple(sorted({ListEntry(ListName(lists[i % 3]), f"r{i:03d}") for i in range(kinds)},
                         key=lambda k: (k.list.value, k.reason)))
    n = 5000
    imeis = array("q", range(10**13, 10**13 + n))
    ids = array(typecode, (rng.randrange(len(table)) for _ in range(n)))
    snap = Snapshot.from_arrays(imeis, ids, table, frozenset(), 1)
    expected = dict.fromkeys(lists, 0)
    for k in ids:
        expected[table[k].list.value] += 1
    assert snap.counts() == expected
    assert Snapshot.empty().counts() == dict.fromkeys(("white", "grey", "black"), 0)
