"""Overload control without I/O: shares, buckets, the measured-load limit, refusals, DOIC.

Time is simulated: requests arrive on a schedule (seeded, Poisson), the
guard ticks every 0.1 s, so every figure here is deterministic.
"""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import DICT, EIR, S13, StubDecide, assert_answers, ecr, proxy_info, result_code

from eir.diameter.codec import Avp, Message, decode_message
from eir.diameter.constants import AvpCode, CmdFlag, ResultCode
from eir.diameter.dictionary import Problem
from eir.diameter.messages import protocol_error
from eir.diameter.overload import (
    HEADROOM,
    OLR_HOLD,
    Gate,
    Guard,
    Limits,
    fair_shares,
    scan_request,
    with_avps,
)
from eir.s13 import S13Application

EPOCH_MS = 1_764_000_000_000
TICK = 0.1


def run(guard: Guard, rates: dict[bytes, float], seconds: float, start: float = 0.0,
        lag: float = 0.0, seed: int = 1) -> dict[bytes, list[int]]:
    """Poisson arrivals at ``rates`` for ``seconds``; [admitted, offered] per peer."""
    rnd = random.Random(seed)
    events: list[tuple[float, bytes]] = []
    for peer, rate in rates.items():
        t = start
        while rate > 0:
            t += rnd.expovariate(rate)
            if t >= start + seconds:
                break
            events.append((t, peer))
    events.sort()
    out = {p: [0, 0] for p in rates}
    next_tick = start + TICK
    for t, peer in events:
        while t >= next_tick:
            guard.tick(next_tick, lag)
            next_tick += TICK
        out[peer][1] += 1
        out[peer][0] += guard.admit(peer, t)
    while next_tick <= start + seconds:
        guard.tick(next_tick, lag)
        next_tick += TICK
    return out


# -- fair shares --


def test_fair_shares_add_up_and_protect_the_small_peer() -> None:
    shares = fair_shares(1000.0, {b"a": 100.0, b"b": 10_000.0})
    assert math.isclose(sum(shares.values()), 1000.0)
    assert shares[b"a"] >= 100.0 * HEADROOM
    assert shares[b"b"] >= 800.0
    equal = fair_shares(900.0, {b"a": 5000.0, b"b": 5000.0, b"c": 5000.0})
    assert all(math.isclose(s, 300.0) for s in equal.values())
    assert fair_shares(math.inf, {b"a": 1.0}) == {b"a": math.inf}
    # a peer not measured yet wants an equal part
    assert math.isclose(fair_shares(1000.0, {b"a": -1.0, b"b": 10_000.0})[b"a"], 500.0)


# -- admission --


def test_no_limits_admit_everything() -> None:
    g = Guard(Limits(), 0.0, EPOCH_MS)
    assert not g.limited
    got = run(g, {b"a": 5000.0}, 2.0)
    assert got[b"a"][0] == got[b"a"][1]
    assert not g.report.active


def test_node_rate_limit_holds_and_a_flooding_peer_cannot_starve_a_polite_one() -> None:
    g = Guard(Limits(rate=1000.0), 0.0, EPOCH_MS)
    # the polite peer sends 200/s (under its half share), the other ten times its share
    got = run(g, {b"polite": 200.0, b"flood": 5000.0}, 10.0)
    admitted, offered = got[b"polite"]
    assert admitted / offered >= 0.999, got
    total = got[b"polite"][0] + got[b"flood"][0]
    assert 0.97 * 10_000 <= total <= 1.03 * 10_000, total  # the limit is used, not exceeded
    assert g.refused == sum(o - a for a, o in got.values())
    assert 0 < g.refused_over_capacity <= g.refused


def test_peer_rate_limit_holds_even_where_the_node_has_capacity_to_lend() -> None:
    g = Guard(Limits(rate=1000.0, peer_rate=400.0), 0.0, EPOCH_MS)
    got = run(g, {b"a": 1000.0, b"b": 100.0, b"c": 2000.0}, 5.0)
    for peer in (b"a", b"c"):
        assert got[peer][0] <= 400 * 5 + 40 + 10, got  # the rate, its first burst, a tick
    assert got[b"b"][0] == got[b"b"][1]


def test_peer_rate_limit() -> None:
    g = Guard(Limits(peer_rate=300.0), 0.0, EPOCH_MS)
    got = run(g, {b"a": 1000.0, b"b": 100.0}, 5.0)
    assert 0.9 * 1500 <= got[b"a"][0] <= 1.05 * 1500 + 30, got
    assert got[b"b"][0] == got[b"b"][1]
    assert not g.report.active  # a peer over its own limit is not the node overloaded


def test_back_to_normal_within_a_second_after_the_load_drops() -> None:
    g = Guard(Limits(rate=1000.0), 0.0, EPOCH_MS)
    run(g, {b"a": 1000.0, b"b": 1000.0}, 5.0)  # twice the limit
    assert g.refused > 0
    run(g, {b"a": 300.0, b"b": 300.0}, 1.0, start=5.0, seed=2)  # settles
    before = g.refused
    got = run(g, {b"a": 300.0, b"b": 300.0}, 3.0, start=6.0, seed=3)
    assert g.refused == before, got


# -- the measured-load limit --


def test_lag_over_target_limits_to_what_was_answered_and_lifts_when_on_time() -> None:
    g = Guard(Limits(lag_target=0.05), 0.0, EPOCH_MS)
    run(g, {b"a": 2000.0}, 1.0, lag=0.0)
    assert g.auto_cap is None and g.refused == 0
    run(g, {b"a": 2000.0}, 1.0, start=1.0, lag=0.2, seed=2)
    assert g.auto_cap is not None and g.auto_cap < 2000.0
    assert g.refused > 0
    assert g.report.active  # demand over the (measured) capacity: a DOIC report
    run(g, {b"a": 2000.0}, 3.0, start=2.0, lag=0.0, seed=3)
    assert g.auto_cap is None  # raised step by step past the demand, then lifted
    before = g.refused
    run(g, {b"a": 2000.0}, 1.0, start=5.0, lag=0.0, seed=4)
    assert g.refused == before


# -- the DOIC report (RFC 7683 5.2.1.4, 5.2.3) --


def olr_of(guard: Guard) -> dict[int, int] | None:
    avps = decode_avps(guard.doic_avps)
    assert avps[0].code == AvpCode.OC_SUPPORTED_FEATURES
    assert avps[0].find(AvpCode.OC_FEATURE_VECTOR).as_u64() == 1
    if len(avps) == 1:
        return None
    assert avps[1].code == AvpCode.OC_OLR and not avps[1].mandatory
    return {c.code: (c.as_u64() if c.code == AvpCode.OC_SEQUENCE_NUMBER else c.as_u32())
            for c in avps[1].children()}


def decode_avps(data: bytes) -> list[Avp]:
    frame = bytes([1]) + (20 + len(data)).to_bytes(3, "big") + b"\0" * 16 + data
    msg = decode_message(frame)
    assert isinstance(msg, Message)
    return msg.avps


def test_report_starts_with_a_timestamp_follows_the_load_and_ends_with_validity_zero() -> None:
    g = Guard(Limits(rate=1000.0, validity=5), 0.0, EPOCH_MS)
    assert olr_of(g) is None
    run(g, {b"a": 2000.0}, 2.0)
    olr = olr_of(g)
    assert olr is not None
    assert olr[AvpCode.OC_SEQUENCE_NUMBER] >= EPOCH_MS  # greater than anything before a restart
    assert olr[AvpCode.OC_REPORT_TYPE] == 0  # HOST_REPORT
    assert olr[AvpCode.OC_VALIDITY_DURATION] == 5
    assert 40 <= olr[AvpCode.OC_REDUCTION_PERCENTAGE] <= 60  # 1 - 1000/2000
    seq = olr[AvpCode.OC_SEQUENCE_NUMBER]
    run(g, {b"a": 4000.0}, 2.0, start=2.0, seed=2)
    olr = olr_of(g)
    assert olr is not None and olr[AvpCode.OC_SEQUENCE_NUMBER] > seq
    assert 65 <= olr[AvpCode.OC_REDUCTION_PERCENTAGE] <= 85  # 1 - 1000/4000
    seq = olr[AvpCode.OC_SEQUENCE_NUMBER]
    run(g, {b"a": 300.0}, OLR_HOLD + 2.0, start=4.0, seed=3)
    olr = olr_of(g)
    assert olr is not None, "the end of the overload is reported"
    assert olr[AvpCode.OC_VALIDITY_DURATION] == 0
    assert olr[AvpCode.OC_SEQUENCE_NUMBER] > seq
    run(g, {b"a": 300.0}, 6.0, start=7.0, seed=4)
    assert olr_of(g) is None  # once the last report has expired everywhere
    # a new overload: a new, greater sequence number
    last = olr[AvpCode.OC_SEQUENCE_NUMBER]
    run(g, {b"a": 3000.0}, 1.0, start=13.0, seed=5)
    olr = olr_of(g)
    assert olr is not None and olr[AvpCode.OC_SEQUENCE_NUMBER] > last


def test_the_report_holds_while_doic_peers_shed_and_ends_when_a_liar_calms_down() -> None:
    g = Guard(Limits(rate=1000.0), 0.0, EPOCH_MS)
    run(g, {b"a": 2000.0}, 2.0)
    red = g.report.reduction
    assert 40 <= red <= 70
    # a DOIC peer sheds what it is asked (RFC 7683 6.3): the node sees about its capacity,
    # and the report must hold rather than be withdrawn and flap
    g.saw_doic(b"a")
    for i in range(40):
        shed = g.report.reduction if g.report.active else 0
        run(g, {b"a": 2000.0 * (1 - shed / 100)}, TICK, start=2.0 + i * TICK, seed=i)
        assert g.report.active
    assert 35 <= g.report.reduction <= 70
    # a peer that ignores reports and floods drives it to 100%; once it calms down the
    # reduction comes down in steps and the overload ends: nothing holds it up
    run(g, {b"a": 20_000.0}, 1.0, start=6.0)
    assert g.report.reduction >= 90
    run(g, {b"a": 100.0}, 4.0, start=7.0, seed=7)
    assert not g.report.active and g.report.ending_until is not None


def test_limits_are_checked() -> None:
    for bad in ({"rate": -1.0}, {"peer_rate": math.nan}, {"burst": 0.0}, {"answer": 3002},
                {"validity": 0}, {"validity": 86_401}):
        with pytest.raises(ValueError):
            Limits(**bad)  # type: ignore[arg-type]


# -- the refusal and the gate --


def refusing_gate(answer: int = ResultCode.TOO_BUSY) -> tuple[Gate, StubDecide]:
    decide = StubDecide()
    app = S13Application(EIR, DICT, decide)
    guard = Guard(Limits(peer_rate=1.0, burst=1.0, answer=answer), 0.0, EPOCH_MS)
    ass = Avp.u32(AvpCode.AUTH_SESSION_STATE, 1).encode()
    gate = Gate(app.handle, guard, EIR, lambda: 0.0, ass)
    while guard.admit(b"mme.test", 0.0):  # its burst: the next request is refused
        pass
    guard.peers[b"mme.test"].tokens = guard.peers[b"mme.test"].cap = 1.0  # ... but for one
    return gate, decide


def ocsf(vector: int | None = 1) -> Avp:
    kids = [] if vector is None else [Avp.u64(AvpCode.OC_FEATURE_VECTOR, vector, mandatory=False)]
    return Avp.grouped(AvpCode.OC_SUPPORTED_FEATURES, kids, mandatory=False)


@pytest.mark.parametrize("proxied", [False, True])
def test_3004_is_the_rfc_6733_error_answer_exactly(proxied: bool) -> None:
    gate, decide = refusing_gate()
    pis = [proxy_info("relay1.test", b"s1"), proxy_info("relay2.test", b"s2")] if proxied else []
    req = ecr(proxy_infos=pis)
    frame = req.encode()
    first = gate(frame, b"mme.test")
    assert result_code(decode_message(first)) == 2001  # type: ignore[arg-type]
    refused = gate(frame, b"mme.test")
    assert refused is not None
    ans = decode_message(refused)
    assert isinstance(ans, Message)
    assert ans.flags & CmdFlag.ERROR and result_code(ans) == ResultCode.TOO_BUSY
    assert_answers(ans, req)
    oracle = protocol_error(req, EIR, Problem(ResultCode.TOO_BUSY, [],
                                              "overloaded: request refused, retry elsewhere"))
    assert refused == oracle.encode()
    assert len(decide.calls) == 1  # the refused request never reached the engine


def test_5012_where_configured_uses_the_eca_grammar_without_the_e_bit() -> None:
    gate, _ = refusing_gate(ResultCode.UNABLE_TO_COMPLY)
    req = ecr(proxy_infos=[proxy_info("relay1.test", b"s1")])
    gate(req.encode(), b"mme.test")
    ans = decode_message(gate(req.encode(), b"mme.test") or b"")
    assert isinstance(ans, Message)
    assert not ans.flags & CmdFlag.ERROR
    assert result_code(ans) == ResultCode.UNABLE_TO_COMPLY
    assert ans.find(AvpCode.AUTH_SESSION_STATE).as_u32() == 1
    assert_answers(ans, req)


def test_doic_avps_only_for_requests_that_carry_them() -> None:
    gate, _ = refusing_gate()
    gate.guard.limits = Limits()
    gate.guard.limited = False
    plain = decode_message(gate(ecr().encode(), b"mme.test") or b"")
    assert isinstance(plain, Message)
    assert plain.find(AvpCode.OC_SUPPORTED_FEATURES) is None
    for vector in (1, None, 3):
        req = ecr(avps=[*ecr().avps, ocsf(vector)])
        ans = decode_message(gate(req.encode(), b"mme.test") or b"")
        assert isinstance(ans, Message)
        assert_answers(ans, req)
        assert result_code(ans) == 2001
        got = ans.find(AvpCode.OC_SUPPORTED_FEATURES)
        assert got is not None and got.find(AvpCode.OC_FEATURE_VECTOR).as_u64() == 1
    # a vector without the loss algorithm: nothing in common, no DOIC AVPs
    req = ecr(avps=[*ecr().avps, ocsf(2)])
    ans = decode_message(gate(req.encode(), b"mme.test") or b"")
    assert isinstance(ans, Message) and ans.find(AvpCode.OC_SUPPORTED_FEATURES) is None


def test_refusals_carry_doic_avps_too() -> None:
    gate, _ = refusing_gate()
    req = ecr(avps=[*ecr().avps, ocsf()])
    gate(req.encode(), b"mme.test")
    ans = decode_message(gate(req.encode(), b"mme.test") or b"")
    assert isinstance(ans, Message) and result_code(ans) == ResultCode.TOO_BUSY
    assert ans.find(AvpCode.OC_SUPPORTED_FEATURES) is not None
    assert_answers(ans, req)


def test_a_request_whose_avps_do_not_walk_gets_its_own_error_not_3004() -> None:
    gate, _ = refusing_gate()
    gate(ecr().encode(), b"mme.test")
    frame = bytearray(ecr().encode())
    frame[20 + 5:20 + 8] = (0xFFFF).to_bytes(3, "big")  # the Session-Id's length lies
    ans = decode_message(gate(bytes(frame), b"mme.test") or b"")
    assert isinstance(ans, Message)
    assert result_code(ans) != ResultCode.TOO_BUSY
    assert scan_request(bytes(frame)) is None


@pytest.mark.parametrize("answer", [ResultCode.TOO_BUSY, ResultCode.UNABLE_TO_COMPLY])
def test_refusals_copy_the_session_id_with_zero_padding(answer: int) -> None:
    """RFC 6733 4: padding bytes are zero. A request whose Session-Id carries other bytes
    there (they are not checked) must not have them echoed in the refusal. Found by the
    peer fuzz target (tests/fuzz/crashers/peer/)."""
    gate, _ = refusing_gate(answer)
    req = ecr(session_id="mme.test;1;ab", proxy_infos=[proxy_info("relay.test", b"s")])
    frame = bytearray(req.encode())
    length = int.from_bytes(frame[25:28], "big")  # the Session-Id, first
    assert int.from_bytes(frame[20:24], "big") == AvpCode.SESSION_ID and length % 4
    frame[20 + length:20 + ((length + 3) & ~3)] = b"\xff" * (-length % 4)
    gate(bytes(frame), b"mme.test")
    refused = gate(bytes(frame), b"mme.test")
    ans = decode_message(refused or b"")
    assert isinstance(ans, Message) and result_code(ans) == answer
    assert ans.encode() == refused  # canonical: every padding byte zero
    assert_answers(ans, req)


@pytest.mark.parametrize("what", ["version 2", "V-flag AVP of 8 bytes"])
def test_a_request_the_decoder_refuses_gets_its_own_error_not_3004(what: str) -> None:
    """A version other than 1, or a vendor AVP too short for its Vendor-Id, is refused by
    the decoder (5011, 5014), so the refusal must not read it as a request it understands
    (nor echo DOIC AVPs to it). Found by the peer fuzz target (tests/fuzz/crashers/peer/)."""
    gate, _ = refusing_gate()
    gate(ecr().encode(), b"mme.test")
    frame = bytearray(ecr(avps=[*ecr().avps, ocsf()]).encode())
    if what == "version 2":
        frame[0] = 2
    else:
        frame += Avp(9999, b"", 0, 0).encode()
        frame[-4] |= 0x80  # V set, Length 8: no room for the Vendor-Id
        frame[1:4] = len(frame).to_bytes(3, "big")
    assert scan_request(bytes(frame)) is None
    ans = decode_message(gate(bytes(frame), b"mme.test") or b"")
    assert isinstance(ans, Message)
    assert result_code(ans) == (5011 if what == "version 2" else 5014)
    assert ans.find(AvpCode.OC_SUPPORTED_FEATURES) is None


def test_with_avps_fixes_the_length() -> None:
    ans = ecr().encode()
    more = with_avps(ans, ocsf().encode())
    msg = decode_message(more)
    assert isinstance(msg, Message) and msg.avps[-1].code == AvpCode.OC_SUPPORTED_FEATURES
    assert with_avps(ans, b"") is ans


def test_s13_fast_path_takes_requests_with_oc_supported_features() -> None:
    app = S13Application(EIR, DICT, StubDecide())
    req = ecr(avps=[*ecr().avps, ocsf()])
    ans = app.handle(req.encode(), b"mme.test")
    assert app.fast == 1 and app.slow == 0
    assert ans == app._general(req.encode(), b"mme.test")
    assert req.app_id == S13
