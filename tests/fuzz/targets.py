"""The two fuzz targets and their invariants, shared by ``fuzz.py`` (atheris) and the replay test.

Each target takes any bytes and raises ``AssertionError`` (or anything else) only when the
code under test breaks a rule; otherwise it returns. The oracles here are written from the
RFC, not from the code under test: a message is walked with this module's own ten-line
header and AVP reader (RFC 6733 3, 4.1), and the stream with its own framer.

``decoder`` (eir.diameter.codec and the dictionary):
- ``Framer.feed`` raises nothing but ``FramingError``; it yields the frames the
  3-byte Message Length gives, however the stream is cut, and loses framing exactly
  when a length is below 20 or above the limit (RFC 6733 2.1, 3);
- ``decode_message`` never raises; it returns a ``DecodeError`` exactly when the
  independent reader says so, with the RFC 6733 7.1.5 code it says (5011 version,
  5015 message length, 5014 AVP length, the AVPs before the bad one kept), and
  otherwise the AVPs the reader finds; re-encoding gives back the frame with its
  padding zeroed, and Grouped AVPs (to depth 40) decode and re-encode the same way;
- ``Dictionary.check_header`` / ``check_message`` never raise, never change the
  message, and report a 3xxx-5xxx Problem whose Failed-AVP and whole error answer
  (``messages.protocol_error``) can be encoded and decode back with the request's ids.

``peer`` (eir.diameter.peer with the real S13 handler, eir.s13, behind the overload gate,
eir.diameter.overload, as ``eir serve`` wires them): a responder ``PeerConnection`` is fed a
valid CER and then the input (or the input alone when it starts with a CER of its own),
once frame by frame and once cut at pseudo-random points. The gate is open for half the
inputs and refuses all but the first two requests (3004, or 5012 where configured) for
the other half, chosen by the input's CRC, so the refusals built from raw bytes are
fuzzed too:
- ``feed`` and ``on_timer`` never raise; both feedings give the same bytes and events;
- everything written is well-framed Diameter that decodes cleanly and is canonical
  (re-encoding it gives the same bytes: every padding byte zero, RFC 6733 4);
- while the peer is open, each request gets exactly one answer: R clear, the
  request's Hop-by-Hop and End-to-End ids, command, application and P bit, our
  Origin-Host/Realm, no Destination-*, the Session-Id and Proxy-Infos copied, E set
  for every 3xxx (PROTOCOL.md 1.9), the decode error's 5011/5014/5015 when the
  request cannot be decoded (or the gate's refusal for one that can), and the answer
  grammar of its command (or of RFC 6733 7.2 with E); an answer is never answered (6.2);
- the first message decides the connection (5.6.1): a CER gets one CEA, and the
  connection opens on 2001 and closes otherwise; anything else closes it unanswered;
- once framing is lost the connection is closed abortively (RST, RFC 6733 2.1),
  and nothing is written after a close.
"""

from __future__ import annotations

import copy
import random
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from eir.diameter import messages as m
from eir.diameter.codec import (
    Avp,
    AvpLengthError,
    DecodeError,
    Framer,
    FramingError,
    Message,
    decode_avps,
    decode_message,
    encode_avps,
)
from eir.diameter.dictionary import ERROR_ANSWER, Problem, default_dictionary
from eir.diameter.overload import Gate, Guard, Limits
from eir.diameter.peer import (
    CloseConnection,
    Event,
    PeerConnection,
    PeerOpened,
    PeerTable,
    Role,
    State,
)
from eir.s13 import DecisionUnavailable, S13Application

DICT = default_dictionary()
EIR = m.Identity("eir.localdomain", "localdomain", origin_state_id=7)
MME_HOST, MME_REALM = "mme.fuzz", "fuzz"
MAX_MESSAGE = 1 << 16  # the server's default max_message_bytes
S13 = 16777252
CER, DWR, DPR, ECR = 257, 280, 282, 324
SESSION_ID, ORIGIN_HOST, ORIGIN_REALM = 263, 264, 296
RESULT_CODE, EXPERIMENTAL_RESULT, EXPERIMENTAL_RESULT_CODE = 268, 297, 298
DESTINATION_HOST, DESTINATION_REALM, PROXY_INFO = 293, 283, 284
MAX_GROUP_DEPTH = 40  # how deep the decoder target follows Grouped AVPs

_U32 = struct.Struct("!I")


# -- an independent reader (RFC 6733 3 and 4.1) --------------------------------------------


@dataclass(frozen=True)
class RawAvp:
    code: int
    flags: int
    vendor: int
    data: bytes


def walk_avps(buf: bytes) -> tuple[list[RawAvp], bool, bytes]:
    """(AVPs, ok, buf with padding zeroed) of a run of AVPs; ok is False at a bad length."""
    out: list[RawAvp] = []
    canon = bytearray(buf)
    pos, n = 0, len(buf)
    while pos < n:
        if n - pos < 8:
            return out, False, bytes(canon)
        code, word = struct.unpack_from("!II", buf, pos)
        flags, length = word >> 24, word & 0xFFFFFF
        hlen = 12 if flags & 0x80 else 8
        if length < hlen or n - pos < hlen:
            return out, False, bytes(canon)
        padded = (length + 3) & ~3
        if pos + padded > n:
            return out, False, bytes(canon)
        vendor = _U32.unpack_from(buf, pos + 8)[0] if hlen == 12 else 0
        out.append(RawAvp(code, flags, vendor, buf[pos + hlen:pos + length]))
        canon[pos + length:pos + padded] = bytes(padded - length)
        pos += padded
    return out, True, bytes(canon)


def split_stream(data: bytes, max_len: int = MAX_MESSAGE) -> tuple[list[bytes], bytes, bool]:
    """(whole frames, the bytes after them, framing lost) by the Message Length alone."""
    frames: list[bytes] = []
    pos = 0
    while len(data) - pos >= 4:
        length = int.from_bytes(data[pos + 1:pos + 4], "big")
        if length < 20 or length > max_len:
            return frames, data[pos:], True
        if len(data) - pos < length:
            break
        frames.append(data[pos:pos + length])
        pos += length
    return frames, data[pos:], False


def cut_points(data: bytes, salt: int = 0) -> list[int]:
    """Deterministic pseudo-random cuts of ``data`` (the same input is always cut the same)."""
    if len(data) < 2:
        return []
    rng = random.Random(zlib.crc32(data) ^ salt)
    k = rng.randrange(1, min(len(data), 24) + 1)
    return sorted(set(rng.randrange(1, len(data)) for _ in range(k)))


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def _same(avps: list[Avp], raw: list[RawAvp]) -> bool:
    return [(a.code, a.flags, a.vendor, a.data) for a in avps] == \
        [(r.code, r.flags, r.vendor, r.data) for r in raw]


# -- target 1: the decoder -------------------------------------------------------------------


def check_decoder(data: bytes) -> None:
    frames, rest, lost = split_stream(data)
    for cuts in ([], cut_points(data)):
        framer = Framer(MAX_MESSAGE)
        got: list[bytes] = []
        raised = False
        for piece in chunks(data, cuts):
            try:
                got += framer.feed(piece)
            except FramingError:
                raised = True
                break
        assert got == frames, "the Framer split the stream differently"
        assert (framer.lost is not None) == lost
        assert raised or not lost or framer.lost is not None
        if not lost:
            assert framer.pending == len(rest)
    for frame in [data, *frames[:8]]:
        check_frame(frame)


def check_frame(frame: bytes) -> None:
    result = decode_message(frame)
    if len(frame) < 20:
        assert isinstance(result, DecodeError) and result.result_code == 5015, result
        return
    version, length = frame[0], int.from_bytes(frame[1:4], "big")
    hbh, e2e = struct.unpack_from("!II", frame, 12)
    raw, ok, canon = walk_avps(frame[20:])
    if version != 1:
        want: int | None = 5011
    elif length != len(frame) or length % 4:
        want = 5015
    elif not ok:
        want = 5014
    else:
        want = None
    if want is not None:
        assert isinstance(result, DecodeError), f"decoded, but the reader says {want}"
        assert result.result_code == want, (result.result_code, want, result.reason)
        assert (result.message.hbh, result.message.e2e) == (hbh, e2e)
        assert (result.failed_avp is not None) == (want == 5014)
        if want == 5014:
            assert _same(result.message.avps, raw), "AVPs before the bad one not kept"
            result.failed_avp.encode()  # type: ignore[union-attr]
        check_answer_building(result.message, m.problem_from_decode_error(result))
        return
    assert isinstance(result, Message), f"{result} but the reader decodes it"
    assert (result.version, result.hbh, result.e2e, result.flags, result.code,
            result.app_id) == (1, hbh, e2e, frame[4], int.from_bytes(frame[5:8], "big"),
                               _U32.unpack_from(frame, 8)[0])
    assert _same(result.avps, raw), "AVPs differ from the reader's"
    assert result.encode() == frame[:20] + canon, "re-encoding is not the frame"
    for avp in result.avps:
        check_grouped(avp.data, 0)
    check_dictionary(result)


def check_grouped(data: bytes, depth: int) -> None:
    """Any AVP's data read as a Grouped AVP's: decodes as the reader says, re-encodes."""
    if depth >= MAX_GROUP_DEPTH or len(data) < 8:
        return
    raw, ok, canon = walk_avps(data)
    inner = decode_avps(data)
    if not ok:
        assert isinstance(inner, AvpLengthError)
        assert _same(inner.parsed, raw)
        try:
            Avp(1, data).children()
        except AvpLengthError:
            pass
        else:
            raise AssertionError("children() of a bad group did not raise AvpLengthError")
        return
    assert isinstance(inner, list) and _same(inner, raw)
    assert encode_avps(inner) == canon
    for avp in inner:
        check_grouped(avp.data, depth + 1)


def check_dictionary(msg: Message) -> None:
    before = copy.deepcopy(msg)
    problems = [DICT.check_header(msg), DICT.check_header(msg, {0, S13}),
                DICT.check_message(msg)]
    assert msg == before, "checking changed the message"
    for problem in problems:
        if problem is None:
            continue
        assert isinstance(problem, Problem)
        assert 3000 <= problem.result_code < 6000, problem
        check_answer_building(msg, problem)


def check_answer_building(req: Message, problem: Problem) -> None:
    ans = m.protocol_error(req, EIR, problem)
    wire = ans.encode()
    back = decode_message(wire)
    assert isinstance(back, Message), back
    assert (back.hbh, back.e2e, back.code, back.app_id) == (req.hbh, req.e2e, req.code,
                                                            req.app_id)
    assert back.flags & 0xA0 == 0x20 and back.flags & 0x40 == req.flags & 0x40


# -- target 2: the peer state machine with the S13 handler ----------------------------------


@dataclass(frozen=True)
class Decision:
    status: int | None
    reason: str


def decide(imei: str, imsi: str | None, sv: str | None, operator: str) -> Decision:
    """A fixed table by IMEI prefix: 35 white, 86 black, 99 grey, 00 unknown, 11 no registry."""
    if imei.startswith("11"):
        raise DecisionUnavailable("no registry (fuzz)")
    status = {"35": 0, "86": 1, "99": 2, "00": None}.get(imei[:2], 0)
    return Decision(status, "fuzz")


def _valid_cer() -> bytes:
    me = m.Identity(MME_HOST, MME_REALM, ("127.0.0.1",))
    return m.cer(me, m.S13_APPLICATIONS, 0x0C0FFEE0, 0x0C0FFEE0).encode()


VALID_CER = _valid_cer()


# how the overload gate in front of the S13 handler is set, chosen per input (crc32 % 4):
# open, open, refusing with 3004 after two requests, refusing with 5012 after two
GATE_MODES = (None, None, 3004, 5012)


def new_peer(mode: int | None) -> tuple[PeerConnection, Guard]:
    """A responder with the S13 handler behind the overload gate, as ``eir serve`` wires it."""
    app = S13Application(EIR, DICT, decide)
    limits = Limits() if mode is None else Limits(peer_rate=1.0, burst=2.0, answer=mode)
    guard = Guard(limits, 0.0, 0)
    gate = Gate(app.handle, guard, EIR, lambda: 0.0, Avp.u32(277, 1).encode())
    conn = PeerConnection(Role.RESPONDER, EIR, m.S13_APPLICATIONS, DICT, 0.0,
                          handlers={S13: gate}, peers=PeerTable(), source_ip="127.0.0.1",
                          rand=lambda: 0.5, max_message=MAX_MESSAGE, wall_time=0.0)
    return conn, guard


def _is_cer_request(frame: bytes) -> bool:
    return (frame[4] & 0x80 != 0 and int.from_bytes(frame[5:8], "big") == CER
            and frame[8:12] == b"\0\0\0\0")


def _decoded_answers(out: bytes) -> list[Message]:
    frames, rest, lost = split_stream(out, 1 << 24)
    assert not lost and rest == b"", "the peer wrote bytes that do not frame"
    answers = []
    for frame in frames:
        msg = decode_message(frame)
        assert isinstance(msg, Message), f"the peer wrote an undecodable message: {msg}"
        assert msg.encode() == frame, "the peer wrote a non-canonical message"
        answers.append(msg)
    return answers


def _result(ans: Message) -> int | None:
    rc = ans.find(RESULT_CODE)
    if rc is not None:
        return rc.as_u32()
    er = ans.find(EXPERIMENTAL_RESULT)
    if er is not None:
        code = er.find(EXPERIMENTAL_RESULT_CODE)
        return code.as_u32() if code is not None else None
    return None


_GOOD_COPY = {SESSION_ID: Avp.utf8(SESSION_ID, "copied;1"),
              PROXY_INFO: Avp.grouped(PROXY_INFO, [Avp.octets(280, b"copied"),
                                                   Avp.octets(33, b"state")])}


def check_answer(frame: bytes, ans: Message, refused: int | None = None) -> int:
    """One answer against the request frame it answers (PROTOCOL.md 1.9); its result.

    ``refused``: the overload gate refused this request with that code (3004 or 5012)."""
    code = int.from_bytes(frame[5:8], "big")
    app, hbh, e2e = struct.unpack_from("!III", frame, 8)
    assert not ans.is_request, "a request written where an answer was due"
    assert (ans.hbh, ans.e2e, ans.code, ans.app_id) == (hbh, e2e, code, app), "ids not copied"
    assert ans.flags & 0x40 == frame[4] & 0x40, "P bit not copied"
    assert ans.flags & 0x1F == 0, "reserved or T bits set on an answer"
    assert ans.find(ORIGIN_HOST) is not None and ans.find(ORIGIN_REALM) is not None
    assert ans.find(ORIGIN_HOST).data == EIR.origin_host.encode()  # type: ignore[union-attr]
    assert ans.find(ORIGIN_REALM).data == EIR.origin_realm.encode()  # type: ignore[union-attr]
    assert ans.find(DESTINATION_HOST) is None and ans.find(DESTINATION_REALM) is None
    rc = _result(ans)
    assert rc is not None, "an answer without Result-Code or Experimental-Result"
    if 3000 <= rc < 4000:
        assert ans.is_error, f"{rc} without the E bit"
    decoded = decode_message(frame)
    req = decoded.message if isinstance(decoded, DecodeError) else decoded
    if refused is not None and (rc in (refused, 3004) or isinstance(decoded, Message)):
        # refused before decoding (eir.diameter.overload), the ids, P bit, Session-Id and
        # Proxy-Infos copied from the bytes: 3004 with E, or 5012 without where configured
        # and a Session-Id can be copied; a request whose AVPs do not walk gets the
        # handler's own answer instead (the decode error's code, below)
        assert rc in (refused, 3004) and ans.is_error == (rc == 3004), (rc, refused, ans.flags)
    elif isinstance(decoded, DecodeError):
        assert rc == decoded.result_code, (rc, decoded.result_code, decoded.reason)
    sid = req.find(SESSION_ID)
    got_sid = ans.find(SESSION_ID)
    assert (got_sid.data if got_sid else None) == (sid.data if sid else None), "Session-Id"
    assert ans.find_all(PROXY_INFO) == req.find_all(PROXY_INFO), "Proxy-Info not copied"
    cmd = DICT.command(code, app)
    if ans.is_error or cmd is not None:
        grammar = ERROR_ANSWER if ans.is_error else cmd.answer  # type: ignore[union-attr]
        # an AVP copied as RFC 6733 6.2 says (the Session-Id, a Proxy-Info) may be as bad as
        # the request's was: it is checked as a good one; what the EIR wrote must fit
        copied = {(a.code, a.data) for a in req.avps
                  if a.code in (SESSION_ID, PROXY_INFO) and not a.vendor}
        own = [_GOOD_COPY[a.code] if (a.code, a.data) in copied and not a.vendor else a
               for a in ans.avps]
        problem = DICT.check_avps(own, grammar)
        assert problem is None, f"answer {ans.code} breaks its grammar: {problem}"
    return rc


@dataclass
class Run:
    out: bytes
    events: list[Event]
    state: State


def _feed_frames(stream: bytes, mode: int | None) -> Run:
    """Frame by frame, checking each step against the rules; the whole run's output."""
    conn, guard = new_peer(mode)
    frames, rest, lost = split_stream(stream)
    out = bytearray()
    events: list[Event] = []
    for i, frame in enumerate(frames):
        before, refusals = conn.state, guard.refused
        evs = conn.feed(frame, 0.0)
        refused = mode if guard.refused > refusals else None
        data = conn.data_to_send()
        events += evs
        out += data
        answers = _decoded_answers(data)
        if before is State.CLOSED:
            assert not evs and not data, "the peer acted after its close"
            continue
        closes = [e for e in evs if isinstance(e, CloseConnection)]
        assert all(not c.abort for c in closes), "abort on a message that frames"
        if before is State.WAIT_CER:
            assert i == 0
            if not _is_cer_request(frame):
                assert not answers and closes and conn.state is State.CLOSED
                continue
            assert len(answers) == 1, "a CER must get exactly one CEA"
            rc = check_answer(frame, answers[0])
            opened = [e for e in evs if isinstance(e, PeerOpened)]
            if rc == 2001:
                assert opened and conn.state is State.OPEN and not closes
            else:
                assert not opened and closes and conn.state is State.CLOSED
            continue
        assert before in (State.OPEN, State.CLOSING)
        if frame[4] & 0x80:
            assert len(answers) == 1, f"{len(answers)} answers to one request"
            check_answer(frame, answers[0], refused)
        else:
            assert not answers, "an answer was answered"
        assert not closes, "closed on a framed message while open"
    before = conn.state
    evs = conn.feed(rest, 0.0) if rest else []
    data = conn.data_to_send()
    events += evs
    out += data
    assert not data, "bytes written for a partial or broken message"
    if lost and before is not State.CLOSED:
        assert any(isinstance(e, CloseConnection) and e.abort for e in evs), \
            "framing lost without an abortive close"
        assert conn.state is State.CLOSED
    elif not lost:
        assert not evs
    # time passes: the watchdog sends a DWR, or a partial message or a close ends it
    state = conn.state
    run = Run(bytes(out), events, state)
    evs = conn.on_timer(1000.0)
    data = conn.data_to_send()
    for msg in _decoded_answers(data):
        assert msg.is_request and msg.code == DWR and state is State.OPEN and not rest
    assert all(isinstance(e, CloseConnection) for e in evs)
    return run


def _feed_chunks(stream: bytes, mode: int | None) -> Run:
    conn, _ = new_peer(mode)
    out = bytearray()
    events: list[Event] = []
    for piece in chunks(stream, cut_points(stream, 0x5EED)):
        events += conn.feed(piece, 0.0)
        out += conn.data_to_send()
    return Run(bytes(out), events, conn.state)


def check_peer(data: bytes) -> None:
    frames, _, _ = split_stream(data)
    stream = data if frames and _is_cer_request(frames[0]) else VALID_CER + data
    mode = GATE_MODES[zlib.crc32(data) % len(GATE_MODES)]
    whole = _feed_frames(stream, mode)
    cut = _feed_chunks(stream, mode)
    assert cut.out == whole.out, "cutting the stream differently changed what was written"
    assert cut.events == whole.events, (cut.events, whole.events)
    assert cut.state is whole.state


TARGETS: dict[str, Callable[[bytes], None]] = {"decoder": check_decoder, "peer": check_peer}
