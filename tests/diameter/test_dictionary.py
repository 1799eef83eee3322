"""Dictionary checks (PROTOCOL.md 1.9, RFC 6733 7) and the answer rules of messages.py.

Each error test asserts the exact Result-Code and the exact Failed-AVP
content the answer would carry: the offending AVP as received, a zero-filled
example for a missing one (RFC 6733 7.5), or the enclosing Grouped AVP
holding the offending inner AVP.
"""

from __future__ import annotations

import struct

import pytest

from eir.diameter import messages
from eir.diameter.codec import Avp, DecodeError, Message, decode_message
from eir.diameter.constants import Application, AvpCode, CmdFlag, ResultCode, Vendor
from eir.diameter.dictionary import (
    AvpDef,
    AvpType,
    CommandDef,
    Dictionary,
    MRule,
    Problem,
    command_from_abnf,
    default_dictionary,
    parse_grammar,
)
from eir.diameter.dicts import base, s13
from eir.diameter.messages import Applications, Identity

D = default_dictionary()
TGPP = Vendor.TGPP
M, VM = 0x40, 0xC0
MME = Identity("mme.localdomain", "localdomain", ("192.0.2.10",), origin_state_id=7)
EIR = Identity("eir.localdomain", "localdomain", ("192.0.2.20",))


def ti(*children: Avp, flags: int = VM) -> Avp:
    return Avp(AvpCode.TERMINAL_INFORMATION, b"".join(c.encode() for c in children), TGPP, flags)


IMEI = Avp.utf8(AvpCode.IMEI, "35209900176148", TGPP)
SV = Avp.utf8(AvpCode.SOFTWARE_VERSION, "00", TGPP)


def ecr_avps() -> list[Avp]:
    return [
        Avp.utf8(AvpCode.SESSION_ID, "mme.localdomain;1;2"),
        Avp.u32(AvpCode.AUTH_SESSION_STATE, 1),
        Avp.octets(AvpCode.ORIGIN_HOST, b"mme.localdomain"),
        Avp.octets(AvpCode.ORIGIN_REALM, b"localdomain"),
        Avp.octets(AvpCode.DESTINATION_REALM, b"localdomain"),
        ti(IMEI, SV),
        Avp.utf8(AvpCode.USER_NAME, "401017000000001"),
    ]


def ecr(avps: list[Avp] | None = None, flags: int = 0xC0, app: int = Application.S13,
        code: int = 324) -> Message:
    return Message(code, app, flags, 0x11, 0x22, ecr_avps() if avps is None else avps)


def eca_avps() -> list[Avp]:
    return [
        Avp.utf8(AvpCode.SESSION_ID, "mme.localdomain;1;2"),
        Avp.u32(AvpCode.RESULT_CODE, 2001),
        Avp.u32(AvpCode.AUTH_SESSION_STATE, 1),
        Avp.octets(AvpCode.ORIGIN_HOST, b"eir.localdomain"),
        Avp.octets(AvpCode.ORIGIN_REALM, b"localdomain"),
        Avp.i32(AvpCode.EQUIPMENT_STATUS, 0, TGPP),
    ]


def eca(avps: list[Avp] | None = None, flags: int = 0x40) -> Message:
    return Message(324, Application.S13, flags, 0x11, 0x22, eca_avps() if avps is None else avps)


def cer() -> Message:
    return messages.cer(MME, messages.S13_APPLICATIONS, 1, 2)


def replace_avp(msg: Message, code: int, new: Avp | None, vendor: int = 0) -> Message:
    """``msg`` with its first (code, vendor) AVP replaced by ``new`` (or removed)."""
    out: list[Avp] = []
    done = False
    for a in msg.avps:
        if not done and a.code == code and a.vendor == vendor:
            done = True
            if new is not None:
                out.append(new)
        else:
            out.append(a)
    assert done
    return Message(msg.code, msg.app_id, msg.flags, msg.hbh, msg.e2e, out)


def check(msg: Message) -> Problem:
    problem = D.check_message(msg)
    assert problem is not None, "expected a problem"
    # the bytes must survive the trip: check what a peer would really send
    back = decode_message(msg.encode())
    assert isinstance(back, Message)
    again = D.check_message(back)
    assert again is not None
    assert (again.result_code, again.failed) == (problem.result_code, problem.failed)
    return problem


def vsai(*children: Avp) -> Avp:
    return Avp.grouped(AvpCode.VENDOR_SPECIFIC_APPLICATION_ID, children)


AUTH_S13 = Avp.u32(AvpCode.AUTH_APPLICATION_ID, Application.S13)
ACCT_S13 = Avp.u32(AvpCode.ACCT_APPLICATION_ID, Application.S13)
VENDOR_3GPP = Avp.u32(AvpCode.VENDOR_ID, TGPP)


# ------------------------------------------------------------------ valid messages

def test_valid_messages_have_no_problem() -> None:
    req = cer()
    for msg in (req, ecr(), eca(),
                messages.cea(req, EIR, messages.S13_APPLICATIONS, ResultCode.SUCCESS),
                messages.dwr(MME, 1, 2), messages.dwa(messages.dwr(MME, 1, 2), EIR),
                messages.dpr(MME, 1, 2), messages.dpa(messages.dpr(MME, 1, 2), EIR)):
        assert D.check_message(msg) is None, msg


def test_full_capabilities_with_every_option_are_valid() -> None:
    ident = Identity("mme.localdomain", "localdomain", ("192.0.2.10", "2001:db8::1"),
                     vendor_id=5535, product_name="sim", firmware_revision=7, origin_state_id=9)
    apps = Applications(auth=(Application.S13,), acct=(3,), vendor_auth=((TGPP, 16777251),),
                        supported_vendors=(TGPP, 5535))
    req = messages.cer(ident, apps, 1, 2)
    assert D.check_message(req) is None
    ans = messages.cea(req, ident, apps, ResultCode.NO_COMMON_APPLICATION,
                       Problem(5010, [], "no common application"))
    assert D.check_message(ans) is None


# ------------------------------------------------------------------ 3001, 3007, 3008

def test_3001_unknown_command() -> None:
    p = check(Message(999, 0, 0x80, 1, 2, [Avp.octets(264, b"h"), Avp.octets(296, b"r")]))
    assert (p.result_code, p.failed) == (ResultCode.COMMAND_UNSUPPORTED, [])
    assert p.protocol_error
    # S6a's Authentication-Information (318) is not a command of S13
    p = check(ecr(code=318))
    assert (p.result_code, p.failed) == (3001, [])


def test_3001_for_an_answer_of_an_unknown_command() -> None:
    p = check(Message(999, 0, 0x00, 1, 2, [Avp.u32(268, 2001)]))
    assert p.result_code == 3001


def test_3007_unknown_application() -> None:
    p = check(ecr(app=16777251))  # S6a
    assert (p.result_code, p.failed) == (ResultCode.APPLICATION_UNSUPPORTED, [])
    assert p.protocol_error


def test_3007_application_not_served_by_this_node() -> None:
    p = D.check_header(ecr(), served_apps={Application.COMMON})
    assert p is not None and p.result_code == 3007
    assert D.check_header(ecr(), served_apps={Application.COMMON, Application.S13}) is None


@pytest.mark.parametrize(("msg", "why"), [
    (ecr(flags=0xE0), "E bit on a request"),
    (ecr(flags=0x80), "P bit missing on ECR"),
    (Message(257, 0, 0xC0, 1, 2, cer().avps), "P bit set on CER"),
    (Message(257, 0, 0xA0, 1, 2, cer().avps), "E bit on CER"),
    (Message(280, 0, 0xC0, 1, 2, messages.dwr(MME, 1, 2).avps), "P bit set on DWR"),
])
def test_3008_invalid_header_bits(msg: Message, why: str) -> None:
    p = check(msg)
    assert (p.result_code, p.failed) == (ResultCode.INVALID_HDR_BITS, []), why
    assert p.protocol_error


# ------------------------------------------------------------------ 3009

def test_3009_reserved_avp_flag_bits() -> None:
    bad = Avp(AvpCode.ORIGIN_HOST, b"mme.localdomain", 0, M | 0x01)
    p = check(replace_avp(ecr(), AvpCode.ORIGIN_HOST, bad))
    assert (p.result_code, p.failed) == (ResultCode.INVALID_AVP_BITS, [bad])


def test_3009_reserved_bits_on_a_3gpp_avp_inside_a_group() -> None:
    bad = Avp(AvpCode.IMEI, b"35209900176148", TGPP, VM | 0x04)
    p = check(replace_avp(ecr(), AvpCode.TERMINAL_INFORMATION, ti(bad, SV), TGPP))
    assert p.result_code == 3009
    assert p.failed == [Avp.grouped(AvpCode.TERMINAL_INFORMATION, [bad], TGPP)]


def test_3009_base_avp_without_m() -> None:
    bad = Avp(AvpCode.ORIGIN_HOST, b"mme.localdomain", 0, 0)
    for msg in (ecr(), cer()):
        p = check(replace_avp(msg, AvpCode.ORIGIN_HOST, bad))
        assert (p.result_code, p.failed) == (3009, [bad])


def test_3009_product_name_with_m() -> None:
    bad = Avp(AvpCode.PRODUCT_NAME, b"eir-mme-sim", 0, M)
    p = check(replace_avp(cer(), AvpCode.PRODUCT_NAME, bad))
    assert (p.result_code, p.failed) == (3009, [bad])


def test_3009_firmware_revision_with_m() -> None:
    bad = Avp.u32(AvpCode.FIRMWARE_REVISION, 1)  # M set
    p = check(Message(257, 0, 0x80, 1, 2, [*cer().avps, bad]))
    assert (p.result_code, p.failed) == (3009, [bad])


def test_3009_v_bit_on_a_base_avp() -> None:
    # V set with a zero Vendor-ID: the IETF AVP is known, but V is MUST NOT for it
    bad = Avp(AvpCode.ORIGIN_REALM, b"localdomain", 0, VM)
    p = check(replace_avp(ecr(), AvpCode.ORIGIN_REALM, bad))
    assert (p.result_code, p.failed) == (3009, [bad])


@pytest.mark.parametrize("where", ["ti", "imei", "sv", "all"])
def test_3gpp_avp_with_mismatched_m_is_not_an_error(where: str) -> None:
    # TS 29.272 Table 7.3.1/1 NOTE 2: the receiver ignores the M bit of these AVPs
    imei = Avp(AvpCode.IMEI, IMEI.data, TGPP, 0x80) if where in ("imei", "all") else IMEI
    sv = Avp(AvpCode.SOFTWARE_VERSION, SV.data, TGPP, 0x80) if where in ("sv", "all") else SV
    group = ti(imei, sv, flags=0x80 if where in ("ti", "all") else VM)
    assert D.check_message(replace_avp(ecr(), AvpCode.TERMINAL_INFORMATION, group, TGPP)) is None


def test_equipment_status_without_m_is_not_an_error() -> None:
    es = Avp(AvpCode.EQUIPMENT_STATUS, b"\0\0\0\x01", TGPP, 0x80)
    assert D.check_message(replace_avp(eca(), AvpCode.EQUIPMENT_STATUS, es, TGPP)) is None


@pytest.mark.parametrize("flags", [0x00, M])
def test_drmp_may_have_m_either_way(flags: int) -> None:
    avps = ecr_avps()
    avps.insert(1, Avp(AvpCode.DRMP, b"\0\0\0\x05", 0, flags))
    assert D.check_message(ecr(avps)) is None


# ------------------------------------------------------------------ 5001

def test_5001_unknown_avp_with_m() -> None:
    unknown = Avp(99999, b"\0\0\0\x01", 0, M)
    p = check(ecr([*ecr_avps(), unknown]))
    assert (p.result_code, p.failed) == (ResultCode.AVP_UNSUPPORTED, [unknown])
    assert not p.protocol_error


def test_5001_unknown_vendor_avp_with_m() -> None:
    unknown = Avp(AvpCode.IMEI, b"35209900176148", 5535, VM)  # IMEI's code, someone else's vendor
    p = check(ecr([*ecr_avps(), unknown]))
    assert (p.result_code, p.failed) == (5001, [unknown])


def test_5001_imei_without_v_bit_inside_terminal_information() -> None:
    no_v = Avp(AvpCode.IMEI, b"35209900176148", 0, M)  # code 1402 without a vendor: unknown
    p = check(replace_avp(ecr(), AvpCode.TERMINAL_INFORMATION, ti(no_v, SV), TGPP))
    assert p.result_code == 5001
    assert p.failed == [Avp.grouped(AvpCode.TERMINAL_INFORMATION, [no_v], TGPP)]
    (failed,) = p.failed
    assert failed.flags == VM
    assert failed.children() == [no_v]


def test_unknown_avp_without_m_is_ignored() -> None:
    unknown = Avp(99999, b"whatever", 0, 0)
    unknown_v = Avp(4242, b"x", 5535, 0x80)
    assert D.check_message(ecr([*ecr_avps(), unknown, unknown_v])) is None
    # also inside Grouped AVPs, even where the grammar has no *[AVP]
    group = ti(IMEI, unknown, SV)
    assert D.check_message(replace_avp(ecr(), AvpCode.TERMINAL_INFORMATION, group, TGPP)) is None
    req = Message(257, 0, 0x80, 1, 2, [*cer().avps, vsai(VENDOR_3GPP, AUTH_S13, unknown)])
    assert D.check_message(req) is None


# ------------------------------------------------------------------ 5004

def test_5004_auth_session_state_7() -> None:
    bad = Avp.u32(AvpCode.AUTH_SESSION_STATE, 7)
    p = check(replace_avp(ecr(), AvpCode.AUTH_SESSION_STATE, bad))
    assert (p.result_code, p.failed) == (ResultCode.INVALID_AVP_VALUE, [bad])


def test_5004_disconnect_cause_9() -> None:
    bad = Avp.u32(AvpCode.DISCONNECT_CAUSE, 9)
    p = check(replace_avp(messages.dpr(MME, 1, 2), AvpCode.DISCONNECT_CAUSE, bad))
    assert (p.result_code, p.failed) == (5004, [bad])


@pytest.mark.parametrize("data", [
    b"\0\x03\xc0\x00\x02\x0a",  # family 3
    b"\0\x01" + bytes(16),  # IPv4 family, IPv6 size
    b"\0\x02\xc0\x00\x02\x0a",  # IPv6 family, IPv4 size
    b"\0",  # not even a family
])
def test_5004_bad_host_ip_address(data: bytes) -> None:
    bad = Avp(AvpCode.HOST_IP_ADDRESS, data, 0, M)
    p = check(replace_avp(cer(), AvpCode.HOST_IP_ADDRESS, bad))
    assert (p.result_code, p.failed) == (5004, [bad])


@pytest.mark.parametrize("data", ["mme.lôcaldomain".encode(), b"", b"\xff\xfe"])
def test_5004_non_ascii_or_empty_origin_host(data: bytes) -> None:
    bad = Avp(AvpCode.ORIGIN_HOST, data, 0, M)
    p = check(replace_avp(ecr(), AvpCode.ORIGIN_HOST, bad))
    assert (p.result_code, p.failed) == (5004, [bad])


def test_5004_invalid_utf8_user_name_and_imei() -> None:
    bad = Avp(AvpCode.USER_NAME, b"\xc3\x28", 0, M)
    p = check(replace_avp(ecr(), AvpCode.USER_NAME, bad))
    assert (p.result_code, p.failed) == (5004, [bad])
    bad_imei = Avp(AvpCode.IMEI, b"\x80", TGPP, VM)
    p = check(replace_avp(ecr(), AvpCode.TERMINAL_INFORMATION, ti(bad_imei), TGPP))
    assert p.result_code == 5004
    assert p.failed == [Avp.grouped(AvpCode.TERMINAL_INFORMATION, [bad_imei], TGPP)]


def test_5004_equipment_status_3() -> None:
    bad = Avp.i32(AvpCode.EQUIPMENT_STATUS, 3, TGPP)
    p = check(replace_avp(eca(), AvpCode.EQUIPMENT_STATUS, bad, TGPP))
    assert (p.result_code, p.failed) == (5004, [bad])


# ------------------------------------------------------------------ 5005

def test_5005_missing_origin_host_gives_a_zero_filled_example() -> None:
    p = check(replace_avp(cer(), AvpCode.ORIGIN_HOST, None))
    assert (p.result_code, p.failed) == (ResultCode.MISSING_AVP, [Avp(264, b"", 0, M)])
    assert not p.protocol_error


def test_5005_missing_host_ip_address_example_is_an_ipv4_address() -> None:
    p = check(replace_avp(cer(), AvpCode.HOST_IP_ADDRESS, None))
    assert (p.result_code, p.failed) == (5005, [Avp(257, b"\0\x01\0\0\0\0", 0, M)])


def test_5005_missing_auth_session_state_example_is_four_zero_bytes() -> None:
    p = check(replace_avp(ecr(), AvpCode.AUTH_SESSION_STATE, None))
    assert (p.result_code, p.failed) == (5005, [Avp(277, b"\0\0\0\0", 0, M)])


def test_5005_session_id_not_first_in_ecr() -> None:
    avps = ecr_avps()
    sid = avps.pop(0)
    avps.insert(3, sid)
    p = check(ecr(avps))
    assert (p.result_code, p.failed) == (5005, [sid])  # the misplaced AVP itself


def test_5005_session_id_missing_from_ecr() -> None:
    p = check(ecr(ecr_avps()[1:]))
    assert (p.result_code, p.failed) == (5005, [Avp(263, b"", 0, M)])


def test_5005_terminal_information_missing() -> None:
    p = check(replace_avp(ecr(), AvpCode.TERMINAL_INFORMATION, None, TGPP))
    assert (p.result_code, p.failed) == (5005, [Avp(1401, b"", TGPP, VM)])


def test_5005_eca_missing_auth_session_state() -> None:
    p = check(replace_avp(eca(), AvpCode.AUTH_SESSION_STATE, None))
    assert (p.result_code, p.failed) == (5005, [Avp(277, b"\0\0\0\0", 0, M)])


def test_5005_vsai_without_application_id_gives_both_examples() -> None:
    p = check(Message(257, 0, 0x80, 1, 2, [*cer().avps, vsai(VENDOR_3GPP)]))
    assert p.result_code == 5005
    assert p.failed == [vsai(Avp(258, b"\0\0\0\0", 0, M), Avp(259, b"\0\0\0\0", 0, M))]


def test_5005_vsai_without_vendor_id() -> None:
    p = check(Message(257, 0, 0x80, 1, 2, [*cer().avps, vsai(AUTH_S13)]))
    assert (p.result_code, p.failed) == (5005, [vsai(Avp(266, b"\0\0\0\0", 0, M))])


def test_5005_experimental_result_without_code() -> None:
    er = Avp.grouped(AvpCode.EXPERIMENTAL_RESULT, [VENDOR_3GPP])
    p = check(replace_avp(eca(), AvpCode.RESULT_CODE, er))
    assert p.result_code == 5005
    assert p.failed == [Avp.grouped(AvpCode.EXPERIMENTAL_RESULT, [Avp(298, b"\0\0\0\0", 0, M)])]


# ------------------------------------------------------------------ 5008

def test_5008_extra_avp_inside_experimental_result() -> None:
    extra = Avp.u32(AvpCode.RESULT_CODE, 2001)
    er = Avp.grouped(AvpCode.EXPERIMENTAL_RESULT, [
        VENDOR_3GPP, Avp.u32(AvpCode.EXPERIMENTAL_RESULT_CODE, 5422), extra])
    p = check(replace_avp(eca(), AvpCode.RESULT_CODE, er))
    assert p.result_code == ResultCode.AVP_NOT_ALLOWED
    assert p.failed == [Avp.grouped(AvpCode.EXPERIMENTAL_RESULT, [extra])]


def test_5008_extra_avp_inside_vsai() -> None:
    extra = Avp.octets(AvpCode.ORIGIN_HOST, b"mme.localdomain")
    p = check(Message(257, 0, 0x80, 1, 2, [*cer().avps, vsai(VENDOR_3GPP, AUTH_S13, extra)]))
    assert (p.result_code, p.failed) == (5008, [vsai(extra)])


# ------------------------------------------------------------------ 5009

def test_5009_two_origin_hosts_reports_the_second() -> None:
    second = Avp.octets(AvpCode.ORIGIN_HOST, b"other.localdomain")
    avps = ecr_avps()
    avps.insert(3, second)
    p = check(ecr(avps))
    assert (p.result_code, p.failed) == (ResultCode.AVP_OCCURS_TOO_MANY_TIMES, [second])


def test_5009_two_session_ids() -> None:
    second = Avp.utf8(AvpCode.SESSION_ID, "mme.localdomain;1;3")
    p = check(ecr([*ecr_avps(), second]))
    assert (p.result_code, p.failed) == (5009, [second])


def test_5009_two_terminal_informations() -> None:
    second = ti(Avp.utf8(AvpCode.IMEI, "49015420323751", TGPP))
    p = check(ecr([*ecr_avps(), second]))
    assert (p.result_code, p.failed) == (5009, [second])


def test_5009_vsai_with_both_auth_and_acct() -> None:
    p = check(Message(257, 0, 0x80, 1, 2, [*cer().avps, vsai(VENDOR_3GPP, AUTH_S13, ACCT_S13)]))
    assert (p.result_code, p.failed) == (5009, [vsai(ACCT_S13)])


# ------------------------------------------------------------------ 5014

def test_5014_unsigned32_with_3_bytes() -> None:
    bad = Avp(AvpCode.RESULT_CODE, b"\0\x07\xd1", 0, M)
    p = check(replace_avp(eca(), AvpCode.RESULT_CODE, bad))
    assert (p.result_code, p.failed) == (ResultCode.INVALID_AVP_LENGTH, [bad])


def test_5014_enumerated_with_8_bytes() -> None:
    bad = Avp(AvpCode.AUTH_SESSION_STATE, b"\0" * 7 + b"\x01", 0, M)
    p = check(replace_avp(ecr(), AvpCode.AUTH_SESSION_STATE, bad))
    assert (p.result_code, p.failed) == (5014, [bad])


def test_5014_unsigned64_with_4_bytes_inside_a_group() -> None:
    bad = Avp(AvpCode.OC_FEATURE_VECTOR, b"\0\0\0\x01", 0, 0)
    oc = Avp.grouped(AvpCode.OC_SUPPORTED_FEATURES, [bad], mandatory=False)
    p = check(ecr([*ecr_avps(), oc]))
    assert p.result_code == 5014
    assert p.failed == [Avp.grouped(AvpCode.OC_SUPPORTED_FEATURES, [bad], mandatory=False)]


def test_5014_bad_inner_length_inside_a_grouped_avp() -> None:
    # IMEI claims 40 bytes inside a Terminal-Information that holds 28
    inner = struct.pack("!III", AvpCode.IMEI, (VM << 24) | 40, TGPP) + b"3520990017614800"
    group = Avp(AvpCode.TERMINAL_INFORMATION, inner, TGPP, VM)
    p = check(replace_avp(ecr(), AvpCode.TERMINAL_INFORMATION, group, TGPP))
    assert p.result_code == 5014
    assert p.failed == [Avp.grouped(AvpCode.TERMINAL_INFORMATION,
                                    [Avp(AvpCode.IMEI, b"\0\0\0\0", TGPP, VM)], TGPP)]


def test_5014_inner_avp_length_below_header() -> None:
    inner = struct.pack("!II", AvpCode.VENDOR_ID, (M << 24) | 4) + b"\0\0\0\0"
    p = check(Message(257, 0, 0x80, 1, 2, [*cer().avps, Avp(260, inner, 0, M)]))
    assert p.result_code == 5014
    assert p.failed == [vsai(Avp(AvpCode.VENDOR_ID, b"", 0, M))]


# ------------------------------------------------------------------ ordering, limits

def test_only_the_first_error_is_reported() -> None:
    no_m = Avp(AvpCode.ORIGIN_HOST, b"mme.localdomain", 0, 0)
    unknown = Avp(99999, b"", 0, M)
    first_3009 = replace_avp(ecr(), AvpCode.ORIGIN_HOST, no_m)
    first_3009.avps.append(unknown)
    assert check(first_3009).result_code == 3009
    first_5001 = replace_avp(ecr(), AvpCode.ORIGIN_HOST, no_m)
    first_5001.avps.insert(1, unknown)
    assert check(first_5001).result_code == 5001


def test_header_errors_come_before_avp_errors() -> None:
    msg = replace_avp(ecr(flags=0x80), AvpCode.ORIGIN_HOST, None)
    assert check(msg).result_code == 3008


def test_deeply_nested_groups_do_not_crash_the_check() -> None:
    group = ti(IMEI)
    for _ in range(3):
        group = ti(group)  # Terminal-Information's *[AVP] admits itself
    assert D.check_message(replace_avp(ecr(), AvpCode.TERMINAL_INFORMATION, group, TGPP)) is None
    for _ in range(3000):
        group = Avp(AvpCode.TERMINAL_INFORMATION, group.encode(), TGPP, VM)
    p = D.check_message(replace_avp(ecr(), AvpCode.TERMINAL_INFORMATION, group, TGPP))
    assert p is not None and p.result_code == ResultCode.UNABLE_TO_COMPLY


# ------------------------------------------------------------------ answers

def test_error_answer_with_e_bit_uses_the_generic_grammar() -> None:
    # RFC 6733 7.2: no Auth-Session-State needed in an E-bit ECA
    pe = messages.protocol_error(ecr(), EIR, Problem(ResultCode.TOO_BUSY, [], "busy"))
    assert D.check_message(pe) is None
    missing_rc = replace_avp(pe, AvpCode.RESULT_CODE, None)
    p = check(missing_rc)
    assert (p.result_code, p.failed) == (5005, [Avp(268, b"\0\0\0\0", 0, M)])
    # without the E bit the same AVPs break the ECA grammar
    no_e = Message(pe.code, pe.app_id, 0x40, pe.hbh, pe.e2e, pe.avps)
    assert check(no_e).result_code == 5005


def test_eca_missing_origin_realm() -> None:
    p = check(replace_avp(eca(), AvpCode.ORIGIN_REALM, None))
    assert (p.result_code, p.failed) == (5005, [Avp(296, b"", 0, M)])


# ------------------------------------------------------------------ grammar and definitions

def test_parse_grammar() -> None:
    g = parse_grammar("< Session-Id > {Origin-Host} [User-Name] 1*{Host-IP-Address} "
                      "*[Proxy-Info] 2*3{Route-Record} 0*1<DRMP>")
    rules = [(r.name, r.min, r.max, r.fixed) for r in g.rules]
    assert rules == [("Session-Id", 1, 1, True), ("Origin-Host", 1, 1, False),
                     ("User-Name", 0, 1, False), ("Host-IP-Address", 1, None, False),
                     ("Proxy-Info", 0, None, False), ("Route-Record", 2, 3, False),
                     ("DRMP", 0, 1, True)]
    assert not g.extensible
    assert parse_grammar("{Origin-Host} *[AVP]").extensible
    assert [r.name for r in g.fixed_head] == ["Session-Id"]


def test_command_from_abnf() -> None:
    (ecr_def,) = s13.COMMANDS
    assert (ecr_def.code, ecr_def.app_id, ecr_def.proxiable) == (324, 16777252, True)
    assert ecr_def.name == "ME-Identity-Check"
    assert [r.name for r in ecr_def.request.fixed_head] == ["Session-Id"]
    cer_def = base.COMMANDS[0]
    assert (cer_def.code, cer_def.app_id, cer_def.proxiable) == (257, 0, False)
    with pytest.raises(ValueError):
        command_from_abnf("<X> ::= {Origin-Host}", "<Y> ::= <Diameter Header: 1>", "")


def test_dictionary_rejects_a_grammar_naming_an_unknown_avp() -> None:
    bad = CommandDef(1, 0, "X", parse_grammar("{No-Such-AVP}"), parse_grammar(""), False, "")
    with pytest.raises(ValueError, match="No-Such-AVP"):
        Dictionary(base.AVPS, [bad])


def test_s13_avp_definitions() -> None:
    for name, code, typ in [("Terminal-Information", 1401, AvpType.GROUPED),
                            ("IMEI", 1402, AvpType.UTF8), ("Software-Version", 1403, AvpType.UTF8),
                            ("3GPP2-MEID", 1471, AvpType.OCTETS),
                            ("Equipment-Status", 1445, AvpType.ENUM)]:
        d = D.avp(name)
        assert (d.code, d.vendor, d.type, d.m, d.ignore_m_mismatch) == (
            code, TGPP, typ, MRule.MUST, True)
    assert D.avp("Equipment-Status").values == frozenset({0, 1, 2})


def test_must_not_m_avps() -> None:
    # RFC 6733 4.5: the base AVPs are sent with M, except these
    must_not = {d.name for d in base.AVPS if d.m is MRule.MUST_NOT}
    assert must_not == {"Firmware-Revision", "Product-Name", "Error-Message",
                        "Error-Reporting-Host"}


def test_example_avps() -> None:
    assert AvpDef(1, "x", AvpType.U64).example() == Avp(1, b"\0" * 8, 0, M)
    assert AvpDef(1, "x", AvpType.UTF8, m=MRule.MUST_NOT).example() == Avp(1, b"", 0, 0)
    assert AvpDef(1, "x", AvpType.ENUM, 10415).example() == Avp(1, b"\0" * 4, 10415, VM)


# ------------------------------------------------------------------ messages.py answer rules

def full_ecr() -> Message:
    avps = ecr_avps()
    avps.insert(5, Avp.octets(AvpCode.DESTINATION_HOST, b"eir.localdomain"))
    pi1 = Avp.grouped(AvpCode.PROXY_INFO, [Avp.octets(280, b"dra1"), Avp.octets(33, b"s1")])
    pi2 = Avp.grouped(AvpCode.PROXY_INFO, [Avp.octets(280, b"dra2"), Avp.octets(33, b"s2")])
    avps += [pi1, pi2, Avp.octets(AvpCode.ROUTE_RECORD, b"dra1")]
    msg = ecr(avps)
    assert D.check_message(msg) is None
    return msg


def _answer_rules(req: Message, ans: Message) -> None:
    assert (ans.code, ans.app_id, ans.hbh, ans.e2e) == (req.code, req.app_id, req.hbh, req.e2e)
    assert not ans.is_request
    assert ans.is_proxiable == req.is_proxiable
    assert ans.avps[0].code == AvpCode.SESSION_ID
    assert ans.avps[0].data == b"mme.localdomain;1;2"
    assert ans.find(AvpCode.ORIGIN_HOST) == Avp.octets(264, b"eir.localdomain")
    assert ans.find(AvpCode.ORIGIN_REALM) == Avp.octets(296, b"localdomain")
    assert ans.find(AvpCode.DESTINATION_HOST) is None
    assert ans.find(AvpCode.DESTINATION_REALM) is None
    assert ans.find(AvpCode.ROUTE_RECORD) is None
    assert ans.find_all(AvpCode.PROXY_INFO) == req.find_all(AvpCode.PROXY_INFO)
    assert [a.code for a in ans.avps][-2:] == [AvpCode.PROXY_INFO, AvpCode.PROXY_INFO]


def test_session_answer_rules() -> None:
    req = full_ecr()
    ans = messages.session_answer(
        req, EIR, result=[Avp.u32(AvpCode.RESULT_CODE, 2001)],
        before_origin=[Avp.u32(AvpCode.AUTH_SESSION_STATE, 1)],
        after_origin=[Avp.i32(AvpCode.EQUIPMENT_STATUS, 1, TGPP)])
    _answer_rules(req, ans)
    assert not ans.is_error
    assert ans.flags == 0x40
    assert [a.code for a in ans.avps] == [263, 268, 277, 264, 296, 1445, 284, 284]
    assert D.check_message(ans) is None


def test_session_answer_with_a_permanent_error() -> None:
    req = replace_avp(full_ecr(), AvpCode.TERMINAL_INFORMATION, None, TGPP)
    problem = D.check_message(req)
    assert problem is not None and problem.result_code == 5005
    ans = messages.session_answer(
        req, EIR, result=[Avp.u32(AvpCode.RESULT_CODE, problem.result_code)],
        before_origin=[Avp.u32(AvpCode.AUTH_SESSION_STATE, 1)], problem=problem)
    _answer_rules(req, ans)
    assert not ans.is_error  # 5xxx: no E bit
    assert ans.find(AvpCode.FAILED_AVP) == Avp.grouped(AvpCode.FAILED_AVP, problem.failed)
    err = ans.find(AvpCode.ERROR_MESSAGE)
    assert err is not None and err.flags == 0 and err.as_str() == problem.reason
    assert D.check_message(ans) is None


def test_protocol_error_rules() -> None:
    req = full_ecr()
    bad = Avp(AvpCode.ORIGIN_HOST, b"mme.localdomain", 0, 0)
    req = replace_avp(req, AvpCode.ORIGIN_HOST, bad)
    problem = D.check_message(req)
    assert problem is not None and problem.protocol_error
    ans = messages.protocol_error(req, EIR, problem)
    _answer_rules(req, ans)
    assert ans.is_error
    assert ans.flags == 0x60
    assert [a.code for a in ans.avps] == [263, 264, 296, 268, 281, 279, 284, 284]
    assert messages.result_code_of(ans) == 3009
    assert ans.find(AvpCode.FAILED_AVP) == Avp.grouped(AvpCode.FAILED_AVP, [bad])
    assert D.check_message(ans) is None


def test_protocol_error_copies_a_missing_p_bit() -> None:
    req = ecr(flags=0x80)  # ECR without P: 3008
    problem = D.check_message(req)
    assert problem is not None and problem.result_code == 3008
    ans = messages.protocol_error(req, EIR, problem)
    assert ans.flags == CmdFlag.ERROR
    assert ans.find(AvpCode.FAILED_AVP) is None  # nothing to report


def test_protocol_error_without_session_id_and_with_origin_state() -> None:
    req = messages.dwr(MME, 5, 6)
    ident = Identity("eir.localdomain", "localdomain", origin_state_id=42)
    ans = messages.protocol_error(req, ident, Problem(ResultCode.UNKNOWN_PEER))
    assert [a.code for a in ans.avps] == [264, 296, 268, 278]
    assert (ans.flags, ans.hbh, ans.e2e) == (0x20, 5, 6)


@pytest.mark.parametrize(("code", "e_bit"), [(2001, False), (3010, True), (5010, False),
                                             (3004, True), (4003, False)])
def test_base_answers_set_e_only_for_3xxx(code: int, e_bit: bool) -> None:
    req = cer()
    for ans in (messages.cea(req, EIR, messages.S13_APPLICATIONS, code),
                messages.dwa(messages.dwr(MME, 1, 2), EIR, code),
                messages.dpa(messages.dpr(MME, 1, 2), EIR, code)):
        assert ans.is_error is e_bit
        assert not ans.is_proxiable
        assert messages.result_code_of(ans) == code
        assert ans.find(AvpCode.DESTINATION_REALM) is None


def test_cea_copies_ids_and_carries_our_capabilities() -> None:
    req = cer()
    ans = messages.cea(req, EIR, messages.S13_APPLICATIONS, 2001)
    assert (ans.code, ans.app_id, ans.hbh, ans.e2e, ans.flags) == (257, 0, req.hbh, req.e2e, 0)
    assert ans.avps[0] == Avp.u32(AvpCode.RESULT_CODE, 2001)
    host_ip = ans.find(AvpCode.HOST_IP_ADDRESS)
    assert host_ip is not None and host_ip.as_address() == "192.0.2.20"
    # TS 29.272 7.1.7: S13 inside a VSAI with vendor 3GPP, and Supported-Vendor-Id 3GPP
    assert ans.find(AvpCode.VENDOR_SPECIFIC_APPLICATION_ID) == vsai(VENDOR_3GPP, AUTH_S13)
    assert ans.find(AvpCode.SUPPORTED_VENDOR_ID) == Avp.u32(265, TGPP)
    assert ans.find(AvpCode.AUTH_APPLICATION_ID) is None


def test_common_applications() -> None:
    ours = {Application.S13}
    assert messages.common_applications(ours, {Application.S13, 4}) == {Application.S13}
    assert messages.common_applications(ours, {16777251}) == set()
    assert messages.common_applications(ours, set()) == set()
    assert messages.common_applications(ours, {Application.RELAY}) == ours
    assert messages.common_applications({Application.S13, 0}, {0xFFFFFFFF, 5}) == {
        Application.S13, 0}


def test_advertised_applications_reads_plain_and_vsai_ids() -> None:
    msg = Message(257, 0, 0x80, 1, 2, [
        *cer().avps,
        Avp.u32(AvpCode.AUTH_APPLICATION_ID, 4),
        Avp.u32(AvpCode.ACCT_APPLICATION_ID, 3),
        vsai(Avp.u32(AvpCode.VENDOR_ID, 5535), Avp.u32(AvpCode.ACCT_APPLICATION_ID, 777)),
        Avp.u32(AvpCode.AUTH_APPLICATION_ID, 999, TGPP),  # a vendor AVP with the same code
        Avp(AvpCode.AUTH_APPLICATION_ID, b"\0\0\x01", 0, M),  # unreadable: skipped
        Avp(AvpCode.VENDOR_SPECIFIC_APPLICATION_ID, b"\0\0\0", 0, M),  # malformed VSAI
    ])
    assert messages.advertised_applications(msg) == {Application.S13, 4, 3, 777}
    assert messages.advertised_applications(messages.dwr(MME, 1, 2)) == set()


def test_result_code_of() -> None:
    assert messages.result_code_of(eca()) == 2001
    er = Avp.grouped(AvpCode.EXPERIMENTAL_RESULT, [VENDOR_3GPP, Avp.u32(298, 5422)])
    assert messages.result_code_of(replace_avp(eca(), AvpCode.RESULT_CODE, er)) == 5422
    assert messages.result_code_of(ecr()) is None
    assert messages.result_code_of(eca([Avp(268, b"\0", 0, M)])) is None


def test_problem_from_decode_error() -> None:
    wire = bytearray(ecr().encode())
    wire[0] = 2
    err = decode_message(bytes(wire))
    assert isinstance(err, DecodeError)
    p = messages.problem_from_decode_error(err)
    assert (p.result_code, p.failed) == (5011, [])
    wire = bytearray(ecr().encode())
    wire[20 + 5:20 + 8] = (4).to_bytes(3, "big")  # Session-Id length 4
    err = decode_message(bytes(wire))
    assert isinstance(err, DecodeError)
    p = messages.problem_from_decode_error(err)
    assert (p.result_code, p.failed) == (5014, [Avp(263, b"", 0, M)])
    ans = messages.protocol_error(err.message, EIR, p)
    assert (ans.hbh, ans.e2e) == (0x11, 0x22)


# ------------------------------------------------------------------ gaps (see the report)

def test_vsai_in_ecr_is_ignored() -> None:
    avps = ecr_avps()
    avps.insert(1, vsai(VENDOR_3GPP))
    assert D.check_message(ecr(avps)) is None
