"""Golden wire bytes for every message the EIR sends or receives on S13.

Each golden is the hex our encoder must produce, with the readable dump
(``diameter_dump.py``) as a comment above it; ``test_comment_matches_bytes``
keeps the two in step. The base messages come from ``eir.diameter.messages``
builders; ECR and ECA are assembled AVP by AVP in the order of the ABNF of
TS 29.272 7.2.19/7.2.20. Two independent decoders, pycrate and scapy, must
read back from our bytes exactly what we put in, and the IMEI,
Equipment-Status and Experimental-Result AVPs must be byte for byte the
examples of PROTOCOL.md 2.3.

To regenerate a comment after a deliberate change:
``python tests/diameter/diameter_dump.py <hex>``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from diameter_dump import comment_block
from oracles import expected_view, find, pycrate_view, scapy_view

from eir.diameter import messages
from eir.diameter.codec import Avp, Message, decode_message
from eir.diameter.constants import (
    Application,
    AvpCode,
    CmdFlag,
    Command,
    DisconnectCause,
    EquipmentStatus,
    ExperimentalResultCode,
    ResultCode,
    Vendor,
)
from eir.diameter.dictionary import Problem, default_dictionary
from eir.diameter.messages import S13_APPLICATIONS, Identity

TGPP = Vendor.TGPP
MME = Identity("mme.localdomain", "localdomain", ("192.0.2.10",), product_name="eir-mme-sim",
               origin_state_id=1700000000)
EIR = Identity("eir.localdomain", "localdomain", ("192.0.2.20", "2001:db8::20"),
               firmware_revision=1)
SESSION_ID = "mme.localdomain;1700000000;1"
IMEI = "35209900176148"
IMSI = "401017000000001"
ECR_HBH, ECR_E2E = 0x1A2B3C4D, 0x00C0FFEE
DICT = default_dictionary()


# ---------------------------------------------------------------- builders

def build_cer() -> Message:
    return messages.cer(MME, S13_APPLICATIONS, 0x00000001, 0x5E000001)


def build_cea() -> Message:
    return messages.cea(build_cer(), EIR, S13_APPLICATIONS, ResultCode.SUCCESS)


def build_dwr() -> Message:
    return messages.dwr(EIR, 0x00000002, 0x5E000002)


def build_dwa() -> Message:
    return messages.dwa(build_dwr(), MME)


def build_dpr() -> Message:
    return messages.dpr(EIR, 0x00000003, 0x5E000003, DisconnectCause.BUSY)


def build_dpa() -> Message:
    return messages.dpa(build_dpr(), MME)


def build_ecr(origin_host_flags: int = 0x40, terminal_information: bool = True) -> Message:
    """TS 29.272 7.2.19: < Session-Id > { Auth-Session-State } { Origin-Host }
    { Origin-Realm } { Destination-Realm } { Terminal-Information } [ User-Name ]"""
    avps = [
        Avp.utf8(AvpCode.SESSION_ID, SESSION_ID),
        Avp.i32(AvpCode.AUTH_SESSION_STATE, 1),
        Avp(AvpCode.ORIGIN_HOST, b"mme.localdomain", 0, origin_host_flags),
        Avp.octets(AvpCode.ORIGIN_REALM, b"localdomain"),
        Avp.octets(AvpCode.DESTINATION_REALM, b"localdomain"),
    ]
    if terminal_information:
        avps.append(Avp.grouped(AvpCode.TERMINAL_INFORMATION, [
            Avp.utf8(AvpCode.IMEI, IMEI, TGPP),
            Avp.utf8(AvpCode.SOFTWARE_VERSION, "00", TGPP),
        ], TGPP))
    avps.append(Avp.utf8(AvpCode.USER_NAME, IMSI))
    return Message(Command.ME_IDENTITY_CHECK, Application.S13,
                   CmdFlag.REQUEST | CmdFlag.PROXIABLE, ECR_HBH, ECR_E2E, avps)


def _eca(result: list[Avp], tail: tuple[Avp, ...] = ()) -> Message:
    """TS 29.272 7.2.20: < Session-Id > [ Result-Code ] [ Experimental-Result ]
    { Auth-Session-State } { Origin-Host } { Origin-Realm } [ Equipment-Status ] [ Failed-AVP ]"""
    return Message(Command.ME_IDENTITY_CHECK, Application.S13, CmdFlag.PROXIABLE,
                   ECR_HBH, ECR_E2E, [
                       Avp.utf8(AvpCode.SESSION_ID, SESSION_ID),
                       *result,
                       Avp.i32(AvpCode.AUTH_SESSION_STATE, 1),
                       Avp.octets(AvpCode.ORIGIN_HOST, b"eir.localdomain"),
                       Avp.octets(AvpCode.ORIGIN_REALM, b"localdomain"),
                       *tail])


def build_eca_status(status: int) -> Message:
    return _eca([Avp.u32(AvpCode.RESULT_CODE, ResultCode.SUCCESS)],
                (Avp.i32(AvpCode.EQUIPMENT_STATUS, status, TGPP),))


def build_eca_unknown() -> Message:
    return _eca([Avp.grouped(AvpCode.EXPERIMENTAL_RESULT, [
        Avp.u32(AvpCode.VENDOR_ID, TGPP),
        Avp.u32(AvpCode.EXPERIMENTAL_RESULT_CODE, ExperimentalResultCode.ERROR_EQUIPMENT_UNKNOWN),
    ])])


# 5005 for an ECR without Terminal-Information: Failed-AVP holds a zero-filled example
TI_EXAMPLE = Avp(AvpCode.TERMINAL_INFORMATION, b"", TGPP, 0xC0)


def build_eca_missing_avp() -> Message:
    return _eca([Avp.u32(AvpCode.RESULT_CODE, ResultCode.MISSING_AVP)],
                (Avp.grouped(AvpCode.FAILED_AVP, [TI_EXAMPLE]),))


# 3009 for an ECR whose Origin-Host lacks the M bit: RFC 6733 7.2 generic grammar, E bit
BAD_ORIGIN_HOST = Avp(AvpCode.ORIGIN_HOST, b"mme.localdomain", 0, 0)


def build_eca_protocol_error() -> Message:
    return Message(Command.ME_IDENTITY_CHECK, Application.S13,
                   CmdFlag.PROXIABLE | CmdFlag.ERROR, ECR_HBH, ECR_E2E, [
                       Avp.utf8(AvpCode.SESSION_ID, SESSION_ID),
                       Avp.octets(AvpCode.ORIGIN_HOST, b"eir.localdomain"),
                       Avp.octets(AvpCode.ORIGIN_REALM, b"localdomain"),
                       Avp.u32(AvpCode.RESULT_CODE, ResultCode.INVALID_AVP_BITS),
                       Avp.grouped(AvpCode.FAILED_AVP, [BAD_ORIGIN_HOST]),
                   ])


# ---------------------------------------------------------------- goldens

# 01 0000a8 80 000101 00000000 00000001 5e000001  Capabilities-Exchange Request R
# 00000108 40 000017           Origin-Host "mme.localdomain"
# 00000128 40 000013           Origin-Realm "localdomain"
# 00000101 40 00000e           Host-IP-Address IPv4 192.0.2.10
# 0000010a 40 00000c           Vendor-Id 0
# 0000010d 00 000013           Product-Name "eir-mme-sim"
# 00000116 40 00000c           Origin-State-Id 1700000000
# 00000109 40 00000c           Supported-Vendor-Id 10415
# 00000104 40 000020           Vendor-Specific-Application-Id
# 0000010a 40 00000c             Vendor-Id 10415
# 00000102 40 00000c             Auth-Application-Id 16777252
GOLDEN_CER = bytes.fromhex(
    "010000a8 80000101 00000000 00000001 5e000001 00000108 40000017 6d6d652e "
    "6c6f6361 6c646f6d 61696e00 00000128 40000013 6c6f6361 6c646f6d 61696e00 "
    "00000101 4000000e 0001c000 020a0000 0000010a 4000000c 00000000 0000010d "
    "00000013 6569722d 6d6d652d 73696d00 00000116 4000000c 6553f100 00000109 "
    "4000000c 000028af 00000104 40000020 0000010a 4000000c 000028af 00000102 "
    "4000000c 01000024 "
)

# 01 0000c8 00 000101 00000000 00000001 5e000001  Capabilities-Exchange Answer
# 0000010c 40 00000c           Result-Code 2001 SUCCESS
# 00000108 40 000017           Origin-Host "eir.localdomain"
# 00000128 40 000013           Origin-Realm "localdomain"
# 00000101 40 00000e           Host-IP-Address IPv4 192.0.2.20
# 00000101 40 00001a           Host-IP-Address IPv6 2001:db8::20
# 0000010a 40 00000c           Vendor-Id 0
# 0000010d 00 00000b           Product-Name "eir"
# 00000109 40 00000c           Supported-Vendor-Id 10415
# 00000104 40 000020           Vendor-Specific-Application-Id
# 0000010a 40 00000c             Vendor-Id 10415
# 00000102 40 00000c             Auth-Application-Id 16777252
# 0000010b 00 00000c           Firmware-Revision 1
GOLDEN_CEA = bytes.fromhex(
    "010000c8 00000101 00000000 00000001 5e000001 0000010c 4000000c 000007d1 "
    "00000108 40000017 6569722e 6c6f6361 6c646f6d 61696e00 00000128 40000013 "
    "6c6f6361 6c646f6d 61696e00 00000101 4000000e 0001c000 02140000 00000101 "
    "4000001a 00022001 0db80000 00000000 00000000 00200000 0000010a 4000000c "
    "00000000 0000010d 0000000b 65697200 00000109 4000000c 000028af 00000104 "
    "40000020 0000010a 4000000c 000028af 00000102 4000000c 01000024 0000010b "
    "0000000c 00000001 "
)

# 01 000040 80 000118 00000000 00000002 5e000002  Device-Watchdog Request R
# 00000108 40 000017           Origin-Host "eir.localdomain"
# 00000128 40 000013           Origin-Realm "localdomain"
GOLDEN_DWR = bytes.fromhex(
    "01000040 80000118 00000000 00000002 5e000002 00000108 40000017 6569722e "
    "6c6f6361 6c646f6d 61696e00 00000128 40000013 6c6f6361 6c646f6d 61696e00 "
)

# 01 000058 00 000118 00000000 00000002 5e000002  Device-Watchdog Answer
# 0000010c 40 00000c           Result-Code 2001 SUCCESS
# 00000108 40 000017           Origin-Host "mme.localdomain"
# 00000128 40 000013           Origin-Realm "localdomain"
# 00000116 40 00000c           Origin-State-Id 1700000000
GOLDEN_DWA = bytes.fromhex(
    "01000058 00000118 00000000 00000002 5e000002 0000010c 4000000c 000007d1 "
    "00000108 40000017 6d6d652e 6c6f6361 6c646f6d 61696e00 00000128 40000013 "
    "6c6f6361 6c646f6d 61696e00 00000116 4000000c 6553f100 "
)

# 01 00004c 80 00011a 00000000 00000003 5e000003  Disconnect-Peer Request R
# 00000108 40 000017           Origin-Host "eir.localdomain"
# 00000128 40 000013           Origin-Realm "localdomain"
# 00000111 40 00000c           Disconnect-Cause 1 BUSY
GOLDEN_DPR = bytes.fromhex(
    "0100004c 8000011a 00000000 00000003 5e000003 00000108 40000017 6569722e "
    "6c6f6361 6c646f6d 61696e00 00000128 40000013 6c6f6361 6c646f6d 61696e00 "
    "00000111 4000000c 00000001 "
)

# 01 00004c 00 00011a 00000000 00000003 5e000003  Disconnect-Peer Answer
# 0000010c 40 00000c           Result-Code 2001 SUCCESS
# 00000108 40 000017           Origin-Host "mme.localdomain"
# 00000128 40 000013           Origin-Realm "localdomain"
GOLDEN_DPA = bytes.fromhex(
    "0100004c 0000011a 00000000 00000003 5e000003 0000010c 4000000c 000007d1 "
    "00000108 40000017 6d6d652e 6c6f6361 6c646f6d 61696e00 00000128 40000013 "
    "6c6f6361 6c646f6d 61696e00 "
)

# 01 0000d4 c0 000144 01000024 1a2b3c4d 00c0ffee  ME-Identity-Check Request R P
# 00000107 40 000024           Session-Id "mme.localdomain;1700000000;1"
# 00000115 40 00000c           Auth-Session-State 1 NO_STATE_MAINTAINED
# 00000108 40 000017           Origin-Host "mme.localdomain"
# 00000128 40 000013           Origin-Realm "localdomain"
# 0000011b 40 000013           Destination-Realm "localdomain"
# 00000579 c0 000038 000028af  Terminal-Information
# 0000057a c0 00001a 000028af    IMEI "35209900176148"
# 0000057b c0 00000e 000028af    Software-Version "00"
# 00000001 40 000017           User-Name "401017000000001"
GOLDEN_ECR = bytes.fromhex(
    "010000d4 c0000144 01000024 1a2b3c4d 00c0ffee 00000107 40000024 6d6d652e "
    "6c6f6361 6c646f6d 61696e3b 31373030 30303030 30303b31 00000115 4000000c "
    "00000001 00000108 40000017 6d6d652e 6c6f6361 6c646f6d 61696e00 00000128 "
    "40000013 6c6f6361 6c646f6d 61696e00 0000011b 40000013 6c6f6361 6c646f6d "
    "61696e00 00000579 c0000038 000028af 0000057a c000001a 000028af 33353230 "
    "39393030 31373631 34380000 0000057b c000000e 000028af 30300000 00000001 "
    "40000017 34303130 31373030 30303030 30303100 "
)

# 01 00008c 40 000144 01000024 1a2b3c4d 00c0ffee  ME-Identity-Check Answer P
# 00000107 40 000024           Session-Id "mme.localdomain;1700000000;1"
# 0000010c 40 00000c           Result-Code 2001 SUCCESS
# 00000115 40 00000c           Auth-Session-State 1 NO_STATE_MAINTAINED
# 00000108 40 000017           Origin-Host "eir.localdomain"
# 00000128 40 000013           Origin-Realm "localdomain"
# 000005a5 c0 000010 000028af  Equipment-Status 0 WHITELISTED
GOLDEN_ECA_WHITELISTED = bytes.fromhex(
    "0100008c 40000144 01000024 1a2b3c4d 00c0ffee 00000107 40000024 6d6d652e "
    "6c6f6361 6c646f6d 61696e3b 31373030 30303030 30303b31 0000010c 4000000c "
    "000007d1 00000115 4000000c 00000001 00000108 40000017 6569722e 6c6f6361 "
    "6c646f6d 61696e00 00000128 40000013 6c6f6361 6c646f6d 61696e00 000005a5 "
    "c0000010 000028af 00000000 "
)

# 01 00008c 40 000144 01000024 1a2b3c4d 00c0ffee  ME-Identity-Check Answer P
# 00000107 40 000024           Session-Id "mme.localdomain;1700000000;1"
# 0000010c 40 00000c           Result-Code 2001 SUCCESS
# 00000115 40 00000c           Auth-Session-State 1 NO_STATE_MAINTAINED
# 00000108 40 000017           Origin-Host "eir.localdomain"
# 00000128 40 000013           Origin-Realm "localdomain"
# 000005a5 c0 000010 000028af  Equipment-Status 1 BLACKLISTED
GOLDEN_ECA_BLACKLISTED = bytes.fromhex(
    "0100008c 40000144 01000024 1a2b3c4d 00c0ffee 00000107 40000024 6d6d652e "
    "6c6f6361 6c646f6d 61696e3b 31373030 30303030 30303b31 0000010c 4000000c "
    "000007d1 00000115 4000000c 00000001 00000108 40000017 6569722e 6c6f6361 "
    "6c646f6d 61696e00 00000128 40000013 6c6f6361 6c646f6d 61696e00 000005a5 "
    "c0000010 000028af 00000001 "
)

# 01 00008c 40 000144 01000024 1a2b3c4d 00c0ffee  ME-Identity-Check Answer P
# 00000107 40 000024           Session-Id "mme.localdomain;1700000000;1"
# 0000010c 40 00000c           Result-Code 2001 SUCCESS
# 00000115 40 00000c           Auth-Session-State 1 NO_STATE_MAINTAINED
# 00000108 40 000017           Origin-Host "eir.localdomain"
# 00000128 40 000013           Origin-Realm "localdomain"
# 000005a5 c0 000010 000028af  Equipment-Status 2 GREYLISTED
GOLDEN_ECA_GREYLISTED = bytes.fromhex(
    "0100008c 40000144 01000024 1a2b3c4d 00c0ffee 00000107 40000024 6d6d652e "
    "6c6f6361 6c646f6d 61696e3b 31373030 30303030 30303b31 0000010c 4000000c "
    "000007d1 00000115 4000000c 00000001 00000108 40000017 6569722e 6c6f6361 "
    "6c646f6d 61696e00 00000128 40000013 6c6f6361 6c646f6d 61696e00 000005a5 "
    "c0000010 000028af 00000002 "
)

# 01 000090 40 000144 01000024 1a2b3c4d 00c0ffee  ME-Identity-Check Answer P
# 00000107 40 000024           Session-Id "mme.localdomain;1700000000;1"
# 00000129 40 000020           Experimental-Result
# 0000010a 40 00000c             Vendor-Id 10415
# 0000012a 40 00000c             Experimental-Result-Code 5422 ERROR_EQUIPMENT_UNKNOWN
# 00000115 40 00000c           Auth-Session-State 1 NO_STATE_MAINTAINED
# 00000108 40 000017           Origin-Host "eir.localdomain"
# 00000128 40 000013           Origin-Realm "localdomain"
GOLDEN_ECA_UNKNOWN = bytes.fromhex(
    "01000090 40000144 01000024 1a2b3c4d 00c0ffee 00000107 40000024 6d6d652e "
    "6c6f6361 6c646f6d 61696e3b 31373030 30303030 30303b31 00000129 40000020 "
    "0000010a 4000000c 000028af 0000012a 4000000c 0000152e 00000115 4000000c "
    "00000001 00000108 40000017 6569722e 6c6f6361 6c646f6d 61696e00 00000128 "
    "40000013 6c6f6361 6c646f6d 61696e00 "
)

# 01 000090 40 000144 01000024 1a2b3c4d 00c0ffee  ME-Identity-Check Answer P
# 00000107 40 000024           Session-Id "mme.localdomain;1700000000;1"
# 0000010c 40 00000c           Result-Code 5005 MISSING_AVP
# 00000115 40 00000c           Auth-Session-State 1 NO_STATE_MAINTAINED
# 00000108 40 000017           Origin-Host "eir.localdomain"
# 00000128 40 000013           Origin-Realm "localdomain"
# 00000117 40 000014           Failed-AVP
# 00000579 c0 00000c 000028af    Terminal-Information
GOLDEN_ECA_MISSING_AVP = bytes.fromhex(
    "01000090 40000144 01000024 1a2b3c4d 00c0ffee 00000107 40000024 6d6d652e "
    "6c6f6361 6c646f6d 61696e3b 31373030 30303030 30303b31 0000010c 4000000c "
    "0000138d 00000115 4000000c 00000001 00000108 40000017 6569722e 6c6f6361 "
    "6c646f6d 61696e00 00000128 40000013 6c6f6361 6c646f6d 61696e00 00000117 "
    "40000014 00000579 c000000c 000028af "
)

# 01 000090 60 000144 01000024 1a2b3c4d 00c0ffee  ME-Identity-Check Answer P E
# 00000107 40 000024           Session-Id "mme.localdomain;1700000000;1"
# 00000108 40 000017           Origin-Host "eir.localdomain"
# 00000128 40 000013           Origin-Realm "localdomain"
# 0000010c 40 00000c           Result-Code 3009 INVALID_AVP_BITS
# 00000117 40 000020           Failed-AVP
# 00000108 00 000017             Origin-Host "mme.localdomain"
GOLDEN_ECA_PROTOCOL_ERROR = bytes.fromhex(
    "01000090 60000144 01000024 1a2b3c4d 00c0ffee 00000107 40000024 6d6d652e "
    "6c6f6361 6c646f6d 61696e3b 31373030 30303030 30303b31 00000108 40000017 "
    "6569722e 6c6f6361 6c646f6d 61696e00 00000128 40000013 6c6f6361 6c646f6d "
    "61696e00 0000010c 4000000c 00000bc1 00000117 40000020 00000108 00000017 "
    "6d6d652e 6c6f6361 6c646f6d 61696e00 "
)


# ---------------------------------------------------------------- tests

# name -> (builder, golden, flag byte of PROTOCOL.md 1.1, the request it answers)
CASES: dict[str, tuple[Callable[[], Message], bytes, int, str | None]] = {
    "CER": (build_cer, GOLDEN_CER, 0x80, None),
    "CEA": (build_cea, GOLDEN_CEA, 0x00, "CER"),
    "DWR": (build_dwr, GOLDEN_DWR, 0x80, None),
    "DWA": (build_dwa, GOLDEN_DWA, 0x00, "DWR"),
    "DPR": (build_dpr, GOLDEN_DPR, 0x80, None),
    "DPA": (build_dpa, GOLDEN_DPA, 0x00, "DPR"),
    "ECR": (build_ecr, GOLDEN_ECR, 0xC0, None),
    "ECA_WHITELISTED": (lambda: build_eca_status(EquipmentStatus.WHITELISTED),
                        GOLDEN_ECA_WHITELISTED, 0x40, "ECR"),
    "ECA_BLACKLISTED": (lambda: build_eca_status(EquipmentStatus.BLACKLISTED),
                        GOLDEN_ECA_BLACKLISTED, 0x40, "ECR"),
    "ECA_GREYLISTED": (lambda: build_eca_status(EquipmentStatus.GREYLISTED),
                       GOLDEN_ECA_GREYLISTED, 0x40, "ECR"),
    "ECA_UNKNOWN": (build_eca_unknown, GOLDEN_ECA_UNKNOWN, 0x40, "ECR"),
    "ECA_MISSING_AVP": (build_eca_missing_avp, GOLDEN_ECA_MISSING_AVP, 0x40, "ECR"),
    "ECA_PROTOCOL_ERROR": (build_eca_protocol_error, GOLDEN_ECA_PROTOCOL_ERROR, 0x60, "ECR"),
}
NAMES = list(CASES)


def test_every_golden_has_a_case() -> None:
    goldens = {k.removeprefix("GOLDEN_") for k in globals() if k.startswith("GOLDEN_")}
    assert goldens == set(CASES)


@pytest.mark.parametrize("name", NAMES)
def test_encode_gives_golden(name: str) -> None:
    build, golden, flag_byte, _ = CASES[name]
    wire = build().encode()
    assert wire.hex() == golden.hex()
    assert wire[4] == flag_byte  # PROTOCOL.md 1.1 flag table
    assert int.from_bytes(wire[1:4], "big") == len(wire)
    assert len(wire) % 4 == 0


@pytest.mark.parametrize("name", NAMES)
def test_decode_golden_gives_built_message(name: str) -> None:
    build, golden, _, _ = CASES[name]
    msg = decode_message(golden)
    assert isinstance(msg, Message), msg
    assert expected_view(msg, len(golden)) == expected_view(build(), len(golden))
    assert msg.encode() == golden


@pytest.mark.parametrize("name", NAMES)
def test_pycrate_reads_our_bytes(name: str) -> None:
    build, golden, _, _ = CASES[name]
    assert pycrate_view(golden) == expected_view(build(), len(golden))


@pytest.mark.parametrize("name", NAMES)
def test_scapy_reads_our_bytes(name: str) -> None:
    build, golden, _, _ = CASES[name]
    assert scapy_view(golden) == expected_view(build(), len(golden))


@pytest.mark.parametrize("name", NAMES)
def test_dictionary_accepts_golden(name: str) -> None:
    msg = decode_message(CASES[name][1])
    assert isinstance(msg, Message)
    assert DICT.check_message(msg) is None


@pytest.mark.parametrize("name", [n for n in NAMES if CASES[n][3]])
def test_answer_copies_ids_of_its_request(name: str) -> None:
    answer = pycrate_view(CASES[name][1])[0]
    req = pycrate_view(CASES[CASES[name][3] or ""][1])[0]
    # code, application, hop-by-hop and end-to-end ids are the request's; P is copied
    assert (answer[3], answer[4], answer[5], answer[6]) == (req[3], req[4], req[5], req[6])
    assert answer[2] & 0x40 == req[2] & 0x40
    assert not answer[2] & 0x80
    avps = pycrate_view(CASES[name][1])[1]
    assert find(avps, AvpCode.DESTINATION_REALM) is None
    assert find(avps, AvpCode.DESTINATION_HOST) is None


_LITERAL = re.compile(r"((?:^# .*\n)+)^GOLDEN_(\w+) = bytes\.fromhex\(", re.MULTILINE)


def test_comment_matches_bytes() -> None:
    """The dump above each literal describes the literal: regenerate it if this fails."""
    source = Path(__file__).read_text()
    found = {m.group(2): m.group(1).rstrip("\n") for m in _LITERAL.finditer(source)}
    assert set(found) == set(CASES)
    for name, comment in found.items():
        assert comment == comment_block(CASES[name][1]), name


# PROTOCOL.md 2.3 "Wire bytes (IMEI = 35209900176148)", transcribed
PROTOCOL_IMEI = bytes.fromhex("0000057a c000001a 000028af") + b"35209900176148" + b"\0\0"
PROTOCOL_EQUIPMENT_STATUS = bytes.fromhex("000005a5 c0000010 000028af 00000000")
PROTOCOL_EXP_RESULT_5422 = bytes.fromhex(
    "00000129 40000020 0000010a 4000000c 000028af 0000012a 4000000c 0000152e")


def test_protocol_md_example_bytes() -> None:
    assert Avp.utf8(AvpCode.IMEI, IMEI, TGPP).encode() == PROTOCOL_IMEI
    assert Avp.i32(AvpCode.EQUIPMENT_STATUS, 0, TGPP).encode() == PROTOCOL_EQUIPMENT_STATUS
    assert build_eca_unknown().avps[1].encode() == PROTOCOL_EXP_RESULT_5422
    assert PROTOCOL_IMEI in GOLDEN_ECR
    assert GOLDEN_ECA_WHITELISTED.endswith(PROTOCOL_EQUIPMENT_STATUS)
    assert PROTOCOL_EXP_RESULT_5422 in GOLDEN_ECA_UNKNOWN


@pytest.mark.parametrize("oracle", [pycrate_view, scapy_view])
def test_oracles_read_the_ecr_imei(oracle: Callable[[bytes], tuple]) -> None:
    header, avps = oracle(GOLDEN_ECR)
    assert header == (1, 212, 0xC0, 324, 16777252, 0x1A2B3C4D, 0x00C0FFEE)
    assert avps[0][0] == AvpCode.SESSION_ID  # < Session-Id > first
    ti = find(avps, AvpCode.TERMINAL_INFORMATION)
    assert ti is not None and ti[1:3] == (0xC0, 10415)
    assert ti[4] == [(1402, 0xC0, 10415, 26, b"35209900176148"), (1403, 0xC0, 10415, 14, b"00")]
    assert find(avps, AvpCode.USER_NAME) == (1, 0x40, None, 23, b"401017000000001")


@pytest.mark.parametrize("oracle", [pycrate_view, scapy_view])
@pytest.mark.parametrize(("golden", "status"), [(GOLDEN_ECA_WHITELISTED, 0),
                                                (GOLDEN_ECA_BLACKLISTED, 1),
                                                (GOLDEN_ECA_GREYLISTED, 2)])
def test_oracles_read_the_equipment_status(oracle: Callable[[bytes], tuple], golden: bytes,
                                           status: int) -> None:
    header, avps = oracle(golden)
    assert header[2] == 0x40
    assert find(avps, AvpCode.RESULT_CODE) == (268, 0x40, None, 12, 2001)
    assert find(avps, AvpCode.EQUIPMENT_STATUS) == (1445, 0xC0, 10415, 16, status)
    assert find(avps, AvpCode.AUTH_SESSION_STATE) == (277, 0x40, None, 12, 1)
    assert find(avps, AvpCode.ORIGIN_HOST) == (264, 0x40, None, 23, b"eir.localdomain")


@pytest.mark.parametrize("oracle", [pycrate_view, scapy_view])
def test_oracles_read_equipment_unknown(oracle: Callable[[bytes], tuple]) -> None:
    _, avps = oracle(GOLDEN_ECA_UNKNOWN)
    assert find(avps, AvpCode.EXPERIMENTAL_RESULT) == (
        297, 0x40, None, 32, [(266, 0x40, None, 12, 10415), (298, 0x40, None, 12, 5422)])
    assert find(avps, AvpCode.RESULT_CODE) is None
    assert find(avps, AvpCode.EQUIPMENT_STATUS) is None


@pytest.mark.parametrize("oracle", [pycrate_view, scapy_view])
def test_oracles_read_error_answers(oracle: Callable[[bytes], tuple]) -> None:
    header, avps = oracle(GOLDEN_ECA_MISSING_AVP)
    assert header[2] == 0x40  # a permanent error: no E bit
    assert find(avps, AvpCode.RESULT_CODE) == (268, 0x40, None, 12, 5005)
    assert find(avps, AvpCode.FAILED_AVP) == (279, 0x40, None, 20, [(1401, 0xC0, 10415, 12, [])])
    header, avps = oracle(GOLDEN_ECA_PROTOCOL_ERROR)
    assert header[2] == 0x60  # a protocol error: E bit, P copied
    assert [a[0] for a in avps] == [263, 264, 296, 268, 279]  # RFC 6733 7.2 order
    assert find(avps, AvpCode.RESULT_CODE) == (268, 0x40, None, 12, 3009)
    assert find(avps, AvpCode.FAILED_AVP) == (
        279, 0x40, None, 32, [(264, 0x00, None, 23, b"mme.localdomain")])


@pytest.mark.parametrize("status", list(EquipmentStatus))
def test_session_answer_builds_the_golden_eca(status: EquipmentStatus) -> None:
    ans = messages.session_answer(
        build_ecr(), EIR, result=[Avp.u32(AvpCode.RESULT_CODE, ResultCode.SUCCESS)],
        before_origin=[Avp.i32(AvpCode.AUTH_SESSION_STATE, 1)],
        after_origin=[Avp.i32(AvpCode.EQUIPMENT_STATUS, status, TGPP)])
    assert ans.encode() == CASES[f"ECA_{status.name}"][1]


def test_dictionary_and_session_answer_give_the_5005_golden() -> None:
    problem = DICT.check_message(build_ecr(terminal_information=False))
    assert problem is not None
    assert problem.result_code == ResultCode.MISSING_AVP
    assert problem.failed == [TI_EXAMPLE]
    ans = messages.session_answer(
        build_ecr(terminal_information=False), EIR,
        result=[Avp.u32(AvpCode.RESULT_CODE, problem.result_code)],
        before_origin=[Avp.i32(AvpCode.AUTH_SESSION_STATE, 1)],
        problem=Problem(problem.result_code, problem.failed))
    assert ans.encode() == GOLDEN_ECA_MISSING_AVP


def test_dictionary_and_protocol_error_give_the_3009_golden() -> None:
    bad = build_ecr(origin_host_flags=0)
    problem = DICT.check_message(bad)
    assert problem is not None
    assert problem.result_code == ResultCode.INVALID_AVP_BITS
    assert problem.failed == [BAD_ORIGIN_HOST]
    ans = messages.protocol_error(bad, EIR, Problem(problem.result_code, problem.failed))
    assert ans.encode() == GOLDEN_ECA_PROTOCOL_ERROR
