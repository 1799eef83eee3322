"""A million mutated Diameter messages against a live ``eir serve``: it must survive, answer
as RFC 6733 says, reset the connection when framing is lost, and keep its memory flat.

Usage (from the repository root)::

    .venv/bin/python -m bench.fuzz_net                        # 1,000,000 messages
    .venv/bin/python -m bench.fuzz_net --messages 20000       # what CI runs (a few seconds)

The real server runs as a process (``testbed.eirproc``: ``eir registry import`` of a
small registry into a temporary SQLite file, then ``eir serve`` on 127.0.0.1). One
connection at a time does CER/CEA and then sends batches: ``--batch`` mutants written at
once and a valid ECR behind them, whose 2001 answer shows the server has worked through
the batch. The mutants (``Mutator``, seeded) are valid ECRs, CERs, DWRs, DPRs and answers
with bit flips, changed flags, versions, commands and applications, truncation, random
tails, inserted random AVPs, AVPs with lying lengths, AVPs duplicated, dropped and
shuffled, thousands of AVPs in one message, Grouped AVPs nested up to 1,000 deep (some
with a lying inner length) and spliced messages. Each mutant's header length is set to its
size, so the stream still frames and every request must be answered:

- exactly one answer per request, none for an answer (RFC 6733 6.2), each with the
  request's Hop-by-Hop and End-to-End ids, command, application and P bit, R and T
  clear, the EIR's Origin-Host, and a Result-Code or Experimental-Result;
- every 3xxx answer has the E bit (7.1.3, PROTOCOL.md 1.9);
- a request this script's own reader cannot decode gets the RFC 6733 7.1.5 code it
  expects: 5011 for a version other than 1, 5015 for a length that is not a multiple
  of 4, 5014 for an AVP whose length does not fit;
- the server never closes the connection while the stream frames (a DPR aside, after
  which the script reconnects).

After a batch, now and then (``--break``) a stream breaker follows: a header length
below 20 or above the server's 64 KB limit, pure noise, or a header length that lies.
When this script's framer says framing is lost, the server must close with a TCP RST
(RFC 6733 2.1); otherwise the script half-closes and the server must close too. Every
``--reconnect`` batches the script also reconnects cleanly (DPR/DPA), so the run spans
thousands of connections.

Throughout, the server process must stay alive and its log free of tracebacks and ERROR
lines. Its resident memory (VmRSS in /proc/PID/status) is read after every batch: the
baseline is taken once a tenth of the messages is sent (the allocator's arenas and the
caches fill first), and the run fails if RSS at the end exceeds the baseline by more
than ``--rss-growth-mib`` (4: a flat server grows under 0.5 MiB over the million, and
the one leak this run found, counters keyed by made-up command codes, grew 5.3). At the
end a well-formed ECR on a fresh connection must still be answered 2001 with
Equipment-Status WHITELISTED.

Prints messages sent, answers by result code ("E" marks the E bit), connections and how
they ended, messages/s and RSS (start, baseline, peak, end); one JSON object goes to
stdout and ``--json-out``. Exit status: 0 all checks held; 1 a check failed (each failure
is listed, the first 20 in full); 2 the server could not be set up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import struct
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eir.diameter import messages as m
from eir.diameter.codec import Avp, Framer, Message, decode_message
from eir.diameter.constants import Application, AvpCode, Command, Vendor
from testbed.eirproc import EirProcess, run_cli

REPO = Path(__file__).resolve().parents[1]
S13 = int(Application.S13)
TGPP = int(Vendor.TGPP)
RELAY = int(Application.RELAY)
MAX_MESSAGE = 1 << 16  # the server's default server.max_message_bytes
READ_TIMEOUT = 15.0
EIR_HOST, EIR_REALM = "eir.test.local", "test.local"
MME = m.Identity("mme.fuzz.test.local", "test.local", ("127.0.0.1",))
SENTINEL_IMEI = "35209900176148"  # on the white list of the registry below
REGISTRY = ("imei,list,reason,source\n"
            f"{SENTINEL_IMEI},white,registered,ministry\n"
            "86768803654321,grey,pending_verification,operator\n"
            "35332510123456,black,stolen,police\n")

_HDR = struct.Struct("!I I I I I")
_U32 = struct.Struct("!I")

AVP_CODES = [1, 33, 257, 258, 260, 263, 264, 265, 266, 268, 273, 277, 278, 279, 280, 281, 282,
             283, 284, 293, 296, 297, 298, 301, 621, 623, 1401, 1402, 1403, 1445, 1471, 999]
CMD_CODES = [257, 280, 282, 324, 325, 0, 0xFFFFFF]
APP_IDS = [0, S13, RELAY, 4, 16777251]
NEST_CODES = [1401, 1401, 284, 260, 279, 297]
FLOOD_SHARE = 0.003  # of the mutations: thousands of AVPs in one message


# -- the messages mutated ------------------------------------------------------------------


def ecr(imei: str | None = SENTINEL_IMEI, *, sv: str | None = "01",
        imsi: str | None = "001011234567890", hbh: int = 1, e2e: int = 1,
        session_id: str = "mme.fuzz.test.local;1;1", dest_realm: str = EIR_REALM,
        dest_host: str | None = None, extra: tuple[Avp, ...] = ()) -> Message:
    ti = [] if imei is None else [Avp.utf8(AvpCode.IMEI, imei, TGPP)]
    if sv is not None:
        ti.append(Avp.utf8(AvpCode.SOFTWARE_VERSION, sv, TGPP))
    avps = [Avp.utf8(AvpCode.SESSION_ID, session_id), Avp.u32(AvpCode.AUTH_SESSION_STATE, 1),
            *MME.origin_avps()]
    if dest_host is not None:
        avps.append(Avp.octets(AvpCode.DESTINATION_HOST, dest_host.encode()))
    avps += [Avp.octets(AvpCode.DESTINATION_REALM, dest_realm.encode()),
             Avp.grouped(AvpCode.TERMINAL_INFORMATION, ti, TGPP)]
    if imsi is not None:
        avps.append(Avp.utf8(AvpCode.USER_NAME, imsi))
    avps += extra
    return m.request(Command.ME_IDENTITY_CHECK, S13, hbh, e2e, avps, proxiable=True)


def templates() -> list[bytes]:
    """Valid messages of every kind the EIR sees, to mutate."""
    pi = Avp.grouped(AvpCode.PROXY_INFO, [Avp.octets(AvpCode.PROXY_HOST, b"dra.test"),
                                          Avp.octets(AvpCode.PROXY_STATE, b"st")])
    plain = ecr()
    cer = m.cer(MME, m.S13_APPLICATIONS, 1, 1)
    dwr = m.dwr(MME, 1, 1)
    return [
        plain.encode(),
        ecr("00100000000000", sv=None, imsi=None).encode(),
        ecr("86768803654321", dest_host=EIR_HOST,
            extra=(pi, Avp.octets(AvpCode.ROUTE_RECORD, b"dra.test"))).encode(),
        ecr("990000000000011", session_id="s;ü", dest_realm="Test.Local").encode(),
        ecr(None).encode(),
        cer.encode(),
        m.request(Command.CAPABILITIES_EXCHANGE, 0, 1, 1,
                  [*MME.origin_avps(), Avp.u32(AvpCode.AUTH_APPLICATION_ID, RELAY)]).encode(),
        dwr.encode(),
        m.dwa(dwr, MME).encode(),
        m.session_answer(plain, MME, result=[Avp.u32(AvpCode.RESULT_CODE, 2001)]).encode(),
    ]


def avp_offsets(frame: bytes | bytearray) -> list[int]:
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
    """Seeded mutants of valid messages: ``mutant`` keeps the stream framed, ``breaker`` not."""

    BREAKERS = ("short-length", "noise", "lying-length", "oversize")

    def __init__(self, rng: random.Random, bases: list[bytes] | None = None,
                 max_message: int = MAX_MESSAGE, flood_share: float = FLOOD_SHARE) -> None:
        self.rng = rng
        self.flood_share = flood_share
        self.bases = bases if bases is not None else templates()
        self.max_message = max_message
        self.ops = [self.flip, self.flip, self.header, self.truncate, self.extend,
                    self.insert_avp, self.insert_avp, self.avp_length, self.shuffle_avps,
                    self.nest, self.splice, self.nest_lying]

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
            data = Avp.u32(AvpCode.VENDOR_ID, TGPP).encode() * r.randrange(3)
        else:
            data = self.rand_bytes(r.randrange(0, 40))
        vendor = b""
        if flags & 0x80:
            vendor = _U32.pack(r.choice([TGPP, 0, r.randrange(1 << 32)]))
        length = 8 + len(vendor) + len(data)
        if r.random() < 0.2:  # a lying AVP length
            length = r.choice([0, 7, 8, 11, 12, length + 4, length - 1, r.randrange(1 << 24)])
        head = _U32.pack(code) + _U32.pack((flags << 24) | (length & 0xFFFFFF))
        return head + vendor + data + bytes(-len(data) & 3)

    # -- frame-preserving mutations (``mutant`` fixes the header length) --

    def flip(self, b: bytearray) -> None:
        for _ in range(self.rng.randint(1, 6)):
            pos = self.rng.choice([0, *range(4, len(b))])
            b[pos] ^= 1 << self.rng.randrange(8) if self.rng.random() < 0.5 \
                else self.rng.randrange(1, 256)

    def header(self, b: bytearray) -> None:
        r = self.rng
        which = r.randrange(5)
        if which == 0:  # flags: R, P, E, T and the reserved bits in every combination
            b[4] = r.choice([0x00, 0x20, 0x40, 0x60, 0x80, 0xA0, 0xC0, 0xE0, 0xD0,
                             r.randrange(256)])
        elif which == 1:
            b[5:8] = r.choice(CMD_CODES).to_bytes(3, "big")
        elif which == 2:
            b[8:12] = _U32.pack(r.choice(APP_IDS))
        elif which == 3:
            b[0] = r.choice([0, 2, 255])
        else:  # a random command in a random application
            b[5:12] = r.randrange(1 << 24).to_bytes(3, "big") + _U32.pack(r.randrange(1 << 32))

    def truncate(self, b: bytearray) -> None:
        if len(b) > 20:
            del b[self.rng.randrange(20, len(b)):]

    def extend(self, b: bytearray) -> None:
        b += self.rand_bytes(self.rng.randrange(1, 40))

    def insert_avp(self, b: bytearray) -> None:
        offsets = [*avp_offsets(b), len(b)]
        pos = self.rng.choice(offsets) if self.rng.random() < 0.8 \
            else self.rng.randrange(20, len(b) + 1)
        b[pos:pos] = self.random_avp()

    def avp_length(self, b: bytearray) -> None:
        offsets = avp_offsets(b)
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

    def _nested(self, inner: bytes, depth: int, code: int) -> bytes:
        vendor = _U32.pack(TGPP) if code == 1401 else b""
        flags = 0xC0 if vendor else 0x40
        # header i (from the outside) covers the 8 + vendor bytes of every header inside it
        hlen = 8 + len(vendor)
        return b"".join(
            _U32.pack(code) + _U32.pack((flags << 24) | (hlen * (depth - i) + len(inner))) + vendor
            for i in range(depth)) + inner

    def nest(self, b: bytearray) -> None:
        """Wrap the AVPs in Grouped AVPs (Terminal-Information mostly), up to 1,000 deep."""
        depth = self.rng.choice([1, 2, 3, 40, 500, 1000])
        b[20:] = self._nested(bytes(b[20:]), depth, self.rng.choice(NEST_CODES))

    def nest_lying(self, b: bytearray) -> None:
        """Nested groups with one inner length that lies (truncated or overlong)."""
        depth = self.rng.choice([2, 5, 50, 300])
        code = self.rng.choice(NEST_CODES)
        nested = bytearray(self._nested(bytes(b[20:]), depth, code))
        step = 12 if code == 1401 else 8
        at = self.rng.randrange(1, depth) * step
        old = int.from_bytes(nested[at + 5:at + 8], "big")
        nested[at + 5:at + 8] = self.rng.choice(
            [old + 4, old - 4, old + 1, 0, 0xFFFFFF]).to_bytes(3, "big")
        if self.rng.random() < 0.5:  # and the message cut short inside the nest
            del nested[self.rng.randrange(at, len(nested)):]
        b[20:] = nested

    def many_avps(self, b: bytearray) -> None:
        """Hundreds to thousands of AVPs in one message (bounded by the message limit)."""
        kind = self.rng.randrange(3)
        if kind == 0:  # the same unknown, optional AVP
            one = _U32.pack(999) + _U32.pack(8)
        elif kind == 1:  # a known one repeated (Route-Record, Proxy-State, User-Name)
            one = Avp.octets(self.rng.choice([282, 33, 1]), b"x", 0,
                             self.rng.random() < 0.5).encode()
        else:  # empty Terminal-Information groups
            one = _U32.pack(1401) + _U32.pack(0xC000000C) + _U32.pack(TGPP)
        room = (self.max_message - len(b) - 64) // len(one)
        n = min(room, self.rng.choice([100, 500, 2000, 5000]))
        if n > 0:
            pos = self.rng.choice([*avp_offsets(b), len(b)])
            b[pos:pos] = one * n

    def splice(self, b: bytearray) -> None:
        other = self.rng.choice(self.bases)
        b[20:] = b[20:20 + self.rng.randrange(len(b) - 19)] + other[20 + self.rng.randrange(
            len(other) - 19):]

    # -- generation --

    def mutant(self, hbh: int, e2e: int) -> bytes:
        b = bytearray(self.rng.choice(self.bases))
        b[12:20] = _U32.pack(hbh) + _U32.pack(e2e)
        for _ in range(self.rng.choice([1, 1, 1, 2, 3])):
            # an AVP flood costs the server ~1,000 times a plain mutant: now and then only
            op = self.many_avps if self.rng.random() < self.flood_share \
                else self.rng.choice(self.ops)
            op(b)
        if len(b) < 20:
            b += bytes(20 - len(b))
        if len(b) > self.max_message:
            del b[self.max_message:]
        b[1:4] = len(b).to_bytes(3, "big")
        return bytes(b)

    def breaker(self) -> tuple[str, bytes]:
        """(kind, bytes) meant to lose framing, or at least to leave the stream mid-message."""
        r = self.rng
        kind = r.choice(self.BREAKERS)
        b = bytearray(r.choice(self.bases))
        if kind == "short-length":
            b[1:4] = r.randrange(20).to_bytes(3, "big")
        elif kind == "noise":
            b = bytearray(self.rand_bytes(r.randrange(1, 300)))
        elif kind == "lying-length":
            b[1:4] = (len(b) + r.choice([-8, -4, -1, 1, 3, 4, 64, 100_000])).to_bytes(3, "big")
        else:
            b[1:4] = r.choice([self.max_message + 4, 1 << 20, 0xFFFFFF]).to_bytes(3, "big")
        return kind, bytes(b)


# -- an independent reader for the expected result codes -----------------------------------


def expected_code(frame: bytes) -> int | None:
    """5011 / 5015 / 5014 when RFC 6733 7.1.5 says the request cannot be decoded, else None."""
    if frame[0] != 1:
        return 5011
    n = len(frame)
    if n % 4:
        return 5015
    pos = 20
    while pos < n:
        if n - pos < 8:
            return 5014
        flags, length = frame[pos + 4], int.from_bytes(frame[pos + 5:pos + 8], "big")
        if length < (12 if flags & 0x80 else 8) or pos + ((length + 3) & ~3) > n:
            return 5014
        pos += (length + 3) & ~3
    return None


def frames_lost(data: bytes, max_len: int = MAX_MESSAGE) -> bool:
    """Does this stream (starting at a message boundary) lose framing?"""
    pos = 0
    while len(data) - pos >= 4:
        length = int.from_bytes(data[pos + 1:pos + 4], "big")
        if length < 20 or length > max_len:
            return True
        pos += length
    return False


def result_of(msg: Message) -> int | None:
    for avp in msg.avps:
        if avp.vendor:
            continue
        if avp.code == AvpCode.RESULT_CODE and len(avp.data) == 4:
            return avp.as_u32()
        if avp.code == AvpCode.EXPERIMENTAL_RESULT:
            try:
                code = avp.find(AvpCode.EXPERIMENTAL_RESULT_CODE)
                return code.as_u32() if code is not None else None
            except (ValueError, Exception):
                return None
    return None


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Stats:
    sent: int = 0
    requests: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    breakers: Counter[str] = field(default_factory=Counter)
    sentinels: Counter[str] = field(default_factory=Counter)
    ends: Counter[str] = field(default_factory=Counter)
    connections: int = 0
    batches: int = 0
    verified: int = 0  # batches read to their valid ECR, every answer checked
    failures: list[str] = field(default_factory=list)
    failure_count: int = 0
    rss_kib: dict[str, int] = field(default_factory=dict)

    def fail(self, text: str) -> None:
        self.failure_count += 1
        if len(self.failures) < 20:
            self.failures.append(text)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


class Closed(Exception):
    """The server closed the connection; ``reset`` says whether abortively (RST)."""

    def __init__(self, reset: bool) -> None:
        super().__init__("reset" if reset else "closed")
        self.reset = reset


class Conn:
    """One raw connection: CER/CEA, then whatever is written; answers the server's DWRs."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.framer = Framer(1 << 24)
        self.closed: bool | None = None  # None: open; else was it reset

    @classmethod
    async def open(cls, port: int, ids: Iterator[int]) -> Conn:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        conn = cls(reader, writer)
        i = next(ids)
        writer.write(m.cer(MME, m.S13_APPLICATIONS, i, i).encode())
        answers = await conn.read_until((i, i))
        if result_of(answers[-1]) != 2001:
            raise RuntimeError(f"CER refused: {answers[-1]}")
        return conn

    async def read_until(self, key: tuple[int, int]) -> list[Message]:
        """Answers up to and including the one with ids ``key``; raises Closed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READ_TIMEOUT
        answers: list[Message] = []
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"no answer to {key} within {READ_TIMEOUT} s")
            try:
                data = await asyncio.wait_for(self.reader.read(1 << 18), left)
            except ConnectionResetError:
                self.closed = True
                raise Closed(True) from None
            if not data:
                self.closed = False
                raise Closed(False)
            for frame in self.framer.feed(data):
                msg = decode_message(frame)
                if not isinstance(msg, Message):
                    raise AssertionError(f"undecodable frame from the server: {msg}")
                if msg.is_request:
                    if msg.code != Command.DEVICE_WATCHDOG:
                        raise AssertionError(f"unexpected request from the server: {msg}")
                    self.writer.write(m.dwa(msg, MME).encode())
                    continue
                answers.append(msg)
                if (msg.hbh, msg.e2e) == key:
                    return answers

    async def wait_closed(self) -> bool:
        """Read until the server closes; True if it reset the connection."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READ_TIMEOUT
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError("the server did not close the connection")
            try:
                data = await asyncio.wait_for(self.reader.read(1 << 18), left)
            except ConnectionResetError:
                return True
            if not data:
                return False

    async def half_close_and_wait(self) -> bool:
        try:
            if self.writer.can_write_eof():
                self.writer.write_eof()
        except OSError:
            pass
        return await self.wait_closed()

    def drop(self) -> None:
        self.writer.transport.abort()


def check_batch(frames: list[bytes], answers: list[Message], stats: Stats) -> None:
    """Exactly one answer per request, with its ids and the codes RFC 6733 requires."""
    expected: Counter[tuple[int, int, int, int, int]] = Counter()
    by_key: dict[tuple[int, int], bytes | None] = {}
    for f in frames:
        _, fc, app, hbh, e2e = _HDR.unpack_from(f, 0)
        if not (fc >> 24) & 0x80:
            continue
        stats.requests += 1
        expected[(hbh, e2e, fc & 0xFFFFFF, app, (fc >> 24) & 0x40)] += 1
        by_key[(hbh, e2e)] = None if (hbh, e2e) in by_key else f
    got = Counter((a.hbh, a.e2e, a.code, a.app_id, a.flags & 0x40) for a in answers)
    if got != expected:
        stats.fail(f"answers do not match the requests: missing {list(expected - got)[:3]}, "
                   f"unexpected {list(got - expected)[:3]}")
    for a in answers:
        rc = result_of(a)
        e = a.flags & 0x20
        stats.answers[f"{rc}{'E' if e else ''}"] += 1
        if a.flags & 0x90:
            stats.fail(f"answer with R or T set: {a.flags:#x}")
        oh = a.find(AvpCode.ORIGIN_HOST)
        if oh is None or oh.data != EIR_HOST.encode():
            stats.fail(f"answer without our Origin-Host: {a}")
        if rc is None:
            stats.fail(f"answer without a result: {a}")
            continue
        if 3000 <= rc < 4000 and not e:
            stats.fail(f"{rc} without the E bit")
        frame = by_key.get((a.hbh, a.e2e))
        if frame is not None and rc != 3004:  # 3004: refused unread while overloaded
            want = expected_code(frame)
            if want is not None and rc != want:
                stats.fail(f"request {frame[:24].hex()}... answered {rc}, RFC 6733 7.1.5 "
                           f"says {want}")


async def run(port: int, pid: int, proc_alive: Any, *, messages: int, seed: int, batch: int,
              breaks: float, reconnect_every: int, stats: Stats, deadline: float) -> None:
    rng = random.Random(seed)
    mutator = Mutator(rng)
    ids = iter(range(1, 1 << 31))
    baseline_at = messages // 10
    report_every = next_report = max(messages // 10, 1)
    stats.rss_kib["start"] = stats.rss_kib["peak"] = rss_kib(pid)
    conn = await Conn.open(port, ids)
    stats.connections += 1
    while stats.sent < messages:
        if time.monotonic() > deadline:
            stats.fail(f"time limit reached after {stats.sent:,} messages")
            break
        frames = []
        for _ in range(min(batch, messages - stats.sent)):
            i = next(ids)
            frames.append(mutator.mutant(i, i ^ 0x5A5A5A5A))
        k = next(ids)
        key = (0xF0000000 | k, 0x0F000000 | k)
        sentinel = ecr(hbh=key[0], e2e=key[1]).encode()
        conn.writer.write(b"".join(frames) + sentinel)
        stats.sent += len(frames) + 1
        stats.batches += 1
        must_reconnect = False
        try:
            answers = await conn.read_until(key)
        except Closed as c:
            # the stream framed: only a DPR among the mutants lets the server go
            if not any(int.from_bytes(f[5:8], "big") == 282 and f[4] & 0x80 for f in frames):
                stats.fail(f"the server {'reset' if c.reset else 'closed'} a connection "
                           "whose stream still framed")
            stats.ends["closed by the server after a DPR" if not c.reset else "reset"] += 1
            must_reconnect = True
        else:
            sentinel_rc = result_of(answers[-1])
            stats.sentinels[f"{sentinel_rc}"] += 1
            if sentinel_rc not in (2001, 3004):  # 3004: refused while overloaded
                stats.fail(f"the batch's valid ECR got {answers[-1]}")
            check_batch(frames, answers[:-1], stats)
            stats.verified += 1
            must_reconnect = any(a.code == 282 for a in answers)
            if must_reconnect:
                stats.ends["DPR sent, we close"] += 1
                conn.drop()
        if not must_reconnect and rng.random() < breaks:
            kind, data = mutator.breaker()
            stats.breakers[kind] += 1
            stats.sent += 1
            conn.writer.write(data)
            if frames_lost(data):
                reset = await conn.wait_closed()
                if not reset:
                    stats.fail(f"framing lost ({kind}) but the connection was not reset")
                stats.ends["reset: framing lost"] += 1
            else:
                await conn.half_close_and_wait()
                stats.ends["half-closed mid-message"] += 1
            conn.drop()
            must_reconnect = True
        elif not must_reconnect and stats.batches % reconnect_every == 0:
            i = next(ids)
            conn.writer.write(m.dpr(MME, i, i).encode())
            try:
                dpa = await conn.read_until((i, i))
                if result_of(dpa[-1]) != 2001:
                    stats.fail(f"DPR answered {dpa[-1]}")
            except Closed:
                stats.fail("the server closed before its DPA")
            conn.drop()
            stats.ends["DPR/DPA"] += 1
            must_reconnect = True
        rss = rss_kib(pid)
        stats.rss_kib["peak"] = max(stats.rss_kib["peak"], rss)
        if stats.sent >= next_report:
            next_report += report_every
            print(f"... {stats.sent:,} sent, {stats.connections:,} connections, server RSS "
                  f"{rss / 1024:.1f} MiB, {stats.failure_count} failures", file=sys.stderr,
                  flush=True)
        if "baseline" not in stats.rss_kib and stats.sent >= baseline_at:
            stats.rss_kib["baseline"] = rss
        if not proc_alive():
            stats.fail("the server process died")
            return
        if must_reconnect:
            conn = await Conn.open(port, ids)
            stats.connections += 1
    conn.drop()
    # the server still works: a fresh connection, a valid ECR, the registry's answer
    conn = await Conn.open(port, ids)
    stats.connections += 1
    for _ in range(50):  # an overload that the last batches caused ends within seconds
        i = next(ids)
        conn.writer.write(ecr(hbh=i, e2e=i).encode())
        ans = (await conn.read_until((i, i)))[-1]
        if result_of(ans) != 3004:
            break
        await asyncio.sleep(0.2)
    es = ans.find(AvpCode.EQUIPMENT_STATUS, TGPP)
    if result_of(ans) != 2001 or es is None or es.as_u32() != 0:
        stats.fail(f"the final ECR got {ans}")
    conn.drop()
    stats.rss_kib["end"] = rss_kib(pid)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.fuzz_net", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=1_000_000, help="mutants to send")
    p.add_argument("--seed", type=int, default=0x5EED_1402)
    p.add_argument("--batch", type=int, default=200, help="mutants per write (200)")
    p.add_argument("--break", dest="breaks", type=float, default=0.5,
                   help="chance of a stream breaker after a batch (0.5)")
    p.add_argument("--reconnect", type=int, default=25,
                   help="DPR/DPA and a new connection every N batches (25)")
    p.add_argument("--rss-growth-mib", type=float, default=4.0,
                   help="most the server's RSS may grow past the baseline (4 MiB)")
    p.add_argument("--max-seconds", type=float, default=3600.0,
                   help="stop (and fail) if the run takes longer (3600)")
    p.add_argument("--work", type=Path, help="directory for the registry and the server log "
                   "(default: a temporary one, removed after a pass)")
    p.add_argument("--json-out", type=Path)
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    tmp = None if a.work else tempfile.TemporaryDirectory(prefix="eir-fuzz-net-")
    work = a.work or Path(tmp.name)  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)
    (work / "registry.csv").write_text(REGISTRY)
    db = work / "eir.db"
    res = run_cli("registry", "import", "--db", str(db), "--quiet", str(work / "registry.csv"))
    if res.returncode != 0:
        print(f"fuzz_net: registry import failed: {res.stderr.strip()}", file=sys.stderr)
        return 2
    # the `eir` entry point imports the package it was installed from; serve this tree's
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    stats = Stats()
    server = EirProcess(db, origin_host=EIR_HOST, origin_realm=EIR_REALM,
                        log_path=work / "eir.log")
    try:
        server.start()
    except RuntimeError as exc:
        print(f"fuzz_net: {exc}", file=sys.stderr)
        return 2
    assert server.proc is not None
    proc = server.proc
    t0 = time.monotonic()
    try:
        asyncio.run(run(server.port, proc.pid, lambda: proc.poll() is None,
                        messages=a.messages, seed=a.seed, batch=a.batch, breaks=a.breaks,
                        reconnect_every=a.reconnect, stats=stats,
                        deadline=t0 + a.max_seconds))
    except Exception as exc:  # a stalled or dead server ends the run: that is the finding
        stats.fail(f"run aborted: {type(exc).__name__}: {exc}")
    elapsed = time.monotonic() - t0
    alive = proc.poll() is None
    if not alive:
        stats.fail(f"the server exited with {proc.returncode}")
    code = server.stop()
    log = server.log()
    bad_lines = [ln for ln in log.splitlines() if "Traceback" in ln or " ERROR " in ln]
    if bad_lines:
        stats.fail(f"{len(bad_lines)} ERROR/Traceback lines in the server log: {bad_lines[:3]}")
    rss = stats.rss_kib
    base = rss.get("baseline", rss.get("start", 0))
    growth = rss.get("end", base) - base
    if growth > a.rss_growth_mib * 1024:
        stats.fail(f"server RSS grew {growth / 1024:.1f} MiB past the baseline "
                   f"(limit {a.rss_growth_mib:g} MiB)")
    figures = {
        "messages": stats.sent, "requests": stats.requests, "batches": stats.batches,
        "batches_verified": stats.verified,
        "connections": stats.connections, "seconds": round(elapsed, 1),
        "messages_per_s": round(stats.sent / elapsed) if elapsed else 0,
        "answers": dict(stats.answers.most_common()), "breakers": dict(stats.breakers),
        "batch_ecr_answers": dict(stats.sentinels),
        "connection_ends": dict(stats.ends), "rss_kib": rss, "rss_growth_kib": growth,
        "server_alive": alive, "server_exit": code, "failures": stats.failures,
        "failure_count": stats.failure_count,
    }
    err = sys.stderr
    print(f"sent {stats.sent:,} messages ({stats.requests:,} requests) in {elapsed:.1f} s: "
          f"{figures['messages_per_s']:,}/s over {stats.connections:,} connections; "
          f"{stats.verified:,} of {stats.batches:,} batches read to the end and checked",
          file=err)
    print("answers by result code (E: the E bit): " + ", ".join(
        f"{k} {v:,}" for k, v in stats.answers.most_common()), file=err)
    print("the batches' valid ECRs: " + ", ".join(
        f"{k} {v:,}" for k, v in stats.sentinels.most_common()), file=err)
    print("stream breakers: " + ", ".join(f"{k} {v:,}" for k, v in stats.breakers.items()),
          file=err)
    print("connection ends: " + ", ".join(f"{k} {v:,}" for k, v in stats.ends.items()), file=err)
    print(f"server RSS: start {rss.get('start', 0) / 1024:.1f} MiB, baseline "
          f"{base / 1024:.1f}, peak {rss.get('peak', 0) / 1024:.1f}, end "
          f"{rss.get('end', 0) / 1024:.1f} (growth {growth / 1024:+.1f} MiB, limit "
          f"{a.rss_growth_mib:g})", file=err)
    for f in stats.failures:
        print(f"FAIL: {f}", file=err)
    if stats.failure_count > len(stats.failures):
        print(f"... and {stats.failure_count - len(stats.failures)} more failures", file=err)
    print("PASS" if not stats.failure_count else f"FAIL ({stats.failure_count} failures; "
          f"server log {work / 'eir.log'})", file=err)
    out = json.dumps(figures)
    print(out)
    if a.json_out:
        a.json_out.write_text(out)
    if tmp is not None and not stats.failure_count:
        tmp.cleanup()
    return 1 if stats.failure_count else 0


if __name__ == "__main__":
    sys.exit(main())
