"""The TAC database in memory: TAC -> device class, for POLICY.md steps 5 and 6.

Owns the compact table the hot path reads: a sorted ``array('I')`` of
8-digit TACs (TS 23.003 6.2: the first 8 digits of the IMEI) and a parallel
array indexing a small tuple of device classes (lower case). Brand and
model stay in the database; only the class decides anything. Millions of
TACs cost 5-6 bytes each.
"""

from __future__ import annotations

import hashlib
import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterable

__all__ = ["TacTable"]


class TacTable:
    __slots__ = ("_classes", "_kinds", "_n", "_tacs")

    def __init__(self, tacs: array[int], kinds: array[int], classes: tuple[str, ...]) -> None:
        if len(tacs) != len(kinds):
            raise ValueError("tacs and kinds must have the same length")
        self._tacs = tacs
        self._kinds = kinds
        self._classes = classes
        self._n = len(tacs)

    @classmethod
    def empty(cls) -> TacTable:
        return cls(array("I"), array("H"), ())

    @classmethod
    def build(cls, rows: Iterable[tuple[int, str]]) -> TacTable:
        """From (tac, class) pairs in any order; a later pair for a TAC wins."""
        latest = {int(tac): cls_.strip().lower() for tac, cls_ in rows}
        classes = tuple(sorted(set(latest.values())))
        index = {c: i for i, c in enumerate(classes)}
        keys = sorted(latest)
        return cls(array("I", keys), array("H", (index[latest[k]] for k in keys)), classes)

    def parts(self) -> tuple[array[int], array[int], tuple[str, ...]]:
        """(tacs, kind indexes, classes), for `eir.policy.snapshot_file` (do not mutate)."""
        return self._tacs, self._kinds, self._classes

    @property
    def loaded(self) -> bool:
        """Whether any TAC is known; POLICY.md step 5 applies only then."""
        return self._n > 0

    def __len__(self) -> int:
        return self._n

    def lookup(self, tac: int) -> str | None:
        """The device class of a TAC, or None if the TAC is not in the table."""
        tacs = self._tacs
        i = bisect_left(tacs, tac)
        if i < self._n and tacs[i] == tac:
            return self._classes[self._kinds[i]]
        return None

    def digest_into(self, h: hashlib._Hash) -> None:
        h.update(self._n.to_bytes(8, "little"))
        for a in (self._tacs, self._kinds):
            if sys.byteorder == "little":
                h.update(a.tobytes())
            else:  # digests must agree between nodes whatever their byte order
                b = array(a.typecode, a)
                b.byteswap()
                h.update(b.tobytes())
        for c in self._classes:
            h.update(c.encode() + b"\x1e")
