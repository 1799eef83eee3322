"""Bytes <-> Diameter messages: header, AVPs, padding and stream framing.

Owns the wire format of RFC 6733 section 3 (header), 4.1 (AVP header and
padding) and 4.2-4.3 (data types), and framing on the 3-byte Message Length.
Decoding never raises on bad bytes: structural problems come back as a
``DecodeError`` that carries what an error answer needs (RFC 6733 7.2:
hop-by-hop and end-to-end ids, the AVPs read so far, the Failed-AVP).
Grammar and value checks live in ``dictionary``; this module knows nothing
of particular AVPs.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from .constants import (
    AVP_HEADER_LEN,
    AVP_VENDOR_BIT,
    AVP_VENDOR_HEADER_LEN,
    DIAMETER_VERSION,
    HEADER_LEN,
    AvpFlag,
    CmdFlag,
    ResultCode,
)

_HDR = struct.Struct("!I I I I I")  # version|length, flags|code, app, hbh, e2e
_AVP = struct.Struct("!I I")  # code, flags|length
_AVP_V = struct.Struct("!I I I")  # code, flags|length, vendor
_U32 = struct.Struct("!I")
_I32 = struct.Struct("!i")
_U64 = struct.Struct("!Q")
_I64 = struct.Struct("!q")

_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")

# NTP epoch (1900-01-01) to Unix epoch (1970-01-01), RFC 6733 4.3 (Time).
NTP_UNIX_OFFSET = 2208988800


def pad_len(n: int) -> int:
    return (4 - n % 4) % 4


@dataclass(slots=True)
class Avp:
    """One AVP as it is on the wire: code, flags, vendor (0 = none) and raw data.

    The V flag is derived from ``vendor`` when encoding (a received AVP that
    had V with a zero Vendor-ID keeps both, so it re-encodes as received);
    ``flags`` keeps the received bits so validation can see exactly what the
    peer sent.
    """

    code: int
    data: bytes = b""
    vendor: int = 0
    flags: int = AvpFlag.MANDATORY

    # -- constructors for the base data types (RFC 6733 4.2-4.3) --
    @classmethod
    def u32(cls, code: int, value: int, vendor: int = 0, mandatory: bool = True) -> Avp:
        return cls(code, _U32.pack(value), vendor, _flags(vendor, mandatory))

    @classmethod
    def i32(cls, code: int, value: int, vendor: int = 0, mandatory: bool = True) -> Avp:
        return cls(code, _I32.pack(value), vendor, _flags(vendor, mandatory))

    @classmethod
    def u64(cls, code: int, value: int, vendor: int = 0, mandatory: bool = True) -> Avp:
        return cls(code, _U64.pack(value), vendor, _flags(vendor, mandatory))

    @classmethod
    def i64(cls, code: int, value: int, vendor: int = 0, mandatory: bool = True) -> Avp:
        return cls(code, _I64.pack(value), vendor, _flags(vendor, mandatory))

    @classmethod
    def octets(cls, code: int, value: bytes, vendor: int = 0, mandatory: bool = True) -> Avp:
        return cls(code, bytes(value), vendor, _flags(vendor, mandatory))

    @classmethod
    def utf8(cls, code: int, value: str, vendor: int = 0, mandatory: bool = True) -> Avp:
        return cls(code, value.encode("utf-8"), vendor, _flags(vendor, mandatory))

    @classmethod
    def address(cls, code: int, value: str, vendor: int = 0, mandatory: bool = True) -> Avp:
        ip = ipaddress.ip_address(value)
        family = 1 if ip.version == 4 else 2  # IANA address family numbers
        return cls(code, struct.pack("!H", family) + ip.packed, vendor, _flags(vendor, mandatory))

    @classmethod
    def grouped(
        cls, code: int, children: Iterable[Avp], vendor: int = 0, mandatory: bool = True
    ) -> Avp:
        return cls(code, encode_avps(children), vendor, _flags(vendor, mandatory))

    # -- readers; they raise ValueError, which the dictionary turns into 5004/5014 --
    def as_u32(self) -> int:
        return _unpack(_U32, self.data)

    def as_i32(self) -> int:
        return _unpack(_I32, self.data)

    def as_u64(self) -> int:
        return _unpack(_U64, self.data)

    def as_str(self) -> str:
        return self.data.decode("utf-8")

    def as_address(self) -> str:
        if len(self.data) < 2:
            raise ValueError("address too short")
        family = int.from_bytes(self.data[:2], "big")
        raw = self.data[2:]
        if family == 1 and len(raw) == 4:
            return str(ipaddress.IPv4Address(raw))
        if family == 2 and len(raw) == 16:
            return str(ipaddress.IPv6Address(raw))
        raise ValueError(f"unsupported address family {family} / length {len(raw)}")

    def children(self) -> list[Avp]:
        """Inner AVPs of a Grouped AVP; raises AvpLengthError when they do not parse."""
        result = decode_avps(self.data)
        if isinstance(result, AvpLengthError):
            raise result
        return result

    def find(self, code: int, vendor: int = 0) -> Avp | None:
        for child in self.children():
            if child.code == code and child.vendor == vendor:
                return child
        return None

    @property
    def mandatory(self) -> bool:
        return bool(self.flags & AvpFlag.MANDATORY)

    def encode(self) -> bytes:
        return encode_avp(self)


def _unpack(fmt: struct.Struct, data: bytes) -> int:
    # struct.error is not a ValueError: check the size so readers raise what they promise
    if len(data) != fmt.size:
        raise ValueError(f"{len(data)} data bytes, {fmt.size} expected")
    return int(fmt.unpack(data)[0])


def _flags(vendor: int, mandatory: bool) -> int:
    return (AvpFlag.VENDOR if vendor else 0) | (AvpFlag.MANDATORY if mandatory else 0)


@dataclass(slots=True)
class Message:
    """A Diameter message: header fields and AVPs in wire order."""

    code: int
    app_id: int = 0
    flags: int = 0
    hbh: int = 0
    e2e: int = 0
    avps: list[Avp] = field(default_factory=list)
    version: int = DIAMETER_VERSION

    @property
    def is_request(self) -> bool:
        return bool(self.flags & CmdFlag.REQUEST)

    @property
    def is_error(self) -> bool:
        return bool(self.flags & CmdFlag.ERROR)

    @property
    def is_proxiable(self) -> bool:
        return bool(self.flags & CmdFlag.PROXIABLE)

    def find(self, code: int, vendor: int = 0) -> Avp | None:
        for avp in self.avps:
            if avp.code == code and avp.vendor == vendor:
                return avp
        return None

    def find_all(self, code: int, vendor: int = 0) -> list[Avp]:
        return [a for a in self.avps if a.code == code and a.vendor == vendor]

    def encode(self) -> bytes:
        return encode_message(self)


def encode_avp(avp: Avp) -> bytes:
    flags = avp.flags & ~AvpFlag.VENDOR
    n = len(avp.data)
    if avp.vendor or avp.flags & AvpFlag.VENDOR:
        head = _AVP_V.pack(avp.code, ((flags | AvpFlag.VENDOR) << 24) | (n + 12), avp.vendor)
    else:
        head = _AVP.pack(avp.code, (flags << 24) | (n + 8))
    return head + avp.data + _PAD[n & 3]


def encode_avps(avps: Iterable[Avp]) -> bytes:
    return b"".join(encode_avp(a) for a in avps)


def encode_header(length: int, flags: int, code: int, app_id: int, hbh: int, e2e: int,
                  version: int = DIAMETER_VERSION) -> bytes:
    return _HDR.pack((version << 24) | length, (flags << 24) | code, app_id, hbh, e2e)


def encode_message(msg: Message) -> bytes:
    body = encode_avps(msg.avps)
    return encode_header(HEADER_LEN + len(body), msg.flags, msg.code, msg.app_id, msg.hbh,
                         msg.e2e, msg.version) + body


class AvpLengthError(Exception):
    """An AVP whose length field cannot be right (RFC 6733 7.1.5, 5014).

    ``avp`` is the offending AVP's header with a zero-filled payload, as
    RFC 6733 7.1.5 allows when the length itself is wrong; ``parsed`` are
    the AVPs that came before it.
    """

    def __init__(self, avp: Avp, parsed: list[Avp]) -> None:
        super().__init__(f"invalid length in AVP {avp.code}")
        self.avp = avp
        self.parsed = parsed


def decode_avps(buf: bytes | memoryview, start: int = 0, end: int | None = None
                ) -> list[Avp] | AvpLengthError:
    """Split ``buf[start:end]`` into AVPs; every AVP must fit, padding included."""
    if end is None:
        end = len(buf)
    avps: list[Avp] = []
    pos = start
    unpack = _AVP.unpack_from
    while pos < end:
        if end - pos < AVP_HEADER_LEN:
            code = int.from_bytes(bytes(buf[pos:pos + 4]).ljust(4, b"\0"), "big")
            return AvpLengthError(Avp(code, b"", 0, 0), avps)
        code, fl = unpack(buf, pos)
        flags = fl >> 24
        length = fl & 0xFFFFFF
        if flags & AVP_VENDOR_BIT:
            if end - pos < AVP_VENDOR_HEADER_LEN or length < AVP_VENDOR_HEADER_LEN:
                vendor = _U32.unpack_from(buf, pos + 8)[0] if end - pos >= 12 else 0
                return AvpLengthError(Avp(code, b"", vendor, flags), avps)
            vendor = _U32.unpack_from(buf, pos + 8)[0]
            hlen = AVP_VENDOR_HEADER_LEN
        else:
            if length < AVP_HEADER_LEN:
                return AvpLengthError(Avp(code, b"", 0, flags), avps)
            vendor = 0
            hlen = AVP_HEADER_LEN
        padded = length + ((4 - length % 4) % 4)
        if pos + padded > end:
            # 7.1.5: the length exceeds the message; report a zero-filled payload of
            # the minimum length (4 bytes covers every fixed-size base type bar 64-bit)
            return AvpLengthError(Avp(code, b"\0" * 4, vendor, flags), avps)
        avps.append(Avp(code, bytes(buf[pos + hlen:pos + length]), vendor, flags))
        pos += padded
    return avps


@dataclass(slots=True)
class DecodeError:
    """A framed message that cannot be decoded into AVPs.

    Carries the header and the AVPs read before the problem, so that the
    caller can still build the answer RFC 6733 7.2 requires.
    """

    result_code: int
    message: Message
    failed_avp: Avp | None = None
    reason: str = ""


def decode_message(frame: bytes | memoryview) -> Message | DecodeError:
    """Decode one framed message (exactly Message Length bytes). Never raises."""
    if len(frame) < HEADER_LEN:
        return DecodeError(ResultCode.INVALID_MESSAGE_LENGTH, Message(0), reason="short header")
    vl, fc, app_id, hbh, e2e = _HDR.unpack_from(frame, 0)
    version = vl >> 24
    length = vl & 0xFFFFFF
    msg = Message(fc & 0xFFFFFF, app_id, fc >> 24, hbh, e2e, [], version)
    if version != DIAMETER_VERSION:
        return DecodeError(ResultCode.UNSUPPORTED_VERSION, msg, reason=f"version {version}")
    if length != len(frame) or length % 4:
        return DecodeError(ResultCode.INVALID_MESSAGE_LENGTH, msg,
                           reason=f"message length {length} not a multiple of 4")
    result = decode_avps(frame, HEADER_LEN, length)
    if isinstance(result, AvpLengthError):
        msg.avps = result.parsed
        return DecodeError(ResultCode.INVALID_AVP_LENGTH, msg, result.avp,
                           reason=f"AVP {result.avp.code}: invalid length")
    msg.avps = result
    return msg


class FramingError(Exception):
    """The stream can no longer be split into messages (RFC 6733 2.1: abort)."""


class Framer:
    """Splits a byte stream into whole messages on the 3-byte Message Length.

    Keeps any partial message for the next ``feed``; a message split across
    reads or several messages in one read are handled alike. A length below
    the header size, or above ``max_len``, means framing is lost.
    """

    __slots__ = ("_buf", "lost", "max_len")

    def __init__(self, max_len: int = 1 << 20) -> None:
        self._buf = bytearray()
        self.max_len = max_len
        self.lost: str | None = None  # why framing was lost, once it is

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Whole messages so far. Raises FramingError once framing is lost; the
        messages before the break in the same read are returned first, and
        ``lost`` then says why (the next feed raises)."""
        if self.lost is not None:
            raise FramingError(self.lost)
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        pos = 0
        n = len(buf)
        while n - pos >= 4:
            length = int.from_bytes(buf[pos + 1:pos + 4], "big")
            if length < HEADER_LEN or length > self.max_len:
                self.lost = f"message length {length} cannot frame a message"
                del buf[:]
                if frames:
                    return frames  # the whole messages before the break still count
                raise FramingError(self.lost)
            if n - pos < length:
                break
            frames.append(bytes(buf[pos:pos + length]))
            pos += length
        if pos:
            del buf[:pos]
        return frames
