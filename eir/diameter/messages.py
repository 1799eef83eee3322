"""Builders for the base messages and for answers, in the AVP order the grammars give.

Owns RFC 6733 sections 5.3-5.5 (CER/CEA, DPR/DPA, DWR/DWA) on the sending
side and the answer rules of section 6.2 and 7.2: an answer copies the
Hop-by-Hop and End-to-End ids, the Session-Id, the P bit and the
Proxy-Info AVPs in order, adds our Origin-Host and Origin-Realm, and never
carries Destination-Host or Destination-Realm. Protocol errors (3xxx) use
the generic E-bit grammar of section 7.2; permanent errors use the
command's own answer grammar.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .codec import Avp, DecodeError, Message
from .constants import (
    Application,
    AvpCode,
    CmdFlag,
    Command,
    DisconnectCause,
    ResultCode,
    Vendor,
    is_protocol_error,
)
from .dictionary import Problem


@dataclass(frozen=True, slots=True)
class Identity:
    """What a node says about itself in CER/CEA and every message's Origin AVPs."""

    origin_host: str
    origin_realm: str
    host_ip_addresses: tuple[str, ...] = ("127.0.0.1",)
    vendor_id: int = 0  # RFC 6733 5.3.3: the product's vendor; we have no enterprise number
    product_name: str = "eir"
    firmware_revision: int | None = None
    origin_state_id: int | None = None

    def origin_avps(self) -> list[Avp]:
        return [Avp.octets(AvpCode.ORIGIN_HOST, self.origin_host.encode("ascii")),
                Avp.octets(AvpCode.ORIGIN_REALM, self.origin_realm.encode("ascii"))]


@dataclass(frozen=True, slots=True)
class Applications:
    """The applications a node advertises in CER/CEA (RFC 6733 5.3, TS 29.272 7.1.7)."""

    auth: tuple[int, ...] = ()
    acct: tuple[int, ...] = ()
    # (vendor, auth app id) pairs advertised inside Vendor-Specific-Application-Id
    vendor_auth: tuple[tuple[int, int], ...] = ((Vendor.TGPP, Application.S13),)
    supported_vendors: tuple[int, ...] = (Vendor.TGPP,)

    def ids(self) -> set[int]:
        return set(self.auth) | set(self.acct) | {a for _, a in self.vendor_auth}

    def avps(self) -> list[Avp]:
        out = [Avp.u32(AvpCode.SUPPORTED_VENDOR_ID, v) for v in self.supported_vendors]
        out += [Avp.u32(AvpCode.AUTH_APPLICATION_ID, a) for a in self.auth]
        out += [Avp.u32(AvpCode.ACCT_APPLICATION_ID, a) for a in self.acct]
        out += [Avp.grouped(AvpCode.VENDOR_SPECIFIC_APPLICATION_ID,
                            [Avp.u32(AvpCode.VENDOR_ID, v),
                             Avp.u32(AvpCode.AUTH_APPLICATION_ID, a)])
                for v, a in self.vendor_auth]
        return out


S13_APPLICATIONS = Applications()


def advertised_applications(msg: Message) -> set[int]:
    """Every application id a CER/CEA advertises: plain Auth/Acct ids and those in VSAI.

    The VSAI's Vendor-Id plays no part in finding common applications
    (RFC 6733 5.3); a malformed VSAI contributes nothing.
    """
    apps: set[int] = set()
    for avp in msg.avps:
        if avp.vendor:
            continue
        try:
            if avp.code in (AvpCode.AUTH_APPLICATION_ID, AvpCode.ACCT_APPLICATION_ID):
                apps.add(avp.as_u32())
            elif avp.code == AvpCode.VENDOR_SPECIFIC_APPLICATION_ID:
                for child in avp.children():
                    if child.code in (AvpCode.AUTH_APPLICATION_ID, AvpCode.ACCT_APPLICATION_ID):
                        apps.add(child.as_u32())
        except Exception:
            continue
    return apps


def common_applications(ours: set[int], theirs: set[int]) -> set[int]:
    """RFC 6733 5.3: the intersection; a relay's 0xFFFFFFFF matches all of ours."""
    if Application.RELAY in theirs:
        return set(ours)
    return ours & theirs


def request(code: int, app_id: int, hbh: int, e2e: int, avps: list[Avp],
            proxiable: bool = False) -> Message:
    flags = CmdFlag.REQUEST | (CmdFlag.PROXIABLE if proxiable else 0)
    return Message(code, app_id, flags, hbh, e2e, avps)


def cer(ident: Identity, apps: Applications, hbh: int, e2e: int) -> Message:
    return request(Command.CAPABILITIES_EXCHANGE, 0, hbh, e2e, _capabilities(ident, apps))


def _host_avps(ident: Identity) -> list[Avp]:
    avps = [Avp.address(AvpCode.HOST_IP_ADDRESS, a) for a in ident.host_ip_addresses]
    avps.append(Avp.u32(AvpCode.VENDOR_ID, ident.vendor_id))
    avps.append(Avp.utf8(AvpCode.PRODUCT_NAME, ident.product_name, mandatory=False))
    if ident.origin_state_id is not None:
        avps.append(Avp.u32(AvpCode.ORIGIN_STATE_ID, ident.origin_state_id))
    return avps


def _firmware(ident: Identity) -> list[Avp]:
    if ident.firmware_revision is None:
        return []
    return [Avp.u32(AvpCode.FIRMWARE_REVISION, ident.firmware_revision, mandatory=False)]


def _capabilities(ident: Identity, apps: Applications) -> list[Avp]:
    return ident.origin_avps() + _host_avps(ident) + apps.avps() + _firmware(ident)


def dwr(ident: Identity, hbh: int, e2e: int) -> Message:
    avps = ident.origin_avps()
    if ident.origin_state_id is not None:
        avps.append(Avp.u32(AvpCode.ORIGIN_STATE_ID, ident.origin_state_id))
    return request(Command.DEVICE_WATCHDOG, 0, hbh, e2e, avps)


def dpr(ident: Identity, hbh: int, e2e: int,
        cause: int = DisconnectCause.REBOOTING) -> Message:
    return request(Command.DISCONNECT_PEER, 0, hbh, e2e,
                   [*ident.origin_avps(), Avp.u32(AvpCode.DISCONNECT_CAUSE, cause)])


def _answer_header(req: Message, error: bool = False) -> Message:
    flags = (req.flags & CmdFlag.PROXIABLE) | (CmdFlag.ERROR if error else 0)
    return Message(req.code, req.app_id, flags, req.hbh, req.e2e, [])


def _session_id(req: Message) -> list[Avp]:
    sid = req.find(AvpCode.SESSION_ID)
    return [Avp.octets(AvpCode.SESSION_ID, sid.data)] if sid is not None else []


def proxy_infos(req: Message) -> list[Avp]:
    return [a for a in req.avps if a.code == AvpCode.PROXY_INFO and a.vendor == 0]


def _failure_avps(problem: Problem | None) -> list[Avp]:
    if problem is None:
        return []
    out = []
    if problem.reason:
        out.append(Avp.utf8(AvpCode.ERROR_MESSAGE, problem.reason[:200], mandatory=False))
    if problem.failed:
        out.append(Avp.grouped(AvpCode.FAILED_AVP, problem.failed))
    return out


def cea(req: Message, ident: Identity, apps: Applications, result_code: int,
        problem: Problem | None = None) -> Message:
    """RFC 6733 5.3.2. A 3xxx result is sent with the E bit (7.1.3)."""
    ans = _answer_header(req, error=is_protocol_error(result_code))
    ans.avps = [*_session_id(req), Avp.u32(AvpCode.RESULT_CODE, result_code),
                *ident.origin_avps()]
    ans.avps += _host_avps(ident) + _failure_avps(problem) + apps.avps() + _firmware(ident)
    ans.avps += proxy_infos(req)
    return ans


def dwa(req: Message, ident: Identity, result_code: int = ResultCode.SUCCESS,
        problem: Problem | None = None) -> Message:
    """RFC 6733 5.5.2."""
    ans = _answer_header(req, error=is_protocol_error(result_code))
    ans.avps = [*_session_id(req), Avp.u32(AvpCode.RESULT_CODE, result_code),
                *ident.origin_avps()]
    ans.avps += _failure_avps(problem)
    if ident.origin_state_id is not None:
        ans.avps.append(Avp.u32(AvpCode.ORIGIN_STATE_ID, ident.origin_state_id))
    ans.avps += proxy_infos(req)
    return ans


def dpa(req: Message, ident: Identity, result_code: int = ResultCode.SUCCESS,
        problem: Problem | None = None) -> Message:
    """RFC 6733 5.4.2."""
    ans = _answer_header(req, error=is_protocol_error(result_code))
    ans.avps = [*_session_id(req), Avp.u32(AvpCode.RESULT_CODE, result_code),
                *ident.origin_avps()]
    ans.avps += _failure_avps(problem) + proxy_infos(req)
    return ans


def protocol_error(req: Message, ident: Identity, problem: Problem) -> Message:
    """The generic E-bit answer of RFC 6733 7.2:

    <answer> ::= < Diameter Header: code, ERR [, PXY] >
                 0*1< Session-Id > { Origin-Host } { Origin-Realm } { Result-Code }
                 [ Origin-State-Id ] [ Error-Message ] [ Error-Reporting-Host ]
                 [ Failed-AVP ] [ Experimental-Result ] * [ Proxy-Info ] * [ AVP ]
    """
    ans = _answer_header(req, error=True)
    ans.avps = _session_id(req) + ident.origin_avps()
    ans.avps.append(Avp.u32(AvpCode.RESULT_CODE, problem.result_code))
    if ident.origin_state_id is not None:
        ans.avps.append(Avp.u32(AvpCode.ORIGIN_STATE_ID, ident.origin_state_id))
    ans.avps += _failure_avps(problem) + proxy_infos(req)
    return ans


def session_answer(req: Message, ident: Identity, *, result: Sequence[Avp],
                   before_origin: Iterable[Avp] = (), after_origin: Iterable[Avp] = (),
                   problem: Problem | None = None) -> Message:
    """An application answer shaped like the ECA grammar (TS 29.272 7.2.20):

    < Session-Id > [result AVPs] {before_origin, e.g. Auth-Session-State}
    { Origin-Host } { Origin-Realm } [after_origin, e.g. Equipment-Status]
    [ Error-Message ] [ Failed-AVP ] * [ Proxy-Info ]
    """
    ans = _answer_header(req)
    ans.avps = _session_id(req) + list(result) + list(before_origin) + ident.origin_avps()
    ans.avps += list(after_origin) + _failure_avps(problem) + proxy_infos(req)
    return ans


def problem_from_decode_error(err: DecodeError) -> Problem:
    failed = [err.failed_avp] if err.failed_avp is not None else []
    return Problem(err.result_code, failed, err.reason)


def result_code_of(msg: Message) -> int | None:
    """Result-Code, or Experimental-Result-Code, of an answer; None if neither parses."""
    for avp in msg.avps:
        try:
            if avp.code == AvpCode.RESULT_CODE and avp.vendor == 0:
                return avp.as_u32()
            if avp.code == AvpCode.EXPERIMENTAL_RESULT and avp.vendor == 0:
                code = avp.find(AvpCode.EXPERIMENTAL_RESULT_CODE)
                if code is not None:
                    return code.as_u32()
        except Exception:
            return None
    return None

