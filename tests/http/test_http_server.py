"""`eir.http`: an ASGI app on our own sockets over HTTP/1.1, h2c (prior knowledge) and TLS
with ALPN h2, checked with curl (an independent HTTP/2 client)."""

from __future__ import annotations

import json
import shutil
import socket
import sys
from pathlib import Path

import pytest

from eir.config import ConfigError, HttpSection
from eir.http import HttpServer, Receive, Scope, Send, bind, lifespan, problem_body
from testbed.certs import make_ca

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import curl

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    body = json.dumps({"version": scope["http_version"], "path": scope["path"],
                       "query": scope["query_string"].decode()}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


async def test_http1_and_h2c_prior_knowledge_on_one_port() -> None:
    server = HttpServer("t", echo, [bind("127.0.0.1", 0)])
    await server.start()
    try:
        rc, out = await curl(f"{server.url}/a?b=1")
        assert rc == 0 and json.loads(out) == {"version": "1.1", "path": "/a", "query": "b=1"}
        rc, out = await curl("--http2-prior-knowledge", f"{server.url}/x")
        assert rc == 0 and json.loads(out)["version"] == "2"
    finally:
        await server.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


async def test_tls_negotiates_h2_by_alpn(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    leaf = ca.issue(tmp_path, "eir.test", dns=["localhost"], ips=["127.0.0.1"], server=True)
    section = HttpSection(enabled=True, listen="127.0.0.1:0", cert_file=str(leaf.cert),
                          key_file=str(leaf.key))
    server = HttpServer.listen("n5g", section, echo)
    await server.start()
    try:
        assert server.url.startswith("https://")
        rc, out = await curl("--cacert", str(ca.cert), "--http2", f"{server.url}/y")
        assert rc == 0 and json.loads(out)["version"] == "2"
        rc, out = await curl("--cacert", str(ca.cert), "--http1.1", f"{server.url}/y")
        assert rc == 0 and json.loads(out)["version"] == "1.1"
    finally:
        await server.stop()


async def test_bad_tls_files_and_taken_port_name_the_key(tmp_path: Path) -> None:
    section = HttpSection(enabled=True, listen="127.0.0.1:0",
                          cert_file=str(tmp_path / "none.crt"), key_file=str(tmp_path / "k"))
    with pytest.raises(ConfigError, match=r"^admin\.cert_file: .*no such file"):
        HttpServer.listen("admin", section, echo)
    taken = bind("127.0.0.1", 0)
    taken.listen()
    try:
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError,
                           match=rf"^public\.listen: cannot listen on 127.0.0.1:{port}"):
            HttpServer.listen("public", HttpSection(enabled=True, listen=f"127.0.0.1:{port}"),
                              echo)
    finally:
        taken.close()


def test_section_validation_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^n5g\.listen: "):
        HttpSection(enabled=True, listen="nowhere").validate("n5g")
    with pytest.raises(ConfigError, match=r"^n5g\.cert_file and n5g\.key_file"):
        HttpSection(enabled=True, cert_file="a.crt").validate("n5g")
    with pytest.raises(ConfigError, match=r"^n5g\.ca_file: "):
        HttpSection(enabled=True, cert_file="a", key_file="b",
                    verify_client="required").validate("n5g")
    HttpSection(listen="nowhere").validate("off")  # not enabled: not checked


def test_problem_body_is_rfc9457_with_29571_fields() -> None:
    body = json.loads(problem_body(400, "Bad Request", "pei: not a PEI",
                                   cause="INVALID_QUERY_PARAM",
                                   invalid_params=[{"param": "pei", "reason": "pattern"}]))
    assert body == {"type": "about:blank", "title": "Bad Request", "status": 400,
                    "detail": "pei: not a PEI", "cause": "INVALID_QUERY_PARAM",
                    "invalidParams": [{"param": "pei", "reason": "pattern"}]}
