"""Readable, AVP-by-AVP dumps of Diameter wire bytes, in the style of go-diameter's tests.

One line for the header, then one line per AVP (inner AVPs of a Grouped AVP
indented under it)::

    01 0000cc c0 000144 01000024 1a2b3c4d 00c0ffee  ME-Identity-Check Request R P
    00000107 40 00001b           Session-Id "mme.localdomain;1700000000;1"
    00000579 c0 000038 000028af  Terminal-Information
    0000057a c0 00001a 000028af    IMEI "35209900176148"

The columns are the raw header fields in hex: code, flags, length and, when
the V bit is set, the Vendor-ID. The walk over the bytes is done here with
``struct`` (not with ``eir.diameter.codec``) so a dump shows what is on the
wire even when our decoder disagrees; names and types come from the
dictionary. ``test_golden.py`` keeps these dumps as comments above each
golden hex literal and checks that they still match.

Run ``python tests/diameter/diameter_dump.py HEX`` to print the comment block
for a message.
"""

from __future__ import annotations

import ipaddress
import json
import struct
import sys
from enum import IntEnum

from eir.diameter.constants import (
    AuthSessionState,
    DisconnectCause,
    EquipmentStatus,
    ExperimentalResultCode,
    ResultCode,
)
from eir.diameter.dictionary import AvpType, default_dictionary

_DICT = default_dictionary()

_COMMANDS = {257: "Capabilities-Exchange", 280: "Device-Watchdog", 282: "Disconnect-Peer",
             324: "ME-Identity-Check"}

_ENUMS: dict[str, type[IntEnum]] = {
    "Result-Code": ResultCode,
    "Experimental-Result-Code": ExperimentalResultCode,
    "Equipment-Status": EquipmentStatus,
    "Auth-Session-State": AuthSessionState,
    "Disconnect-Cause": DisconnectCause,
}

_INT_TYPES = {AvpType.U32: ("!I", 4), AvpType.I32: ("!i", 4), AvpType.ENUM: ("!i", 4),
              AvpType.TIME: ("!I", 4), AvpType.U64: ("!Q", 8), AvpType.I64: ("!q", 8)}

_FLAG_NAMES = ((0x80, "R"), (0x40, "P"), (0x20, "E"), (0x10, "T"))


def _value(name: str, typ: AvpType | None, data: bytes) -> str:
    if typ in _INT_TYPES:
        fmt, size = _INT_TYPES[typ]
        if len(data) != size:
            return f"!! {len(data)} bytes: {data.hex()}"
        v = struct.unpack(fmt, data)[0]
        enum = _ENUMS.get(name)
        if enum is not None and v in enum._value2member_map_:
            return f"{v} {enum(v).name}"
        return str(v)
    if typ in (AvpType.UTF8, AvpType.IDENTITY, AvpType.URI):
        try:
            return json.dumps(data.decode("utf-8"))
        except UnicodeDecodeError:
            return f"!! not UTF-8: {data.hex()}"
    if typ is AvpType.ADDRESS:
        family = int.from_bytes(data[:2], "big")
        if family == 1 and len(data) == 6:
            return f"IPv4 {ipaddress.IPv4Address(data[2:])}"
        if family == 2 and len(data) == 18:
            return f"IPv6 {ipaddress.IPv6Address(data[2:])}"
        return f"!! address {data.hex()}"
    return data.hex() if data else "(empty)"


def dump_avps(buf: bytes, indent: int = 0) -> list[str]:
    """One line per AVP of ``buf``, recursing into the Grouped AVPs the dictionary knows."""
    lines: list[str] = []
    pos = 0
    pad = "  " * indent
    while pos < len(buf):
        if len(buf) - pos < 8:
            lines.append(f"{pad}!! {len(buf) - pos} trailing bytes: {buf[pos:].hex()}")
            break
        code, fl = struct.unpack_from("!II", buf, pos)
        flags, length = fl >> 24, fl & 0xFFFFFF
        hlen = 12 if flags & 0x80 else 8
        if length < hlen or pos + length > len(buf):
            lines.append(f"{code:08x} {flags:02x} {length:06x}           {pad}!! bad length")
            break
        vendor = struct.unpack_from("!I", buf, pos + 8)[0] if hlen == 12 else 0
        vcol = f"{vendor:08x}" if hlen == 12 else " " * 8
        d = _DICT.avps.get((code, vendor))
        name = d.name if d else f"AVP {code}" + (f"/{vendor}" if vendor else "")
        data = buf[pos + hlen:pos + length]
        head = f"{code:08x} {flags:02x} {length:06x} {vcol}  {pad}{name}"
        if d is not None and d.type is AvpType.GROUPED:
            lines.append(head)
            lines.extend(dump_avps(data, indent + 1))
        else:
            lines.append(f"{head} {_value(name, d.type if d else None, data)}")
        pos += length + (-length % 4)
    return lines


def dump_message(wire: bytes) -> list[str]:
    """The header line, then the AVP lines, of one message."""
    if len(wire) < 20:
        return [f"!! {len(wire)} bytes: {wire.hex()}"]
    vl, fc, app, hbh, e2e = struct.unpack_from("!IIIII", wire, 0)
    flags, code = fc >> 24, fc & 0xFFFFFF
    kind = "Request" if flags & 0x80 else "Answer"
    names = " ".join(n for bit, n in _FLAG_NAMES if flags & bit)
    title = f"{_COMMANDS.get(code, f'command {code}')} {kind}" + (f" {names}" if names else "")
    head = (f"{vl >> 24:02x} {vl & 0xFFFFFF:06x} {flags:02x} {code:06x} {app:08x} "
            f"{hbh:08x} {e2e:08x}  {title}")
    return [head, *dump_avps(wire[20:])]


def comment_block(wire: bytes) -> str:
    return "\n".join(f"# {line}" for line in dump_message(wire))


def hex_literal(wire: bytes, name: str, words_per_line: int = 8) -> str:
    """``NAME = bytes.fromhex(...)`` in 4-byte words, preceded by the dump comment."""
    words = [wire[i:i + 4].hex() for i in range(0, len(wire), 4)]
    rows = [" ".join(words[i:i + words_per_line]) for i in range(0, len(words), words_per_line)]
    body = "\n".join(f'    "{row} "' for row in rows)
    return f"{comment_block(wire)}\n{name} = bytes.fromhex(\n{body}\n)\n"


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(comment_block(bytes.fromhex(arg)))
