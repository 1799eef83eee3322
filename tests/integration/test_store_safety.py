"""Crash safety of the store as the server sees it: a damaged registry file is not
served from, and a restore made while serving reaches the running server.

Real SQLite files under tmp_path; damage is real bytes overwritten in a page.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import damage_btree_page, import_text

from eir.app import EirApp
from eir.config import from_mapping
from eir.policy import sqlite_backup
from eir.policy.sqlite_backup import StoreError
from eir.registry_cli import restore_file
from testbed.eirproc import run_cli

FIRST = ("imei,list,reason,source\n35209900000000,white,registered,ministry\n"
         "35209900176148,white,registered,ministry\n")
SECOND = "imei,list,reason,source\n35209900176148,black,stolen,police\n"


async def test_the_server_refuses_a_damaged_registry_at_start(tmp_path: Path) -> None:
    db = tmp_path / "eir.db"
    await import_text(db, FIRST)
    damage_btree_page(db, "list_entry")
    cfg = from_mapping({"server": {"listen": "127.0.0.1:0"}, "registry": {"db": str(db)}})
    eir = EirApp(cfg)
    with pytest.raises(StoreError, match=r"damaged.*restore a backup"):
        await eir.start()
    await eir.stop()


async def test_a_running_server_reloads_a_restore(tmp_path: Path) -> None:
    db, dest = tmp_path / "eir.db", tmp_path / "backup.db"
    await import_text(db, FIRST)
    sqlite_backup.backup(db, dest)
    await import_text(db, SECOND)
    cfg = from_mapping({"server": {"listen": "127.0.0.1:0"},
                        "registry": {"db": str(db), "reload_seconds": 0.05}})
    eir = EirApp(cfg)
    await eir.start()
    try:
        assert eir.regime is not None
        assert eir.regime.check("35209900176148", None, None, "op").reason == "stolen"
        await restore_file(str(db), dest, "ops")
        for _ in range(200):
            if eir.regime.check("35209900176148", None, None, "op").reason != "stolen":
                break
            await asyncio.sleep(0.05)
        assert eir.regime.check("35209900176148", None, None, "op").reason == "registered"
    finally:
        await eir.stop()


def test_the_commands_an_operator_runs(tmp_path: Path) -> None:
    db, dest = tmp_path / "eir.db", tmp_path / "backup.db"
    csv = tmp_path / "first.csv"
    csv.write_text(FIRST)
    assert run_cli("registry", "import", "--db", str(db), str(csv)).returncode == 0
    ok = run_cli("registry", "check", "--db", str(db))
    assert ok.returncode == 0 and "intact" in ok.stderr, ok.stderr
    made = run_cli("registry", "backup", "--db", str(db), str(dest))
    assert made.returncode == 0 and "backed up" in made.stderr, made.stderr
    again = run_cli("registry", "backup", "--db", str(db), str(dest))
    assert again.returncode == 1 and again.stderr.count("\n") == 1, again.stderr
    assert "never overwrites" in again.stderr
    back = run_cli("registry", "restore", "--db", str(db), "--actor", "ops", str(dest))
    assert back.returncode == 0 and "restored" in back.stderr, back.stderr

    damage_btree_page(db, "list_entry")
    bad = run_cli("registry", "check", "--db", str(db))
    assert bad.returncode == 1 and "damaged" in bad.stderr.splitlines()[-1], bad.stderr
    served = run_cli("serve", "--db", str(db), "--listen", "127.0.0.1:0")
    assert served.returncode == 1 and "damaged" in served.stderr, served.stderr
    assert "Traceback" not in served.stderr
