"""``python -m bench all --smoke``: every phase of the suite runs and is reported.

A 20k-white registry, 1.5 s per run: the EIR over 1/4/16 connections, the echo
server and freeDiameter's stub EIR (skipped, with the reason, where freeDiameter
is not installed), open-loop latency at 25/50/80% of the maximum, in-flight
1/4/16/64, two registry sizes. Rates and targets are not asserted (CI machines
are shared); that every figure is there, that nothing was lost and that the EIR
answered every query as expected are.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from testbed import fdpeer

REPO = Path(__file__).resolve().parents[2]
CONNS = ("1", "4", "16")


def _closed(run: dict[str, Any]) -> None:
    assert run["rate"] > 0
    assert run["answered"] == run["sent"] > 0 and run["lost"] == 0
    assert set(run["latency_us"]) >= {"p50", "p99", "p99.9", "max"}
    assert run["cpu"]["percent_of_core"] > 0
    assert run["server_cpu_us_per_answer"] > 0


def _eir(run: dict[str, Any]) -> None:
    _closed(run)
    assert run["expectations_checked"] and run["mismatches"] == 0
    assert run["server_answered"] == run["answered"]
    assert set(run["status"]) == {"WHITELISTED", "GREYLISTED", "BLACKLISTED", "5422"}
    assert run["observations_written"] > 0
    assert run["sightings"]["known_pairs"] > 0
    assert run["server_startup_s"] > 0 and run["server_rss_ready_mb"] > 0
    assert run["server_rss_after_mb"] > 0


@pytest.mark.timeout(240)
def test_suite_smoke_reports_every_section(tmp_path: Path) -> None:
    out = tmp_path / "results"
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "all", "--smoke", "--out", str(out),
         "--cache-dir", str(tmp_path / "cache")],
        cwd=REPO, capture_output=True, text=True, timeout=220)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, (proc.stdout[-4000:], proc.stderr[-4000:])
    f = json.loads((out / "suite.json").read_text())
    assert f["failures"] == []

    # 1. the registry: import time, one audit record, start-up and memory
    imp = f["registry"]["import"]
    assert imp["rows"] == 20_000 + 2_000 + 300 + f["registry"]["meta"]["exception_pairs"]
    assert imp["seconds"] > 0 and imp["rows_per_s"] > 0
    assert imp["audit"]["import_records"] == 1 and imp["audit"]["import_rows"] == imp["rows"]
    assert f["server"]["ready_s"]["median"] > 0
    assert f["server"]["rss_ready_mib"]["median"] > 0
    assert f["server"]["rss_after_load_mib"]["max"] > 0

    # 2. and 3. throughput over 1/4/16 connections, ours and the baselines, with ratios
    tp = f["throughput"]
    for n in CONNS:
        _eir(tp["eir"][n])
        _closed(tp["echo"][n])
        assert tp["ratios"]["echo"][n] > 0
        if fdpeer.available():
            _closed(tp["fd"][n])
            assert tp["ratios"]["fd"][n] > 0
        else:
            assert "freeDiameter" in tp["fd"][n]["skipped"]
    assert tp["eir"]["4"]["mix"]  # the answer mix hit, next to the expected one

    # 4. open-loop latency at 25/50/80% of the 4-connection maximum
    lo = f["latency_open_loop"]
    assert lo["max_rate"] == tp["eir"]["4"]["rate"]
    for pct in ("25", "50", "80"):
        run = lo["runs"][pct]
        _eir(run)
        assert run["open_loop"]["offered_rate"] > 0
        assert run["open_loop"]["rate"] == pytest.approx(lo["max_rate"] * int(pct) / 100,
                                                         rel=0.01)
        assert set(run["latency_from_send_us"]) >= {"p50", "p99"}
        assert run["latency_curve"]

    # 5. latency as in-flight grows (64 is the throughput run itself)
    for k in ("1", "4", "16", "64"):
        run = f["in_flight"]["runs"][k]
        assert run["rate"] > 0 and run["lost"] == 0 and "p99" in run["latency_us"]

    # 6. registry sizes: throughput and resident memory each
    sizes = f["sizes"]["runs"]
    assert set(sizes) == {"10000", "20000"}
    for run in sizes.values():
        assert run["rate"] > 0 and run["server_rss_ready_mb"] > 0 and run["lost"] == 0

    # the targets, each judged (or named not measured) with a margin
    names = " ".join(t["name"] for t in f["targets"])
    for word in ("ECR/s", "freeDiameter", "p99 at 50%", "p99.9 at 80%", "import",
                 "audit record", "ready", "resident memory"):
        assert word in names
    assert all(t["met"] is not None for t in f["targets"] if "freeDiameter" not in t["name"])

    # the page: self-contained, every figure inline
    page = (out / "suite.html").read_text()
    assert page.count("<svg") >= 5
    assert "<link" not in page and "<script" not in page and "src=" not in page
    for title in ("Throughput", "open loop", "in-flight", "registry size"):
        assert title in page

    # progress lines and the final table
    for text in ("suite: 1/", "throughput EIR 4 connections", "== targets", "MET",
                 "EIR / echo", "observation rows persisted", "loadgen CPU"):
        assert text in proc.stdout
    assert elapsed < 120, f"the smoke suite took {elapsed:.0f} s"
