"""The MME side of S13: a pool of Diameter peers that send ECRs and match their ECAs.

Owns issue 4 item 2. Each simulated MME is one peer identity (its own
Origin-Host and Origin-Realm) with one connection per target (EIR or
relay), preferring its primary target and failing over to the others,
as an MME configured with a primary and secondary EIR does.

Per connection, the sans-IO ``eir.diameter.peer.PeerConnection`` does the
base protocol: CER/CEA advertising S13 (Vendor-Specific-Application-Id
{10415, 16777252}, TS 29.272 7.1.7-7.1.8; RFC 6733 5.3), the RFC 3539
watchdog (DWR/DWA, RFC 6733 5.5), DPR/DPA (5.4, sent on ``stop``). This
module adds the glue and the hot path, which bypasses the general codec:

- ECRs (TS 29.272 7.2.19) are glued from pre-encoded pieces: only the
  Hop-by-Hop and End-to-End ids, the Session-Id suffix and the handset's
  Terminal-Information/User-Name tail change. The pieces are checked
  against the same ECR encoded by ``eir.diameter`` when a pool is made.
- ECAs are framed on the 3-byte length, matched by Hop-by-Hop id
  (RFC 6733 6.2: an unknown id is dropped and counted) and classified from
  the bytes after the Session-Id, memoised per distinct answer body.
- Per-request timeout, swept a few times a second (no timer per request).
- Loss of a connection, or its watchdog going SUSPECT (RFC 6733 5.5.4):
  pending requests are sent again, at most once, on another connection of
  the same MME (or on its next connection if it has none) with the T flag
  and the same End-to-End id and Session-Id (RFC 6733 3).
  Reconnection backs off exponentially; a DPR with DO_NOT_WANT_TO_TALK_TO_YOU
  stops it and BUSY waits the longest back-off (RFC 6733 5.4.3).
- A DPR from the EIR (RFC 6733 5.4: it is going away, e.g. one worker of a
  rolling restart): nothing new is sent on that connection; requests
  already queued for it go out before the DPA, and the EIR answers them and
  those in flight before it closes, so they are answered there. A request
  that finds no open connection for its operator realm (every MME of the
  realm reconnecting) waits for the first one that opens, up to the request
  timeout, instead of failing: it is "not sent" (NO_PEER) only when no
  connection of the realm can come back (stopped, or told
  DO_NOT_WANT_TO_TALK_TO_YOU). Its latency counts the wait.
- 3004 DIAMETER_TOO_BUSY (RFC 6733 7.1.3), when enabled: the request is
  sent once to the MME's connection to another target.
- DOIC (RFC 7683), when enabled: OC-Supported-Features with the loss
  algorithm in every ECR (7.1-7.2); OC-OLR reports are kept per target
  (host reports) or per MME (realm reports) by sequence number and
  validity (5.2.1.3, 7.5), and new requests are picked for abatement with
  the reported percentage (6.1); they are diverted to another target when
  one is not overloaded, otherwise throttled, i.e. not sent (5.2.2).

The ECRs carry no Destination-Host: each MME is configured with its EIRs
and routes on Destination-Realm (PROTOCOL.md 2.1). Since the MME peers with
the EIR directly, a host report is applied to the connection it came on.

Outcome keys (the simulator contract): "WHITELISTED", "BLACKLISTED",
"GREYLISTED" for 2001 with that Equipment-Status (TS 29.272 7.3.51), else
the Result-Code or Experimental-Result-Code in decimal, else "no-result";
"undecodable" when the AVPs do not parse; "timeout" when no answer came.

With ``PoolConfig.tls`` every connection is TLS from the start, then the CER
(RFC 6733 2.1: the EIR's TLS port, 5658 by default); a refused handshake is a
connect failure, retried with the same back-off.

Only the public API of ``eir.diameter`` is used (DESIGN.md 3.5).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from eir.diameter import messages as m
from eir.diameter.codec import Avp, Message
from eir.diameter.constants import (
    Application,
    AuthSessionState,
    AvpCode,
    CmdFlag,
    Command,
    DisconnectCause,
    ResultCode,
    Vendor,
)
from eir.diameter.dictionary import Dictionary, default_dictionary
from eir.diameter.peer import (
    CloseConnection,
    DisconnectRequested,
    Event,
    PeerConnection,
    PeerOpened,
    Role,
    State,
    Timers,
)

__all__ = [
    "NO_PEER",
    "SENT",
    "THROTTLED",
    "AnswerHandler",
    "Counters",
    "MmeIdentity",
    "MmePool",
    "PoolConfig",
    "Target",
    "classify",
    "ecr_message",
    "encode_tail",
    "parse_target",
]

TGPP = int(Vendor.TGPP)
S13 = int(Application.S13)
ECR = int(Command.ME_IDENTITY_CHECK)
STATUS_NAMES = ("WHITELISTED", "BLACKLISTED", "GREYLISTED")  # by Equipment-Status value
MASK32 = 0xFFFFFFFF

# submit() results
SENT, THROTTLED, NO_PEER = 0, 1, 2

# per pending request: flags
_RETRANSMITTED = 1
_RETRIED_3004 = 2

_HDR_IDS = struct.Struct("!II4xII")  # version|length, flags|code, (app), hbh, e2e
_AVP = struct.Struct("!II")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_IDS = struct.Struct("!II")
_ECA_MASK = 0x80FFFFFF  # R bit and command code: "an answer to an ECR" when == 324
_E_BIT = 0x20000000  # the E flag in the flags|code word
_REQ_FLAGS = int(CmdFlag.REQUEST | CmdFlag.PROXIABLE)
_T_FLAG = int(CmdFlag.RETRANSMIT)
_SID_SUFFIX = 8  # hex digits of the Session-Id that change per request
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")
_CACHE_MAX = 4096
OLR_DEFAULT_ALGO = 1  # RFC 7683 7.2
OC_VALIDITY_DEFAULT = 30  # RFC 7683 7.5
OC_VALIDITY_MAX = 86_400
HOST_REPORT, REALM_REPORT = 0, 1  # RFC 7683 7.6

# (token, outcome key, time sent in us, time answered in us)
AnswerHandler = Callable[[int, str, int, int], None]


def now_us() -> int:
    return time.monotonic_ns() // 1000


# -- configuration -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_target(value: str) -> Target:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) to a Target; ValueError otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r}: expected HOST:PORT")
    return Target(host.strip("[]"), int(port))


@dataclass(frozen=True, slots=True)
class MmeIdentity:
    """One simulated MME: its DiameterIdentity and realm (the operator, to the EIR)."""

    origin_host: str
    origin_realm: str


@dataclass(frozen=True)
class PoolConfig:
    """Everything an ``MmePool`` needs; see ``for_realms`` for the usual shape."""

    targets: Sequence[Target]
    mmes: Sequence[MmeIdentity]
    destination_realm: str
    timeout: float = 5.0  # per request, seconds
    retry_3004: bool = False
    doic: bool = False
    # TS 29.272 7.2.2 (PROTOCOL.md 2.1): VSAI "shall not be sent" in S13 commands; it
    # stays in the ABNF for old agents, so it can be switched on to test an EIR with it
    vsai_in_requests: bool = False
    tw: float = 30.0  # RFC 3539 Tw (>= 6 s)
    connect_timeout: float = 5.0
    reconnect_min: float = 0.2
    reconnect_max: float = 10.0
    host_ip: str = "127.0.0.1"
    product_name: str = "eir-sim"
    session_stamp: int | None = None  # the high part of every Session-Id; default: time
    seed: int | None = None  # ids, DOIC draws and jitter; default: from the OS
    # Diameter over TLS (RFC 6733 2.1): TLS first on every connection, then the CER;
    # the targets are then the EIR's TLS port(s). tls_server_name: the name the EIR's
    # certificate must carry (default: the target's host)
    tls: ssl.SSLContext | None = None
    tls_server_name: str | None = None

    def __post_init__(self) -> None:
        if not self.targets:
            raise ValueError("no target")
        if not self.mmes:
            raise ValueError("no MME identity")
        hosts = [i.origin_host.lower() for i in self.mmes]
        if len(set(hosts)) != len(hosts):
            raise ValueError("MME Origin-Hosts must be distinct")
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")

    @classmethod
    def for_realms(cls, targets: Sequence[Target], realms: Iterable[str], *,
                   per_realm: int = 2, destination_realm: str, **kw: Any) -> PoolConfig:
        """``per_realm`` MMEs per operator realm, named ``mmeN.<realm>`` (TS 23.003 19.4.2.4)."""
        mmes = [MmeIdentity(f"mme{i + 1}.{realm}", realm)
                for realm in dict.fromkeys(realms) for i in range(per_realm)]
        return cls(targets=list(targets), mmes=mmes, destination_realm=destination_realm, **kw)


@dataclass
class Counters:
    """Protocol events of a run (the report's ``protocol`` section)."""

    connects: int = 0  # connections opened (CEA 2001)
    reconnects: int = 0  # of which after a loss
    connect_failures: int = 0  # TCP connect or CER/CEA failed
    connection_losses: int = 0  # open connections that went away without our DPR
    dpr_received: int = 0
    watchdog_failovers: int = 0  # RFC 3539 SUSPECT: no DWA in time
    retransmissions: int = 0  # requests sent again with the T flag
    lost_in_flight: int = 0  # pending on a second lost connection: counted as timeouts
    retries_3004: int = 0
    e_bit_answers: int = 0
    doic_reports: int = 0  # OC-OLR reports applied
    doic_throttled: int = 0
    doic_diverted: int = 0
    not_sent_no_peer: int = 0  # no open connection for the handset's operator, none to come
    waited_for_connection: int = 0  # no open connection yet: sent once one opened (or timed out)
    unknown_hbh: int = 0  # answers to no pending request (late, after a timeout)
    wrong_e2e: int = 0  # answers whose End-to-End id is not the request's
    decode_errors: int = 0  # ECAs whose AVPs did not parse
    framing_errors: int = 0  # streams that lost their framing (connection aborted)
    unexpected_messages: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


# -- encoding ---------------------------------------------------------------------------


def _avp(code: int, data: bytes, vendor: int = 0, flags: int = 0x40) -> bytes:
    n = len(data)
    if vendor:
        return struct.pack("!III", code, ((flags | 0x80) << 24) | (n + 12), vendor) + data \
            + _PAD[n & 3]
    return _AVP.pack(code, (flags << 24) | (n + 8)) + data + _PAD[n & 3]


def encode_tail(imei: str, sv: str | None, imsi: str | None) -> bytes:
    """Terminal-Information {IMEI, Software-Version} and User-Name, encoded (TS 29.272 7.3.3)."""
    ti = _avp(AvpCode.IMEI, imei.encode("utf-8"), TGPP, 0xC0)
    if sv:
        ti += _avp(AvpCode.SOFTWARE_VERSION, sv.encode("utf-8"), TGPP, 0xC0)
    out = _avp(AvpCode.TERMINAL_INFORMATION, ti, TGPP, 0xC0)
    if imsi:
        out += _avp(AvpCode.USER_NAME, imsi.encode("utf-8"))
    return out


def _oc_supported_features() -> Avp:
    # RFC 7683 7.1-7.2: IETF AVPs, no V bit, sent with M=0 (PROTOCOL.md 6)
    return Avp.grouped(AvpCode.OC_SUPPORTED_FEATURES,
                       [Avp.u64(AvpCode.OC_FEATURE_VECTOR, OLR_DEFAULT_ALGO, mandatory=False)],
                       mandatory=False)


def ecr_message(ident: MmeIdentity, destination_realm: str, session_id: str, imei: str,
                sv: str | None, imsi: str | None, hbh: int, e2e: int, *, vsai: bool = False,
                doic: bool = False, retransmit: bool = False) -> Message:
    """An ECR built with ``eir.diameter`` in the order of TS 29.272 7.2.19 (the reference)."""
    avps = [Avp.utf8(AvpCode.SESSION_ID, session_id)]
    if vsai:
        avps.append(Avp.grouped(AvpCode.VENDOR_SPECIFIC_APPLICATION_ID,
                                [Avp.u32(AvpCode.VENDOR_ID, TGPP),
                                 Avp.u32(AvpCode.AUTH_APPLICATION_ID, S13)]))
    avps += [Avp.u32(AvpCode.AUTH_SESSION_STATE, AuthSessionState.NO_STATE_MAINTAINED),
             Avp.octets(AvpCode.ORIGIN_HOST, ident.origin_host.encode("ascii")),
             Avp.octets(AvpCode.ORIGIN_REALM, ident.origin_realm.encode("ascii")),
             Avp.octets(AvpCode.DESTINATION_REALM, destination_realm.encode("ascii"))]
    ti = [Avp.utf8(AvpCode.IMEI, imei, TGPP)]
    if sv:
        ti.append(Avp.utf8(AvpCode.SOFTWARE_VERSION, sv, TGPP))
    avps.append(Avp.grouped(AvpCode.TERMINAL_INFORMATION, ti, TGPP))
    if imsi:
        avps.append(Avp.utf8(AvpCode.USER_NAME, imsi))
    if doic:
        avps.append(_oc_supported_features())  # in *[AVP], after the named AVPs
    msg = m.request(Command.ME_IDENTITY_CHECK, S13, hbh, e2e, avps, proxiable=True)
    if retransmit:
        msg.flags |= CmdFlag.RETRANSMIT
    return msg


class _Template:
    """One MME's ECR pieces: everything but the ids, the Session-Id suffix and the tail."""

    def __init__(self, ident: MmeIdentity, cfg: PoolConfig, stamp: int) -> None:
        self.sid_fixed = f"{ident.origin_host};{stamp};"
        sample = ("35209900176148", "01", "401011234567890")
        tail = encode_tail(*sample)
        post = _oc_supported_features().encode() if cfg.doic else b""
        full = ecr_message(ident, cfg.destination_realm, self.sid_fixed + "0" * _SID_SUFFIX,
                           *sample, 0, 0, vsai=cfg.vsai_in_requests, doic=cfg.doic).encode()
        fixed = len(full) - len(tail) - len(post)
        if full[fixed:] != tail + post:
            raise AssertionError("ECR template: the tail is not where expected")
        cut = 28 + len(self.sid_fixed.encode("ascii"))
        self.sid_head = full[20:cut]
        self.mid = full[cut + _SID_SUFFIX:fixed]
        self.post = post
        self.fixed_len = fixed + len(post)  # every byte but the tail's
        self.heads: dict[int, bytes] = {}  # total length -> first 12 header bytes
        self.heads_t: dict[int, bytes] = {}  # the same with the T flag
        # self-check: a glued request equals the one eir.diameter encodes
        hbh, e2e = 0x01020304, 0x0A0B0C0D
        imei, sv, imsi = "490154203237518", "07", "401029999999999"
        for retransmit in (False, True):
            glued = self.build(encode_tail(imei, sv, imsi), hbh, e2e, retransmit)
            want = ecr_message(ident, cfg.destination_realm, self.sid_fixed + f"{e2e:08x}",
                               imei, sv, imsi, hbh, e2e, vsai=cfg.vsai_in_requests,
                               doic=cfg.doic, retransmit=retransmit).encode()
            if glued != want:
                raise AssertionError("ECR template self-check failed")

    def head(self, n: int, retransmit: bool) -> bytes:
        table = self.heads_t if retransmit else self.heads
        h = table.get(n)
        if h is None:
            flags = _REQ_FLAGS | (_T_FLAG if retransmit else 0)
            h = table[n] = struct.pack("!III", 0x01000000 | n, (flags << 24) | ECR, S13)
        return h

    def build(self, tail: bytes, hbh: int, e2e: int, retransmit: bool = False) -> bytes:
        n = self.fixed_len + len(tail)
        return b"".join((self.head(n, retransmit), _IDS.pack(hbh, e2e), self.sid_head,
                         b"%08x" % e2e, self.mid, tail, self.post))


# -- answers ----------------------------------------------------------------------------


# (seq, report type, reduction %, validity s); None fields were absent
Olr = tuple[int, int, int | None, int | None]


def _avps(body: bytes) -> tuple[list[tuple[int, int, bytes]], bool]:
    """(code, vendor, data) of each AVP, and whether the bytes parsed to the end."""
    out: list[tuple[int, int, bytes]] = []
    pos, n = 0, len(body)
    while pos < n:
        if n - pos < 8:
            return out, False
        code, fl = _AVP.unpack_from(body, pos)
        length = fl & 0xFFFFFF
        h = 12 if fl & 0x80000000 else 8
        if length < h or pos + length > n:
            return out, False
        vendor = _U32.unpack_from(body, pos + 8)[0] if h == 12 else 0
        out.append((code, vendor, body[pos + h:pos + length]))
        pos += length + (-length & 3)
    return out, True


def _uint(data: bytes) -> int | None:
    return int.from_bytes(data, "big") if len(data) in (4, 8) else None


def classify(body: bytes) -> tuple[str, Olr | None, bool]:
    """(outcome key, OC-OLR, parsed) from the AVPs of an ECA after its Session-Id."""
    avps, ok = _avps(body)
    rc = erc = es = None
    olr: Olr | None = None
    for code, vendor, data in avps:
        if vendor == 0 and code == AvpCode.RESULT_CODE:
            rc = _uint(data)
        elif vendor == 0 and code == AvpCode.EXPERIMENTAL_RESULT:
            inner, _ = _avps(data)
            for c, v, d in inner:
                if c == AvpCode.EXPERIMENTAL_RESULT_CODE and v == 0:
                    erc = _uint(d)
        elif vendor == TGPP and code == AvpCode.EQUIPMENT_STATUS:
            es = _uint(data)
        elif vendor == 0 and code == AvpCode.OC_OLR:
            inner, _ = _avps(data)
            f = {c: _uint(d) for c, v, d in inner if v == 0}
            seq, rtype = f.get(AvpCode.OC_SEQUENCE_NUMBER), f.get(AvpCode.OC_REPORT_TYPE)
            if seq is not None and rtype is not None:
                olr = (seq, rtype, f.get(AvpCode.OC_REDUCTION_PERCENTAGE),
                       f.get(AvpCode.OC_VALIDITY_DURATION))
    if not ok:
        return "undecodable", olr, False
    if rc == ResultCode.SUCCESS and es is not None and 0 <= es < 3:
        key = STATUS_NAMES[es]
    elif erc is not None:
        key = str(erc)
    elif rc is not None:
        key = str(rc)
    else:
        key = "no-result"
    return key, olr, True


class _Overload:
    """A reacting node's overload control state for one report type (RFC 7683 5.2.1.1)."""

    __slots__ = ("pct", "seq", "until")

    def __init__(self) -> None:
        self.seq = -1
        self.pct = 0
        self.until = 0.0  # loop time; past it the entry has expired

    def update(self, olr: Olr, now: float) -> bool:
        """Apply a report; False when it is a repeat or out of range (5.2.1.3, 7.5, 7.7)."""
        seq, _, pct, validity = olr
        active = now < self.until
        if active and seq <= self.seq:
            return False  # a retransmission of what we have, or older
        if pct is not None and pct > 100:
            return False  # "values greater than 100 are ignored"
        if validity is None or validity > OC_VALIDITY_MAX:
            validity = OC_VALIDITY_DEFAULT
        self.seq = seq
        self.pct = pct or 0
        self.until = now + validity  # validity 0: expired at once, the overload is over
        return True

    def active(self, now: float) -> int:
        """The reduction percentage in force (0 when none)."""
        return self.pct if self.pct and now < self.until else 0


# -- one connection ---------------------------------------------------------------------


# a pending request: (sent us, token, e2e, tail, flags)
_Pending = tuple[int, int, int, bytes, int]


class _Link(asyncio.Protocol):
    """One MME's connection to one target, reused across reconnections."""

    def __init__(self, pool: MmePool, mme: _Mme, target: Target, rank: int) -> None:
        self.pool = pool
        self.mme = mme
        self.target = target
        self.rank = rank  # 0 = this MME's primary target
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer: PeerConnection | None = None
        self.pending: dict[int, _Pending] = {}
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.usable = False
        self.rest = b""
        self.hbh = pool.rand.getrandbits(32)
        self.host_overload = _Overload()
        self.opened: asyncio.Future[None] | None = None
        self.closed: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at: float | None = None
        self.close_reason = ""
        self.dpr_cause: int | None = None
        self.ever_opened = False
        self.is_open = False
        self.stopping = False
        self.task: asyncio.Task[None] | None = None

    # -- asyncio callbacks --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        now = self.loop.time()
        pool = self.pool
        self.peer = PeerConnection(Role.INITIATOR, self.mme.ident, m.S13_APPLICATIONS,
                                   pool.dictionary, now, timers=pool.timers,
                                   rand=pool.rand.random, wall_time=time.time())
        self.peer.start(now)
        self.rest = b""
        self.close_reason = ""
        self.dpr_cause = None
        self._flush_peer()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.peer is not None:
            self.peer.connection_lost()
        was_open, self.is_open = self.is_open, False
        self.usable = False
        self.transport = None
        self.out.clear()
        pending, self.pending = self.pending, {}
        why = self.close_reason or (f"connection lost: {exc}" if exc else "connection closed")
        if self.opened is not None and not self.opened.done():
            self.opened.set_exception(ConnectionError(why))
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(None)
        if was_open and not self.stopping and self.dpr_cause is None:
            self.pool.counters.connection_losses += 1
        self.mme.update()
        if pending:
            self.pool.failover(self.mme, pending.values(), self)

    def data_received(self, data: bytes) -> None:  # the hot path
        now = now_us()
        if self.rest:
            data = self.rest + data
            self.rest = b""
        pool = self.pool
        pending_pop = self.pending.pop
        cache_get = pool.cache.get
        handler = pool.handler
        unpack_hdr = _HDR_IDS.unpack_from
        unpack_avp = _AVP.unpack_from
        n = len(data)
        pos = 0
        got = 0
        while n - pos >= 20:
            vl, fc, hbh, e2e = unpack_hdr(data, pos)
            length = vl & 0xFFFFFF
            end = pos + length
            if length < 20 or vl >> 24 != 1:
                self._framing_lost(f"bad header (version {vl >> 24}, length {length})")
                return
            if end > n:
                break
            if fc & _ECA_MASK != ECR or length < 28:
                self._general(data[pos:end])
                if self.transport is None:
                    return
                pos = end
                continue
            rec = pending_pop(hbh, None)
            if rec is None:
                pool.counters.unknown_hbh += 1
                pos = end
                continue
            if e2e != rec[2]:
                pool.counters.wrong_e2e += 1  # RFC 6733 6.2: an answer copies the request's
            code, fl = unpack_avp(data, pos + 20)
            off = pos + 20 + ((fl & 0xFFFFFF) + 3 & -4) if code == AvpCode.SESSION_ID \
                else pos + 20
            body = data[off:end]
            c = cache_get(body)
            if c is None:
                c = pool.classify(body)
            key, olr = c
            got += 1
            if olr is not None or fc & _E_BIT or key == "undecodable":
                key = self._special(key, olr, fc, rec)
                if not key:
                    pos = end
                    continue  # sent again elsewhere
            handler(rec[1], key, rec[0], now)
            pos = end
        if pos < n:
            self.rest = data[pos:]
        if got:
            peer = self.peer
            if peer is not None and peer.state is State.OPEN:
                peer.watchdog.on_traffic(self.loop.time())

    # -- sending --

    def schedule_flush(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.out:
            t = self.transport
            if t is not None and not t.is_closing():
                t.write(b"".join(self.out))
            self.out.clear()

    # -- answers off the hot path --

    def _special(self, key: str, olr: Olr | None, fc: int, rec: _Pending) -> str:
        """DOIC reports, E-bit answers, 3004 retries; returns "" when the request went on."""
        pool = self.pool
        if olr is not None and pool.cfg.doic:
            pool.apply_olr(self, olr)
        if key == "undecodable":
            pool.counters.decode_errors += 1
        if fc & _E_BIT:
            pool.counters.e_bit_answers += 1
            if key == "3004" and pool.cfg.retry_3004 and not rec[4] & _RETRIED_3004:
                alt = self.mme.other_link(self)
                if alt is not None:
                    pool.counters.retries_3004 += 1
                    # RFC 6733 7.1.3: an alternate peer; the same request (ids, Session-Id)
                    alt.resend(rec, rec[4] | _RETRIED_3004, retransmit=False)
                    return ""
        return key

    def _general(self, frame: bytes) -> None:
        """Everything but ECAs goes through the peer state machine."""
        peer = self.peer
        if peer is None:
            return
        if self.out:
            # requests queued before this frame go first: if it is a DPR, they are written
            # before our DPA, and the EIR answers them before it closes (RFC 6733 5.4)
            self.flush()
        events = peer.feed(frame, self.loop.time())
        if not frame[4] & 0x80 and int.from_bytes(frame[5:8], "big") == ECR:
            self.pool.counters.unexpected_messages += 1  # a short ECA
        self._flush_peer()
        for ev in events:
            self._event(ev)
        self._check_service()
        self._arm()

    def _event(self, ev: Event) -> None:
        if isinstance(ev, PeerOpened):
            self.usable = self.is_open = True
            if self.ever_opened:
                self.pool.counters.reconnects += 1
            self.ever_opened = True
            self.pool.counters.connects += 1
            if self.opened is not None and not self.opened.done():
                self.opened.set_result(None)
            self.mme.update()
            self.pool.release_held(self.mme)
        elif isinstance(ev, DisconnectRequested):
            # RFC 6733 5.4: the peer is leaving; nothing new goes to it
            self.pool.counters.dpr_received += 1
            self.dpr_cause = ev.cause
            self.usable = False
            self.mme.update()
        elif isinstance(ev, CloseConnection):
            self.close_reason = ev.reason
            t = self.transport
            if t is not None and not t.is_closing():
                if ev.abort:
                    t.abort()
                else:
                    t.close()

    def _check_service(self) -> None:
        """RFC 6733 5.5.4: SUSPECT is a failover point, OKAY again a failback point."""
        peer = self.peer
        if peer is None or peer.state is not State.OPEN or self.dpr_cause is not None:
            return
        ok = peer.watchdog.in_service
        if self.usable and not ok:
            self.usable = False
            self.pool.counters.watchdog_failovers += 1
            self.mme.update()
            pending, self.pending = self.pending, {}
            if pending:
                self.pool.failover(self.mme, pending.values(), self)
        elif ok and not self.usable:
            self.usable = True
            self.mme.update()
            # failback (RFC 6733 5.5.4): what waited for a usable connection goes now
            self.pool.release_held(self.mme)

    def _framing_lost(self, why: str) -> None:
        # RFC 6733 2.1 / 3: a stream whose framing is lost cannot be trusted again
        self.pool.counters.framing_errors += 1
        self.close_reason = f"framing lost: {why}"
        if self.transport is not None:
            self.transport.abort()
            self.transport = None

    def _flush_peer(self) -> None:
        peer = self.peer
        if peer is None:
            return
        out = peer.data_to_send()
        t = self.transport
        if out and t is not None and not t.is_closing():
            t.write(out)

    def _arm(self) -> None:
        peer = self.peer
        if peer is None:
            return
        at = peer.deadline
        if at is None or not math.isfinite(at):
            return
        if self.timer is not None:
            if self.timer_at is not None and self.timer_at <= at:
                return  # the earlier timer re-arms itself when it fires
            self.timer.cancel()
        self.timer_at = at
        self.timer = self.loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self.timer = None
        self.timer_at = None
        peer = self.peer
        if peer is None or self.transport is None:
            return
        now = self.loop.time()
        at = peer.deadline
        if at is not None and now >= at:
            events = peer.on_timer(now)
            self._flush_peer()
            for ev in events:
                self._event(ev)
            self._check_service()
        self._arm()

    # -- requests --

    def resend(self, rec: _Pending, flags: int, retransmit: bool) -> None:
        """Send a pending request again on this link: same e2e and Session-Id, new hbh."""
        self.hbh = hbh = (self.hbh + 1) & MASK32
        self.out.append(self.mme.tpl.build(rec[3], hbh, rec[2], retransmit))
        self.pending[hbh] = (rec[0], rec[1], rec[2], rec[3], flags)
        self.schedule_flush()

    # -- connection management --

    @property
    def reconnecting(self) -> bool:
        """Open, or trying to be: its connect loop runs (not stopped, not told to go away)."""
        return not self.stopping and self.task is not None and not self.task.done()

    async def run(self) -> None:
        """Connect, keep the connection, reconnect with back-off until the pool stops."""
        cfg = self.pool.cfg
        backoff = cfg.reconnect_min
        while not self.stopping:
            self.opened = self.loop.create_future()
            self.opened.add_done_callback(_retrieve)
            self.closed = self.loop.create_future()
            try:
                await asyncio.wait_for(self.loop.create_connection(
                    lambda: self, self.target.host, self.target.port, ssl=cfg.tls,
                    server_hostname=(cfg.tls_server_name or self.target.host)
                    if cfg.tls is not None else None), cfg.connect_timeout)
                await asyncio.wait_for(asyncio.shield(self.opened), cfg.connect_timeout)
            except (OSError, TimeoutError, ConnectionError) as exc:
                if self.stopping:
                    return
                self.pool.counters.connect_failures += 1
                self.close_reason = self.close_reason or repr(exc)
                if self.transport is not None:
                    self.transport.abort()
                    await asyncio.shield(self.closed)
            else:
                backoff = cfg.reconnect_min
                await asyncio.shield(self.closed)
            if self.stopping:
                return
            cause = self.dpr_cause
            if cause == DisconnectCause.DO_NOT_WANT_TO_TALK_TO_YOU:
                return  # RFC 6733 5.4.3: do not reconnect
            wait = cfg.reconnect_max if cause == DisconnectCause.BUSY else backoff
            backoff = min(backoff * 2, cfg.reconnect_max)
            await asyncio.sleep(wait * (0.75 + 0.5 * self.pool.rand.random()))

    async def stop(self, timeout: float) -> None:
        """DPR (RFC 6733 5.4), wait for the DPA and the close, bounded."""
        self.stopping = True
        t, peer = self.transport, self.peer
        if t is None or peer is None or t.is_closing():
            return
        self.usable = False
        if peer.stop(self.loop.time(), DisconnectCause.REBOOTING):
            t.close()
        self._flush_peer()
        self._arm()
        if self.closed is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self.closed), timeout)
            except TimeoutError:
                t.abort()


def _retrieve(fut: asyncio.Future[None]) -> None:
    # a CEA that never came is reported through the connect loop, not as an unretrieved error
    if not fut.cancelled():
        fut.exception()


class _Mme:
    """One MME identity: its template, its End-to-End ids, its links in preference order."""

    def __init__(self, pool: MmePool, ident: MmeIdentity, index: int, stamp: int,
                 group: int) -> None:
        self.pool = pool
        self.group = group
        self.ident = m.Identity(ident.origin_host, ident.origin_realm, (pool.cfg.host_ip,),
                                product_name=pool.cfg.product_name)
        self.name = ident
        self.tpl = _Template(ident, pool.cfg, stamp)
        # RFC 6733 3: high 12 bits from the time of day, low 20 random, then +1 each
        self.e2e = ((int(time.time()) & 0xFFF) << 20) | pool.rand.getrandbits(20)
        targets = list(pool.cfg.targets)
        first = index % len(targets)
        order = targets[first:] + targets[:first]
        self.links = [_Link(pool, self, t, rank) for rank, t in enumerate(order)]
        self.active: _Link | None = None
        self.held: list[_Pending] = []  # waiting for any link of this MME to open
        self.realm_overload = _Overload()

    def update(self) -> None:
        self.active = next((lk for lk in self.links if lk.usable), None)
        self.pool.regroup(self.group)

    def other_link(self, not_this: _Link) -> _Link | None:
        return next((lk for lk in self.links if lk.usable and lk is not not_this), None)


class MmePool:
    """The simulated MMEs. ``submit`` is the hot path; ``handler`` gets every outcome."""

    def __init__(self, cfg: PoolConfig, handler: AnswerHandler | None = None,
                 dictionary: Dictionary | None = None) -> None:
        self.cfg = cfg
        self.handler: AnswerHandler = handler or (lambda *_: None)
        self.dictionary = dictionary or default_dictionary()
        self.timers = Timers(cea=cfg.connect_timeout, tw=cfg.tw)
        self.rand = random.Random(cfg.seed)
        self.counters = Counters()
        self.cache: dict[bytes, tuple[str, Olr | None]] = {}
        self.stamp = cfg.session_stamp if cfg.session_stamp is not None else int(time.time())
        self.mmes: list[_Mme] = []
        self.realms: list[str] = []
        self._groups: list[list[_Mme]] = []
        self._ready: list[list[_Mme]] = []  # per group: the MMEs with an open connection
        # per group: (time submitted in us, token, tail) of requests that found no open
        # connection, in submission order; sent when one opens, timed out by the sweep
        self._waiting: list[list[tuple[int, int, bytes]]] = []
        self.doic = cfg.doic
        self._rr: list[int] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self.timeout_us = int(cfg.timeout * 1e6)
        self.started = False
        self.stopping = False

    # -- set-up --

    def realm_names(self) -> list[str]:
        """The operator realms of the configured MMEs, in order of first appearance."""
        if not self.realms:
            self._index_realms()
        return list(self.realms)

    def realm_index(self, realm: str) -> int:
        """The group of MMEs whose Origin-Realm is ``realm``; KeyError when there is none."""
        if not self.realms:
            self._index_realms()
        try:
            return self.realms.index(realm)
        except ValueError:
            raise KeyError(f"no MME with Origin-Realm {realm!r} "
                           f"(configured: {', '.join(self.realms)})") from None

    def _index_realms(self) -> None:
        for ident in self.cfg.mmes:
            if ident.origin_realm not in self.realms:
                self.realms.append(ident.origin_realm)

    async def start(self, wait: float | None = None) -> int:
        """Open every connection; wait until each MME has one open (bounded). Returns how many.

        Raises ConnectionError when no connection at all could be opened.
        """
        if self.started:
            raise RuntimeError("pool already started")
        self.started = True
        if not self.realms:
            self._index_realms()
        self._groups = [[] for _ in self.realms]
        self._ready = [[] for _ in self.realms]
        self._waiting = [[] for _ in self.realms]
        self._rr = [0] * len(self.realms)
        for i, ident in enumerate(self.cfg.mmes):
            mme = _Mme(self, ident, i, self.stamp, self.realms.index(ident.origin_realm))
            self.mmes.append(mme)
            self._groups[mme.group].append(mme)
        links = self.links()
        for lk in links:
            lk.task = asyncio.get_running_loop().create_task(lk.run())
        wait = self.cfg.connect_timeout if wait is None else wait
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while loop.time() < deadline:
            opened = [lk.opened for lk in links if lk.opened is not None]
            if all(mme.active is not None for mme in self.mmes) and \
                    all(f.done() for f in opened):
                break
            await asyncio.sleep(0.01)
        self._arm_sweep()
        n = sum(1 for lk in links if lk.usable)
        if n == 0:
            reasons = sorted({lk.close_reason for lk in links if lk.close_reason})
            await self.stop()
            raise ConnectionError("no connection to " + ", ".join(map(str, self.cfg.targets))
                                  + (f": {'; '.join(reasons)}" if reasons else ""))
        return n

    def regroup(self, group: int) -> None:
        self._ready[group] = [x for x in self._groups[group] if x.active is not None]

    def links(self) -> list[_Link]:
        return [lk for mme in self.mmes for lk in mme.links]

    # -- the hot path --

    def submit(self, token: int, group: int, tail: bytes, now: int) -> int:
        """Send one ECR for ``token`` (a handset index) through an MME of realm ``group``.

        ``tail`` is ``encode_tail`` of the handset; ``now`` is ``now_us()``.
        Returns SENT (sent, or waiting for a connection of the realm to open),
        THROTTLED (DOIC) or NO_PEER (no open connection and none to come).
        """
        ready = self._ready[group]
        i = self._rr[group] + 1
        if i >= len(ready):
            if not ready:
                return self._wait_for_connection(token, group, tail, now)
            i = 0
        self._rr[group] = i
        mme = ready[i]
        link = mme.active
        assert link is not None
        if self.doic:
            link = self._abate(mme, link)
            if link is None:
                return THROTTLED
        mme.e2e = e2e = (mme.e2e + 1) & MASK32
        link.hbh = hbh = (link.hbh + 1) & MASK32
        tpl = mme.tpl
        n = tpl.fixed_len + len(tail)
        head = tpl.heads.get(n) or tpl.head(n, False)
        link.out += (head, _IDS.pack(hbh, e2e), tpl.sid_head, b"%08x" % e2e, tpl.mid, tail,
                     tpl.post)
        link.pending[hbh] = (now, token, e2e, tail, 0)
        if not link.flush_scheduled:
            link.flush_scheduled = True
            link.loop.call_soon(link.flush)
        return SENT

    def _wait_for_connection(self, token: int, group: int, tail: bytes, now: int) -> int:
        """No open connection for ``group``: wait for one if one can come, else NO_PEER."""
        if self.stopping or not any(lk.reconnecting for mme in self._groups[group]
                                    for lk in mme.links):
            self.counters.not_sent_no_peer += 1
            return NO_PEER
        self._waiting[group].append((now, token, tail))
        self.counters.waited_for_connection += 1
        return SENT

    def _release_waiting(self, group: int) -> None:
        """A connection of ``group`` opened: send what waited for one, round robin."""
        waiting = self._waiting[group]
        self._waiting[group] = []
        ready = self._ready[group]
        for k, (t_sent, token, tail) in enumerate(waiting):
            if not ready:
                self._waiting[group] = waiting[k:]
                return
            i = self._rr[group] + 1
            if i >= len(ready):
                i = 0
            self._rr[group] = i
            mme = ready[i]
            link = mme.active
            assert link is not None
            mme.e2e = e2e = (mme.e2e + 1) & MASK32
            link.hbh = hbh = (link.hbh + 1) & MASK32
            link.out.append(mme.tpl.build(tail, hbh, e2e))
            link.pending[hbh] = (t_sent, token, e2e, tail, 0)
            link.schedule_flush()

    def flush(self) -> None:
        """Write what ``submit`` queued now, instead of at the next loop iteration."""
        for mme in self.mmes:
            for lk in mme.links:
                if lk.out:
                    lk.flush()

    # -- DOIC (RFC 7683) --

    def _abate(self, mme: _Mme, link: _Link) -> _Link | None:
        now = link.loop.time()
        pct = max(link.host_overload.active(now), mme.realm_overload.active(now))
        if not pct or self.rand.random() * 100 >= pct:
            return link
        # 5.2.2: divert when another path avoids the overloaded node, else throttle
        if not mme.realm_overload.active(now):
            for alt in mme.links:
                if alt is not link and alt.usable and not alt.host_overload.active(now):
                    self.counters.doic_diverted += 1
                    return alt
        self.counters.doic_throttled += 1
        return None

    def apply_olr(self, link: _Link, olr: Olr) -> None:
        state = link.mme.realm_overload if olr[1] == REALM_REPORT else link.host_overload
        if olr[1] in (HOST_REPORT, REALM_REPORT) and state.update(olr, link.loop.time()):
            self.counters.doic_reports += 1

    def overload(self) -> dict[str, int]:
        """The reduction percentage in force per target (the highest over the MMEs)."""
        out: dict[str, int] = {}
        for mme in self.mmes:
            for lk in mme.links:
                now = lk.loop.time()
                pct = max(lk.host_overload.active(now), mme.realm_overload.active(now))
                out[str(lk.target)] = max(out.get(str(lk.target), 0), pct)
        return out

    # -- answers, timeouts, failover --

    def classify(self, body: bytes) -> tuple[str, Olr | None]:
        key, olr, _ = classify(body)
        if len(self.cache) < _CACHE_MAX:
            self.cache[body] = (key, olr)
        return key, olr

    def failover(self, mme: _Mme, pending: Iterable[_Pending], dead: _Link) -> None:
        """Requests of a lost (or suspect) connection: sent again once, with the T flag."""
        now = now_us()
        handler = self.handler
        limit = now - self.timeout_us
        for rec in list(pending):
            if self.stopping or rec[4] & _RETRANSMITTED or rec[0] <= limit:
                if rec[4] & _RETRANSMITTED:
                    self.counters.lost_in_flight += 1
                handler(rec[1], "timeout", rec[0], now)
                continue
            alt = mme.other_link(dead)
            if alt is None:
                mme.held.append(rec)
                continue
            self.counters.retransmissions += 1
            alt.resend(rec, rec[4] | _RETRANSMITTED, retransmit=True)

    def release_held(self, mme: _Mme) -> None:
        """``mme`` has an open connection (again): what waited for one goes now."""
        held, mme.held = mme.held, []
        link = mme.active
        for rec in held:
            if link is None:
                mme.held.append(rec)
                continue
            self.counters.retransmissions += 1
            link.resend(rec, rec[4] | _RETRANSMITTED, retransmit=True)
        if self._waiting and self._waiting[mme.group]:
            self._release_waiting(mme.group)

    def _arm_sweep(self) -> None:
        period = min(0.05, max(0.005, self.cfg.timeout / 5))
        self._sweeper = asyncio.get_running_loop().call_later(period, self._sweep)

    def _sweep(self) -> None:
        """Time out what has waited longer than the request timeout (no timer per request)."""
        now = now_us()
        limit = now - self.timeout_us
        handler = self.handler
        for mme in self.mmes:
            for lk in mme.links:
                p = lk.pending
                if not p:
                    continue
                expired = []
                # insertion order is sending order, bar retransmissions (later, older stamp)
                for hbh, rec in p.items():
                    if rec[0] > limit:
                        break
                    expired.append(hbh)
                for hbh in expired:
                    rec = p.pop(hbh)
                    handler(rec[1], "timeout", rec[0], now)
            if mme.held:
                keep = []
                for rec in mme.held:
                    if rec[0] <= limit:
                        handler(rec[1], "timeout", rec[0], now)
                    else:
                        keep.append(rec)
                mme.held = keep
        for group, waiting in enumerate(self._waiting):
            k = 0
            while k < len(waiting) and waiting[k][0] <= limit:  # in submission order
                handler(waiting[k][1], "timeout", waiting[k][0], now)
                k += 1
            if k:
                self._waiting[group] = waiting[k:]
        if not self.stopping:
            self._arm_sweep()

    @property
    def in_flight(self) -> int:
        return sum(len(lk.pending) for lk in self.links()) + \
            sum(len(x.held) for x in self.mmes) + sum(len(w) for w in self._waiting)

    @property
    def open_links(self) -> int:
        return sum(1 for lk in self.links() if lk.usable)

    # -- the end --

    async def stop(self, timeout: float = 3.0) -> None:
        """DPR on every open connection, wait for the DPAs (bounded), end the tasks."""
        self.stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        links = self.links()
        for lk in links:
            lk.flush()
        await asyncio.gather(*(lk.stop(timeout) for lk in links))
        for lk in links:
            lk.stopping = True
            if lk.task is not None and not lk.task.done():
                lk.task.cancel()
        for lk in links:
            if lk.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await lk.task
            if lk.transport is not None:
                lk.transport.abort()

    def protocol(self) -> dict[str, int]:
        return self.counters.as_dict()

