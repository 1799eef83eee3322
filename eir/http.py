"""The HTTP listeners of a running EIR (admin API, public IMEI check, N5g-eir) on its own loop.

Owns how an ASGI application is served: hypercorn (HTTP/1.1 over h11,
HTTP/2 over h2) runs as a task of the node's event loop, on sockets bound
here, so that the workers of ``--workers N`` can share a port
(SO_REUSEPORT) or serve a descriptor their supervisor handed down, and so
that a port that is taken is a one-line error at start. Cleartext listeners
speak HTTP/1.1 and HTTP/2 with prior knowledge (h2c, RFC 9113 3.3; TS
29.500 5.2.2 allows cleartext HTTP/2 inside a trusted network); TLS
listeners negotiate h2 or http/1.1 by ALPN (RFC 7301) and check their
certificate and key at start like ``[tls]`` (`eir.tls`), errors naming the
section's keys.

Also owns the error body every HTTP API here answers with: RFC 9457
``application/problem+json`` (TS 29.571 5.2.4.1 ProblemDetails is the same
object with ``cause`` and ``invalidParams`` added).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any, cast

from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.typing import ASGIFramework
from hypercorn.utils import wrap_app

from eir import tls
from eir.config import ConfigError, HttpSection

log = logging.getLogger("eir.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]

PROBLEM_JSON = "application/problem+json"
# what a stopping listener gives requests in flight before it closes their connections
GRACEFUL_SECONDS = 5.0


async def lifespan(receive: Receive, send: Send) -> None:
    """The ASGI lifespan protocol for an app that has nothing to start or stop."""
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        else:
            await send({"type": "lifespan.shutdown.complete"})
            return


def bind(host: str, port: int, *, reuse_port: bool = False, where: str = "listen") -> socket.socket:
    """A bound, non-blocking TCP socket for a listener; a taken port is a ConfigError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says
    # TCP (base_events._set_nodelay), and accepted sockets take the listener's; without it
    # Nagle holds each response's last segment for the client's delayed ACK (~40 ms)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"{where}: cannot listen on {host}:{port} ({exc.strerror})") from None
    sock.setblocking(False)
    return sock


def tls_context(section: HttpSection, name: str) -> ssl.SSLContext | None:
    """The listener's TLS context from the section's keys (ALPN h2, http/1.1), or None."""
    settings = section.tls()
    if settings is None:
        return None
    ctx = tls.server_context(settings, where=name)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


class _Config(HypercornConfig):
    """hypercorn's settings with our sockets and our TLS context instead of its own."""

    def __init__(self, sockets: Sequence[socket.socket], context: ssl.SSLContext | None) -> None:
        super().__init__()
        self._eir_sockets = list(sockets)
        self._eir_tls = context

    @property
    def ssl_enabled(self) -> bool:
        return self._eir_tls is not None

    def create_ssl_context(self) -> ssl.SSLContext | None:
        return self._eir_tls

    def create_sockets(self) -> Sockets:
        if self._eir_tls is not None:
            return Sockets(self._eir_sockets, [], [])
        return Sockets([], self._eir_sockets, [])


class HttpServer:
    """One ASGI application served on already-bound sockets until `stop`.

    ``name`` is the config section (for logs and errors). Sockets are bound
    by the caller (`bind`, or a descriptor handed down by the supervisor);
    this object closes them when it stops.
    """

    def __init__(self, name: str, app: Asgi, sockets: Sequence[socket.socket],
                 context: ssl.SSLContext | None = None, *,
                 graceful_seconds: float = GRACEFUL_SECONDS,
                 read_timeout: int | None = None) -> None:
        self.name = name
        # a connection that sends nothing for this long is closed (None: kept): for a
        # listener open to anyone, so that clients trickling half a request cannot hold
        # every descriptor; not for the AMFs' long-lived HTTP/2 connections
        self.read_timeout = read_timeout
        self.app = app
        self.sockets = list(sockets)
        self.context = context
        self.graceful_seconds = graceful_seconds
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def listen(cls, name: str, section: HttpSection, app: Asgi, *,
               reuse_port: bool = False, read_timeout: int | None = None) -> HttpServer:
        """Bind the section's address and build its TLS context (errors name its keys)."""
        context = tls_context(section, name)
        host, port = section.endpoint()
        return cls(name, app, [bind(host, port, reuse_port=reuse_port, where=f"{name}.listen")],
                   context, read_timeout=read_timeout)

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])

    @property
    def host(self) -> str:
        return str(self.sockets[0].getsockname()[0])

    @property
    def url(self) -> str:
        """The base URL of the first socket (``http://`` or ``https://``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.context else 'http'}://{host}:{self.port}"

    async def start(self) -> None:
        config = _Config(self.sockets, self.context)
        config.accesslog = None
        config.errorlog = log
        config.graceful_timeout = self.graceful_seconds
        config.read_timeout = self.read_timeout
        config.backlog = 1024
        config.include_server_header = False
        # 29.500 5.2.2: "HTTP/2 ... SHALL be used"; big enough windows that one stream of a
        # busy AMF connection never waits for a WINDOW_UPDATE
        config.h2_max_concurrent_streams = 1000
        # hypercorn closes a connection after 1000 requests by default (GOAWAY on HTTP/2):
        # an AMF's long-lived connection would be torn down, and over TLS handshaken again,
        # every thousand checks
        config.keep_alive_max_requests = 2**62
        asgi = wrap_app(cast(ASGIFramework, self.app), config.wsgi_max_body_size, "asgi")
        # listening before we return: a client that connects at once waits in the accept
        # queue instead of being refused while hypercorn's task gets going (it calls
        # listen() again, which only sets the backlog)
        for sock in self.sockets:
            sock.listen(config.backlog)
        self._task = asyncio.create_task(
            worker_serve(asgi, config, shutdown_trigger=self._stop.wait), name=f"http-{self.name}")
        await asyncio.sleep(0)
        log.info("%s: HTTP on %s (%s)", self.name, self.url,
                 "TLS, ALPN h2 and http/1.1" if self.context else "HTTP/1.1 and h2c")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await asyncio.wait_for(self._task, self.graceful_seconds + 2)
                except TimeoutError:
                    log.warning("%s: HTTP listener did not stop in time; cancelled", self.name)
                except Exception:
                    log.exception("%s: HTTP listener failed while stopping", self.name)
        for sock in self.sockets:
            sock.close()


def problem_body(status: int, title: str, detail: str | None = None, *,
                 cause: str | None = None, invalid_params: Sequence[Mapping[str, str]] = (),
                 type_: str = "about:blank") -> bytes:
    """An RFC 9457 problem document (with TS 29.571 ``cause`` and ``invalidParams``)."""
    body: dict[str, Any] = {"type": type_, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if cause:
        body["cause"] = cause
    if invalid_params:
        body["invalidParams"] = [dict(p) for p in invalid_params]
    return json.dumps(body, separators=(",", ":")).encode()
