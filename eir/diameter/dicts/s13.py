"""S13/S13' ME-Identity-Check: TS 29.272 V16.7 sections 7.2.19-7.2.20 and Table 7.3.1/1.

The 3GPP AVPs carry V and M; a receiver that understands one ignores an M
bit that differs from the table (Table 7.3.1/1, NOTE 2).
"""

from __future__ import annotations

from ..constants import Vendor
from ..dictionary import AvpDef, AvpType, CommandDef, command_from_abnf, parse_grammar

T = AvpType
V = Vendor.TGPP

AVPS: tuple[AvpDef, ...] = (
    AvpDef(1401, "Terminal-Information", T.GROUPED, V, ignore_m_mismatch=True,
           grammar=parse_grammar("[IMEI] [3GPP2-MEID] [Software-Version] *[AVP]"),
           spec="TS 29.272 7.3.3"),
    AvpDef(1402, "IMEI", T.UTF8, V, ignore_m_mismatch=True, spec="TS 29.272 7.3.4"),
    AvpDef(1403, "Software-Version", T.UTF8, V, ignore_m_mismatch=True, spec="TS 29.272 7.3.5"),
    AvpDef(1471, "3GPP2-MEID", T.OCTETS, V, ignore_m_mismatch=True, spec="TS 29.272 7.3.6"),
    AvpDef(1445, "Equipment-Status", T.ENUM, V, ignore_m_mismatch=True,
           values=frozenset({0, 1, 2}), spec="TS 29.272 7.3.51"),
)

COMMANDS: tuple[CommandDef, ...] = (
    command_from_abnf(
        """<ME-Identity-Check-Request> ::= <Diameter Header: 324, REQ, PXY, 16777252>
            <Session-Id> [DRMP] [Vendor-Specific-Application-Id]
            {Auth-Session-State} {Origin-Host} {Origin-Realm} [Destination-Host]
            {Destination-Realm} {Terminal-Information} [User-Name] *[AVP] *[Proxy-Info]
            *[Route-Record]""",
        """<ME-Identity-Check-Answer> ::= <Diameter Header: 324, PXY, 16777252>
            <Session-Id> [DRMP] [Vendor-Specific-Application-Id] [Result-Code]
            [Experimental-Result] {Auth-Session-State} {Origin-Host} {Origin-Realm}
            [Equipment-Status] *[AVP] [Failed-AVP] *[Proxy-Info] *[Route-Record]""",
        "TS 29.272 7.2.19-7.2.20",
        # 7.2.2: VSAI "shall not be sent" in S13 commands and is ignored when received
        ignored=("Vendor-Specific-Application-Id",)),
)
