"""The registry interface and the in-memory snapshot read on the hot path.

Owns:

- `Registry`, the storage protocol every backend implements (SQLite now,
  PostgreSQL later): open/close, import/export of list rows, `show`,
  `load_snapshot` and `current_version` (DESIGN.md section 7: a change log
  with increasing sequence numbers, polled cheaply).
- `EntryRow`, `ImportResult`, `RowError`: what crosses that interface.
- `Snapshot`: the compact, immutable, versioned copy of the lists that the
  S13 path decides from without touching the database (DESIGN.md section 4).

Snapshot layout, sized for tens of millions of IMEIs:

- ``imeis``: ``array('q')`` of 14-digit IMEIs as int64, sorted ascending
  (8 bytes per IMEI);
- ``kinds``: a parallel ``array('H')`` (2 bytes per IMEI) indexing a small
  tuple of distinct `ListEntry` values, i.e. (list, reason) pairs. One index
  instead of separate list-code and reason arrays saves a byte per IMEI and
  a lookup per check, and lets `lookup` hand out shared `ListEntry` objects
  without allocating;
- exceptions: a frozenset of ``imei << 51 | imsi_key(imsi)`` ints plus a
  frozenset of the IMEIs that have any, so most checks skip the pair test.

The kind table is kept sorted, so equal content gives equal arrays and
`digest()` compares snapshots across nodes regardless of load order.

POLICY.md sections implemented: the list and exception parts of "What the
registry must keep"; ranges, SV-restricted entries, TAC data and
observations are later issues.
"""

from __future__ import annotations

import hashlib
import sys
from array import array
from bisect import bisect_left
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Final, NamedTuple, Protocol, runtime_checkable

from eir.policy.model import (
    Facts,
    ListEntry,
    ListName,
    Sightings,
    imei_to_int,
    imsi_key,
    normalize_imei,
    normalize_imsi,
)
from eir.policy.ranges import RangeTable
from eir.policy.tac import TacTable

__all__ = [
    "ENTRY_LISTS",
    "EntryRow",
    "ImportResult",
    "Registry",
    "RowError",
    "Snapshot",
]

# Lists an IMEI can be on, as opposed to the "exception" pseudo-list.
ENTRY_LISTS: Final[tuple[ListName, ...]] = (ListName.WHITE, ListName.GREY, ListName.BLACK)

_PAIR_SHIFT: Final = 51  # imsi_key() < 2**51 for any 15-digit IMSI


class RowError(ValueError):
    """A row of an import is unacceptable; the whole import is rejected.

    ``line`` is the 1-based line in the source file (0 when not from a file).
    """

    def __init__(self, line: int, message: str) -> None:
        super().__init__(line, message)
        self.line = line
        self.message = message

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


# Not frozen: a frozen dataclass's __init__ sets each field through
# object.__setattr__, which made building a row cost 2.4 us against 0.5 us
# (measured), a fifth of a 10-million-row import. Treat a row as a value.
@dataclass(slots=True)
class EntryRow:
    """One list entry, range entry or exception pair as imported or exported.

    ``list`` is white, grey, black or exception; ``imsi`` is set exactly for
    exception rows. ``imei`` is always the normalized 14 digits; with ``hi``
    set the row covers the range ``imei..hi`` (a TAC is TAC000000..TAC999999),
    and with ``sv`` it applies only to that software version (both make a
    range entry). ``since`` and ``grace_until`` are UTC timestamps
    ``YYYY-MM-DDTHH:MM:SSZ``; ``since`` None on import means "now" (or, when
    replacing an entry on the same list, its old since). ``evidence`` is a
    reference (case number, receipt) kept with the entry. ``op`` is None or
    "add"/"update" (upsert) or "remove" (delete; absent is not an error),
    for delta lists. ``line`` is where the row came from, for errors only.
    """

    imei: str
    list: ListName
    reason: str
    imsi: str | None = None
    source: str | None = None
    note: str | None = None
    since: str | None = None
    grace_until: str | None = None
    evidence: str | None = None
    hi: str | None = None
    sv: str | None = None
    op: str | None = None
    line: int = field(default=0, compare=False)

    @property
    def is_range(self) -> bool:
        return self.hi is not None or self.sv is not None


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What one import stored: row counts per list, removals, skips and the new version.

    ``skipped`` counts rows of a full list left out because another source
    owns that IMEI's entry (a ministry list never erases a police report).
    """

    rows: int
    by_list: dict[str, int]
    version: int
    removed: int = 0
    skipped: int = 0


@runtime_checkable
class Registry(Protocol):
    """Storage of list entries, exception pairs and the change log.

    Every write appends to the change log in the same transaction, so
    `current_version()` (the last change-log sequence number) is a cheap
    poll that tells a running server when to reload its `Snapshot`.
    """

    async def open(self) -> None:
        """Connect and bring the schema up to date."""

    async def close(self) -> None:
        """Release connections; the registry cannot be used afterwards."""

    async def import_rows(
        self,
        rows: Iterable[EntryRow],
        *,
        on_chunk: Callable[[int], None] | None = None,
        kind: str = "import",
        actor: str | None = None,
        replace_source: str | None = None,
        summary: dict[str, Any] | None = None,
        list_version: Any = None,
    ) -> ImportResult:
        """Store all rows in one audited transaction, or none of them.

        ``replace_source`` makes the rows a full list of that source;
        ``summary`` goes into the audit record; ``list_version`` is recorded
        as the version the source's list is at (see
        `eir.policy.sqlite.SqliteRegistry.import_rows`).

        A row replaces any stored entry for the same IMEI (or the same
        (IMEI, IMSI) pair for exceptions). The same IMEI (or pair) twice in
        one call raises `RowError` naming the second row's line. Exceptions
        raised while iterating ``rows`` roll the transaction back and
        propagate. ``on_chunk(rows_done)`` is called as rows are written.
        """
        ...

    def export_rows(self, source: str | None = None) -> AsyncIterator[EntryRow]:
        """Yield every entry, range and exception pair (of one source), from one read."""
        ...

    async def show(self, imei: str) -> dict[str, Any]:
        """Everything stored about one IMEI, as a JSON-ready dict."""
        ...

    async def load_snapshot(self) -> Snapshot:
        """Build a `Snapshot` of the current content and its version."""
        ...

    async def current_version(self) -> int:
        """The sequence number of the last change (0 when none)."""
        ...


def _le_bytes(a: array[int]) -> bytes:
    # Digests must agree between nodes, whatever their byte order.
    if sys.byteorder == "little":
        return a.tobytes()
    b = array(a.typecode, a)
    b.byteswap()
    return b.tobytes()


class SnapshotParts(NamedTuple):
    imeis: array[int]
    kinds: array[int]
    kind_table: tuple[ListEntry, ...]
    exceptions: frozenset[int]
    since: array[int]
    grace_until: dict[int, int]


class Snapshot:
    """Immutable in-memory copy of the lists at one change-log version.

    Build with `Snapshot.build` (any order, any source) or, from a backend
    that already streams sorted data, `Snapshot.from_arrays`.
    """

    __slots__ = (
        "_digest",
        "_exc_imeis",
        "_exceptions",
        "_grace",
        "_imeis",
        "_kind_table",
        "_kinds",
        "_n",
        "_since",
        "list_versions",
        "ranges",
        "tac",
        "version",
    )

    version: int

    def __init__(
        self,
        imeis: array[int],
        kinds: array[int],
        kind_table: tuple[ListEntry, ...],
        exceptions: frozenset[int],
        version: int,
        *,
        since: array[int] | None = None,
        grace_until: dict[int, int] | None = None,
        ranges: RangeTable | None = None,
        tac: TacTable | None = None,
        list_versions: dict[str, int] | None = None,
    ) -> None:
        if imeis.typecode != "q":
            raise TypeError("imeis must be array('q')")
        if len(imeis) != len(kinds):
            raise ValueError("imeis and kinds must have the same length")
        keys = [_kind_sort_key(k) for k in kind_table]
        if any(a >= b for a, b in pairwise(keys)):
            # Sorted and unique, or equal content would give unequal digests.
            raise ValueError("kind_table must be sorted by (list, reason) without repeats")
        self._imeis = imeis
        self._kinds = kinds
        self._kind_table = kind_table
        self._exceptions = exceptions
        self._exc_imeis = frozenset(k >> _PAIR_SHIFT for k in exceptions)
        self._n = len(imeis)
        if since is not None and len(since) != self._n:
            raise ValueError("since must have one value per IMEI")
        # since: UTC epoch seconds per entry (0 = unknown), for grey grace
        # clocks; grace_until: the few entries with an explicit grace end.
        self._since = since if since is not None else array("I", bytes(4 * self._n))
        self._grace = grace_until or {}
        self.ranges = ranges if ranges is not None and len(ranges) else None
        self.tac = tac if tac is not None else TacTable.empty()
        self.list_versions = dict(list_versions or {})
        self.version = version
        self._digest: str | None = None

    # -- construction -------------------------------------------------------

    @classmethod
    def empty(cls, version: int = 0) -> Snapshot:
        return cls(array("q"), array("H"), (), frozenset(), version)

    @classmethod
    def build(
        cls,
        entries: Iterable[tuple[str, str, str] | tuple[str, str, str, int | None]],
        exceptions: Iterable[tuple[str, str]] = (),
        version: int = 0,
        **extra: Any,
    ) -> Snapshot:
        """Build from (imei14, list, reason[, since]) and (imei14, imsi) tuples.

        Input may be in any order; a later entry for the same IMEI replaces
        an earlier one, as a later write would in the database. ``since`` is
        UTC epoch seconds; ``extra`` takes the constructor's keyword arguments.
        """
        latest: dict[int, tuple[str, str]] = {}
        since_of: dict[int, int] = {}
        for imei, list_, reason, *rest in entries:
            name = ListName(list_)
            if name not in ENTRY_LISTS:
                raise ValueError(f"{imei}: {name.value!r} is not a list an IMEI can be on")
            key = imei_to_int(imei)
            latest[key] = (name.value, reason)
            since_of[key] = int(rest[0] or 0) if rest else 0
        kind_table = tuple(
            sorted({ListEntry(ListName(lst), r) for lst, r in latest.values()}, key=_kind_sort_key)
        )
        index = {(k.list.value, k.reason): i for i, k in enumerate(kind_table)}
        keys = sorted(latest)
        imeis = array("q", keys)
        kinds = array(_kind_typecode(len(kind_table)), (index[latest[k]] for k in keys))
        extra.setdefault("since", array("I", (since_of[k] for k in keys)))
        return cls(imeis, kinds, kind_table, cls.exception_keys(exceptions), version, **extra)

    @classmethod
    def from_arrays(
        cls,
        imeis: array[int],
        kinds: array[int],
        kind_table: tuple[ListEntry, ...],
        exceptions: frozenset[int],
        version: int,
        **extra: Any,
    ) -> Snapshot:
        """Adopt arrays a backend built itself (already sorted, no duplicates).

        Sortedness is trusted, not checked: checking would cost a Python-level
        pass over tens of millions of items on every reload. ``extra`` takes
        the keyword arguments of the constructor (since, ranges, tac, ...).
        """
        return cls(imeis, kinds, kind_table, exceptions, version, **extra)

    def parts(self) -> SnapshotParts:
        """The arrays and tables inside, for `eir.policy.snapshot_file` (do not mutate)."""
        return SnapshotParts(self._imeis, self._kinds, self._kind_table, self._exceptions,
                             self._since, self._grace)

    @staticmethod
    def exception_keys(pairs: Iterable[tuple[str, str]]) -> frozenset[int]:
        """Encode (imei14, imsi) pairs as the snapshot's exception keys."""
        return frozenset(
            (imei_to_int(imei) << _PAIR_SHIFT) | imsi_key(imsi) for imei, imsi in pairs
        )

    @staticmethod
    def kind_typecode(n_kinds: int) -> str:
        return _kind_typecode(n_kinds)

    # -- hot path -----------------------------------------------------------

    def lookup(self, imei14: str, imsi: str | None = None) -> tuple[ListEntry | None, bool]:
        """Return (entry or None, pair_is_exception) for a normalized IMEI.

        ``imei14`` must be 14 decimal digits and ``imsi`` None or a valid
        IMSI (see `normalize_imei` / `normalize_imsi`); `facts` does both.
        """
        key = int(imei14)
        imeis = self._imeis
        i = bisect_left(imeis, key)
        entry = None
        if i < self._n and imeis[i] == key:
            entry = self._kind_table[self._kinds[i]]
        pair = False
        if imsi is not None and key in self._exc_imeis:
            pair = ((key << _PAIR_SHIFT) | int("1" + imsi)) in self._exceptions
        return entry, pair

    def lookup_full(
        self, key: int, imsi: str | None, sv: str | None
    ) -> tuple[ListEntry | None, int | None, int | None, bool]:
        """(entry, since, grace_until, pair_is_exception) for IMEI ``key`` (int of 14 digits).

        The entry is the most specific one (see `eir.policy.ranges`): an exact
        IMEI entry, unless a range table holds an entry for this IMEI and SV.
        """
        imeis = self._imeis
        i = bisect_left(imeis, key)
        entry = None
        since: int | None = None
        grace: int | None = None
        if i < self._n and imeis[i] == key:
            entry = self._kind_table[self._kinds[i]]
            since = self._since[i] or None
            if self._grace:
                grace = self._grace.get(key)
        ranges = self.ranges
        if ranges is not None:
            hit = ranges.find(key, sv)
            if hit is not None and (entry is None or (hit.sv is not None and hit.hi == hit.lo)):
                entry, since, grace = hit.entry, hit.since, hit.grace_until
        pair = False
        if imsi is not None and key in self._exc_imeis:
            pair = ((key << _PAIR_SHIFT) | int("1" + imsi)) in self._exceptions
        return entry, since, grace, pair

    def facts(
        self,
        imei: str,
        imsi: str | None = None,
        software_version: str | None = None,
        *,
        now: int = 0,
        sightings: Sightings | None = None,
        operator: str | None = None,
    ) -> Facts:
        """Normalize the raw inputs of one check and gather its `Facts`."""
        imei14 = normalize_imei(imei)
        imsi_n = normalize_imsi(imsi)
        if imei14 is None:
            return Facts(imei, None, imsi_n, software_version, now=now, operator=operator)
        key = int(imei14)
        entry, since, grace, pair = self.lookup_full(key, imsi_n, software_version)
        tac = self.tac
        cls = tac.lookup(key // 1_000_000) if tac.loaded else None
        return Facts(imei, imei14, imsi_n, software_version, entry, pair, now, since, grace,
                     (cls is not None) if tac.loaded else None, cls, sightings, operator)

    # -- introspection ------------------------------------------------------

    def __len__(self) -> int:
        return self._n

    @property
    def entry_count(self) -> int:
        """Number of IMEIs on any list (same as ``len(snapshot)``)."""
        return self._n

    @property
    def exception_count(self) -> int:
        return len(self._exceptions)

    @property
    def kind_table(self) -> tuple[ListEntry, ...]:
        return self._kind_table

    def counts(self) -> dict[str, int]:
        """Number of IMEIs per list (metrics; 0.12 s for ten million entries).

        With at most 256 kinds every kind id is in the low byte of its item:
        those bytes are mapped to their kind's list (``bytes.translate``) and
        each list counted (``bytes.count``), all C-level passes, where
        ``array.count`` compares item by item as Python objects (4 s for 20 kinds).
        """
        out = {lst.value: 0 for lst in ENTRY_LISTS}
        table = self._kind_table
        if len(table) <= 256:
            size = self._kinds.itemsize
            raw = self._kinds.tobytes()
            low = raw if size == 1 else \
                raw[0::size] if sys.byteorder == "little" else raw[size - 1::size]
            names = list(out)
            to_list = bytes(names.index(k.list.value) for k in table).ljust(256, b"\xff")
            mapped = low.translate(to_list)
            for i, name in enumerate(names):
                out[name] = mapped.count(i)
            return out
        per_kind = [0] * len(table)
        for k in self._kinds:
            per_kind[k] += 1
        for kind, n in zip(table, per_kind, strict=True):
            out[kind.list.value] += n
        return out

    def digest(self) -> str:
        """SHA-256 of the content (not the version), hex; equal content, equal digest."""
        if self._digest is None:
            h = hashlib.sha256(b"eir-snapshot-v1\0")
            h.update(self._n.to_bytes(8, "little"))
            h.update(_le_bytes(self._imeis))
            h.update(self._kinds.typecode.encode())
            h.update(_le_bytes(self._kinds))
            for kind in self._kind_table:
                h.update(f"{kind.list.value}\x1f{kind.reason}\x1e".encode())
            h.update(b"\0exceptions\0")
            for key in sorted(self._exceptions):
                h.update(key.to_bytes(13, "little"))
            h.update(b"\0since\0")
            h.update(_le_bytes(self._since))
            for key in sorted(self._grace):
                h.update(f"{key}:{self._grace[key]};".encode())
            h.update(b"\0ranges\0")
            for r in self.ranges.entries if self.ranges is not None else ():
                h.update(f"{r.lo}-{r.hi}/{r.sv}/{r.entry.list.value}/{r.entry.reason}/"
                         f"{r.since}/{r.grace_until}\x1e".encode())
            h.update(b"\0tac\0")
            self.tac.digest_into(h)
            self._digest = h.hexdigest()
        return self._digest

    def __repr__(self) -> str:
        return (
            f"Snapshot(version={self.version}, imeis={self._n}, "
            f"kinds={len(self._kind_table)}, exceptions={len(self._exceptions)}, "
            f"ranges={len(self.ranges) if self.ranges else 0}, tacs={len(self.tac)})"
        )


def _kind_sort_key(kind: ListEntry) -> tuple[str, str]:
    return (kind.list.value, kind.reason)


def _kind_typecode(n_kinds: int) -> str:
    # 'H' covers 65,536 distinct (list, reason) pairs; free-text reasons
    # could exceed that, so fall back to 4 bytes rather than fail.
    return "H" if n_kinds <= 0x10000 else "I"
