"""RFC 6733 base protocol AVPs (section 4.5 table) and commands (sections 5.3-5.5).

Also the few IETF AVPs the EIR meets on S13: DRMP (RFC 7944) and the DOIC
AVPs (RFC 7683 section 7). The command grammars are the RFC's ABNF text.
"""

from __future__ import annotations

from ..dictionary import AvpDef, AvpType, CommandDef, MRule, command_from_abnf, parse_grammar

T = AvpType
MUST, MUST_NOT, MAY = MRule.MUST, MRule.MUST_NOT, MRule.MAY

AVPS: tuple[AvpDef, ...] = (
    AvpDef(1, "User-Name", T.UTF8, spec="RFC 6733 8.14"),
    AvpDef(33, "Proxy-State", T.OCTETS, spec="RFC 6733 6.7.4"),
    AvpDef(257, "Host-IP-Address", T.ADDRESS, spec="RFC 6733 5.3.5"),
    AvpDef(258, "Auth-Application-Id", T.U32, spec="RFC 6733 6.8"),
    AvpDef(259, "Acct-Application-Id", T.U32, spec="RFC 6733 6.9"),
    AvpDef(260, "Vendor-Specific-Application-Id", T.GROUPED, spec="RFC 6733 6.11",
           grammar=parse_grammar("{Vendor-Id} [Auth-Application-Id] [Acct-Application-Id]",
                                 exactly_one_of=("Auth-Application-Id", "Acct-Application-Id"))),
    AvpDef(263, "Session-Id", T.UTF8, spec="RFC 6733 8.8"),
    AvpDef(264, "Origin-Host", T.IDENTITY, spec="RFC 6733 6.3"),
    AvpDef(265, "Supported-Vendor-Id", T.U32, spec="RFC 6733 5.3.6"),
    AvpDef(266, "Vendor-Id", T.U32, spec="RFC 6733 5.3.3"),
    AvpDef(267, "Firmware-Revision", T.U32, m=MUST_NOT, spec="RFC 6733 5.3.4"),
    AvpDef(268, "Result-Code", T.U32, spec="RFC 6733 7.1"),
    AvpDef(269, "Product-Name", T.UTF8, m=MUST_NOT, spec="RFC 6733 5.3.7"),
    AvpDef(273, "Disconnect-Cause", T.ENUM, values=frozenset({0, 1, 2}), spec="RFC 6733 5.4.3"),
    AvpDef(277, "Auth-Session-State", T.ENUM, values=frozenset({0, 1}), spec="RFC 6733 8.11"),
    AvpDef(278, "Origin-State-Id", T.U32, spec="RFC 6733 8.16"),
    AvpDef(279, "Failed-AVP", T.GROUPED, opaque=True, spec="RFC 6733 7.5",
           grammar=parse_grammar("1*{AVP}")),
    AvpDef(280, "Proxy-Host", T.IDENTITY, spec="RFC 6733 6.7.3"),
    AvpDef(281, "Error-Message", T.UTF8, m=MUST_NOT, spec="RFC 6733 7.3"),
    AvpDef(282, "Route-Record", T.IDENTITY, spec="RFC 6733 6.7.1"),
    AvpDef(283, "Destination-Realm", T.IDENTITY, spec="RFC 6733 6.6"),
    AvpDef(284, "Proxy-Info", T.GROUPED, spec="RFC 6733 6.7.2",
           grammar=parse_grammar("{Proxy-Host} {Proxy-State} *[AVP]")),
    AvpDef(293, "Destination-Host", T.IDENTITY, spec="RFC 6733 6.5"),
    AvpDef(294, "Error-Reporting-Host", T.IDENTITY, m=MUST_NOT, spec="RFC 6733 7.4"),
    AvpDef(296, "Origin-Realm", T.IDENTITY, spec="RFC 6733 6.4"),
    AvpDef(297, "Experimental-Result", T.GROUPED, spec="RFC 6733 7.6",
           grammar=parse_grammar("{Vendor-Id} {Experimental-Result-Code}")),
    AvpDef(298, "Experimental-Result-Code", T.U32, spec="RFC 6733 7.7"),
    AvpDef(299, "Inband-Security-Id", T.U32, spec="RFC 6733 6.10"),
    # RFC 7944 DRMP: sent without M; accepted either way
    AvpDef(301, "DRMP", T.ENUM, m=MAY, values=frozenset(range(16)), spec="RFC 7944 9.1"),
    # RFC 7683 DOIC: sent with M=0; accepted either way
    AvpDef(621, "OC-Supported-Features", T.GROUPED, m=MAY, spec="RFC 7683 7.1",
           grammar=parse_grammar("[OC-Feature-Vector] *[AVP]")),
    AvpDef(622, "OC-Feature-Vector", T.U64, m=MAY, spec="RFC 7683 7.2"),
    AvpDef(623, "OC-OLR", T.GROUPED, m=MAY, spec="RFC 7683 7.3",
           grammar=parse_grammar("<OC-Sequence-Number> <OC-Report-Type> "
                                 "[OC-Reduction-Percentage] [OC-Validity-Duration] *[AVP]")),
    AvpDef(624, "OC-Sequence-Number", T.U64, m=MAY, spec="RFC 7683 7.4"),
    AvpDef(625, "OC-Validity-Duration", T.U32, m=MAY, spec="RFC 7683 7.5"),
    AvpDef(626, "OC-Report-Type", T.ENUM, m=MAY, values=frozenset({0, 1}), spec="RFC 7683 7.6"),
    AvpDef(627, "OC-Reduction-Percentage", T.U32, m=MAY, spec="RFC 7683 7.7"),
)

COMMANDS: tuple[CommandDef, ...] = (
    command_from_abnf(
        """<CER> ::= <Diameter Header: 257, REQ>
            {Origin-Host} {Origin-Realm} 1*{Host-IP-Address} {Vendor-Id} {Product-Name}
            [Origin-State-Id] *[Supported-Vendor-Id] *[Auth-Application-Id]
            *[Inband-Security-Id] *[Acct-Application-Id] *[Vendor-Specific-Application-Id]
            [Firmware-Revision] *[AVP]""",
        """<CEA> ::= <Diameter Header: 257>
            {Result-Code} {Origin-Host} {Origin-Realm} 1*{Host-IP-Address} {Vendor-Id}
            {Product-Name} [Origin-State-Id] [Error-Message] [Failed-AVP]
            *[Supported-Vendor-Id] *[Auth-Application-Id] *[Inband-Security-Id]
            *[Acct-Application-Id] *[Vendor-Specific-Application-Id] [Firmware-Revision] *[AVP]""",
        "RFC 6733 5.3.1-5.3.2"),
    command_from_abnf(
        """<DWR> ::= <Diameter Header: 280, REQ> {Origin-Host} {Origin-Realm} [Origin-State-Id]
            *[AVP]""",
        """<DWA> ::= <Diameter Header: 280> {Result-Code} {Origin-Host} {Origin-Realm}
            [Error-Message] [Failed-AVP] [Origin-State-Id] *[AVP]""",
        "RFC 6733 5.5.1-5.5.2"),
    command_from_abnf(
        """<DPR> ::= <Diameter Header: 282, REQ> {Origin-Host} {Origin-Realm} {Disconnect-Cause}
            *[AVP]""",
        """<DPA> ::= <Diameter Header: 282> {Result-Code} {Origin-Host} {Origin-Realm}
            [Error-Message] [Failed-AVP] *[AVP]""",
        "RFC 6733 5.4.1-5.4.2"),
)
