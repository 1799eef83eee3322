"""A sampled histogram of the time requests spend inside the node, for metrics.

Owns what ``eir_request_duration_seconds`` measures (README "Metrics"): one
read of a peer socket in ``every`` is timed in `eir.diameter.transport`,
from the moment the read's bytes are handed to the peer machine to the
moment the answers to every request in it have been handed to the kernel
(``transport.write``: one write per read). Every request completed in that
read waited that long inside the node, so the read counts once per request
(its weight): the histogram is the distribution of the in-node answer time
of the requests in the sampled reads. What happened before the read (the
request waiting in the socket while the loop was busy) is not in it; the
overload guard's loop lag measures that.

The requests not sampled pay one integer decrement each read; the sampled
one two clock reads and a bisection. No I/O here: the transport passes the
times in.
"""

from __future__ import annotations

from bisect import bisect_left

# upper bounds (seconds): fine below a millisecond, where an in-memory EIR answers
BUCKETS: tuple[float, ...] = (
    0.00005, 0.0001, 0.00015, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)


class Sampler:
    """Counts per bucket (the last is +Inf), their sum and count; the countdown to the next
    timed read."""

    __slots__ = ("buckets", "countdown", "counts", "every", "reads", "total", "weight")

    def __init__(self, every: int, buckets: tuple[float, ...] = BUCKETS) -> None:
        if every < 1:
            raise ValueError("every: must be at least 1")
        if list(buckets) != sorted(set(buckets)):
            raise ValueError("buckets: must be increasing")
        self.every = every
        self.countdown = every
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0  # seconds, weighted
        self.weight = 0  # requests observed
        self.reads = 0  # reads timed

    def observe(self, seconds: float, requests: int) -> None:
        """One timed read that completed ``requests`` requests (none: a partial message,
        not counted)."""
        self.countdown = self.every
        if requests <= 0:
            return
        self.counts[bisect_left(self.buckets, seconds)] += requests
        self.total += seconds * requests
        self.weight += requests
        self.reads += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, requests at or below it), +Inf last, as Prometheus buckets are."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out
