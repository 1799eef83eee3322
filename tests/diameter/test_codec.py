"""Codec: framing, decode errors (RFC 6733 7.1.5, 7.2), padding and the data types (4.2-4.3)."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable

import pytest

from eir.diameter.codec import (
    Avp,
    AvpLengthError,
    DecodeError,
    Framer,
    FramingError,
    Message,
    decode_avps,
    decode_message,
    encode_header,
)
from eir.diameter.constants import AvpCode, ResultCode

TGPP = 10415


def ecr(hbh: int = 0x01020304, imei: str = "35209900176148") -> Message:
    return Message(324, 16777252, 0xC0, hbh, 0x0A0B0C0D, [
        Avp.utf8(263, "mme.localdomain;1;2"),
        Avp.u32(277, 1),
        Avp.octets(264, b"mme.localdomain"),
        Avp.octets(296, b"localdomain"),
        Avp.octets(283, b"localdomain"),
        Avp.grouped(1401, [Avp.utf8(1402, imei, TGPP), Avp.utf8(1403, "00", TGPP)], TGPP),
        Avp.utf8(1, "401017000000001"),
    ])


def frame(body: bytes, *, length: int | None = None, version: int = 1, flags: int = 0xC0,
          code: int = 324, app: int = 16777252, hbh: int = 7, e2e: int = 9) -> bytes:
    """A header (length = 20 + len(body) unless given) followed by raw AVP bytes."""
    n = 20 + len(body) if length is None else length
    return encode_header(n, flags, code, app, hbh, e2e, version) + body


def raw_avp(code: int, flags: int, length: int, rest: bytes = b"") -> bytes:
    return struct.pack("!II", code, (flags << 24) | length) + rest


# ------------------------------------------------------------------ Framer

def test_framer_message_split_at_every_byte_boundary() -> None:
    wire = ecr().encode()
    for cut in range(1, len(wire)):
        f = Framer()
        assert f.feed(wire[:cut]) == []
        assert f.pending == cut
        assert f.feed(wire[cut:]) == [wire]
        assert f.pending == 0


def test_framer_one_byte_at_a_time() -> None:
    wires = [ecr(i).encode() for i in range(3)]
    f = Framer()
    out: list[bytes] = []
    for b in b"".join(wires):
        out += f.feed(bytes([b]))
    assert out == wires
    assert f.pending == 0


def test_framer_several_messages_in_one_feed() -> None:
    wires = [ecr(i, imei=str(10**13 + i)).encode() for i in range(4)]
    tail = ecr(99).encode()
    f = Framer()
    assert f.feed(b"".join(wires) + tail[:30]) == wires
    assert f.pending == 30
    assert f.feed(tail[30:]) == [tail]


def test_framer_keeps_frames_it_cannot_decode() -> None:
    # framing only reads the length: version and alignment are the decoder's business
    bad_version = frame(b"", version=2)
    odd = frame(b"\0\0", length=22)
    f = Framer()
    assert f.feed(bad_version + odd) == [bad_version, odd]


@pytest.mark.parametrize("length", [0, 1, 19])
def test_framer_length_below_header_size_raises(length: int) -> None:
    f = Framer()
    good = ecr().encode()
    bad = frame(b"", length=length)
    assert f.feed(bad[:3]) == []  # the length is not complete yet
    with pytest.raises(FramingError):
        f.feed(bad[3:])
    # a bad length behind a good message in the same read: the good one is still
    # delivered, framing is lost all the same, and every later feed says so
    f2 = Framer()
    assert f2.feed(good + bad) == [good]
    assert f2.lost is not None
    with pytest.raises(FramingError):
        f2.feed(good)


def test_framer_length_above_max_raises() -> None:
    f = Framer(max_len=256)
    assert f.feed(frame(b"\0" * 236)) == [frame(b"\0" * 236)]  # exactly max_len is fine
    with pytest.raises(FramingError):
        f.feed(frame(b"\0" * 240))
    with pytest.raises(FramingError):
        Framer().feed(b"\x01\xff\xff\xff")  # 16 MiB is above the default limit


# ------------------------------------------------------------------ decode errors

def test_decode_good_message_and_memoryview() -> None:
    wire = ecr().encode()
    for buf in (wire, memoryview(wire)):
        msg = decode_message(buf)
        assert isinstance(msg, Message)
        assert msg == ecr()


def test_bad_version_is_5011_and_keeps_the_header() -> None:
    err = decode_message(frame(Avp.u32(268, 2001).encode(), version=2, hbh=0x11, e2e=0x22))
    assert isinstance(err, DecodeError)
    assert err.result_code == ResultCode.UNSUPPORTED_VERSION == 5011
    m = err.message
    assert (m.version, m.code, m.app_id, m.flags, m.hbh, m.e2e) == (2, 324, 16777252, 0xC0,
                                                                    0x11, 0x22)
    assert err.failed_avp is None


def test_length_not_multiple_of_4_is_5015() -> None:
    body = raw_avp(264, 0x40, 10, b"ab")  # last AVP without its padding
    err = decode_message(frame(body))
    assert isinstance(err, DecodeError)
    assert err.result_code == ResultCode.INVALID_MESSAGE_LENGTH == 5015
    assert (err.message.hbh, err.message.e2e) == (7, 9)


@pytest.mark.parametrize("declared", [20, 24, 36, 40])
def test_length_field_not_the_frame_size_is_5015(declared: int) -> None:
    wire = frame(Avp.u32(268, 2001).encode(), length=declared)  # 32 bytes really
    err = decode_message(wire)
    assert isinstance(err, DecodeError)
    assert err.result_code == 5015


def test_frame_shorter_than_a_header_is_5015() -> None:
    err = decode_message(b"\x01\x00\x00\x10" + b"\0" * 12)
    assert isinstance(err, DecodeError) and err.result_code == 5015


def test_avp_length_below_8_is_5014_with_the_header() -> None:
    first = Avp.u32(268, 2001).encode()
    err = decode_message(frame(first + raw_avp(264, 0x40, 7, b"\0" * 8)))
    assert isinstance(err, DecodeError)
    assert err.result_code == ResultCode.INVALID_AVP_LENGTH == 5014
    assert err.failed_avp == Avp(264, b"", 0, 0x40)
    assert err.message.avps == [Avp.u32(268, 2001)]  # what was read before the bad AVP


def test_avp_overrunning_the_message_is_5014() -> None:
    err = decode_message(frame(raw_avp(1402, 0xC0, 40, struct.pack("!I", TGPP) + b"1234")))
    assert isinstance(err, DecodeError)
    assert err.result_code == 5014
    f = err.failed_avp
    assert f is not None
    assert (f.code, f.vendor, f.flags) == (1402, TGPP, 0xC0)
    assert f.data == b"\0\0\0\0"  # zero-filled minimal payload (RFC 6733 7.1.5)


@pytest.mark.parametrize("length", [8, 9, 11])
def test_vendor_avp_shorter_than_12_is_5014(length: int) -> None:
    err = decode_message(frame(raw_avp(1445, 0xC0, length, struct.pack("!II", TGPP, 0))))
    assert isinstance(err, DecodeError)
    assert err.result_code == 5014
    assert err.failed_avp is not None
    assert (err.failed_avp.code, err.failed_avp.vendor, err.failed_avp.flags) == (
        1445, TGPP, 0xC0)


def test_vendor_avp_header_cut_by_the_end_of_message_is_5014() -> None:
    # V set but only 8 bytes left: there is no room for the Vendor-ID
    err = decode_message(frame(raw_avp(1445, 0xC0, 16)))
    assert isinstance(err, DecodeError)
    assert err.result_code == 5014
    assert err.failed_avp is not None and err.failed_avp.code == 1445


def test_trailing_bytes_shorter_than_an_avp_header_are_5014() -> None:
    err = decode_message(frame(Avp.u32(268, 2001).encode() + b"\0\0\x01\x08"))
    assert isinstance(err, DecodeError)
    assert err.result_code == 5014
    assert err.failed_avp is not None and err.failed_avp.code == 264


def test_bad_inner_length_in_grouped_avp() -> None:
    inner = raw_avp(1402, 0xC0, 30, struct.pack("!I", TGPP) + b"12345678")  # 20 bytes really
    grouped = raw_avp(1401, 0xC0, 12 + len(inner), struct.pack("!I", TGPP) + inner)
    msg = decode_message(frame(grouped))
    assert isinstance(msg, Message)  # the message frames: the group's own length is right
    result = decode_avps(msg.avps[0].data)
    assert isinstance(result, AvpLengthError)
    assert (result.avp.code, result.avp.vendor) == (1402, TGPP)
    with pytest.raises(AvpLengthError):
        msg.avps[0].children()


# ------------------------------------------------------------------ padding

@pytest.mark.parametrize("n", range(9))
@pytest.mark.parametrize("vendor", [0, TGPP])
def test_avp_length_excludes_padding(n: int, vendor: int) -> None:
    data = bytes(range(1, n + 1))
    wire = Avp.octets(1, data, vendor).encode()
    hlen = 12 if vendor else 8
    assert int.from_bytes(wire[5:8], "big") == hlen + n
    assert len(wire) == hlen + n + (-n % 4)
    assert wire[hlen + n:] == b"\0" * (-n % 4)
    assert decode_avps(wire) == [Avp.octets(1, data, vendor)]


def test_message_length_includes_padding() -> None:
    wire = Message(280, 0, 0x80, 1, 2, [Avp.octets(264, b"abcde"), Avp.octets(296, b"r")]).encode()
    # 20 header + (8+5 -> 16) + (8+1 -> 12)
    assert len(wire) == 48
    assert int.from_bytes(wire[1:4], "big") == 48


def test_grouped_length_includes_inner_padding() -> None:
    g = Avp.grouped(284, [Avp.octets(280, b"h"), Avp.octets(33, b"st")])
    wire = g.encode()
    # inner AVPs take 12 + 12 bytes, each padded, the last one included
    assert int.from_bytes(wire[5:8], "big") == 8 + 24
    assert len(wire) == 32
    (back,) = decode_avps(wire)
    assert back.children() == [Avp.octets(280, b"h"), Avp.octets(33, b"st")]


def test_padding_inside_the_message_is_skipped() -> None:
    avps = [Avp.octets(264, b"abc"), Avp.octets(296, b"realm")]
    msg = decode_message(Message(280, 0, 0x80, 1, 2, avps).encode())
    assert isinstance(msg, Message)
    assert [a.data for a in msg.avps] == [b"abc", b"realm"]


# ------------------------------------------------------------------ data types

INT_CASES = [
    (Avp.u32, Avp.as_u32, "!I", [0, 1, 2001, 2**32 - 1]),
    (Avp.i32, Avp.as_i32, "!i", [-(2**31), -1, 0, 2**31 - 1]),
    (Avp.u64, Avp.as_u64, "!Q", [0, 2**63, 2**64 - 1]),
]


@pytest.mark.parametrize(("make", "read", "fmt", "values"), INT_CASES)
@pytest.mark.parametrize("vendor", [0, TGPP])
def test_integer_types_round_trip(make: Callable[..., Avp], read: Callable[[Avp], int],
                                  fmt: str, values: list[int], vendor: int) -> None:
    for v in values:
        avp = make(500, v, vendor)
        assert avp.data == struct.pack(fmt, v)
        wire = avp.encode()
        assert int.from_bytes(wire[5:8], "big") == (12 if vendor else 8) + struct.calcsize(fmt)
        (back,) = decode_avps(wire)
        assert read(back) == v
        assert back == avp


@pytest.mark.parametrize("v", [-(2**63), -1, 0, 2**63 - 1])
def test_integer64_round_trip(v: int) -> None:
    (back,) = decode_avps(Avp.i64(501, v).encode())
    assert back.data == struct.pack("!q", v)
    assert int.from_bytes(back.data, "big", signed=True) == v


@pytest.mark.parametrize("s", ["", "a", "mme.localdomain", "ünïcødé ✓", "日本"])
def test_utf8_round_trip(s: str) -> None:
    avp = Avp.utf8(1, s)
    wire = avp.encode()
    assert int.from_bytes(wire[5:8], "big") == 8 + len(s.encode())  # the length is in octets
    (back,) = decode_avps(wire)
    assert back.as_str() == s


@pytest.mark.parametrize("data", [b"", b"\0", b"\xff\x00\xfe", bytes(range(256))])
def test_octets_round_trip(data: bytes) -> None:
    (back,) = decode_avps(Avp.octets(33, data).encode())
    assert back.data == data


@pytest.mark.parametrize(("addr", "raw"), [
    ("192.0.2.1", "0001c0000201"),
    ("0.0.0.0", "000100000000"),
    ("2001:db8::1", "000220010db8000000000000000000000001"),
    ("::ffff:192.0.2.1", "000200000000000000000000ffffc0000201"),
])
def test_address_round_trip(addr: str, raw: str) -> None:
    avp = Avp.address(257, addr)
    assert avp.data.hex() == raw  # 2-byte IANA family, then the address
    (back,) = decode_avps(avp.encode())
    assert ipaddress.ip_address(back.as_address()) == ipaddress.ip_address(addr)


def test_grouped_round_trip_nested_with_vendors() -> None:
    inner = Avp.grouped(1401, [Avp.utf8(1402, "35209900176148", TGPP),
                               Avp.u32(999, 5, 12345, mandatory=False)], TGPP)
    outer = Avp.grouped(279, [inner, Avp.u32(268, 5005)])
    msg = Message(324, 16777252, 0x40, 1, 2, [outer])
    back = decode_message(msg.encode())
    assert isinstance(back, Message)
    assert back == msg
    (o,) = back.avps
    i, rc = o.children()
    assert rc.as_u32() == 5005
    assert (i.code, i.vendor, i.flags) == (1401, TGPP, 0xC0)
    imei = i.find(1402, TGPP)
    assert imei is not None and imei.as_str() == "35209900176148"
    assert i.find(1402) is None  # same code, no vendor: a different AVP
    other = i.find(999, 12345)
    assert other is not None and other.flags == 0x80 and other.as_u32() == 5


def test_header_fields_and_flags_round_trip() -> None:
    for flags in (0x00, 0x80, 0xC0, 0x60, 0x90, 0xFF):
        msg = Message(0xFFFFFF, 0xFFFFFFFF, flags, 0xFFFFFFFF, 0, [Avp.u32(268, 1)])
        back = decode_message(msg.encode())
        assert back == msg


def test_avp_flag_bits_are_kept_as_received() -> None:
    # P bit and reserved bits survive decoding, so validation sees what the peer sent
    wire = raw_avp(264, 0x40 | 0x20 | 0x01, 11, b"abc\0")
    (back,) = decode_avps(wire)
    assert back.flags == 0x61
    assert back.encode() == wire


def test_v_bit_with_zero_vendor_id_reencodes_as_received() -> None:
    wire = raw_avp(264, 0xC0, 15, b"\0\0\0\0abc\0")
    (back,) = decode_avps(wire)
    assert (back.vendor, back.flags, back.data) == (0, 0xC0, b"abc")
    assert back.encode() == wire


def test_message_find_and_find_all() -> None:
    msg = Message(257, 0, 0x80, 1, 2, [Avp.u32(265, 10415), Avp.u32(265, 5535),
                                       Avp.u32(266, 1, TGPP), Avp.u32(266, 2)])
    assert [a.as_u32() for a in msg.find_all(265)] == [10415, 5535]
    found = msg.find(266)
    assert found is not None and found.as_u32() == 2
    found_v = msg.find(266, TGPP)
    assert found_v is not None and found_v.as_u32() == 1
    assert msg.find(AvpCode.ORIGIN_HOST) is None


@pytest.mark.parametrize(("avp", "reader"), [
    (Avp(268, b"\0\0\0"), Avp.as_u32),
    (Avp(268, b"\0\0\0\0\0"), Avp.as_u32),
    (Avp(273, b""), Avp.as_i32),
    (Avp(622, b"\0\0\0\0"), Avp.as_u64),
    (Avp(257, b"\0"), Avp.as_address),
    (Avp(257, b"\0\x03\x01\x02\x03\x04"), Avp.as_address),
    (Avp(257, b"\0\x01\x01\x02\x03"), Avp.as_address),
    (Avp(257, b"\0\x02\x01\x02\x03\x04"), Avp.as_address),
    (Avp(1, b"\xff\xfe"), Avp.as_str),
])
def test_readers_raise_value_error(avp: Avp, reader: Callable[[Avp], object]) -> None:
    with pytest.raises(ValueError):
        reader(avp)
