"""Property tests of the codec and the dictionary (hypothesis).

- any message we can build encodes, decodes back to the same value and
  re-encodes to the same bytes, Grouped AVPs (nested, vendor-specific) included;
- ``decode_message`` never raises, whatever the bytes, and what it decodes
  is stable under re-encoding;
- the Framer yields the same frames however the stream is cut;
- ``Dictionary.check_message`` never raises and never changes the message.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eir.diameter import messages as msgs
from eir.diameter.codec import Avp, DecodeError, Framer, Message, decode_avps, decode_message
from eir.diameter.constants import HEADER_LEN, ResultCode
from eir.diameter.dictionary import AvpType, MRule, Problem, default_dictionary

D = default_dictionary()
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

u32 = st.integers(0, 2**32 - 1)
vendors = st.one_of(st.just(0), st.sampled_from([10415, 5535]), st.integers(1, 2**32 - 1))
avp_flags = st.integers(0, 0x7F)  # M, P and the reserved bits; V follows the vendor


@dataclass
class Node:
    """An AVP and, for a Grouped one, the AVPs it was built from."""

    avp: Avp
    children: list[Node] | None = None


def _with_v(flags: int, vendor: int) -> int:
    return flags | (0x80 if vendor else 0)


leaf_nodes = st.builds(
    lambda code, vendor, flags, data: Node(Avp(code, data, vendor, _with_v(flags, vendor))),
    u32, vendors, avp_flags, st.binary(max_size=24))


def _grouped(code: int, vendor: int, flags: int, children: list[Node]) -> Node:
    avp = Avp.grouped(code, [c.avp for c in children], vendor)
    avp.flags = _with_v(flags, vendor)
    return Node(avp, children)


nodes = st.recursive(
    leaf_nodes,
    lambda inner: st.builds(_grouped, u32, vendors, avp_flags, st.lists(inner, max_size=4)),
    max_leaves=12)


@st.composite
def messages(draw: st.DrawFn) -> tuple[Message, list[Node]]:
    tree = draw(st.lists(nodes, max_size=6))
    msg = Message(draw(st.integers(0, 2**24 - 1)), draw(u32), draw(st.integers(0, 255)),
                  draw(u32), draw(u32), [n.avp for n in tree])
    return msg, tree


def _assert_tree(decoded: list[Avp], tree: list[Node]) -> None:
    assert decoded == [n.avp for n in tree]
    for avp, node in zip(decoded, tree, strict=True):
        if node.children is not None:
            inner = decode_avps(avp.data)
            assert isinstance(inner, list)
            _assert_tree(inner, node.children)


@FAST
@given(messages())
def test_encode_decode_encode_is_identity(case: tuple[Message, list[Node]]) -> None:
    msg, tree = case
    wire = msg.encode()
    assert len(wire) % 4 == 0
    assert int.from_bytes(wire[1:4], "big") == len(wire)
    back = decode_message(wire)
    assert isinstance(back, Message), back
    assert (back.version, back.code, back.app_id, back.flags, back.hbh, back.e2e) == (
        1, msg.code, msg.app_id, msg.flags, msg.hbh, msg.e2e)
    _assert_tree(back.avps, tree)
    assert back.encode() == wire


def _check_decode_result(result: Message | DecodeError, data: bytes) -> None:
    if isinstance(result, DecodeError):
        assert result.result_code in (ResultCode.UNSUPPORTED_VERSION,
                                      ResultCode.INVALID_MESSAGE_LENGTH,
                                      ResultCode.INVALID_AVP_LENGTH)
        assert (result.failed_avp is not None) == (result.result_code == 5014)
        if result.failed_avp is not None:
            result.failed_avp.encode()  # what goes into Failed-AVP can be sent
        if len(data) >= HEADER_LEN:
            assert result.message.hbh == int.from_bytes(data[12:16], "big")
            assert result.message.e2e == int.from_bytes(data[16:20], "big")
        return
    assert isinstance(result, Message)
    assert len(data) == int.from_bytes(data[1:4], "big")
    # decoding is canonical: the re-encoded message decodes to the same value
    again = decode_message(result.encode())
    assert again == result


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_decode_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    _check_decode_result(decode_message(data), data)


@st.composite
def framed_garbage(draw: st.DrawFn) -> bytes:
    """A plausible header (version 1 mostly, right length) in front of random AVP bytes."""
    body = draw(st.binary(max_size=96))
    version = draw(st.sampled_from([1, 1, 1, 0, 2]))
    n = 20 + len(body)
    head = bytes([version]) + n.to_bytes(3, "big") + draw(st.binary(min_size=16, max_size=16))
    return head + body


@FAST
@given(framed_garbage())
def test_decode_never_raises_on_framed_garbage(data: bytes) -> None:
    _check_decode_result(decode_message(data), data)


@FAST
@given(messages(), st.data())
def test_decode_never_raises_on_mutated_messages(case: tuple[Message, list[Node]],
                                                 data: st.DataObject) -> None:
    wire = bytearray(case[0].encode())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(wire) - 1))
        wire[i] = data.draw(st.integers(0, 255))
    result = decode_message(bytes(wire))
    _check_decode_result(result, bytes(wire))
    d = result.message if isinstance(result, DecodeError) else result
    _check_problem(d)


@FAST
@given(st.lists(messages(), min_size=1, max_size=4), st.data())
def test_framer_any_chunking_gives_the_same_frames(cases: list[tuple[Message, list[Node]]],
                                                   data: st.DataObject) -> None:
    wires = [m.encode() for m, _ in cases]
    stream = b"".join(wires)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(stream) - 1)), max_size=12)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    framer = Framer()
    out: list[bytes] = []
    for chunk in chunks:
        out += framer.feed(chunk)
    assert out == wires
    assert framer.pending == 0


# -- the dictionary on messages that look like ours --

KNOWN_AVPS = sorted(D.avps)
KNOWN_COMMANDS = sorted(D.commands)


def _value(code: int, vendor: int) -> st.SearchStrategy[bytes]:
    d = D.avps[(code, vendor)]
    fixed = {AvpType.U32: 4, AvpType.I32: 4, AvpType.ENUM: 4, AvpType.TIME: 4,
             AvpType.U64: 8, AvpType.I64: 8}.get(d.type)
    if fixed:
        exact = st.binary(min_size=fixed, max_size=fixed)
        small = st.integers(0, 3).map(lambda v: v.to_bytes(fixed, "big"))
        return st.one_of(small, exact, st.binary(max_size=9))
    if d.type is AvpType.ADDRESS:
        return st.one_of(st.sampled_from([b"\0\x01\xc0\0\2\1", b"\0\x02" + bytes(16)]),
                         st.binary(max_size=20))
    return st.one_of(st.text(max_size=12).map(str.encode), st.binary(max_size=12))


@st.composite
def dict_avp(draw: st.DrawFn, depth: int = 0) -> Avp:
    if draw(st.integers(0, 9)) == 0:  # now and then an AVP no dictionary knows
        vendor = draw(vendors)
        return Avp(draw(u32), draw(st.binary(max_size=8)), vendor,
                   _with_v(draw(avp_flags), vendor))
    code, vendor = draw(st.sampled_from(KNOWN_AVPS))
    d = D.avps[(code, vendor)]
    usual = (0x80 if vendor else 0) | (0x40 if d.m is not MRule.MUST_NOT else 0)
    flags = draw(st.one_of(st.just(usual), avp_flags.map(lambda f: _with_v(f, vendor))))
    if d.type is AvpType.GROUPED and depth < 3:
        children = draw(st.lists(dict_avp(depth + 1), max_size=4))
        data = b"".join(c.encode() for c in children)
    else:
        data = draw(_value(code, vendor))
    return Avp(code, data, vendor, flags)


def _skeletons() -> list[Message]:
    """Valid requests and answers of every command, to mutate."""
    me = msgs.Identity("mme.localdomain", "localdomain", ("192.0.2.1", "2001:db8::1"),
                       origin_state_id=1)
    cer = msgs.cer(me, msgs.S13_APPLICATIONS, 1, 2)
    dwr, dpr = msgs.dwr(me, 1, 2), msgs.dpr(me, 1, 2)
    ecr = Message(324, 16777252, 0xC0, 1, 2, [
        Avp.utf8(263, "mme;1;2"), Avp.u32(277, 1), Avp.octets(264, b"mme"),
        Avp.octets(296, b"realm"), Avp.octets(283, b"realm"),
        Avp.grouped(1401, [Avp.utf8(1402, "35209900176148", 10415)], 10415)])
    eca = msgs.session_answer(ecr, me, result=[Avp.u32(268, 2001)],
                              before_origin=[Avp.u32(277, 1)],
                              after_origin=[Avp.u32(1445, 0, 10415)])
    out = [cer, msgs.cea(cer, me, msgs.S13_APPLICATIONS, 2001), dwr, msgs.dwa(dwr, me),
           dpr, msgs.dpa(dpr, me), ecr, eca,
           msgs.protocol_error(ecr, me, Problem(3004, [], "busy"))]
    return out


SKELETONS = _skeletons()


def test_skeletons_are_valid() -> None:
    assert [D.check_message(m) for m in SKELETONS] == [None] * len(SKELETONS)


@st.composite
def dict_messages(draw: st.DrawFn) -> Message:
    if draw(st.booleans()):
        # a valid message with a few AVPs added, removed or replaced
        base = draw(st.sampled_from(SKELETONS))
        avps = list(base.avps)
        for _ in range(draw(st.integers(0, 3))):
            op = draw(st.sampled_from(["insert", "delete", "replace", "duplicate"]))
            i = draw(st.integers(0, max(0, len(avps) - 1)))
            if op == "insert" or not avps:
                avps.insert(i, draw(dict_avp()))
            elif op == "delete":
                del avps[i]
            elif op == "replace":
                avps[i] = draw(dict_avp())
            else:
                avps.insert(draw(st.integers(0, len(avps))), avps[i])
        flags = draw(st.sampled_from([base.flags, base.flags, base.flags ^ 0x40,
                                      base.flags ^ 0x20, base.flags | 0x10]))
        return Message(base.code, base.app_id, flags, base.hbh, base.e2e, avps)
    code, app = draw(st.sampled_from(KNOWN_COMMANDS))
    if draw(st.integers(0, 9)) == 0:
        code = draw(st.integers(0, 2**24 - 1))
    flags = draw(st.sampled_from([0x80, 0xC0, 0x00, 0x40, 0x60, 0x20, 0xE0]))
    return Message(code, app, flags, draw(u32), draw(u32),
                   draw(st.lists(dict_avp(), max_size=10)))


def _check_problem(msg: Message) -> None:
    before = copy.deepcopy(msg)
    problem = D.check_message(msg)
    assert msg == before  # checking never changes the message
    if problem is None:
        return
    assert isinstance(problem, Problem)
    assert 3000 <= problem.result_code < 6000
    if problem.failed:
        Avp.grouped(279, problem.failed).encode()  # the Failed-AVP can be built and sent


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dict_messages())
def test_check_message_never_raises(msg: Message) -> None:
    # what we check is what a peer would see after a trip over the wire
    assert decode_message(msg.encode()) == msg
    _check_problem(msg)


@FAST
@given(framed_garbage())
def test_check_message_never_raises_on_decoded_garbage(data: bytes) -> None:
    result = decode_message(data)
    if isinstance(result, Message):
        _check_problem(result)
