"""The network fuzz run, short: 20,000 mutated messages against a real ``eir serve``.

``python -m bench.fuzz_net`` (1,000,000 messages by hand; the figures are in the README)
exits non-zero when the server dies, stalls, answers against RFC 6733, keeps a
connection whose framing is lost, logs an error or grows its RSS past the bound. Here
the same checks run on 20,000 messages, and the figures it reports are checked to be
there and to add up.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(150)
def test_20k_mutated_messages_against_a_live_server(tmp_path: Path) -> None:
    out = tmp_path / "fuzz.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.fuzz_net", "--messages", "20000", "--work",
         str(tmp_path / "work"), "--json-out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=140)
    assert proc.returncode == 0, proc.stderr[-4000:]
    figures = json.loads(out.read_text())
    assert figures["failures"] == [] and figures["server_alive"]
    assert figures["messages"] >= 20000
    assert figures["batches_verified"] >= 0.9 * figures["batches"]
    answered = sum(figures["answers"].values())
    assert answered > figures["requests"] * 0.9  # every request of a framed batch answered
    # the batches reached the decoder's errors, the dictionary's and the S13 answers
    codes = figures["answers"]
    for code in ("5014", "5005", "3007E", "2001"):
        assert codes.get(code, 0) > 0, (code, codes)
    assert sum(figures["breakers"].values()) > 0
    assert figures["connection_ends"].get("reset: framing lost", 0) > 0
    assert figures["connections"] > 5
    rss = figures["rss_kib"]
    assert rss["start"] > 0 and rss["peak"] >= rss["end"] > 0
