"""Independent Diameter decoders (pycrate, scapy) brought to one comparable shape.

A message becomes ``(header, avps)`` with
``header = (version, length, flags, code, app_id, hbh, e2e)`` and each AVP a
tuple ``(code, flags, vendor or None, length, value)``; the value is an int
(Unsigned32, Enumerated), bytes (strings and octets, as on the wire), an IP
address string (Address) or a list of AVPs (Grouped). ``expected_view``
gives the same shape for a ``Message`` we built, from the values we put in
it, so a test can say: "what we meant" == "what pycrate reads off our bytes".
"""

from __future__ import annotations

import ipaddress
from typing import Any

from eir.diameter.codec import Avp, Message
from eir.diameter.dictionary import AvpType, default_dictionary

AvpView = tuple[int, int, int | None, int, Any]
MsgView = tuple[tuple[int, ...], list[AvpView]]

_DICT = default_dictionary()
_INT = {AvpType.U32, AvpType.ENUM, AvpType.I32, AvpType.U64, AvpType.I64, AvpType.TIME}


def _ip(family: int, raw: bytes) -> str:
    if family == 1:
        return str(ipaddress.IPv4Address(raw))
    if family == 2:
        return str(ipaddress.IPv6Address(raw))
    raise ValueError(f"address family {family}")


# -- what we meant: our Message, read with the dictionary types --

def expected_avp(avp: Avp) -> AvpView:
    vendor = avp.vendor or None
    hlen = 12 if vendor else 8
    d = _DICT.avps.get((avp.code, avp.vendor))
    typ = d.type if d else AvpType.OCTETS
    value: Any
    if typ is AvpType.GROUPED:
        value = [expected_avp(c) for c in avp.children()]
    elif typ in _INT:
        value = int.from_bytes(avp.data, "big", signed=typ in (AvpType.I32, AvpType.I64))
    elif typ is AvpType.ADDRESS:
        value = avp.as_address()
    else:
        value = bytes(avp.data)
    flags = (int(avp.flags) & 0x7F) | (0x80 if vendor else 0)
    return (int(avp.code), flags, vendor, hlen + len(avp.data), value)


def expected_view(msg: Message, wire_length: int) -> MsgView:
    header = (msg.version, wire_length, int(msg.flags), int(msg.code), int(msg.app_id),
              msg.hbh, msg.e2e)
    return header, [expected_avp(a) for a in msg.avps]


# -- pycrate (pycrate_diameter.Diameter3GPP) --

def _pycrate_grouped_fallback(blob: bytes) -> list[AvpView]:
    # pycrate's IETF Grouped (Failed-AVP, ...) only knows IETF AVP formats, so a 3GPP
    # Grouped inside one comes back as bytes: parse it again with the 3GPP Grouped.
    from pycrate_diameter.Diameter3GPP import Grouped

    g = Grouped()
    g.from_bytes(blob)
    return [_pycrate_avp(v) for v in g.get_val()]


_PYCRATE_GROUPED = {260, 279, 284, 297, 1401}


def _pycrate_avp(val: list[Any]) -> AvpView:
    hdr, data = val[0], val[1]
    code, v, m, p, reserved, length = hdr[:6]
    vendor = hdr[6] if v else None
    flags = (v << 7) | (m << 6) | (p << 5) | reserved
    value: Any
    if isinstance(data, list) and len(data) == 2 and isinstance(data[0], int) \
            and isinstance(data[1], bytes):
        value = _ip(data[0], data[1])  # Address: [family, bytes]
    elif isinstance(data, list):
        value = [_pycrate_avp(c) for c in data]
    elif isinstance(data, str):
        value = data.encode("utf-8")
    elif isinstance(data, bytes) and code in _PYCRATE_GROUPED:
        value = _pycrate_grouped_fallback(data)
    else:
        value = data
    return (code, flags, vendor, length, value)


def pycrate_view(wire: bytes) -> MsgView:
    from pycrate_diameter.Diameter3GPP import Diameter3GPP

    d = Diameter3GPP()
    d.from_bytes(wire)
    hdr, avps = d.get_val()
    vers, length, r, p, e, t, _reserved, cmd, app, hbh, e2e = hdr
    flags = (r << 7) | (p << 6) | (e << 5) | (t << 4)
    return (vers, length, flags, cmd, app, hbh, e2e), [_pycrate_avp(a) for a in avps]


# -- scapy (scapy.contrib.diameter) --

def _scapy_avp(a: Any) -> AvpView:
    flags = int(a.avpFlags)
    vendor = int(a.avpVnd) if flags & 0x80 else None
    val = a.val if "val" in a.fields else b""
    value: Any
    if type(a).__name__.endswith("Grouped"):
        value = [_scapy_avp(c) for c in (val or [])]
    elif type(a).__name__.endswith("Address"):
        value = _ip(int.from_bytes(val[:2], "big"), val[2:])
    elif isinstance(val, str):
        value = val.encode("utf-8")
    else:
        value = val
    return (int(a.avpCode), flags, vendor, int(a.avpLen), value)


def scapy_view(wire: bytes) -> MsgView:
    from scapy.contrib.diameter import DiamG

    p = DiamG(wire)
    header = (int(p.version), int(p.drLen), int(p.drFlags), int(p.drCode), int(p.drAppId),
              int(p.drHbHId), int(p.drEtEId))
    return header, [_scapy_avp(a) for a in p.avpList]


def find(avps: list[AvpView], code: int) -> AvpView | None:
    return next((a for a in avps if a[0] == code), None)
