"""Overload control for a Diameter server: admission, fair shares, refusals, DOIC.

Owns:

- admission of application requests against a node-wide rate and a per-peer
  rate (token buckets, one per peer). The node's capacity is shared max-min
  fairly between the peers by their measured demand, with head-room above
  each peer's demand, so a peer sending ten times its share only takes what
  the others leave and a well-behaved peer keeps getting answers;
- the measured-load limit: when the event loop runs late by more than a
  target (the node cannot keep up with what it admits), the node-wide limit
  is set from the rate the node really answered, lowered while the lag
  stays high and raised again once it falls (the loop's lag is the time a
  request waits in the node before it is read);
- the refusal, sent at once and built from the request's bytes without
  decoding it: 3004 DIAMETER_TOO_BUSY with the E bit in the generic error
  grammar (RFC 6733 7.1.3, 7.2), or 5012 DIAMETER_UNABLE_TO_COMPLY in the
  application's answer grammar where configured (RFC 7683 8; PROTOCOL.md 6).
  Like every answer it copies the ids, the P bit, the Session-Id and the
  Proxy-Info AVPs (RFC 6733 6.2, PROTOCOL.md 1.9);
- DOIC (RFC 7683): a request that carries OC-Supported-Features gets it back
  in its answer, accepted or refused, with the loss algorithm chosen (5.1.2,
  7.2); while the node is over its capacity those answers carry a host
  OC-OLR whose reduction comes from the measured demand (6.2). Sequence
  numbers follow 5.2.1.4 (the first overload after a start is numbered with
  the wall clock in milliseconds, so it is greater than any report sent
  before a restart; every change adds one), the reduction comes down in
  steps (5.2.3: "in a controlled fashion"), and the end of an overload is an
  OLR with OC-Validity-Duration 0, sent for as long as the last report could
  still be in force.

Requests in flight: the S13 engine answers each request before the next is
read, so a request is in flight only inside one read of the socket; what
bounds the time a request waits is the loop-lag limit above, and what a peer
that does not read can pile up is bounded by the transport's write buffer
(reading from it pauses, `eir.diameter.transport`).

No I/O: times come in as arguments; the server calls `Guard.tick` on a timer
and passes the loop's lag.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass

from . import messages as m
from .codec import Avp
from .constants import AvpCode, ResultCode

AppHandler = Callable[[bytes, bytes], bytes | None]

ANSWERS = (int(ResultCode.TOO_BUSY), int(ResultCode.UNABLE_TO_COMPLY))
OLR_DEFAULT_ALGO = 1  # RFC 7683 7.2: the loss algorithm
HOST_REPORT = 0  # RFC 7683 7.6

_AVP = struct.Struct("!II")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_ZEROS = (b"", b"\0", b"\0\0", b"\0\0\0")  # padding of 0-3 bytes
_OCSF_CODE = _U32.pack(AvpCode.OC_SUPPORTED_FEATURES)  # the bytes a DOIC request must hold

HEADROOM = 1.25  # a peer's share reaches this much above its measured demand, when it can
HEADROOM_ADD = 50.0  # ... plus this many requests/s: a small peer's random bursts
MIN_DEPTH = 10.0  # requests any peer may send at once, whatever its rate
DEMAND_WEIGHT = 0.5  # exponential smoothing of a falling demand, per tick
IDLE_FORGET = 30.0  # seconds without a request before a peer's state is dropped
AUTO_DECREASE = 0.9  # measured-load limit: of the rate the node answered while late
AUTO_INCREASE = 1.1  # ... and per tick while the loop is on time again
AUTO_FLOOR = 50.0  # requests/s never refused by the measured-load limit
OLR_STEP = 5  # reduction changes smaller than this (points) are not reported
OLR_DOWN_STEP = 5  # the reduction falls by at most this much per 0.1 s (RFC 7683 5.2.3)
DEADBAND = 0.85  # demand between this share of capacity and capacity: the reduction holds
OLR_HOLD = 1.0  # seconds under capacity before the end of overload is reported


@dataclass(frozen=True, slots=True)
class Limits:
    """What the node admits; 0 switches a limit off."""

    rate: float = 0.0  # requests/s for the whole node (this process)
    peer_rate: float = 0.0  # requests/s for any one peer
    burst: float = 0.1  # seconds of its rate a peer may send at once
    lag_target: float = 0.0  # loop lag (s) that means the node cannot keep up
    answer: int = ResultCode.TOO_BUSY  # 3004 (E bit) or 5012
    validity: int = 30  # OC-Validity-Duration of our reports (RFC 7683 7.5)
    interval: float = 0.1  # seconds between ticks (shares and reports are recomputed)

    def __post_init__(self) -> None:
        for name in ("rate", "peer_rate", "lag_target"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name}: must be zero (off) or a positive number, got {v!r}")
        if not (math.isfinite(self.burst) and self.burst > 0):
            raise ValueError(f"burst: must be a positive number of seconds, got {self.burst!r}")
        if self.answer not in ANSWERS:
            raise ValueError(f"answer: must be 3004 or 5012, got {self.answer!r}")
        if not 1 <= self.validity <= 86_400:
            raise ValueError(f"validity: must be 1 to 86400 seconds, got {self.validity!r}")

    @property
    def limited(self) -> bool:
        return bool(self.rate or self.peer_rate or self.lag_target)


class _Peer:
    __slots__ = ("arrivals", "born", "cap", "cap_depth", "demand", "depth", "doic", "idle",
                 "last", "rate", "refused", "tokens")

    def __init__(self, rate: float, depth: float, now: float) -> None:
        self.rate = rate
        self.depth = depth
        self.tokens = depth
        self.last = now
        self.born = now
        self.arrivals = 0  # since the last tick
        self.refused = 0  # since the last tick
        self.demand = -1.0  # requests/s, smoothed; -1: not measured yet
        self.idle = 0.0
        # the bucket of its own limit (peer_rate), which borrowing cannot pass
        self.cap = self.cap_depth = 0.0
        self.doic = False  # its requests carry OC-Supported-Features: it sheds what we ask


@dataclass
class Report:
    """The node's overload report (RFC 7683 5.2.1.2: one OCS entry, host reports, loss)."""

    seq: int = -1
    reduction: int = 0
    active: bool = False
    ending_until: float | None = None  # the validity-0 OLR is sent until then
    calm_since: float | None = None


class Guard:
    """Admission state of one node (one process): counters, peers, shares, report."""

    def __init__(self, limits: Limits, now: float, epoch_ms: int) -> None:
        self.limits = limits
        self.limited = limits.limited
        self.peers: dict[bytes, _Peer] = {}
        self.auto_cap: float | None = None  # the measured-load limit, while set
        self.capacity = math.inf  # node-wide requests/s: min(rate, auto_cap)
        self.admitted = 0
        self.refused = 0
        self.refused_over_capacity = 0  # refused while demand exceeded capacity
        self.lag = 0.0
        self._last_lag = 0.0
        self.demand = 0.0  # requests/s from all peers, smoothed
        self.unshed = 0.0  # ... and what it would be if DOIC peers shed nothing
        self.report = Report()
        self._epoch_ms = epoch_ms
        self._last_tick = now
        self._tick_admitted = 0
        self._spare = 0.0
        self._spare_last = now
        self._spare_depth = 1.0
        self._ocsf = _ocsf_avp()
        self.doic_avps = self._ocsf
        self._set_capacity()

    # -- per request --

    def admit(self, peer: bytes, now: float) -> bool:
        p = self.peers.get(peer)
        if p is None:
            p = self._new_peer(peer, now)
        p.arrivals += 1
        if p.rate == math.inf:
            self.admitted += 1
            self._tick_admitted += 1
            return True
        elapsed = now - p.last
        p.last = now
        t = p.tokens + elapsed * p.rate
        if t > p.depth:
            t = p.depth
        peer_rate = self.limits.peer_rate
        c = 1.0
        if peer_rate:  # the peer's own limit, whatever it borrows
            c = p.cap + elapsed * peer_rate
            if c > p.cap_depth:
                c = p.cap_depth
            p.cap = c
        # the node's own bucket, refilled at its capacity: what the peers' shares leave
        # unused this tick may be borrowed, so that no capacity is idle while refusing
        if self.capacity != math.inf:
            g = self._spare + (now - self._spare_last) * self.capacity
            self._spare_last = now
            if g > self._spare_depth:
                g = self._spare_depth
        else:  # per-peer limits only: nothing to lend
            g = 0.0
        if c < 1.0 or (t < 1.0 and g < 1.0):
            p.tokens = t
            self._spare = g
            p.refused += 1
            self.refused += 1
            return False
        if t >= 1.0:  # its own share; the node's bucket is charged too (never below -depth)
            p.tokens = t - 1.0
            self._spare = g - 1.0 if g > -self._spare_depth else g
        else:  # borrowed from what the node has spare
            p.tokens = t
            self._spare = g - 1.0
        p.cap = c - 1.0
        self.admitted += 1
        self._tick_admitted += 1
        return True

    def saw_doic(self, peer: bytes) -> None:
        p = self.peers.get(peer)
        if p is not None:
            p.doic = True

    def _new_peer(self, peer: bytes, now: float) -> _Peer:
        # until the next tick measures it, a new peer gets an equal part of the capacity
        rate = self.capacity / (len(self.peers) + 1)
        peer_rate = self.limits.peer_rate
        if peer_rate and rate > peer_rate:
            rate = peer_rate
        p = _Peer(rate, self._depth(rate), now)
        if peer_rate:
            p.cap = p.cap_depth = self._depth(peer_rate)
        self.peers[peer] = p
        return p

    def _depth(self, rate: float) -> float:
        return max(rate * self.limits.burst, MIN_DEPTH) if math.isfinite(rate) else math.inf

    # -- per tick --

    def tick(self, now: float, lag: float) -> bool:
        """Measure, recompute shares and the report; True when the report changed."""
        dt = now - self._last_tick
        if dt <= 0:
            return False
        self._last_tick = now
        self.lag = lag
        answered = self._tick_admitted / dt
        self._tick_admitted = 0
        shed = self.report.reduction if self.report.active else 0
        demand = unshed = 0.0
        refused = 0
        for key, p in list(self.peers.items()):
            # a peer that came during this tick is measured over its own time in it
            rate = p.arrivals / max(min(dt, now - p.born), 0.001)
            # up at once, down smoothly: a peer whose traffic grows gets its share at the
            # next tick, and one quiet tick does not take it away
            p.demand = rate if rate >= p.demand else (
                DEMAND_WEIGHT * rate + (1 - DEMAND_WEIGHT) * p.demand)
            demand += rate
            # what a DOIC peer would send without the report in force (RFC 7683 6.1)
            unshed += rate / (1 - shed / 100) if p.doic and shed < 100 else rate
            if p.arrivals:
                p.idle = 0.0
            else:
                p.idle += dt
                if p.idle >= IDLE_FORGET:
                    del self.peers[key]
                    continue
            p.arrivals = 0
            refused += p.refused
            p.refused = 0
        self.demand = DEMAND_WEIGHT * demand + (1 - DEMAND_WEIGHT) * self.demand
        self.unshed = DEMAND_WEIGHT * unshed + (1 - DEMAND_WEIGHT) * self.unshed
        self._measured_load(lag, answered, demand)
        self._set_capacity()
        if self.overloaded:
            self.refused_over_capacity += refused
        return self._update_report(now, dt)

    def _measured_load(self, lag: float, answered: float, demand: float) -> None:
        target = self.limits.lag_target
        if not target:
            return
        last, self._last_lag = self._last_lag, lag
        if lag > target and (self.auto_cap is None or lag >= last):
            # late, and no less late than before (a backlog that shrinks is being worked
            # off at the present limit: lowering it further would refuse for nothing)
            cap = max(answered * AUTO_DECREASE, AUTO_FLOOR)
            self.auto_cap = cap if self.auto_cap is None else max(min(cap, self.auto_cap),
                                                                  AUTO_FLOOR)
        elif self.auto_cap is not None and lag < target / 2:
            self.auto_cap *= AUTO_INCREASE
            if self.auto_cap > demand * HEADROOM and self.auto_cap > AUTO_FLOOR * 2:
                self.auto_cap = None  # the node keeps up with all there is

    def _set_capacity(self) -> None:
        caps = [c for c in (self.limits.rate, self.auto_cap) if c]
        self.capacity = min(caps) if caps else math.inf
        shares = fair_shares(self.capacity, {k: p.demand for k, p in self.peers.items()})
        peer_rate = self.limits.peer_rate
        self._spare_depth = max(self.capacity * self.limits.burst, MIN_DEPTH) \
            if math.isfinite(self.capacity) else 1.0
        for key, p in self.peers.items():
            rate = shares[key]
            if peer_rate and rate > peer_rate:
                rate = peer_rate
            p.cap_depth = self._depth(peer_rate) if peer_rate else 0.0
            if p.cap > p.cap_depth:
                p.cap = p.cap_depth
            p.rate = rate
            p.depth = self._depth(rate)
            if p.tokens > p.depth:
                p.tokens = p.depth

    # -- the overload report (RFC 7683 5.2.1.4, 5.2.3) --

    @property
    def overloaded(self) -> bool:
        return self.demand > self.capacity

    def _update_report(self, now: float, dt: float) -> bool:
        """The reduction asked of DOIC peers: while the demand the node sees is over its
        capacity, the share of the unshed demand (what DOIC peers would send without the
        report) that is over capacity; while the demand seen is within 15% under the
        capacity it holds (DOIC peers shed just enough); below that it comes down in
        steps, and at 0 under capacity for OLR_HOLD seconds the overload is over. What
        ends it is the demand seen, never the estimate: a peer that advertises DOIC but
        keeps sending drives the reduction up, and cannot hold it up once it calms."""
        r = self.report
        changed = False
        wanted = r.reduction
        if self.overloaded:
            wanted = min(100, max(r.reduction if r.active else 0,
                                  math.ceil(100 * (1 - self.capacity / self.unshed))))
        elif self.demand < DEADBAND * self.capacity:
            wanted = max(0, r.reduction - max(1, round(OLR_DOWN_STEP * dt / 0.1)))
        if self.overloaded and not r.active:
            r.active, r.ending_until, r.calm_since, r.reduction = True, None, None, wanted
            r.seq = self._epoch_ms if r.seq < 0 else r.seq + 1
            changed = True
        elif r.active:
            if abs(wanted - r.reduction) >= OLR_STEP or (wanted != r.reduction and (
                    wanted in (0, 100) or r.reduction == 100)):
                r.reduction = wanted
                r.seq += 1
                changed = True
            if self.overloaded or r.reduction:
                r.calm_since = None
            elif r.calm_since is None:
                r.calm_since = now
            elif now - r.calm_since >= OLR_HOLD:
                r.active, r.calm_since = False, None
                r.ending_until = now + self.limits.validity
                r.seq += 1
                changed = True
        elif r.ending_until is not None and now >= r.ending_until:
            r.ending_until = None
            changed = True
        if changed:
            self.doic_avps = self._ocsf + self._olr()
        return changed

    def _olr(self) -> bytes:
        r = self.report
        if r.active:
            validity, reduction = self.limits.validity, r.reduction
        elif r.ending_until is not None:
            validity, reduction = 0, 0
        else:
            return b""
        return Avp.grouped(AvpCode.OC_OLR, [
            Avp.u64(AvpCode.OC_SEQUENCE_NUMBER, r.seq, mandatory=False),
            Avp.u32(AvpCode.OC_REPORT_TYPE, HOST_REPORT, mandatory=False),
            Avp.u32(AvpCode.OC_REDUCTION_PERCENTAGE, reduction, mandatory=False),
            Avp.u32(AvpCode.OC_VALIDITY_DURATION, validity, mandatory=False),
        ], mandatory=False).encode()

    def reconfigure(self, limits: Limits) -> None:
        self.limits = limits
        self.limited = limits.limited
        if not limits.lag_target:
            self.auto_cap = None
        self._set_capacity()


def fair_shares(capacity: float, demands: dict[bytes, float]) -> dict[bytes, float]:
    """Max-min fair shares of ``capacity`` for peers wanting a head-room over their demand.

    Peers are served in order of what they want: each gets what it wants or
    an equal part of what is left, whichever is smaller; what nobody wanted
    is then spread equally, so the shares add up to the capacity (a peer
    whose demand grows can grow into it until the next tick). A peer not yet
    measured (demand < 0) wants an equal part.
    """
    n = len(demands)
    if not n or not math.isfinite(capacity):
        return dict.fromkeys(demands, capacity)
    equal = capacity / n
    wants = sorted(((d * HEADROOM + HEADROOM_ADD if d >= 0 else equal, k)
                    for k, d in demands.items()))
    shares: dict[bytes, float] = {}
    left = capacity
    for i, (want, key) in enumerate(wants):
        share = min(want, left / (n - i))
        shares[key] = share
        left -= share
    if left > 0:
        extra = left / n
        for key in shares:
            shares[key] += extra
    return shares


def _ocsf_avp() -> bytes:
    """Our OC-Supported-Features: the loss algorithm chosen (RFC 7683 5.1.2, 7.2)."""
    return Avp.grouped(AvpCode.OC_SUPPORTED_FEATURES, [
        Avp.u64(AvpCode.OC_FEATURE_VECTOR, OLR_DEFAULT_ALGO, mandatory=False)],
        mandatory=False).encode()


# -- the request's bytes --


@dataclass(frozen=True, slots=True)
class _Scan:
    session_id: bytes  # the whole AVP, padding included; b"" when absent
    proxy_infos: bytes
    doic: bool  # carries OC-Supported-Features offering the loss algorithm (or no vector)


_PROXY_INFO_CODE = _U32.pack(AvpCode.PROXY_INFO)


def scan_request(frame: bytes) -> _Scan | None:
    """The top-level AVPs an answer copies or reacts to, or None for a message that is
    not version 1 or whose AVPs do not walk as far as they are read (RFC 6733 7.1.5): its
    handler answers it then, with the 5011, 5015 or 5014 of ``decode_message``.

    The usual request (Session-Id first, as RFC 6733 8.8 has it; no Proxy-Info, no
    OC-Supported-Features) is read from its first AVP alone: a refusal must cost far
    less than an answer, or refusing would not relieve the node (a fault further on is
    then not seen, and the refusal stands).
    """
    n = len(frame)
    if n >= 28 and not n & 3 and frame[0] == 1 and frame.find(_PROXY_INFO_CODE, 20) < 0 \
            and frame.find(_OCSF_CODE, 20) < 0:
        code, fl = _AVP.unpack_from(frame, 20)
        if code == AvpCode.SESSION_ID and not fl & 0x80000000:
            length = fl & 0xFFFFFF
            nxt = 20 + length + (-length & 3)
            if length >= 8 and nxt <= n:
                # padding is zero in what we send, whatever the request's was (RFC 6733 4)
                return _Scan(frame[20:20 + length] + bytes(nxt - 20 - length), b"", False)
    return _walk(frame)


def _walk(frame: bytes) -> _Scan | None:
    n = len(frame)
    if n < 20 or n & 3 or frame[0] != 1:
        return None
    unpack = _AVP.unpack_from
    pos = 20
    sid = b""
    proxies: list[bytes] = []
    doic = False
    while pos < n:
        if n - pos < 8:
            return None
        code, fl = unpack(frame, pos)
        length = fl & 0xFFFFFF
        nxt = pos + length + (-length & 3)
        if length < (12 if fl & 0x80000000 else 8) or nxt > n:
            return None
        if not fl & 0x80000000:  # no Vendor-Id: a base AVP
            # copied with zero padding whatever the request's padding bytes were: the
            # answer's padding MUST be zero (RFC 6733 4), as the general path writes it
            if code == AvpCode.SESSION_ID and not sid:
                sid = frame[pos:pos + length] + _ZEROS[nxt - pos - length]
            elif code == AvpCode.PROXY_INFO:
                proxies.append(frame[pos:pos + length] + _ZEROS[nxt - pos - length])
            elif code == AvpCode.OC_SUPPORTED_FEATURES:
                doic = _offers_loss(frame, pos + 8, pos + length)
        pos = nxt
    return _Scan(sid, b"".join(proxies), doic)


def _offers_loss(frame: bytes, pos: int, end: int) -> bool:
    """RFC 7683 7.2: no OC-Feature-Vector means the loss algorithm only."""
    while end - pos >= 8:
        code, fl = _AVP.unpack_from(frame, pos)
        length = fl & 0xFFFFFF
        if length < 8 or pos + length > end:
            return False
        if code == AvpCode.OC_FEATURE_VECTOR and not fl & 0x80000000:
            return length == 16 and bool(_U64.unpack_from(frame, pos + 8)[0] & OLR_DEFAULT_ALGO)
        pos += length + (-length & 3)
    return True


def with_avps(answer: bytes, avps: bytes) -> bytes:
    """``answer`` with ``avps`` added at its end (every answer grammar ends in *[AVP])."""
    if not avps:
        return answer
    n = len(answer) + len(avps)
    return b"".join((b"\x01", n.to_bytes(3, "big"), answer[4:], avps))


class Gate:
    """An application handler behind admission control and DOIC.

    ``handler`` answers what is admitted; what is not gets the configured
    refusal at once. ``grammar_avps`` are the AVPs the application's answer
    grammar requires besides Session-Id, Result-Code and the Origin AVPs (for
    S13, Auth-Session-State), used by the 5012 refusal.
    """

    def __init__(self, handler: AppHandler, guard: Guard, ident: m.Identity,
                 clock: Callable[[], float], grammar_avps: bytes = b"") -> None:
        self.handler = handler
        self.guard = guard
        self.clock = clock
        origin = b"".join(a.encode() for a in ident.origin_avps())
        state = (Avp.u32(AvpCode.ORIGIN_STATE_ID, ident.origin_state_id).encode()
                 if ident.origin_state_id is not None else b"")
        why = Avp.utf8(AvpCode.ERROR_MESSAGE, "overloaded: request refused, retry elsewhere",
                       mandatory=False).encode()
        # RFC 6733 7.2: Session-Id, Origin-Host, Origin-Realm, Result-Code, [Origin-State-Id],
        # [Error-Message], *[Proxy-Info]
        self._busy_e = origin + Avp.u32(AvpCode.RESULT_CODE, ResultCode.TOO_BUSY).encode() + \
            state + why
        # the application's grammar (as TS 29.272 7.2.20): Session-Id, Result-Code,
        # Auth-Session-State, Origin-Host, Origin-Realm, [Error-Message], *[Proxy-Info]
        self._unable = Avp.u32(AvpCode.RESULT_CODE, ResultCode.UNABLE_TO_COMPLY).encode() + \
            grammar_avps + origin + why

    def __call__(self, frame: bytes, peer: bytes) -> bytes | None:
        guard = self.guard
        scan = scan_request(frame) if frame.find(_OCSF_CODE, 20) >= 0 else None
        doic = scan is not None and scan.doic
        if guard.limited and not guard.admit(peer, self.clock()):
            answer = self.refusal(frame, scan)
        else:
            answer = self.handler(frame, peer)
        if doic:
            guard.saw_doic(peer)
        if doic and answer:
            answer = with_avps(answer, guard.doic_avps)
        return answer

    def refusal(self, frame: bytes, scan: _Scan | None = None) -> bytes | None:
        """The configured refusal of ``frame``; a request whose AVPs do not walk gets the
        handler's own answer (the RFC 6733 7 error for what is wrong with it)."""
        if scan is None:
            scan = scan_request(frame)
        if scan is None:
            return self.handler(frame, b"")
        if self.guard.limits.answer == ResultCode.UNABLE_TO_COMPLY and scan.session_id:
            flags = frame[4] & 0x40  # P copied; R and E clear
            body = scan.session_id + self._unable + scan.proxy_infos
        else:
            flags = (frame[4] & 0x40) | 0x20  # P copied, E set
            body = scan.session_id + self._busy_e + scan.proxy_infos
        n = 20 + len(body)
        return b"".join((b"\x01", n.to_bytes(3, "big"), bytes((flags,)), frame[5:20], body))
