"""The public IMEI check end to end: ``eir serve --workers 2`` with ``[public] enabled`` over a
real SQLite registry imported by ``eir registry import``; checked over HTTP while S13 traffic
runs, and only worker 0 serves it. In-process: an `EirApp` that is not worker 0 does not
listen, and a node whose registry cannot be read answers 503 in plain words."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import import_text

from eir.app import EirApp, Role
from eir.config import from_mapping
from eir.diameter import messages as m
from eir.diameter.client import DiameterClient
from eir.diameter.dictionary import default_dictionary
from eir.policy.model import luhn_check_digit
from eir.probe import ecr
from eir.public import load_messages
from testbed.eirproc import EirProcess, free_port, run_cli

pytestmark = pytest.mark.timeout(90)

WORDS = load_messages()
WHITE, STOLEN, NEW = "49015420323751", "35332510123456", "35209900176148"
REGISTRY = (f"imei,list,reason,imsi,source,note,evidence\n"
            f"{WHITE},white,registered,,ministry,receipt of Aigerim N.,R-77\n"
            f"{STOLEN},black,stolen,,police,taken from Aigerim N.,KUI-2026-1\n"
            f"{STOLEN},exception,owner_recovered,401017766554433,police,,KUI-2026-1\n")


def full(imei14: str) -> str:
    return imei14 + str(luhn_check_digit(imei14))


async def test_eir_serve_with_workers_answers_the_public_check_from_worker_0(
        tmp_path: Path) -> None:
    db = tmp_path / "eir.db"
    (tmp_path / "lists.csv").write_text(REGISTRY)
    res = run_cli("registry", "import", "--quiet", "--db", str(db), str(tmp_path / "lists.csv"))
    assert res.returncode == 0, res.stderr
    port = free_port()
    (tmp_path / "eir.toml").write_text(
        "[public]\nenabled = true\n"
        f'listen = "127.0.0.1:{port}"\nrate_per_minute = 60.0\nburst = 6\n'
        "answer_floor_ms = 20.0\n"
        "[metrics]\nenabled = false\n")
    with EirProcess(db, config=tmp_path / "eir.toml", extra=("--workers", "2"),
                    origin_realm="test.local", ready_timeout=30) as eir:
        # S13 sees the new handset (with an IMSI) before anyone asks the public page
        client = DiameterClient(m.Identity("mme.test", "test.local"), default_dictionary())
        await client.connect("127.0.0.1", eir.port)
        try:
            await client.request(ecr("mme.test", "test.local", "test.local", NEW, "01",
                                     "401011234567890"))
        finally:
            await client.close()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            answers = {imei: (await http.get("/api/v1/check",
                                             params={"imei": full(imei), "lang": "en"})).json()
                       for imei in (WHITE, STOLEN, NEW)}
            assert answers[WHITE]["status"] == "registered"
            assert answers[STOLEN]["status"] == "reported_stolen"
            assert answers[NEW]["status"] == "not_registered"
            assert answers[NEW]["deadline"] is not None
            page = await http.get("/", params={"imei": full(STOLEN), "lang": "kk"})
            assert page.status_code == 200 and WORDS["kk"]["reported_stolen"] in page.text
            typo = await http.get("/api/v1/check", params={"imei": full(WHITE)[:14] + "0"})
            assert typo.status_code == 400
            everything = " ".join(str(a) for a in answers.values()) + page.text
            for secret in ("Aigerim", "KUI-2026", "R-77", "401017766554433", "401011234567890",
                           "police", "ministry", "owner_recovered", "mme.test"):
                assert secret not in everything
            # 3 + 1 lookups so far, a burst of 6: the seventh is refused
            codes = [(await http.get("/api/v1/check", params={"imei": full(WHITE)})).status_code
                     for _ in range(3)]
            assert codes == [200, 200, 429]
            assert eir.log().count(f"public: HTTP on http://127.0.0.1:{port}") == 1
            # a rolling restart: the new worker 0 binds the port while the old one still
            # serves it (SO_REUSEPORT), and then answers alone, with buckets of its own
            assert eir.proc is not None
            os.kill(eir.proc.pid, signal.SIGUSR2)
            for _ in range(300):
                if "rolling restart done" in eir.log():
                    break
                await asyncio.sleep(0.1)
            assert "rolling restart done" in eir.log(), eir.log()
            r = await http.get("/api/v1/check", params={"imei": full(WHITE)})
            assert r.status_code == 200 and r.json()["status"] == "registered"
        log = eir.log()
    assert log.count(f"public: HTTP on http://127.0.0.1:{port}") == 2, log
    assert "cannot listen" not in log


async def test_only_worker_0_listens_and_no_registry_is_a_503(tmp_path: Path) -> None:
    await import_text(tmp_path / "eir.db", REGISTRY)
    port = free_port()
    settings = {"server": {"listen": "127.0.0.1:0"}, "registry": {"db": str(tmp_path / "eir.db")},
                "metrics": {"enabled": False},
                "public": {"enabled": True, "listen": f"127.0.0.1:{port}"}}
    worker1 = EirApp(from_mapping(settings).validate(), Role(index=1, count=2))
    await worker1.start()
    try:
        assert worker1.public is None
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient() as http:
                await http.get(f"http://127.0.0.1:{port}/")
    finally:
        await worker1.stop()
    # a registry that cannot be read, served fail-open: S13 answers, the public check says
    # it cannot tell (never "registered" by default)
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"this is not a database" * 100)
    settings["registry"] = {"db": str(broken), "unavailable": "fail-open",
                            "reload_seconds": 60.0}
    node = EirApp(from_mapping(settings).validate())
    await node.start()
    try:
        assert node.regime is None and node.public is not None
        async with httpx.AsyncClient(base_url=node.public.url) as http:
            r = await http.get("/api/v1/check", params={"imei": full(WHITE), "lang": "ru"})
            assert r.status_code == 503
            assert r.json()["detail"] == WORDS["ru"]["unavailable_text"]
    finally:
        await node.stop()
    await asyncio.sleep(0)
