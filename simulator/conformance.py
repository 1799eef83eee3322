"""Protocol conformance of an EIR, judged over the wire: the audit's first section.

Owns the audit's Diameter probe (`Probe`: one raw TCP connection that sends
whatever bytes a case needs and reads whole messages back, answering the
EIR's own DWRs) and the fixed set of conformance cases (`CASES`), each
judged against the expected answer in PROTOCOL.md, which cites RFC 6733 and
3GPP TS 29.272. The EIR is a black box: only ``eir.diameter``'s codec and
message builders are used, to build requests and decode answers
(DESIGN.md 3.5).

Cases, with the sections they implement (PROTOCOL.md section; source):

========================  =====================================================  ==========
case                      expected                                               connection
========================  =====================================================  ==========
cea-result                CEA Result-Code 2001 (1.5; RFC 6733 5.3.2)             main
cea-grammar               flags 0x00, ids copied, Origin-Host, Origin-Realm,     main
                          Host-IP-Address, Vendor-Id, Product-Name (1.1, 1.5)
cea-s13                   16777252 advertised: VSAI {10415, 16777252} or         main
                          Auth-Application-Id (1.5; TS 29.272 7.1.7-7.1.8)
cea-supported-vendor      Supported-Vendor-Id 10415 (1.5; TS 29.272 7.1.7)       main
dwr                       DWA 2001, flags 0x00, ids copied, origin AVPs          main
                          (1.5, 1.7; RFC 6733 5.5)
ecr-valid                 ECA: flags 0x40, ids copied, Session-Id first and      main
                          copied, Auth-Session-State 1, origin AVPs, no
                          Destination-*, 2001 + Equipment-Status or
                          Experimental-Result 5422 without it (1.9.1, 2.2, 2.3)
proxy-info-copied         Proxy-Info copied unchanged (1.9.1; RFC 6733 6.2)      main
unknown-avp-not-m         an unknown AVP without M is ignored (1.2)              main
unknown-avp-m             5001 + Failed-AVP naming the AVP (1.2, 1.8)            main
missing-avp               no Terminal-Information: 5005 + Failed-AVP (1.8)       main
session-id-not-first      5005 + Failed-AVP (1.4; RFC 6733 3.2 grammar)          main
avp-occurs-too-many       Auth-Session-State twice: 5009 + Failed-AVP (1.8)      main
invalid-avp-value         Auth-Session-State 7: 5004 + Failed-AVP (1.2, 1.8)     main
invalid-avp-bits          Auth-Session-State without M: 3009 with E (1.9.2)      main
realm-not-served          unserved Destination-Realm: 3003 with E (1.8, 1.9.2)   main
application-unsupported   Application-Id 16777251: 3007 with E (1.9.2)           main
command-unsupported       command 325: 3001 with E (1.9.2)                       main
e-bit-request             E bit on a request: 3008 with E (1.1, 1.9.2)           main
invalid-avp-length        an AVP longer than the message: 5014 + Failed-AVP      own
                          (1.2, 1.9.5)
invalid-message-length    Message Length not a multiple of 4: 5015 (1.1, 1.9.5)  own
unsupported-version       version 0, framing intact: 5011 (1.9.5)                own
framing-lost              Message Length 8: connection reset (TCP RST) without   own
                          an answer (1.9.5; RFC 6733 2.1)
first-message-not-cer     an ECR before the CER: closed without an answer        own
                          (1.6; RFC 6733 5.6.1)
========================  =====================================================  ==========

5xxx answers are not judged on their E bit (PROTOCOL.md 1.8: SHOULD be
sent without E, MAY with it); 3xxx answers must carry it. Every answer must
copy the request's Hop-by-Hop and End-to-End ids (1.9.1). Cases that may
close the connection run on a connection of their own ("own"), opened with
a CER like any other; the others share one. An answer must come within the
audit's timeout. Every connection ends with DPR/DPA (RFC 6733 5.4, cause
REBOOTING) when it is still open; after one that failed, a peer may hold
the next in REOPEN (RFC 3539 3.4.1, PROTOCOL.md 1.7), so the probe answers
its DWRs and lets them settle before sending anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from eir.diameter import messages as m
from eir.diameter.codec import (
    Avp,
    DecodeError,
    Framer,
    FramingError,
    Message,
    decode_avps,
    decode_message,
)
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

__all__ = [
    "CASES",
    "Case",
    "CaseResult",
    "Context",
    "Probe",
    "ProbeError",
    "Reply",
    "describe",
    "open_probe",
    "outcome",
    "run_conformance",
]

TGPP: Final = int(Vendor.TGPP)
S13: Final = int(Application.S13)
ECR: Final = int(Command.ME_IDENTITY_CHECK)
STATUS_NAMES: Final = ("WHITELISTED", "BLACKLISTED", "GREYLISTED")  # TS 29.272 7.3.51
PROBE_IMEI: Final = "49015420323751"  # PROTOCOL.md 4: a documentation example IMEI
UNKNOWN_AVP_CODE: Final = 0xFFFF00  # no IETF or 3GPP AVP has this code
NOT_SERVED_REALM: Final = "realm-not-served.invalid"  # RFC 6761: never a real realm

Reply = Message | str
"""An answer, or why there is none: "timeout", "closed", "reset", "framing lost",
"undecodable answer: ..." """


# End-to-End ids must be unique per Origin-Host for at least 4 minutes (RFC 6733 3,
# PROTOCOL.md 1.1), across every connection of the audit, or a peer takes a request for a
# duplicate: the high 12 bits from the clock, the low 20 from a counter (RFC 6733 3).
_E2E: Final = itertools.count(random.getrandbits(20))


def _next_e2e() -> int:
    return ((int(time.time()) & 0xFFF) << 20) | (next(_E2E) & 0xFFFFF)


class ProbeError(Exception):
    """The target could not be reached, or refused the capabilities exchange."""


# -- the probe: one raw connection ------------------------------------------------------


class Probe:
    """One TCP connection to the EIR: send raw frames, get answers matched by Hop-by-Hop id.

    A background reader frames the stream (RFC 6733 3: the 3-byte Message
    Length), answers the EIR's DWRs (RFC 6733 5.5) and DPRs (5.4) and hands
    every answer to the request waiting for its Hop-by-Hop id; answers to no
    waiting request are dropped (RFC 6733 6.2). When the connection ends,
    every waiting request gets the reason ("closed", "reset", "framing lost").
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 ident: m.Identity) -> None:
        self.reader = reader
        self.writer = writer
        self.ident = ident
        self.framer = Framer(1 << 24)
        self.ended: str | None = None
        self.dwr = asyncio.Event()  # set on every DWR from the peer
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        self._hbh = random.getrandbits(31)
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    def next_ids(self) -> tuple[int, int]:
        """A fresh (Hop-by-Hop, End-to-End) pair (RFC 6733 3)."""
        self._hbh = (self._hbh + 1) & 0xFFFFFFFF
        return self._hbh, _next_e2e()

    async def _read_loop(self) -> None:
        reason = "closed"
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                try:
                    frames = self.framer.feed(data)
                except FramingError:
                    reason = "framing lost"
                    break
                for frame in frames:
                    self._frame(frame)
                if self.framer.lost is not None:
                    reason = "framing lost"
                    break
        except (ConnectionResetError, BrokenPipeError):
            reason = "reset"
        except OSError as exc:
            reason = f"connection error: {exc}"
        self._end(reason)

    def _frame(self, frame: bytes) -> None:
        msg = decode_message(frame)
        if isinstance(msg, DecodeError):
            fut = self._pending.pop(msg.message.hbh, None)
            if fut is not None and not fut.done():
                fut.set_result(f"undecodable answer: {msg.reason}")
            return
        if msg.is_request:
            self._answer_request(msg)
            return
        fut = self._pending.pop(msg.hbh, None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def _answer_request(self, req: Message) -> None:
        if req.code == Command.DEVICE_WATCHDOG:
            self.send(m.dwa(req, self.ident).encode())
            self.dwr.set()
        elif req.code == Command.DISCONNECT_PEER:
            self.send(m.dpa(req, self.ident).encode())

    def _end(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason
        for fut in self._pending.values():
            if not fut.done():
                fut.set_result(reason)
        self._pending.clear()
        self.writer.close()

    def send(self, frame: bytes) -> None:
        if self.ended is None and not self.writer.is_closing():
            self.writer.write(frame)

    def request(self, frame: bytes, hbh: int) -> asyncio.Future[Reply]:
        """Send ``frame`` (a request whose Hop-by-Hop id is ``hbh``); its future gets the reply."""
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        if self.ended is not None:
            fut.set_result(self.ended)
            return fut
        self._pending[hbh] = fut
        self.send(frame)
        return fut

    async def ask(self, frame: bytes, hbh: int, timeout: float) -> Reply:
        """Send and wait for the reply; "timeout" if none came in ``timeout`` seconds."""
        fut = self.request(frame, hbh)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            self._pending.pop(hbh, None)
            return "timeout"

    async def wait_end(self, timeout: float) -> str | None:
        """Wait for the connection to end; its reason, or None if still open."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        return self.ended

    async def close(self, timeout: float = 2.0) -> None:
        """DPR (REBOOTING: we may come back, RFC 6733 5.4.3), the DPA, then close."""
        if self.ended is None:
            hbh, e2e = self.next_ids()
            await self.ask(m.dpr(self.ident, hbh, e2e, DisconnectCause.REBOOTING).encode(), hbh,
                           timeout)
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), timeout)
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task

    def abort(self) -> None:
        transport = self.writer.transport
        transport.abort()
        self._task.cancel()


async def _connect(host: str, port: int, ident: m.Identity, timeout: float) -> Probe:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ProbeError(f"cannot connect to {host}:{port}: {why or 'timed out'}") from None
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return Probe(reader, writer, ident)


async def open_probe(host: str, port: int, ident: m.Identity, timeout: float, *,
                     attempts: int = 4) -> tuple[Probe, Message, Message]:
    """Connect and exchange CER/CEA (RFC 6733 5.3); returns (probe, CER sent, CEA).

    A CEA that is not 2001 is returned as it is (the caller judges it).
    A connection closed before the CEA is retried a few times with a short
    pause: the EIR may not yet have seen the end of our previous connection
    with the same Origin-Host (RFC 6733 5.6.4: it rejects a second one).
    """
    last = ""
    for attempt in range(attempts):
        if attempt:
            await asyncio.sleep(0.2 * 2 ** attempt)
        probe = await _connect(host, port, ident, timeout)
        hbh, e2e = probe.next_ids()
        cer = m.cer(ident, m.S13_APPLICATIONS, hbh, e2e)
        t0 = time.monotonic()
        reply = await probe.ask(cer.encode(), hbh, timeout)
        if isinstance(reply, Message):
            await _settle(probe, time.monotonic() - t0)
            return probe, cer, reply
        last = reply
        probe.abort()
        if reply == "timeout":
            break
    raise ProbeError(f"no CEA from {host}:{port} ({last})")


async def _settle(probe: Probe, rtt: float) -> None:
    """Let a peer that saw our previous connection fail finish its REOPEN.

    RFC 3539 3.4.1 (PROTOCOL.md 1.7): such a peer takes the connection into
    service only after three DWR/DWA exchanges, and may drop answers until
    then (freeDiameter does). It sends its DWRs at once; the probe answers
    them, and waits until three are answered or none comes for a few round
    trips.
    """
    quiet = max(0.05, 3 * rtt)
    seen = 0
    while seen < 3:
        try:
            await asyncio.wait_for(probe.dwr.wait(), quiet)
        except TimeoutError:
            break
        probe.dwr.clear()
        seen += 1
    if seen:
        await asyncio.sleep(quiet)  # our last DWA reaches it


# -- reading answers ----------------------------------------------------------------------


def _u32(avp: Avp | None) -> int | None:
    if avp is None or len(avp.data) != 4:
        return None
    return int.from_bytes(avp.data, "big")


def result_code(msg: Message) -> int | None:
    return _u32(msg.find(AvpCode.RESULT_CODE))


def experimental_code(msg: Message) -> int | None:
    er = msg.find(AvpCode.EXPERIMENTAL_RESULT)
    if er is None:
        return None
    inner = decode_avps(er.data)
    if not isinstance(inner, list):
        return None
    for a in inner:
        if a.code == AvpCode.EXPERIMENTAL_RESULT_CODE and a.vendor == 0:
            return _u32(a)
    return None


def failed_avp_codes(msg: Message) -> list[int] | None:
    """Codes of the AVPs inside the Failed-AVP; None when there is no Failed-AVP."""
    fa = msg.find(AvpCode.FAILED_AVP)
    if fa is None:
        return None
    inner = decode_avps(fa.data)
    return [a.code for a in inner] if isinstance(inner, list) else []


def outcome(reply: Reply) -> str:
    """The simulator's outcome key of an ECA (simulator.mme contract): WHITELISTED,
    BLACKLISTED, GREYLISTED for 2001 with that Equipment-Status (TS 29.272 7.3.51), else
    the Experimental-Result-Code or Result-Code in decimal, "no-result", "timeout", or
    "undecodable"."""
    if not isinstance(reply, Message):
        return "timeout" if reply == "timeout" else "undecodable" \
            if reply.startswith("undecodable") else reply
    rc = result_code(reply)
    es = _u32(reply.find(AvpCode.EQUIPMENT_STATUS, TGPP))
    if rc == ResultCode.SUCCESS and es is not None and 0 <= es < 3:
        return STATUS_NAMES[es]
    erc = experimental_code(reply)
    if erc is not None:
        return str(erc)
    return str(rc) if rc is not None else "no-result"


def describe(reply: Reply) -> str:
    """A one-line account of a reply, for the scorecard's "got" column."""
    if not isinstance(reply, Message):
        return {"timeout": "no answer", "closed": "connection closed (FIN)",
                "reset": "connection reset (RST)"}.get(reply, reply)
    parts = [f"cmd {reply.code}", f"flags 0x{reply.flags:02x}"]
    rc, erc = result_code(reply), experimental_code(reply)
    if rc is not None:
        parts.append(f"Result-Code {rc}")
    if erc is not None:
        parts.append(f"Experimental-Result-Code {erc}")
    es = _u32(reply.find(AvpCode.EQUIPMENT_STATUS, TGPP))
    if es is not None:
        parts.append(f"Equipment-Status {es}")
    fa = failed_avp_codes(reply)
    if fa is not None:
        parts.append("Failed-AVP " + ",".join(str(c) for c in fa))
    return ", ".join(parts)


# -- cases --------------------------------------------------------------------------------


@dataclass
class Context:
    """What the cases need: our identity, the Destination-Realm, session ids, the CEA."""

    ident: m.Identity
    destination_realm: str
    timeout: float
    cea: Message | None = None
    cer: Message | None = None
    _session: int = 0

    def session_id(self) -> str:
        self._session += 1
        return f"{self.ident.origin_host};audit;{self._session}"


def _ecr_avps(ctx: Context, *, imei: str = PROBE_IMEI, session: bool = True,
              dest_realm: str | None = None, ti: bool = True) -> list[Avp]:
    """An ECR's AVPs in the order of TS 29.272 7.2.19."""
    avps: list[Avp] = []
    if session:
        avps.append(Avp.utf8(AvpCode.SESSION_ID, ctx.session_id()))
    avps += [Avp.u32(AvpCode.AUTH_SESSION_STATE, AuthSessionState.NO_STATE_MAINTAINED),
             *ctx.ident.origin_avps(),
             Avp.octets(AvpCode.DESTINATION_REALM,
                        (dest_realm or ctx.destination_realm).encode("ascii"))]
    if ti:
        avps.append(Avp.grouped(AvpCode.TERMINAL_INFORMATION,
                                [Avp.utf8(AvpCode.IMEI, imei, TGPP),
                                 Avp.utf8(AvpCode.SOFTWARE_VERSION, "01", TGPP)], TGPP))
    return avps


def _ecr(avps: list[Avp], hbh: int, e2e: int, *, code: int = ECR, app: int = S13,
         flags: int = CmdFlag.REQUEST | CmdFlag.PROXIABLE) -> bytes:
    return Message(code, app, flags, hbh, e2e, avps).encode()


def _replace(avps: list[Avp], code: int, new: Avp) -> list[Avp]:
    return [new if a.code == code and a.vendor == 0 else a for a in avps]


Build = Callable[[Context, int, int], bytes]
Judge = Callable[[Context, Reply, int, int], tuple[bool, str]]


@dataclass(frozen=True)
class Case:
    """One conformance case: what to send, how to judge the reply."""

    name: str
    section: str
    expected: str
    build: Build | None  # None: judged from the CEA of the main connection
    judge: Judge
    own_connection: bool = False
    before_cer: bool = False


@dataclass(frozen=True)
class CaseResult:
    name: str
    section: str
    expected: str
    got: str
    passed: bool

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "section": self.section, "expected": self.expected,
                "got": self.got, "pass": self.passed}


def _ids_ok(reply: Message, hbh: int, e2e: int) -> list[str]:
    # PROTOCOL.md 1.1 / 1.9.1: the answer copies both ids
    bad = []
    if reply.hbh != hbh:
        bad.append(f"Hop-by-Hop {reply.hbh:#x} is not the request's {hbh:#x}")
    if reply.e2e != e2e:
        bad.append(f"End-to-End {reply.e2e:#x} is not the request's {e2e:#x}")
    return bad


def _origin_missing(reply: Message) -> list[str]:
    return [f"no {name}" for code, name in ((AvpCode.ORIGIN_HOST, "Origin-Host"),
                                             (AvpCode.ORIGIN_REALM, "Origin-Realm"))
            if reply.find(code) is None]


def _verdict(reply: Reply, problems: list[str]) -> tuple[bool, str]:
    got = describe(reply)
    return (not problems, got if not problems else f"{got}; " + "; ".join(problems))


def _error_answer(code: int, *, e_bit: bool | None, failed: int | bool = False,
                  command: int = ECR, proxiable: bool = True) -> Judge:
    """An answer with Result-Code ``code``; E set (True), clear (False) or either (None);
    a Failed-AVP when ``failed`` (naming that AVP code when it is an int); the P bit of
    the request (``proxiable``) copied (PROTOCOL.md 1.1, 1.9.1)."""

    def judge(ctx: Context, reply: Reply, hbh: int, e2e: int) -> tuple[bool, str]:
        if not isinstance(reply, Message):
            return False, describe(reply)
        problems = _ids_ok(reply, hbh, e2e)
        if reply.is_request:
            problems.append("a request, not an answer")
        if reply.code != command:
            problems.append(f"command {reply.code}, not {command}")
        rc = result_code(reply)
        if rc != code:
            problems.append(f"Result-Code {rc}, not {code}")
        if e_bit is True and not reply.is_error:
            problems.append("E bit clear (3xxx needs it, PROTOCOL.md 1.8)")
        if e_bit is False and reply.is_error:
            problems.append("E bit set")
        if reply.is_proxiable != proxiable:
            problems.append("P bit not copied from the request (PROTOCOL.md 1.1)")
        if failed:
            codes = failed_avp_codes(reply)
            if codes is None:
                problems.append("no Failed-AVP")
            elif failed is not True and failed not in codes:
                problems.append(f"Failed-AVP does not name AVP {failed}")
        problems += _origin_missing(reply)
        return _verdict(reply, problems)
    return judge


def _eca_ok(reply: Reply, hbh: int, e2e: int, sid: str | None) -> list[str]:
    """TS 29.272 7.2.20 and RFC 6733 6.2 on an ECA answering a valid ECR."""
    if not isinstance(reply, Message):
        return [describe(reply)]
    problems = _ids_ok(reply, hbh, e2e)
    if (reply.code, reply.app_id) != (ECR, S13):
        problems.append(f"command {reply.code} app {reply.app_id}, not 324/16777252")
    if reply.flags != CmdFlag.PROXIABLE:
        problems.append(f"flags 0x{reply.flags:02x}, not 0x40 (PROTOCOL.md 1.1)")
    if not reply.avps or reply.avps[0].code != AvpCode.SESSION_ID:
        problems.append("Session-Id is not the first AVP")
    elif sid is not None and reply.avps[0].data != sid.encode():
        problems.append("Session-Id not copied")
    if _u32(reply.find(AvpCode.AUTH_SESSION_STATE)) != AuthSessionState.NO_STATE_MAINTAINED:
        problems.append("Auth-Session-State is not NO_STATE_MAINTAINED (1)")
    problems += _origin_missing(reply)
    for code, name in ((AvpCode.DESTINATION_HOST, "Destination-Host"),
                       (AvpCode.DESTINATION_REALM, "Destination-Realm")):
        if reply.find(code) is not None:
            problems.append(f"{name} in an answer (PROTOCOL.md 1.9.1)")
    rc, erc = result_code(reply), experimental_code(reply)
    es = _u32(reply.find(AvpCode.EQUIPMENT_STATUS, TGPP))
    if rc == ResultCode.SUCCESS:
        if es is None or not 0 <= es < 3:
            problems.append("2001 without a valid Equipment-Status (TS 29.272 7.3.51)")
    elif erc == 5422:
        if es is not None:
            problems.append("Equipment-Status with 5422 (TS 29.272 7.4.3)")
    else:
        problems.append(f"neither 2001 nor 5422 (Result-Code {rc}, Experimental {erc})")
    return problems


def _sid_of(ctx: Context) -> str:
    return f"{ctx.ident.origin_host};audit;{ctx._session}"


def _valid_eca(ctx: Context, reply: Reply, hbh: int, e2e: int) -> tuple[bool, str]:
    return _verdict(reply, _eca_ok(reply, hbh, e2e, _sid_of(ctx)))


# builds


def _b_dwr(ctx: Context, hbh: int, e2e: int) -> bytes:
    return m.dwr(ctx.ident, hbh, e2e).encode()


def _b_valid(ctx: Context, hbh: int, e2e: int) -> bytes:
    return _ecr(_ecr_avps(ctx), hbh, e2e)


_PROXY_INFO: Final = Avp.grouped(AvpCode.PROXY_INFO, [
    Avp.octets(AvpCode.PROXY_HOST, b"relay.audit.invalid"),
    Avp.octets(AvpCode.PROXY_STATE, b"\x00audit-state\xff")])


def _b_proxy(ctx: Context, hbh: int, e2e: int) -> bytes:
    return _ecr([*_ecr_avps(ctx), _PROXY_INFO], hbh, e2e)


def _j_proxy(ctx: Context, reply: Reply, hbh: int, e2e: int) -> tuple[bool, str]:
    problems = _eca_ok(reply, hbh, e2e, _sid_of(ctx))
    if isinstance(reply, Message):
        got = reply.find_all(AvpCode.PROXY_INFO)
        if [a.encode() for a in got] != [_PROXY_INFO.encode()]:
            problems.append("Proxy-Info not copied unchanged")
    return _verdict(reply, problems)


def _unknown_avp(mandatory: bool) -> Avp:
    return Avp(UNKNOWN_AVP_CODE, b"audit", 0, 0x40 if mandatory else 0x00)


def _b_unknown(mandatory: bool) -> Build:
    def build(ctx: Context, hbh: int, e2e: int) -> bytes:
        return _ecr([*_ecr_avps(ctx), _unknown_avp(mandatory)], hbh, e2e)
    return build


def _b_missing(ctx: Context, hbh: int, e2e: int) -> bytes:
    return _ecr(_ecr_avps(ctx, ti=False), hbh, e2e)


def _b_sid_late(ctx: Context, hbh: int, e2e: int) -> bytes:
    avps = _ecr_avps(ctx)
    return _ecr([*avps[1:], avps[0]], hbh, e2e)


def _b_twice(ctx: Context, hbh: int, e2e: int) -> bytes:
    avps = _ecr_avps(ctx)
    return _ecr([*avps[:2], avps[1], *avps[2:]], hbh, e2e)


def _b_bad_value(ctx: Context, hbh: int, e2e: int) -> bytes:
    return _ecr(_replace(_ecr_avps(ctx), AvpCode.AUTH_SESSION_STATE,
                         Avp.u32(AvpCode.AUTH_SESSION_STATE, 7)), hbh, e2e)


def _b_bad_bits(ctx: Context, hbh: int, e2e: int) -> bytes:
    return _ecr(_replace(_ecr_avps(ctx), AvpCode.AUTH_SESSION_STATE,
                         Avp.u32(AvpCode.AUTH_SESSION_STATE, 1, mandatory=False)), hbh, e2e)


def _b_realm(ctx: Context, hbh: int, e2e: int) -> bytes:
    return _ecr(_ecr_avps(ctx, dest_realm=NOT_SERVED_REALM), hbh, e2e)


def _b_app(ctx: Context, hbh: int, e2e: int) -> bytes:
    return _ecr(_ecr_avps(ctx), hbh, e2e, app=16777251)  # S6a: not the EIR's application


def _b_command(ctx: Context, hbh: int, e2e: int) -> bytes:
    return _ecr(_ecr_avps(ctx), hbh, e2e, code=325)


def _b_e_bit(ctx: Context, hbh: int, e2e: int) -> bytes:
    return _ecr(_ecr_avps(ctx), hbh, e2e,
                flags=CmdFlag.REQUEST | CmdFlag.PROXIABLE | CmdFlag.ERROR)


def _b_avp_length(ctx: Context, hbh: int, e2e: int) -> bytes:
    # the last AVP (Terminal-Information) claims 16 bytes more than the message holds
    avps = _ecr_avps(ctx)
    frame = bytearray(_ecr(avps, hbh, e2e))
    pos = len(frame) - len(avps[-1].encode())
    frame[pos + 5:pos + 8] = (len(frame) - pos + 16).to_bytes(3, "big")
    return bytes(frame)


def _b_msg_length(ctx: Context, hbh: int, e2e: int) -> bytes:
    frame = _ecr(_ecr_avps(ctx), hbh, e2e) + b"\0\0"
    return frame[:1] + len(frame).to_bytes(3, "big") + frame[4:]


def _b_version(ctx: Context, hbh: int, e2e: int) -> bytes:
    return b"\x00" + m.dwr(ctx.ident, hbh, e2e).encode()[1:]


def _b_framing(ctx: Context, hbh: int, e2e: int) -> bytes:
    frame = m.dwr(ctx.ident, hbh, e2e).encode()
    return frame[:1] + (8).to_bytes(3, "big") + frame[4:] + frame


# judges


def _j_cea_result(ctx: Context, reply: Reply, hbh: int, e2e: int) -> tuple[bool, str]:
    assert ctx.cea is not None
    rc = result_code(ctx.cea)
    return rc == ResultCode.SUCCESS, f"Result-Code {rc}"


def _j_cea_grammar(ctx: Context, reply: Reply, hbh: int, e2e: int) -> tuple[bool, str]:
    cea, cer = ctx.cea, ctx.cer
    assert cea is not None and cer is not None
    problems = _ids_ok(cea, cer.hbh, cer.e2e)
    if cea.code != Command.CAPABILITIES_EXCHANGE or cea.flags != 0:
        problems.append(f"command {cea.code} flags 0x{cea.flags:02x}, not 257 / 0x00")
    problems += _origin_missing(cea)
    for code, name in ((AvpCode.HOST_IP_ADDRESS, "Host-IP-Address"),
                       (AvpCode.VENDOR_ID, "Vendor-Id"), (AvpCode.PRODUCT_NAME, "Product-Name")):
        if cea.find(code) is None:
            problems.append(f"no {name}")
    host = cea.find(AvpCode.ORIGIN_HOST)
    name = host.data.decode("ascii", "replace") if host is not None else "?"
    return not problems, "; ".join(problems) or f"Origin-Host {name}, all mandatory AVPs"


def _advertised(cea: Message) -> list[str]:
    out = [f"Auth-Application-Id {a.as_u32()}" for a in cea.find_all(AvpCode.AUTH_APPLICATION_ID)
           if len(a.data) == 4]
    for vsai in cea.find_all(AvpCode.VENDOR_SPECIFIC_APPLICATION_ID):
        inner = decode_avps(vsai.data)
        if not isinstance(inner, list):
            continue
        f = {a.code: _u32(a) for a in inner if a.vendor == 0}
        out.append(f"VSAI {{{f.get(AvpCode.VENDOR_ID)}, "
                   f"{f.get(AvpCode.AUTH_APPLICATION_ID, f.get(AvpCode.ACCT_APPLICATION_ID))}}}")
    return out


def _j_cea_s13(ctx: Context, reply: Reply, hbh: int, e2e: int) -> tuple[bool, str]:
    assert ctx.cea is not None
    ads = _advertised(ctx.cea)
    ok = f"VSAI {{{TGPP}, {S13}}}" in ads or f"Auth-Application-Id {S13}" in ads
    return ok, ", ".join(ads) or "no application advertised"


def _j_cea_vendor(ctx: Context, reply: Reply, hbh: int, e2e: int) -> tuple[bool, str]:
    assert ctx.cea is not None
    vendors = [_u32(a) for a in ctx.cea.find_all(AvpCode.SUPPORTED_VENDOR_ID)]
    return TGPP in vendors, ("Supported-Vendor-Id " + ", ".join(str(v) for v in vendors)
                             if vendors else "no Supported-Vendor-Id")


def _j_dwa(ctx: Context, reply: Reply, hbh: int, e2e: int) -> tuple[bool, str]:
    if not isinstance(reply, Message):
        return False, describe(reply)
    problems = _ids_ok(reply, hbh, e2e) + _origin_missing(reply)
    if reply.code != Command.DEVICE_WATCHDOG or reply.flags != 0:
        problems.append(f"command {reply.code} flags 0x{reply.flags:02x}, not 280 / 0x00")
    if result_code(reply) != ResultCode.SUCCESS:
        problems.append("Result-Code is not 2001")
    return _verdict(reply, problems)


def _closed(reset: bool) -> Judge:
    def judge(ctx: Context, reply: Reply, hbh: int, e2e: int) -> tuple[bool, str]:
        if isinstance(reply, Message):
            return False, "answered: " + describe(reply)
        if reset:
            return reply == "reset", describe(reply)
        return reply in ("reset", "closed"), describe(reply)
    return judge


CASES: Final[tuple[Case, ...]] = (
    Case("cea-result", "PROTOCOL.md 1.5; RFC 6733 5.3.2", "CEA Result-Code 2001", None,
         _j_cea_result),
    Case("cea-grammar", "PROTOCOL.md 1.1, 1.5; RFC 6733 5.3.2",
         "CEA flags 0x00, ids copied; Origin-Host, Origin-Realm, Host-IP-Address, Vendor-Id, "
         "Product-Name", None, _j_cea_grammar),
    Case("cea-s13", "PROTOCOL.md 1.5; TS 29.272 7.1.7-7.1.8",
         "S13 advertised: VSAI {10415, 16777252} or Auth-Application-Id 16777252", None,
         _j_cea_s13),
    Case("cea-supported-vendor", "PROTOCOL.md 1.5; TS 29.272 7.1.7",
         "Supported-Vendor-Id 10415", None, _j_cea_vendor),
    Case("dwr", "PROTOCOL.md 1.5, 1.7; RFC 6733 5.5",
         "DWA 2001, flags 0x00, ids copied, Origin-Host/Realm", _b_dwr, _j_dwa),
    Case("ecr-valid", "PROTOCOL.md 1.9.1, 2.2, 2.3; TS 29.272 7.2.20",
         "ECA flags 0x40, ids and Session-Id copied, Session-Id first, Auth-Session-State 1, "
         "no Destination-*, 2001 + Equipment-Status or Experimental-Result 5422",
         _b_valid, _valid_eca),
    Case("proxy-info-copied", "PROTOCOL.md 1.9.1; RFC 6733 6.2",
         "ECA carrying the request's Proxy-Info unchanged", _b_proxy, _j_proxy),
    Case("unknown-avp-not-m", "PROTOCOL.md 1.2; RFC 6733 4.1",
         "an unknown AVP without M is ignored: a normal ECA", _b_unknown(False), _valid_eca),
    Case("unknown-avp-m", "PROTOCOL.md 1.2, 1.8; RFC 6733 7.1.5",
         "5001 AVP_UNSUPPORTED, Failed-AVP naming the AVP",
         _b_unknown(True), _error_answer(5001, e_bit=None, failed=UNKNOWN_AVP_CODE)),
    Case("missing-avp", "PROTOCOL.md 1.8; TS 29.272 7.2.19",
         "no Terminal-Information: 5005 MISSING_AVP with Failed-AVP",
         _b_missing, _error_answer(5005, e_bit=None, failed=True)),
    Case("session-id-not-first", "PROTOCOL.md 1.4; RFC 6733 3.2",
         "Session-Id after the other AVPs: 5005 MISSING_AVP with Failed-AVP",
         _b_sid_late, _error_answer(5005, e_bit=None, failed=True)),
    Case("avp-occurs-too-many", "PROTOCOL.md 1.8; RFC 6733 7.1.5",
         "Auth-Session-State twice: 5009 with Failed-AVP naming it",
         _b_twice, _error_answer(5009, e_bit=None, failed=int(AvpCode.AUTH_SESSION_STATE))),
    Case("invalid-avp-value", "PROTOCOL.md 1.2, 1.8; RFC 6733 7.1.5",
         "Auth-Session-State 7: 5004 INVALID_AVP_VALUE with Failed-AVP naming it",
         _b_bad_value, _error_answer(5004, e_bit=None, failed=int(AvpCode.AUTH_SESSION_STATE))),
    Case("invalid-avp-bits", "PROTOCOL.md 1.9.2; RFC 6733 7.1.3",
         "Auth-Session-State without its M bit: 3009 INVALID_AVP_BITS with E",
         _b_bad_bits, _error_answer(3009, e_bit=True)),
    Case("realm-not-served", "PROTOCOL.md 1.8, 1.9.2; RFC 6733 7.1.3",
         f"Destination-Realm {NOT_SERVED_REALM}: 3003 REALM_NOT_SERVED with E",
         _b_realm, _error_answer(3003, e_bit=True)),
    Case("application-unsupported", "PROTOCOL.md 1.9.2; RFC 6733 7.1.3",
         "Application-Id 16777251: 3007 APPLICATION_UNSUPPORTED with E",
         _b_app, _error_answer(3007, e_bit=True)),
    Case("command-unsupported", "PROTOCOL.md 1.9.2; RFC 6733 7.1.3",
         "command 325: 3001 COMMAND_UNSUPPORTED with E",
         _b_command, _error_answer(3001, e_bit=True, command=325)),
    Case("e-bit-request", "PROTOCOL.md 1.1, 1.9.2; RFC 6733 7.1.3",
         "E bit on a request: 3008 INVALID_HDR_BITS with E",
         _b_e_bit, _error_answer(3008, e_bit=True)),
    Case("invalid-avp-length", "PROTOCOL.md 1.2, 1.9.5; RFC 6733 7.1.5",
         "an AVP running past the message: 5014 INVALID_AVP_LENGTH with Failed-AVP",
         _b_avp_length, _error_answer(5014, e_bit=None, failed=True), own_connection=True),
    Case("invalid-message-length", "PROTOCOL.md 1.1, 1.9.5; RFC 6733 7.1.5",
         "Message Length not a multiple of 4: 5015 INVALID_MESSAGE_LENGTH",
         _b_msg_length, _error_answer(5015, e_bit=None), own_connection=True),
    Case("unsupported-version", "PROTOCOL.md 1.9.5; RFC 6733 7.1.5",
         "version 0 with framing intact: 5011 UNSUPPORTED_VERSION",
         _b_version, _error_answer(5011, e_bit=None, command=int(Command.DEVICE_WATCHDOG),
                                   proxiable=False),
         own_connection=True),
    Case("framing-lost", "PROTOCOL.md 1.9.5; RFC 6733 2.1",
         "Message Length 8: connection reset (TCP RST), no answer",
         _b_framing, _closed(reset=True), own_connection=True),
    Case("first-message-not-cer", "PROTOCOL.md 1.6; RFC 6733 5.6.1",
         "an ECR before any CER: connection closed, no answer",
         _b_valid, _closed(reset=False), own_connection=True, before_cer=True),
)
"""The fixed conformance cases, in the order they run (module docstring)."""


@dataclass
class Conformance:
    """The conformance section: results, and what the CEA said about the peer."""

    results: list[CaseResult] = field(default_factory=list)
    peer: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self.results)


def _peer_of(cea: Message) -> dict[str, str]:
    out = {}
    for code, key in ((AvpCode.ORIGIN_HOST, "origin_host"), (AvpCode.ORIGIN_REALM, "origin_realm"),
                      (AvpCode.PRODUCT_NAME, "product_name")):
        a = cea.find(code)
        if a is not None:
            out[key] = a.data.decode("utf-8", "replace")
    return out


async def _run_one(case: Case, ctx: Context, probe: Probe) -> CaseResult:
    assert case.build is not None
    hbh, e2e = probe.next_ids()
    reply = await probe.ask(case.build(ctx, hbh, e2e), hbh, ctx.timeout)
    if reply == "timeout" and case.own_connection:
        # no answer: see whether the connection is ending (cases that expect closure)
        ended = await probe.wait_end(0.5)
        reply = ended if ended is not None else reply
    ok, got = case.judge(ctx, reply, hbh, e2e)
    return CaseResult(case.name, case.section, case.expected, got, ok)


async def _own(case: Case, host: str, port: int, ctx: Context) -> CaseResult:
    if case.before_cer:
        probe = await _connect(host, port, ctx.ident, ctx.timeout)
    else:
        probe, _, _ = await open_probe(host, port, ctx.ident, ctx.timeout)
    try:
        return await _run_one(case, ctx, probe)
    finally:
        await probe.close(timeout=min(ctx.timeout, 2.0))


async def run_conformance(host: str, port: int, ident: m.Identity, *,
                          destination_realm: str | None = None, timeout: float = 5.0,
                          cases: Sequence[Case] = CASES) -> tuple[Conformance, str]:
    """Run ``cases`` against the EIR; returns the results and the Destination-Realm used.

    ``destination_realm``: the realm ECRs are sent to; None takes the
    Origin-Realm of the EIR's CEA (the realm it serves). Raises `ProbeError`
    if the EIR cannot be reached, does not answer the CER or refuses it.
    """
    probe, cer, cea = await open_probe(host, port, ident, timeout)
    rc = result_code(cea)
    if rc != ResultCode.SUCCESS:  # e.g. 3010 UNKNOWN_PEER (RFC 6733 5.3): nothing to audit
        probe.abort()
        raise ProbeError(f"{host}:{port} refused the capabilities exchange of "
                         f"{ident.origin_host} (CEA Result-Code {rc})")
    realm = destination_realm
    if realm is None:
        own = cea.find(AvpCode.ORIGIN_REALM)
        realm = own.data.decode("ascii", "replace") if own is not None else ident.origin_realm
    ctx = Context(ident, realm, timeout, cea, cer)
    out = Conformance(peer=_peer_of(cea))
    try:
        for case in cases:
            if case.own_connection:
                continue
            if case.build is None:
                ok, got = case.judge(ctx, cea, cer.hbh, cer.e2e)
                out.results.append(CaseResult(case.name, case.section, case.expected, got, ok))
                continue
            if probe.ended is not None:
                probe, _, _ = await open_probe(host, port, ident, timeout)
            out.results.append(await _run_one(case, ctx, probe))
    finally:
        await probe.close(timeout=min(timeout, 2.0))
    for case in cases:
        if case.own_connection:
            out.results.append(await _own(case, host, port, ctx))
    order = {c.name: i for i, c in enumerate(cases)}
    out.results.sort(key=lambda r: order[r.name])
    return out, realm

