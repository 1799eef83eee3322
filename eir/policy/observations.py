"""Observations on the hot path: a bounded hot set in memory, batched writes behind it.

Owns the in-memory side of POLICY.md's observations ((IMEI, IMSI, operator)
with first and last seen, "the earliest sighting wins") and DESIGN.md 4's
rule that they are buffered and written in batches:

- `SightingCache.observe` updates the IMEI's `Sightings` and queues a row
  for the store when the pair is new or its last-seen is older than the
  resolution (one hour by default), so a device that attaches a thousand
  times an hour costs one write an hour, and an attach storm no list write;
- the hot set is bounded (``max_imeis``): on a miss the IMEI's history is
  read from the store with one synchronous point read (a primary-key range
  of a clustered table, a few microseconds in SQLite) and merged with the
  rows queued or being written, so eviction never loses a sighting;
- a cached history older than ``ttl`` seconds is read again, so several
  worker processes sharing one registry converge on the same history
  (each worker's own unflushed sightings are merged back in);
- `flush` hands the queued rows to the store in one batch. A crash loses
  at most the rows queued since the last flush: ``flush_seconds`` of
  sightings (1 s by default), or ``max_pending`` rows, whichever is less.
  The rows go as a lazy iterator in IMEI order, so turning the batch into
  rows happens row by row in the writer's thread, between its SQLite steps,
  not as one block of the event loop (a 12,000-row batch built at once held
  the loop for about 15 ms).

Read-only questions (the dry run, the public check) use `peek`, which
never queues anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Protocol

from eir.policy.model import Sightings

__all__ = ["ObservationRow", "ObservationStore", "SightingCache"]

ObservationRow = tuple[int, str, str, int, int]
"""(imei as int, imsi or '', operator, first_seen, last_seen); times UTC epoch seconds."""


class ObservationStore(Protocol):
    def read_sightings(self, imei: int) -> list[tuple[str, int, int]]:
        """(imsi or '', first_seen, last_seen) of every stored row of one IMEI; synchronous."""
        ...

    async def write_sightings(self, rows: Iterable[ObservationRow],
                              operators: Collection[str] | None = None) -> None:
        """Store rows idempotently: first_seen = MIN, last_seen = MAX per (imei, imsi, operator).

        ``operators``, when given, names every operator of ``rows``: the rows
        may then be a lazy iterator, consumed where the write runs.
        """
        ...


class SightingCache:
    """The observation hot set of one process."""

    def __init__(
        self,
        store: ObservationStore | None,
        is_home: Callable[[str | None], bool],
        *,
        max_imeis: int = 1_000_000,
        resolution: int = 3600,
        ttl: float = 30.0,
        max_pending: int = 200_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_imeis < 1:
            raise ValueError("max_imeis must be positive")
        self._store = store
        self._is_home = is_home
        self._max = max_imeis
        self._resolution = resolution
        self._ttl = ttl
        self.max_pending = max_pending
        self._monotonic = monotonic
        # imei -> (sightings, monotonic time loaded)
        self._hot: dict[int, tuple[Sightings, float]] = {}
        # imei -> {(imsi, operator): [first, last]}; swapped out whole by
        # flush(). Keyed by IMEI first so a miss merges its rows in O(1).
        self._pending: dict[int, dict[tuple[str, str], list[int]]] = {}
        # batches being written (flushes may overlap: the flush and notify loops)
        self._inflight: list[dict[int, dict[tuple[str, str], list[int]]]] = []
        self._pending_rows = 0
        self._operators: set[str] = set()  # of the pending rows
        self.misses = 0
        self.written = 0

    def __len__(self) -> int:
        return len(self._hot)

    @property
    def pending(self) -> int:
        """Rows queued for the next flush."""
        return self._pending_rows

    def observe(
        self, imei: int, imsi: str | None, operator: str, now: int
    ) -> tuple[Sightings, bool]:
        """Record one sighting; return the IMEI's history and whether the pair is new."""
        got = self._hot.get(imei)
        stale = got is None or self._monotonic() - got[1] > self._ttl
        seen = self._load(imei) if stale or got is None else got[0]
        key = imsi or ""
        rec = seen.imsis.get(key)
        if rec is None:
            seen.add(key, now, now, self._is_home(imsi))
            self._queue(imei, key, operator, now)
            return seen, True
        if now - rec[1] >= self._resolution:
            rec[1] = now
            self._queue(imei, key, operator, now)
        elif now < rec[0]:  # a clock moved back (tests); the earliest sighting still wins
            seen.add(key, now, now, bool(rec[2]))
            self._queue(imei, key, operator, now)
        return seen, False

    def peek(self, imei: int, *, cached: bool = True) -> Sightings:
        """The IMEI's history, without recording anything.

        ``cached=False`` (the public check) reads the store and the buffers
        every time and leaves the hot set alone: every IMEI then costs the
        same one point read, whether the network used it a second ago or
        never (no timing difference to measure), and public questions
        cannot evict the histories S13 is using.
        """
        if not cached:
            return self._read(imei)
        got = self._hot.get(imei)
        if got is not None and self._monotonic() - got[1] <= self._ttl:
            return got[0]
        return self._load(imei)

    def _queue(self, imei: int, imsi: str, operator: str, now: int) -> None:
        rows = self._pending.get(imei)
        if rows is None:
            rows = self._pending[imei] = {}
        k = (imsi, operator)
        rec = rows.get(k)
        if rec is None:
            rows[k] = [now, now]
            self._pending_rows += 1
            self._operators.add(operator)
        else:
            rec[0] = min(rec[0], now)
            rec[1] = max(rec[1], now)

    def _load(self, imei: int) -> Sightings:
        self.misses += 1
        seen = self._read(imei)
        hot = self._hot
        if len(hot) >= self._max and imei not in hot:
            # Drop the oldest-loaded hundredth: cheap, and nothing is lost
            # (a dropped IMEI is read back from the store and the buffers).
            for k in list(hot)[: max(1, self._max // 100)]:
                del hot[k]
        hot.pop(imei, None)  # re-inserted at the end: the newest load is evicted last
        hot[imei] = (seen, self._monotonic())
        return seen

    def _read(self, imei: int) -> Sightings:
        """The IMEI's history from the store and the rows not yet in it."""
        seen = Sightings()
        is_home = self._is_home
        if self._store is not None:
            for imsi, first, last in self._store.read_sightings(imei):
                seen.add(imsi, first, last, is_home(imsi or None))
        # Rows not yet in the store: being written now, or still queued.
        for buf in (*self._inflight, self._pending):
            rows = buf.get(imei)
            if rows:
                for (imsi, _op), (first, last) in rows.items():
                    seen.add(imsi, first, last, is_home(imsi or None))
        return seen

    async def flush(self) -> int:
        """Write the queued rows as one batch; return how many were written."""
        if not self._pending or self._store is None:
            return 0
        batch, self._pending = self._pending, {}
        n, self._pending_rows = self._pending_rows, 0
        operators, self._operators = self._operators, set()
        self._inflight.append(batch)
        try:
            await self._store.write_sightings(_rows(batch, sorted(batch)), operators)
        except BaseException:
            # Keep the rows for the next attempt rather than lose them.
            for i, recs in batch.items():
                for (s, o), (f, la) in recs.items():
                    self._queue(i, s, o, f)
                    self._queue(i, s, o, la)
            raise
        finally:
            self._inflight.remove(batch)
        self.written += n
        return n


def _rows(batch: dict[int, dict[tuple[str, str], list[int]]],
          imeis: list[int]) -> Iterator[ObservationRow]:
    for i in imeis:
        for (s, o), (f, la) in batch[i].items():
            yield i, s, o, f, la
