"""Done-when of issue 7 item 3: an AMF-style HTTP/2 check and an S13 ECR for the same device
get the same status, from a live ``eir serve``, and the same decision reason in its log.

Real processes over 127.0.0.1: the EIR (``testbed.eirproc``), the registry imported with the
command line, ECRs sent with `eir.probe` (what ``eir check`` runs), N5g requests with httpx
over h2c (prior knowledge, as an AMF inside a trusted network). With ``--workers 2`` every
worker answers on the shared N5g port.
"""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eir.probe import check
from testbed.eirproc import EirProcess, free_port, run_cli

REALM = "test.local"
IMSI = "401011234567890"
DEVICES = {  # IMEI as S13 carries it -> what both interfaces must answer
    "49015420323751": "WHITELISTED",
    "35209900176148": "GREYLISTED",
    "35332510123456": "BLACKLISTED",  # stolen
    "3520990017614A": "BLACKLISTED",  # not an IMEI: malformed
    "86123456789012": "UNKNOWN",  # on no list, policy.unknown_equipment = "reject"
}
REGISTRY = ("imei,list,reason,imsi,source,note\n49015420323751,white,registered,,ministry,\n"
            "35332510123456,black,stolen,,police,\n"
            "35209900176148,grey,pending_verification,,ministry,\n")
DECISION = re.compile(r"imei=(\S+) imsi=\S+ sv=\S+ operator=(\S+) -> (\S+) reason=(\S+)")

pytestmark = pytest.mark.timeout(120)


def setup(tmp_path: Path, n5g_port: int) -> tuple[Path, Path]:
    db = tmp_path / "eir.db"
    (tmp_path / "a.csv").write_text(REGISTRY)
    res = run_cli("registry", "import", "--quiet", "--db", str(db), "--full", "ministry",
                  str(tmp_path / "a.csv"))
    assert res.returncode == 0, res.stderr
    cfg = tmp_path / "eir.toml"
    cfg.write_text(f'[policy]\nunknown_equipment = "reject"\n'
                   f'[log]\ndecisions = "info"\nimei = "clear"\nimsi = "clear"\n'
                   f'[metrics]\nlisten = "127.0.0.1:{free_port()}"\n'
                   f'[n5g]\nenabled = true\nlisten = "127.0.0.1:{n5g_port}"\n')
    return db, cfg


async def s13_status(port: int, imei: str) -> str:
    answer = await check("127.0.0.1", port, imei, sv=None, imsi=IMSI, origin_host="mme.test",
                         origin_realm=REALM, dest_realm=REALM)
    if answer.get("experimental_result_code") == 5422:
        return "UNKNOWN"
    assert answer.get("result_code") == 2001, answer
    return str(answer["equipment_status"])


async def n5g_status(client: httpx.AsyncClient, port: int, imei: str) -> str:
    r = await client.get(f"http://127.0.0.1:{port}/n5g-eir-eic/v1/equipment-status",
                         params={"pei": f"imei-{imei}", "supi": f"imsi-{IMSI}"})
    assert r.http_version == "HTTP/2"
    if r.status_code == 404:
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["cause"] == "ERROR_EQUIPMENT_UNKNOWN"
        return "UNKNOWN"
    assert (r.status_code, r.headers["content-type"]) == (200, "application/json")
    assert set(r.json()) == {"status"}  # the wire stays TS 29.511's: no reason field
    return str(r.json()["status"])


async def test_an_amf_and_an_mme_get_the_same_answer_and_reason(tmp_path: Path) -> None:
    n5g_port = free_port()
    db, cfg = setup(tmp_path, n5g_port)
    with EirProcess(db, origin_realm=REALM, config=cfg) as eir:
        async with httpx.AsyncClient(http1=False, http2=True, timeout=10) as client:
            for imei, want in DEVICES.items():
                assert await s13_status(eir.port, imei) == want, imei
                assert await n5g_status(client, n5g_port, imei) == want, imei
        log = eir.log()
    decided: dict[str, dict[str, tuple[str, str]]] = {}
    for imei, operator, status, reason in DECISION.findall(log):
        decided.setdefault(imei, {})[operator] = (status, reason)
    for imei in DEVICES:
        # S13's operator is the ECR's Origin-Realm; N5g's the configured default
        assert set(decided[imei]) == {REALM, "5gc"}, (imei, eir.log_tail())
        assert decided[imei][REALM] == decided[imei]["5gc"], imei
    assert decided["35332510123456"][REALM] == ("BLACKLISTED", "stolen")
    assert decided["3520990017614A"][REALM] == ("BLACKLISTED", "malformed")
    assert decided["86123456789012"][REALM] == ("UNKNOWN", "unknown")


def test_every_worker_answers_on_the_shared_port(tmp_path: Path) -> None:
    n5g_port = free_port()
    db, cfg = setup(tmp_path, n5g_port)
    metrics = re.search(r'listen = "(127\.0\.0\.1:\d+)"', cfg.read_text())
    assert metrics is not None
    with EirProcess(db, origin_realm=REALM, config=cfg, extra=("--workers", "2")):
        for _ in range(40):  # a new connection each: SO_REUSEPORT spreads them
            with httpx.Client(http1=False, http2=True, timeout=10) as client:
                r = client.get(f"http://127.0.0.1:{n5g_port}/n5g-eir-eic/v1/equipment-status",
                               params={"pei": "imei-49015420323751"})
                assert r.json() == {"status": "WHITELISTED"}
        with urllib.request.urlopen(f"http://{metrics.group(1)}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    per_worker: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "eir_n5g_requests":
            for s in family.samples:
                if s.name.endswith("_total"):
                    per_worker[s.labels["worker"]] = per_worker.get(s.labels["worker"], 0) + \
                        s.value
    assert sum(per_worker.values()) == 40
    assert set(per_worker) == {"0", "1"} and min(per_worker.values()) > 0, per_worker
