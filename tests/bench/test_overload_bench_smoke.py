"""``python -m bench.overload_bench --smoke`` runs end to end and reports every figure.

A 10,000-IMEI registry, ``eir serve`` with ``overload.max_rate = 1000``, open-loop
generators offering it twice over and a peer at ten times its share, then two
points of the saturation sweep with the measured-load limit on and off, and the
HTML page with the plots. The targets (90% of the limit, 5 ms, 10 ms, 1 s, 99.9%)
are reported, not asserted, except what holds on any machine: refusals happen
when the limit is offered twice over, none is lost, and the polite peer is served.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(240)
def test_overload_smoke_reports_every_figure(tmp_path: Path) -> None:
    out, page = tmp_path / "figures.json", tmp_path / "overload.html"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.overload_bench", "--smoke", "--cache-dir", str(tmp_path),
         "--json-out", str(out), "--html", str(page)],
        cwd=REPO, capture_output=True, text=True, timeout=220)
    assert proc.returncode == 0, proc.stderr[-4000:]
    f = json.loads(out.read_text())
    assert f["failures"] == []
    lim, fair, sat = f["limit"], f["fairness"], f["saturation"]
    assert lim["refused"] > 0 and lim["surge_refused_share"] > 0.2
    assert lim["goodput"] > 0 and lim["admitted_p99_ms"] > 0 and lim["worst_refusal_ms"] > 0
    assert lim["rss_mib"]["max"] is not None and len(lim["rss_samples"]) >= 3
    assert fair["polite_success"] > 0.9 and fair["flood_success"] < 0.5
    assert [p["multiple"] for p in sat["on"]] == [0.5, 2.0]
    assert [p["multiple"] for p in sat["off"]] == [0.5, 2.0]
    assert {t["target"] for t in f["targets"]} >= {
        "every refusal within 5 ms", "p99 of admitted requests <= 10 ms"}
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 3
    assert "overload control" in proc.stderr
