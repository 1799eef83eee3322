"""The cyclic garbage collector's policy in a serving process: short pauses, none long.

CPython's collector pauses the event loop for as long as it walks the
objects of the generation it collects. Left to its defaults on a serving
EIR it walks the whole hot set of observations (a few million small
containers) in each full collection, which held every answer for 0.3 to
1.4 s; the young collections alone, at a gen-0 threshold of 50,000, held it
for 10 to 50 ms (bench/README.md, "2026-12-03 09:40, the latency tail").

What this module sets, once the snapshot is loaded (`tune`), and after each
write-behind flush (`settle`):

- everything alive at start is frozen out of the collector's view
  (``gc.freeze``): the snapshot, the modules, the configuration;
- gen 0 is collected every ``GEN0`` net allocations and gen 1 every
  ``GEN1`` gen-0 collections, so a pause walks at most about
  ``GEN0 * (GEN1 + 1)`` objects (a few milliseconds);
- on uvloop, full collections are not run automatically, and each flush
  freezes what survived it: the hot set's histories are long-lived by design
  and are freed by reference counting when evicted, so walking them again
  and again finds nothing. This is safe only because the serving path makes
  no reference cycles that outlive a collection of the young generations:
  ECRs, answers, connections that end with DPR or a reset, flushes
  (`tests/integration/test_gc_policy.py` checks it). Under the standard
  asyncio loop a closed transport is left in a reference cycle, so there the
  automatic full collections stay on and nothing is frozen after start.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Final

__all__ = ["GEN0", "GEN1", "settle", "tune"]

GEN0: Final = 4_000
GEN1: Final = 3
_NEVER: Final = 2**31 - 1  # gen-2 threshold: full collections only when asked for


def _on_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:
        return False
    try:
        return isinstance(asyncio.get_running_loop(), uvloop.Loop)
    except RuntimeError:
        return False


def tune() -> bool:
    """Set the policy after the start-up allocations; True if flushes are to `settle` it."""
    gc.collect()
    gc.freeze()
    if _on_uvloop():
        gc.set_threshold(GEN0, GEN1, _NEVER)
        return True
    gc.set_threshold(GEN0, GEN1, 10)
    return False


def settle() -> None:
    """After a flush: collect the young generations, then freeze what survived them."""
    gc.collect(1)
    gc.freeze()
