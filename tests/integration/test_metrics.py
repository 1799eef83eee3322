"""A live ``eir serve`` scraped under load: the names, labels and figures of ``GET /metrics``.

Real processes over 127.0.0.1: the EIR (``testbed.eirproc``, one process and
``--workers 2``), load from ``bench.loadgen`` and from our own MME-side
clients, ``eir status`` as a person runs it. Every metric name the Grafana
dashboard (ops/grafana/eir-dashboard.json) and the alert rules
(ops/prometheus/eir-alerts.yml) use must be exported by the running server;
with Debian's ``prometheus`` installed, a real Prometheus scrapes the EIR and
every dashboard query is asked of it, and ``promtool`` checks and unit-tests
the rules.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from eir.diameter import messages as m
from eir.diameter.client import DiameterClient
from eir.diameter.constants import AvpCode
from eir.diameter.dictionary import default_dictionary
from eir.policy import import_progress
from eir.probe import ecr
from testbed.eirproc import EirProcess, free_port, run_cli

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "ops" / "grafana" / "eir-dashboard.json"
ALERTS = ROOT / "ops" / "prometheus" / "eir-alerts.yml"
ALERT_TESTS = ROOT / "ops" / "prometheus" / "eir-alerts.test.yml"
REALM = "test.local"
WHITE, BLACK, GREY = "49015420323751", "35332510123456", "35209900176148"
REGISTRY = ("imei,list,reason,imsi,source,note\n"
            f"{WHITE},white,registered,,ministry,\n{BLACK},black,stolen,,police,\n"
            f"{GREY},grey,pending_verification,,ministry,\n")
# only with --workers: the supervisor's own
WORKER_ONLY = {"eir_workers", "eir_worker_up", "eir_worker_starts_total"}
# exported only while their listener is on ([n5g], [public]); their own tests scrape them
LISTENER_ONLY = {"eir_n5g_requests_total", "eir_public_checks_total"}
DICT = default_dictionary()
LOADGEN_COUNT = 3000

pytestmark = pytest.mark.timeout(120)

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out: Samples = {}
    names = []
    for family in text_string_to_metric_families(text):
        names.append(family.name)
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    assert len(names) == len(set(names)), "a metric family exported twice"
    return out


def total(samples: Samples, name: str, **match: str) -> float:
    return sum(v for labels, v in samples.get(name, ())
               if all(labels.get(k) == want for k, want in match.items()))


def referenced_names() -> set[str]:
    """Every eir_* name the dashboard's queries and the alert rules' expressions use."""
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"]
             for t in p.get("targets", ())]
    names = {n for e in exprs for n in re.findall(r"\b(eir_[a-z0-9_]+)", e)}
    names |= set(re.findall(r"\b(eir_[a-z0-9_]+)", ALERTS.read_text()))
    return names


def make_registry(tmp_path: Path, config: str = "") -> tuple[Path, Path]:
    db = tmp_path / "eir.db"
    (tmp_path / "a.csv").write_text(REGISTRY)
    res = run_cli("registry", "import", "--quiet", "--db", str(db), "--full", "ministry",
                  "--list-version", "5", str(tmp_path / "a.csv"))
    assert res.returncode == 0, res.stderr
    # one warning waiting in the outbox, as the notifications loop leaves them
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO outbox (imei, imsi, kind, due_at, deadline, created, message)"
                     " VALUES (?, ?, 'day0', ?, ?, ?, 'm')", (GREY, "401011234567890",
                                                             "2026-01-01T00:00:00Z",
                                                             "2026-02-01T00:00:00Z",
                                                             "2026-01-01T00:00:00Z"))
    cfg = tmp_path / "eir.toml"
    cfg.write_text("[registry]\nreload_seconds = 0.2\n[observations]\nflush_seconds = 0.2\n"
                   "[notifications]\ninterval_seconds = 0.5\n"
                   "[metrics]\nlatency_sample = 1\nexpected_peers = [\"mme-never.test.local\"]\n"
                   + config)
    return db, cfg


def loadgen(port: int, count: int = LOADGEN_COUNT) -> None:
    res = subprocess.run([sys.executable, "-m", "bench.loadgen", "--target", f"127.0.0.1:{port}",
                          "--seed", "7", "--count", str(count), "--connections", "2",
                          "--in-flight", "8", "--dest-realm", REALM, "--origin-realm", REALM,
                          "--quiet"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


async def peer(host: str, port: int) -> DiameterClient:
    client = DiameterClient(m.Identity(host, REALM), DICT)
    await client.connect("127.0.0.1", port, timeout=5)
    return client


async def ask(client: DiameterClient, host: str, imei: str) -> int:
    ans = await client.request(ecr(host, REALM, REALM, imei, "00", None), timeout=5)
    rc = ans.find(AvpCode.RESULT_CODE)
    assert rc is not None
    return rc.as_u32()


async def until(probe: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not probe():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


async def check_node(eir: EirProcess, url: str, workers: int) -> Samples:
    """Load, peers up and down; every referenced name exported; the figures add up."""
    await asyncio.to_thread(loadgen, eir.port)
    kept = await peer("mme-kept.test.local", eir.port)
    lost = await peer("mme-lost.test.local", eir.port)
    try:
        assert await ask(kept, "mme-kept.test.local", BLACK) == 2001
        assert await ask(lost, "mme-lost.test.local", "123") == 2001  # malformed: black
        # mme-lost goes without a DPR: a peer down
        assert lost.proto is not None and lost.proto.transport is not None
        lost.proto.transport.abort()
        await until(lambda: "mme-lost.test.local" in eir.log() and
                    "disconnected without a DPR" in eir.log(), 10, "no disconnect logged")
        # the flush loop runs every 0.2 s, but a loaded machine can hold it back a while
        deadline = time.monotonic() + 15
        while total(await asyncio.to_thread(scrape, url), "eir_observations_written_total") < 1:
            assert time.monotonic() < deadline, "no observations written in 15 s"
            await asyncio.sleep(0.2)
        # an import running now (this process plays the importer; its clock runs fast,
        # so that every report is written)
        ticks = iter(range(1_000_000, 2_000_000, 10))
        progress = import_progress.ProgressFile(eir.db, "import", "tester",
                                                clock=lambda: next(ticks))
        progress.rows(1234)
        got = await asyncio.to_thread(scrape, url)
        progress.finish(1234)
    finally:
        await kept.close()

    exported = set(got)
    missing = (referenced_names() - exported - LISTENER_ONLY
               - (set() if workers > 1 else WORKER_ONLY))
    assert not missing, f"used by the dashboard or the alerts, not exported: {sorted(missing)}"
    if workers > 1:
        assert total(got, "eir_workers") == workers
        assert [v for _, v in got["eir_worker_up"]] == [1.0] * workers
        for name, samples in got.items():
            if name.startswith("eir_") and name not in WORKER_ONLY:
                assert all("worker" in labels for labels, _ in samples), name
        assert {labels["worker"] for labels, _ in got["eir_diameter_requests_total"]} == \
            {str(i) for i in range(workers)}
    else:
        assert not any(n in got for n in WORKER_ONLY)

    sent = LOADGEN_COUNT + 2
    ecr_requests = total(got, "eir_diameter_requests_total", command="ECR")
    assert ecr_requests == sent
    assert total(got, "eir_diameter_answers_total", command="ECR") == sent
    assert total(got, "eir_diameter_answers_total", command="ECR", result_code="2001") == sent
    assert total(got, "eir_decisions_total") == sent
    assert total(got, "eir_decisions_total", status="BLACKLISTED", reason="stolen") == 1
    assert total(got, "eir_decisions_total", status="BLACKLISTED", reason="malformed") == 1
    assert total(got, "eir_s13_requests_total") == sent
    # CER, DPR: 2 loadgen connections + 2 of ours, of which one said goodbye with a DPR
    assert total(got, "eir_diameter_requests_total", command="CER") == 4
    assert total(got, "eir_diameter_answers_total", command="CER", result_code="2001") == 4
    assert total(got, "eir_diameter_requests_total", command="DPR") == 2
    # every read timed (latency_sample = 1): each message counted once
    messages = total(got, "eir_peer_messages_received_total")
    assert messages >= sent + 4 + 2
    assert total(got, "eir_request_duration_seconds_count") == messages
    buckets = sorted((float(labels["le"]), v) for labels, v in
                     got["eir_request_duration_seconds_bucket"]
                     if labels.get("worker", "0") == "0")
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    assert buckets[0][0] == 0.00005
    up = {}
    for labels, v in got["eir_peer_up"]:
        up[labels["peer"]] = max(up.get(labels["peer"], v), v)
    assert up["mme-kept.test.local"] == 1 and up["mme-lost.test.local"] == 0
    assert up["mme-never.test.local"] == 0
    assert not any(p.startswith("lg") for p in up), "peers that said goodbye are not down"
    assert total(got, "eir_peer_connections", state="open") == 1
    # the registry served, the lists, the import, the queues
    assert {labels.get("list"): v for labels, v in got["eir_registry_entries"]
            if labels.get("worker", "0") == "0"} == {"white": 1, "black": 1, "grey": 1}
    assert all(v >= 1 for _, v in got["eir_registry_version"])
    assert total(got, "eir_registry_unavailable") == 0
    assert max(v for _, v in got["eir_import_running"]) == 1
    assert max(v for _, v in got["eir_import_rows"]) == 1234
    assert max(v for _, v in got["eir_import_last_failed"]) == 0  # the import before it
    assert {labels["source"]: v for labels, v in got["eir_list_version"]} == {"ministry": 5}
    assert total(got, "eir_notifications_pending") == 1
    assert max(v for _, v in got["eir_notifications_oldest_pending_timestamp_seconds"]) == \
        1767225600  # 2026-01-01T00:00:00Z
    assert total(got, "eir_observations_written_total") >= 1
    return got


async def test_one_process_under_load(tmp_path: Path) -> None:
    db, cfg = make_registry(tmp_path)
    mport = free_port()
    url = f"http://127.0.0.1:{mport}/metrics"
    with EirProcess(db, origin_realm=REALM, config=cfg,
                    extra=("--metrics-listen", f"127.0.0.1:{mport}")) as eir:
        assert f"metrics on {url}" in eir.log()
        await check_node(eir, url, workers=1)
        res = await asyncio.to_thread(run_cli, "status", "--metrics", url, "--interval", "0.5")
        assert res.returncode == 0, res.stderr
        screen = res.stdout
        assert screen.startswith("eir 0.1.0: eir.test.local (realm test.local) at " + url)
        assert re.search(r"^  mme-lost\.test\.local +DOWN$", screen, re.M), screen
        assert re.search(r"^  mme-never\.test\.local +DOWN$", screen, re.M), screen
        assert "registry   version 1 (checked" in screen and "black 1, grey 1, white 1" in screen
        assert "1 warning(s) not sent, the oldest from 2026-01-01" in screen
        if shutil.which("prometheus"):
            await prometheus_reads_the_dashboard(tmp_path, eir, mport)
        # metrics.expected_peers applies on SIGHUP
        cfg.write_text(cfg.read_text().replace("mme-never.test.local", "mme-new.test.local"))
        eir.send_signal(signal.SIGHUP)
        await until(lambda: "SIGHUP: settings reloaded" in eir.log(), 10, "no reload")
        assert "metrics.expected_peers" in eir.log()
        peers = {lab["peer"] for lab, _ in (await asyncio.to_thread(scrape, url))["eir_peer_up"]}
        assert "mme-new.test.local" in peers and "mme-never.test.local" not in peers
    assert eir.returncode == 0


async def test_two_workers_under_load(tmp_path: Path) -> None:
    db, cfg = make_registry(tmp_path)
    mport = free_port()
    url = f"http://127.0.0.1:{mport}/metrics"
    with EirProcess(db, origin_realm=REALM, config=cfg, ready_timeout=30,
                    extra=("--workers", "2", "--metrics-listen", f"127.0.0.1:{mport}")) as eir:
        got = await check_node(eir, url, workers=2)
        # both workers took some of the load (the kernel spreads the connections)
        per_worker = {labels["worker"]: v for labels, v in
                      got["eir_diameter_requests_total"] if labels["command"] == "CER"}
        assert sum(per_worker.values()) == 4
        # worker 0 runs the registry jobs: the notification backlog is its alone
        assert {labels["worker"] for labels, _ in got["eir_notifications_pending"]} == {"0"}
        res = await asyncio.to_thread(run_cli, "status", "--metrics", url, "--interval", "0.5")
        assert res.returncode == 0, res.stderr
        assert "2 of 2 workers answered" in res.stdout.splitlines()[0]
        # a stuck worker: the scrape waits 2 s for it and serves the other one; once it
        # runs again, its late answer is not taken for the next scrape's
        found = re.search(r"\[worker 1 pid (\d+)\]", eir.log())
        assert found is not None
        pid = int(found[1])
        os.kill(pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            stuck = await asyncio.to_thread(scrape, url)
            took = time.monotonic() - t0
        finally:
            os.kill(pid, signal.SIGCONT)
        assert 1.9 < took < 5, took
        assert {lab["worker"]: v for lab, v in stuck["eir_worker_up"]} == {"0": 1, "1": 0}
        assert {lab["worker"] for lab, _ in stuck["eir_diameter_requests_total"]} == {"0"}
        again = await asyncio.to_thread(scrape, url)
        assert {lab["worker"]: v for lab, v in again["eir_worker_up"]} == {"0": 1, "1": 1}
        assert total(again, "eir_diameter_requests_total", command="ECR") >= LOADGEN_COUNT + 2
    assert eir.returncode == 0


async def prometheus_reads_the_dashboard(tmp_path: Path, eir: EirProcess, mport: int) -> None:
    """A real Prometheus scrapes the EIR; every dashboard query is asked of it."""
    pport = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: ['{ALERTS}']\n"
        "scrape_configs:\n  - job_name: eir\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{mport}']\n")
    prom = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{pport}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    api = f"http://127.0.0.1:{pport}/api/v1"

    def query(expr: str) -> list[dict[str, object]]:
        q = urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(f"{api}/query?{q}", timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]  # type: ignore[no-any-return]

    def ready() -> bool:
        try:
            return len(query('eir_diameter_requests_total{command="ECR"}')) > 0 and \
                len(query("up")) > 0
        except OSError:
            return False

    try:
        await until(lambda: ready(), 30, "Prometheus scraped nothing")
        # a little more load, so that rates have two points to work with
        await asyncio.to_thread(loadgen, eir.port, 2000)
        await asyncio.sleep(3)
        empty = []
        for p in json.loads(DASHBOARD.read_text())["panels"]:
            for t in p.get("targets", ()):
                expr = (t["expr"].replace("$__rate_interval", "10s").replace("$instance", ".*")
                        .replace("$job", ".*"))
                result = await asyncio.to_thread(query, expr)
                if not result:
                    empty.append((p["title"], expr))
        # every query answers; those that may rightly be empty here: worker panels (one
        # process), failures that did not happen, listeners that are off
        allowed = (*LISTENER_ONLY, "eir_worker", "eir_workers", "eir_import_last_failed",
                   "flush_failures",
                   "eir_overload_refused", "result_code!~", "command!=", "peers_denied",
                   "tls_handshakes", "origin_host_mismatches", "eir_import_rows[1m]",
                   "deriv(eir_import_rows", "eir_registry_stale", "doic_reduction")
        unexpected = [(title, e) for title, e in empty if not any(a in e for a in allowed)]
        assert not unexpected, unexpected
        ecr_rate = await asyncio.to_thread(
            query, 'sum(rate(eir_diameter_requests_total{command="ECR"}[10s]))')
        assert float(ecr_rate[0]["value"][1]) > 0  # type: ignore[index]
        rules = await asyncio.to_thread(lambda: json.loads(urllib.request.urlopen(
            f"{api}/rules", timeout=10).read()))
        loaded = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
        assert "EirPeerDown" in loaded and "EirFailOpen" in loaded
        await until(lambda: any(a["labels"].get("alertname") == "EirPeerDown" for a in
                                json.loads(urllib.request.urlopen(f"{api}/alerts", timeout=10)
                                           .read())["data"]["alerts"]),
                    15, "EirPeerDown not pending for the lost peer")
    finally:
        prom.terminate()
        prom.wait(10)


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool (Debian's prometheus package) is not installed")
def test_alert_rules_pass_promtool() -> None:
    check = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 12 rules found" in check.stdout
    unit = subprocess.run(["promtool", "test", "rules", str(ALERT_TESTS)], capture_output=True,
                          text=True, timeout=60)
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_the_dashboard_is_grafana_json() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "eir-overview" and dash["panels"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["targets"] and all(t["expr"] for t in p["targets"]), p["title"]
            assert p["datasource"]["uid"] == "${datasource}"


def test_status_with_nothing_running_is_one_line(tmp_path: Path) -> None:
    port = free_port()
    res = run_cli("status", "--metrics", f"http://127.0.0.1:{port}/metrics", timeout=30)
    assert res.returncode == 1
    assert res.stdout == ""
    assert res.stderr == (f"eir: status: nothing answers at http://127.0.0.1:{port}/metrics "
                          "([Errno 111] Connection refused)\n")


async def test_the_server_remembers_peers_that_went_away_until_forgotten() -> None:
    """What eir_peer_up is made of: the peer table, and when each peer's last connection
    closed (in-process: a DiameterServer and our clients)."""
    from eir.diameter.server import DiameterServer, ServerConfig

    def answer(frame: bytes, peer: bytes) -> bytes | None:
        return None

    server = DiameterServer(ServerConfig(host="127.0.0.1", port=0), DICT, {16777252: answer})
    await server.start()
    try:
        polite = await peer("mme-polite.test.local", server.port)
        rude = await peer("mme-rude.test.local", server.port)
        await until(lambda: len(server.peers.connected) == 2, 5, "peers not open")
        await polite.close()  # DPR first
        assert rude.proto is not None and rude.proto.transport is not None
        rude.proto.transport.abort()
        await until(lambda: len(server.last_closed) == 2, 5, "closes not seen")
        assert not server.peers.connected
        assert set(server.peers.failed) == {"mme-rude.test.local"}
        assert set(server.peer_messages) == {"mme-polite.test.local", "mme-rude.test.local"}
        # back again: no longer "last closed"
        again = await peer("mme-rude.test.local", server.port)
        await until(lambda: "mme-rude.test.local" not in server.last_closed, 5, "not reopened")
        server.forget_peers(time.time() + 1)
        assert set(server.last_closed) == set()
        assert set(server.peer_messages) == {"mme-rude.test.local"}  # connected: kept
        await again.close()
    finally:
        await server.stop()
