"""The server survives 100,000 random and mutated messages over loopback TCP.

A seeded generator (no hypothesis: it must be fast and reproducible) mutates
valid ECRs, CERs and DWRs: flipped bytes, header fields, truncation, random
tails, inserted random AVPs, broken AVP lengths, duplicated, dropped and
deeply nested AVPs. Those mutants keep the message framing intact (the
header length is fixed up), so the server must answer every one that is a
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
_U32 = struct.Struct("!I")

AVP_CODES = [1, 33, 257, 258, 260, 263, 264, 265, 266, 268, 273, 277, 278, 279, 280, 281, 282,
             283, 284, 293, 296, 297, 298, 301, 621, 623, 1401, 1402, 1403, 1445, 1471, 999]
CMD_CODES = [257, 280, 282, 324, 325, 0, 0xFFFFFF]
APP_IDS = [0, S13, RELAY, 4, 16777251]


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


def avp_offsets(frame: bytes) -> list[int]:
    """Start offsets of the top-level AVPs, as far as they parse."""
    out = []
    pos = 20
    n = len(frame)
    while pos + 8 <= n:
        out.append(pos)
        length = int.from_bytes(frame[pos + 5:pos + 8], "big")
        if length < 8:
            break
        pos += length + (-length & 3)
    return out


class Mutator:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.bases = templates()
        self.ops = [self.flip, self.flip, self.header, self.truncate, self.extend,
                    self.insert_avp, self.insert_avp, self.avp_length, self.shuffle_avps,
                    self.nest, self.splice]

    def rand_bytes(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def random_avp(self) -> bytes:
        r = self.rng
        code = r.choice(AVP_CODES) if r.random() < 0.8 else r.randrange(1 << 32)
        flags = r.choice([0x00, 0x40, 0x80, 0xC0, 0x20, 0x41, r.randrange(256)])
        kind = r.random()
        if kind < 0.3:
            data = _U32.pack(r.choice([0, 1, 2, 5, 2001, S13, r.randrange(1 << 32)]))
        elif kind < 0.5:
            vendor_id = Avp.u32(AvpCode.VENDOR_ID, TGPP).encode()
            data = vendor_id * r.randrange(3)
        else:
            data = self.rand_bytes(r.randrange(0, 40))
        vendor = b""
        if flags & 0x80:
            vendor = _U32.pack(r.choice([TGPP, 0, r.randrange(1 << 32)]))
        length = 8 + len(vendor) + len(data)
        if r.random() < 0.2:
            length = r.choice([0, 7, 8, 11, 12, length + 4, length - 1, r.randrange(1 << 24)])
        head = _U32.pack(code) + _U32.pack((flags << 24) | (length & 0xFFFFFF))
        return head + vendor + data + bytes(-len(data) & 3)

    # -- frame-preserving mutations (the caller fixes the header length) --

    def flip(self, b: bytearray) -> None:
        for _ in range(self.rng.randint(1, 6)):
            pos = self.rng.choice([0, *range(4, len(b))])
            b[pos] ^= 1 << self.rng.randrange(8) if self.rng.random() < 0.5 \
                else self.rng.randrange(1, 256)

    def header(self, b: bytearray) -> None:
        r = self.rng
        which = r.randrange(4)
        if which == 0:
            b[4] = r.choice([0x00, 0x20, 0x40, 0x60, 0x80, 0xA0, 0xC0, 0xE0, 0xD0,
                             r.randrange(256)])
        elif which == 1:
            b[5:8] = r.choice(CMD_CODES).to_bytes(3, "big")
        elif which == 2:
            b[8:12] = _U32.pack(r.choice(APP_IDS))
        else:
            b[0] = r.choice([0, 2, 255])

    def truncate(self, b: bytearray) -> None:
        if len(b) > 20:
            del b[self.rng.randrange(20, len(b)):]

    def extend(self, b: bytearray) -> None:
        b += self.rand_bytes(self.rng.randrange(1, 40))

    def insert_avp(self, b: bytearray) -> None:
        offsets = [*avp_offsets(bytes(b)), len(b)]
        pos = self.rng.choice(offsets) if self.rng.random() < 0.8 \
            else self.rng.randrange(20, len(b) + 1)
        b[pos:pos] = self.random_avp()

    def avp_length(self, b: bytearray) -> None:
        offsets = avp_offsets(bytes(b))
        if offsets:
            pos = self.rng.choice(offsets)
            b[pos + 5:pos + 8] = self.rng.choice(
                [0, 1, 8, 12, 13, 0xFFFFFF, self.rng.randrange(64)]).to_bytes(3, "big")

    def shuffle_avps(self, b: bytearray) -> None:
        frame = bytes(b)
        offsets = avp_offsets(frame)
        if len(offsets) < 2:
            return
        ends = [*offsets[1:], len(frame)]
        avps = [frame[s:e] for s, e in zip(offsets, ends, strict=True)]
        op = self.rng.randrange(3)
        i = self.rng.randrange(len(avps))
        if op == 0:
            avps.insert(self.rng.randrange(len(avps) + 1), avps[i])
        elif op == 1:
            del avps[i]
        else:
            self.rng.shuffle(avps)
        b[20:] = b"".join(avps)

    def nest(self, b: bytearray) -> None:
        """Wrap the AVPs in Terminal-Information groups, up to thousands deep."""
        inner = bytes(b[20:])
        depth = self.rng.choice([1, 2, 3, 40, 500])
        code = self.rng.choice([1401, 1401, 284, 260, 279, 297])
        vendor = _U32.pack(TGPP) if code == 1401 else b""
        flags = 0xC0 if vendor else 0x40
        # header i (from the outside) covers the 8 + vendor bytes of every header inside it
        hlen = 8 + len(vendor)
        b[20:] = b"".join(
            _U32.pack(code) + _U32.pack((flags << 24) | (hlen * (depth - i) + len(inner))) + vendor
            for i in range(depth)) + inner

    def splice(self, b: bytearray) -> None:
        other = self.rng.choice(self.bases)
        b[20:] = b[20:20 + self.rng.randrange(len(b) - 19)] + other[20 + self.rng.randrange(
            len(other) - 19):]

    # -- generation --

    def mutant(self, hbh: int, e2e: int) -> bytes:
        b = bytearray(self.rng.choice(self.bases))
        b[12:20] = _U32.pack(hbh) + _U32.pack(e2e)
        for _ in range(self.rng.choice([1, 1, 1, 2, 3])):
            self.rng.choice(self.ops)(b)
        if len(b) < 20:
            b += bytes(20 - len(b))
        b[1:4] = len(b).to_bytes(3, "big")
        return bytes(b)

    def breaker(self) -> bytes:
        r = self.rng
        kind = r.randrange(3)
        if kind == 0:  # a length that cannot frame a message
            b = bytearray(r.choice(self.bases))
            b[1:4] = r.randrange(20).to_bytes(3, "big")
            return bytes(b)
        if kind == 1:  # pure noise
            return self.rand_bytes(r.randrange(1, 300))
        b = bytearray(r.choice(self.bases))  # a length that does not match the bytes
        b[1:4] = (len(b) + r.choice([-8, -4, -1, 1, 3, 4, 64, 100_000])).to_bytes(3, "big")
        return bytes(b)


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
    mutator = Mutator(rng)
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
                peer.writer.write(mutator.breaker())
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
