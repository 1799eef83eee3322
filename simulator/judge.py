"""Judging answers at load-test rates: `simulator.expect` with a per-handset memo.

Owns the ``expect(index, sim_time, first_sent)`` callable the load driver
calls once per answer. `simulator.expect` states the regime; this module
only avoids asking it again while its answer cannot have changed: an
outcome found at simulated time ``t`` (not ambiguous there) stays the
judgement for later checks of the same handset until ``margin`` before its
next change (``Expectation.until``), or before a clone member's cluster
lapses (which `ambiguous` treats as unjudgeable). Outcomes only change at
those instants (grey to black at a deadline, POLICY.md "precise meanings"),
so the memo never differs from asking `expect` every time; a test checks
that on every category across a fast-forwarded clock.

A handset's ``first_sent`` is fixed once the run first sends it, before
any of its answers is judged, so it is not part of the memo's key.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence

from .expect import Regime, ambiguous, clone_lapse, expectation
from .population import Handset

__all__ = ["Judge"]


class Judge:
    """``judge(i, at, first_sent) -> outcome key | None`` (None: too close to call)."""

    __slots__ = ("handsets", "margin", "regime", "since", "until", "value")

    def __init__(self, handsets: Sequence[Handset], regime: Regime, margin: float) -> None:
        n = len(handsets)
        self.handsets = handsets
        self.regime = regime
        self.margin = margin
        self.since = array("d", [math.inf]) * n  # memo valid for since <= at < until
        self.until = array("d", [-math.inf]) * n
        self.value: list[str] = [""] * n

    def __call__(self, i: int, at: float, first_sent: float) -> str | None:
        if self.since[i] <= at < self.until[i]:
            return self.value[i]
        return self._ask(i, at, first_sent)

    def forget(self, i: int) -> None:
        """Drop the memo of handset ``i`` (its first check is to be counted again)."""
        self.since[i], self.until[i] = math.inf, -math.inf

    def _ask(self, i: int, at: float, first_sent: float) -> str | None:
        h, regime, margin = self.handsets[i], self.regime, self.margin
        first = None if math.isnan(first_sent) else first_sent
        if ambiguous(h, at, first, regime, margin):
            return None
        e = expectation(h, at, first, regime)
        hi = math.inf if e.until is None else e.until - margin
        if h.category == "clone" and h.role == "member":
            lapse = clone_lapse(h, regime)
            if lapse is not None:
                hi = min(hi, lapse + 1 - margin)
        self.since[i], self.until[i], self.value[i] = at, hi, e.outcome
        return e.outcome
