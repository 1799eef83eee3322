"""S13 ME-Identity-Check: ECR in, policy decision, ECA out (TS 29.272 6.2, 7.2.19-7.2.20).

The one module that knows both AVPs and policy decisions. A well-formed ECR
in the usual shape takes the fast path: one pass over the AVP headers with
``struct``, the decision from memory, and an answer glued from pre-encoded
pieces. Anything unusual (a Proxy-Info, an unknown AVP, a wrong flag, a
missing AVP) takes the general path through the codec and the dictionary,
which produces the exact RFC 6733 7.2 error answer. Both paths give the
same answer for the same well-formed request; a test checks that.

Rules implemented here:
- TS 29.272 6.2.1.3: match on the IMEI, ignoring a 15th digit (the policy
  layer normalises); Software-Version and User-Name (IMSI) are passed on.
- TS 29.272 7.2.20: the ECA carries Result-Code 2001 with Equipment-Status,
  or Experimental-Result {10415, 5422} without it; Auth-Session-State is
  NO_STATE_MAINTAINED; no Vendor-Specific-Application-Id.
- A Terminal-Information without an IMEI is 5005 (the IMEI is what the
  check is about), its Failed-AVP the group holding an example IMEI.
- RFC 6733 6.1.4/7.1.3: a request naming another Destination-Host is 3002,
  one for a realm we do not serve 3003.
- A request straight from a peer (no Route-Record, RFC 6733 6.7.1: every
  relay adds one) whose Origin-Host is not the one that peer gave in its CER
  (5.3) is counted and logged (``origin_check = "log"``), refused with 3010
  DIAMETER_UNKNOWN_PEER (``"refuse"``: the sender is not the peer admitted
  on this connection), or let through unseen (``"off"``).
"""

from __future__ import annotations

import logging
import struct
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from eir.diameter import messages as m
from eir.diameter.codec import Avp, DecodeError, Message, decode_message
from eir.diameter.constants import (
    Application,
    AuthSessionState,
    AvpCode,
    Command,
    ExperimentalResultCode,
    ResultCode,
    Vendor,
)
from eir.diameter.dictionary import Dictionary, Problem
from eir.diameter.peer import counted_command


class DecisionLike(Protocol):
    @property
    def status(self) -> int | None: ...  # Equipment-Status, or None for 5422

    @property
    def reason(self) -> str: ...


Decide = Callable[[str, str | None, str | None, str], DecisionLike]
"""(imei, imsi, sv, operator) -> decision; the operator is the ECR's Origin-Realm."""

_U32 = struct.Struct("!I")
_AVP = struct.Struct("!II")
_HDR_TAIL = struct.Struct("!II")  # flags|code, app id

S13 = Application.S13
TGPP = Vendor.TGPP

# Plain ints for the fast path: an IntEnum member costs a lookup on every use.
_S13 = int(S13)
_TGPP = int(TGPP)
_ECR = int(Command.ME_IDENTITY_CHECK)
_SESSION_ID = int(AvpCode.SESSION_ID)
_AUTH_SESSION_STATE = int(AvpCode.AUTH_SESSION_STATE)
_ORIGIN_HOST = int(AvpCode.ORIGIN_HOST)
_ORIGIN_REALM = int(AvpCode.ORIGIN_REALM)
_DESTINATION_REALM = int(AvpCode.DESTINATION_REALM)
_DESTINATION_HOST = int(AvpCode.DESTINATION_HOST)
_USER_NAME = int(AvpCode.USER_NAME)
_ROUTE_RECORD = int(AvpCode.ROUTE_RECORD)
_TERMINAL_INFORMATION = int(AvpCode.TERMINAL_INFORMATION)
_IMEI = int(AvpCode.IMEI)
_SOFTWARE_VERSION = int(AvpCode.SOFTWARE_VERSION)
_OC_SUPPORTED_FEATURES = int(AvpCode.OC_SUPPORTED_FEATURES)

# Bits for the AVPs the fast path accepts, to count them in one int.
_SID, _ASS, _OH, _OR, _DR, _DH, _TI, _UN = (1 << i for i in range(8))
_REQUIRED = _SID | _ASS | _OH | _OR | _DR | _TI


@dataclass(frozen=True, slots=True)
class CheckedEcr:
    """The facts of one ECR that policy needs."""

    imei: str
    software_version: str | None
    imsi: str | None
    operator: str  # the Origin-Realm of the MME that asked


log = logging.getLogger("eir.s13")


class DecisionUnavailable(Exception):
    """Raised by a decide function that has no registry to decide from (fail-closed).

    The ECR gets 5012 DIAMETER_UNABLE_TO_COMPLY with the message as Error-Message.
    """

ORIGIN_CHECKS = ("log", "refuse", "off")
_LOGGED_PAIRS = 1000  # (peer, Origin-Host) pairs logged once each; then every 10,000th


class S13Application:
    """Answers ECRs for one node identity from a decision function."""

    def __init__(self, ident: m.Identity, dictionary: Dictionary, decide: Decide, *,
                 realms: Iterable[str] | None = None, origin_check: str = "log") -> None:
        if origin_check not in ORIGIN_CHECKS:
            raise ValueError(f"origin_check: {origin_check!r} is not one of {ORIGIN_CHECKS}")
        self.origin_check = origin_check
        self.origin_mismatches = 0  # requests whose Origin-Host was not their peer's
        self._logged: set[tuple[bytes, bytes]] = set()
        self.ident = ident
        self.dictionary = dictionary
        self.decide = decide
        self.any_realm = realms is not None and "*" in realms
        self.realms = {r.lower().encode("ascii") for r in (realms or [ident.origin_realm])}
        self.host = ident.origin_host.lower().encode("ascii")
        self.fast = 0
        self.slow = 0
        # (command code, Result-Code) of the error answers (the general path only; the
        # others are decisions, counted by whoever decides); a command code that is not
        # one of ours counts as OTHER_COMMAND (eir.diameter.peer.counted_command)
        self.errors: Counter[tuple[int, int]] = Counter()
        tail = [Avp.u32(AvpCode.AUTH_SESSION_STATE, AuthSessionState.NO_STATE_MAINTAINED)]
        tail += ident.origin_avps()
        rc = Avp.u32(AvpCode.RESULT_CODE, ResultCode.SUCCESS).encode()
        self._success = rc + b"".join(a.encode() for a in tail)
        self._status = {s: Avp.u32(AvpCode.EQUIPMENT_STATUS, s, TGPP).encode() for s in (0, 1, 2)}
        self._unknown = _experimental(ExperimentalResultCode.ERROR_EQUIPMENT_UNKNOWN).encode() + \
            b"".join(a.encode() for a in tail)

    # -- entry point --

    def handle(self, frame: bytes, peer: bytes = b"") -> bytes | None:
        """One framed request for application 16777252; returns the answer bytes.

        ``peer`` is the connection's peer (its CER's Origin-Host, lower case);
        b"" skips the Origin-Host check.
        """
        if self.origin_check == "off":
            peer = b""
        answer = self._fast(frame, peer)
        if answer is not None:
            self.fast += 1
            return answer
        self.slow += 1
        return self._general(frame, peer)

    # -- fast path --

    def _fast(self, frame: bytes, peer: bytes = b"") -> bytes | None:
        n = len(frame)
        if frame[0] != 1 or n & 3:
            return None
        fc, app = _HDR_TAIL.unpack_from(frame, 4)
        # R and P set, E clear (the T bit may be set on a retransmission)
        if (fc >> 24) & 0xE0 != 0xC0 or fc & 0xFFFFFF != _ECR or app != _S13:
            return None
        unpack = _AVP.unpack_from
        seen = 0
        imei = sv = imsi = None
        realm = origin = b""
        routed = False
        sid_end = 0
        pos = 20
        while pos < n:
            if n - pos < 8:
                return None
            code, fl = unpack(frame, pos)
            flags = fl >> 24
            length = fl & 0xFFFFFF
            end = pos + length
            nxt = end + (-length & 3)
            if length < 8 or nxt > n:
                return None
            if flags == 0x40:
                if code == _SESSION_ID and pos == 20:
                    try:
                        frame[28:end].decode()
                    except UnicodeDecodeError:
                        return None
                    if any(frame[end:nxt]):
                        return None  # the answer echoes these bytes: padding must be zero
                    bit = _SID
                    sid_end = nxt
                elif code == _AUTH_SESSION_STATE:
                    if length != 12 or frame[pos + 8:pos + 11] != b"\0\0\0" or frame[pos + 11] > 1:
                        return None
                    bit = _ASS
                elif code == _ORIGIN_HOST:
                    origin = frame[pos + 8:end]
                    bit = _OH
                elif code == _ORIGIN_REALM:
                    realm = frame[pos + 8:end]
                    bit = _OR
                elif code == _DESTINATION_REALM:
                    if not self.any_realm and frame[pos + 8:end].lower() not in self.realms:
                        return None
                    bit = _DR
                elif code == _DESTINATION_HOST:
                    if frame[pos + 8:end].lower() != self.host:
                        return None
                    bit = _DH
                elif code == _USER_NAME:
                    try:
                        imsi = frame[pos + 8:end].decode()
                    except UnicodeDecodeError:
                        return None
                    bit = _UN
                elif code == _ROUTE_RECORD:
                    if length == 8 or not frame[pos + 8:end].isascii():
                        return None  # DiameterIdentity: non-empty ASCII
                    routed = True
                    pos = nxt
                    continue
                else:
                    return None
                if bit & (_OH | _OR | _DR | _DH) and (length == 8 or
                                                       not frame[pos + 8:end].isascii()):
                    return None  # DiameterIdentity: non-empty ASCII
            elif flags == 0 and code == _OC_SUPPORTED_FEATURES:
                pos = nxt  # DOIC (RFC 7683): the overload gate answers it, not S13
                continue
            elif flags == 0xC0 and code == _TERMINAL_INFORMATION and length >= 12:
                if _U32.unpack_from(frame, pos + 8)[0] != _TGPP:
                    return None
                parsed = _terminal_information(frame, pos + 12, end)
                if parsed is None:
                    return None
                imei, sv = parsed
                bit = _TI
            else:
                return None
            if seen & bit:
                return None
            seen |= bit
            pos = nxt
        if seen & _REQUIRED != _REQUIRED or imei is None:
            return None
        # Exact bytes first: an MME names itself as in its CER, so .lower() is rarely run.
        if peer and not routed and origin != peer and origin.lower() != peer:
            return None  # the general path counts, logs and (if so configured) refuses it
        # ASCII was checked above, so this cannot fail
        try:
            decision = self.decide(imei, imsi, sv, realm.decode())
        except DecisionUnavailable as exc:
            return self._unable(frame, exc)
        status = decision.status
        if status is None:
            body = frame[20:sid_end] + self._unknown
        else:
            body = frame[20:sid_end] + self._success + self._status[status]
        return b"".join((
            _U32.pack(0x01000000 | (20 + len(body))),
            _U32.pack(0x40000000 | _ECR),
            frame[8:20], body))

    # -- general path --

    def _general(self, frame: bytes, peer: bytes = b"") -> bytes | None:
        decoded = decode_message(frame)
        if isinstance(decoded, DecodeError):
            if not decoded.message.is_request:
                return None
            return self._error(decoded.message, m.problem_from_decode_error(decoded))
        msg = decoded
        if not msg.is_request:
            return None
        problem = (self.dictionary.check_message(msg) or self._check_routing(msg)
                   or self._check_origin(msg, peer))
        if problem is not None:
            return self._error(msg, problem)
        checked = self.check_ecr(msg)
        if isinstance(checked, Problem):
            return self._error(msg, checked)
        try:
            decision = self.decide(checked.imei, checked.imsi, checked.software_version,
                                   checked.operator)
        except DecisionUnavailable as exc:
            return self._error(msg, Problem(ResultCode.UNABLE_TO_COMPLY, [], str(exc)))
        return self.answer(msg, decision.status).encode()

    def _unable(self, frame: bytes, exc: DecisionUnavailable) -> bytes:
        msg = decode_message(frame)
        assert isinstance(msg, Message)  # the fast path has walked it: it decodes
        return self._error(msg, Problem(ResultCode.UNABLE_TO_COMPLY, [], str(exc)))

    def _check_routing(self, msg: Message) -> Problem | None:
        dh = msg.find(AvpCode.DESTINATION_HOST)
        if dh is not None and dh.data.lower() != self.host:
            return Problem(ResultCode.UNABLE_TO_DELIVER, [],
                           f"Destination-Host {dh.data.decode('ascii', 'replace')} is not this EIR")
        dr = msg.find(AvpCode.DESTINATION_REALM)
        if dr is not None and not self.any_realm and dr.data.lower() not in self.realms:
            return Problem(ResultCode.REALM_NOT_SERVED,
                           [], f"realm {dr.data.decode('ascii', 'replace')} is not served")
        return None

    def _check_origin(self, msg: Message, peer: bytes) -> Problem | None:
        oh = msg.find(AvpCode.ORIGIN_HOST)
        if not peer or oh is None or msg.find(AvpCode.ROUTE_RECORD) is not None:
            return None
        origin = oh.data.lower()
        if origin == peer:
            return None
        self.origin_mismatches += 1
        said = origin.decode("ascii", "replace")
        who = peer.decode("ascii", "replace")
        key = (peer, origin)
        if key not in self._logged and len(self._logged) < _LOGGED_PAIRS:
            self._logged.add(key)
            log.warning("request from peer %s names Origin-Host %s and no Route-Record: %s "
                        "(first of this pair)", who, said,
                        "refused with 3010" if self.origin_check == "refuse" else "answered")
        elif self.origin_mismatches % 10_000 == 0:
            log.warning("%d requests so far whose Origin-Host was not their peer's",
                        self.origin_mismatches)
        if self.origin_check != "refuse":
            return None
        return Problem(ResultCode.UNKNOWN_PEER, [],
                       f"Origin-Host {said} is not this connection's peer {who}")

    @staticmethod
    def check_ecr(msg: Message) -> CheckedEcr | Problem:
        """S13 facts from a grammar-checked ECR; 5005 when the IMEI is missing."""
        ti = msg.find(AvpCode.TERMINAL_INFORMATION, TGPP)
        assert ti is not None  # the grammar requires it
        imei = ti.find(AvpCode.IMEI, TGPP)
        if imei is None:
            example = Avp(AvpCode.IMEI, b"", TGPP, 0xC0)
            failed = Avp.grouped(AvpCode.TERMINAL_INFORMATION, [example], TGPP)
            return Problem(ResultCode.MISSING_AVP, [failed], "Terminal-Information without IMEI")
        sv = ti.find(AvpCode.SOFTWARE_VERSION, TGPP)
        un = msg.find(AvpCode.USER_NAME)
        realm = msg.find(AvpCode.ORIGIN_REALM)
        return CheckedEcr(imei.as_str(), sv.as_str() if sv is not None else None,
                          un.as_str() if un is not None else None,
                          realm.data.decode("ascii", "replace") if realm is not None else "")

    def answer(self, req: Message, status: int | None) -> Message:
        """The ECA for a decision (TS 29.272 7.2.20)."""
        ass = [Avp.u32(AvpCode.AUTH_SESSION_STATE, AuthSessionState.NO_STATE_MAINTAINED)]
        if status is None:
            result = [_experimental(ExperimentalResultCode.ERROR_EQUIPMENT_UNKNOWN)]
            return m.session_answer(req, self.ident, result=result, before_origin=ass)
        return m.session_answer(
            req, self.ident, result=[Avp.u32(AvpCode.RESULT_CODE, ResultCode.SUCCESS)],
            before_origin=ass, after_origin=[Avp.u32(AvpCode.EQUIPMENT_STATUS, status, TGPP)])

    def _error(self, req: Message, problem: Problem) -> bytes:
        """3xxx (and any error without a Session-Id to copy) in the E-bit grammar of
        RFC 6733 7.2; other errors in the ECA grammar with Failed-AVP (7.3)."""
        self.errors[(counted_command(req.code), problem.result_code)] += 1
        has_sid = req.find(AvpCode.SESSION_ID) is not None
        is_ecr = req.code == Command.ME_IDENTITY_CHECK and req.app_id == S13
        if problem.protocol_error or not has_sid or not is_ecr:
            return m.protocol_error(req, self.ident, problem).encode()
        ass = [Avp.u32(AvpCode.AUTH_SESSION_STATE, AuthSessionState.NO_STATE_MAINTAINED)]
        ans = m.session_answer(req, self.ident,
                               result=[Avp.u32(AvpCode.RESULT_CODE, problem.result_code)],
                               before_origin=ass, problem=problem)
        return ans.encode()


def _experimental(code: int) -> Avp:
    return Avp.grouped(AvpCode.EXPERIMENTAL_RESULT, [
        Avp.u32(AvpCode.VENDOR_ID, TGPP), Avp.u32(AvpCode.EXPERIMENTAL_RESULT_CODE, code)])


def _terminal_information(frame: bytes, pos: int, end: int) -> tuple[str, str | None] | None:
    """IMEI and Software-Version from a Terminal-Information in the usual shape, else None."""
    imei = sv = None
    unpack = _AVP.unpack_from
    while pos < end:
        if end - pos < 12:
            return None
        code, fl = unpack(frame, pos)
        length = fl & 0xFFFFFF
        nxt = pos + length + (-length & 3)
        if fl >> 24 != 0xC0 or length < 12 or nxt > end or \
                _U32.unpack_from(frame, pos + 8)[0] != _TGPP:
            return None
        try:
            value = frame[pos + 12:pos + length].decode()
        except UnicodeDecodeError:
            return None
        if code == _IMEI and imei is None:
            imei = value
        elif code == _SOFTWARE_VERSION and sv is None:
            sv = value
        else:
            return None
        pos = nxt
    if imei is None:
        return None
    return imei, sv
