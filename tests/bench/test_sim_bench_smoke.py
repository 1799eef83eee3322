"""The simulator benchmark still runs end to end at a tiny size.

``python -m bench.sim_bench --smoke`` generates a 5k population, seeds and
serves our EIR, loads it with ``eir-sim run`` and then loads the echo
server the same way. Here we check it completes and prints every figure the
README quotes; speeds are not asserted (CI machines are shared), but the
EIR's answers must all match the population.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_smoke_run_prints_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, "-m", "bench.sim_bench", "--smoke", "--json-out",
                           str(out)], cwd=REPO, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr[-4000:]
    figures = json.loads(out.read_text())
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == figures
    assert figures["failures"] == []
    eir, alone = figures["eir"], figures["simulator_alone"]
    assert eir["answered"] > 0 and eir["mismatches"] == 0 and eir["timeouts"] == 0
    assert alone["answered"] > 0 and alone["by_status"] == {"WHITELISTED": alone["answered"]}
    assert figures["ratio_sim_alone_to_eir"] > 0
    assert "ratio sim alone / EIR" in proc.stderr
