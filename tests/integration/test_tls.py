"""Diameter over TLS (RFC 6733 2.1, 13): the TLS listener, its refusals, its start-up checks.

Every certificate is made here (testbed.certs): a CA, a server certificate for
eir.test.local / localhost / 127.0.0.1, a client certificate from the CA and
one from another CA, an expired server certificate. The in-process tests run
on asyncio's loop and on uvloop (the EIR's default); the last ones run
``eir serve`` and ``eir check`` as processes, one with two workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import ssl
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import DICT, EIR, MME, S13, StubDecide, cer

from eir import tls as app_tls
from eir.config import Config, ConfigError, TlsSection, from_mapping
from eir.diameter import tls
from eir.diameter.client import DiameterClient, DiameterError
from eir.diameter.codec import Message
from eir.diameter.constants import AvpCode, DisconnectCause, EquipmentStatus, ResultCode, Vendor
from eir.diameter.peer import Admission, Timers
from eir.diameter.server import DiameterServer, ServerConfig
from eir.probe import ecr
from eir.s13 import S13Application
from testbed.certs import Ca, Issued, make_ca
from testbed.eirproc import EirProcess, free_port, run_cli

pytestmark = pytest.mark.timeout(60)


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Ca
    other_ca: Ca
    server: Issued
    client: Issued  # mme.test, from ca
    stranger: Issued  # mme.test, from other_ca
    expired: Issued  # eir.test.local, from ca, expired yesterday


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d, "EIR test CA")
    other = make_ca(d, "Other CA")
    dns, ips = ("eir.test.local", "localhost"), ("127.0.0.1",)
    now = datetime.now(UTC)
    return Pki(
        d, ca, other,
        server=ca.issue(d, "eir.test.local", dns=dns, ips=ips, server=True, stem="server"),
        client=ca.issue(d, "mme.test", dns=("mme.test",), client=True, stem="client"),
        stranger=other.issue(d, "mme.test", dns=("mme.test",), client=True, stem="stranger"),
        expired=ca.issue(d, "eir.test.local", dns=dns, ips=ips, server=True, stem="expired",
                         not_before=now - timedelta(days=30), not_after=now - timedelta(days=1)))


# the in-process tests run on both loops; each test's body is a coroutine run to its end
LOOPS: dict[str, Callable[[Coroutine[Any, Any, None]], None]] = {
    "asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, None]], None]:
    return LOOPS[request.param]


def client_ctx(pki: Pki, who: Issued | None = None, *, ca: Path | None = None,
               max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = tls.client_context(ca_file=str(ca or pki.ca.cert),
                             cert_file=str(who.cert) if who else None,
                             key_file=str(who.key) if who else None)
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


@dataclass
class Running:
    server: DiameterServer
    decide: StubDecide


async def start(pki: Pki, verify: str = "required", min_version: str = "1.2",
                **config: object) -> Running:
    decide = StubDecide()
    app = S13Application(EIR, DICT, decide)
    ctx = tls.server_context(str(pki.server.cert), str(pki.server.key),
                             ca_file=str(pki.ca.cert), verify_client=verify,
                             min_version=min_version)
    cfg = ServerConfig(host="127.0.0.1", port=0, ident=EIR, tls=ctx, tls_port=0,
                       timers=Timers(dpa=0.5), **config)  # type: ignore[arg-type]
    server = DiameterServer(cfg, DICT, {S13: app.handle})
    await server.start()
    return Running(server, decide)


@contextlib.asynccontextmanager
async def serving(pki: Pki, **kw: object) -> AsyncIterator[Running]:
    running = await start(pki, **kw)  # type: ignore[arg-type]
    try:
        yield running
    finally:
        await running.server.stop()


def status(answer: Message) -> int | None:
    es = answer.find(AvpCode.EQUIPMENT_STATUS, Vendor.TGPP)
    return es.as_u32() if es is not None else None


async def ask(port: int, ctx: ssl.SSLContext | None, imei: str = "86000000000001",
              host: str = "127.0.0.1", server_name: str | None = None,
              realm: str = EIR.origin_realm) -> Message:
    """Connect (TLS with ``ctx``), CER/CEA, one ECR, DPR; the ECA."""
    client = DiameterClient(MME, DICT)
    await client.connect(host, port, 5.0, tls=ctx, server_hostname=server_name)
    try:
        request = ecr(MME.origin_host, MME.origin_realm, realm, imei)
        return await client.request(request, 5.0)
    finally:
        await client.close()


async def refused(port: int, ctx: ssl.SSLContext | None) -> str:
    """The client's side of a refused handshake: no CEA, an error (what it says)."""
    client = DiameterClient(MME, DICT)
    with pytest.raises((DiameterError, ssl.SSLError, ConnectionError)) as info:
        await client.connect("127.0.0.1", port, 5.0, tls=ctx)
    return repr(info.value)


async def until(cond: object, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():  # type: ignore[operator]
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.01)


# -- in process: the listener ---------------------------------------------------------


Run = Callable[[Coroutine[Any, Any, None]], None]


def test_ecr_over_tls_with_a_client_certificate(run: Run, pki: Pki,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "eir.diameter")

    async def scenario() -> None:
        async with serving(pki) as srv:
            answer = await ask(srv.server.tls_port, client_ctx(pki, pki.client))
            rc = answer.find(AvpCode.RESULT_CODE)
            assert rc is not None and rc.as_u32() == ResultCode.SUCCESS
            assert status(answer) == EquipmentStatus.BLACKLISTED  # the stub: 86... -> 1
            assert srv.decide.calls == [("86000000000001", None, None)]
            assert srv.server.tls_sessions == 1 and srv.server.tls_failures == 0
            # the plain TCP listener answers beside it
            plain = await ask(srv.server.port, None, imei="35000000000001")
            assert status(plain) == EquipmentStatus.WHITELISTED

    run(scenario())
    # the verified client certificate is logged before the CER is read
    lines = [r.getMessage() for r in caplog.records]
    session = next(i for i, t in enumerate(lines) if "TLS session: TLSv1.3" in t)
    assert "client certificate subject 'O=EIR tests,CN=mme.test'" in lines[session]
    assert "issuer 'O=EIR tests,CN=EIR test CA'" in lines[session]
    assert session < next(i for i, t in enumerate(lines) if "peer mme.test (realm" in t)


def test_name_checks_of_the_server_certificate(run: Run, pki: Pki) -> None:
    async def scenario() -> None:
        async with serving(pki) as srv:
            port = srv.server.tls_port
            # by its DNS name (the EIR's Origin-Host), while connecting to 127.0.0.1
            answer = await ask(port, client_ctx(pki, pki.client), server_name="eir.test.local")
            assert status(answer) == EquipmentStatus.BLACKLISTED
            # a name the certificate does not carry: the client refuses the EIR
            client = DiameterClient(MME, DICT)
            with pytest.raises(ssl.SSLCertVerificationError, match="match"):
                await client.connect("127.0.0.1", port, 5.0, tls=client_ctx(pki, pki.client),
                                     server_hostname="eir.elsewhere")
            # a client that does not trust our CA refuses it too
            with pytest.raises(ssl.SSLCertVerificationError):
                await client.connect("127.0.0.1", port, 5.0,
                                     tls=client_ctx(pki, pki.client, ca=pki.other_ca.cert))
            await until(lambda: srv.server.tls_failures == 2)

    run(scenario())


def test_required_client_certificate_absent_is_refused(
        run: Run, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with serving(pki) as srv:
            await refused(srv.server.tls_port, client_ctx(pki))
            await until(lambda: srv.server.tls_failures == 1)
            assert srv.server.tls_sessions == 0 and not srv.decide.calls
            # no CER was ever read from it, so no peer connection is left
            assert not srv.server.protocols and not srv.server.peers.connected
            # the same client with its certificate is served
            assert status(await ask(srv.server.tls_port, client_ctx(pki, pki.client))) \
                is not None

    run(scenario())
    assert any("TLS handshake failed" in r.getMessage() and
               "PEER_DID_NOT_RETURN_A_CERTIFICATE" in r.getMessage() for r in caplog.records)


def test_client_certificate_from_another_ca_is_refused(
        run: Run, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with serving(pki) as srv:
            await refused(srv.server.tls_port, client_ctx(pki, pki.stranger))
            await until(lambda: srv.server.tls_failures == 1)
            assert not srv.decide.calls
            assert status(await ask(srv.server.tls_port, client_ctx(pki, pki.client))) \
                is not None

    run(scenario())
    assert any("TLS handshake failed" in r.getMessage() and
               "CERTIFICATE_VERIFY_FAILED" in r.getMessage() for r in caplog.records)


def test_plain_diameter_on_the_tls_port_is_closed_and_serving_goes_on(
        run: Run, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with serving(pki) as srv:
            port = srv.server.tls_port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(cer().encode())  # a CER in clear, as to the plain port
            assert await asyncio.wait_for(reader.read(), 5.0) == b""  # closed, no answer
            writer.close()
            # one that leaves in the middle of its handshake
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"\x16\x03\x01\x00\xff\x01")  # the start of a ClientHello
            await writer.drain()
            writer.close()
            await until(lambda: srv.server.tls_failures == 2)
            assert status(await ask(port, client_ctx(pki, pki.client))) is not None
            assert srv.server.tls_sessions == 1
            # a scan: counted, but at most 10 lines a minute in the log
            for _ in range(12):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET / HTTP/1.0\r\n\r\n")
                writer.close()
            await until(lambda: srv.server.tls_failures == 14)

    run(scenario())
    failures = [r for r in caplog.records if "TLS handshake failed" in r.getMessage()]
    assert len(failures) == 10 and "(10 failed so far)" in failures[-1].getMessage()


def test_handshake_timeout_and_cap(run: Run, pki: Pki,
                                   caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with serving(pki, tls_handshake_timeout=0.5, max_handshakes=1) as srv:
            port = srv.server.tls_port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await until(lambda: len(srv.server._handshakes) == 1)
            # one handshake at most in progress: the next connection is closed at once
            second, closing = await asyncio.open_connection("127.0.0.1", port)
            assert await asyncio.wait_for(second.read(), 0.4) == b""
            closing.close()
            # the first says nothing: closed by the EIR after the timeout
            assert await asyncio.wait_for(reader.read(), 5.0) == b""
            writer.close()
            await until(lambda: srv.server.tls_failures == 2)

    run(scenario())
    lines = [r.getMessage() for r in caplog.records]
    assert any("1 handshakes already in progress" in t for t in lines)
    assert any("no handshake within the timeout" in t for t in lines)


def test_optional_and_no_client_verification(run: Run, pki: Pki,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "eir.diameter")

    async def scenario() -> None:
        async with serving(pki, verify="optional") as srv:
            port = srv.server.tls_port
            assert status(await ask(port, client_ctx(pki))) is not None  # none sent: fine
            assert status(await ask(port, client_ctx(pki, pki.client))) is not None
            await refused(port, client_ctx(pki, pki.stranger))  # sent and bad: refused
            await until(lambda: srv.server.tls_failures == 1)
        async with serving(pki, verify="none") as srv:
            # not asked for: the stranger's certificate is not even looked at
            assert status(await ask(srv.server.tls_port, client_ctx(pki, pki.stranger))) \
                is not None

    run(scenario())
    sessions = [r.getMessage() for r in caplog.records if "TLS session" in r.getMessage()]
    assert len(sessions) == 3
    assert "no client certificate" in sessions[0]
    assert "CN=mme.test" in sessions[1]
    assert "no client certificate" in sessions[2]


def test_minimum_version(run: Run, pki: Pki) -> None:
    async def scenario() -> None:
        tls12 = client_ctx(pki, pki.client, max_version=ssl.TLSVersion.TLSv1_2)
        async with serving(pki, min_version="1.3") as srv:
            await refused(srv.server.tls_port, tls12)
            await until(lambda: srv.server.tls_failures == 1)
            assert status(await ask(srv.server.tls_port, client_ctx(pki, pki.client))) \
                is not None
        async with serving(pki) as srv:  # 1.2 by default: a TLS 1.2 client is served
            assert status(await ask(srv.server.tls_port, tls12)) is not None

    run(scenario())


def test_allow_list_applies_over_tls(run: Run, pki: Pki) -> None:
    async def scenario() -> None:
        async with serving(pki, admission=Admission(("mme.allowed",))) as srv:
            client = DiameterClient(MME, DICT)  # mme.test: certificate fine, host not allowed
            with pytest.raises(DiameterError):
                await client.connect("127.0.0.1", srv.server.tls_port, 5.0,
                                     tls=client_ctx(pki, pki.client))
            assert srv.server.denied == 1 and srv.server.tls_sessions == 1

    run(scenario())


def test_tls_only_and_stop_with_handshakes_in_progress(run: Run, pki: Pki) -> None:
    async def scenario() -> None:
        running = await start(pki, plain=False)
        port = running.server.tls_port
        assert running.server.port == port  # the only listener
        client = DiameterClient(MME, DICT)
        await client.connect("127.0.0.1", port, 5.0, tls=client_ctx(pki, pki.client))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # no handshake
        await until(lambda: len(running.server._handshakes) == 1)
        await running.server.stop()  # DPR to the open peer; the handshake is dropped
        assert client.disconnect_cause == DisconnectCause.REBOOTING
        assert await asyncio.wait_for(reader.read(), 5.0) == b""
        writer.close()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)

    run(scenario())


# -- the start-up checks of [tls] ------------------------------------------------------


def section(pki: Pki, **kw: object) -> TlsSection:
    base = TlsSection(enabled=True, port=0, cert_file=str(pki.server.cert),
                      key_file=str(pki.server.key), ca_file=str(pki.ca.cert))
    return replace(base, **kw)  # type: ignore[arg-type]


def test_context_from_config(pki: Pki) -> None:
    ctx = app_tls.server_context(section(pki))
    assert ctx.verify_mode == ssl.CERT_REQUIRED  # RFC 6733 13.1 by default
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert app_tls.server_context(section(pki, min_version="1.3")).minimum_version == \
        ssl.TLSVersion.TLSv1_3
    assert app_tls.server_context(section(pki, verify_client="none", ca_file="")) \
        .verify_mode == ssl.CERT_NONE


@pytest.mark.parametrize(("change", "message"), [
    ({"cert_file": "/nonexistent/server.crt"}, "tls.cert_file: /nonexistent/server.crt: no such"),
    ({"key_file": "/nonexistent/server.key"}, "tls.key_file: /nonexistent/server.key: no such"),
    ({"ca_file": "/nonexistent/ca.crt"}, "tls.ca_file: /nonexistent/ca.crt: no such"),
    ("expired", "tls.cert_file: .*expired on"),
    ("mismatch", "tls.key_file: .*client.key is not the key of the certificate"),
    ("key_is_cert", "tls.key_file: .*not a PEM private key"),
    ("cert_is_key", "tls.cert_file: .*no PEM certificate"),
    ("ca_is_key", "tls.ca_file: .*no PEM certificate"),
    ("encrypted", "tls.key_file: .*encrypted"),
])
def test_bad_files_are_one_clear_error(pki: Pki, tmp_path: Path, change: object,
                                       message: str) -> None:
    if change == "expired":
        kw: dict[str, object] = {"cert_file": str(pki.expired.cert),
                                 "key_file": str(pki.expired.key)}
    elif change == "mismatch":
        kw = {"key_file": str(pki.client.key)}
    elif change == "key_is_cert":
        kw = {"key_file": str(pki.server.cert)}
    elif change == "cert_is_key":
        kw = {"cert_file": str(pki.server.key)}
    elif change == "ca_is_key":
        kw = {"ca_file": str(pki.server.key)}
    elif change == "encrypted":
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_private_key(pki.server.key.read_bytes(), None)
        enc = tmp_path / "enc.key"
        enc.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret")))
        kw = {"key_file": str(enc)}
    else:
        assert isinstance(change, dict)
        kw = change
    with pytest.raises(ConfigError, match=message):
        app_tls.server_context(section(pki, **kw))


@pytest.mark.parametrize(("tls_table", "message"), [
    ({"enabled": True, "key_file": "k"}, "tls.cert_file: needed"),
    ({"enabled": True, "cert_file": "c", "key_file": "k"}, "tls.ca_file: needed"),
    ({"enabled": True, "cert_file": "c", "key_file": "k", "ca_file": "a",
      "verify_client": "maybe"}, "tls.verify_client"),
    ({"min_version": "1.1"}, "tls.min_version"),
    ({"port": 70000}, "tls.port"),
    ({"plain": False}, "needs tls.enabled"),
    ({"enabled": True, "cert_file": "c", "key_file": "k", "verify_client": "none",
      "port": 3868}, "also server.listen's port"),
])
def test_config_values(tls_table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_mapping({"tls": tls_table}).validate()


def test_defaults() -> None:
    t = Config().tls
    assert (t.enabled, t.port, t.verify_client, t.min_version, t.plain) == \
        (False, 5658, "required", "1.2", True)


# -- eir serve and eir check as processes ---------------------------------------------


def tls_conf(path: Path, pki: Pki, port: int, *, cert: Issued | None = None,
             extra: str = "") -> Path:
    cert = cert or pki.server
    path.write_text(f'[tls]\nenabled = true\nport = {port}\ncert_file = "{cert.cert}"\n'
                    f'key_file = "{cert.key}"\nca_file = "{pki.ca.cert}"\n{extra}')
    return path


def check(pki: Pki, port: int, *extra: str) -> dict[str, object]:
    res = run_cli("check", "35000000000001", "--target", f"127.0.0.1:{port}",
                  "--origin-host", "mme.test", "--origin-realm", "test",
                  "--destination-realm", "test.local", "--tls", "--tls-ca", str(pki.ca.cert),
                  *extra, timeout=60)
    assert res.returncode == 0, res.stderr
    result: dict[str, object] = json.loads(res.stdout)
    return result


@pytest.mark.parametrize("workers", [1, 2])
def test_eir_serve_and_check_over_tls(pki: Pki, tmp_path: Path, workers: int) -> None:
    tls_port = free_port()
    conf = tls_conf(tmp_path / "eir.toml", pki, tls_port,
                    extra=f"[server]\nworkers = {workers}\n")
    with EirProcess(tmp_path / "eir.db", config=conf) as eir:
        out = check(pki, tls_port, "--tls-cert", str(pki.client.cert),
                    "--tls-key", str(pki.client.key))
        assert out["result_code"] == 2001 and out["equipment_status"] == "GREYLISTED"
        assert out["eir"] == "eir.test.local"
        # without a client certificate the EIR refuses the handshake; eir check says so
        res = run_cli("check", "35000000000001", "--target", f"127.0.0.1:{tls_port}",
                      "--tls", "--tls-ca", str(pki.ca.cert), timeout=60)
        assert res.returncode == 1, res.stderr
        assert res.stderr.startswith("eir: DiameterError: connection closed before the CEA "
                                     "(over TLS: did the server refuse our certificate?)"), \
            res.stderr
        # plain TCP still answers beside it
        plain = run_cli("check", "35000000000001", "--target", f"127.0.0.1:{eir.port}",
                        "--destination-realm", "test.local", timeout=60)
        assert plain.returncode == 0, plain.stderr
        if workers > 1:  # every worker listens on the TLS port: both get sessions
            asyncio.run(many(pki, tls_port, 20))
    log = eir.log()
    assert f"and TLS on {tls_port}" in log
    assert "TLS handshake failed" in log and "PEER_DID_NOT_RETURN_A_CERTIFICATE" in log
    if workers > 1:
        serving = {re.search(r"\[worker (\d+)", line).group(1)  # type: ignore[union-attr]
                   for line in log.splitlines() if "TLS session" in line}
        assert serving == {"0", "1"}, log
    assert eir.returncode == 0, log


async def many(pki: Pki, port: int, n: int) -> None:
    """``n`` connections one after the other (the kernel spreads them over the workers)."""
    for _ in range(n):
        answer = await ask(port, client_ctx(pki, pki.client), imei="35000000000001",
                           realm="test.local")
        assert answer.find(AvpCode.RESULT_CODE).as_u32() == 2001  # type: ignore[union-attr]


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_refuses_an_expired_certificate(pki: Pki, tmp_path: Path, workers: int) -> None:
    conf = tls_conf(tmp_path / "eir.toml", pki, 0, cert=pki.expired,
                    extra=f"[server]\nworkers = {workers}\n")
    res = run_cli("serve", "--db", str(tmp_path / "eir.db"), "--listen", "127.0.0.1:0",
                  "--config", str(conf), timeout=60)
    assert res.returncode == 1
    errors = [line for line in res.stderr.splitlines() if line.startswith("eir: ")]
    assert len(errors) == 1 and "tls.cert_file" in errors[0] and "expired on" in errors[0], \
        res.stderr
    assert not (tmp_path / "eir.db").exists()  # refused before the registry was touched
