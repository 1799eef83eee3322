"""The observations benchmark still runs end to end at a tiny size.

``python -m bench.observations_bench --smoke`` fills a fresh registry with
~50k observation rows through ``SqliteObservations.write_sightings``, then
times point reads, re-upserts, ``SightingCache.observe`` and ``prune``. Here
we check it completes, prints its JSON and reports every figure the README
talks about; speeds are not asserted (CI machines are shared).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(60)
def test_smoke_run_prints_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    db_dir = tmp_path / "db"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.observations_bench", "--smoke", "--dir", str(db_dir),
         "--json-out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0, proc.stderr[-4000:]
    figures = json.loads(out.read_text())
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == figures
    assert "error" not in figures
    assert not db_dir.exists()  # the database is deleted without --keep

    fill = figures["fill"]
    assert fill["completed"] and fill["rows"] == 50_000
    assert 1.1 < fill["rows_per_imei"] < 1.4
    assert fill["segments"] and fill["segments"][-1]["rows_end"] == 50_000
    assert figures["size_after_fill"]["bytes_per_pair"] > 0
    assert figures["size_after_fill"]["depth"] >= 2

    reads = figures["read_sightings_us"]
    for key in ("existing_cold", "existing_again", "absent_cold", "absent_again",
                "existing_file_cached", "absent_file_cached"):
        assert set(reads[key]) >= {"p50", "p99", "max"}
    # existing IMEIs are found, absent ones never are
    assert reads["existing_cold"]["found"] == reads["existing_cold"]["n"]
    assert reads["absent_cold"]["found"] == 0
    assert figures["reads_during_flush"]["flush_rows"] > 0
    assert figures["reupsert"]["median_rows_per_s"] > 0

    assert [r["rows"] for r in figures["flush_sizes"]] == [1_000, 1_000, 5_000, 5_000]

    obs = figures["observe"]
    for label in ("ttl_30s", "no_ttl"):
        run = obs[label]
        assert run["fill_hot_set"]["miss_share"] == 1.0
        assert run["stream_90_10"]["checks"] == 30_000
        assert run["rows_flushed"] > 0
        assert run["hot_set_len"] <= obs["hot_imeis"]
    # without a TTL only the bound of the hot set causes misses: about the stream's 10%
    assert 0.02 < obs["no_ttl"]["stream_90_10"]["miss_share"] < 0.3

    prune = figures["prune"]
    assert prune["completed"] and 0 < prune["deleted"] <= prune["expected_rows"]
    assert prune["transactions"] >= 1 and prune["transaction_s_max"] > 0
    assert figures["prune_nothing"]["completed"] and figures["prune_nothing"]["deleted"] == 0
    assert set(figures["phases"]) >= {"fill", "reads", "observe_stream_no_ttl", "prune"}
    for label in ("rows/s", "read_sightings", "re-upsert", "observe", "prune"):
        assert label in proc.stderr
