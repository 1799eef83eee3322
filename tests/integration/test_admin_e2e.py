"""The admin API end to end: ``eir admin token``, ``eir serve`` with ``[admin]``, an upload
followed to completion, and the running EIR answering the new status over S13 (``eir
check``), then a police report through the API answered over S13 too."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from testbed.eirproc import EirProcess, free_port, run_cli

pytestmark = pytest.mark.timeout(120)
REALM = "test.local"
WHITE, NEW_BLACK = "49015420323751", "35332510000099"


def s13(proc: EirProcess, imei: str) -> dict[str, Any]:
    res = run_cli("check", imei, "--target", f"127.0.0.1:{proc.port}",
                  "--destination-realm", REALM, timeout=30)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def wait_for(proc: EirProcess, imei: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        answer = s13(proc, imei)
        if answer.get("equipment_status") == status or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


def test_upload_then_s13_answers_the_new_status(tmp_path: Path) -> None:
    db = tmp_path / "eir.db"
    (tmp_path / "seed.csv").write_text(f"imei,list\n{WHITE},white\n")
    assert run_cli("registry", "import", "--quiet", "--db", str(db),
                   str(tmp_path / "seed.csv")).returncode == 0
    tokens = tmp_path / "tokens.toml"
    made = {}
    for name, role in (("alice", "ministry"), ("pol", "police")):
        res = run_cli("admin", "token", "--name", name, "--role", role, "--tokens-file",
                      str(tokens))
        assert res.returncode == 0, res.stderr
        made[role] = res.stdout.strip()
        assert made[role] not in tokens.read_text()  # only its hash is kept
    port = free_port()
    config = tmp_path / "eir.toml"
    config.write_text(f'[metrics]\nenabled = false\n[registry]\nreload_seconds = 0.2\n'
                      f'[admin]\nenabled = true\nlisten = "127.0.0.1:{port}"\n'
                      f'tokens_file = "{tokens}"\n')
    with EirProcess(db, config=config, origin_realm=REALM,
                    log_path=tmp_path / "eir.log") as proc:
        base = f"http://127.0.0.1:{port}"
        assert s13(proc, NEW_BLACK)["equipment_status"] != "BLACKLISTED"
        ministry = httpx.Client(base_url=base, timeout=30,
                                headers={"Authorization": f"Bearer {made['ministry']}"})
        with ministry:
            csv = f"imei,list,reason\n{NEW_BLACK},black,stolen\n"
            r = ministry.post("/api/v1/imports", content=csv.encode(),
                              headers={"content-type": "text/csv"})
            assert r.status_code == 202, r.text
            job = r.json()
            deadline = time.monotonic() + 30
            while job["state"] == "running" and time.monotonic() < deadline:
                time.sleep(0.05)
                job = ministry.get(r.headers["location"]).json()
            assert job["state"] == "done" and job["rows_done"] == 1, job
            answer = wait_for(proc, NEW_BLACK, "BLACKLISTED")
            assert answer["equipment_status"] == "BLACKLISTED", answer
            # the police block the white device; S13 answers it within the reload period
            with httpx.Client(base_url=base, timeout=30,
                              headers={"Authorization": f"Bearer {made['police']}"}) as police:
                r = police.post(f"/api/v1/entries/{WHITE}/report",
                                json={"reason": "stolen", "evidence": "case 77"})
                assert r.status_code == 200, r.text
                assert r.json()["entry"]["list"] == "black"
                assert police.get("/api/v1/audit").status_code == 403
            assert wait_for(proc, WHITE, "BLACKLISTED")["equipment_status"] == "BLACKLISTED"
            audit = ministry.get("/api/v1/audit").json()["items"]
            assert [(a["action"], a["actor"]) for a in audit[-2:]] == [
                ("import", "api:alice"), ("report-stolen", "api:pol")]
            assert ministry.get("/api/v1/audit/verify").json()["ok"] is True
            assert ministry.get("/api/v1/peers").status_code == 200
    assert "unexpected error" not in proc.log()
