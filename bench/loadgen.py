"""A pipelined S13 load generator: N connections, K ECRs in flight on each, over TCP.

Usage (from the repository root)::

    python -m bench.loadgen --target 127.0.0.1:3868 --connections 4 --in-flight 64 \\
        --duration 10 --imeis queries.csv          # or --seed 1 for random IMEIs

Each connection does a real CER/CEA (built and checked with ``eir.diameter``)
with its own Origin-Host, then keeps ``--in-flight`` requests outstanding:
every answer that comes back frees a slot, and all the slots freed by one
read are refilled with a single write. The ECRs are encoded once with
``eir.diameter`` as templates; per request only the Hop-by-Hop and
End-to-End ids (header bytes 12..20) and the 8-character Session-Id suffix
change, and the per-IMEI Terminal-Information/User-Name tail is pre-encoded.

Answers are framed on the 3-byte length and read with as little work as
possible: the Hop-by-Hop id finds the send time (a ring indexed by the id,
so no dict per request; an id whose slot still holds a request that is
waiting for its answer, from a server that answers out of order, is
skipped) and the answer is classified from the bytes after
its Session-Id (Result-Code / Experimental-Result-Code / Equipment-Status,
found by scanning the AVP headers once per distinct answer body and then
memoised: every WHITELISTED answer of one server has the same body).

The query file is CSV with a header ``imei,imsi,expect``; ``imsi`` and
``expect`` may be empty. ``expect`` is the answer the IMEI should get
(WHITELISTED, GREYLISTED, BLACKLISTED or 5422); each answer is checked
against the expectation of the very request it answers (``mismatches``).

Output: one JSON object on stdout and a human summary on stderr. The
generator's own CPU time (user+sys from getrusage) is reported against
the wall time of the run: a generator near 100% of a core measures itself,
not the server. ``--procs P`` runs P generator processes (connections and
count split between them), started together after all of them have
finished their handshakes, and merges their counts and histograms.

``--rate R`` switches to an open loop: requests go out on a schedule, R per
second in all (spread evenly over the connections; Poisson arrivals by
default, ``--arrival uniform`` for evenly spaced ones), whatever comes
back. What is due is sent every ~1 ms (a timer) and whenever answers are
read, in one write per connection; the only cap on requests in flight is a
safety limit (``--max-in-flight`` per connection: past it the schedule runs
on and the requests wait, keeping their scheduled times). Latency is
measured from the scheduled send time (so a stalled generator or server
cannot hide its backlog: no coordinated omission), or from the actual send
when a request went out up to half a tick early; the latency from the actual
send and the lag of each send behind its schedule are reported too. Without
``--rate`` the generator is the closed loop above, unchanged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import gc
import json
import os
import random
import resource
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from hdrh.histogram import HdrHistogram

from eir.diameter import messages as m
from eir.diameter.codec import Avp, Message, decode_message
from eir.diameter.constants import (
    Application,
    AuthSessionState,
    AvpCode,
    Command,
    ResultCode,
    Vendor,
)

TGPP = Vendor.TGPP

# Answer classes; 0..2 are the Equipment-Status values (TS 29.272 7.3.51).
WHITELISTED, BLACKLISTED, GREYLISTED, UNKNOWN_5422 = 0, 1, 2, 3
BASE_CLASSES = ("WHITELISTED", "BLACKLISTED", "GREYLISTED", "5422")
EXPECT_ALIASES = {
    "whitelisted": WHITELISTED, "white": WHITELISTED,
    "blacklisted": BLACKLISTED, "black": BLACKLISTED,
    "greylisted": GREYLISTED, "grey": GREYLISTED,
    "5422": UNKNOWN_5422, "unknown": UNKNOWN_5422,
}

_HDR = struct.Struct("!II4xI")  # version|length, flags|code, (app), hbh
_AVP = struct.Struct("!II")
_U32 = struct.Struct("!I")
_IDS = struct.Struct("!II")
_ECA_MASK = 0x80FFFFFF  # R bit and command code: "an answer to an ECR"
_SID_SUFFIX = 8  # hex digits of the Session-Id that change per request
_HIST_MAX_US = 60_000_000
# open loop (--rate): how often the timer sends what is due, and how far ahead of its
# scheduled time a request may go out with the batch (half a tick: the quantisation error
# is then centred on the schedule instead of always late)
_TICK_S = 0.001
_LOOKAHEAD_US = 500
DEFAULT_MAX_IN_FLIGHT = 10_000  # open loop: per connection, a safety limit only
ARRIVALS = ("poisson", "uniform")
REFUSALS = frozenset({"result 3004", "result 5012"})  # an overloaded server's answers


def _now_us() -> int:
    return time.monotonic_ns() // 1000


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# -- query items ----------------------------------------------------------------


@dataclass
class Queries:
    """What is asked, in order: IMEI, IMSI (or None) and expected class (-1 = none)."""

    imeis: list[str]
    imsis: list[str | None]
    expect: list[int]
    software_version: str = "01"

    def __len__(self) -> int:
        return len(self.imeis)


def load_queries(path: str, limit: int | None = None, ignore_expect: bool = False) -> Queries:
    imeis: list[str] = []
    imsis: list[str | None] = []
    expect: list[int] = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            imeis.append(row["imei"].strip())
            imsis.append((row.get("imsi") or "").strip() or None)
            exp = (row.get("expect") or "").strip().lower()
            if exp and not ignore_expect:
                if exp not in EXPECT_ALIASES:
                    raise SystemExit(f"loadgen: {path}: unknown expect value {exp!r}")
                expect.append(EXPECT_ALIASES[exp])
            else:
                expect.append(-1)
            if limit is not None and len(imeis) >= limit:
                break
    if not imeis:
        raise SystemExit(f"loadgen: {path}: no IMEIs")
    return Queries(imeis, imsis, expect)


def random_queries(seed: int, n: int) -> Queries:
    rnd = random.Random(seed)
    imeis = [f"{rnd.randrange(10**13, 10**14)}0" for _ in range(n)]
    imsis: list[str | None] = [f"00101{rnd.randrange(10**10):010d}" for _ in range(n)]
    return Queries(imeis, imsis, [-1] * n)


# -- templates ------------------------------------------------------------------


def ecr(origin_host: str, origin_realm: str, dest_realm: str, session_id: str, imei: str,
        sv: str | None, imsi: str | None, hbh: int, e2e: int) -> Message:
    """An ECR in the AVP order of TS 29.272 7.2.19, built with eir.diameter."""
    ti = [Avp.utf8(AvpCode.IMEI, imei, TGPP)]
    if sv is not None:
        ti.append(Avp.utf8(AvpCode.SOFTWARE_VERSION, sv, TGPP))
    avps = [Avp.utf8(AvpCode.SESSION_ID, session_id),
            Avp.u32(AvpCode.AUTH_SESSION_STATE, AuthSessionState.NO_STATE_MAINTAINED),
            Avp.octets(AvpCode.ORIGIN_HOST, origin_host.encode("ascii")),
            Avp.octets(AvpCode.ORIGIN_REALM, origin_realm.encode("ascii")),
            Avp.octets(AvpCode.DESTINATION_REALM, dest_realm.encode("ascii")),
            Avp.grouped(AvpCode.TERMINAL_INFORMATION, ti, TGPP)]
    if imsi is not None:
        avps.append(Avp.utf8(AvpCode.USER_NAME, imsi))
    return m.request(Command.ME_IDENTITY_CHECK, Application.S13, hbh, e2e, avps, proxiable=True)


def tail_of(imei: str, sv: str | None, imsi: str | None) -> bytes:
    """The per-IMEI end of an ECR: Terminal-Information and User-Name, encoded."""
    ti = [Avp.utf8(AvpCode.IMEI, imei, TGPP)]
    if sv is not None:
        ti.append(Avp.utf8(AvpCode.SOFTWARE_VERSION, sv, TGPP))
    out = Avp.grouped(AvpCode.TERMINAL_INFORMATION, ti, TGPP).encode()
    if imsi is not None:
        out += Avp.utf8(AvpCode.USER_NAME, imsi).encode()
    return out


@dataclass
class ConnTemplate:
    """Per-connection pieces of an ECR: everything between the ids and the tail."""

    sid_head: bytes  # Session-Id AVP header + the fixed part of its value
    mid: bytes  # Session-Id padding, Auth-Session-State, Origin-Host/Realm, Destination-Realm
    fixed_len: int  # bytes of a request before its tail


@dataclass
class Templates:
    heads: list[bytes]  # per query item: version|length and flags|code|app (12 bytes)
    tails: list[bytes]  # per query item: Terminal-Information (+ User-Name)
    fixed_len: int


def build_templates(q: Queries, hosts: list[str], origin_realm: str, dest_realm: str,
                    sid_stamp: str) -> tuple[Templates, list[ConnTemplate]]:
    conns: list[ConnTemplate] = []
    for host in hosts:
        sid_fixed = f"{host};{sid_stamp};"
        ref_tail = tail_of(q.imeis[0], q.software_version, q.imsis[0])
        full = ecr(host, origin_realm, dest_realm, sid_fixed + "0" * _SID_SUFFIX, q.imeis[0],
                   q.software_version, q.imsis[0], 0, 0).encode()
        fixed_len = len(full) - len(ref_tail)
        if full[fixed_len:] != ref_tail:
            raise AssertionError("ECR template: the tail is not where expected")
        cut = 28 + len(sid_fixed.encode())
        conns.append(ConnTemplate(full[20:cut], full[cut + _SID_SUFFIX:fixed_len], fixed_len))
    fixed = {c.fixed_len for c in conns}
    if len(fixed) != 1:
        raise AssertionError("all connections' Origin-Hosts must have the same length")
    fixed_len = fixed.pop()
    # the flags|code|app word pair, as eir.diameter encoded it
    code_app = ecr(hosts[0], origin_realm, dest_realm, "x", "0" * 15, None, None, 0, 0
                   ).encode()[4:12]
    heads_by_len: dict[int, bytes] = {}
    heads: list[bytes] = []
    tails: list[bytes] = []
    sv = q.software_version
    for imei, imsi in zip(q.imeis, q.imsis, strict=True):
        t = tail_of(imei, sv, imsi)
        n = fixed_len + len(t)
        h = heads_by_len.get(n)
        if h is None:
            h = heads_by_len[n] = _U32.pack(0x01000000 | n) + code_app
        heads.append(h)
        tails.append(t)
    # self-check: a request glued from the pieces equals the one eir.diameter encodes
    c0 = conns[0]
    hbh, e2e, suffix = 0x01020304, 0x0A0B0C0D, b"%08x" % 0x01020304
    glued = b"".join((heads[-1], _IDS.pack(hbh, e2e), c0.sid_head, suffix, c0.mid, tails[-1]))
    want = ecr(hosts[0], origin_realm, dest_realm, f"{hosts[0]};{sid_stamp};" + suffix.decode(),
               q.imeis[-1], sv, q.imsis[-1], hbh, e2e).encode()
    if glued != want:
        raise AssertionError("ECR template self-check failed")
    return Templates(heads, tails, fixed_len), conns


# -- answer classification ---------------------------------------------------------


def scan_result(body: bytes) -> tuple[int | None, int | None, int | None]:
    """(Result-Code, Experimental-Result-Code, Equipment-Status) from answer AVPs."""
    rc = erc = es = None
    pos, n = 0, len(body)
    while n - pos >= 8:
        code, fl = _AVP.unpack_from(body, pos)
        length = fl & 0xFFFFFF
        if length < 8 or pos + length > n:
            break
        vendor = _U32.unpack_from(body, pos + 8)[0] if fl & 0x80000000 else 0
        data = body[pos + (12 if fl & 0x80000000 else 8):pos + length]
        if code == AvpCode.RESULT_CODE and vendor == 0 and len(data) == 4:
            rc = _U32.unpack(data)[0]
        elif code == AvpCode.EXPERIMENTAL_RESULT and vendor == 0:
            for c, v in _inner_u32(data):
                if c == AvpCode.EXPERIMENTAL_RESULT_CODE:
                    erc = v
        elif code == AvpCode.EQUIPMENT_STATUS and vendor == TGPP and len(data) == 4:
            es = _U32.unpack(data)[0]
        pos += length + (-length & 3)
    return rc, erc, es


def _inner_u32(body: bytes) -> list[tuple[int, int]]:
    out = []
    pos, n = 0, len(body)
    while n - pos >= 8:
        code, fl = _AVP.unpack_from(body, pos)
        length = fl & 0xFFFFFF
        if length < 8 or pos + length > n:
            break
        h = 12 if fl & 0x80000000 else 8
        if length - h == 4:
            out.append((code, _U32.unpack_from(body, pos + h)[0]))
        pos += length + (-length & 3)
    return out


def class_name(rc: int | None, erc: int | None, es: int | None) -> str:
    if rc == ResultCode.SUCCESS and es in (0, 1, 2):
        return BASE_CLASSES[es]
    if erc == 5422:
        return "5422"
    if erc is not None:
        return f"experimental {erc}"
    if rc is not None:
        return f"result {rc}" + ("" if rc != ResultCode.SUCCESS else " without status")
    return "no result"


# -- the generator ----------------------------------------------------------------------


@dataclass
class Settings:
    host: str
    port: int
    connections: int
    in_flight: int
    count: int | None
    duration: float
    warmup: float
    drain: float
    origin_realm: str
    dest_realm: str
    worker: int = 0
    host_suffix: str = "bench"
    connect_timeout: float = 10.0
    rate: float | None = None  # open loop: requests/s in all (this process); None: closed loop
    arrival: str = "poisson"  # open loop: "poisson" or "uniform" inter-arrival times


@dataclass
class Gen:
    """State shared by one process's connections."""

    s: Settings
    tpl: Templates
    expect: list[int]
    names: list[str] = field(default_factory=lambda: list(BASE_CLASSES))
    counts: list[int] = field(default_factory=lambda: [0] * len(BASE_CLASSES))
    cache: dict[bytes, int] = field(default_factory=dict)
    mismatch: dict[tuple[int, int], int] = field(default_factory=dict)
    acc: dict[int, int] = field(default_factory=dict)  # latency µs -> answers
    hist: HdrHistogram = field(default_factory=lambda: HdrHistogram(1, _HIST_MAX_US, 3))
    sending: bool = False
    measuring: bool = False
    t0: int = 0
    measure_from: int = 0
    measured: int = 0
    first_measured: int = 0
    last_answer: int = 0
    unmatched: int = 0
    timeline: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # open loop only: latency from the actual send, and each send's lag behind its schedule
    acc_send: dict[int, int] = field(default_factory=dict)
    hist_send: HdrHistogram = field(default_factory=lambda: HdrHistogram(1, _HIST_MAX_US, 3))
    acc_lag: dict[int, int] = field(default_factory=dict)
    hist_lag: HdrHistogram = field(default_factory=lambda: HdrHistogram(1, _HIST_MAX_US, 3))
    capped: int = 0  # open loop: pumps that stopped at the in-flight safety limit
    # refusals of an overloaded server (3004 TOO_BUSY, 5012 UNABLE_TO_COMPLY): their latency
    # is kept apart, so that ``hist`` is the latency of the requests it admitted
    busy: set[int] = field(default_factory=set)
    acc_busy: dict[int, int] = field(default_factory=dict)
    hist_busy: HdrHistogram = field(default_factory=lambda: HdrHistogram(1, _HIST_MAX_US, 3))
    timeline_busy: list[int] = field(default_factory=list)

    def classify(self, body: bytes) -> int:
        name = class_name(*scan_result(body))
        if name in self.names:
            k = self.names.index(name)
        else:
            self.names.append(name)
            self.counts.append(0)
            k = len(self.names) - 1
            if name in REFUSALS:
                self.busy.add(k)
        if len(self.cache) < 1024:
            self.cache[body] = k
        return k

    def add_mismatch(self, want: int, got: int) -> None:
        self.mismatch[(want, got)] = self.mismatch.get((want, got), 0) + 1

    def flush_latency(self) -> None:
        for acc, hist in ((self.acc, self.hist), (self.acc_send, self.hist_send),
                          (self.acc_lag, self.hist_lag), (self.acc_busy, self.hist_busy)):
            rec = hist.record_value
            for v, c in acc.items():
                rec(min(max(v, 1), _HIST_MAX_US), c)
            acc.clear()

    def start_measuring(self, now: int) -> None:
        self.measuring = True
        self.acc.clear()
        self.acc_send.clear()
        self.acc_lag.clear()
        self.acc_busy.clear()
        self.first_measured = now


class GenConnection(asyncio.Protocol):
    def __init__(self, g: Gen, index: int, host: str, ct: ConnTemplate, quota: int,
                 qi: int) -> None:
        self.g = g
        self.index = index
        self.ident = m.Identity(host, g.s.origin_realm, ("127.0.0.1",), product_name="eir-bench")
        self.ct = ct
        self.quota = quota
        self.qi = qi
        self.transport: asyncio.Transport | None = None
        self.rest = b""
        self.open = False
        self.sending = False
        self.sent = 0
        self.answered = 0
        ring = 1
        while ring < 2 * g.s.in_flight:
            ring <<= 1
        self.mask = ring - 1
        self.ring_hbh = [-1] * ring
        self.ring_t = [0] * ring
        self.ring_item = [0] * ring
        self.hbh = random.getrandbits(32)
        self.salt = random.getrandbits(32)
        self.base_hbh = 0
        self.loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = self.loop.create_future()
        self.stopped: asyncio.Future[None] = self.loop.create_future()  # quota sent
        self.finished: asyncio.Future[None] = self.loop.create_future()  # and answered
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.dpr_hbh: int | None = None
        self.close_reason = ""

    # -- asyncio callbacks --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not registered as asyncio.Transport: no isinstance check
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        hbh, e2e = self._ids()
        self.cer_hbh = hbh
        self.transport.write(m.cer(self.ident, m.S13_APPLICATIONS, hbh, e2e).encode())

    def connection_lost(self, exc: Exception | None) -> None:
        why = self.close_reason or (f"connection lost: {exc}" if exc else "connection closed")
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(why))
        if not self.stopped.done():
            self.stopped.set_result(None)
        if not self.finished.done():
            self.finished.set_result(None)
            if self.answered < self.sent:
                self.g.errors.append(f"{self.ident.origin_host}: {why} with "
                                     f"{self.sent - self.answered} request(s) unanswered")
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:  # the hot path
        now = _now_us()
        if self.rest:
            data = self.rest + data
            self.rest = b""
        g = self.g
        if not g.measuring and g.sending and now >= g.measure_from:
            g.start_measuring(now)
        n = len(data)
        pos = 0
        got = 0
        hb, tt, it = self.ring_hbh, self.ring_t, self.ring_item
        mask = self.mask
        counts = g.counts
        cache_get = g.cache.get
        expect = g.expect
        acc = g.acc
        acc_get = acc.get
        busy = g.busy
        refused = 0
        unpack_hdr = _HDR.unpack_from
        unpack_avp = _AVP.unpack_from
        while n - pos >= 20:
            vl, fc, hbh = unpack_hdr(data, pos)
            length = vl & 0xFFFFFF
            end = pos + length
            if end > n:
                break
            if length < 28 or fc & _ECA_MASK != 324:
                if length < 20 or vl >> 24 != 1:
                    self._abort(f"framing lost (length {length})")
                    return
                self._general(data[pos:end])
                pos = end
                continue
            s = hbh & mask
            t0 = tt[s]
            if hb[s] != hbh or not t0:
                g.unmatched += 1
                pos = end
                continue
            tt[s] = 0
            code, fl = unpack_avp(data, pos + 20)
            off = pos + 20 + ((fl & 0xFFFFFF) + 3 & -4) if code == 263 else pos + 20
            key = data[off:end]
            k = cache_get(key)
            if k is None:
                k = g.classify(key)
            counts[k] += 1
            e = expect[it[s]]
            if e != k and e >= 0:
                g.add_mismatch(e, k)
            lat = now - t0
            if k in busy:
                g.acc_busy[lat] = g.acc_busy.get(lat, 0) + 1
                refused += 1
            else:
                acc[lat] = acc_get(lat, 0) + 1
            got += 1
            pos = end
        if pos < n:
            self.rest = data[pos:]
        if got:
            self.answered += got
            g.last_answer = now
            if g.measuring:
                g.measured += got
            sec = (now - g.t0) // 1_000_000
            if sec < len(g.timeline):
                g.timeline[sec] += got
                g.timeline_busy[sec] += refused
            if len(acc) > 200_000:
                g.flush_latency()
            if self.sending and g.sending:
                q = self.quota
                self._send(got if got < q else q, _now_us())  # stamped at the write
            elif self.answered >= self.sent and self.sending is False and \
                    not self.finished.done():
                self.finished.set_result(None)

    # -- sending --

    def _ids(self) -> tuple[int, int]:
        self.hbh = (self.hbh + 1) & 0xFFFFFFFF
        return self.hbh, self.hbh ^ self.salt

    def start(self) -> None:
        self.sending = True
        self._send(min(self.g.s.in_flight, self.quota), _now_us())

    def _send(self, k: int, now: int) -> None:
        if k <= 0:
            self.stop_sending()
            return
        tpl = self.g.tpl
        heads, tails = tpl.heads, tpl.tails
        nq = len(heads)
        hb, tt, it = self.ring_hbh, self.ring_t, self.ring_item
        mask = self.mask
        sid_head, mid = self.ct.sid_head, self.ct.mid
        pack = _IDS.pack
        salt = self.salt
        hbh = self.hbh
        qi = self.qi
        out: list[bytes] = []
        for _ in range(k):
            hbh = (hbh + 1) & 0xFFFFFFFF
            s = hbh & mask
            while tt[s]:  # still outstanding: the server answers out of order, skip the id
                hbh = (hbh + 1) & 0xFFFFFFFF
                s = hbh & mask
            hb[s] = hbh
            tt[s] = now
            it[s] = qi
            out += (heads[qi], pack(hbh, hbh ^ salt), sid_head, b"%08x" % hbh, mid, tails[qi])
            qi += 1
            if qi == nq:
                qi = 0
        self.hbh = hbh
        self.qi = qi
        self.sent += k
        self.quota -= k
        assert self.transport is not None
        self.transport.write(b"".join(out))
        if self.quota <= 0:
            self.stop_sending()

    def stop_sending(self) -> None:
        self.sending = False
        if not self.stopped.done():
            self.stopped.set_result(None)
        if self.answered >= self.sent and not self.finished.done():
            self.finished.set_result(None)

    # -- everything but ECAs: CEA, DWR, DPR, DPA, stray messages --

    def _general(self, frame: bytes) -> None:
        msg = decode_message(frame)
        if not isinstance(msg, Message):
            self.g.errors.append(f"{self.ident.origin_host}: undecodable message: {msg.reason}")
            return
        assert self.transport is not None
        if msg.is_request:
            if msg.code == Command.DEVICE_WATCHDOG:
                self.transport.write(m.dwa(msg, self.ident).encode())
            elif msg.code == Command.DISCONNECT_PEER:
                self.transport.write(m.dpa(msg, self.ident).encode())
                self.close_reason = "the server sent DPR"
                self.stop_sending()
            else:
                self.g.errors.append(f"{self.ident.origin_host}: unexpected request {msg.code}")
            return
        if msg.code == Command.CAPABILITIES_EXCHANGE and not self.open:
            rc = m.result_code_of(msg)
            if rc != ResultCode.SUCCESS:
                self.close_reason = f"CER refused: Result-Code {rc}"
                self.transport.close()
                return
            self.open = True
            self.opened.set_result(None)
        elif msg.code == Command.DISCONNECT_PEER and msg.hbh == self.dpr_hbh:
            self.transport.close()
        elif msg.code == Command.ME_IDENTITY_CHECK:
            self.g.unmatched += 1
        elif msg.code != Command.DEVICE_WATCHDOG:
            self.g.errors.append(f"{self.ident.origin_host}: unexpected answer {msg.code}")

    def _abort(self, why: str) -> None:
        self.close_reason = why
        self.g.errors.append(f"{self.ident.origin_host}: {why}")
        if self.transport is not None:
            self.transport.abort()

    async def goodbye(self, timeout: float = 2.0) -> None:
        """DPR, wait for the DPA, close (RFC 6733 5.4)."""
        t = self.transport
        if t is None or t.is_closing():
            return
        hbh, e2e = self._ids()
        self.dpr_hbh = hbh
        t.write(m.dpr(self.ident, hbh, e2e).encode())
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        except TimeoutError:
            t.abort()


class OpenConnection(GenConnection):
    """Open loop: this connection's share of ``--rate``, sent on a schedule whatever comes
    back (``GenConnection`` is the closed loop: an answer frees a slot).

    The ring holds, per request, the time latency is measured from (the scheduled send
    time, or the actual one when the request went out early with a batch) and, apart, the
    actual send time.
    """

    def __init__(self, g: Gen, index: int, host: str, ct: ConnTemplate, quota: int,
                 qi: int, rate: float, arrival: str) -> None:
        super().__init__(g, index, host, ct, quota, qi)
        self.ring_sent = [0] * len(self.ring_t)
        self.cap = g.s.in_flight  # the safety limit (the ring is twice as long)
        self.gap_us = 1e6 / rate  # mean time between two requests of this connection
        self.poisson = arrival == "poisson"
        self.rnd = random.Random(f"{g.s.worker}-{index}-{self.salt}")
        self.next_t = 0.0  # scheduled time (µs) of the next request not sent yet

    def _gap(self) -> float:
        return self.rnd.expovariate(1.0) * self.gap_us if self.poisson else self.gap_us

    def start(self) -> None:
        self.sending = True
        # connections start at staggered points of the first gap, not all at once
        self.next_t = self.g.t0 + self.rnd.random() * self.gap_us
        self.pump(_now_us())

    def pump(self, now: int) -> None:
        """Send everything due by now (+ the look-ahead) that the safety limit lets out."""
        if not self.sending:
            return
        nt = self.next_t
        horizon = now + _LOOKAHEAD_US
        if nt > horizon:
            return
        room = self.cap - (self.sent - self.answered)
        k = min(room, self.quota)
        times: list[float] = []
        gap = self._gap
        while nt <= horizon and len(times) < k:
            times.append(nt)
            nt += gap()
        self.next_t = nt
        if nt <= horizon and len(times) == room:
            self.g.capped += 1
        if times:
            self._send_times(times, now)

    def behind(self, now: int) -> int:
        """About how many requests scheduled by ``now`` were not sent (held by the safety
        limit, or a generator too busy to keep to its schedule)."""
        return 0 if self.next_t > now else int((now - self.next_t) / self.gap_us) + 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.sending = False  # the timer must not write to a closed transport
        super().connection_lost(exc)

    def _send_times(self, times: list[float], now: int) -> None:
        tpl = self.g.tpl
        heads, tails = tpl.heads, tpl.tails
        nq = len(heads)
        hb, tt, it, ts = self.ring_hbh, self.ring_t, self.ring_item, self.ring_sent
        mask = self.mask
        sid_head, mid = self.ct.sid_head, self.ct.mid
        pack = _IDS.pack
        salt = self.salt
        hbh = self.hbh
        qi = self.qi
        g = self.g
        lag_acc = g.acc_lag if g.measuring else None
        out: list[bytes] = []
        for t in times:
            sched = int(t)
            hbh = (hbh + 1) & 0xFFFFFFFF
            s = hbh & mask
            while tt[s]:  # still outstanding (answers out of order): skip the id
                hbh = (hbh + 1) & 0xFFFFFFFF
                s = hbh & mask
            hb[s] = hbh
            tt[s] = sched if sched < now else now  # from the schedule, unless sent early
            ts[s] = now
            it[s] = qi
            if lag_acc is not None:
                lag = now - sched if sched < now else 0
                lag_acc[lag] = lag_acc.get(lag, 0) + 1
            out += (heads[qi], pack(hbh, hbh ^ salt), sid_head, b"%08x" % hbh, mid, tails[qi])
            qi += 1
            if qi == nq:
                qi = 0
        k = len(times)
        self.hbh = hbh
        self.qi = qi
        self.sent += k
        self.quota -= k
        assert self.transport is not None
        self.transport.write(b"".join(out))
        if self.quota <= 0:
            self.stop_sending()

    def data_received(self, data: bytes) -> None:  # the open loop's hot path
        now = _now_us()
        if self.rest:
            data = self.rest + data
            self.rest = b""
        g = self.g
        if not g.measuring and g.sending and now >= g.measure_from:
            g.start_measuring(now)
        n = len(data)
        pos = 0
        got = 0
        hb, tt, it, ts = self.ring_hbh, self.ring_t, self.ring_item, self.ring_sent
        mask = self.mask
        counts = g.counts
        cache_get = g.cache.get
        expect = g.expect
        acc, acc_send = g.acc, g.acc_send
        busy = g.busy
        refused = 0
        unpack_hdr = _HDR.unpack_from
        unpack_avp = _AVP.unpack_from
        while n - pos >= 20:
            vl, fc, hbh = unpack_hdr(data, pos)
            length = vl & 0xFFFFFF
            end = pos + length
            if end > n:
                break
            if length < 28 or fc & _ECA_MASK != 324:
                if length < 20 or vl >> 24 != 1:
                    self._abort(f"framing lost (length {length})")
                    return
                self._general(data[pos:end])
                pos = end
                continue
            s = hbh & mask
            t0 = tt[s]
            if hb[s] != hbh or not t0:
                g.unmatched += 1
                pos = end
                continue
            tt[s] = 0
            code, fl = unpack_avp(data, pos + 20)
            off = pos + 20 + ((fl & 0xFFFFFF) + 3 & -4) if code == 263 else pos + 20
            key = data[off:end]
            k = cache_get(key)
            if k is None:
                k = g.classify(key)
            counts[k] += 1
            e = expect[it[s]]
            if e != k and e >= 0:
                g.add_mismatch(e, k)
            lat = now - t0
            if k in busy:
                g.acc_busy[lat] = g.acc_busy.get(lat, 0) + 1
                refused += 1
            else:
                acc[lat] = acc.get(lat, 0) + 1
            lat = now - ts[s]
            acc_send[lat] = acc_send.get(lat, 0) + 1
            got += 1
            pos = end
        if pos < n:
            self.rest = data[pos:]
        if got:
            self.answered += got
            g.last_answer = now
            if g.measuring:
                g.measured += got
            sec = (now - g.t0) // 1_000_000
            if sec < len(g.timeline):
                g.timeline[sec] += got
                g.timeline_busy[sec] += refused
            if len(acc) > 200_000 or len(acc_send) > 200_000:
                g.flush_latency()
            if self.sending and g.sending:
                self.pump(now)
            elif self.answered >= self.sent and self.sending is False and \
                    not self.finished.done():
                self.finished.set_result(None)


def _factory(c: GenConnection) -> Callable[[], GenConnection]:
    return lambda: c


def host_names(s: Settings) -> list[str]:
    return [f"lg{s.worker:02d}c{i:04d}.{s.host_suffix}" for i in range(s.connections)]


async def run(s: Settings, q: Queries, go: asyncio.Future[None] | None = None,
              on_ready: Any = None) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    hosts = host_names(s)
    tpl, cts = build_templates(q, hosts, s.origin_realm, s.dest_realm,
                               f"{int(time.time()):010d}")
    g = Gen(s, tpl, q.expect)
    gc.collect()
    gc.freeze()  # the query tables are long-lived: keep them out of every collection
    total = s.count if s.count is not None else 1 << 62
    conns: list[GenConnection] = []
    for i, host in enumerate(hosts):
        quota = total // s.connections + (1 if i < total % s.connections else 0)
        qi = (len(q) * i // s.connections + s.worker * 7919) % len(q)
        if s.rate is not None:
            conns.append(OpenConnection(g, i, host, cts[i], quota, qi, s.rate / s.connections,
                                        s.arrival))
        else:
            conns.append(GenConnection(g, i, host, cts[i], quota, qi))
    try:
        await asyncio.wait_for(asyncio.gather(
            *(loop.create_connection(_factory(c), s.host, s.port) for c in conns)),
            s.connect_timeout)
        await asyncio.wait_for(asyncio.gather(*(c.opened for c in conns)), s.connect_timeout)
    except (OSError, TimeoutError, ConnectionError) as exc:
        for c in conns:
            if c.transport is not None:
                c.transport.abort()
        return {"error": f"connect/handshake to {s.host}:{s.port} failed: {exc!r}"}
    if on_ready is not None:
        on_ready()
    if go is not None:
        await go
    # -- the measured run --
    cpu0, wall0 = _cpu_s(), time.monotonic()
    g.t0 = _now_us()
    g.measure_from = g.t0 + int(s.warmup * 1e6)
    g.timeline = [0] * (int(s.duration + s.drain) + 3)
    g.timeline_busy = [0] * len(g.timeline)
    g.sending = True
    if s.warmup <= 0:
        g.start_measuring(g.t0)
    for c in conns:
        c.start()
    opened = [c for c in conns if isinstance(c, OpenConnection)]
    ticker: asyncio.TimerHandle | None = None
    if opened:
        def tick() -> None:
            nonlocal ticker
            if g.sending:
                now = _now_us()
                for c in opened:
                    c.pump(now)
                ticker = loop.call_later(_TICK_S, tick)

        ticker = loop.call_later(_TICK_S, tick)
    finished = [c.finished for c in conns]
    # until the duration is up or every connection has sent its quota (or was closed)
    await asyncio.wait([c.stopped for c in conns], timeout=s.duration)
    g.sending = False
    t_stop = _now_us()
    if ticker is not None:
        ticker.cancel()
    behind = sum(c.behind(t_stop) for c in opened if c.sending)
    for c in conns:
        c.stop_sending()
    await asyncio.wait(finished, timeout=s.drain)
    cpu1, wall1 = _cpu_s(), time.monotonic()
    g.flush_latency()
    await asyncio.gather(*(c.goodbye() for c in conns))
    sent = sum(c.sent for c in conns)
    answered = sum(c.answered for c in conns)
    window_us = max(g.last_answer - g.first_measured, 1) if g.measured else 0
    cpu = cpu1 - cpu0
    wall = wall1 - wall0
    extra: dict[str, Any] = {}
    if s.rate is not None:
        send_s = (t_stop - g.t0) / 1e6
        extra = {
            "open_loop": {"rate": s.rate, "arrival": s.arrival, "max_in_flight": s.in_flight,
                          "offered_rate": round(sent / send_s, 1) if send_s > 0 else 0.0,
                          "behind_schedule_at_end": behind, "capped": g.capped,
                          "send_lag_us": percentiles(g.hist_lag)},
            "latency_from_send_us": percentiles(g.hist_send),
            "hist_send": g.hist_send.encode().decode("ascii"),
            "hist_lag": g.hist_lag.encode().decode("ascii"),
        }
    return {
        "target": f"{s.host}:{s.port}",
        "connections": s.connections,
        "in_flight": s.in_flight,
        "sent": sent,
        "answered": answered,
        "lost": sent - answered,
        "unmatched_answers": g.unmatched,
        "status": {name: n for name, n in zip(g.names, g.counts, strict=True) if n},
        "expectations_checked": sum(1 for e in q.expect if e >= 0) > 0,
        "mismatches": sum(g.mismatch.values()),
        "mismatch_detail": {f"{g.names[w]}->{g.names[k]}": n
                            for (w, k), n in sorted(g.mismatch.items())},
        "measured_answers": g.measured,
        "measure_start_us": g.first_measured,
        "measure_end_us": g.last_answer,
        "send_s": (t_stop - g.t0) / 1e6,
        "t0_us": g.t0,  # CLOCK_MONOTONIC, the same in every process: timelines start here
        "rate": g.measured / (window_us / 1e6) if window_us else 0.0,
        "latency_us": percentiles(g.hist),
        "hist": g.hist.encode().decode("ascii"),
        "timeline": g.timeline[: max(1, int((g.last_answer - g.t0) // 1_000_000) + 1)],
        "refused": sum(g.timeline_busy),
        "refused_latency_us": percentiles(g.hist_busy),
        "hist_refused": g.hist_busy.encode().decode("ascii"),
        "timeline_refused": g.timeline_busy[: max(1, int((g.last_answer - g.t0) // 1_000_000)
                                                  + 1)],
        "cpu": {"seconds": round(cpu, 3), "wall_s": round(wall, 3),
                "percent_of_core": round(100 * cpu / wall, 1) if wall > 0 else 0.0},
        "errors": g.errors[:20],
        **extra,
    }


def percentiles(h: HdrHistogram) -> dict[str, float]:
    if h.get_total_count() == 0:
        return {}
    return {"p50": h.get_value_at_percentile(50), "p90": h.get_value_at_percentile(90),
            "p99": h.get_value_at_percentile(99), "p99.9": h.get_value_at_percentile(99.9),
            "max": h.get_max_value(), "mean": round(h.get_mean_value(), 1),
            "count": h.get_total_count()}


# -- several processes -----------------------------------------------------------


def _split(total: int, parts: int, i: int) -> int:
    return total // parts + (1 if i < total % parts else 0)


def run_procs(args: argparse.Namespace) -> dict[str, Any]:
    """Start ``--procs`` workers, wait until every one is connected, start them together."""
    procs = args.procs
    children: list[subprocess.Popen[str]] = []
    base = [sys.executable, "-m", "bench.loadgen", "--target", args.target,
            "--in-flight", str(args.in_flight), "--duration", str(args.duration),
            "--warmup", str(args.warmup), "--drain", str(args.drain),
            "--origin-realm", args.origin_realm, "--dest-realm", args.dest_realm,
            "--host-suffix", args.host_suffix, "--quiet", "--wait-go"]
    if args.imeis:
        base += ["--imeis", args.imeis]
    else:
        base += ["--seed", str(args.seed)]
    if args.limit is not None:
        base += ["--limit", str(args.limit)]
    if args.ignore_expect:
        base.append("--ignore-expect")
    if args.rate is not None:
        base += ["--arrival", args.arrival, "--max-in-flight", str(args.max_in_flight)]
    procs = min(procs, args.connections)  # every worker has at least one connection
    for i in range(procs):
        conns = _split(args.connections, procs, i)
        cmd = [*base, "--connections", str(conns), "--worker", str(i + 1)]
        if args.rate is not None:  # each worker its connections' share of the rate
            cmd += ["--rate", repr(args.rate * conns / args.connections)]
        if args.count is not None:
            cmd += ["--count", str(_split(args.count, procs, i))]
        children.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         text=True))
    results: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 60 + args.connect_timeout
        for ch in children:
            assert ch.stdout is not None
            line = _readline(ch, deadline)
            if line.strip() != "READY":
                out = line + (ch.stdout.read() if ch.poll() is not None else "")
                raise RuntimeError(f"loadgen worker failed to start: {out.strip()[:500]}")
        for ch in children:
            assert ch.stdin is not None
            ch.stdin.write("GO\n")
            ch.stdin.flush()
        deadline = time.monotonic() + args.duration + args.drain + 60
        for ch in children:
            results.append(json.loads(_readline(ch, deadline)))
            ch.wait(timeout=max(1.0, deadline - time.monotonic()))
    except Exception as exc:
        return {"error": f"{exc}"}
    finally:
        for ch in children:
            if ch.poll() is None:
                ch.kill()
                ch.wait()
    return merge(results)


def _readline(ch: subprocess.Popen[str], deadline: float) -> str:
    assert ch.stdout is not None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("loadgen worker did not answer in time")
        ready, _, _ = select.select([ch.stdout], [], [], min(left, 1.0))
        if ready:
            return ch.stdout.readline()
        if ch.poll() is not None:
            return ch.stdout.readline()


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        return {"error": "; ".join(errors)}
    hist = HdrHistogram(1, _HIST_MAX_US, 3)
    hist_refused = HdrHistogram(1, _HIST_MAX_US, 3)
    for r in results:
        hist.decode_and_add(r["hist"])
        hist_refused.decode_and_add(r["hist_refused"])
    status: dict[str, int] = {}
    detail: dict[str, int] = {}
    for r in results:
        for k, v in r["status"].items():
            status[k] = status.get(k, 0) + v
        for k, v in r["mismatch_detail"].items():
            detail[k] = detail.get(k, 0) + v
    start = min(r["measure_start_us"] for r in results if r["measured_answers"])
    end = max(r["measure_end_us"] for r in results if r["measured_answers"])
    measured = sum(r["measured_answers"] for r in results)
    width = max(len(r["timeline"]) for r in results)
    timeline = [sum(r["timeline"][i] for r in results if i < len(r["timeline"]))
                for i in range(width)]
    timeline_refused = [sum(r["timeline_refused"][i] for r in results
                            if i < len(r["timeline_refused"])) for i in range(width)]
    cpu_s = sum(r["cpu"]["seconds"] for r in results)
    wall = max(r["cpu"]["wall_s"] for r in results)
    per_proc = [r["cpu"]["percent_of_core"] for r in results]
    first = results[0]
    extra: dict[str, Any] = {}
    if "open_loop" in first:
        hist_send = HdrHistogram(1, _HIST_MAX_US, 3)
        hist_lag = HdrHistogram(1, _HIST_MAX_US, 3)
        for r in results:
            hist_send.decode_and_add(r["hist_send"])
            hist_lag.decode_and_add(r["hist_lag"])
        ol = [r["open_loop"] for r in results]
        extra = {
            "open_loop": {"rate": sum(o["rate"] for o in ol), "arrival": ol[0]["arrival"],
                          "max_in_flight": ol[0]["max_in_flight"],
                          "offered_rate": round(sum(o["offered_rate"] for o in ol), 1),
                          "behind_schedule_at_end": sum(o["behind_schedule_at_end"] for o in ol),
                          "capped": sum(o["capped"] for o in ol),
                          "send_lag_us": percentiles(hist_lag)},
            "latency_from_send_us": percentiles(hist_send),
            "hist_send": hist_send.encode().decode("ascii"),
            "hist_lag": hist_lag.encode().decode("ascii"),
        }
    return {
        "target": first["target"],
        "procs": len(results),
        "connections": sum(r["connections"] for r in results),
        "in_flight": first["in_flight"],
        **{k: sum(r[k] for r in results) for k in
           ("sent", "answered", "lost", "unmatched_answers", "mismatches", "measured_answers")},
        "status": status,
        "expectations_checked": any(r["expectations_checked"] for r in results),
        "mismatch_detail": detail,
        "measure_start_us": start,
        "measure_end_us": end,
        "send_s": max(r["send_s"] for r in results),
        "t0_us": min(r["t0_us"] for r in results),
        "rate": measured / ((end - start) / 1e6) if end > start else 0.0,
        "latency_us": percentiles(hist),
        "hist": hist.encode().decode("ascii"),
        "timeline": timeline,
        "refused": sum(r["refused"] for r in results),
        "refused_latency_us": percentiles(hist_refused),
        "hist_refused": hist_refused.encode().decode("ascii"),
        "timeline_refused": timeline_refused,
        "cpu": {"seconds": round(cpu_s, 3), "wall_s": wall,
                "percent_of_core": round(100 * cpu_s / wall, 1) if wall else 0.0,
                "per_process": per_proc},
        "errors": [e for r in results for e in r["errors"]][:20],
        **extra,
    }


# -- command line ----------------------------------------------------------------------


def generator_verdict(result: dict[str, Any]) -> str:
    cpu = result.get("cpu", {})
    per = cpu.get("per_process") or [cpu.get("percent_of_core", 0.0)]
    worst = max(per) if per else 0.0
    if worst >= 90:
        return f"loadgen CPU {worst:.0f}% of one core: generator-bound, the rate is a lower bound"
    return f"loadgen CPU {worst:.0f}% of one core (per process): not generator-bound"


def summary(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"loadgen: {result['error']}"
    lat = result["latency_us"]
    ol = result.get("open_loop")
    shape = (f"open loop at {ol['rate']:,.0f}/s ({ol['arrival']}, at most "
             f"{ol['max_in_flight']:,} in flight each)" if ol
             else f"{result['in_flight']} in flight")
    lines = [
        f"target {result['target']}: {result['connections']} connection(s) x "
        f"{shape}, {result.get('procs', 1)} process(es)",
        f"  rate      {result['rate']:,.0f} answers/s "
        f"(measured {result['measured_answers']:,} answers)",
        f"  sent {result['sent']:,}  answered {result['answered']:,}  lost {result['lost']:,}  "
        f"unmatched {result['unmatched_answers']:,}",
        "  latency   " + "  ".join(f"{k} {lat[k] / 1000:.2f} ms"
                                   for k in ("p50", "p90", "p99", "p99.9", "max") if k in lat),
        "  status    " + ", ".join(f"{k} {v:,}" for k, v in result["status"].items()),
    ]
    if ol:
        send, lag = result["latency_from_send_us"], ol["send_lag_us"]
        lines += [
            f"  offered   {ol['offered_rate']:,.0f} requests/s sent; behind schedule at the "
            f"end {ol['behind_schedule_at_end']:,}; in-flight limit reached {ol['capped']:,} "
            "time(s)",
            "  latency above is from the scheduled send; from the actual send: " + "  ".join(
                f"{k} {send[k] / 1000:.2f} ms" for k in ("p50", "p99", "p99.9", "max")
                if k in send),
            "  send lag behind the schedule: " + "  ".join(
                f"{k} {lag[k] / 1000:.2f} ms" for k in ("p50", "p99", "max") if k in lag),
        ]
    if result["expectations_checked"]:
        lines.append(f"  mismatches against expected answers: {result['mismatches']:,} "
                     f"{result['mismatch_detail'] or ''}")
    lines.append("  " + generator_verdict(result))
    lines += [f"  error: {e}" for e in result["errors"]]
    return "\n".join(lines)


def parse_target(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n")[0])
    p.add_argument("--target", required=True, help="HOST:PORT of the server")
    p.add_argument("--connections", type=int, default=4, help="TCP connections in all (4)")
    p.add_argument("--in-flight", type=int, default=64, help="requests outstanding per connection")
    p.add_argument("--count", type=int, help="stop after this many requests in all")
    p.add_argument("--rate", type=float,
                   help="open loop: send R requests/s in all on a schedule, whatever comes "
                        "back (--in-flight is then ignored); without it, the closed loop")
    p.add_argument("--arrival", choices=ARRIVALS, default="poisson",
                   help="open loop: Poisson arrivals (default) or evenly spaced (uniform)")
    p.add_argument("--max-in-flight", type=int, default=DEFAULT_MAX_IN_FLIGHT,
                   help="open loop: safety limit of requests in flight per connection "
                        f"({DEFAULT_MAX_IN_FLIGHT:,}); due requests past it wait")
    p.add_argument("--duration", type=float, default=10.0, help="stop sending after S seconds")
    p.add_argument("--warmup", type=float, default=0.0,
                   help="seconds at the start left out of the rate and latencies")
    p.add_argument("--drain", type=float, default=5.0,
                   help="seconds to wait for outstanding answers; then they count as lost")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--imeis", help="query CSV: imei,imsi,expect")
    src.add_argument("--seed", type=int, help="random IMEIs from this seed (no expectations)")
    p.add_argument("--limit", type=int, help="use only the first N query rows (or N random)")
    p.add_argument("--ignore-expect", action="store_true", help="do not check answers")
    p.add_argument("--procs", type=int, default=1, help="generator processes (1)")
    p.add_argument("--origin-realm", default="bench")
    p.add_argument("--dest-realm", default="bench")
    p.add_argument("--host-suffix", default="bench", help="Origin-Host: lgWWcNNNN.SUFFIX")
    p.add_argument("--connect-timeout", type=float, default=10.0)
    p.add_argument("--quiet", action="store_true", help="no summary on stderr")
    p.add_argument("--keep-hist", action="store_true",
                   help="keep the HDR histograms (base64) in the JSON: hist, and with --rate "
                        "hist_send and hist_lag")
    p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--wait-go", action="store_true", help=argparse.SUPPRESS)
    return p


async def _worker_main(s: Settings, q: Queries, wait_go: bool) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    go: asyncio.Future[None] | None = None
    ready = None
    if wait_go:
        go = loop.create_future()

        def ready() -> None:
            print("READY", flush=True)

            def release() -> None:
                if go is not None and not go.done():
                    go.set_result(None)

            def wait_stdin() -> None:
                sys.stdin.readline()
                loop.call_soon_threadsafe(release)

            loop.run_in_executor(None, wait_stdin)

    return await run(s, q, go, ready)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be positive")
    if args.max_in_flight < 1:
        parser.error("--max-in-flight must be at least 1")
    if args.procs > 1:
        result = run_procs(args)
    else:
        host, port = parse_target(args.target)
        q = (load_queries(args.imeis, args.limit, args.ignore_expect) if args.imeis
             else random_queries(args.seed, args.limit or 10_000))
        in_flight = args.in_flight if args.rate is None else args.max_in_flight
        s = Settings(host, port, args.connections, in_flight, args.count, args.duration,
                     args.warmup, args.drain, args.origin_realm, args.dest_realm, args.worker,
                     args.host_suffix, args.connect_timeout, args.rate, args.arrival)
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            result = asyncio.run(_worker_main(s, q, args.wait_go))
        else:
            result = uvloop.run(_worker_main(s, q, args.wait_go))
    if not args.wait_go and not args.keep_hist:
        for key in ("hist", "hist_send", "hist_lag", "hist_refused"):
            result.pop(key, None)
    print(json.dumps(result), flush=True)
    if not args.quiet:
        print(summary(result), file=sys.stderr)
    if "error" in result:
        return 2
    return 1 if result["lost"] or result["mismatches"] or result["unmatched_answers"] else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    os._exit(130)
