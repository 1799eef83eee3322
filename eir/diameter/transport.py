"""asyncio glue between a TCP transport and a sans-IO ``PeerConnection``.

Owns the socket side of RFC 6733 2.1 (TCP transport, abortive close when
framing is lost) and the timer plumbing: the peer machine's ``deadline``
is scheduled with ``loop.call_at`` and re-armed lazily, never polled.
One write per ``data_received``, whatever the number of answers. With a
`eir.diameter.latency.Sampler`, one read in ``sampler.every`` is timed
from the read to that write (the others pay one decrement).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import cast

from .latency import Sampler
from .peer import (
    AnswerReceived,
    CloseConnection,
    DisconnectRequested,
    Event,
    Notice,
    PeerConnection,
    PeerOpened,
)

log = logging.getLogger("eir.diameter")


class PeerProtocol(asyncio.Protocol):
    """Drives one ``PeerConnection`` from a stream transport."""

    def __init__(self, make_conn: Callable[[str, float], PeerConnection],
                 on_event: Callable[[PeerProtocol, Event], None] | None = None,
                 sampler: Sampler | None = None) -> None:
        self._make_conn = make_conn
        self._on_event = on_event
        self.sampler = sampler
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.conn: PeerConnection | None = None
        self.peer_addr = ""
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.closed = self.loop.create_future()

    # -- asyncio callbacks --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self.peer_addr = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.conn = self._make_conn(peer[0] if peer else "", self.loop.time())
        self._flush()
        self._arm()

    def data_received(self, data: bytes) -> None:
        sampler = self.sampler
        if sampler is not None:
            sampler.countdown -= 1
            if sampler.countdown <= 0:
                self._timed(data, sampler)
                return
        conn = self.conn
        assert conn is not None
        events = conn.feed(data, self.loop.time())
        self._flush()
        if events:
            self._events(events)
        # the deadline may have moved earlier (e.g. a DPR starts the short Closing timer)
        self._arm()

    def _timed(self, data: bytes, sampler: Sampler) -> None:
        """data_received, timed from the read to the write of its answers."""
        conn = self.conn
        assert conn is not None
        t0 = time.perf_counter()
        before = conn.received
        events = conn.feed(data, self.loop.time())
        self._flush()
        sampler.observe(time.perf_counter() - t0, conn.received - before)
        if events:
            self._events(events)
        # the deadline may have moved earlier (e.g. a DPR starts the short Closing timer)
        self._arm()

    def pause_writing(self) -> None:
        # a peer that sends but does not read: stop reading its requests until it
        # drains our answers, so its backlog stays in its own socket buffers
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.conn is not None:
            self.conn.connection_lost()
        if not self.closed.done():
            self.closed.set_result(None)

    # -- helpers --

    def send(self) -> None:
        """Write what the peer machine has queued (after a call made outside feed)."""
        self._flush()
        self._arm()

    def _flush(self) -> None:
        assert self.conn is not None
        out = self.conn.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)

    def _events(self, events: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, CloseConnection):
                self._close(ev)
            elif isinstance(ev, Notice):
                log.debug("%s: %s", self.peer_addr, ev.text)
            if self._on_event is not None:
                self._on_event(self, ev)  # the client keeps a CloseConnection's reason

    def _close(self, ev: CloseConnection) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        if ev.abort:
            log.warning("%s: aborting connection: %s", self.peer_addr, ev.reason)
            # RFC 6733 2.1: an abortive close is a TCP RST; a zero linger time makes
            # close() send one, where asyncio's abort() alone sends a FIN
            sock = t.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
            t.abort()
        else:
            log.info("%s: closing connection: %s", self.peer_addr, ev.reason)
            t.close()

    def _arm(self) -> None:
        conn = self.conn
        if conn is None:
            return
        at = conn.deadline
        if at is None:
            return
        if self._timer is not None:
            if self._timer_at is not None and self._timer_at <= at:
                return  # the earlier timer re-arms itself when it fires
            self._timer.cancel()
        self._timer_at = at
        self._timer = self.loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        conn = self.conn
        if conn is None:
            return
        now = self.loop.time()
        at = conn.deadline
        if at is not None and now >= at:
            events = conn.on_timer(now)
            self._flush()
            if events:
                self._events(events)
        self._arm()


__all__ = ["AnswerReceived", "DisconnectRequested", "PeerOpened", "PeerProtocol"]
