"""The admin API on a running node: every role against every endpoint class, the audit
trail's identity after each change, the access log of personal-data reads, bad input as
problem+json naming the field, imports with progress, token reload."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from admin_node import CALLERS, OP_IMSI, OTHER_IMSI, AdminNode, admin_node, imei

from eir.admin.auth import add_token

pytestmark = pytest.mark.timeout(120)

ROLES = ("ministry", "operator", "police", "auditor")
# per role index i: IMEIs 10+i grey, 20+i white, 30+i stolen, 40+i black with a pair of
# op-a's network (to remove), 50+i black (to add a pair to)
SEED = "imei,list,reason,imsi,source\n" + "".join(
    f"{imei(10 + i)},grey,,,ministry\n{imei(20 + i)},white,,,ministry\n"
    f"{imei(30 + i)},black,stolen,,police\n{imei(40 + i)},black,,,ministry\n"
    f"{imei(40 + i)},exception,,{OP_IMSI},operator\n{imei(50 + i)},black,,,ministry\n"
    for i in range(len(ROLES)))

# method, path (i = the role's index), JSON body, the roles allowed
TABLE: list[tuple[str, str, Any, set[str]]] = [
    ("GET", "/api/v1/entries?limit=5", None, {"ministry", "operator", "auditor"}),
    ("GET", "/api/v1/entries/{e20}", None, set(ROLES)),
    ("GET", "/api/v1/entries/{e40}/observations", None, {"ministry", "operator"}),
    ("POST", "/api/v1/entries/{e10}/legalise", {"evidence": "receipt 1"}, {"ministry"}),
    ("POST", "/api/v1/entries/{e20}/report", {"reason": "stolen", "evidence": "case 1"},
     {"ministry", "police"}),
    ("POST", "/api/v1/entries/{e30}/recovered", {"evidence": "case 2"}, {"ministry", "police"}),
    ("GET", "/api/v1/exceptions", None, {"ministry", "operator", "auditor"}),
    ("PUT", f"/api/v1/exceptions/{{e50}}/{OP_IMSI}", {"evidence": "contract 7"},
     {"ministry", "operator"}),
    ("DELETE", f"/api/v1/exceptions/{{e40}}/{OP_IMSI}?evidence=ended", None,
     {"ministry", "operator"}),
    ("GET", "/api/v1/imports", None, {"ministry"}),
    ("GET", "/api/v1/audit?limit=3", None, {"ministry", "auditor"}),
    ("GET", "/api/v1/audit/verify", None, {"ministry", "auditor"}),
    ("GET", f"/api/v1/decision?imei={{e20}}&imsi={OP_IMSI}", None, {"ministry", "operator"}),
    ("POST", "/api/v1/preview/policy", {"config": {"policy": {"grace_days": 60}}},
     {"ministry"}),
    ("GET", "/api/v1/peers", None, {"ministry"}),
]
CHANGES = {"legalise": "legalise", "report": "report-stolen", "recovered": "recovered",
           "PUT": "exception-add", "DELETE": "exception-remove"}


def is_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json", r.headers
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["title"]
    return body


async def last_audit(node: AdminNode) -> dict[str, Any]:
    async with node.client("ministry") as c:
        page = (await c.get("/api/v1/audit", params={"limit": 1000})).json()
    return page["items"][-1]  # type: ignore[no-any-return]


async def test_every_role_against_every_endpoint_class(tmp_path: Path) -> None:
    async with admin_node(tmp_path, SEED) as node:
        node.app.regime.check(imei(40), OP_IMSI, None, "op-a")  # type: ignore[union-attr]
        await node.app.flush()
        for i, role in enumerate(ROLES):
            ids = {f"e{base}": imei(base + i) for base in (10, 20, 30, 40, 50)}
            for method, path, body, allowed in TABLE:
                url = path.format(**ids)
                async with node.client(role) as c:
                    r = await c.request(method, url, json=body)
                what = f"{role} {method} {url}"
                if role in allowed:
                    assert 200 <= r.status_code < 300, f"{what}: {r.status_code} {r.text}"
                    change = next((v for k, v in CHANGES.items()
                                   if k == method or url.endswith(k)), None)
                    if change is not None:  # every change is audited under the caller
                        rec = await last_audit(node)
                        assert (rec["action"], rec["actor"]) == (
                            change, f"api:{CALLERS[role][0]}"), what
                        assert rec["target"] == url.split("/")[4], what
                        assert r.json()["actor"] == f"api:{CALLERS[role][0]}"
                else:
                    body403 = is_problem(r, 403)
                    assert CALLERS[role][0] in body403["detail"], what
        # the uploads, ministry only (after the table: a running import makes changes wait)
        for role in ("operator", "police", "auditor"):
            for url in ("/api/v1/imports", "/api/v1/preview/list"):
                async with node.client(role) as c:
                    r = await c.post(url, content=b"imei,list\n",
                                     headers={"content-type": "text/csv"})
                is_problem(r, 403)


async def test_no_token_or_a_bad_one_is_401_with_www_authenticate(tmp_path: Path) -> None:
    async with admin_node(tmp_path, SEED) as node:
        for client in (node.client(), node.client(token="eir_not-a-token")):
            async with client as c:
                r = await c.get("/api/v1/entries")
            is_problem(r, 401)
            assert r.headers["www-authenticate"].startswith("Bearer")
        async with httpx.AsyncClient(base_url=node.url) as c:
            r = await c.get("/api/v1/entries", headers={"Authorization": "Basic YTpi"})
        is_problem(r, 401)
        # health, readiness and the OpenAPI document need no token; no docs UI (CDN)
        async with httpx.AsyncClient(base_url=node.url) as c:
            assert (await c.get("/health")).json() == {"status": "ok"}
            ready = (await c.get("/ready")).json()
            assert ready["ready"] is True and ready["registry_version"] >= 1
            doc = (await c.get("/openapi.json")).json()
            assert doc["openapi"].startswith("3.") and "/api/v1/entries/{imei}" in doc["paths"]
            assert (await c.get("/docs")).status_code == 404


async def test_operator_is_bound_to_its_networks(tmp_path: Path) -> None:
    async with admin_node(tmp_path, SEED) as node:
        regime = node.app.regime
        assert regime is not None
        regime.check(imei(40), OP_IMSI, None, "op-a")
        regime.check(imei(40), OTHER_IMSI, None, "op-b")
        await node.app.flush()
        async with node.client("operator") as c:
            r = await c.put(f"/api/v1/exceptions/{imei(50)}/{OTHER_IMSI}",
                            json={"evidence": "x"})
            body = is_problem(r, 403)
            assert OTHER_IMSI in body["detail"] and "not of your networks (40101)" in \
                body["detail"]
            is_problem(await c.delete(f"/api/v1/exceptions/{imei(40)}/{OTHER_IMSI}"), 403)
            is_problem(await c.get("/api/v1/decision",
                                   params={"imei": imei(40), "imsi": OTHER_IMSI}), 403)
            # how many IMSIs used the IMEI counts other networks' subscribers too
            own = (await c.get("/api/v1/decision",
                               params={"imei": imei(40), "imsi": OP_IMSI})).json()
            assert own["facts"]["imsis_seen"] is None
            obs = (await c.get(f"/api/v1/entries/{imei(40)}/observations")).json()
            assert [o["imsi"] for o in obs] == [OP_IMSI]
            entry = (await c.get(f"/api/v1/entries/{imei(40)}")).json()
            assert [o["imsi"] for o in entry["observations"]] == [OP_IMSI]
        async with node.client("ministry") as c:
            seen = (await c.get("/api/v1/decision", params={"imei": imei(40)})).json()
            assert seen["facts"]["imsis_seen"] == 2
            r = await c.put(f"/api/v1/exceptions/{imei(40)}/{OTHER_IMSI}",
                            json={"evidence": "y"})
            assert r.status_code == 200, r.text
            entry = (await c.get(f"/api/v1/entries/{imei(40)}")).json()
            assert {o["imsi"] for o in entry["observations"]} == {OP_IMSI, OTHER_IMSI}
        async with node.client("operator") as c:
            pairs = (await c.get("/api/v1/exceptions")).json()["items"]
            assert pairs and {p["imsi"] for p in pairs} == {OP_IMSI}
        async with node.client("police") as c:
            entry = (await c.get(f"/api/v1/entries/{imei(40)}")).json()
            assert entry["pairs"] is None and entry["observations"] is None
            assert entry["list"] == "black"


async def test_personal_data_reads_are_logged(tmp_path: Path) -> None:
    async with admin_node(tmp_path, SEED) as node:
        node.app.regime.check(imei(40), OP_IMSI, None, "op-a")  # type: ignore[union-attr]
        await node.app.flush()
        async with node.client("ministry") as c:
            assert (await c.get(f"/api/v1/entries/{imei(40)}")).status_code == 200
        async with node.client("operator") as c:
            assert (await c.get("/api/v1/exceptions")).status_code == 200
            assert (await c.get(f"/api/v1/entries/{imei(40)}/observations")).status_code == 200
        async with node.client("police") as c:  # sees no IMSI: nothing to log
            assert (await c.get(f"/api/v1/entries/{imei(40)}")).status_code == 200
        lines = [json.loads(x) for x in node.access_log.read_text().splitlines()]
        assert [(x["actor"], x["what"], x["imei"], x["imsis"]) for x in lines] == [
            ("api:alice", "entry", imei(40), 1), ("api:op-a", "exceptions", None, 1),
            ("api:op-a", "observations", imei(40), 1)]
        assert OP_IMSI not in node.access_log.read_text()  # counts, never the IMSIs


async def test_bad_input_is_a_problem_naming_the_field(tmp_path: Path) -> None:
    async with admin_node(tmp_path, SEED) as node, node.client("ministry") as c:
        cases: list[tuple[httpx.Response, int, str]] = [
            (await c.get("/api/v1/entries/12345"), 422, "path.imei"),
            (await c.get("/api/v1/entries", params={"limit": 0}), 422, "query.limit"),
            (await c.get("/api/v1/entries", params={"list": "purple"}), 422, "query.list"),
            (await c.post(f"/api/v1/entries/{imei(10)}/legalise", json={}), 422,
             "body.evidence"),
            (await c.post(f"/api/v1/entries/{imei(10)}/legalise",
                          json={"evidence": "bad\u2028evidence"}), 422, "body.evidence"),
            (await c.post(f"/api/v1/entries/{imei(20)}/report",
                          json={"reason": "borrowed", "evidence": "x"}), 422, "body.reason"),
            (await c.post(f"/api/v1/entries/{imei(10)}/legalise", content=b"{not json",
                          headers={"content-type": "application/json"}), 422, "body"),
            (await c.get("/api/v1/decision", params={"imei": imei(1), "at": "yesterday"}),
             422, "query.at"),
            (await c.get("/api/v1/decision"), 422, "query.imei"),
            (await c.post("/api/v1/preview/policy",
                          json={"config": {"policy": {"grace_days": -1}}}), 422, "body.config"),
            (await c.post("/api/v1/imports", params={"full": "a", "delta": "b"},
                          content=b"imei,list\n", headers={"content-type": "text/csv"}),
             422, "query.full"),
        ]
        for r, status, param in cases:
            body = is_problem(r, status)
            assert any(p["param"].startswith(param) for p in body["invalidParams"]), body
        # an unknown IMEI, an action its state forbids, an unknown pair, a bad CSV
        body = is_problem(await c.get(f"/api/v1/entries/{imei(99)}"), 404)
        assert imei(99) in body["detail"]
        body = is_problem(await c.post(f"/api/v1/entries/{imei(20)}/legalise",
                                       json={"evidence": "r"}), 409)
        assert "already white" in body["detail"]
        is_problem(await c.delete(f"/api/v1/exceptions/{imei(20)}/{OP_IMSI}"), 404)
        r = await c.post("/api/v1/imports", content=f"imei,list\n{imei(1)},white\n"
                         f"{imei(2)},purple\n".encode(), headers={"content-type": "text/csv"})
        body = is_problem(r, 422)
        assert body["detail"].startswith("line 3: list 'purple' is not one of")
        assert body["invalidParams"][0]["param"] == "line 3: list"
        r = await c.post("/api/v1/imports", content=b"imei,colour\n",
                         headers={"content-type": "text/csv"})
        assert is_problem(r, 422)["invalidParams"][0]["param"] == "line 1: header"
        is_problem(await c.post("/api/v1/imports", content=b"imei,list\n",
                                headers={"content-type": "application/json"}), 415)
        is_problem(await c.get("/api/v1/nothing-here"), 404)
        is_problem(await c.get("/api/v1/imports/0123456789abcdef"), 404)


async def test_upload_runs_as_a_job_to_completion_and_the_node_decides_from_it(
        tmp_path: Path) -> None:
    async with admin_node(tmp_path, SEED) as node, node.client("ministry") as c:
        rows = "".join(f"{imei(1000 + n)},black,stolen,,police\n" for n in range(3000))
        r = await c.post("/api/v1/imports", params={"full": "police", "list_version": 3},
                         content=("imei,list,reason,imsi,source\n" + rows).encode(),
                         headers={"content-type": "text/csv"})
        assert r.status_code == 202, r.text
        job = r.json()
        assert r.headers["location"] == f"/api/v1/imports/{job['id']}"
        assert job["state"] == "running" and job["bytes_total"] > 0
        deadline = time.monotonic() + 30
        while job["state"] == "running" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            job = (await c.get(f"/api/v1/imports/{job['id']}")).json()
        assert job["state"] == "done", job
        # 3000 rows written, and police's 4 entries not in the full list removed
        assert job["rows_done"] == 3004 and job["result"]["removed"] == 4
        assert job["percent"] == 100.0 and job["result"]["by_list"] == {"black": 3000}
        assert job["options"]["list_version"] == {"source": "police", "version": 3,
                                                  "kind": "full"}
        rec = await last_audit(node)
        assert (rec["action"], rec["actor"]) == ("import-full", "api:alice")
        # the running regime takes the new version within its reload period
        regime = node.app.regime
        assert regime is not None
        deadline = time.monotonic() + 10
        while regime.snapshot.version < rec["seq"] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert regime.check(imei(1000), None, None, "op").reason == "stolen"
        listed = (await c.get("/api/v1/imports")).json()
        assert [j["id"] for j in listed] == [job["id"]]
        # a file whose error only the registry finds (a duplicate) fails the job, naming it
        r = await c.post("/api/v1/imports", content=f"imei,list\n{imei(7)},white\n"
                         f"{imei(7)},black\n".encode(), headers={"content-type": "text/csv"})
        job = r.json()
        while job["state"] == "running":
            await asyncio.sleep(0.05)
            job = (await c.get(f"/api/v1/imports/{job['id']}")).json()
        assert job["state"] == "failed" and job["error"]["status"] == 422
        assert job["error"]["detail"].startswith("line 3:"), job


async def test_token_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    async with admin_node(tmp_path, SEED) as node:
        token = add_token(node.tokens_file, "late", "auditor")
        deadline = time.monotonic() + 5
        status = 0
        while time.monotonic() < deadline:
            async with node.client(token=token) as c:
                status = (await c.get("/api/v1/audit/verify")).status_code
            if status == 200:
                break
            await asyncio.sleep(0.2)
        assert status == 200
        # a broken file keeps the tokens in force
        node.tokens_file.write_text(node.tokens_file.read_text() + "[[token]]\nname = 1\n")
        await asyncio.sleep(1.2)
        async with node.client(token=token) as c:
            assert (await c.get("/api/v1/audit/verify")).json()["ok"] is True


async def test_list_preview_counts_the_devices_a_new_list_would_move(tmp_path: Path) -> None:
    async with admin_node(tmp_path, SEED) as node, node.client("ministry") as c:
        regime = node.app.regime
        assert regime is not None
        regime.check(imei(20), OP_IMSI, None, "op-a")  # white, seen by op-a
        regime.check(imei(21), OTHER_IMSI, None, "op-b")  # white, seen by op-b
        await node.app.flush()
        before = (await last_audit(node))["seq"]
        r = await c.post("/api/v1/preview/list", params={"at": "2026-06-01T00:00:00Z"},
                         content=f"imei,list,reason\n{imei(20)},black,stolen\n".encode(),
                         headers={"content-type": "text/csv"})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["devices_checked"] == 2 and out["at"] == "2026-06-01T00:00:00Z"
        assert out["by_operator"]["op-a"] == {"devices": 1, "would_change": 1, "transitions": {
            "WHITELISTED->BLACKLISTED": 1}}
        assert out["by_operator"]["op-b"]["would_change"] == 0
        # nothing changed, and nothing is left beside the registry
        assert (await last_audit(node))["seq"] == before
        assert regime.check(imei(20), OP_IMSI, None, "op-a").status == 0
        assert not [p.name for p in tmp_path.iterdir() if "preview" in p.name
                    or "upload" in p.name]
        # a row the registry refuses names its line, as an import would
        r = await c.post("/api/v1/preview/list", content=f"imei,list\n{imei(7)},white\n"
                         f"{imei(7)},black\n".encode(), headers={"content-type": "text/csv"})
        assert is_problem(r, 422)["detail"].startswith("line 3:")


async def test_tls_where_configured(tmp_path: Path) -> None:
    from testbed.certs import make_ca

    ca = make_ca(tmp_path)
    leaf = ca.issue(tmp_path, "eir.test", dns=["localhost"], ips=["127.0.0.1"], server=True)
    tls = {"cert_file": str(leaf.cert), "key_file": str(leaf.key)}
    async with admin_node(tmp_path, SEED, extra={"admin": tls}) as node:
        assert node.url.startswith("https://")
        trust = ssl.create_default_context(cafile=str(ca.cert))
        async with httpx.AsyncClient(base_url=node.url, verify=trust,
                                     headers={"Authorization":
                                              f"Bearer {node.tokens['auditor']}"}) as c:
            r = await c.get("/api/v1/audit/verify")
        assert r.status_code == 200 and r.json()["ok"] is True


async def test_entry_history_shows_no_imsi_the_caller_may_not_see(tmp_path: Path) -> None:
    """The audit records of an IMEI's history name the IMSI of a pair (exception-add,
    exception-remove, legalise with a pair): an operator sees only its own networks'
    IMSIs there, police none (as in the entry's pairs and observations)."""
    async with admin_node(tmp_path, SEED) as node:
        async with node.client("ministry") as c:
            for imsi in (OP_IMSI, OTHER_IMSI):
                r = await c.put(f"/api/v1/exceptions/{imei(50)}/{imsi}",
                                json={"evidence": "contract"})
                assert r.status_code == 200, r.text
            r = await c.post(f"/api/v1/entries/{imei(10)}/legalise",
                             json={"evidence": "receipt", "imsi": OTHER_IMSI})
            assert r.status_code == 200, r.text
            full = (await c.get(f"/api/v1/entries/{imei(50)}")).text
            assert OTHER_IMSI in full and OP_IMSI in full
        for role, hidden, shown in (("operator", (OTHER_IMSI,), (OP_IMSI,)),
                                    ("police", (OTHER_IMSI, OP_IMSI), ())):
            async with node.client(role) as c:
                for e in (imei(50), imei(10)):
                    r = await c.get(f"/api/v1/entries/{e}")
                    assert r.status_code == 200, r.text
                    assert len(r.json()["history"]) >= 1
                    for imsi in hidden:
                        assert imsi not in r.text, (role, e, r.json()["history"])
                for imsi in shown:
                    assert imsi in (await c.get(f"/api/v1/entries/{imei(50)}")).text


async def test_audit_pages_that_show_imsis_are_logged(tmp_path: Path) -> None:
    """The audit trail's summaries name the IMSI of an exception pair: a page of it that
    shows any is a read of personal data, logged like the others (counted, not named)."""
    async with admin_node(tmp_path, SEED) as node:
        async with node.client("ministry") as c:
            r = await c.put(f"/api/v1/exceptions/{imei(50)}/{OTHER_IMSI}",
                            json={"evidence": "contract"})
            assert r.status_code == 200, r.text
        async with node.client("auditor") as c:
            page = await c.get("/api/v1/audit", params={"limit": 1000})
            assert page.status_code == 200 and OTHER_IMSI in page.text
        lines = [json.loads(x) for x in node.access_log.read_text().splitlines()]
        assert [(x["actor"], x["what"], x["imsis"]) for x in lines] == [
            ("api:aud", "audit", 1)]
        assert OTHER_IMSI not in node.access_log.read_text()


async def test_two_uploads_at_once_start_one_import(tmp_path: Path) -> None:
    """One import at a time (eir.admin.jobs): an upload still being received when another
    one's job starts is refused (503, Retry-After), not run as a second job."""
    async with admin_node(tmp_path, SEED) as node, node.client("ministry") as c:
        def body(base: int) -> bytes:
            return ("imei,list\n" + "".join(f"{imei(base + n)},white\n"
                                            for n in range(20_000))).encode()

        async def upload(base: int) -> httpx.Response:
            return await c.post("/api/v1/imports", content=body(base),
                                headers={"content-type": "text/csv"})

        got = await asyncio.gather(upload(100_000), upload(200_000))
        codes = sorted(r.status_code for r in got)
        assert codes == [202, 503], [r.text for r in got]
        refused = next(r for r in got if r.status_code == 503)
        assert refused.headers["retry-after"] and "one at a time" in refused.json()["detail"]
        jobs = (await c.get("/api/v1/imports")).json()
        assert len(jobs) == 1
        deadline = time.monotonic() + 30
        while jobs[0]["state"] == "running" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            jobs = (await c.get("/api/v1/imports")).json()
        assert jobs[0]["state"] == "done", jobs
        assert not [p.name for p in tmp_path.iterdir() if "upload" in p.name]


async def test_checking_an_upload_does_not_stall_the_loop(tmp_path: Path) -> None:
    """An upload of up to 1 MiB is parsed whole before its job starts (a bad row: 422 at
    once); that parse runs in a thread, so the node's loop (S13) keeps its turns."""
    async with admin_node(tmp_path, SEED) as node, node.client("ministry") as c:
        rows = "".join(f"{imei(100_000 + n)},black,stolen\n" for n in range(30_000))
        csv = ("imei,list,reason\n" + rows)[: (1 << 20) - 40]
        csv = csv[: csv.rfind("\n") + 1] + f"{imei(1)},purple\n"  # the last row is bad
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.002)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        r = await c.post("/api/v1/imports", content=csv.encode(),
                         headers={"content-type": "text/csv"})
        done.set()
        await tick
        assert is_problem(r, 422)["detail"].startswith("line ")
        assert max(gaps) < 0.04, f"the loop stalled {max(gaps) * 1000:.0f} ms"


async def test_police_changes_answer_no_imsi(tmp_path: Path) -> None:
    """Police sees no IMSI (README "Admin API"): the answer to its report or recovery of a
    device with exception pairs does not list them."""
    async with admin_node(tmp_path, SEED) as node, node.client("police") as c:
        r = await c.post(f"/api/v1/entries/{imei(40)}/report",
                         json={"reason": "stolen", "evidence": "case 3"})
        assert r.status_code == 200, r.text
        assert r.json()["pairs"] is None and OP_IMSI not in r.text
        r = await c.post(f"/api/v1/entries/{imei(40)}/recovered", json={"evidence": "case 3"})
        assert r.status_code == 200, r.text
        assert r.json()["pairs"] is None and OP_IMSI not in r.text


async def test_a_json_body_is_bounded_before_it_is_read(tmp_path: Path) -> None:
    """FastAPI reads a route's JSON body whole before the token is checked: without a bound
    anyone could make the node hold any size in memory. Past `JSON_BODY_BYTES` it is a
    413 problem, token or not; list uploads keep their own bound (admin.max_upload_bytes)."""
    from eir.admin.app import JSON_BODY_BYTES

    big = b'{"evidence": "' + b"x" * (JSON_BODY_BYTES + 10) + b'"}'
    async with admin_node(tmp_path, SEED) as node:
        for role in (None, "police", "ministry"):
            async with node.client(role) as c:
                r = await c.post(f"/api/v1/entries/{imei(20)}/report", content=big,
                                 headers={"content-type": "application/json"})
            is_problem(r, 413)
        async def chunks() -> Any:  # no Content-Length: chunked (h11)
            for i in range(0, len(big), 1 << 16):
                yield big[i:i + (1 << 16)]

        async with node.client() as c:
            r = await c.post(f"/api/v1/entries/{imei(20)}/report", content=chunks(),
                             headers={"content-type": "application/json"})
            assert "content-length" not in r.request.headers
            is_problem(r, 413)
        async with node.client("ministry") as c:
            r = await c.post("/api/v1/preview/policy", content=big,
                             headers={"content-type": "application/json"})
            is_problem(r, 413)
            rows = "".join(f"{imei(300_000 + n)},white\n"
                           for n in range(JSON_BODY_BYTES // 20 + 1000))
            r = await c.post("/api/v1/imports", content=f"imei,list\n{rows}".encode(),
                             headers={"content-type": "text/csv"})
            assert r.status_code == 202, r.text
