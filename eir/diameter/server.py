"""A Diameter responder node over TCP: listener, peer table and graceful stop.

Owns the server side of RFC 6733 5.6 across connections (one connection per
peer Origin-Host, admission of peers, 3010 for the others) and the stop
order of a node going down: stop accepting, DPR (REBOOTING, 5.4.3) to every
open peer, let in-flight answers go out, wait for the DPAs or disconnects,
then close what is left (uvicorn's order).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from dataclasses import dataclass, field

from . import messages as m
from .constants import DisconnectCause
from .dictionary import Dictionary
from .peer import (
    Admission,
    AppHandler,
    DisconnectRequested,
    Event,
    PeerConnection,
    PeerDenied,
    PeerOpened,
    PeerTable,
    Role,
    Timers,
)
from .transport import PeerProtocol

log = logging.getLogger("eir.diameter")


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 3868
    ident: m.Identity = field(default_factory=lambda: m.Identity("eir.localdomain", "localdomain"))
    apps: m.Applications = field(default_factory=m.Applications)
    admission: Admission = field(default_factory=Admission)
    timers: Timers = field(default_factory=Timers)
    max_message: int = 1 << 20
    backlog: int = 512
    # SO_REUSEPORT: several processes listen on the same address and the kernel spreads
    # the connections over them (each process keeps its own peer table)
    reuse_port: bool = False
    # listening sockets made by someone else (a supervisor that hands its workers their
    # sockets): served instead of binding host:port. Closing the server closes this
    # process's copy only; whoever else holds the socket keeps its accept queue
    sockets: tuple[socket.socket, ...] = ()


class DiameterServer:
    """Accepts peers and hands their application requests to handlers."""

    def __init__(self, config: ServerConfig, dictionary: Dictionary,
                 handlers: dict[int, AppHandler]) -> None:
        self.config = config
        self.dictionary = dictionary
        self.handlers = handlers
        self.peers = PeerTable()
        self.protocols: set[PeerProtocol] = set()
        self.denied = 0  # CERs refused by the allow-list
        self._servers: list[asyncio.Server] = []

    @property
    def port(self) -> int:
        assert self._servers
        sock = self._servers[0].sockets[0]
        return int(sock.getsockname()[1])

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        c = self.config
        if c.sockets:
            for sock in c.sockets:
                self._servers.append(await loop.create_server(
                    self._protocol, sock=sock, backlog=c.backlog))
            return
        self._servers.append(await loop.create_server(
            self._protocol, c.host, c.port, backlog=c.backlog, reuse_address=True,
            reuse_port=c.reuse_port or None))

    def _protocol(self) -> PeerProtocol:
        proto = PeerProtocol(self._connection, self._event)
        self.protocols.add(proto)
        proto.closed.add_done_callback(lambda _: self.protocols.discard(proto))
        return proto

    def _connection(self, source_ip: str, now: float) -> PeerConnection:
        c = self.config
        return PeerConnection(Role.RESPONDER, c.ident, c.apps, self.dictionary, now,
                              handlers=self.handlers, admission=c.admission, peers=self.peers,
                              source_ip=source_ip, timers=c.timers, rand=random.random,
                              max_message=c.max_message, wall_time=time.time())

    def _event(self, proto: PeerProtocol, ev: Event) -> None:
        if isinstance(ev, PeerOpened):
            log.info("peer %s (realm %s) open from %s, applications %s%s", ev.origin_host,
                     ev.origin_realm, proto.peer_addr, sorted(ev.applications),
                     " (reconnected: REOPEN)" if ev.reconnected else "")
        elif isinstance(ev, PeerDenied):
            self.denied += 1
            log.warning("peer %s from %s denied (3010): not admitted by the allow-list "
                        "(peers.allow_hosts, peers.allow_networks); %d denied so far",
                        ev.origin_host, ev.source_ip, self.denied)
        elif isinstance(ev, DisconnectRequested):
            log.info("peer %s sent DPR (cause %d)", proto.conn.peer_host if proto.conn else "?",
                     ev.cause)

    async def stop(self, timeout: float = 3.0) -> None:
        """Stop accepting, send DPR to every peer, wait for them to go, then close."""
        for server in self._servers:
            server.close()
        loop = asyncio.get_running_loop()
        now = loop.time()
        for proto in list(self.protocols):
            if proto.conn is None or proto.transport is None:
                continue
            not_open = proto.conn.stop(now, DisconnectCause.REBOOTING)
            proto.send()
            if not_open:
                proto.transport.close()
        pending = [p.closed for p in self.protocols]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        for proto in list(self.protocols):
            if proto.transport is not None:
                proto.transport.abort()
        for server in self._servers:
            await server.wait_closed()
