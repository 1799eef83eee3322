"""The load driver: when to send, which handset, and what the answer should have been.

Owns issue 4 item 3. Arrival processes, all bounded by a count and a time
(whichever comes first):

- ``Poisson(rate)``: open loop, exponential gaps;
- ``Ramp(start_rate, end_rate, over_s)``: a linear ramp, then the end rate;
- ``Storm(base_rate, burst, at_s)``: the attach storm after an MME
  restart: Poisson at the base rate, and at ``at_s`` a burst of ``burst``
  arrivals sent as fast as the in-flight cap allows, then the base rate;
- ``DailyCurve(peak_rate, profile, day_s)``: the rate follows a 24-hour
  profile (hourly weights, linear in between) compressed into ``day_s``
  seconds (the run's duration by default);
- ``ClosedLoop(in_flight)``: a fixed number of requests in flight.

Time-varying rates are drawn by thinning (Lewis and Shedler): candidate
gaps at the peak rate, each kept with probability rate(t) / peak, which is
an exact non-homogeneous Poisson process. Arrivals due are sent in batches
(one write per connection per batch), at most every millisecond, so the
driver costs a few microseconds per request whatever the rate. Arrivals
beyond the in-flight cap wait in a backlog (its peak is reported).

The simulated clock (``SimClock``) is the one of the simulator contract:
``sim_now = sim_start + (monotonic_now - run_t0) * speed``, the formula of
the EIR's test clock ([clock] start / speed / anchor), so a run can cross
grace deadlines the EIR computes.

Handsets come from a population: any sequence of objects with ``.imei
.imsi .sv .category .realm`` (``realm`` is the Origin-Realm the
handset's MME uses), and ``expect(index, sim_time, first_sent) -> str |
None`` gives the outcome key the EIR should answer (None: not judged).
``first_sent`` is the simulated time of the handset's first send in this
run; ``sim_time`` is the simulated time the request was sent. Every answer
is judged against it and recorded in ``simulator.stats.Recorder``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import resource
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from .mme import NO_PEER, SENT, MmePool, PoolConfig, encode_tail, now_us
from .stats import STATUS_KEYS, Recorder

__all__ = [
    "DEFAULT_DAY_PROFILE",
    "Arrivals",
    "ClosedLoop",
    "DailyCurve",
    "Expect",
    "Handset",
    "LoadDriver",
    "LoadSpec",
    "Poisson",
    "Ramp",
    "SimClock",
    "Storm",
    "run_load",
]

TICK = 0.001  # the shortest gap between two sending batches, seconds
MAX_BATCH = 5000  # requests per batch at most, so answers are read in between


class Handset(Protocol):
    @property
    def imei(self) -> str: ...
    @property
    def imsi(self) -> str | None: ...
    @property
    def sv(self) -> str | None: ...
    @property
    def category(self) -> str: ...
    @property
    def realm(self) -> str: ...


Expect = Callable[[int, float, float], "str | None"]


# -- the clock ---------------------------------------------------------------------------


class SimClock:
    """Simulated UTC epoch seconds: ``start + (monotonic() - t0) * speed``.

    ``start=None`` is the real clock (speed 1). ``anchor`` is the real epoch
    instant at which the clock shows ``start`` (the EIR's ``clock.anchor``);
    by default the instant the clock is made.
    """

    def __init__(self, start: float | None = None, speed: float = 1.0,
                 anchor: float | None = None) -> None:
        if not speed > 0 or not math.isfinite(speed):
            raise ValueError("clock speed must be a positive number")
        if start is None and speed != 1.0:
            raise ValueError("a clock that runs fast needs a start")
        self.start = start
        self.speed = speed
        mono, wall = time.monotonic(), time.time()
        self.t0 = mono if anchor is None else mono - (wall - anchor)
        self._epoch_offset = wall - mono

    def at(self, monotonic: float) -> float:
        """The simulated time at a ``time.monotonic()`` instant."""
        if self.start is None:
            return monotonic + self._epoch_offset
        return self.start + (monotonic - self.t0) * self.speed

    def now(self) -> float:
        return self.at(time.monotonic())

    def describe(self) -> dict[str, Any]:
        return {"sim_start": self.start, "speed": self.speed}


# -- arrival processes -------------------------------------------------------------------


class Arrivals(Protocol):
    """When the next request arrives, in seconds from the start of the run."""

    def next(self, t: float, rng: random.Random, horizon: float) -> float:
        """The first arrival after ``t``, or ``math.inf`` if none before ``horizon``."""
        ...

    def bursts(self, t0: float, t1: float) -> int:
        """Arrivals that all come at once in (t0, t1] (an attach storm)."""
        ...

    def describe(self) -> dict[str, Any]: ...


def _thin(rate_at: Callable[[float], float], peak: float, t: float, rng: random.Random,
          horizon: float) -> float:
    if peak <= 0:
        return math.inf
    while True:
        t += rng.expovariate(peak)
        if t > horizon:
            return math.inf
        if rng.random() * peak <= rate_at(t):
            return t


@dataclass(frozen=True)
class Poisson:
    rate: float

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError("rate must be positive")

    def next(self, t: float, rng: random.Random, horizon: float) -> float:
        t += rng.expovariate(self.rate)
        return t if t <= horizon else math.inf

    def bursts(self, t0: float, t1: float) -> int:
        return 0

    def describe(self) -> dict[str, Any]:
        return {"kind": "poisson", "rate_per_s": self.rate}


@dataclass(frozen=True)
class Ramp:
    start_rate: float
    end_rate: float
    over_s: float

    def __post_init__(self) -> None:
        if self.start_rate < 0 or self.end_rate < 0 or max(self.start_rate, self.end_rate) <= 0:
            raise ValueError("ramp rates must be >= 0 and not both 0")
        if not self.over_s > 0:
            raise ValueError("a ramp needs a positive length")

    def rate_at(self, t: float) -> float:
        if t >= self.over_s:
            return self.end_rate
        return self.start_rate + (self.end_rate - self.start_rate) * t / self.over_s

    def next(self, t: float, rng: random.Random, horizon: float) -> float:
        if self.end_rate == 0:
            if t >= self.over_s:
                return math.inf
            horizon = min(horizon, self.over_s)  # no arrival after a ramp down to 0
        return _thin(self.rate_at, max(self.start_rate, self.end_rate), t, rng, horizon)

    def bursts(self, t0: float, t1: float) -> int:
        return 0

    def describe(self) -> dict[str, Any]:
        return {"kind": "ramp", "start_rate_per_s": self.start_rate,
                "end_rate_per_s": self.end_rate, "over_s": self.over_s}


@dataclass(frozen=True)
class Storm:
    base_rate: float
    burst: int
    at_s: float = 1.0

    def __post_init__(self) -> None:
        if self.base_rate < 0 or self.burst < 0 or self.at_s < 0:
            raise ValueError("storm parameters must be >= 0")

    def next(self, t: float, rng: random.Random, horizon: float) -> float:
        if self.base_rate <= 0:
            return math.inf
        t += rng.expovariate(self.base_rate)
        return t if t <= horizon else math.inf

    def bursts(self, t0: float, t1: float) -> int:
        return self.burst if t0 < self.at_s <= t1 or (t0 == 0 == self.at_s) else 0

    def describe(self) -> dict[str, Any]:
        return {"kind": "storm", "base_rate_per_s": self.base_rate, "burst": self.burst,
                "at_s": self.at_s}


# Relative signalling load per hour of the day (0..23), peak 1: the night trough, the
# morning rise, a working-day plateau and the evening peak of a mobile network.
DEFAULT_DAY_PROFILE: tuple[float, ...] = (
    0.30, 0.20, 0.15, 0.12, 0.12, 0.18, 0.35, 0.60, 0.85, 0.95, 1.00, 0.98,
    0.95, 0.95, 0.93, 0.92, 0.94, 0.97, 1.00, 0.98, 0.90, 0.75, 0.55, 0.40)


@dataclass(frozen=True)
class DailyCurve:
    peak_rate: float
    profile: tuple[float, ...] = DEFAULT_DAY_PROFILE
    day_s: float | None = None  # None: the run's duration (set by the driver)
    start_hour: float = 0.0

    def __post_init__(self) -> None:
        if not self.peak_rate > 0:
            raise ValueError("peak rate must be positive")
        if len(self.profile) != 24 or min(self.profile) < 0 or max(self.profile) <= 0:
            raise ValueError("the day profile is 24 weights >= 0, not all 0")
        if self.day_s is not None and not self.day_s > 0:
            raise ValueError("day_s must be positive")

    def rate_at(self, t: float) -> float:
        day = self.day_s or 86_400.0
        hour = (self.start_hour + 24.0 * t / day) % 24.0
        i = int(hour)
        frac = hour - i
        a, b = self.profile[i], self.profile[(i + 1) % 24]
        return self.peak_rate * (a + (b - a) * frac) / max(self.profile)

    def next(self, t: float, rng: random.Random, horizon: float) -> float:
        return _thin(self.rate_at, self.peak_rate, t, rng, horizon)

    def bursts(self, t0: float, t1: float) -> int:
        return 0

    def describe(self) -> dict[str, Any]:
        return {"kind": "daily", "peak_rate_per_s": self.peak_rate, "day_s": self.day_s,
                "start_hour": self.start_hour, "profile": list(self.profile)}


@dataclass(frozen=True)
class ClosedLoop:
    in_flight: int

    def __post_init__(self) -> None:
        if self.in_flight < 1:
            raise ValueError("closed loop needs at least 1 in flight")

    def next(self, t: float, rng: random.Random, horizon: float) -> float:
        return math.inf  # arrivals are answers coming back

    def bursts(self, t0: float, t1: float) -> int:
        return 0

    def describe(self) -> dict[str, Any]:
        return {"kind": "closed", "in_flight": self.in_flight}


# -- the driver --------------------------------------------------------------------------


@dataclass
class LoadSpec:
    arrivals: Arrivals
    count: int | None = None  # requests in all (arrivals, sent or not)
    duration: float | None = None  # seconds of sending
    max_in_flight: int | None = None  # open loop: a backlog forms beyond it
    order: str = "random"  # "random" (with replacement) or "sequential" (cycling)
    seed: int | None = None
    drain: float | None = None  # seconds to wait for answers after sending; default timeout+1
    scenario: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # added to the report's "load"

    def __post_init__(self) -> None:
        if self.count is None and self.duration is None:
            raise ValueError("a run needs a count, a duration or both")
        if self.count is not None and self.count < 0:
            raise ValueError("count must be >= 0")
        if self.duration is not None and not self.duration > 0:
            raise ValueError("duration must be positive")
        if self.order not in ("random", "sequential"):
            raise ValueError("order is 'random' or 'sequential'")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")

    def describe(self) -> dict[str, Any]:
        arrivals = self.arrivals.describe()
        if isinstance(self.arrivals, DailyCurve) and self.arrivals.day_s is None:
            arrivals["day_s"] = self.duration
        return {**arrivals, "count": self.count, "duration_s": self.duration,
                "max_in_flight": self.max_in_flight, "order": self.order, "seed": self.seed,
                **self.extra}


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class LoadDriver:
    """Runs one load against a started ``MmePool`` and returns the report dict."""

    def __init__(self, pool: MmePool, population: Sequence[Handset], expect: Expect,
                 spec: LoadSpec, *, clock: SimClock | None = None,
                 progress: bool = False, progress_stream: TextIO | None = None) -> None:
        if not len(population):
            raise ValueError("empty population")
        missing = sorted({h.realm for h in population} - set(pool.realm_names()))
        if missing:
            raise ValueError(f"no MME for the operator realm(s) {', '.join(missing)}")
        self.pool = pool
        self.population = population
        self.expect = expect
        self.spec = spec
        self.clock = clock or SimClock()
        self.progress = progress
        self.out = progress_stream or sys.stderr
        self.rng = random.Random(spec.seed)
        self.n = len(population)
        self.arrivals = spec.arrivals
        if isinstance(self.arrivals, DailyCurve) and self.arrivals.day_s is None:
            if spec.duration is None:
                raise ValueError("a daily curve without day_s needs a duration")
            self.arrivals = DailyCurve(self.arrivals.peak_rate, self.arrivals.profile,
                                       spec.duration, self.arrivals.start_hour)
        self.closed = spec.arrivals.in_flight if isinstance(spec.arrivals, ClosedLoop) else 0
        self.cap = self.closed or spec.max_in_flight or 0
        # per handset, filled on first use: (tail, realm group, category index)
        self.info: list[tuple[bytes, int, int] | None] = [None] * self.n
        self.first = array("d", [math.nan]) * self.n
        self.first_us = array("q", [-1]) * self.n  # send time (us) of that first check
        self.rec = Recorder()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.t0 = 0.0
        self.t0_us = 0
        self.sim_a = 0.0
        self.sim_b = 1e-6
        self.in_flight = 0
        self.backlog = 0
        self.backlog_max = 0
        self.backlog_dropped = 0
        self.stalled_since: float | None = None
        # a closed loop with no connection for this long ends the run
        self.stall_limit = max(10.0, 2 * pool.cfg.timeout + pool.cfg.reconnect_max)
        self.arrived = 0
        self.not_sent = 0
        self.seq = 0
        self.next_t = 0.0
        self.t_last = 0.0
        self.sending = False
        self.kick_scheduled = False
        self.tick_handle: asyncio.TimerHandle | None = None
        self.done: asyncio.Future[None] | None = None
        self.sending_over: asyncio.Future[None] | None = None
        self._loop_t0 = 0.0
        self.stop_sending_at = math.inf
        self._sec_handle: asyncio.TimerHandle | None = None
        self._sec = 0

    # -- handsets --

    def _info(self, i: int) -> tuple[bytes, int, int]:
        h = self.population[i]
        info = (encode_tail(h.imei, h.sv, h.imsi), self.pool.realm_index(h.realm),
                self.rec.category(h.category))
        self.info[i] = info
        return info

    # -- sending --

    def _send(self, k: int) -> None:
        """Send ``k`` arrivals now (fewer if the count runs out)."""
        if self.spec.count is not None:
            k = min(k, self.spec.count - self.arrived)
        if k <= 0:
            return
        now = now_us()
        sim_now = self.clock.at(now / 1e6)
        submit = self.pool.submit
        info, first = self.info, self.first
        sent = self.rec.current_sent()
        sequential = self.spec.order == "sequential"
        rand, n = self.rng.random, self.n
        n_sent = 0
        tried = 0
        closed = self.closed
        first_us = self.first_us
        for _ in range(k):
            if sequential:
                i = self.seq
                self.seq = i + 1 if i + 1 < n else 0
            else:
                i = int(rand() * n)
            inf = info[i] or self._info(i)
            r = submit(i, inf[1], inf[0], now)
            if r == SENT:
                sent[inf[2]] += 1
                if first[i] != first[i]:  # NaN: the first send of this handset
                    first[i] = sim_now
                    first_us[i] = now
                n_sent += 1
            elif r == NO_PEER and closed:
                # a closed loop waits for a connection instead of using up its count
                if sequential:
                    self.seq = i
                break
            tried += 1
        k = tried
        self.arrived += k
        self.in_flight += n_sent
        self.not_sent += k - n_sent
        if self.spec.count is not None and self.arrived >= self.spec.count:
            self._stop_sending()

    def _on_answer(self, token: int, key: str, t_sent: int, now: int) -> None:
        """The pool's handler: judge and record one outcome (an answer or a timeout)."""
        self.in_flight -= 1
        inf = self.info[token]
        assert inf is not None
        sim_t = self.sim_a + t_sent * self.sim_b
        if key not in STATUS_KEYS and self.first_us[token] == t_sent:
            # the first check of this handset decided nothing (an error, a timeout): the
            # EIR's clock for it, if any, starts with a later one
            self.first[token] = math.nan
            self.first_us[token] = -1
            forget = getattr(self.expect, "forget", None)
            if forget is not None:
                forget(token)
        exp = self.expect(token, sim_t, self.first[token])
        if self.rec.answer(inf[2], exp, key, now - t_sent) and self.rec.wants_examples:
            h = self.population[token]
            self.rec.example(h.category, h.imei, h.imsi, exp, key, sim_t)
        if self.sending:
            if self.cap and not self.kick_scheduled:
                self.kick_scheduled = True
                assert self.loop is not None
                self.loop.call_soon(self._kick)
        elif self.in_flight <= 0 and self.done is not None and not self.done.done():
            self.done.set_result(None)

    def _kick(self) -> None:
        """Refill freed in-flight slots: the closed loop, or the open loop's backlog."""
        self.kick_scheduled = False
        if not self.sending:
            return
        if self.closed:
            free = self.closed - self.in_flight
            k = min(free, MAX_BATCH)
            before = self.arrived
            self._send(k)
            if self.sending and self.in_flight < self.closed:
                # some slots sent nothing (throttled, no peer): try them again a little later,
                # but not for ever when no connection comes back
                now = time.monotonic()
                if self.arrived > before:
                    self.stalled_since = None
                elif self.stalled_since is None:
                    self.stalled_since = now
                elif now - self.stalled_since > self.stall_limit:
                    self._stop_sending()
                    return
                assert self.loop is not None
                self.loop.call_later(10 * TICK, self._kick_later)
        elif self.backlog:
            self._drain_backlog()

    def _kick_later(self) -> None:
        if not self.kick_scheduled:
            self.kick_scheduled = True
            self._kick()

    def _drain_backlog(self) -> None:
        k = self.backlog
        if self.cap:
            k = min(k, self.cap - self.in_flight)
        k = min(k, MAX_BATCH)
        if k > 0:
            self.backlog -= k
            self._send(k)

    def _tick(self) -> None:
        """Open loop: the arrivals due since the last tick, then the next tick."""
        self.tick_handle = None
        if not self.sending:
            return
        assert self.loop is not None
        now = time.monotonic()
        t = now - self.t0
        if now >= self.stop_sending_at:
            t = self.stop_sending_at - self.t0
        due = self.arrivals.bursts(self.t_last, t)
        rng, horizon = self.rng, self.spec.duration or math.inf
        nxt, arrivals = self.next_t, self.arrivals
        limit = 1_000_000  # a pathological rate must not freeze the loop in here
        while nxt <= t and due < limit:
            due += 1
            nxt = arrivals.next(nxt, rng, horizon)
        self.next_t = nxt
        self.t_last = t
        if self.spec.count is not None:
            due = min(due, self.spec.count - self.arrived - self.backlog)
        self.backlog += due
        if self.backlog > self.backlog_max:
            self.backlog_max = self.backlog
        self._drain_backlog()
        if now >= self.stop_sending_at:
            self._stop_sending()
            return
        if not self.sending:
            return
        if self.backlog and (not self.cap or self.in_flight < self.cap):
            delay = TICK  # more to send than one batch
        elif math.isinf(self.next_t):
            if not self.backlog and not self.arrivals.bursts(t, math.inf):
                self._stop_sending()  # nothing more will arrive
                return
            delay = 10 * TICK  # a burst is still due
        else:
            delay = max(TICK, self.t0 + self.next_t - now)
        if math.isfinite(self.stop_sending_at):
            delay = min(delay, max(TICK, self.stop_sending_at - now))
        self.tick_handle = self.loop.call_later(delay, self._tick)

    def _stop_sending(self) -> None:
        if not self.sending:
            return
        self.sending = False
        if self.sending_over is not None and not self.sending_over.done():
            self.sending_over.set_result(None)
        self.backlog_dropped += self.backlog  # arrived, never sent: the time was up
        self.backlog = 0
        if self.tick_handle is not None:
            self.tick_handle.cancel()
            self.tick_handle = None
        if self.in_flight <= 0 and self.done is not None and not self.done.done():
            self.done.set_result(None)

    # -- once a second --

    def _second(self) -> None:
        assert self.loop is not None
        entry = self.rec.tick()
        self._sec += 1
        if self.progress:
            self._progress_line(entry)
        self._sec_handle = self.loop.call_at(self._loop_t0 + self._sec + 1, self._second)

    def _progress_line(self, entry: dict[str, Any]) -> None:
        rec = self.rec
        p99 = entry["p99_ms"]
        line = (f"{entry['t'] + 1:6.0f}s  rate {entry['answered']:>8,}/s  "
                f"answered {rec.answered:>10,}  p99 "
                f"{'-' if p99 is None else f'{p99:.2f} ms':>9}  "
                f"mismatches {rec.mismatches:,}  timeouts {rec.timeouts:,}  "
                f"in flight {self.in_flight:,}")
        tty = getattr(self.out, "isatty", lambda: False)()
        self.out.write(("\r" + line) if tty else line + "\n")
        self.out.flush()

    # -- the run --

    async def run(self) -> dict[str, Any]:
        loop = self.loop = asyncio.get_running_loop()
        pool, spec = self.pool, self.spec
        pool.handler = self._on_answer
        self.done = loop.create_future()
        self.sending_over = loop.create_future()
        cpu0 = _cpu_s()
        self.t0 = time.monotonic()
        self._loop_t0 = loop.time()
        self.t0_us = int(self.t0 * 1e6)
        # the clock as a linear function of microseconds, for the answer path
        self.sim_b = self.clock.speed / 1e6
        self.sim_a = self.clock.at(0.0)
        self.rec = Recorder(t0=self.t0)
        for i in range(min(self.n, 64)):  # categories in population order, as far as cheap
            self.rec.category(self.population[i].category)
        self.stop_sending_at = self.t0 + spec.duration if spec.duration else math.inf
        self.sending = True
        self._sec_handle = loop.call_at(self._loop_t0 + 1, self._second)
        if self.closed:
            self._kick_later()
        else:
            self.next_t = self.arrivals.next(0.0, self.rng, spec.duration or math.inf)
            self._tick()
        stop_timer = None
        if math.isfinite(self.stop_sending_at):
            stop_timer = loop.call_at(self._loop_t0 + (spec.duration or 0), self._stop_sending)
        try:
            if self.sending:
                await asyncio.shield(self.sending_over)
            drain = spec.drain if spec.drain is not None else pool.cfg.timeout + 1.0
            if self.in_flight > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self.done), drain)
        finally:
            self.sending = False
            if stop_timer is not None:
                stop_timer.cancel()
            if self.tick_handle is not None:
                self.tick_handle.cancel()
            if self._sec_handle is not None:
                self._sec_handle.cancel()
        end = time.monotonic()
        cpu = _cpu_s() - cpu0
        if self.progress and getattr(self.out, "isatty", lambda: False)():
            self.out.write("\n")
        load = spec.describe()
        load.update({"population": self.n, "arrivals": self.arrived,
                     "not_sent": self.not_sent, "backlog_max": self.backlog_max,
                     "backlog_dropped": self.backlog_dropped,
                     "unanswered_at_end": max(self.in_flight, 0),
                     "mmes": len(pool.cfg.mmes), "connections": len(pool.links()),
                     "request_timeout_s": pool.cfg.timeout,
                     "retry_3004": pool.cfg.retry_3004, "doic": pool.cfg.doic})
        return self.rec.report(
            scenario=spec.scenario, targets=[str(t) for t in pool.cfg.targets],
            duration_s=end - self.t0, sim_start=self.clock.start, speed=self.clock.speed,
            protocol=pool.protocol(), load=load, generator_cpu_s=cpu)


async def run_load(cfg: PoolConfig, population: Sequence[Handset], expect: Expect,
                   spec: LoadSpec, *, clock: SimClock | None = None, progress: bool = False,
                   progress_stream: TextIO | None = None) -> dict[str, Any]:
    """Open the pool, run the load, say goodbye (DPR), return the report dict."""
    pool = MmePool(cfg)
    driver = LoadDriver(pool, population, expect, spec, clock=clock, progress=progress,
                        progress_stream=progress_stream)
    await pool.start()
    try:
        return await driver.run()
    finally:
        await pool.stop()
