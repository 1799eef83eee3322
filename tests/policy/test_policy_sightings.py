"""eir.policy.model.Sightings and eir.policy.observations.SightingCache.

The cache is tested against an in-memory store that behaves like the
registry's (first_seen = MIN, last_seen = MAX per (imei, imsi, operator)),
with a fake monotonic clock: no sleeps, no database.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Collection, Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eir.policy.engine import DecisionConfig
from eir.policy.model import Sightings
from eir.policy.observations import ObservationRow, ObservationStore, SightingCache

T0 = 1_750_000_000
HOUR = 3600
HOME_A = "401011111111111"
HOME_B = "401012222222222"
HOME_C = "401013333333333"
ROAM = "250011234567890"
IS_HOME = DecisionConfig().is_home

IMEI_1 = 35209900176148
IMEI_2 = 49015420323751
IMEI_3 = 26053179311383


# -- Sightings -----------------------------------------------------------------------------


def test_new_sightings_are_empty() -> None:
    s = Sightings()
    assert (s.imsis, s.first_home, s.first_imsi) == ({}, None, None)
    assert s.home_imsis_since(0) == 0
    assert s.pair_first_seen(HOME_A) is None
    assert "first_home=None" in repr(s)


def test_add_reports_new_imsis() -> None:
    s = Sightings()
    assert s.add(HOME_A, T0, T0, True) is True
    assert s.add(HOME_A, T0 + 1, T0 + 1, True) is False
    assert s.add(HOME_B, T0, T0, True) is True


def test_earliest_first_and_latest_last_win() -> None:
    s = Sightings()
    s.add(HOME_A, T0 + 100, T0 + 200, True)
    s.add(HOME_A, T0 + 50, T0 + 150, True)  # earlier first, earlier last
    assert s.imsis[HOME_A][:2] == [T0 + 50, T0 + 200]
    s.add(HOME_A, T0 + 300, T0 + 400, True)  # later first, later last
    assert s.imsis[HOME_A][:2] == [T0 + 50, T0 + 400]
    assert s.pair_first_seen(HOME_A) == T0 + 50
    assert s.first_home == T0 + 50


def test_first_home_ignores_roaming_sightings() -> None:
    s = Sightings()
    s.add(ROAM, T0 - 1000, T0 - 900, False)
    assert (s.first_home, s.first_imsi) == (None, None)
    s.add(HOME_A, T0, T0, True)
    assert (s.first_home, s.first_imsi) == (T0, HOME_A)
    s.add(ROAM, T0 - 5000, T0, False)
    assert (s.first_home, s.first_imsi) == (T0, HOME_A)
    assert s.imsis[ROAM][2] == 0 and s.imsis[HOME_A][2] == 1


def test_first_imsi_ignores_the_empty_imsi() -> None:
    s = Sightings()
    s.add("", T0 - 100, T0 - 100, True)  # no IMSI: a home sighting that starts the clock
    assert (s.first_home, s.first_imsi) == (T0 - 100, None)
    s.add(HOME_B, T0, T0, True)
    assert (s.first_home, s.first_imsi) == (T0 - 100, HOME_B)


def test_first_imsi_moves_to_an_earlier_sighting() -> None:
    s = Sightings()
    s.add(HOME_A, T0, T0, True)
    s.add(HOME_B, T0 + 10, T0 + 10, True)
    assert s.first_imsi == HOME_A
    # Another worker's row: HOME_B was really seen earlier.
    s.add(HOME_B, T0 - 10, T0 + 10, True)
    assert (s.first_imsi, s.first_home) == (HOME_B, T0 - 10)


@pytest.mark.parametrize("order", [(HOME_B, HOME_A, HOME_C), (HOME_A, HOME_C, HOME_B),
                                   (HOME_C, HOME_B, HOME_A)])
def test_ties_are_broken_by_imsi_order(order: tuple[str, ...]) -> None:
    s = Sightings()
    for imsi in order:
        s.add(imsi, T0, T0, True)
    assert s.first_imsi == min(order) == HOME_A


def test_home_imsis_since() -> None:
    s = Sightings()
    s.add(HOME_A, T0 - 100, T0 - 50, True)
    s.add(HOME_B, T0 - 100, T0, True)
    s.add(HOME_C, T0, T0 + 10, True)
    s.add(ROAM, T0, T0 + 10, False)  # roamers are not counted
    s.add("", T0, T0 + 10, True)  # nor is the missing IMSI
    assert s.home_imsis_since(T0 - 1000) == 3
    assert s.home_imsis_since(T0 - 50) == 3  # last seen exactly at t counts
    assert s.home_imsis_since(T0 - 49) == 2
    assert s.home_imsis_since(T0) == 2
    assert s.home_imsis_since(T0 + 1) == 1
    assert s.home_imsis_since(T0 + 11) == 0


rows = st.lists(
    st.tuples(st.sampled_from(["", HOME_A, HOME_B, HOME_C, ROAM]),
              st.integers(T0, T0 + 100), st.integers(0, 100)),
    max_size=20,
)


@given(rows, st.randoms(use_true_random=False))
def test_merging_does_not_depend_on_order(
    data: list[tuple[str, int, int]], rnd: random.Random
) -> None:
    def build(items: list[tuple[str, int, int]]) -> Sightings:
        s = Sightings()
        for imsi, first, extra in items:
            s.add(imsi, first, first + extra, IS_HOME(imsi or None))
        return s

    shuffled = list(data)
    rnd.shuffle(shuffled)
    a, b = build(data), build(shuffled)
    assert a.imsis == b.imsis
    assert (a.first_home, a.first_imsi) == (b.first_home, b.first_imsi)
    home = [(f, i) for i, f, _ in data if IS_HOME(i or None)]
    assert a.first_home == (min(f for f, _ in home) if home else None)
    named = [(f, i) for f, i in home if i]
    expected_first = None
    if named:
        firsts = {i: min(f for f, j in named if j == i) for _, i in named}
        expected_first = min(firsts, key=lambda i: (firsts[i], i))
    assert a.first_imsi == expected_first
    for imsi, rec in a.imsis.items():
        mine = [(f, f + e) for i, f, e in data if i == imsi]
        assert rec[:2] == [min(f for f, _ in mine), max(la for _, la in mine)]


# -- SightingCache -------------------------------------------------------------------------


class FakeStore:
    """An ObservationStore in memory: MIN(first), MAX(last) per (imei, imsi, operator)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[int, str, str], list[int]] = {}
        self.reads: list[int] = []
        self.batches: list[list[ObservationRow]] = []
        self.failures = 0  # how many of the next writes fail
        self.during_write: Callable[[], None] | None = None
        self.gates: list[asyncio.Event] | None = None  # set: each write waits for its event

    def put(self, imei: int, imsi: str, operator: str, first: int, last: int) -> None:
        rec = self.rows.setdefault((imei, imsi, operator), [first, last])
        rec[0], rec[1] = min(rec[0], first), max(rec[1], last)

    def read_sightings(self, imei: int) -> list[tuple[str, int, int]]:
        self.reads.append(imei)
        return [(s, f, la) for (i, s, _o), (f, la) in sorted(self.rows.items()) if i == imei]

    async def write_sightings(self, rows: Iterable[ObservationRow],
                              operators: Collection[str] | None = None) -> None:
        if self.during_write is not None:
            self.during_write()
        if self.failures:
            self.failures -= 1
            raise OSError("database is locked")
        if self.gates is not None:
            gate = asyncio.Event()
            self.gates.append(gate)
            await gate.wait()
        rows = list(rows)  # consumed once, as the real store does
        assert operators is None or {r[2] for r in rows} <= set(operators)
        self.batches.append(rows)
        for imei, imsi, operator, first, last in rows:
            self.put(imei, imsi, operator, first, last)


class FakeMonotonic:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(
    store: FakeStore | None = None, **kwargs: int | float
) -> tuple[SightingCache, FakeStore, FakeMonotonic]:
    store = store if store is not None else FakeStore()
    mono = FakeMonotonic()
    backing: ObservationStore = store
    cache = SightingCache(backing, IS_HOME, monotonic=mono, **kwargs)  # type: ignore[arg-type]
    return cache, store, mono


def stored(store: FakeStore) -> set[tuple[int, str, str, int, int]]:
    return {(i, s, o, f, la) for (i, s, o), (f, la) in store.rows.items()}


def test_the_fake_store_is_an_observation_store() -> None:
    store: ObservationStore = FakeStore()
    assert store.read_sightings(IMEI_1) == []


def test_max_imeis_must_be_positive() -> None:
    with pytest.raises(ValueError):
        SightingCache(None, IS_HOME, max_imeis=0)


def test_new_pair_is_queued() -> None:
    cache, store, _ = make()
    seen, new = cache.observe(IMEI_1, HOME_A, "op1", T0)
    assert new is True
    assert seen.imsis[HOME_A][:3] == [T0, T0, 1]
    assert (seen.first_home, seen.first_imsi) == (T0, HOME_A)
    assert cache.pending == 1
    assert store.reads == [IMEI_1] and cache.misses == 1
    assert len(cache) == 1


def test_second_imsi_is_a_new_pair() -> None:
    cache, _, _ = make()
    cache.observe(IMEI_1, HOME_A, "op1", T0)
    seen, new = cache.observe(IMEI_1, HOME_B, "op1", T0 + 1)
    assert new is True and set(seen.imsis) == {HOME_A, HOME_B}
    assert seen.first_imsi == HOME_A
    assert cache.pending == 2


def test_missing_and_roaming_imsis() -> None:
    cache, _, _ = make()
    seen, new = cache.observe(IMEI_1, None, "op1", T0)
    assert new and "" in seen.imsis
    assert (seen.first_home, seen.first_imsi) == (T0, None)
    roamer, _ = cache.observe(IMEI_2, ROAM, "op1", T0)
    assert roamer.first_home is None and roamer.imsis[ROAM][2] == 0
    assert cache.pending == 2


async def test_repeat_within_resolution_is_not_queued() -> None:
    cache, store, _ = make(resolution=HOUR)
    first, _ = cache.observe(IMEI_1, HOME_A, "op1", T0)
    seen, new = cache.observe(IMEI_1, HOME_A, "op1", T0 + HOUR - 1)
    assert new is False and seen is first
    assert seen.imsis[HOME_A][:2] == [T0, T0]
    assert cache.pending == 1
    assert await cache.flush() == 1
    cache.observe(IMEI_1, HOME_A, "op1", T0 + HOUR - 1)
    assert cache.pending == 0
    assert store.reads == [IMEI_1]  # one miss only


async def test_repeat_after_resolution_is_queued() -> None:
    cache, store, _ = make(resolution=HOUR)
    cache.observe(IMEI_1, HOME_A, "op1", T0)
    assert await cache.flush() == 1
    seen, new = cache.observe(IMEI_1, HOME_A, "op1", T0 + HOUR)
    assert new is False
    assert seen.imsis[HOME_A][:2] == [T0, T0 + HOUR]
    assert cache.pending == 1
    # Within the resolution of the new last-seen: quiet again.
    cache.observe(IMEI_1, HOME_A, "op1", T0 + 2 * HOUR - 1)
    assert cache.pending == 1
    assert await cache.flush() == 1
    assert stored(store) == {(IMEI_1, HOME_A, "op1", T0, T0 + HOUR)}


async def test_repeats_before_a_flush_merge_into_one_row() -> None:
    cache, store, _ = make(resolution=HOUR)
    cache.observe(IMEI_1, HOME_A, "op1", T0)
    cache.observe(IMEI_1, HOME_A, "op1", T0 + HOUR)
    cache.observe(IMEI_1, HOME_A, "op1", T0 + 2 * HOUR)
    assert cache.pending == 1
    assert await cache.flush() == 1
    assert store.batches == [[(IMEI_1, HOME_A, "op1", T0, T0 + 2 * HOUR)]]


async def test_an_earlier_sighting_still_wins() -> None:
    # A clock that moved back (tests, or a worker behind): the earliest sighting wins.
    cache, store, _ = make()
    cache.observe(IMEI_1, HOME_A, "op1", T0)
    seen, new = cache.observe(IMEI_1, HOME_A, "op1", T0 - 10)
    assert new is False
    assert seen.imsis[HOME_A][:2] == [T0 - 10, T0]
    assert seen.first_home == T0 - 10
    await cache.flush()
    assert stored(store) == {(IMEI_1, HOME_A, "op1", T0 - 10, T0)}


async def test_history_is_read_from_the_store_on_a_miss() -> None:
    cache, store, _ = make()
    store.put(IMEI_1, HOME_B, "op2", T0 - 100 * HOUR, T0 - HOUR)
    store.put(IMEI_1, ROAM, "op2", T0 - 200 * HOUR, T0 - 150 * HOUR)
    seen, new = cache.observe(IMEI_1, HOME_B, "op1", T0)
    assert new is False  # known from the store
    assert seen.first_imsi == HOME_B and seen.first_home == T0 - 100 * HOUR
    assert seen.imsis[ROAM][2] == 0
    assert cache.pending == 1  # last seen an hour ago: due again
    seen, new = cache.observe(IMEI_1, HOME_A, "op1", T0)
    assert new is True and seen.first_imsi == HOME_B


async def test_eviction_then_reload_loses_nothing() -> None:
    cache, store, _ = make(max_imeis=2)
    cache.observe(IMEI_1, HOME_A, "op1", T0)
    assert await cache.flush() == 1  # IMEI_1's row is in the store
    cache.observe(IMEI_2, HOME_B, "op1", T0 + 1)  # IMEI_2's row is only queued
    cache.observe(IMEI_3, HOME_C, "op1", T0 + 2)  # full: the oldest loaded goes
    assert len(cache) == 2
    cache.observe(IMEI_1, HOME_A, "op1", T0 + 3)  # evicts IMEI_2
    assert len(cache) == 2
    misses = cache.misses
    seen, new = cache.observe(IMEI_2, HOME_B, "op1", T0 + 4)
    assert cache.misses == misses + 1
    assert new is False  # found in the pending buffer, not in the store
    assert seen.imsis[HOME_B][:2] == [T0 + 1, T0 + 1]
    assert cache.pending == 2  # IMEI_2 and IMEI_3, each once
    seen1 = cache.peek(IMEI_1)
    assert seen1.imsis[HOME_A][:2] == [T0, T0]  # reloaded from the store
    assert await cache.flush() == 2
    assert stored(store) == {(IMEI_1, HOME_A, "op1", T0, T0),
                             (IMEI_2, HOME_B, "op1", T0 + 1, T0 + 1),
                             (IMEI_3, HOME_C, "op1", T0 + 2, T0 + 2)}


def test_hot_set_stays_bounded() -> None:
    cache, _, _ = make(max_imeis=200)
    for i in range(1000):
        cache.observe(IMEI_1 + i, HOME_A, "op1", T0)
        assert len(cache) <= 200
    assert cache.pending == 1000
    # Every IMEI still knows its sighting, hot or not.
    for i in range(0, 1000, 97):
        assert HOME_A in cache.peek(IMEI_1 + i).imsis


def test_eviction_drops_the_oldest_loaded() -> None:
    cache, store, mono = make(max_imeis=2, ttl=30.0)
    cache.observe(IMEI_1, HOME_A, "op1", T0)
    mono.t += 10
    cache.observe(IMEI_2, HOME_B, "op1", T0)
    mono.t += 25  # IMEI_1 is past its ttl, IMEI_2 is not
    cache.observe(IMEI_1, HOME_A, "op1", T0 + 1)  # reloaded: now the newest
    assert store.reads == [IMEI_1, IMEI_2, IMEI_1]
    cache.observe(IMEI_3, HOME_C, "op1", T0 + 2)  # full: drops the oldest loaded, IMEI_2
    misses = cache.misses
    cache.observe(IMEI_1, HOME_A, "op1", T0 + 3)
    assert cache.misses == misses  # IMEI_1 is still hot


async def test_ttl_reload_merges_unflushed_rows() -> None:
    cache, store, mono = make(ttl=30.0)
    cache.observe(IMEI_1, HOME_A, "op1", T0)  # queued, not flushed
    # Another worker stores a sighting of the same IMEI, and an earlier one of HOME_A.
    store.put(IMEI_1, HOME_B, "op2", T0 + 5, T0 + 5)
    store.put(IMEI_1, HOME_A, "op2", T0 - 50, T0 - 50)
    mono.t += 30.0  # not yet older than the ttl
    assert set(cache.peek(IMEI_1).imsis) == {HOME_A}
    mono.t += 0.5
    seen = cache.peek(IMEI_1)
    assert set(seen.imsis) == {HOME_A, HOME_B}
    assert seen.imsis[HOME_A][:2] == [T0 - 50, T0]  # store and own queued row merged
    assert (seen.first_home, seen.first_imsi) == (T0 - 50, HOME_A)
    assert cache.pending == 1  # peek queued nothing
    again, new = cache.observe(IMEI_1, HOME_B, "op1", T0 + 6)
    assert new is False and again is seen


async def test_ttl_reload_during_a_flush_sees_the_rows_being_written() -> None:
    cache, store, mono = make(ttl=30.0)
    cache.observe(IMEI_1, HOME_A, "op1", T0)
    cache.observe(IMEI_2, HOME_B, "op1", T0)
    seen_during: list[Sightings] = []

    def reload_mid_write() -> None:
        mono.t += 60.0
        seen_during.append(cache.peek(IMEI_1))

    store.during_write = reload_mid_write
    assert await cache.flush() == 2
    assert HOME_A in seen_during[0].imsis  # from the in-flight batch


async def test_overlapping_flushes_keep_all_in_flight_rows_visible() -> None:
    cache, store, mono = make(ttl=1.0)
    store.gates = []
    cache.observe(IMEI_1, HOME_A, "op1", T0)
    first = asyncio.create_task(cache.flush())
    await asyncio.sleep(0)  # the first batch is being written
    cache.observe(IMEI_2, HOME_B, "op1", T0)
    second = asyncio.create_task(cache.flush())
    await asyncio.sleep(0)  # so is the second
    try:
        mono.t += 10  # older than the ttl: reloads merge the store and the buffers
        assert HOME_A in cache.peek(IMEI_1).imsis
        store.gates[0].set()
        assert await first == 1
        mono.t += 10
        assert HOME_B in cache.peek(IMEI_2).imsis
    finally:
        for gate in store.gates:
            gate.set()
        await asyncio.gather(first, second)


async def test_flush_writes_one_batch() -> None:
    cache, store, _ = make()
    cache.observe(IMEI_1, HOME_A, "op1", T0)
    cache.observe(IMEI_1, HOME_B, "op1", T0 + 1)
    cache.observe(IMEI_2, None, "op2", T0 + 2)
    cache.observe(IMEI_3, ROAM, "op3", T0 + 3)
    assert cache.pending == 4
    assert await cache.flush() == 4
    assert len(store.batches) == 1
    assert sorted(store.batches[0]) == sorted([
        (IMEI_1, HOME_A, "op1", T0, T0),
        (IMEI_1, HOME_B, "op1", T0 + 1, T0 + 1),
        (IMEI_2, "", "op2", T0 + 2, T0 + 2),
        (IMEI_3, ROAM, "op3", T0 + 3, T0 + 3),
    ])
    assert (cache.pending, cache.written) == (0, 4)
    assert await cache.flush() == 0
    assert len(store.batches) == 1


async def test_failing_store_keeps_the_rows_for_the_next_flush() -> None:
    cache, store, _ = make()
    cache.observe(IMEI_1, HOME_A, "op1", T0)
    cache.observe(IMEI_2, HOME_B, "op1", T0 + 1)
    store.failures = 1
    with pytest.raises(OSError):
        await cache.flush()
    assert store.batches == []
    assert (cache.pending, cache.written) == (2, 0)
    # The rows are still visible to a reload meanwhile.
    assert HOME_B in cache.peek(IMEI_2).imsis
    assert await cache.flush() == 2
    assert stored(store) == {(IMEI_1, HOME_A, "op1", T0, T0),
                             (IMEI_2, HOME_B, "op1", T0 + 1, T0 + 1)}
    assert (cache.pending, cache.written) == (0, 2)


async def test_failed_flush_merges_with_rows_queued_meanwhile() -> None:
    cache, store, _ = make(resolution=HOUR)
    cache.observe(IMEI_1, HOME_A, "op1", T0)

    def observe_mid_write() -> None:
        cache.observe(IMEI_1, HOME_A, "op1", T0 + HOUR)  # same row, later
        cache.observe(IMEI_2, HOME_B, "op1", T0 + HOUR)  # a new one

    store.during_write = observe_mid_write
    store.failures = 1
    with pytest.raises(OSError):
        await cache.flush()
    store.during_write = None
    assert cache.pending == 2
    assert await cache.flush() == 2
    assert stored(store) == {(IMEI_1, HOME_A, "op1", T0, T0 + HOUR),
                             (IMEI_2, HOME_B, "op1", T0 + HOUR, T0 + HOUR)}


async def test_peek_records_nothing() -> None:
    cache, store, _ = make()
    empty = cache.peek(IMEI_1)
    assert empty.imsis == {} and empty.first_home is None
    assert cache.pending == 0
    _, new = cache.observe(IMEI_1, HOME_A, "op1", T0)
    assert new is True  # peeking did not make the pair known
    hot = cache.peek(IMEI_1)
    assert set(hot.imsis) == {HOME_A}
    assert cache.pending == 1
    assert await cache.flush() == 1
    for _ in range(3):
        cache.peek(IMEI_2)
        cache.peek(IMEI_1)
    assert cache.pending == 0
    assert await cache.flush() == 0
    assert len(store.batches) == 1


async def test_without_a_store_nothing_is_written() -> None:
    cache = SightingCache(None, IS_HOME, monotonic=FakeMonotonic())
    seen, new = cache.observe(IMEI_1, HOME_A, "op1", T0)
    assert new and seen.first_imsi == HOME_A
    assert await cache.flush() == 0
    assert cache.pending == 1


async def test_an_uncached_peek_reads_the_store_and_buffers_and_leaves_the_hot_set() -> None:
    cache, store, _ = make(max_imeis=2)
    cache.observe(IMEI_1, HOME_A, "op1", T0)
    await cache.flush()  # IMEI_1's row is in the store
    cache.observe(IMEI_2, HOME_B, "op1", T0 + 1)  # IMEI_2's only queued
    hot, misses, reads = len(cache), cache.misses, len(store.reads)
    for _ in range(3):  # hot or not, every uncached peek is one store read
        assert cache.peek(IMEI_1, cached=False).imsis[HOME_A][:2] == [T0, T0]
        assert cache.peek(IMEI_2, cached=False).imsis[HOME_B][:2] == [T0 + 1, T0 + 1]
        assert cache.peek(IMEI_3, cached=False).imsis == {}
    assert len(store.reads) == reads + 9
    assert (len(cache), cache.misses, cache.pending) == (hot, misses, 1)
    # nothing was evicted: both stay hot (a cached peek reads nothing)
    cache.peek(IMEI_1)
    cache.peek(IMEI_2)
    assert len(store.reads) == reads + 9
