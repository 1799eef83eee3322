"""S13 ME-Identity-Check answers (eir.s13.S13Application.handle) on raw frames, no sockets.

Requests are built from raw AVPs in ``tests/support.py``; answers are
decoded with the codec and checked field by field against TS 29.272
7.2.20 and RFC 6733 7.2 (PROTOCOL.md 1.9, 2.2, 2.3). The fast path and
the general path must agree byte for byte on every request the fast path
accepts.
"""

from __future__ import annotations

import logging
import random
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import (
    DICT,
    EIR,
    S13,
    TGPP,
    StubDecide,
    assert_answers,
    codes,
    decode_one,
    ecr,
    ecr_avps,
    failed_avps,
    fix_length,
    ident_avp,
    is_error,
    origin,
    proxy_info,
    result_code,
    terminal_information,
    u32,
    vsai,
    with_version,
)

from eir.diameter.codec import Avp, Message
from eir.diameter.constants import AvpCode
from eir.diameter.dictionary import ERROR_ANSWER
from eir.diameter.peer import OTHER_COMMAND
from eir.s13 import S13Application

ERR_MSG = AvpCode.ERROR_MESSAGE


def make_app(realms: list[str] | None = None) -> tuple[S13Application, StubDecide]:
    decide = StubDecide()
    return S13Application(EIR, DICT, decide, realms=realms), decide


def answer(app: S13Application, req: Message | bytes) -> Message:
    frame = req if isinstance(req, bytes) else req.encode()
    out = app.handle(frame)
    assert out is not None
    return decode_one(out)


def without_error_message(msg: Message) -> list[int]:
    return [c for c in codes(msg) if c != ERR_MSG]


# ------------------------------------------------------------------ successful answers


@pytest.mark.parametrize(("imei", "status"), [
    ("35209900176148", 0), ("86768803654321", 1), ("99000000000001", 2)])
def test_eca_2001_with_each_equipment_status(imei: str, status: int) -> None:
    app, decide = make_app()
    req = ecr(imei, hbh=0x11223344, e2e=0x55667788)
    ans = answer(app, req)
    assert_answers(ans, req)
    assert ans.flags == 0x40 and ans.version == 1
    assert codes(ans) == [AvpCode.SESSION_ID, AvpCode.RESULT_CODE, AvpCode.AUTH_SESSION_STATE,
                          AvpCode.ORIGIN_HOST, AvpCode.ORIGIN_REALM, AvpCode.EQUIPMENT_STATUS]
    assert result_code(ans) == 2001
    assert u32(ans, AvpCode.AUTH_SESSION_STATE) == 1
    es = ans.find(AvpCode.EQUIPMENT_STATUS, TGPP)
    assert es is not None and es.flags == 0xC0
    # PROTOCOL.md 2.3 wire bytes
    assert es.encode() == bytes.fromhex("000005a5c0000010000028af") + status.to_bytes(4, "big")
    assert DICT.check_message(ans) is None
    assert decide.calls == [(imei, "401011234567890", "01")]
    assert app.fast == 1 and app.slow == 0


def test_eca_5422_without_equipment_status_when_decide_returns_none() -> None:
    app, _ = make_app()
    req = ecr("00100000000000")
    ans = answer(app, req)
    assert_answers(ans, req)
    assert ans.flags == 0x40  # a permanent failure: no E bit
    assert codes(ans) == [AvpCode.SESSION_ID, AvpCode.EXPERIMENTAL_RESULT,
                          AvpCode.AUTH_SESSION_STATE, AvpCode.ORIGIN_HOST, AvpCode.ORIGIN_REALM]
    er = ans.find(AvpCode.EXPERIMENTAL_RESULT)
    assert er.encode() == bytes.fromhex(
        "0000012940000020" "0000010a4000000c000028af" "0000012a4000000c0000152e")
    assert ans.find(AvpCode.RESULT_CODE) is None
    assert ans.find(AvpCode.EQUIPMENT_STATUS, TGPP) is None
    assert DICT.check_message(ans) is None


@pytest.mark.parametrize("imei", ["352099001761481", "352099001761480", "12345", "", "IMEI?"])
def test_imei_is_passed_to_decide_exactly_as_received(imei: str) -> None:
    app, decide = make_app()
    ans = answer(app, ecr(imei))
    assert decide.calls == [(imei, "401011234567890", "01")]
    assert result_code(ans) == 2001


def test_both_paths_pass_the_origin_realm_as_the_operator() -> None:
    app, decide = make_app()
    answer(app, ecr())  # the usual shape: fast path
    answer(app, ecr(proxy_infos=[proxy_info("relay.test", b"s")]))  # general path
    assert app.fast == 1 and app.slow == 1
    assert decide.operators == ["test", "test"]


def test_missing_software_version_and_user_name_reach_decide_as_none() -> None:
    app, decide = make_app()
    answer(app, ecr(sv=None, imsi=None))
    assert decide.calls == [("35209900176148", None, None)]


def test_answer_copies_ids_session_p_bit_and_proxy_info_in_order() -> None:
    app, decide = make_app()
    pis = [proxy_info("dra1.test", b"\x01state-one"), proxy_info("dra2.test", b"s2")]
    req = ecr("86768803654321", hbh=0xDEADBEEF, e2e=0xFEEDFACE, session_id="mme.test;77;88;x",
              dest_host="eir.localdomain", route_records=["dra1.test", "dra2.test"],
              proxy_infos=pis)
    req.flags = 0xD0  # a retransmission: the T bit is not copied
    ans = answer(app, req)
    assert_answers(ans, req)
    assert ans.flags == 0x40
    assert ans.avps[0].data == b"mme.test;77;88;x"
    assert ans.find_all(AvpCode.PROXY_INFO) == pis
    assert ans.avps[-2:] == pis  # *[Proxy-Info] at the end of the ECA
    assert ans.find(AvpCode.ROUTE_RECORD) is None
    assert ans.find(AvpCode.VENDOR_SPECIFIC_APPLICATION_ID) is None
    assert result_code(ans) == 2001 and u32(ans, AvpCode.EQUIPMENT_STATUS, TGPP) == 1
    assert decide.calls == [("86768803654321", "401011234567890", "01")]


def test_vsai_in_the_ecr_is_ignored_and_never_sent() -> None:
    app, _ = make_app()
    avps = ecr_avps()
    avps.insert(1, vsai(S13))
    req = ecr(avps=avps)
    ans = answer(app, req)
    assert result_code(ans) == 2001
    assert ans.find(AvpCode.VENDOR_SPECIFIC_APPLICATION_ID) is None


@pytest.mark.parametrize(("ti_flags", "imei_flags"), [(0x80, 0xC0), (0xC0, 0x80), (0x80, 0x80)])
def test_mismatched_m_bit_on_3gpp_avps_is_not_an_error(ti_flags: int, imei_flags: int) -> None:
    app, _ = make_app()
    avps = ecr_avps()
    i = codes(ecr(avps=avps)).index(AvpCode.TERMINAL_INFORMATION)
    avps[i] = terminal_information(flags=ti_flags, imei_flags=imei_flags)
    req = ecr(avps=avps)
    ans = answer(app, req)
    assert_answers(ans, req)
    assert result_code(ans) == 2001 and u32(ans, AvpCode.EQUIPMENT_STATUS, TGPP) == 0


def test_unknown_non_mandatory_avp_is_ignored() -> None:
    app, _ = make_app()
    req = ecr(avps=[*ecr_avps(), Avp(4242, b"whatever", 0, 0x00), Avp(77, b"z", 99, 0x80)])
    ans = answer(app, req)
    assert_answers(ans, req)
    assert result_code(ans) == 2001


# ------------------------------------------------------------------ routing


def test_foreign_destination_host_gets_3002() -> None:
    app, decide = make_app()
    req = ecr(dest_host="other-eir.localdomain")
    ans = answer(app, req)
    assert_answers(ans, req)
    assert ans.flags == 0x60 and result_code(ans) == 3002
    assert without_error_message(ans) == [263, 264, 296, 268]
    assert decide.calls == []


def test_foreign_destination_realm_gets_3003() -> None:
    app, decide = make_app()
    req = ecr(dest_realm="elsewhere")
    ans = answer(app, req)
    assert_answers(ans, req)
    assert ans.flags == 0x60 and result_code(ans) == 3003
    assert without_error_message(ans) == [263, 264, 296, 268]
    assert decide.calls == []


def test_destination_host_and_realm_match_without_case() -> None:
    app, _ = make_app()
    ans = answer(app, ecr(dest_host="EIR.LocalDomain", dest_realm="LOCALDOMAIN"))
    assert result_code(ans) == 2001
    assert app.fast == 1


def test_realm_star_accepts_any_realm() -> None:
    app, _ = make_app(["*"])
    for realm in ("elsewhere", "epc.mnc001.mcc401.3gppnetwork.org"):
        assert result_code(answer(app, ecr(dest_realm=realm))) == 2001
    assert app.fast == 2
    req = ecr(dest_realm="elsewhere", proxy_infos=[proxy_info("dra", b"s")])
    assert result_code(answer(app, req)) == 2001  # the general path agrees


def test_listed_realms_are_served_and_others_not() -> None:
    app, _ = make_app(["epc.example", "localdomain"])
    assert result_code(answer(app, ecr(dest_realm="EPC.example"))) == 2001
    assert result_code(answer(app, ecr(dest_realm="localdomain"))) == 2001
    assert result_code(answer(app, ecr(dest_realm="other"))) == 3003


# ------------------------------------------------------------------ errors (PROTOCOL.md 1.9)


def replace(avps: list[Avp], code: int, new: list[Avp]) -> list[Avp]:
    """``avps`` with the AVP ``code`` replaced by ``new`` (empty: removed)."""
    i = next(i for i, a in enumerate(avps) if a.code == code)
    return avps[:i] + new + avps[i + 1:]


def check_protocol_error(app: S13Application, req: Message | bytes, code: int,
                         flags: int = 0x60) -> Message:
    """An E-bit answer in the generic grammar of RFC 6733 7.2."""
    ans = answer(app, req)
    assert ans.flags == flags
    assert result_code(ans) == code
    assert DICT.check_avps(ans.avps, ERROR_ANSWER) is None
    assert ans.find(AvpCode.AUTH_SESSION_STATE) is None
    assert ans.find(AvpCode.EQUIPMENT_STATUS, TGPP) is None
    if isinstance(req, Message):
        assert_answers(ans, req)
    return ans


def check_eca_error(app: S13Application, req: Message, code: int) -> Message:
    """A permanent failure in the ECA grammar: no E bit, Result-Code, Failed-AVP."""
    ans = answer(app, req)
    assert_answers(ans, req)
    assert ans.flags == 0x40
    assert result_code(ans) == code
    assert without_error_message(ans)[:5] == [263, 268, 277, 264, 296]
    assert ans.find(AvpCode.EQUIPMENT_STATUS, TGPP) is None
    assert ans.find(AvpCode.EXPERIMENTAL_RESULT) is None
    assert DICT.check_message(ans) is None
    return ans


def test_3001_unknown_command_in_s13() -> None:
    app, decide = make_app()
    ans = check_protocol_error(app, ecr(code=325), 3001)
    assert without_error_message(ans) == [263, 264, 296, 268]
    assert decide.calls == []


def test_made_up_command_codes_are_counted_as_one() -> None:
    """A peer sending thousands of distinct command codes must not grow the error
    counters (found by bench/fuzz_net.py: the server's RSS grew with each new code)."""
    app, _ = make_app()
    for code in range(1000, 3000):
        assert result_code(answer(app, ecr(code=code, hbh=code))) == 3001
    assert app.errors == {(OTHER_COMMAND, 3001): 2000}


def test_3007_application_not_served() -> None:
    app, _ = make_app()
    ans = check_protocol_error(app, ecr(app=16777251), 3007)
    assert without_error_message(ans) == [263, 264, 296, 268]


def test_3008_e_bit_on_a_request() -> None:
    app, _ = make_app()
    check_protocol_error(app, ecr(flags=0xE0), 3008)


def test_3008_p_bit_missing() -> None:
    app, _ = make_app()
    ans = check_protocol_error(app, ecr(flags=0x80), 3008, flags=0x20)
    assert ans.avps[0].code == AvpCode.SESSION_ID


def test_3009_origin_host_without_m_bit() -> None:
    app, _ = make_app()
    bad = ident_avp(AvpCode.ORIGIN_HOST, "mme.test", 0x00)
    req = ecr(avps=replace(ecr_avps(), AvpCode.ORIGIN_HOST, [bad]))
    ans = check_protocol_error(app, req, 3009)
    assert failed_avps(ans) == [bad]
    assert without_error_message(ans) == [263, 264, 296, 268, 279]


def test_3009_reserved_avp_flag_bit() -> None:
    app, _ = make_app()
    bad = Avp(AvpCode.AUTH_SESSION_STATE, b"\0\0\0\1", 0, 0x41)
    req = ecr(avps=replace(ecr_avps(), AvpCode.AUTH_SESSION_STATE, [bad]))
    ans = check_protocol_error(app, req, 3009)
    assert failed_avps(ans) == [bad]


def test_3009_reserved_flag_bit_on_imei() -> None:
    app, _ = make_app()
    ti = terminal_information(imei_flags=0xC4)
    req = ecr(avps=replace(ecr_avps(), AvpCode.TERMINAL_INFORMATION, [ti]))
    ans = check_protocol_error(app, req, 3009)
    (group,) = failed_avps(ans)
    assert (group.code, group.vendor) == (AvpCode.TERMINAL_INFORMATION, TGPP)
    assert group.children() == [Avp(AvpCode.IMEI, b"35209900176148", TGPP, 0xC4)]


def test_5001_unknown_mandatory_avp() -> None:
    app, decide = make_app()
    unknown = Avp(999, b"x", 0, 0x40)
    req = ecr(avps=[*ecr_avps(), unknown])
    ans = check_eca_error(app, req, 5001)
    assert failed_avps(ans) == [unknown]
    assert without_error_message(ans) == [263, 268, 277, 264, 296, 279]
    assert decide.calls == []


def test_5001_unknown_mandatory_vendor_avp() -> None:
    app, _ = make_app()
    unknown = Avp(1445, b"\0\0\0\0", 12345, 0xC0)
    ans = check_eca_error(app, ecr(avps=[*ecr_avps(), unknown]), 5001)
    assert failed_avps(ans) == [unknown]


def test_5001_imei_without_v_bit() -> None:
    app, _ = make_app()
    imei = Avp(AvpCode.IMEI, b"35209900176148", 0, 0x40)
    ti = Avp.grouped(AvpCode.TERMINAL_INFORMATION, [imei], TGPP)
    req = ecr(avps=replace(ecr_avps(), AvpCode.TERMINAL_INFORMATION, [ti]))
    ans = check_eca_error(app, req, 5001)
    (group,) = failed_avps(ans)
    assert (group.code, group.vendor, group.flags) == (AvpCode.TERMINAL_INFORMATION, TGPP, 0xC0)
    assert group.children() == [imei]


def test_5004_auth_session_state_out_of_range() -> None:
    app, _ = make_app()
    bad = Avp.u32(AvpCode.AUTH_SESSION_STATE, 5)
    req = ecr(avps=replace(ecr_avps(), AvpCode.AUTH_SESSION_STATE, [bad]))
    ans = check_eca_error(app, req, 5004)
    assert failed_avps(ans) == [bad]


def test_5004_empty_origin_host() -> None:
    app, _ = make_app()
    bad = ident_avp(AvpCode.ORIGIN_HOST, "")
    req = ecr(avps=replace(ecr_avps(), AvpCode.ORIGIN_HOST, [bad]))
    assert failed_avps(check_eca_error(app, req, 5004)) == [bad]


@pytest.mark.parametrize("value", [b"dra\xff.test", b""])
def test_5004_route_record_that_is_no_diameter_identity(value: bytes) -> None:
    # the fast path must not accept what the general path refuses
    app, decide = make_app()
    bad = ident_avp(AvpCode.ROUTE_RECORD, value)
    req = ecr(avps=[*ecr_avps(), bad])
    assert failed_avps(check_eca_error(app, req, 5004)) == [bad]
    assert decide.calls == []


def test_5005_missing_terminal_information() -> None:
    app, decide = make_app()
    req = ecr(avps=replace(ecr_avps(), AvpCode.TERMINAL_INFORMATION, []))
    ans = check_eca_error(app, req, 5005)
    assert failed_avps(ans) == [Avp(AvpCode.TERMINAL_INFORMATION, b"", TGPP, 0xC0)]
    assert decide.calls == []


def test_5005_terminal_information_without_imei() -> None:
    app, decide = make_app()
    ti = terminal_information(imei=None, sv="01")
    req = ecr(avps=replace(ecr_avps(), AvpCode.TERMINAL_INFORMATION, [ti]))
    ans = check_eca_error(app, req, 5005)
    (group,) = failed_avps(ans)
    assert (group.code, group.vendor, group.flags) == (AvpCode.TERMINAL_INFORMATION, TGPP, 0xC0)
    assert group.children() == [Avp(AvpCode.IMEI, b"", TGPP, 0xC0)]
    assert decide.calls == []


def test_5005_session_id_not_first() -> None:
    app, _ = make_app()
    avps = ecr_avps(session_id="mme.test;5;6")
    sid = avps.pop(0)
    avps.insert(3, sid)
    req = ecr(avps=avps)
    ans = check_eca_error(app, req, 5005)
    assert ans.avps[0] == Avp.utf8(AvpCode.SESSION_ID, "mme.test;5;6")  # still copied, first
    assert failed_avps(ans) == [sid]


def test_5005_missing_session_id_gets_an_e_bit_answer_without_session_id() -> None:
    app, _ = make_app()
    req = ecr(avps=ecr_avps()[1:])
    ans = check_protocol_error(app, req, 5005)
    assert ans.find(AvpCode.SESSION_ID) is None
    assert without_error_message(ans) == [264, 296, 268, 279]
    assert failed_avps(ans) == [Avp(AvpCode.SESSION_ID, b"", 0, 0x40)]


def test_5008_avp_not_allowed_inside_a_closed_group() -> None:
    # Experimental-Result ({Vendor-Id}{Experimental-Result-Code}, no *[AVP]) reaches the
    # ECR through *[AVP]; a third AVP inside it is not allowed
    app, decide = make_app()
    extra = ident_avp(AvpCode.ORIGIN_HOST, "x.test")
    bad = Avp.grouped(AvpCode.EXPERIMENTAL_RESULT,
                      [Avp.u32(AvpCode.VENDOR_ID, TGPP),
                       Avp.u32(AvpCode.EXPERIMENTAL_RESULT_CODE, 5422), extra])
    ans = check_eca_error(app, ecr(avps=[*ecr_avps(), bad]), 5008)
    (group,) = failed_avps(ans)
    assert (group.code, group.vendor) == (AvpCode.EXPERIMENTAL_RESULT, 0)
    assert group.children() == [extra]
    assert decide.calls == []


def test_malformed_vsai_in_the_ecr_is_ignored() -> None:
    # TS 29.272 7.2.2 (PROTOCOL.md 2.1): a VSAI in an S13 command is ignored, content and all
    app, _ = make_app()
    bad = Avp.grouped(AvpCode.VENDOR_SPECIFIC_APPLICATION_ID,
                      [Avp.u32(AvpCode.VENDOR_ID, TGPP), Avp.u32(AvpCode.AUTH_APPLICATION_ID, S13),
                       ident_avp(AvpCode.ORIGIN_HOST, "x.test")])
    avps = ecr_avps()
    avps.insert(1, bad)
    req = ecr(avps=avps)
    ans = answer(app, req)
    assert_answers(ans, req)
    assert result_code(ans) == 2001
    assert ans.find(AvpCode.VENDOR_SPECIFIC_APPLICATION_ID) is None


def test_5009_two_origin_hosts() -> None:
    app, _ = make_app()
    second = ident_avp(AvpCode.ORIGIN_HOST, "mme2.test")
    req = ecr(avps=[*ecr_avps(), second])
    ans = check_eca_error(app, req, 5009)
    assert failed_avps(ans) == [second]
    # our own Origin-Host, once, not the request's
    assert [a.data for a in ans.find_all(AvpCode.ORIGIN_HOST)] == [b"eir.localdomain"]


def test_5009_two_terminal_informations() -> None:
    app, decide = make_app()
    second = terminal_information("86768803654321")
    req = ecr(avps=[*ecr_avps(), second])
    ans = check_eca_error(app, req, 5009)
    assert failed_avps(ans) == [second]
    assert decide.calls == []


def test_5009_two_imeis() -> None:
    app, _ = make_app()
    ti = Avp.grouped(AvpCode.TERMINAL_INFORMATION, [
        Avp.utf8(AvpCode.IMEI, "35209900176148", TGPP), Avp.utf8(AvpCode.IMEI, "1", TGPP)], TGPP)
    req = ecr(avps=replace(ecr_avps(), AvpCode.TERMINAL_INFORMATION, [ti]))
    (group,) = failed_avps(check_eca_error(app, req, 5009))
    assert group.children() == [Avp.utf8(AvpCode.IMEI, "1", TGPP)]


def test_5011_unsupported_version() -> None:
    app, _ = make_app()
    req = ecr()
    ans = check_protocol_error(app, with_version(req.encode(), 2), 5011)
    assert ans.version == 1
    assert (ans.code, ans.app_id, ans.hbh, ans.e2e) == (324, S13, req.hbh, req.e2e)
    assert failed_avps(ans) == []


def test_5014_avp_length_beyond_the_message() -> None:
    app, _ = make_app()
    req = ecr()
    frame = bytearray(req.encode())
    pos = len(frame) - 24  # User-Name "401011234567890": 8 + 15 bytes, padded to 24
    assert frame[pos:pos + 4] == b"\0\0\0\1"
    frame[pos + 5:pos + 8] = (100).to_bytes(3, "big")
    ans = answer(app, bytes(frame))
    assert ans.flags == 0x40 and result_code(ans) == 5014
    assert (ans.hbh, ans.e2e) == (req.hbh, req.e2e)
    assert ans.avps[0] == Avp.utf8(AvpCode.SESSION_ID, "mme.test;1;2")
    assert failed_avps(ans) == [Avp(AvpCode.USER_NAME, b"\0\0\0\0", 0, 0x40)]
    assert DICT.check_message(ans) is None


def test_5014_wrong_size_for_an_enumerated() -> None:
    app, _ = make_app()
    bad = Avp(AvpCode.AUTH_SESSION_STATE, b"\0\0\0\0\1", 0, 0x40)
    req = ecr(avps=replace(ecr_avps(), AvpCode.AUTH_SESSION_STATE, [bad]))
    assert failed_avps(check_eca_error(app, req, 5014)) == [bad]


def test_5015_message_length_not_a_multiple_of_four() -> None:
    app, _ = make_app()
    req = ecr()
    frame = fix_length(req.encode() + b"\0\0\0")
    ans = check_protocol_error(app, frame, 5015)
    assert (ans.code, ans.hbh, ans.e2e) == (324, req.hbh, req.e2e)


def test_answers_are_not_answered() -> None:
    app, decide = make_app()
    assert app.handle(ecr(flags=0x40).encode()) is None
    assert app.handle(with_version(ecr(flags=0x40).encode(), 3)) is None
    assert decide.calls == []


# ------------------------------------------------------------------ fast path == general path

ident_text = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-", min_size=1, max_size=30)


@st.composite
def well_formed_ecrs(draw: st.DrawFn) -> bytes:
    host = "".join(c.upper() if draw(st.booleans()) else c for c in EIR.origin_host)
    req = ecr(
        draw(st.one_of(st.text(alphabet="0123456789", min_size=14, max_size=15),
                       st.sampled_from(["00100000000000", "86768803654321", "99000000000001"]),
                       st.text(max_size=20))),
        sv=draw(st.none() | st.text(alphabet="0123456789", min_size=2, max_size=2)),
        imsi=draw(st.none() | st.text(alphabet="0123456789", min_size=5, max_size=15)),
        session_id=draw(st.text(min_size=0, max_size=80)),
        dest_host=draw(st.none() | st.just(host)),
        route_records=draw(st.lists(ident_text, max_size=4)),
        hbh=draw(st.integers(0, 2**32 - 1)), e2e=draw(st.integers(0, 2**32 - 1)),
        flags=draw(st.sampled_from([0xC0, 0xD0])),
    )
    return req.encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(well_formed_ecrs())
def test_fast_and_general_paths_give_identical_answers(frame: bytes) -> None:
    app, decide = make_app()
    general = app._general(frame)
    fast_before = app.fast
    handled = app.handle(frame)
    assert app.fast == fast_before + 1, "a well-formed ECR must take the fast path"
    assert handled == general
    assert handled is not None
    ans = decode_one(handled)
    assert DICT.check_message(ans) is None
    assert decide.calls[0] == decide.calls[1]


def mutate(frame: bytes, rng: random.Random) -> bytes:
    """Flip, insert or delete a few bytes after the header, keeping the length field right."""
    b = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        pos = rng.randrange(4, len(b)) if len(b) > 4 else 4
        if op < 0.6 and pos < len(b):
            b[pos] = rng.randrange(256) if rng.random() < 0.5 else b[pos] ^ (1 << rng.randrange(8))
        elif op < 0.8:
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.choice([1, 4, 8])))
        else:
            del b[pos:pos + rng.choice([1, 4, 8])]
    if len(b) < 20:
        b += bytes(20 - len(b))
    b[0] = 1
    return fix_length(bytes(b))


@settings(max_examples=400, deadline=None)
@given(well_formed_ecrs(), st.integers(0, 2**32 - 1))
def test_whatever_the_fast_path_accepts_the_general_path_answers_the_same(
        frame: bytes, seed: int) -> None:
    app, _ = make_app()
    mutated = mutate(frame, random.Random(seed))
    fast = app._fast(mutated)
    general = app._general(mutated)
    if fast is not None:
        assert fast == general
    if mutated[4] & 0x80:
        assert general is not None
        ans = decode_one(general)
        assert (ans.hbh, ans.e2e) == (int.from_bytes(mutated[12:16], "big"),
                                      int.from_bytes(mutated[16:20], "big"))
        assert not ans.flags & 0x80


@pytest.mark.parametrize("padding", [b"\x01\x02", b"\0\xff"])
def test_nonzero_padding_is_not_echoed(padding: bytes) -> None:
    # "mme.test;1" is 10 bytes: the Session-Id AVP carries 2 bytes of padding
    req = ecr(session_id="mme.test;1").encode()
    assert req[38:40] == b"\0\0"
    frame = req[:38] + padding + req[40:]
    app, _ = make_app()
    out = app.handle(frame)
    assert out is not None
    assert out == app._general(frame)
    assert padding not in out[20:44]


def test_origin_avps_of_the_request_are_not_copied() -> None:
    app, _ = make_app()
    req = ecr(avps=replace(ecr_avps(), AvpCode.ORIGIN_HOST, origin("mme9.test", "r")[:1]))
    ans = answer(app, req)
    assert [a.data for a in ans.find_all(AvpCode.ORIGIN_HOST)] == [b"eir.localdomain"]


def test_fast_path_agrees_with_the_general_path_on_many_mutations() -> None:
    """A seeded sweep: 20,000 mutants of varied ECRs; the fast path may decline
    any of them, but what it answers must be byte-identical to the general path."""
    rng = random.Random(1402)
    # refuse: a request whose Origin-Host is not its peer's must never get the fast answer
    app = S13Application(EIR, DICT, StubDecide(), origin_check="refuse")
    peers = (b"", b"mme.test", b"other.test")
    bases = [
        ecr(route_records=["dra1.test", "dra2.example"], dest_host="eir.localdomain").encode(),
        ecr("00100000000000", session_id="mme.test;1", imsi=None).encode(),
        ecr("86768803654321", sv=None, route_records=["r"]).encode(),
        ecr("99000000000001", session_id="s;é;ü", dest_realm="localdomain").encode(),
    ]
    accepted = 0
    for i in range(20_000):
        mutated = mutate(bases[i % len(bases)], rng)
        peer = peers[i % 3]
        fast = app._fast(mutated, peer)
        if fast is not None:
            accepted += 1
            assert fast == app._general(mutated, peer), mutated.hex()
    assert accepted > 500  # the sweep does exercise the fast path


# ------------------------------------------------------------------ Origin-Host against the peer


def _from(host: str, *, route: tuple[str, ...] = (), hbh: int = 0x7001) -> bytes:
    avps = ecr_avps(route_records=route)
    avps = [ident_avp(AvpCode.ORIGIN_HOST, host) if a.code == AvpCode.ORIGIN_HOST else a
            for a in avps]
    return ecr(avps=avps, hbh=hbh).encode()


def test_a_direct_peer_naming_another_origin_host_is_counted_logged_and_answered(
        caplog: pytest.LogCaptureFixture) -> None:
    app, _ = make_app()
    peer = b"mme.test"
    assert decode_one(app.handle(_from("MME.test"), peer) or b"").find(AvpCode.RESULT_CODE)
    assert (app.origin_mismatches, app.fast) == (0, 1)  # case does not matter; fast path
    with caplog.at_level(logging.WARNING, logger="eir.s13"):
        for i in range(3):
            ans = decode_one(app.handle(_from("spoofed.test", hbh=i), peer) or b"")
            assert result_code(ans) == 2001
    assert app.origin_mismatches == 3
    warned = [r for r in caplog.records if "spoofed.test" in r.getMessage()]
    assert len(warned) == 1 and "mme.test" in warned[0].getMessage()
    # through a relay the Origin-Host is the MME's, not the relay's: fine
    ans = decode_one(app.handle(_from("spoofed.test", route=("dra1.test",)), peer) or b"")
    assert result_code(ans) == 2001 and app.origin_mismatches == 3
    # no peer known (a handler called outside a connection): nothing to compare
    app.handle(_from("spoofed.test"))
    assert app.origin_mismatches == 3


def test_refuse_answers_3010_and_off_does_not_look() -> None:
    refuse = S13Application(EIR, DICT, StubDecide(), origin_check="refuse")
    ans = decode_one(refuse.handle(_from("spoofed.test"), b"mme.test") or b"")
    assert result_code(ans) == 3010 and is_error(ans)
    text = ans.find(ERR_MSG)
    assert text is not None and b"spoofed.test" in text.data and b"mme.test" in text.data
    ok = decode_one(refuse.handle(_from("mme.test"), b"mme.test") or b"")
    assert result_code(ok) == 2001
    off = S13Application(EIR, DICT, StubDecide(), origin_check="off")
    assert result_code(decode_one(off.handle(_from("spoofed.test"), b"mme.test") or b"")) == 2001
    assert off.origin_mismatches == 0 and off.fast == 1
    with pytest.raises(ValueError, match="origin_check"):
        S13Application(EIR, DICT, StubDecide(), origin_check="maybe")
