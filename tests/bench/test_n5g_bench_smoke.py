"""``python -m bench.n5g_bench --smoke`` still runs end to end: S13 through bench.loadgen, N5g
through h2load over h2c and TLS, against one registry, and reports every figure the README
quotes. Rates and ratios are not asserted (CI machines are shared); answers are: the bench
checks a sample one by one and the share of 404s against the query mix."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(150)
def test_smoke_run_reports_s13_and_n5g_figures(tmp_path: Path) -> None:
    # tests/run.sh installs it: a missing h2load fails here rather than skipping the bench
    assert shutil.which("h2load"), "h2load is not installed (Debian: nghttp2-client)"
    out = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.n5g_bench", "--smoke", "--cache-dir", str(tmp_path),
         "--json-out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=140)
    assert proc.returncode == 0, proc.stderr[-4000:]
    figures = json.loads(out.read_text())
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == figures
    assert figures["failures"] == []
    for name in ("s13", "n5g_h2c", "n5g_tls"):
        run = figures[name]
        assert run["rate"] > 0 and run["answered"] == run["sent"] > 0 and run["lost"] == 0
        assert set(run["latency_us"]) >= {"p50", "p90", "p99", "p99.9", "max"}
        assert run["server_cpu_us_per_answer"] > 0
    for name in ("n5g_h2c", "n5g_tls"):
        st = figures[name]["status"]
        assert st["5xx"] == 0 and st["2xx"] > 0 and st["4xx"] > 0  # 404: unknown IMEIs
    assert figures["ratio_n5g_h2c_s13"] > 0 and figures["ratio_n5g_tls_s13"] > 0
    assert figures["app_layer_us_per_request"] > 0
    for label in ("S13 (Diameter)", "N5g h2c", "N5g TLS h2", "N5g h2c/S13", "N5g TLS/S13",
                  "N5g app layer alone", "latency p99.9"):
        assert label in proc.stderr
