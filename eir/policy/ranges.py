"""Range and software-version entries, and the "most specific entry wins" lookup.

Owns the in-memory index of list entries that cover more than one IMEI (a
TAC, i.e. 1,000,000 serials, or an explicit IMEI range) or that apply only
to some software versions (TS 29.272 6.2.1.3 lets the black and grey lists
match on the SV; POLICY.md "Entries may cover ranges").

Specificity, fixed here and documented in the README: the narrower range
wins; at equal width an entry restricted to a software version beats one
that is not; an exact IMEI entry (width 1, any SV) therefore beats every
range, and loses only to an entry for the same IMEI and the IMEI's SV.

The index is an elementary-interval table: the boundaries of all ranges cut
the IMEI line into segments, and each segment is labelled once, at build
time, with its most specific range (ranges painted widest first, so a
narrower one paints over). A lookup is one bisect, whatever the nesting.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass

from eir.policy.model import ListEntry

__all__ = ["RangeEntry", "RangeTable"]


@dataclass(frozen=True, slots=True)
class RangeEntry:
    """One range entry: IMEIs ``lo..hi`` (inclusive, 14-digit ints), optionally one SV."""

    lo: int
    hi: int
    sv: str | None
    entry: ListEntry
    since: int | None = None
    grace_until: int | None = None

    @property
    def width(self) -> int:
        return self.hi - self.lo + 1


class _Segments:
    """Elementary segments of a set of ranges, each labelled with its narrowest range."""

    __slots__ = ("_label", "_ranges", "_starts")

    def __init__(self, ranges: list[RangeEntry]) -> None:
        bounds = sorted({r.lo for r in ranges} | {r.hi + 1 for r in ranges})
        label = array("i", [-1] * len(bounds))
        # Widest first, ties in a fixed order, so the result does not depend
        # on input order and a narrower range overwrites a wider one.
        order = sorted(range(len(ranges)), key=lambda i: (-ranges[i].width, ranges[i].lo, i))
        for i in order:
            r = ranges[i]
            j = bisect_right(bounds, r.lo) - 1
            while j < len(bounds) and bounds[j] <= r.hi:
                label[j] = i
                j += 1
        self._starts = array("q", bounds)
        self._label = label
        self._ranges = ranges

    def find(self, key: int) -> RangeEntry | None:
        j = bisect_right(self._starts, key) - 1
        if j < 0:
            return None
        i = self._label[j]
        return None if i < 0 else self._ranges[i]


class RangeTable:
    """Immutable index of range and SV-restricted entries."""

    __slots__ = ("_any", "_by_sv", "entries")

    def __init__(self, entries: Iterable[RangeEntry]) -> None:
        self.entries: tuple[RangeEntry, ...] = tuple(
            sorted(entries, key=lambda r: (r.lo, r.hi, r.sv or ""))
        )
        plain = [r for r in self.entries if r.sv is None]
        self._any = _Segments(plain) if plain else None
        by_sv: dict[str, list[RangeEntry]] = {}
        for r in self.entries:
            if r.sv is not None:
                by_sv.setdefault(r.sv, []).append(r)
        self._by_sv = {sv: _Segments(rs) for sv, rs in by_sv.items()}

    def __len__(self) -> int:
        return len(self.entries)

    def find(self, key: int, sv: str | None) -> RangeEntry | None:
        """The most specific range entry covering IMEI ``key`` for software version ``sv``."""
        best = self._any.find(key) if self._any is not None else None
        if sv is not None and self._by_sv:
            seg = self._by_sv.get(sv)
            if seg is not None:
                hit = seg.find(key)
                if hit is not None and (best is None or hit.width <= best.width):
                    best = hit
        return best
