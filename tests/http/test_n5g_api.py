"""`eir.n5g` served by a real `EirApp` on 127.0.0.1: the TS 29.511 operation over h2c and
TLS (ALPN h2), checked with httpx (HTTP/2) and curl; problems, tokens, OpenAPI, metrics."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from n5g_tokens import claims, new_key, sign, write_public

from eir.app import EirApp
from eir.config import ConfigError, from_mapping
from eir.http import HttpServer, bind
from eir.n5g import OPENAPI_PATH, STATUS_PATH, N5gApi
from eir.policy.csvio import import_csv
from eir.policy.model import Decision
from eir.policy.sqlite import SqliteRegistry
from testbed.certs import make_ca

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import curl

WHITE, BLACK, GREY = "49015420323751", "35332510123456", "35209900176148"
UNKNOWN = "86123456789012"
IMSI = "401011234567890"
REGISTRY = ("imei,list,reason,imsi,source,note\n"
            f"{WHITE},white,registered,,ministry,\n{BLACK},black,stolen,,police,\n"
            f"{GREY},grey,pending_verification,,ministry,\n")
PROBLEM = "application/problem+json"


@contextlib.asynccontextmanager
async def running(tmp_path: Path, **n5g: Any) -> AsyncIterator[EirApp]:
    policy = n5g.pop("policy", {})
    db = tmp_path / "eir.db"
    if not db.exists():
        async with SqliteRegistry(db) as reg:
            await import_csv(reg, io.BytesIO(REGISTRY.encode()))
    cfg = from_mapping({"server": {"listen": "127.0.0.1:0"}, "registry": {"db": str(db)},
                        "metrics": {"enabled": False}, "policy": policy,
                        # counts stay in regime.counts for the test to read
                        "observations": {"flush_seconds": 3600.0},
                        "n5g": {"enabled": True, "listen": "127.0.0.1:0", **n5g}}).validate()
    app = EirApp(cfg)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


def url(app: EirApp, query: str = "", path: str = STATUS_PATH) -> str:
    assert app.n5g_server is not None
    return f"{app.n5g_server.url}{path}{'?' + query if query else ''}"


def h2c() -> httpx.AsyncClient:
    return httpx.AsyncClient(http1=False, http2=True, timeout=10)


async def test_statuses_over_h2c_as_the_engine_decides(tmp_path: Path) -> None:
    async with running(tmp_path) as app, h2c() as c:
        cases = {f"imei-{WHITE}0": "WHITELISTED", f"imei-{BLACK}": "BLACKLISTED",
                 f"imeisv-{GREY}07": "GREYLISTED", f"imei-{UNKNOWN}5": "GREYLISTED",
                 "imei-3520990017614A": "BLACKLISTED", "imei-12": "BLACKLISTED",
                 # an IMEISV of 15 digits is no IMEISV (16): malformed, not a 15-digit IMEI
                 f"imeisv-{WHITE}0": "BLACKLISTED"}
        for pei, want in cases.items():
            r = await c.get(url(app, f"pei={pei}&supi=imsi-{IMSI}&gpsi=msisdn-77011234567"
                                     "&supported-features=0"))
            assert r.http_version == "HTTP/2"
            assert (r.status_code, r.headers["content-type"], r.json()) == \
                (200, "application/json", {"status": want}), pei
        assert app.regime is not None
        reasons = {reason for (_op, _s, reason) in app.regime.counts}
        # (an IMEI on no list is grey from its first home sighting: POLICY.md rule 12)
        assert reasons == {"registered", "stolen", "pending_verification", "malformed"}
        # the IMEISV's SVN went where S13 puts the Software-Version; no token: the default
        # operator; the IMSI from the imsi- SUPI reached the observations
        assert {op for (op, _s, _r) in app.regime.counts} == {"5gc"}
        seen = app.regime.cache.peek(int(GREY))
        assert IMSI in seen.imsis
        # other SUPI forms are no IMSI
        r = await c.get(url(app, f"pei=imei-{UNKNOWN}&supi=nai-someone@example.com"))
        assert r.json() == {"status": "GREYLISTED"}
        assert set(app.regime.cache.peek(int(UNKNOWN)).imsis) == {IMSI, ""}


async def test_problems_for_a_bad_pei_other_paths_and_methods(tmp_path: Path) -> None:
    async with running(tmp_path) as app, h2c() as c:
        for query, cause in [("", "MANDATORY_QUERY_PARAM_MISSING"),
                             ("supi=imsi-401011234567890", "MANDATORY_QUERY_PARAM_MISSING"),
                             ("pei=", "MANDATORY_QUERY_PARAM_INCORRECT"),
                             (f"pei=imei-{WHITE}&pei=imei-{BLACK}",
                              "MANDATORY_QUERY_PARAM_INCORRECT"),
                             ("pei=imei-%FF%FE", "MANDATORY_QUERY_PARAM_INCORRECT")]:
            r = await c.get(url(app, query))
            body = r.json()
            assert (r.status_code, r.headers["content-type"]) == (400, PROBLEM), query
            assert body["status"] == 400 and body["cause"] == cause
            assert [p["param"] for p in body["invalidParams"]] == ["pei"]
        r = await c.get(url(app, f"pei=imei-{WHITE}&supi="))
        assert r.status_code == 400 and r.json()["invalidParams"][0]["param"] == "supi"
        # PEIs that are no IMEI (TS 23.003 6.4): not known to a register of IMEIs
        for pei in ("mac-00-11-22-33-44-55", "eui-00-11-22-33-44-55-66-77", "something"):
            r = await c.get(url(app, f"pei={pei}"))
            assert (r.status_code, r.headers["content-type"]) == (404, PROBLEM)
            assert r.json()["cause"] == "ERROR_EQUIPMENT_UNKNOWN"
        r = await c.get(url(app, path="/n5g-eir-eic/v1/equipment-statuses"))
        assert (r.status_code, r.headers["content-type"]) == (404, PROBLEM)
        # a POST with a body, then a GET on the same HTTP/2 connection: still served
        r = await c.post(url(app, f"pei=imei-{WHITE}"), content=b"x" * 5000)
        assert (r.status_code, r.headers["allow"]) == (405, "GET")
        r = await c.get(url(app, f"pei=imei-{WHITE}"))
        assert r.status_code == 200
        assert app.n5g is not None
        counts = app.n5g.counts
        assert counts[(400, "MANDATORY_QUERY_PARAM_MISSING")] == 2
        assert counts[(400, "MANDATORY_QUERY_PARAM_INCORRECT")] == 3
        assert counts[(404, "ERROR_EQUIPMENT_UNKNOWN")] == 3 and counts[(405, "-")] == 1


async def test_unknown_equipment_rejected_by_policy_is_404(tmp_path: Path) -> None:
    async with running(tmp_path, policy={"unknown_equipment": "reject"}) as app, h2c() as c:
        r = await c.get(url(app, f"pei=imei-{UNKNOWN}"))
        assert (r.status_code, r.headers["content-type"]) == (404, PROBLEM)
        assert r.json() == {"type": "about:blank", "title": "Not Found", "status": 404,
                            "cause": "ERROR_EQUIPMENT_UNKNOWN"}
        r = await c.get(url(app, f"pei=imei-{WHITE}"))
        assert r.json() == {"status": "WHITELISTED"}
        assert app.n5g is not None and app.n5g.decided == {None: 1, 0: 1}


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_h2c_prior_knowledge_and_tls_alpn_h2(tmp_path: Path) -> None:
    async with running(tmp_path) as app:
        rc, out = await curl("--http2-prior-knowledge", "-w", "\n%{http_version} %{http_code}",
                             url(app, f"pei=imei-{BLACK}"))
        assert rc == 0 and out.splitlines() == ['{"status":"BLACKLISTED"}', "2 200"]
    ca = make_ca(tmp_path)
    leaf = ca.issue(tmp_path, "eir.test", dns=["localhost"], ips=["127.0.0.1"], server=True)
    async with running(tmp_path, cert_file=str(leaf.cert), key_file=str(leaf.key)) as app:
        assert app.n5g_server is not None and app.n5g_server.url.startswith("https://")
        rc, out = await curl("--cacert", str(ca.cert), "--http2", "-w",
                             "\n%{http_version} %{http_code}", url(app, f"pei=imei-{GREY}"))
        assert rc == 0 and out.splitlines() == ['{"status":"GREYLISTED"}', "2 200"]
        async with httpx.AsyncClient(
                http2=True, verify=ssl.create_default_context(cafile=str(ca.cert))) as c:
            r = await c.get(url(app, f"pei=imei-{WHITE}"))
            assert (r.http_version, r.json()) == ("HTTP/2", {"status": "WHITELISTED"})


async def test_bearer_tokens(tmp_path: Path) -> None:
    key = new_key("ES256")
    pem = write_public(key, tmp_path / "nrf.pem")
    async with running(tmp_path, token_key_file=str(pem), token_issuer="nrf-0001") as app, \
            h2c() as c:
        query = f"pei=imei-{WHITE}"
        r = await c.get(url(app, query))
        assert (r.status_code, r.headers["www-authenticate"]) == (401, "Bearer")
        assert r.headers["content-type"] == PROBLEM
        r = await c.get(url(app, query), headers={"Authorization": "Basic dTpw"})
        assert r.status_code == 401
        good = sign(key, claims())
        r = await c.get(url(app, query), headers={"Authorization": f"Bearer {good}"})
        assert r.json() == {"status": "WHITELISTED"}
        for bad in (sign(new_key("ES256"), claims()), sign(key, claims(exp=1000)),
                    sign(key, claims(aud="AUSF")), sign(key, claims(iss="other")),
                    good[:-2] + "AA"):
            r = await c.get(url(app, query), headers={"Authorization": f"Bearer {bad}"})
            assert r.status_code == 401
            assert r.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
        r = await c.get(url(app, query), headers={
            "Authorization": f"Bearer {sign(key, claims(scope='nudm-sdm'))}"})
        assert r.status_code == 403 and r.json()["cause"] == "ACCESS_TOKEN_DENIED"
        assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
        assert 'scope="n5g-eir-eic"' in r.headers["www-authenticate"]
        # a token without sub: the configured operator
        r = await c.get(url(app, query), headers={
            "Authorization": f"Bearer {sign(key, claims(sub=None))}"})
        assert r.status_code == 200
        assert app.regime is not None
        assert {op for (op, _s, _r) in app.regime.counts} == {"amf-instance-7", "5gc"}
        assert app.n5g is not None
        assert app.n5g.counts[(401, "invalid_token")] == 5
        assert app.n5g.counts[(401, "-")] == 2


async def test_a_bad_key_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("junk")
    with pytest.raises(ConfigError, match=r"^n5g\.token_key_file: .*not a PEM public key"):
        async with running(tmp_path, token_key_file=str(tmp_path / "junk.pem")):
            pass
    with pytest.raises(ConfigError, match=r"^n5g\.operator"):
        from_mapping({"n5g": {"enabled": True, "operator": ""}}).validate()


async def test_openapi_document_and_metrics(tmp_path: Path) -> None:
    async with running(tmp_path) as app, h2c() as c:
        r = await c.get(url(app, path=OPENAPI_PATH))
        doc = r.json()
        assert r.status_code == 200 and doc["openapi"].startswith("3.0")
        op = doc["paths"]["/equipment-status"]["get"]
        assert op["operationId"] == "GetEquipmentStatus"
        assert [p["name"] for p in op["parameters"] if p["required"]] == ["pei"]
        assert doc["components"]["schemas"]["EquipmentStatus"]["enum"] == \
            ["WHITELISTED", "BLACKLISTED", "GREYLISTED"]
        assert set(op["responses"]) >= {"200", "400", "401", "403", "404"}
        for pei in (WHITE, BLACK, WHITE):
            await c.get(url(app, f"pei=imei-{pei}"))
        await c.get(url(app, "pei="))
        text = (await app.collector.render("text/plain"))[0].decode()
        lines = {line for line in text.splitlines() if line.startswith("eir_n5g_requests_total")}
        assert lines == {
            'eir_n5g_requests_total{result="WHITELISTED",status="200"} 2.0',
            'eir_n5g_requests_total{result="BLACKLISTED",status="200"} 1.0',
            'eir_n5g_requests_total{result="MANDATORY_QUERY_PARAM_INCORRECT",status="400"} 1.0'}
        # decided like ECRs, but not counted as ECR answers
        assert 'eir_diameter_answers_total{command="ECR",result_code="2001"} 0.0' in text
        assert 'eir_decisions_total{reason="registered",status="WHITELISTED"} 2.0' in text
        json.dumps(doc)  # plain data


@pytest.mark.parametrize("mode", ["fail-closed", "fail-open"])
async def test_no_registry_answers_as_s13_does(tmp_path: Path, mode: str) -> None:
    # a directory where the registry file should be: it cannot be opened
    (tmp_path / "eir.db").mkdir()
    cfg = from_mapping({"server": {"listen": "127.0.0.1:0"},
                        "registry": {"db": str(tmp_path / "eir.db"), "unavailable": mode,
                                     "reload_seconds": 60.0},
                        "metrics": {"enabled": False},
                        "n5g": {"enabled": True, "listen": "127.0.0.1:0"}}).validate()
    app = EirApp(cfg)
    await app.start()
    try:
        assert app.regime is None
        async with h2c() as c:
            r = await c.get(url(app, f"pei=imei-{WHITE}"))
        if mode == "fail-closed":  # S13: 5012 UNABLE_TO_COMPLY
            assert (r.status_code, r.json()["cause"]) == (500, "SYSTEM_FAILURE")
        else:  # S13: WHITELISTED, reason registry_unavailable
            assert r.json() == {"status": "WHITELISTED"}
        assert app.unavailable_answers == 1
    finally:
        await app.stop()


class _Failing:
    """A decision source whose decide function fails as no real one can on demand."""

    def decide(self, imei: str, imsi: str | None, sv: str | None, operator: str) -> Decision:
        raise RuntimeError("a bug in the engine")


async def test_an_exception_in_the_app_is_a_500_problem_not_an_empty_answer() -> None:
    # found in review: hypercorn answered an escaped exception with an empty 500 (and on
    # HTTP/1.1 closed the connection); TS 29.500 5.2.7.2: a ProblemDetails with a cause
    api = N5gApi(_Failing(), operator="5gc")
    server = HttpServer("n5g", api, [bind("127.0.0.1", 0)])
    await server.start()
    try:
        for version in ("1.1", "2"):
            async with httpx.AsyncClient(http1=version == "1.1", http2=version == "2",
                                         timeout=10) as c:
                for _ in range(2):  # and the connection still serves
                    r = await c.get(f"{server.url}{STATUS_PATH}?pei=imei-{WHITE}")
                    assert (r.status_code, r.headers["content-type"]) == (500, PROBLEM)
                    assert r.json()["cause"] == "UNSPECIFIED_NF_FAILURE"
                    assert r.http_version == f"HTTP/{version}"
        assert api.counts[(500, "UNSPECIFIED_NF_FAILURE")] == 4
    finally:
        await server.stop()


async def test_a_non_ascii_bearer_token_is_401_not_500(tmp_path: Path) -> None:
    key = new_key("ES256")
    pem = write_public(key, tmp_path / "nrf.pem")
    head, body, sig = sign(key, claims()).split(".")
    async with running(tmp_path, token_key_file=str(pem)) as app, h2c() as c:
        r = await c.get(url(app, f"pei=imei-{WHITE}"), headers={
            b"authorization": f"Bearer {head}.\u00e9{body}.{sig}".encode("latin-1")})
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith('Bearer error="invalid_token"')


async def test_query_edges_long_encoded_names(tmp_path: Path) -> None:
    async with running(tmp_path) as app:
        for http2 in (False, True):
            async with httpx.AsyncClient(http1=not http2, http2=http2, timeout=10) as c:
                # found in review: a 60 KB query was answered 200 (unknown parameters are
                # ignored); TS 29.500 5.2.7.1 / TS 29.511 6.1.3.2.3.1 list 414 for it
                r = await c.get(url(app, f"pei=imei-{WHITE}&x={'a' * 60000}"))
                assert (r.status_code, r.headers["content-type"]) == (414, PROBLEM)
                assert r.json()["status"] == 414
                # RFC 3986 6.2.2.2: a percent-encoded unreserved character is the character
                r = await c.get(url(app, f"p%65i=imei-{BLACK}"))
                assert r.json() == {"status": "BLACKLISTED"}
                r = await c.get(url(app, f"pei=imei-{WHITE}&p%65i=imei-{BLACK}"))
                assert r.json()["cause"] == "MANDATORY_QUERY_PARAM_INCORRECT"
        assert app.n5g is not None and app.n5g.counts[(414, "-")] == 2
