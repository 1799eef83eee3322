"""README "The operator's first hour" runs as written.

The shell blocks marked ``<!-- walkthrough -->`` are taken from README.md, in order, and
run as one bash script (``set -euo pipefail``) in a temporary directory whose ``.venv``
is this environment's, with the S13 and metrics ports changed to free ones. Then what
the README says each step shows is checked in that step's output: the server ready, the
simulated MMEs' run PASS, the metrics scraped, the SIGHUP applied, the check of a
handset WHITELISTED before the list import and BLACKLISTED after it, a clean stop.
So the README cannot drift from the commands.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from testbed.eirproc import free_port

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
_BLOCK = re.compile(r"^<!-- walkthrough(?P<note>[^>]*)-->\n```sh\n(?P<body>.*?)\n```$",
                    re.S | re.M)


def blocks() -> list[str]:
    """The runnable blocks of the walk-through, in README order."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## The operator's first hour"):]
    section = section[:section.index("\n## ", 1)]
    found = [(m["note"].strip(), m["body"]) for m in _BLOCK.finditer(section)]
    # every shell block of the section is marked, run or not (and why not)
    assert len(found) == section.count("```sh"), "an unmarked ```sh block in the walk-through"
    assert all(note == "" or note.startswith(": not run (") for note, _ in found)
    return [body for note, body in found if not note]


def test_the_walkthrough_runs_as_written(tmp_path: Path) -> None:
    venv = Path(sys.executable).parent.parent
    for script in ("eir", "eir-sim"):
        assert (venv / "bin" / script).exists(), f"{venv}/bin/{script}: not installed"
    (tmp_path / ".venv").symlink_to(venv)
    s13, metrics = free_port(), free_port()
    steps = blocks()
    assert len(steps) == 7, len(steps)
    script = ["set -euo pipefail"]
    for i, body in enumerate(steps):
        body = body.replace("127.0.0.1:3868", f"127.0.0.1:{s13}")
        body = body.replace("127.0.0.1:9464", f"127.0.0.1:{metrics}")
        script += [f"echo '@@ step {i}'", body]
    # output to a file, not a pipe: a server left running by a failed step would hold a
    # pipe open, and the failure would wait for the timeout
    output = tmp_path / "walkthrough.out"
    with output.open("wb") as sink:
        proc = subprocess.Popen(["bash", "-c", "\n".join(script)], cwd=tmp_path, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        proc.wait(timeout=120)
    finally:
        # the script's session, the server it started in the background included: nothing
        # of a failed run may outlive the test (the group is empty after a good one)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    out = output.read_text(errors="replace")
    log = (tmp_path / "eir-lab" / "eir.log")
    assert proc.returncode == 0, f"{out}\n--- eir.log:\n{log.read_text() if log.exists() else ''}"
    parts = re.split(r"^@@ step (\d+)$", out, flags=re.M)
    shown = {int(parts[i]): parts[i + 1] for i in range(1, len(parts), 2)}
    assert sorted(shown) == list(range(len(steps)))
    # 1 config (nothing to show); 2 fill and start
    assert "imported 1,000 TACs" in shown[1] and "EIR ready: S13 on 127.0.0.1:" in shown[1]
    # 3 an MME attached, every answer as the population says
    assert "PASS: sent 2,000, answered 2,000, timeouts 0, errors 0, mismatches 0" in shown[2]
    # 4 metrics: the decisions of that run, and eir status
    decided = sum(float(v) for v in re.findall(r"^eir_decisions_total\{.*\} (\S+)$", shown[3],
                                               re.M))
    assert decided == 2000, shown[3]
    assert "registry   version" in shown[3] and "eir.lab.example" in shown[3]
    # 5 SIGHUP applied a live setting, visible in the metrics
    assert "SIGHUP: settings reloaded; applied: metrics.expected_peers" in shown[4]
    assert 'eir_peer_up{peer="mme9.lab.example"} 0.0' in shown[4]
    # 6 the list import reached the running server
    statuses = re.findall(r'"equipment_status": "(\w+)"', shown[5])
    assert statuses == ["WHITELISTED", "BLACKLISTED"], shown[5]
    assert "stolen" in shown[5]
    # 7 the stop
    assert "stopped:" in shown[6]
    log_text = log.read_text()
    assert "Traceback" not in log_text and " ERROR " not in log_text, log_text

