"""A Diameter server that only frames: the Python ceiling for the EIR's hot path.

Usage::

    python -m bench.echo_server --listen 127.0.0.1:0     # prints "ECHO ready on HOST:PORT"

Per ``data_received`` it splits the bytes on the 3-byte Message Length and,
for each ECR, appends a pre-encoded WHITELISTED ECA with the request's
Application-Id, Hop-by-Hop and End-to-End ids and Session-Id copied (one
slice) and the length patched; then it writes everything with one
``transport.write``. That is the least any Python Diameter server must do
per message (frame it, copy the ids and the Session-Id, write the answer)
with none of the work the EIR adds (checking the AVPs, deciding, counting).
The answer has the shape of the EIR's, so the load generator does the same
work against both servers and the ratio EIR/echo compares the servers.

CER, DWR and DPR get pre-built CEA, DWA and DPA (encoded once with
``eir.diameter``) with the ids patched, so the same load generator drives
it. Nothing is checked: this is a measuring stick, not a server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import struct
import sys
import time
from typing import cast

from eir.diameter import messages as m
from eir.diameter.codec import Avp, Message
from eir.diameter.constants import (
    AuthSessionState,
    AvpCode,
    CmdFlag,
    Command,
    EquipmentStatus,
    ResultCode,
    Vendor,
)

_HDR = struct.Struct("!II")
_AVP = struct.Struct("!II")
_U32 = struct.Struct("!I")
_ECR_FC = ((CmdFlag.REQUEST | CmdFlag.PROXIABLE) << 24) | Command.ME_IDENTITY_CHECK
_ECA_FC = _U32.pack((CmdFlag.PROXIABLE << 24) | Command.ME_IDENTITY_CHECK)


class Prebuilt:
    """Every answer the echo server sends, encoded once."""

    def __init__(self, origin_host: str, origin_realm: str) -> None:
        ident = m.Identity(origin_host, origin_realm, ("127.0.0.1",), product_name="eir-echo")
        self.eca_body = b"".join(a.encode() for a in (
            Avp.u32(AvpCode.RESULT_CODE, ResultCode.SUCCESS),
            Avp.u32(AvpCode.AUTH_SESSION_STATE, AuthSessionState.NO_STATE_MAINTAINED),
            *ident.origin_avps(),
            Avp.u32(AvpCode.EQUIPMENT_STATUS, EquipmentStatus.WHITELISTED, Vendor.TGPP)))
        # requests as a peer sends them, answered once with hbh = e2e = 0
        req = Message(0, 0, CmdFlag.REQUEST)
        self.cea = m.cea(req, ident, m.S13_APPLICATIONS, ResultCode.SUCCESS)
        self.cea.code = Command.CAPABILITIES_EXCHANGE
        self.dwa = m.dwa(req, ident)
        self.dwa.code = Command.DEVICE_WATCHDOG
        self.dpa = m.dpa(req, ident)
        self.dpa.code = Command.DISCONNECT_PEER
        self.base = {Command.CAPABILITIES_EXCHANGE: self.cea.encode(),
                     Command.DEVICE_WATCHDOG: self.dwa.encode(),
                     Command.DISCONNECT_PEER: self.dpa.encode()}


class Stats:
    answers = 0
    dropped = 0
    connections = 0
    drop_every = 0  # > 0: leave every Nth ECR unanswered (to test a generator's accounting)


class EchoProtocol(asyncio.Protocol):
    def __init__(self, pre: Prebuilt, stats: type[Stats]) -> None:
        self.pre = pre
        self.stats = stats
        self.rest = b""
        self.seen = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not registered as asyncio.Transport: no isinstance check
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.stats.connections += 1

    def data_received(self, data: bytes) -> None:
        if self.rest:
            data = self.rest + data
            self.rest = b""
        n = len(data)
        pos = 0
        out: list[bytes] = []
        body = self.pre.eca_body
        blen = len(body)
        eca_fc = _ECA_FC
        pack = _U32.pack
        unpack_hdr = _HDR.unpack_from
        unpack_avp = _AVP.unpack_from
        answers = 0
        close = False
        drop_every = self.stats.drop_every
        while n - pos >= 20:
            vl, fc = unpack_hdr(data, pos)
            length = vl & 0xFFFFFF
            end = pos + length
            if length < 20:
                assert self.transport is not None
                self.transport.abort()
                return
            if end > n:
                break
            if fc == _ECR_FC and length >= 28:
                if drop_every:
                    self.seen += 1
                    if self.seen % drop_every == 0:
                        self.stats.dropped += 1
                        pos = end
                        continue
                code, fl = unpack_avp(data, pos + 20)
                sid_end = pos + 20 + ((fl & 0xFFFFFF) + 3 & -4) if code == 263 else pos + 20
                out += (pack(0x01000000 | (sid_end - pos + blen)), eca_fc,
                        data[pos + 8:sid_end], body)
                answers += 1
            elif fc >> 31:
                base = self.pre.base.get(fc & 0xFFFFFF)
                if base is not None:
                    out += (base[:12], data[pos + 12:pos + 20], base[20:])
                    close = close or fc & 0xFFFFFF == Command.DISCONNECT_PEER
            pos = end
        if pos < n:
            self.rest = data[pos:]
        if out:
            assert self.transport is not None
            self.transport.write(b"".join(out))
            self.stats.answers += answers
        if close and self.transport is not None:
            self.transport.close()


async def serve(host: str, port: int, origin_host: str, origin_realm: str,
                max_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    pre = Prebuilt(origin_host, origin_realm)
    server = await loop.create_server(lambda: EchoProtocol(pre, Stats), host, port,
                                      reuse_address=True, backlog=512)
    bound = server.sockets[0].getsockname()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"ECHO ready on {bound[0]}:{bound[1]}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max_seconds)
    server.close()
    print(f"echo: stopped after {time.monotonic() - t0:.1f} s: {Stats.answers} ECA to "
          f"{Stats.connections} connection(s), {Stats.dropped} ECR dropped on purpose",
          file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.echo_server",
                                description="Framing-only Diameter server (the Python ceiling).")
    p.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any free port)")
    p.add_argument("--origin-host", default="echo.bench")
    p.add_argument("--origin-realm", default="bench")
    p.add_argument("--max-seconds", type=float, default=3600.0, help="exit after this long")
    p.add_argument("--no-uvloop", action="store_true")
    p.add_argument("--drop-every", type=int, default=0,
                   help="leave every Nth ECR unanswered (tests the load generator's loss count)")
    args = p.parse_args(argv)
    Stats.drop_every = args.drop_every
    host, _, port = args.listen.rpartition(":")
    coro = serve(host.strip("[]") or "127.0.0.1", int(port), args.origin_host,
                 args.origin_realm, args.max_seconds)
    if args.no_uvloop:
        asyncio.run(coro)
    else:
        import uvloop

        uvloop.run(coro)
    return 0


if __name__ == "__main__":
    sys.exit(main())
