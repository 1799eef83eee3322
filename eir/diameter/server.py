"""A Diameter responder node over TCP and TLS: listeners, peer table and graceful stop.

Owns the server side of RFC 6733 5.6 across connections (one connection per
peer Origin-Host, admission of peers, 3010 for the others) and the stop
order of a node going down: stop accepting, DPR (REBOOTING, 5.4.3) to every
open peer, let in-flight answers go out, wait for the DPAs or disconnects,
then close what is left (uvicorn's order).

With an ``ssl.SSLContext`` in the config a second listener serves Diameter
over TLS on its own port (RFC 6733 2.1: 5658; TLS first, then the CER, 13).
Both listeners share one peer table, one set of handlers and one stop. The
TLS listener accepts its sockets itself and hands each to
``loop.connect_accepted_socket(ssl=...)``, which raises when the handshake
fails: asyncio's ``create_server(ssl=...)`` would drop such a connection
silently (an ``ssl.SSLError`` is an ``OSError``, which asyncio logs only in
debug mode), and a refused certificate is worth a line in the log. The plain
listener is asyncio's own, unchanged.

For metrics the server keeps what its connections forget when they close:
the peers seen since start and when each was last connected, the messages
each peer sent (on its closed connections; the open ones count their own),
and the base-protocol counts (`MessageStats`). It is updated per
connection event, never per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from . import messages as m
from .constants import DisconnectCause
from .dictionary import Dictionary
from .latency import Sampler
from .peer import (
    MAX_REMEMBERED_FAILURES,
    Admission,
    AppHandler,
    DisconnectRequested,
    Event,
    MessageStats,
    PeerConnection,
    PeerDenied,
    PeerOpened,
    PeerTable,
    Role,
    Timers,
)
from .tls import DIAMETER_TLS_PORT, describe_session
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
    plain: bool = True  # listen on host:port (plain TCP); False: TLS only
    # Diameter over TLS (RFC 6733 2.1): a context, and where to listen with it
    tls: ssl.SSLContext | None = None
    tls_host: str | None = None  # default: host
    tls_port: int = DIAMETER_TLS_PORT
    # a connection whose handshake is not done in this time is closed (like a CER timeout)
    tls_handshake_timeout: float = 10.0
    max_handshakes: int = 512  # handshakes in progress at once; more are closed at once
    # time one read in N (eir.diameter.latency); 0: none
    latency_sample: int = 0


# handshake failures logged per minute; the others are counted and summed up in the next line
_FAILURES_LOGGED_PER_MINUTE = 10


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
        self.tls_failures = 0  # TLS handshakes that failed (refused, timed out, not TLS)
        self.tls_sessions = 0  # TLS handshakes that succeeded
        self._servers: list[asyncio.Server] = []
        self._tls_socks: list[socket.socket] = []
        self._tls_tasks: set[asyncio.Task[None]] = set()  # accept loops and handshakes
        self._handshakes: set[asyncio.Task[None]] = set()
        self._failures_window = 0.0  # monotonic start of the current minute of failure logs
        self._failures_logged = 0
        self._failures_quiet = 0  # failures not logged since the last line
        self.stats = MessageStats()
        self.sampler = Sampler(config.latency_sample) if config.latency_sample > 0 else None
        # Origin-Host (lower case) -> wall time its last connection closed, for the peers
        # seen since start that are not connected now (PeerTable.connected: those that are;
        # PeerTable.failed: those whose last connection ended without a DPR)
        # (at most MAX_REMEMBERED_FAILURES, the oldest forgotten first)
        self.last_closed: dict[str, float] = {}
        # Origin-Host (lower case) -> messages received on its closed connections
        self.peer_messages: dict[str, int] = {}

    @property
    def port(self) -> int:
        """The plain TCP port (the TLS port when there is no plain listener)."""
        if not self._servers:
            return self.tls_port
        sock = self._servers[0].sockets[0]
        return int(sock.getsockname()[1])

    @property
    def tls_port(self) -> int:
        assert self._tls_socks, "no TLS listener"
        return int(self._tls_socks[0].getsockname()[1])

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        c = self.config
        if c.tls is None and not c.plain:
            raise ValueError("no listener: plain TCP is off and there is no TLS context")
        if c.plain and c.sockets:
            for sock in c.sockets:
                self._servers.append(await loop.create_server(
                    self._protocol, sock=sock, backlog=c.backlog))
        elif c.plain:
            self._servers.append(await loop.create_server(
                self._protocol, c.host, c.port, backlog=c.backlog, reuse_address=True,
                reuse_port=c.reuse_port or None))
        if c.tls is not None:
            try:
                self._tls_socks = _listen(c.tls_host or c.host, c.tls_port, c.backlog,
                                          c.reuse_port)
            except BaseException:
                for server in self._servers:
                    server.close()
                raise
            for sock in self._tls_socks:
                self._spawn(self._accept_loop(sock, c.tls))

    def _protocol(self) -> PeerProtocol:
        proto = PeerProtocol(self._connection, self._event, self.sampler)
        self._track(proto)
        return proto

    def _track(self, proto: PeerProtocol) -> None:
        self.protocols.add(proto)
        proto.closed.add_done_callback(lambda _: self._closed(proto))

    def _closed(self, proto: PeerProtocol) -> None:
        self.protocols.discard(proto)
        conn = proto.conn
        if conn is None or conn.peer_host is None:
            return
        key = conn.peer_host.lower()
        clean = key not in self.peers.failed
        log.info("peer %s (%s) disconnected%s", conn.peer_host, proto.peer_addr,
                 "" if clean else " without a DPR",
                 extra={"event": "peer_closed", "peer": conn.peer_host,
                        "addr": proto.peer_addr, "clean": clean})
        self.peer_messages[key] = self.peer_messages.get(key, 0) + conn.received
        if key not in self.peers.connected:  # not another connection of the same peer
            self.last_closed.pop(key, None)  # to the end: the newest is forgotten last
            self.last_closed[key] = time.time()
            if len(self.last_closed) > MAX_REMEMBERED_FAILURES:  # bounded, scraped or not
                self._forget(next(iter(self.last_closed)))

    def forget_peers(self, before: float) -> None:
        """Forget the peers not connected since ``before`` (wall time)."""
        for key in [k for k, at in self.last_closed.items() if at < before]:
            self._forget(key)

    def _forget(self, key: str) -> None:
        del self.last_closed[key]
        self.peer_messages.pop(key, None)

    # -- the TLS listener --

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tls_tasks.add(task)
        task.add_done_callback(self._tls_tasks.discard)
        return task

    async def _accept_loop(self, listener: socket.socket, context: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, addr = await loop.sock_accept(listener)
            except OSError as exc:
                # out of file descriptors or the like: asyncio's own servers also wait
                log.error("TLS listener: accept failed (%s); retrying in 1 s", exc)
                await asyncio.sleep(1.0)
                continue
            except Exception:  # the listener must outlive anything unforeseen
                log.exception("TLS listener: accept failed; retrying in 1 s")
                await asyncio.sleep(1.0)
                continue
            if len(self._handshakes) >= self.config.max_handshakes:
                self._failed(_addr(addr), f"{len(self._handshakes)} handshakes already "
                             "in progress")
                sock.close()
                continue
            # the socket is ours until connect_accepted_socket takes it (its transport
            # then closes it); a task cancelled before it ran must still close it
            unowned = [sock]
            task = self._spawn(self._handshake(sock, _addr(addr), context, unowned))
            self._handshakes.add(task)
            task.add_done_callback(functools.partial(_close_unowned, unowned))
            task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, sock: socket.socket, peer: str, context: ssl.SSLContext,
                         unowned: list[socket.socket]) -> None:
        """TLS first, on the accepted socket (RFC 6733 2.1); the peer machine then starts."""
        loop = asyncio.get_running_loop()

        def factory() -> PeerProtocol:
            unowned.clear()  # called before the transport is made, which owns the socket
            return _TlsPeerProtocol(self, self._connection, self._event)

        try:
            await loop.connect_accepted_socket(
                factory, sock, ssl=context,
                ssl_handshake_timeout=self.config.tls_handshake_timeout)
        except Exception as exc:  # ssl.SSLError is an OSError; nothing may escape the task
            self._failed(peer, _why(exc))

    def _failed(self, peer: str, why: str) -> None:
        """A failed handshake: counted, logged (at most 10 lines a minute), never raised."""
        self.tls_failures += 1
        now = time.monotonic()
        if now - self._failures_window >= 60.0:
            self._failures_window, self._failures_logged = now, 0
        if self._failures_logged >= _FAILURES_LOGGED_PER_MINUTE:
            self._failures_quiet += 1
            return
        self._failures_logged += 1
        quiet, self._failures_quiet = self._failures_quiet, 0
        log.warning("%s: TLS handshake failed, connection closed: %s (%d failed so far%s)",
                    peer, why, self.tls_failures,
                    f"; {quiet} more since the last line" if quiet else "")

    def _connection(self, source_ip: str, now: float) -> PeerConnection:
        c = self.config
        return PeerConnection(Role.RESPONDER, c.ident, c.apps, self.dictionary, now,
                              handlers=self.handlers, admission=c.admission, peers=self.peers,
                              source_ip=source_ip, timers=c.timers, rand=random.random,
                              max_message=c.max_message, wall_time=time.time(),
                              stats=self.stats)

    def _event(self, proto: PeerProtocol, ev: Event) -> None:
        if isinstance(ev, PeerOpened):
            self.last_closed.pop(ev.origin_host.lower(), None)
            log.info("peer %s (realm %s) open from %s, applications %s%s", ev.origin_host,
                     ev.origin_realm, proto.peer_addr, sorted(ev.applications),
                     " (reconnected: REOPEN)" if ev.reconnected else "",
                     extra={"event": "peer_open", "peer": ev.origin_host,
                            "realm": ev.origin_realm, "addr": proto.peer_addr})
        elif isinstance(ev, PeerDenied):
            self.denied += 1
            log.warning("peer %s from %s denied (3010): not admitted by the allow-list "
                        "(peers.allow_hosts, peers.allow_networks); %d denied so far",
                        ev.origin_host, ev.source_ip, self.denied,
                        extra={"event": "peer_denied", "peer": ev.origin_host,
                               "addr": ev.source_ip})
        elif isinstance(ev, DisconnectRequested):
            peer = proto.conn.peer_host if proto.conn else None
            log.info("peer %s sent DPR (cause %d)", peer or "?", ev.cause,
                     extra={"event": "peer_dpr", "peer": peer, "cause": ev.cause})

    async def stop(self, timeout: float = 3.0) -> None:
        """Stop accepting, send DPR to every peer, wait for them to go, then close."""
        for server in self._servers:
            server.close()
        for task in list(self._tls_tasks):  # accept loops and handshakes in progress
            task.cancel()
        for sock in self._tls_socks:
            sock.close()
        if self._tls_tasks:
            await asyncio.wait(list(self._tls_tasks), timeout=timeout)
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


class _TlsPeerProtocol(PeerProtocol):
    """A peer on the TLS port: ``connection_made`` comes once the handshake is done."""

    def __init__(self, server: DiameterServer, make_conn: Callable[[str, float], PeerConnection],
                 on_event: Callable[[PeerProtocol, Event], None]) -> None:
        super().__init__(make_conn, on_event, server.sampler)
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # logged and tracked before the first byte of the CER is read
        peer = transport.get_extra_info("peername")
        self._server.tls_sessions += 1
        log.info("%s: TLS session: %s", _addr(peer),
                 describe_session(transport.get_extra_info("ssl_object")))
        self._server._track(self)
        super().connection_made(transport)


def _close_unowned(socks: list[socket.socket], _: object) -> None:
    _close_all(socks)


def _close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.close()
    socks.clear()


def _listen(host: str, port: int, backlog: int, reuse_port: bool) -> list[socket.socket]:
    """Listening sockets on every address ``host`` names, as ``loop.create_server`` makes."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, addr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(addr)
            except OSError as exc:
                raise OSError(exc.errno, f"error while attempting to bind on address "
                                         f"{addr!r}: {exc.strerror}") from None
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        _close_all(socks)
        raise
    return socks


def _addr(addr: object) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return str(addr)


def _why(exc: BaseException) -> str:
    """A handshake failure in words: OpenSSL's reason, a timeout, or the peer leaving."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"{exc.reason}: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    # asyncio and uvloop abort a slow handshake with a ConnectionAbortedError that says so
    if isinstance(exc, TimeoutError) or "taking longer than" in str(exc):
        return "no handshake within the timeout"
    if isinstance(exc, (ConnectionError, EOFError)):
        return ("the peer closed the connection during the handshake (as a client that "
                f"does not trust our certificate does; {exc!r})")
    return repr(exc)
