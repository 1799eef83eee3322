"""A Diameter initiator node over TCP or TLS: connect, CER/CEA, requests with answers, DPR.

Owns the initiator side of RFC 6733 5.6 as asyncio glue (Wait-Conn-Ack ->
Wait-I-CEA -> I-Open -> Closing) on top of the sans-IO ``PeerConnection``.
Answers are matched to requests by Hop-by-Hop id; a late answer after a
timeout is dropped like any answer with an unknown id (RFC 6733 6.2).
The MME simulator and the tests use it; it uses only ``eir.diameter``.
With an ``ssl.SSLContext`` the connection is TLS from the start, then the
CER (RFC 6733 2.1, the secure port 5658); a refused handshake raises
``ssl.SSLError`` (an ``OSError``) from ``connect``.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import Callable

from . import messages as m
from .codec import Message, decode_message
from .constants import DisconnectCause
from .dictionary import Dictionary
from .peer import (
    AnswerReceived,
    CloseConnection,
    DisconnectRequested,
    Event,
    PeerConnection,
    PeerOpened,
    Role,
    Timers,
)
from .transport import PeerProtocol

_TIMERS = Timers()  # the default (Timers is frozen: one shared instance is safe)


class DiameterError(ConnectionError):
    """The connection could not be opened, or was lost."""


class DiameterClient:
    def __init__(self, ident: m.Identity, dictionary: Dictionary, *,
                 apps: m.Applications = m.S13_APPLICATIONS, timers: Timers = _TIMERS) -> None:
        self.ident = ident
        self.apps = apps
        self.dictionary = dictionary
        self.timers = timers
        self.proto: PeerProtocol | None = None
        self.opened: asyncio.Future[PeerOpened] | None = None
        self._waiting: dict[int, asyncio.Future[bytes]] = {}
        self.close_reason: str | None = None
        self.disconnect_cause: int | None = None  # Disconnect-Cause of a DPR from the peer
        self._tls = False

    async def connect(self, host: str, port: int, timeout: float = 10.0, *,
                      tls: ssl.SSLContext | None = None,
                      server_hostname: str | None = None) -> PeerOpened:
        """Connect (with ``tls``: TLS first, the server's name checked against
        ``server_hostname``, default ``host``), then CER/CEA; the peer's CEA facts."""
        loop = asyncio.get_running_loop()
        self.opened = loop.create_future()
        self._tls = tls is not None

        def make(source_ip: str, now: float) -> PeerConnection:
            conn = PeerConnection(Role.INITIATOR, self.ident, self.apps, self.dictionary, now,
                                  timers=self.timers, rand=random.random,
                                  wall_time=time.time())
            conn.start(now)
            return conn

        _, proto = await asyncio.wait_for(
            loop.create_connection(lambda: PeerProtocol(make, self._event), host, port, ssl=tls,
                                   server_hostname=(server_hostname or host) if tls else None),
            timeout)
        self.proto = proto
        proto.closed.add_done_callback(self._lost)
        return await asyncio.wait_for(self.opened, timeout)

    def _event(self, proto: PeerProtocol, ev: Event) -> None:
        if isinstance(ev, PeerOpened):
            if self.opened is not None and not self.opened.done():
                self.opened.set_result(ev)
        elif isinstance(ev, AnswerReceived):
            fut = self._waiting.pop(ev.hbh, None)
            if fut is not None and not fut.done():
                fut.set_result(ev.frame)
        elif isinstance(ev, DisconnectRequested):
            self.disconnect_cause = ev.cause
        elif isinstance(ev, CloseConnection):
            self.close_reason = ev.reason

    def _lost(self, _: object) -> None:
        why = self.close_reason or "connection closed"
        if self._tls and self.opened is not None and not self.opened.done():
            # In TLS 1.3 the client's handshake is done before the server has checked
            # the client's certificate: a refusal comes as a close before the CEA.
            why += " before the CEA (over TLS: did the server refuse our certificate?)"
        err = DiameterError(why)
        if self.opened is not None and not self.opened.done():
            self.opened.set_exception(err)
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(err)
        self._waiting.clear()

    @property
    def conn(self) -> PeerConnection:
        if self.proto is None or self.proto.conn is None:
            raise DiameterError("not connected")
        return self.proto.conn

    def send_nowait(self, build: Callable[[int, int], bytes]) -> asyncio.Future[bytes]:
        """Queue a request built for the (hbh, e2e) given; the future gets the answer frame."""
        conn = self.conn
        if self.proto is None or self.proto.transport is None or \
                self.proto.transport.is_closing():
            # nothing sent now could be answered: fail at once, not at the timeout
            raise DiameterError(self.close_reason or "connection closed")
        loop = asyncio.get_running_loop()
        hbh, e2e = conn.next_ids(loop.time())
        fut: asyncio.Future[bytes] = loop.create_future()
        self._waiting[hbh] = fut
        conn.send_request(build(hbh, e2e), hbh)
        assert self.proto is not None
        self.proto.send()
        return fut

    async def request(self, msg: Message, timeout: float = 5.0) -> Message:
        """Send a request (its ids are filled in) and wait for the decoded answer."""
        def build(hbh: int, e2e: int) -> bytes:
            msg.hbh, msg.e2e = hbh, e2e
            return msg.encode()

        fut = self.send_nowait(build)
        try:
            frame = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            self.conn.forget(msg.hbh)
            self._waiting.pop(msg.hbh, None)
            raise
        decoded = decode_message(frame)
        if not isinstance(decoded, Message):
            raise DiameterError(f"undecodable answer: {decoded.reason}")
        return decoded

    async def close(self, cause: int = DisconnectCause.REBOOTING, timeout: float = 5.0) -> None:
        """DPR, then wait for the DPA (the receiver of the DPA closes, RFC 6733 5.4)."""
        if self.proto is None or self.proto.transport is None:
            return
        loop = asyncio.get_running_loop()
        if self.conn.stop(loop.time(), cause):
            self.proto.transport.close()
        self.proto.send()
        try:
            await asyncio.wait_for(asyncio.shield(self.proto.closed), timeout)
        except TimeoutError:
            self.proto.transport.abort()
