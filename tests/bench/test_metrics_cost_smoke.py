"""bench.metrics_cost runs: its per-read microbenchmark, tiny, this tree against itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_micro_smoke() -> None:
    res = subprocess.run([sys.executable, "-m", "bench.metrics_cost", "micro", "--base", ".",
                          "--rounds", "1", "--reads", "2000"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["mode"] == "micro"
    assert set(got["median"]) == {"base", "off", "default", "every"}
    assert all(0 < v < 1e6 for v in got["median"].values())  # ns per read


def test_a_base_without_eir_is_refused(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "bench.metrics_cost", "micro", "--base",
                          str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "no eir/ package there" in res.stderr
