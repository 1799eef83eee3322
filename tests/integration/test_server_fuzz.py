"""The server survives 100,000 random and mutated messages over loopback TCP.

A seeded generator (no hypothesis: it must be fast and reproducible), the
``Mutator`` of ``bench/fuzz_net.py`` (which also drives the 1,000,000-message
run against a real ``eir serve`` process), mutates valid ECRs, CERs and DWRs:
flipped bytes, header fields, truncation, random tails, inserted random AVPs,
broken AVP lengths, duplicated, dropped and deeply nested AVPs, AVP floods.
Those mutants keep the message framing intact (the header length is fixed
up), so the server must answer every one that is a
request, with the request's ids, and nothing else. Each batch ends with a
valid ECR whose answer shows the server has worked through the batch.

Some batches end with a stream breaker instead (a length below 20, pure
random bytes, a wrong header length): the connection is then closed, by
the server (framing lost) or by us, and the test reconnects. Nothing waits
for an answer that cannot come: every read has a deadline.

At the end a valid ECR on a fresh connection must still get 2001, and
neither asyncio's exception handler nor an ERROR log may have fired.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/

from support import (
    DICT,
    EIR,
    MME,
    RELAY,
    S13,
    TGPP,
    StubDecide,
    cer,
    dwa_for,
    dwr,
    ecr,
    proxy_info,
    result_code,
    vsai,
)

from bench.fuzz_net import Mutator
from eir.diameter.client import DiameterClient
from eir.diameter.codec import Avp, Framer, Message, decode_message
from eir.diameter.constants import AvpCode
from eir.diameter.server import DiameterServer, ServerConfig
from eir.s13 import S13Application

pytestmark = pytest.mark.timeout(150)

SEED = 0x5EED_1402
TOTAL = 100_000
BATCH = 400  # mutants per write
BREAK_PROBABILITY = 0.35  # a batch is followed by a stream breaker
READ_TIMEOUT = 10.0

_HDR = struct.Struct("!I I I I I")


def templates() -> list[bytes]:
    return [
        ecr().encode(),
        ecr("00100000000000", sv=None, imsi=None, session_id="mme.test;9").encode(),
        ecr("86768803654321", dest_host="eir.localdomain", route_records=["dra.test"],
            proxy_infos=[proxy_info("dra.test", b"st")]).encode(),
        ecr("990000000000011", session_id="s;ü", dest_realm="LocalDomain").encode(),
        cer().encode(),
        cer(apps=[Avp.u32(AvpCode.AUTH_APPLICATION_ID, RELAY), vsai(S13)]).encode(),
        dwr().encode(),
    ]


class FuzzPeer:
    """One raw connection: CER/CEA, then batches; answers the server's DWRs."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.framer = Framer(1 << 24)

    @classmethod
    async def open(cls, port: int) -> FuzzPeer:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        peer = cls(reader, writer)
        writer.write(cer(hbh=1, e2e=1).encode())
        answers, closed = await peer.read_until((1, 1))
        assert not closed, "the server refused the CER"
        assert result_code(answers[-1]) == 2001
        return peer

    async def read_until(self, key: tuple[int, int]) -> tuple[list[Message], bool]:
        """Answers up to the one with ``key`` (hbh, e2e); closed is True if the server closed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READ_TIMEOUT
        answers: list[Message] = []
        while True:
            left = deadline - loop.time()
            assert left > 0, f"no answer to {key} within {READ_TIMEOUT} s: the server stalled"
            try:
                data = await asyncio.wait_for(self.reader.read(1 << 18), left)
            except (ConnectionResetError, BrokenPipeError):
                return answers, True
            if not data:
                return answers, True
            for frame in self.framer.feed(data):
                msg = decode_message(frame)
                assert isinstance(msg, Message), f"undecodable frame from the server: {msg}"
                if msg.is_request:
                    assert msg.code == 280, f"unexpected request from the server: {msg}"
                    self.writer.write(dwa_for(msg).encode())
                    continue
                answers.append(msg)
                if (msg.hbh, msg.e2e) == key:
                    return answers, False

    async def finish(self) -> None:
        """Half-close and wait for the server to close its side (or reset)."""
        try:
            if self.writer.can_write_eof():
                self.writer.write_eof()
        except OSError:
            pass
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READ_TIMEOUT
        while True:
            left = deadline - loop.time()
            assert left > 0, "the server did not close the connection"
            try:
                data = await asyncio.wait_for(self.reader.read(1 << 18), left)
            except (ConnectionResetError, BrokenPipeError):
                break
            if not data:
                break
        self.writer.transport.abort()


def request_key(frame: bytes) -> tuple[int, int, int, int, int] | None:
    """(hbh, e2e, code, app, P) of a framed request, None for an answer."""
    _, fc, app, hbh, e2e = _HDR.unpack_from(frame, 0)
    if not (fc >> 24) & 0x80:
        return None
    return hbh, e2e, fc & 0xFFFFFF, app, (fc >> 24) & 0x40


async def test_server_survives_100k_random_and_mutated_messages(
        caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    loop_errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: loop_errors.append(ctx))
    caplog.set_level(logging.ERROR)

    decide = StubDecide()
    app = S13Application(EIR, DICT, decide)
    server = DiameterServer(ServerConfig(host="127.0.0.1", port=0, ident=EIR), DICT,
                            {S13: app.handle})
    await server.start()
    port = server.port
    rng = random.Random(SEED)
    # AVP floods are rarer here than in bench.fuzz_net: each costs the server ~20 ms
    mutator = Mutator(rng, templates(), flood_share=0.0005)
    sent = answered = reconnects = verified_batches = broken = 0
    sentinel_ids = iter(range(1, 1 << 30))
    peer = await FuzzPeer.open(port)
    try:
        while sent < TOTAL:
            frames = [mutator.mutant(rng.randrange(1 << 32), rng.randrange(1 << 32))
                      for _ in range(min(BATCH, TOTAL - sent))]
            sid = next(sentinel_ids)
            key = (0xF0000000 | sid, 0x0F000000 | sid)
            sentinel = ecr(hbh=key[0], e2e=key[1]).encode()
            peer.writer.write(b"".join(frames) + sentinel)
            sent += len(frames) + 1
            answers, closed = await peer.read_until(key)
            answered += len(answers)
            if not closed:
                # every request answered once, with its own ids, command, application and P bit
                assert result_code(answers[-1]) == 2001
                expected = Counter(k for f in frames if (k := request_key(f)) is not None)
                got = Counter((a.hbh, a.e2e, a.code, a.app_id, a.flags & 0x40)
                              for a in answers[:-1])
                assert got == expected, (expected - got, got - expected)
                for a in answers:
                    rc = result_code(a)
                    if rc is not None and 3000 <= rc < 4000:
                        assert a.flags & 0x20, a
                    assert a.flags & 0x90 == 0, a
                verified_batches += 1
            must_reconnect = closed or any(a.code == 282 for a in answers)
            if not closed and rng.random() < BREAK_PROBABILITY:
                peer.writer.write(mutator.breaker()[1])
                sent += 1
                broken += 1
                must_reconnect = True
            if must_reconnect:
                await peer.finish()
                peer = await FuzzPeer.open(port)
                reconnects += 1
        await peer.finish()

        # the server still works: a fresh connection, a full client, a valid ECR
        client = DiameterClient(MME, DICT)
        await client.connect("127.0.0.1", port, timeout=5)
        ans = await client.request(ecr("35209900176148"), timeout=5)
        assert result_code(ans) == 2001
        assert ans.find(AvpCode.EQUIPMENT_STATUS, TGPP) is not None
        await client.close()
    finally:
        await asyncio.wait_for(server.stop(timeout=1.0), 10)
        loop.set_exception_handler(None)

    batches = -(-TOTAL // (BATCH + 1))
    assert sent >= TOTAL
    assert verified_batches >= 0.9 * batches, (verified_batches, batches)
    assert broken > 10 and reconnects >= broken
    assert answered > TOTAL // 2
    assert app.slow > TOTAL // 4  # the mutants reached the general path
    assert loop_errors == [], loop_errors[:3]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors[:5]]
