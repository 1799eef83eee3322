"""The benchmarks still run end to end: registry import, EIR, load generator, echo server.

``python -m bench.ecr_bench --smoke`` builds a 10,000-IMEI registry with the
real ``eir registry import`` (and ``import-tac``, ``import-observations``),
serves it with ``eir serve`` under the full regime, drives it for 2 s with
``bench.loadgen`` and does the same against ``bench.echo_server``.
``python -m bench.regime_bench --smoke`` drives the plain list lookup and the
full regime with the same queries. Both exit non-zero when a request is lost
or an answer is not the one expected under the run's rule order; here we also
check that the figures the README talks about are reported. Rates and the
regime/plain ratio are not asserted: CI machines are shared.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# both are test dependencies: a missing one must fail here, not skip the benchmark
import hdrh  # noqa: F401
import pytest
import uvloop  # noqa: F401

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_smoke_run_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.ecr_bench", "--smoke", "--cache-dir", str(tmp_path),
         "--json-out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr[-4000:]
    figures = json.loads(out.read_text())
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == figures
    assert figures["failures"] == []
    eir, echo = figures["eir"], figures["echo"]
    for run in (eir, echo):
        assert run["rate"] > 0
        assert run["answered"] == run["sent"] > 0
        assert run["lost"] == 0
        assert set(run["latency_us"]) >= {"p50", "p90", "p99", "p99.9", "max"}
        assert run["cpu"]["percent_of_core"] > 0
        assert run["server_cpu_percent"] is not None
    # every list is hit, every answer checked against the IMEI's expected status
    assert set(eir["status"]) == {"WHITELISTED", "GREYLISTED", "BLACKLISTED", "5422"}
    assert eir["expectations_checked"] and eir["mismatches"] == 0
    assert eir["server_answered"] == eir["answered"]
    assert figures["registry"]["imeis"] == 10_000
    # the server's start-up line was parsed: lists, and the TAC database imported with them
    assert eir["snapshot"]["entries"] == 10_000 and eir["snapshot"]["tacs"] >= 20
    assert eir["db_after"]["observations"] > figures["registry"]["history_rows"]
    assert figures["ratio_eir_echo"] > 0
    for label in ("answers/s", "latency p99.9", "lost", "loadgen CPU", "server CPU",
                  "EIR/echo", "answer mix"):
        assert label in proc.stderr


@pytest.mark.timeout(120)
def test_regime_smoke_run_compares_regime_and_plain(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.regime_bench", "--smoke", "--cache-dir", str(tmp_path),
         "--json-out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr[-4000:]
    figures = json.loads(out.read_text())
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == figures
    assert figures["failures"] == []
    plain, regime = figures["runs"]["plain"], figures["runs"]["regime"]
    for run in (plain, regime):
        assert run["rate"] > 0
        assert run["answered"] == run["sent"] == run["server_answered"] > 0
        assert run["lost"] == 0 and run["unmatched_answers"] == 0
        assert run["expectations_checked"] and run["mismatches"] == 0
        assert set(run["latency_us"]) >= {"p50", "p99"}
        assert run["server_cpu_us_per_answer"] > 0
        assert run["observations_written"] > 0  # first sightings are recorded and flushed
        assert set(run["status"]) == {"WHITELISTED", "GREYLISTED", "BLACKLISTED"}
    # the same queries: only the regime's own rules answer roamers, M2M and clones
    reasons = {m: {k.split("/", 1)[1] for k in figures["runs"][m]["decisions"]}
               for m in ("plain", "regime")}
    assert {"roaming_exempt", "exempt_class", "clone_suspected"} <= reasons["regime"]
    assert not {"roaming_exempt", "exempt_class", "clone_suspected"} & reasons["plain"]
    assert figures["expected_mix"]["plain"] != figures["expected_mix"]["regime"]
    assert figures["summary"]["ratio"] > 0 and figures["summary"]["ratio_by_cpu"] > 0
    for label in ("regime/plain", "answers/s", "latency p99", "server CPU per answer",
                  "observation rows written"):
        assert label in proc.stderr


@pytest.mark.timeout(120)
def test_regime_path_smoke(tmp_path: Path) -> None:
    """The in-process breakdown of Regime.check runs and reports every piece."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.regime_path", "--smoke", "--cache-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr[-4000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    for mode in ("plain", "regime"):
        check = figures["check"][mode]
        assert check["first_pass"]["us"] > 0 and check["second_pass"]["us"] > 0
        assert check["rows_queued"] > 0 and check["cache_misses"] > 0
    assert {"Snapshot.lookup_full", "decide, regime order", "SightingCache.observe, hot"} \
        <= set(figures["pieces"])
    assert figures["writes"]["flush_rows"] > 0 and figures["writes"]["clocks"] > 0


@pytest.mark.timeout(60)
def test_loadgen_counts_unanswered_requests_as_lost() -> None:
    """A server that leaves every 500th ECR unanswered: 4 of 2,000 are lost, exit 1."""
    echo = subprocess.Popen(
        [sys.executable, "-m", "bench.echo_server", "--listen", "127.0.0.1:0",
         "--drop-every", "500", "--max-seconds", "50"],
        cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        assert echo.stderr is not None
        ready = echo.stderr.readline()
        assert ready.startswith("ECHO ready on "), ready
        port = ready.rsplit(":", 1)[1].strip()
        proc = subprocess.run(
            [sys.executable, "-m", "bench.loadgen", "--target", f"127.0.0.1:{port}",
             "--seed", "3", "--count", "2000", "--connections", "1", "--in-flight", "4",
             "--duration", "20", "--drain", "1", "--quiet"],
            cwd=REPO, capture_output=True, text=True, timeout=50)
    finally:
        echo.terminate()
        echo.wait(10)
    result = json.loads(proc.stdout)
    assert proc.returncode == 1
    assert (result["sent"], result["answered"], result["lost"]) == (2000, 1996, 4)


@pytest.mark.timeout(120)
def test_registry_bench_smoke() -> None:
    proc = subprocess.run([sys.executable, "bench/registry_bench.py", "--rows", "5000"],
                          cwd=REPO, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "lookup" in proc.stdout + proc.stderr
