"""Error handling of a DiameterServer running the S13 application, over loopback TCP.

A raw asyncio client (tests/support.py ``RawClient``) sends a CER and then
crafted frames, and reads what comes back; nothing of eir.diameter.peer runs
on the client side except where a DiameterClient is the point of the test.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import (
    DICT,
    EIR,
    MME,
    S13,
    RawClient,
    StubDecide,
    assert_answers,
    cer,
    dpr,
    dwr,
    ecr,
    ecr_avps,
    failed_avps,
    fix_length,
    ident_avp,
    is_error,
    origin,
    result_code,
    u32,
    with_length,
    with_version,
)

from eir.diameter.client import DiameterClient, DiameterError
from eir.diameter.codec import Avp, Message
from eir.diameter.constants import AvpCode, Command, DisconnectCause
from eir.diameter.peer import Admission, Timers
from eir.diameter.server import DiameterServer, ServerConfig
from eir.s13 import S13Application

pytestmark = pytest.mark.timeout(30)

DPA_TIMER = 0.5


@dataclass
class Running:
    server: DiameterServer
    app: S13Application
    decide: StubDecide

    @property
    def port(self) -> int:
        return self.server.port


async def start_server(**config: object) -> Running:
    decide = StubDecide()
    app = S13Application(EIR, DICT, decide)
    cfg = ServerConfig(host="127.0.0.1", port=0, ident=EIR,
                       timers=Timers(dpa=DPA_TIMER), **config)  # type: ignore[arg-type]
    server = DiameterServer(cfg, DICT, {S13: app.handle})
    await server.start()
    return Running(server, app, decide)


@pytest.fixture
async def srv() -> AsyncIterator[Running]:
    running = await start_server()
    try:
        yield running
    finally:
        await asyncio.wait_for(running.server.stop(timeout=1.0), 10)


def bad_avp_length(req: Message) -> bytes:
    """``req`` with its last AVP's length running past the end of the message."""
    frame = bytearray(req.encode())
    last = req.avps[-1]
    pos = len(frame) - len(last.encode())
    frame[pos + 5:pos + 8] = (len(frame) - pos + 16).to_bytes(3, "big")
    return bytes(frame)


def missing_ti() -> Message:
    return ecr(avps=[a for a in ecr_avps() if a.code != AvpCode.TERMINAL_INFORMATION], hbh=105)


# (name, request, Result-Code, E bit)
CASES = [
    ("3001", ecr(code=325, hbh=101), 3001, True),
    ("3007", ecr(app=16777251, hbh=102), 3007, True),
    ("3008-ecr-e-bit", ecr(flags=0xE0, hbh=103), 3008, True),
    ("3008-dwr-e-bit", dwr(flags=0xA0, hbh=104), 3008, True),
    ("5005", missing_ti(), 5005, False),
]


@pytest.mark.parametrize(("name", "req", "code", "e_bit"), CASES, ids=[c[0] for c in CASES])
async def test_error_answers_end_to_end(srv: Running, name: str, req: Message, code: int,
                                        e_bit: bool) -> None:
    client = await RawClient.open(srv.port)
    client.send(req.encode())
    ans = await client.read()
    assert_answers(ans, req)
    assert result_code(ans) == code
    assert is_error(ans) is e_bit
    # the connection is still usable
    ok = ecr(hbh=999)
    client.send(ok.encode())
    ans = await client.read()
    assert (ans.hbh, result_code(ans)) == (999, 2001)
    await client.close()


async def test_5014_end_to_end(srv: Running) -> None:
    client = await RawClient.open(srv.port)
    req = ecr(hbh=201)
    client.send(bad_avp_length(req))
    ans = await client.read()
    assert (ans.code, ans.hbh, ans.e2e) == (324, req.hbh, req.e2e)
    assert result_code(ans) == 5014
    assert [a.code for a in failed_avps(ans)] == [req.avps[-1].code]
    assert ans.avps[0].code == AvpCode.SESSION_ID
    await client.close()


async def test_5015_and_5011_end_to_end_keep_framing(srv: Running) -> None:
    client = await RawClient.open(srv.port)
    odd = fix_length(ecr(hbh=301).encode() + b"\0\0")  # length % 4 == 2
    old = with_version(dwr(hbh=302).encode(), 0)
    # all in one write, with good messages between and after
    client.send(odd + ecr(hbh=303).encode() + old + dwr(hbh=304).encode())
    got = {}
    for _ in range(4):
        ans = await client.read()
        got[ans.hbh] = ans
    assert result_code(got[301]) == 5015
    assert result_code(got[303]) == 2001
    assert result_code(got[302]) == 5011 and got[302].code == Command.DEVICE_WATCHDOG
    assert result_code(got[304]) == 2001
    await client.close()


async def test_every_error_in_one_write_is_answered_in_order(srv: Running) -> None:
    client = await RawClient.open(srv.port)
    frames = [c[1].encode() for c in CASES] + [bad_avp_length(ecr(hbh=106)),
                                               fix_length(ecr(hbh=107).encode() + b"\0")]
    client.send(b"".join(frames))
    answers = [await client.read() for _ in frames]
    assert [a.hbh for a in answers] == [101, 102, 103, 104, 105, 106, 107]
    assert [result_code(a) for a in answers] == [3001, 3007, 3008, 3008, 5005, 5014, 5015]
    await client.close()


# ------------------------------------------------------------------ connection handling


@pytest.mark.parametrize("after_cer", [True, False])
async def test_framing_loss_resets_the_connection(srv: Running, after_cer: bool) -> None:
    client = await (RawClient.open(srv.port) if after_cer else RawClient.connect(srv.port))
    loop = asyncio.get_running_loop()
    start = loop.time()
    client.send(with_length(dwr().encode(), 8) + dwr().encode())
    assert await client.reset_by_server(timeout=3.0)  # RST, not FIN (RFC 6733 2.1)
    assert loop.time() - start < 2.0
    # the server is still up, and the peer may come back at once
    again = await RawClient.open(srv.port)
    again.send(ecr(hbh=5).encode())
    assert result_code(await again.read()) == 2001
    # a peer whose connection failed after opening comes back through REOPEN: a DWR
    # follows the CEA at once (RawClient answered it)
    assert len(again.server_dwrs) == (1 if after_cer else 0)
    await again.close()


async def test_first_message_not_a_cer_closes(srv: Running) -> None:
    client = await RawClient.connect(srv.port)
    client.send(ecr().encode())
    assert await client.closed_by_server(timeout=3.0)
    assert client.queue == []
    assert srv.decide.calls == []


async def test_second_connection_from_a_connected_origin_host_is_closed(srv: Running) -> None:
    first = await RawClient.open(srv.port)
    second = await RawClient.connect(srv.port)
    second.send(cer().encode())
    with pytest.raises((EOFError, ConnectionResetError)):
        await second.read(timeout=3.0)  # closed, no CEA
    first.send(dwr(hbh=7).encode())
    ans = await first.read()
    assert (ans.hbh, result_code(ans)) == (7, 2001)
    # another Origin-Host is welcome
    other = await RawClient.open(srv.port, host="mme2.test")
    await other.close()
    await first.close()


async def test_unknown_peer_gets_3010_and_the_client_says_why(
        caplog: pytest.LogCaptureFixture) -> None:
    running = await start_server(admission=Admission(host_patterns=("mme-allowed.*",)))
    try:
        raw = await RawClient.connect(running.port)
        raw.send(cer().encode())
        cea = await raw.read()
        assert result_code(cea) == 3010 and is_error(cea)
        assert await raw.closed_by_server()
        client = DiameterClient(MME, DICT)
        with caplog.at_level(logging.WARNING, logger="eir.diameter"), \
                pytest.raises(DiameterError, match="3010"):
            await client.connect("127.0.0.1", running.port, timeout=5)
        assert running.server.denied == 2  # counted, and logged as a denial
        assert any("denied (3010)" in r.getMessage() and r.levelno == logging.WARNING
                   for r in caplog.records)
    finally:
        await running.server.stop(timeout=1.0)


async def test_peer_that_does_not_close_after_dpa_is_closed_by_the_server(srv: Running) -> None:
    client = await RawClient.open(srv.port)
    loop = asyncio.get_running_loop()
    req = dpr(cause=DisconnectCause.BUSY)
    client.send(req.encode())
    start = loop.time()
    dpa = await client.read()
    assert_answers(dpa, req)
    assert result_code(dpa) == 2001
    assert await client.closed_by_server(timeout=5.0)
    assert loop.time() - start < DPA_TIMER + 1.5


async def test_stop_sends_dpr_rebooting_and_ends_on_the_dpa(srv: Running) -> None:
    client = await RawClient.open(srv.port)
    port = srv.port
    loop = asyncio.get_running_loop()
    start = loop.time()
    stopping = asyncio.create_task(srv.server.stop(timeout=3.0))
    req = await client.read(timeout=5.0)
    assert (req.code, req.flags, req.app_id) == (Command.DISCONNECT_PEER, 0x80, 0)
    assert u32(req, AvpCode.DISCONNECT_CAUSE) == DisconnectCause.REBOOTING
    assert req.find(AvpCode.ORIGIN_HOST).data == b"eir.localdomain"
    assert DICT.check_message(req) is None
    dpa = Message(Command.DISCONNECT_PEER, 0, 0x00, req.hbh, req.e2e,
                  [Avp.u32(AvpCode.RESULT_CODE, 2001), *origin()])
    client.send(dpa.encode())
    assert await client.closed_by_server(timeout=5.0)  # the DPA's receiver closes
    await asyncio.wait_for(stopping, 5.0)
    assert loop.time() - start < 2.0  # ended by the DPA, not by the 3 s timeout
    with pytest.raises(OSError):
        await RawClient.connect(port)


async def test_stop_with_a_diameter_client_connected(srv: Running) -> None:
    client = DiameterClient(MME, DICT)
    opened = await client.connect("127.0.0.1", srv.port)
    assert opened.applications == frozenset({S13})
    ans = await client.request(ecr())
    assert result_code(ans) == 2001
    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.wait_for(srv.server.stop(timeout=3.0), 5.0)
    assert loop.time() - start < 2.0
    assert client.proto is not None
    await asyncio.wait_for(asyncio.shield(client.proto.closed), 2.0)
    # a request on the closed connection fails at once instead of waiting for its timeout
    start = loop.time()
    with pytest.raises(DiameterError):
        await client.request(ecr(), timeout=3.0)
    assert loop.time() - start < 1.0


async def test_stop_with_a_silent_peer_still_ends(srv: Running) -> None:
    client = await RawClient.open(srv.port)
    idle = await RawClient.connect(srv.port)  # no CER yet
    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.wait_for(srv.server.stop(timeout=1.0), 5.0)
    assert loop.time() - start < 3.0
    assert await idle.closed_by_server()
    assert await client.closed_by_server()


async def test_messages_before_a_framing_loss_are_still_answered(srv: Running) -> None:
    client = await RawClient.open(srv.port)
    client.send(ecr(hbh=9).encode() + with_length(dwr().encode(), 8))
    answer = await client.read()
    assert answer.hbh == 9 and result_code(answer) == 2001
    assert await client.reset_by_server(timeout=3.0)


async def test_an_origin_host_other_than_the_peers_is_refused_where_configured() -> None:
    running = await start_server()
    running.app.origin_check = "refuse"
    try:
        client = await RawClient.open(running.port, host="mme.test")
        spoofed = ecr(avps=[ident_avp(AvpCode.ORIGIN_HOST, "other.test")
                            if a.code == AvpCode.ORIGIN_HOST else a for a in ecr_avps()],
                      hbh=301)
        client.send(spoofed.encode())
        ans = await client.read()
        assert_answers(ans, spoofed)
        assert result_code(ans) == 3010 and is_error(ans)
        client.send(ecr(hbh=302).encode())  # the connection still serves its own peer
        assert result_code(await client.read()) == 2001
        assert running.app.origin_mismatches == 1
        await client.close()
    finally:
        await asyncio.wait_for(running.server.stop(timeout=1.0), 10)


async def test_a_peer_trickling_a_message_is_closed_after_the_message_timer() -> None:
    app = S13Application(EIR, DICT, StubDecide())
    cfg = ServerConfig(host="127.0.0.1", port=0, ident=EIR,
                       timers=Timers(dpa=DPA_TIMER, message=1.0))
    server = DiameterServer(cfg, DICT, {S13: app.handle})
    await server.start()
    try:
        client = await RawClient.open(server.port)
        frame = ecr(hbh=401).encode()
        t0 = time.monotonic()
        for i in range(3):  # three bytes, 0.3 s apart: the message never completes
            client.send(frame[i:i + 1])
            await asyncio.sleep(0.3)
        assert await client.closed_by_server(timeout=5.0)
        assert 0.9 <= time.monotonic() - t0 <= 5.0
    finally:
        await asyncio.wait_for(server.stop(timeout=1.0), 10)
