"""What a simulator run measured, with bounded memory, and the report dict made from it.

Owns the recording half of issue 4 item 4: latencies in an HdrHistogram
(microseconds, 1 us..60 s, 3 significant digits: a log-bucketed histogram,
never a sorted list of millions), a per-second timeline (sent, answered,
timeouts, p50/p99 of that second, status mix), counts by status and by
category (sent, answered, mismatches, statuses, expected outcomes), the
protocol counters of the MME client, and up to ``MAX_EXAMPLES`` mismatch
examples. ``Recorder.report`` produces the REPORT DICT, the contract with
``simulator.report`` (version 1).

Outcome keys follow the simulator contract: "WHITELISTED", "GREYLISTED",
"BLACKLISTED" (2001 with that Equipment-Status, TS 29.272 7.3.51), the
decimal Result-Code or Experimental-Result-Code otherwise (e.g. "5422",
TS 29.272 7.4.3; "3004", RFC 6733 7.1.3), "timeout" for no answer in time.

Definitions used in the report:

- a *mismatch* is an answer (not a timeout) whose key differs from the
  expected one; an expectation of ``None`` means "not judged" and is never
  a mismatch (counted under the expected key "unjudged");
- *errors* are answers whose key is neither an Equipment-Status nor 5422
  (the one result code an expectation can name), plus the protocol errors
  that lost answers without producing one (``PROTOCOL_ERROR_COUNTERS``).

The hot path is ``sent`` and ``answer``: one list increment, or one dict
increment keyed by (category, expected, got) and one latency-count
increment. Everything else (by status, by category, the histogram) is
folded once a second by ``tick``, from at most a few thousand distinct
keys, so recording costs well under a microsecond per answer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from hdrh.histogram import HdrHistogram

__all__ = [
    "HIST_MAX_US",
    "MAX_EXAMPLES",
    "PROTOCOL_ERROR_COUNTERS",
    "STATUS_KEYS",
    "Recorder",
    "percentile_points",
]

HIST_MIN_US = 1
HIST_MAX_US = 60_000_000
HIST_DIGITS = 3
MAX_EXAMPLES = 50
TIMEOUT = "timeout"
UNJUDGED = "unjudged"
# answers that carry a decision the contract names: never "errors"
STATUS_KEYS = frozenset({"WHITELISTED", "GREYLISTED", "BLACKLISTED", "5422"})
# protocol counters (of simulator.mme) that stand for answers lost to a broken peer
# (an undecodable ECA is already an "undecodable" outcome: not counted twice)
PROTOCOL_ERROR_COUNTERS = ("framing_errors",)
# 3 significant digits: values below 2048 are kept exact, above that the low bits go,
# as HdrHistogram's own sub-buckets do (2 * 10**3 rounded up to a power of two)
_SUB_BUCKET_BITS = 11


def percentile_points(n: int = 50, top: float = 99.999) -> list[float]:
    """``n`` percentiles from 0 to ``top``, evenly spaced in log(1 / (1 - p)).

    That is the HdrHistogram percentile-curve spacing: as many points
    between 99 and 99.9 as between 90 and 99, so the tail is drawn.
    """
    decades = -math.log10(1 - top / 100)
    out = [round(100 * (1 - 10 ** (-decades * i / (n - 1))), 6) for i in range(n)]
    out[-1] = top
    return out


def _quantise(v: int) -> int:
    b = v.bit_length() - _SUB_BUCKET_BITS
    return v if b <= 0 else (v >> b) << b


class _Second:
    """The counts of one timeline bucket, before it is folded."""

    __slots__ = ("counts", "latency", "sent")

    def __init__(self, n_categories: int) -> None:
        self.sent = [0] * n_categories
        self.counts: dict[tuple[int, str | None, str], int] = {}
        self.latency: dict[int, int] = {}  # microseconds -> answers


class Recorder:
    """Accumulates a run; ``report`` turns it into the report dict.

    Categories are registered up front or on first use (``category``) and
    then named by index on the hot path. Time is ``time.monotonic()``
    seconds; ``t0`` is the start of the run (the first timeline bucket).
    """

    def __init__(self, categories: Iterable[str] = (), *, t0: float | None = None,
                 max_examples: int = MAX_EXAMPLES) -> None:
        self.t0 = time.monotonic() if t0 is None else t0
        self.started_at = datetime.now(UTC)
        self.categories: list[str] = []
        self._cat_index: dict[str, int] = {}
        for c in categories:
            self.category(c)
        self.hist = HdrHistogram(HIST_MIN_US, HIST_MAX_US, HIST_DIGITS)
        self.max_examples = max_examples
        self.examples: list[dict[str, Any]] = []
        self.timeline: list[dict[str, Any]] = []
        self.sent_total = 0
        self.answered = 0
        self.timeouts = 0
        self.mismatches = 0
        self.by_status: dict[str, int] = {}
        self.cat_sent: list[int] = []
        self.cat_answered: list[int] = []
        self.cat_mismatches: list[int] = []
        self.cat_status: list[dict[str, int]] = []
        self.cat_expected: list[dict[str, int]] = []
        self._grow()
        self._cur = _Second(len(self.categories))
        self._bucket_start = self.t0
        self.first_answer: float | None = None
        self.last_answer: float | None = None

    # -- categories --

    def category(self, name: str) -> int:
        """The index of category ``name``, registering it if new."""
        i = self._cat_index.get(name)
        if i is None:
            i = self._cat_index[name] = len(self.categories)
            self.categories.append(name)
            if hasattr(self, "_cur"):
                self._grow()
                self._cur.sent.append(0)
        return i

    def _grow(self) -> None:
        while len(self.cat_sent) < len(self.categories):
            self.cat_sent.append(0)
            self.cat_answered.append(0)
            self.cat_mismatches.append(0)
            self.cat_status.append({})
            self.cat_expected.append({})

    # -- the hot path --

    def sent(self, cat: int, n: int = 1) -> None:
        self._cur.sent[cat] += n

    def current_sent(self) -> list[int]:
        """The current bucket's sent counts by category, to add to in a batch.

        Valid until the next ``tick`` or ``category`` call.
        """
        return self._cur.sent

    def answer(self, cat: int, expected: str | None, got: str, latency_us: int) -> bool:
        """One answer (or ``got == "timeout"``); True when it is a mismatch.

        ``latency_us`` is ignored for timeouts (pass -1).
        """
        counts = self._cur.counts
        k = (cat, expected, got)
        counts[k] = counts.get(k, 0) + 1
        if got == TIMEOUT:
            return False
        lat = self._cur.latency
        lat[latency_us] = lat.get(latency_us, 0) + 1
        return expected is not None and expected != got

    def example(self, category: str, imei: str, imsi: str | None, expected: str | None,
                got: str, sim_time: float | None) -> None:
        """Keep a mismatch example, up to ``max_examples`` of them."""
        if len(self.examples) < self.max_examples:
            self.examples.append({"category": category, "imei": imei, "imsi": imsi,
                                  "expected": expected, "got": got, "sim_time": sim_time})

    @property
    def wants_examples(self) -> bool:
        return len(self.examples) < self.max_examples

    # -- folding --

    def tick(self, now: float | None = None) -> dict[str, Any]:
        """Close the current timeline bucket (normally once a second) and return it."""
        now = time.monotonic() if now is None else now
        cur, self._cur = self._cur, _Second(len(self.categories))
        start, self._bucket_start = self._bucket_start, now
        sent = sum(cur.sent)
        answered = timeouts = 0
        status: dict[str, int] = {}
        for cat, n in enumerate(cur.sent):
            self.cat_sent[cat] += n
        for (cat, exp, got), n in cur.counts.items():
            status[got] = status.get(got, 0) + n
            cs = self.cat_status[cat]
            cs[got] = cs.get(got, 0) + n
            ek = UNJUDGED if exp is None else exp
            ce = self.cat_expected[cat]
            ce[ek] = ce.get(ek, 0) + n
            if got == TIMEOUT:
                timeouts += n
                continue
            answered += n
            self.cat_answered[cat] += n
            if exp is not None and exp != got:
                self.cat_mismatches[cat] += n
                self.mismatches += n
        for k, n in status.items():
            self.by_status[k] = self.by_status.get(k, 0) + n
        self.sent_total += sent
        self.answered += answered
        self.timeouts += timeouts
        p50, p99 = self._fold_latency(cur.latency)
        if answered:
            if self.first_answer is None:
                self.first_answer = start
            self.last_answer = now
        entry = {"t": round(start - self.t0, 3), "sent": sent, "answered": answered,
                 "timeouts": timeouts, "p50_ms": p50, "p99_ms": p99, "by_status": status}
        self.timeline.append(entry)
        return entry

    def _fold_latency(self, lat: Mapping[int, int]) -> tuple[float | None, float | None]:
        if not lat:
            return None, None
        q: dict[int, int] = {}
        for v, n in lat.items():
            v = min(max(v, HIST_MIN_US), HIST_MAX_US)
            k = _quantise(v)
            q[k] = q.get(k, 0) + n
        record = self.hist.record_value
        total = 0
        for v, n in q.items():
            record(v, n)
            total += n
        # the second's own percentiles, exact to the same 3 digits as the histogram
        items = sorted(q.items())
        want50, want99 = math.ceil(total * 0.50), math.ceil(total * 0.99)
        p50 = p99 = None
        seen = 0
        for v, n in items:
            seen += n
            if p50 is None and seen >= want50:
                p50 = v / 1000
            if seen >= want99:
                p99 = v / 1000
                break
        return p50, p99

    # -- the report --

    def latency_ms(self) -> dict[str, float | None]:
        h = self.hist
        if h.get_total_count() == 0:
            return {k: None for k in ("p50", "p90", "p99", "p999", "max", "mean")}
        return {"p50": h.get_value_at_percentile(50) / 1000,
                "p90": h.get_value_at_percentile(90) / 1000,
                "p99": h.get_value_at_percentile(99) / 1000,
                "p999": h.get_value_at_percentile(99.9) / 1000,
                "max": h.get_max_value() / 1000,
                "mean": round(h.get_mean_value() / 1000, 4)}

    def percentile_curve(self, points: Sequence[float] | None = None) -> list[list[float]]:
        if self.hist.get_total_count() == 0:
            return []
        pts = percentile_points() if points is None else points
        vals = self.hist.get_percentile_to_value_dict(list(pts))
        return [[p, vals[p] / 1000] for p in pts]

    def errors(self, protocol: Mapping[str, int] | None = None) -> int:
        n = sum(v for k, v in self.by_status.items() if k not in STATUS_KEYS and k != TIMEOUT)
        if protocol:
            n += sum(protocol.get(k, 0) for k in PROTOCOL_ERROR_COUNTERS)
        return n

    def report(self, *, scenario: str | None = None, targets: Sequence[str] = (),
               duration_s: float | None = None, sim_start: float | None = None,
               speed: float = 1.0, protocol: Mapping[str, int] | None = None,
               load: Mapping[str, Any] | None = None,
               generator_cpu_s: float = 0.0) -> dict[str, Any]:
        """The report dict (contract version 1). Folds what is still unfolded first."""
        cur = self._cur
        if sum(cur.sent) or cur.counts:
            self.tick()
        if duration_s is None:
            duration_s = time.monotonic() - self.t0
        if self.first_answer is not None and self.last_answer is not None \
                and self.last_answer > self.first_answer:
            throughput = self.answered / (self.last_answer - self.first_answer)
        else:
            throughput = self.answered / duration_s if duration_s > 0 else 0.0
        by_category = {
            name: {"sent": self.cat_sent[i], "answered": self.cat_answered[i],
                   "mismatches": self.cat_mismatches[i], "by_status": dict(self.cat_status[i]),
                   "expected": dict(self.cat_expected[i])}
            for i, name in enumerate(self.categories)}
        proto = dict(protocol or {})
        return {
            "version": 1,
            "scenario": scenario,
            "targets": list(targets),
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "duration_s": round(duration_s, 3),
            "sim_start": sim_start,
            "speed": speed,
            "sent": self.sent_total,
            "answered": self.answered,
            "timeouts": self.timeouts,
            "errors": self.errors(proto),
            "throughput_per_s": round(throughput, 1),
            "latency_ms": self.latency_ms(),
            "percentile_curve": self.percentile_curve(),
            "timeline": self.timeline,
            "by_status": dict(self.by_status),
            "mismatches": self.mismatches,
            "mismatches_by_category": {name: self.cat_mismatches[i]
                                       for i, name in enumerate(self.categories)},
            "by_category": by_category,
            "mismatch_examples": list(self.examples),
            "protocol": proto,
            "load": dict(load or {}),
            "generator_cpu_s": round(generator_cpu_s, 3),
        }
