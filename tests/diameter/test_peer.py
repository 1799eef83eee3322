"""The RFC 6733 5.6 peer state machine (eir.diameter.peer) without sockets.

Bytes go in through ``feed``, answers come out of ``data_to_send`` and are
decoded with the codec; time is a float passed in, randomness a constant,
so every timer is exact. Requests are built in ``tests/support.py`` from
raw AVPs, not with the builders the peer machine itself uses.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import (
    DICT,
    EIR,
    MME,
    RELAY,
    S13,
    TGPP,
    assert_answers,
    cer,
    codes,
    decode_all,
    decode_one,
    dpr,
    dwr,
    ecr,
    failed_avps,
    fix_length,
    ident_avp,
    is_error,
    origin,
    proxy_info,
    result_code,
    u32,
    vsai,
    with_length,
    with_version,
)

from eir.diameter import messages as m
from eir.diameter.codec import Avp, Message, decode_message
from eir.diameter.constants import AvpCode, Command, DisconnectCause
from eir.diameter.peer import (
    OTHER_COMMAND,
    Admission,
    AnswerReceived,
    CloseConnection,
    DisconnectRequested,
    Notice,
    PeerConnection,
    PeerDenied,
    PeerOpened,
    PeerTable,
    Role,
    State,
    Timers,
)
from eir.diameter.watchdog import WatchdogState

TW = 6.0  # the smallest Tw RFC 3539 allows; rand() = 0.5 makes every interval exactly Tw
TIMERS = Timers(tw=TW)


def half() -> float:
    return 0.5


class StubApp:
    """An S13 handler that records the frames it gets and answers 2001."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.peers: list[bytes] = []

    def __call__(self, frame: bytes, peer: bytes = b"") -> bytes:
        self.frames.append(frame)
        self.peers.append(peer)
        req = decode_message(frame)
        assert isinstance(req, Message)
        return Message(req.code, req.app_id, 0x40, req.hbh, req.e2e,
                       [Avp.u32(AvpCode.RESULT_CODE, 2001)]).encode()


def responder(now: float = 0.0, *, peers: PeerTable | None = None, source_ip: str = "127.0.0.1",
              admission: Admission | None = None, app: StubApp | None = None,
              timers: Timers = TIMERS) -> PeerConnection:
    return PeerConnection(Role.RESPONDER, EIR, m.S13_APPLICATIONS, DICT, now,
                          handlers={S13: app or StubApp()}, admission=admission, peers=peers,
                          source_ip=source_ip, timers=timers, rand=half)


def opened(now: float = 0.0, **kw: object) -> PeerConnection:
    """A responder that has answered a CER with 2001 (its CEA already taken)."""
    conn = responder(now, **kw)  # type: ignore[arg-type]
    events = conn.feed(cer().encode(), now)
    assert len(events) == 1 and isinstance(events[0], PeerOpened), events
    cea = decode_all(conn.data_to_send())[0]
    assert result_code(cea) == 2001
    return conn


def closes(events: list[object], *, abort: bool = False) -> CloseConnection:
    closing = [e for e in events if isinstance(e, CloseConnection)]
    assert len(closing) == 1, events
    assert closing[0].abort is abort
    return closing[0]


def exchange(conn: PeerConnection, req: Message, now: float = 1.0) -> Message:
    """Feed one request to an open connection; return its single answer."""
    events = conn.feed(req.encode(), now)
    assert not any(isinstance(e, CloseConnection) for e in events), events
    ans = decode_one(conn.data_to_send())
    assert_answers(ans, req)
    return ans


# ------------------------------------------------------------------ responder: CER


def test_cer_gets_cea_2001_advertising_s13_in_vsai() -> None:
    conn = responder(5.0)
    req = cer(hbh=0xABCD, e2e=0x1234)
    events = conn.feed(req.encode(), 5.0)
    assert events == [PeerOpened("mme.test", "test", frozenset({S13}), False)]
    assert conn.state is State.OPEN
    assert (conn.peer_host, conn.peer_realm) == ("mme.test", "test")
    cea = decode_one(conn.data_to_send())
    assert_answers(cea, req)
    assert cea.flags == 0x00
    assert result_code(cea) == 2001
    assert u32(cea, AvpCode.SUPPORTED_VENDOR_ID) == TGPP
    vsais = cea.find_all(AvpCode.VENDOR_SPECIFIC_APPLICATION_ID)
    assert len(vsais) == 1
    inner = {(a.code, a.as_u32()) for a in vsais[0].children()}
    assert inner == {(AvpCode.VENDOR_ID, TGPP), (AvpCode.AUTH_APPLICATION_ID, S13)}
    # S13 is advertised only inside the VSAI
    assert cea.find(AvpCode.AUTH_APPLICATION_ID) is None
    assert cea.find(AvpCode.HOST_IP_ADDRESS) is not None
    assert cea.find(AvpCode.PRODUCT_NAME) is not None


@pytest.mark.parametrize("apps", [
    pytest.param([Avp.u32(AvpCode.AUTH_APPLICATION_ID, S13)], id="plain-auth"),
    pytest.param([Avp.u32(AvpCode.ACCT_APPLICATION_ID, S13)], id="plain-acct"),
    pytest.param([vsai(S13)], id="vsai-3gpp"),
    pytest.param([vsai(S13, vendor=9999)], id="vsai-vendor-ignored"),
    pytest.param([vsai(S13, acct=True)], id="vsai-acct"),
    pytest.param([Avp.u32(AvpCode.AUTH_APPLICATION_ID, RELAY)], id="relay"),
    pytest.param([vsai(RELAY)], id="relay-in-vsai"),
    pytest.param([Avp.u32(AvpCode.AUTH_APPLICATION_ID, 4), vsai(16777251), vsai(S13)],
                 id="among-others"),
])
def test_common_application_rule_accepts(apps: list[Avp]) -> None:
    conn = responder()
    events = conn.feed(cer(apps=apps).encode(), 0.0)
    assert events == [PeerOpened("mme.test", "test", frozenset({S13}), False)]
    assert result_code(decode_one(conn.data_to_send())) == 2001


@pytest.mark.parametrize("apps", [
    pytest.param([], id="no-applications"),
    pytest.param([Avp.u32(AvpCode.AUTH_APPLICATION_ID, 4)], id="credit-control"),
    pytest.param([vsai(16777251), Avp.u32(AvpCode.SUPPORTED_VENDOR_ID, TGPP)], id="s6a-only"),
    pytest.param([Avp.u32(AvpCode.SUPPORTED_VENDOR_ID, S13)], id="vendor-is-not-an-app"),
])
def test_no_common_application_gets_5010_and_close(apps: list[Avp]) -> None:
    conn = responder()
    req = cer(apps=apps)
    events = conn.feed(req.encode(), 0.0)
    closes(events)
    assert not any(isinstance(e, PeerOpened) for e in events)
    cea = decode_one(conn.data_to_send())
    assert_answers(cea, req)
    assert result_code(cea) == 5010 and not is_error(cea)
    assert conn.state is State.CLOSED


@pytest.mark.parametrize("first", [
    pytest.param(dwr(), id="DWR"),
    pytest.param(dpr(), id="DPR"),
    pytest.param(ecr(), id="ECR"),
    pytest.param(Message(Command.CAPABILITIES_EXCHANGE, 0, 0x00, 1, 2,
                         [Avp.u32(AvpCode.RESULT_CODE, 2001), *cer().avps]), id="CEA"),
    pytest.param(Message(Command.DEVICE_WATCHDOG, 0, 0x00, 1, 2,
                         [Avp.u32(AvpCode.RESULT_CODE, 2001), *origin()]), id="DWA"),
    pytest.param(Message(Command.CAPABILITIES_EXCHANGE, S13, 0x80, 1, 2, cer().avps),
                 id="CER-on-app-S13"),
])
def test_first_message_not_a_cer_closes_without_answer(first: Message) -> None:
    conn = responder()
    events = conn.feed(first.encode(), 0.0)
    closes(events)
    assert conn.data_to_send() == b""
    assert conn.state is State.CLOSED
    assert not any(isinstance(e, PeerOpened) for e in events)


def test_no_cer_within_the_timer_closes() -> None:
    conn = responder(100.0, timers=Timers(cer=10.0, tw=TW))
    assert conn.deadline == 110.0
    assert conn.on_timer(109.9) == []
    assert conn.state is State.WAIT_CER
    closes(conn.on_timer(110.0))
    assert conn.state is State.CLOSED
    assert conn.data_to_send() == b""


def test_partial_cer_does_not_stop_the_cer_timer() -> None:
    conn = responder(0.0, timers=Timers(cer=10.0, tw=TW))
    assert conn.feed(cer().encode()[:30], 1.0) == []
    closes(conn.on_timer(10.0))


def test_a_trickling_peer_is_closed_when_its_message_is_not_whole_in_time() -> None:
    conn = opened(0.0, timers=Timers(cer=10.0, tw=30.0, message=10.0))
    frame = ecr().encode()
    for i in range(5):  # one byte a second: never a whole message
        assert conn.feed(frame[i:i + 1], 1.0 + i) == []
    assert conn.deadline == 11.0  # from the first byte of the message
    assert conn.on_timer(10.9) == []
    why = closes(conn.on_timer(11.0))
    assert "incomplete" in why.reason and conn.state is State.CLOSED


def test_a_busy_peer_whose_reads_end_mid_message_is_not_closed() -> None:
    app = StubApp()
    conn = opened(0.0, app=app, timers=Timers(cer=10.0, tw=100.0, message=10.0))
    stream = b"".join(ecr(hbh=i, e2e=i).encode() for i in range(40))
    # 40 messages over 60 s, every read ending in the middle of one
    for i, at in enumerate(range(0, len(stream), 97)):
        conn.feed(stream[at:at + 97], 1.5 * i)
        assert conn.on_timer(1.5 * i) == []
    assert conn.state is State.OPEN and len(app.frames) == 40


# ------------------------------------------------------------------ admission


@pytest.mark.parametrize("source_ip", ["10.0.0.1", "192.168.1.20", "2001:db8::1"])
def test_non_loopback_source_gets_3010_and_close(source_ip: str) -> None:
    peers = PeerTable()
    conn = responder(source_ip=source_ip, peers=peers)
    req = cer()
    events = conn.feed(req.encode(), 0.0)
    closes(events)
    assert [e for e in events if isinstance(e, PeerDenied)] == [PeerDenied("mme.test",
                                                                           source_ip)]
    cea = decode_one(conn.data_to_send())
    assert_answers(cea, req)
    assert result_code(cea) == 3010 and is_error(cea)
    assert peers.connected == {}


@pytest.mark.parametrize("source_ip", ["127.0.0.1", "127.9.8.7", "::1", "::ffff:127.0.0.1"])
def test_loopback_sources_are_admitted(source_ip: str) -> None:
    opened(source_ip=source_ip)


def test_host_pattern_mismatch_gets_3010() -> None:
    admission = Admission(host_patterns=("mme*.epc.example",))
    conn = responder(admission=admission)
    events = conn.feed(cer("mme.test").encode(), 0.0)
    closes(events)
    assert result_code(decode_one(conn.data_to_send())) == 3010
    ok = responder(admission=admission)
    events = ok.feed(cer("MME1.epc.example", "epc.example").encode(), 0.0)
    assert isinstance(events[0], PeerOpened)


def test_second_connection_from_a_connected_origin_host_is_closed_without_cea() -> None:
    peers = PeerTable()
    first = opened(peers=peers)
    second = responder(1.0, peers=peers)
    events = second.feed(cer("MME.Test").encode(), 1.0)  # the same peer, other case
    closes(events)
    assert second.data_to_send() == b""
    assert second.state is State.CLOSED
    # the first connection is untouched and still works
    assert first.state is State.OPEN
    assert result_code(exchange(first, dwr(), 2.0)) == 2001
    # the rejected connection going away does not release the first one's claim
    second.connection_lost()
    third = responder(3.0, peers=peers)
    closes(third.feed(cer().encode(), 3.0))
    # once the first is gone, the peer may connect again
    first.connection_lost()
    opened(4.0, peers=peers)


# ------------------------------------------------------------------ R-Open


def test_dwr_gets_dwa_2001() -> None:
    conn = opened()
    ans = exchange(conn, dwr(hbh=77, e2e=88))
    assert result_code(ans) == 2001 and ans.flags == 0
    assert conn.state is State.OPEN


def test_application_requests_go_to_the_handler() -> None:
    app = StubApp()
    conn = opened(app=app)
    req = ecr()
    assert conn.feed(req.encode(), 1.0) == []
    ans = decode_one(conn.data_to_send())
    assert app.frames == [req.encode()]
    assert ans.hbh == req.hbh and result_code(ans) == 2001


@pytest.mark.parametrize("cause", [0, 1, 2])
def test_dpr_gets_dpa_then_closing(cause: int) -> None:
    peers = PeerTable()
    conn = opened(peers=peers)
    req = dpr(cause=cause)
    events = conn.feed(req.encode(), 1.0)
    assert events == [DisconnectRequested(cause)]
    ans = decode_one(conn.data_to_send())
    assert_answers(ans, req)
    assert result_code(ans) == 2001
    assert conn.state is State.CLOSING
    # the DPR's sender closes; if it does not, the Closing timer does
    assert conn.deadline == 1.0 + Timers().dpa
    close = closes(conn.on_timer(1.0 + Timers().dpa))
    assert close.clean
    conn.connection_lost()
    assert "mme.test" not in peers.failed  # a clean goodbye: no REOPEN next time


def test_local_stop_sends_dpr_and_the_dpa_closes_cleanly() -> None:
    conn = opened()
    assert conn.stop(1.0, DisconnectCause.BUSY) == []
    assert conn.state is State.CLOSING
    req = decode_one(conn.data_to_send())
    assert req.code == Command.DISCONNECT_PEER and req.flags == 0x80 and req.app_id == 0
    assert u32(req, AvpCode.DISCONNECT_CAUSE) == DisconnectCause.BUSY
    assert DICT.check_message(req) is None
    dpa = Message(req.code, 0, 0x00, req.hbh, req.e2e,
                  [Avp.u32(AvpCode.RESULT_CODE, 2001), *origin()])
    close = closes(conn.feed(dpa.encode(), 1.5))
    assert close.clean and conn.state is State.CLOSED
    assert conn.data_to_send() == b""  # a DPA is never answered


def test_local_stop_without_dpa_closes_on_the_timer() -> None:
    conn = opened()
    conn.stop(1.0)
    conn.data_to_send()
    assert conn.on_timer(1.0 + Timers().dpa - 0.01) == []
    closes(conn.on_timer(1.0 + Timers().dpa))


def test_local_stop_before_open_closes_at_once() -> None:
    conn = responder()
    closes(conn.stop(0.5))
    assert conn.data_to_send() == b""


def test_requests_are_still_answered_while_closing() -> None:
    app = StubApp()
    conn = opened(app=app)
    conn.stop(1.0)
    conn.data_to_send()
    assert result_code(exchange(conn, dwr(), 1.1)) == 2001
    conn.feed(ecr().encode(), 1.2)
    assert len(app.frames) == 1 and result_code(decode_one(conn.data_to_send())) == 2001


# ------------------------------------------------------------------ answers


@pytest.mark.parametrize("answer", [
    pytest.param(Message(Command.DEVICE_WATCHDOG, 0, 0x00, 5, 6,
                         [Avp.u32(AvpCode.RESULT_CODE, 2001), *origin()]), id="DWA"),
    pytest.param(Message(Command.DEVICE_WATCHDOG, 0, 0x20, 5, 6,
                         [*origin(), Avp.u32(AvpCode.RESULT_CODE, 3001)]), id="error-answer"),
    pytest.param(Message(999, 0, 0x00, 5, 6, [Avp(999, b"x", 0, 0x40)]), id="unknown-command"),
    pytest.param(Message(Command.ME_IDENTITY_CHECK, S13, 0x40, 5, 6, []), id="ECA"),
    pytest.param(Message(Command.DEVICE_WATCHDOG, 0, 0x00, 5, 6, [], version=2), id="bad-version"),
])
def test_answers_are_never_answered_and_unknown_ids_are_dropped(answer: Message) -> None:
    conn = opened()
    events = conn.feed(answer.encode(), 1.0)
    assert len(events) == 1 and isinstance(events[0], Notice), events
    assert conn.data_to_send() == b""
    assert conn.dropped_answers == 1
    assert conn.state is State.OPEN


def test_answer_with_bad_avp_length_is_not_answered() -> None:
    conn = opened()
    frame = bytearray(Message(Command.DEVICE_WATCHDOG, 0, 0x00, 5, 6,
                              [Avp.u32(AvpCode.RESULT_CODE, 2001)]).encode())
    frame[27] = 200  # AVP length beyond the message
    conn.feed(bytes(frame), 1.0)
    assert conn.data_to_send() == b""


# ------------------------------------------------------------------ framing


@pytest.mark.parametrize("length", [0, 4, 19])
def test_framing_lost_closes_abortively(length: int) -> None:
    conn = opened()
    events = conn.feed(with_length(dwr().encode(), length), 1.0)
    closes(events, abort=True)
    assert conn.data_to_send() == b""
    assert conn.state is State.CLOSED


def test_message_above_the_size_limit_loses_framing() -> None:
    conn = PeerConnection(Role.RESPONDER, EIR, m.S13_APPLICATIONS, DICT, 0.0,
                          handlers={S13: StubApp()}, rand=half, max_message=4096)
    events = conn.feed(with_length(cer().encode(), 4100), 0.0)
    closes(events, abort=True)


def test_framing_lost_before_the_cer_closes_abortively() -> None:
    conn = responder()
    closes(conn.feed(b"\x01\x00\x00\x08" + b"\0" * 16, 0.0), abort=True)


def test_garbage_after_framing_loss_is_ignored() -> None:
    conn = opened()
    closes(conn.feed(with_length(dwr().encode(), 3), 1.0), abort=True)
    assert conn.feed(dwr().encode(), 1.1) == []
    assert conn.data_to_send() == b""


def test_message_split_across_feeds() -> None:
    conn = opened()
    data = dwr(hbh=9).encode()
    for i, byte in enumerate(data[:-1]):
        assert conn.feed(bytes([byte]), 1.0 + i / 1000) == []
        assert conn.data_to_send() == b""
    conn.feed(data[-1:], 2.0)
    assert decode_one(conn.data_to_send()).hbh == 9


def test_merged_messages_are_all_answered_in_order() -> None:
    app = StubApp()
    conn = opened(app=app)
    reqs = [dwr(hbh=1), ecr(hbh=2), dwr(hbh=3), ecr(hbh=4)]
    data = b"".join(r.encode() for r in reqs)
    # three messages and a half in one read, the rest in the next
    cut = len(data) - 10
    conn.feed(data[:cut], 1.0)
    first = decode_all(conn.data_to_send())
    conn.feed(data[cut:], 1.0)
    answers = first + decode_all(conn.data_to_send())
    assert [a.hbh for a in answers] == [1, 2, 3, 4]
    assert [a.code for a in answers] == [280, 324, 280, 324]
    assert len(app.frames) == 2


def test_cer_and_first_requests_in_one_read() -> None:
    app = StubApp()
    conn = responder(app=app)
    events = conn.feed(cer().encode() + ecr(hbh=5).encode() + dwr(hbh=6).encode(), 0.0)
    assert isinstance(events[0], PeerOpened)
    answers = decode_all(conn.data_to_send())
    assert [(a.code, a.hbh) for a in answers] == [(257, 0x1001), (324, 5), (280, 6)]


# ------------------------------------------------------------------ watchdog


def sent(conn: PeerConnection) -> list[Message]:
    return decode_all(conn.data_to_send())


def test_watchdog_sends_dwr_after_tw_idle_and_closes_after_two_more_tw() -> None:
    conn = opened(0.0)
    assert conn.deadline == TW
    assert conn.on_timer(TW - 0.001) == [] and sent(conn) == []
    assert conn.on_timer(TW) == []
    (req,) = sent(conn)
    assert (req.code, req.flags, req.app_id) == (Command.DEVICE_WATCHDOG, 0x80, 0)
    assert DICT.check_message(req) is None
    assert req.find(AvpCode.ORIGIN_HOST).data == EIR.origin_host.encode()
    # no DWA within Tw: SUSPECT, no second DWR, connection kept
    assert conn.on_timer(2 * TW) == []
    assert sent(conn) == []
    assert conn.watchdog.state is WatchdogState.SUSPECT
    assert conn.state is State.OPEN
    # Tw expires a second time without a DWA: close
    closes(conn.on_timer(3 * TW))
    assert conn.state is State.CLOSED


def test_dwa_keeps_the_connection_in_service() -> None:
    conn = opened(0.0)
    conn.on_timer(TW)
    (req,) = sent(conn)
    dwa = Message(280, 0, 0x00, req.hbh, req.e2e, [Avp.u32(AvpCode.RESULT_CODE, 2001), *origin()])
    assert conn.feed(dwa.encode(), TW + 1) == []
    assert conn.watchdog.state is WatchdogState.OKAY and not conn.watchdog.pending
    assert sent(conn) == []  # a DWA is not answered
    for t in (2 * TW + 1, 3 * TW + 1):
        assert conn.on_timer(t) == []
    assert conn.state is State.OPEN


def test_any_traffic_postpones_the_dwr() -> None:
    conn = opened(0.0)
    exchange(conn, dwr(), 5.0)
    assert conn.deadline == 5.0 + TW
    assert conn.on_timer(TW) == [] and sent(conn) == []
    conn.on_timer(5.0 + TW)
    assert [r.code for r in sent(conn)] == [Command.DEVICE_WATCHDOG]


def test_reconnect_after_a_failed_connection_reopens_with_a_dwr() -> None:
    peers = PeerTable()
    first = opened(0.0, peers=peers)
    first.connection_lost()  # no DPR: the transport failed
    assert "mme.test" in peers.failed
    second = responder(1.0, peers=peers)
    events = second.feed(cer().encode(), 1.0)
    assert events == [PeerOpened("mme.test", "test", frozenset({S13}), True)]
    cea, req = sent(second)
    assert cea.code == Command.CAPABILITIES_EXCHANGE and result_code(cea) == 2001
    assert (req.code, req.flags) == (Command.DEVICE_WATCHDOG, 0x80)
    assert second.watchdog.state is WatchdogState.REOPEN
    # three DWR/DWA exchanges bring it back into service
    for i in range(3):
        dwa = Message(280, 0, 0, req.hbh, req.e2e, [Avp.u32(AvpCode.RESULT_CODE, 2001), *origin()])
        second.feed(dwa.encode(), 1.5 + i * TW)
        if i < 2:
            second.on_timer(1.0 + (i + 1) * TW)
            (req,) = sent(second)
    assert second.watchdog.state is WatchdogState.OKAY


def test_reconnect_after_a_dpr_is_not_a_reopen() -> None:
    peers = PeerTable()
    first = opened(0.0, peers=peers)
    first.feed(dpr().encode(), 1.0)
    first.data_to_send()
    first.connection_lost()
    second = responder(2.0, peers=peers)
    events = second.feed(cer().encode(), 2.0)
    assert events == [PeerOpened("mme.test", "test", frozenset({S13}), False)]
    assert [msg.code for msg in sent(second)] == [Command.CAPABILITIES_EXCHANGE]


# ------------------------------------------------------------------ initiator


def initiator(now: float = 0.0) -> PeerConnection:
    return PeerConnection(Role.INITIATOR, MME, m.S13_APPLICATIONS, DICT, now,
                          timers=Timers(cea=10.0, tw=TW), rand=half)


def started() -> tuple[PeerConnection, Message]:
    conn = initiator()
    conn.start(0.0)
    (req,) = sent(conn)
    return conn, req


def cea_for(req: Message, code: int = 2001, apps: list[Avp] | None = None) -> Message:
    app_avps = [Avp.u32(AvpCode.SUPPORTED_VENDOR_ID, TGPP), vsai(S13)] if apps is None else apps
    return Message(257, 0, 0x20 if 3000 <= code < 4000 else 0, req.hbh, req.e2e, [
        Avp.u32(AvpCode.RESULT_CODE, code), *origin("eir.localdomain", "localdomain"),
        Avp.address(AvpCode.HOST_IP_ADDRESS, "127.0.0.1"), Avp.u32(AvpCode.VENDOR_ID, 0),
        Avp.utf8(AvpCode.PRODUCT_NAME, "eir", mandatory=False), *app_avps])


def test_initiator_start_sends_a_cer() -> None:
    conn, req = started()
    assert conn.state is State.WAIT_CEA
    assert (req.code, req.flags, req.app_id) == (257, 0x80, 0)
    assert DICT.check_message(req) is None
    assert req.find(AvpCode.ORIGIN_HOST).data == b"mme.test"
    assert u32(req, AvpCode.SUPPORTED_VENDOR_ID) == TGPP
    (v,) = req.find_all(AvpCode.VENDOR_SPECIFIC_APPLICATION_ID)
    assert {(a.code, a.as_u32()) for a in v.children()} == {(266, TGPP), (258, S13)}


def test_initiator_cea_2001_opens() -> None:
    conn, req = started()
    events = conn.feed(cea_for(req).encode(), 0.1)
    assert events == [PeerOpened("eir.localdomain", "localdomain", frozenset({S13}), False)]
    assert conn.state is State.OPEN
    assert sent(conn) == []


@pytest.mark.parametrize("code", [5010, 3010, 5012])
def test_initiator_refused_cea_closes(code: int) -> None:
    conn, req = started()
    closes(conn.feed(cea_for(req, code, apps=[]).encode(), 0.1))
    assert conn.state is State.CLOSED


def test_initiator_cea_without_common_application_closes() -> None:
    conn, req = started()
    closes(conn.feed(cea_for(req, apps=[vsai(16777251)]).encode(), 0.1))


@pytest.mark.parametrize("what", ["request", "DWA-unknown-id", "DWA-with-the-CER-id"])
def test_initiator_non_cea_before_the_cea_closes(what: str) -> None:
    conn, req = started()
    msg = {
        "request": dwr(host="eir.localdomain"),
        "DWA-unknown-id": Message(280, 0, 0, 99, 98, [Avp.u32(268, 2001), *origin()]),
        "DWA-with-the-CER-id": Message(280, 0, 0, req.hbh, req.e2e,
                                       [Avp.u32(268, 2001), *origin()]),
    }[what]
    events = conn.feed(msg.encode(), 0.1)
    closes(events)
    assert conn.state is State.CLOSED
    assert not any(isinstance(e, PeerOpened) for e in events)
    assert sent(conn) == []


def test_initiator_no_cea_in_time_closes() -> None:
    conn, _ = started()
    assert conn.deadline == 10.0
    closes(conn.on_timer(10.0))


def test_initiator_matches_application_answers_by_hop_by_hop() -> None:
    conn, req = started()
    conn.feed(cea_for(req).encode(), 0.1)
    hbh, e2e = conn.next_ids(1.0)
    conn.send_request(ecr(hbh=hbh, e2e=e2e).encode(), hbh)
    assert sent(conn)[0].hbh == hbh
    ans = Message(324, S13, 0x40, hbh, e2e, [Avp.u32(268, 2001)]).encode()
    assert conn.feed(ans, 1.1) == [AnswerReceived(hbh, ans)]
    # a second answer with the same id is a duplicate: dropped
    assert isinstance(conn.feed(ans, 1.2)[0], Notice)


# ------------------------------------------------------------------ base-application errors


def test_dwr_without_origin_host_gets_dwa_5005_with_failed_avp() -> None:
    conn = opened()
    req = dwr(avps=[ident_avp(AvpCode.ORIGIN_REALM, "test")])
    ans = exchange(conn, req)
    assert ans.code == Command.DEVICE_WATCHDOG and not is_error(ans)
    assert result_code(ans) == 5005
    (failed,) = failed_avps(ans)
    assert (failed.code, failed.vendor) == (AvpCode.ORIGIN_HOST, 0)


def test_unknown_command_on_the_base_application_gets_3001() -> None:
    conn = opened()
    req = Message(999, 0, 0x80, 11, 12, origin())
    ans = exchange(conn, req)
    assert is_error(ans) and ans.flags == 0x20
    assert result_code(ans) == 3001


def test_made_up_command_codes_do_not_grow_the_counters() -> None:
    """Requests with thousands of distinct command codes are counted as OTHER_COMMAND: the
    counters stay a handful of keys (the network fuzz run, bench/fuzz_net.py, saw the
    server's RSS grow by 5 MiB per million mutants before)."""
    conn = opened()
    for code in range(1000, 4000):
        exchange(conn, Message(code, 0, 0x80, code, code, origin()))
    exchange(conn, dwr(hbh=1, e2e=1))
    assert conn.stats.requests[OTHER_COMMAND] == 3000
    # the CER that opened the connection, the made-up codes, the DWR
    assert set(conn.stats.requests) == {Command.CAPABILITIES_EXCHANGE, OTHER_COMMAND,
                                        Command.DEVICE_WATCHDOG}
    assert set(conn.stats.answers) == {(Command.CAPABILITIES_EXCHANGE, 2001),
                                       (OTHER_COMMAND, 3001), (Command.DEVICE_WATCHDOG, 2001)}


def test_unknown_application_gets_3007() -> None:
    conn = opened()
    req = Message(316, 16777251, 0xC0, 11, 12,
                  [Avp.utf8(AvpCode.SESSION_ID, "mme.test;9"), *origin()])
    ans = exchange(conn, req)
    assert ans.flags == 0x60  # E, and the P bit copied
    assert result_code(ans) == 3007
    assert ans.avps[0].code == AvpCode.SESSION_ID


def test_e_bit_on_a_request_gets_3008() -> None:
    conn = opened()
    ans = exchange(conn, dwr(flags=0xA0))
    assert is_error(ans) and result_code(ans) == 3008


def test_p_bit_on_the_cer_gets_3008_and_close() -> None:
    conn = responder()
    req = cer(flags=0xC0)
    closes(conn.feed(req.encode(), 0.0))
    cea = decode_one(conn.data_to_send())
    assert_answers(cea, req)
    assert cea.flags == 0x60 and result_code(cea) == 3008


def test_p_bit_on_a_dwr_gets_3008() -> None:
    conn = opened()
    ans = exchange(conn, dwr(flags=0xC0))
    assert ans.flags == 0x60 and result_code(ans) == 3008


def test_second_cer_on_an_open_connection_is_refused() -> None:
    conn = opened()
    ans = exchange(conn, cer(hbh=0x99))
    assert result_code(ans) == 5012
    assert conn.state is State.OPEN


def test_base_answers_copy_a_session_id_and_proxy_infos() -> None:
    """RFC 6733 6.2 (PROTOCOL.md 1.9.1): every answer, a CEA, DWA or DPA too, copies the
    request's Session-Id (first) and its Proxy-Info AVPs in order. Found by the peer fuzz
    target (tests/fuzz/crashers/peer/): a second CER carrying a Session-Id got a CEA
    without it."""
    sid = Avp.utf8(AvpCode.SESSION_ID, "mme.test;7")
    pis = [proxy_info("dra1.test", b"a"), proxy_info("dra2.test", b"b")]
    conn = responder()
    req = cer(extra=[sid, *pis])
    assert any(isinstance(e, PeerOpened) for e in conn.feed(req.encode(), 0.0))
    cea = decode_one(conn.data_to_send())
    assert_answers(cea, req)  # Session-Id first, the Proxy-Infos in their order
    assert result_code(cea) == 2001
    for req in (cer(hbh=0x99, extra=[sid, *pis]),  # 5012: capabilities already exchanged
                dwr(avps=[sid, *origin(), *pis]),
                dwr(hbh=0x98, avps=[sid, ident_avp(AvpCode.ORIGIN_REALM, "test"), *pis]),
                Message(Command.DISCONNECT_PEER, 0, 0x80, 0x97, 0x97,
                        [sid, *origin(), Avp.u32(AvpCode.DISCONNECT_CAUSE, 0), *pis])):
        ans = exchange(conn, req)
        assert ans.avps[0] == Avp.octets(AvpCode.SESSION_ID, sid.data)
        assert ans.find_all(AvpCode.PROXY_INFO) == pis


def test_bad_version_gets_5011() -> None:
    conn = opened()
    req = dwr()
    conn.feed(with_version(req.encode(), 2), 1.0)
    ans = decode_one(conn.data_to_send())
    assert ans.version == 1
    assert (ans.code, ans.hbh, ans.e2e) == (280, req.hbh, req.e2e)
    assert result_code(ans) == 5011


def test_message_length_not_a_multiple_of_four_gets_5015() -> None:
    conn = opened()
    req = dwr(hbh=21)
    frame = fix_length(req.encode() + b"\0\0")  # 2 stray bytes: length % 4 == 2
    conn.feed(frame + dwr(hbh=22).encode(), 1.0)
    first, second = sent(conn)
    assert (first.hbh, result_code(first)) == (21, 5015)
    assert (second.hbh, result_code(second)) == (22, 2001)  # framing kept


def test_bad_avp_length_gets_5014_with_failed_avp() -> None:
    conn = opened()
    req = dwr(avps=[*origin(), Avp.u32(AvpCode.ORIGIN_STATE_ID, 7)])
    frame = bytearray(req.encode())
    pos = len(frame) - 12  # the Origin-State-Id AVP
    frame[pos + 5:pos + 8] = (40).to_bytes(3, "big")  # longer than the message
    conn.feed(bytes(frame), 1.0)
    ans = decode_one(conn.data_to_send())
    assert (ans.code, ans.hbh) == (280, req.hbh)
    assert result_code(ans) == 5014
    (failed,) = failed_avps(ans)
    assert failed.code == AvpCode.ORIGIN_STATE_ID
    assert AvpCode.ORIGIN_HOST in codes(ans)


def test_wrong_m_bit_on_a_base_avp_gets_3009() -> None:
    conn = opened()
    req = dwr(avps=[ident_avp(AvpCode.ORIGIN_HOST, "mme.test", 0x00),
                    ident_avp(AvpCode.ORIGIN_REALM, "test")])
    ans = exchange(conn, req)
    assert is_error(ans) and result_code(ans) == 3009
    (failed,) = failed_avps(ans)
    assert (failed.code, failed.flags) == (AvpCode.ORIGIN_HOST, 0)


def test_end_to_end_ids_start_from_the_time_of_day() -> None:
    """RFC 6733 3: high 12 bits from the time of day, low 20 random, then incrementing."""
    from eir.diameter.dictionary import default_dictionary
    from eir.diameter.peer import PeerConnection, Role

    conn = PeerConnection(Role.INITIATOR, m.Identity("mme.test", "test"), m.Applications(),
                          default_dictionary(), 5.0, rand=lambda: 0.25,
                          wall_time=0x6543_2ABC)
    (h1, e1), (h2, e2) = conn.next_ids(5.0), conn.next_ids(6.0)
    assert e1 >> 20 == 0xABC and e1 & 0xFFFFF == 1  # rand 0.25: low 20 bits 0
    assert (h2, e2) == (h1 + 1, e1 + 1)
