"""A small SMS gateway for the webhook tests: a real HTTP/1.1 server on 127.0.0.1.

It records every request (time, headers, JSON body) and answers from a
script: `Gateway.then` queues replies (a status, headers, a delay before
answering: longer than the sender's timeout is a hang); once the script is
used up every request gets 200. Threads of the standard library's
ThreadingHTTPServer, so that a hanging answer does not hold the others.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    body: str = ""


@dataclass(frozen=True)
class Request:
    at: float  # time.monotonic() when it arrived
    path: str
    headers: dict[str, str]  # lower-case names
    raw: bytes
    status: int  # what it was answered (or was to be, for a hang)

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.raw)  # type: ignore[no-any-return]

    @property
    def key(self) -> str:
        return self.headers["idempotency-key"]


class Gateway:
    """``tls``: (certificate, key) PEM files: the gateway speaks HTTPS."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.requests: list[Request] = []
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real gateway

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with gateway._lock:
                    reply = gateway._script.popleft() if gateway._script else Reply()
                    gateway.requests.append(Request(
                        time.monotonic(), self.path,
                        {k.lower(): v for k, v in self.headers.items()}, raw, reply.status))
                if reply.delay:
                    time.sleep(reply.delay)
                body = reply.body.encode()
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the sender gave up waiting (a hang)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        if tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(*tls)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.url = f"http{'s' if tls else ''}://127.0.0.1:{self.port}/sms"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def then(self, *replies: Reply) -> Gateway:
        with self._lock:
            self._script.extend(replies)
        return self

    def fail(self, n: int, status: int = 500, **kwargs: Any) -> Gateway:
        return self.then(*(Reply(status, **kwargs) for _ in range(n)))

    def by_key(self) -> dict[str, list[Request]]:
        out: dict[str, list[Request]] = {}
        for r in list(self.requests):
            out.setdefault(r.key, []).append(r)
        return out

    def __enter__(self) -> Gateway:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
