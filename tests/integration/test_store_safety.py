"""Crash safety of the store as the server sees it: a damaged registry file is not
served from, and a restore made while serving reaches the running server.

Real SQLite files under tmp_path; damage is real bytes overwritten in a page.
"""

from __future__ import annotations

import asyncio
import io
import shlex
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import damage_btree_page, import_text

from eir.app import EirApp
from eir.config import from_mapping
from eir.policy import sqlite_backup
from eir.policy.csvio import import_csv
from eir.policy.sqlite import SqliteRegistry
from eir.policy.sqlite_backup import StoreError
from eir.registry_cli import restore_file
from testbed.eirproc import eir_command, run_cli

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


def _rows(n: int) -> str:
    return "imei,list,reason,source,note\n" + "".join(
        f"{35300000000000 + i * 7},white,registered,ministry,{'n' * 40}\n" for i in range(n))


async def test_a_full_database_refuses_the_import_and_keeps_the_old_state(
        tmp_path: Path) -> None:
    """SQLITE_FULL from a page limit: the error is the database's, nothing changes."""
    db = tmp_path / "eir.db"
    await import_text(db, FIRST)
    before = run_cli("registry", "export", "--db", str(db)).stdout
    reg = SqliteRegistry(db)
    await reg.open()
    try:
        pages = await reg._w().execute_fetchall("PRAGMA page_count")
        await reg._w().execute(f"PRAGMA max_page_count={next(iter(pages))[0] + 20}")
        with pytest.raises(sqlite3.OperationalError, match="full"):
            await import_csv(reg, io.BytesIO(_rows(20_000).encode()))
        await reg._w().execute("PRAGMA max_page_count=1073741823")
        await import_csv(reg, io.BytesIO(SECOND.encode()))  # still usable
    finally:
        await reg.close()
    after = run_cli("registry", "export", "--db", str(db)).stdout.splitlines()
    assert len(after) == len(before.splitlines())
    changed = [a for a, b in zip(after, before.splitlines(), strict=True) if a != b]
    assert len(changed) == 1 and changed[0].startswith("35209900176148,black,stolen")
    assert sqlite_backup.check(db) == []


_UNSHARE = shutil.which("unshare")


@pytest.mark.skipif(_UNSHARE is None, reason="needs unshare(1) for a private tmpfs")
def test_a_full_disk_during_import_gives_one_line_and_the_old_state(tmp_path: Path) -> None:
    """A real full file system: a 3 MB tmpfs in a private mount namespace."""
    seed, big = tmp_path / "first.csv", tmp_path / "big.csv"
    seed.write_text(FIRST)
    big.write_text(_rows(60_000))
    eir = " ".join(shlex.quote(a) for a in eir_command())
    small = tmp_path / "small"
    small.mkdir()
    script = f"""
        set -u
        mount -t tmpfs -o size=3m tmpfs {small} || exit 97
        db={small}/eir.db
        {eir} registry import --db $db {seed} 2>/dev/null || exit 98
        {eir} registry export --db $db > {tmp_path}/before.csv
        {eir} registry import --db $db {big} 2> {tmp_path}/err.txt
        echo $? > {tmp_path}/rc.txt
        {eir} registry export --db $db > {tmp_path}/after.csv
        {eir} registry check --db $db 2> {tmp_path}/check.txt
    """
    res = subprocess.run([str(_UNSHARE), "--user", "--map-root-user", "--mount", "sh", "-c",
                          script], capture_output=True, text=True, timeout=300)
    if res.returncode == 97:
        pytest.skip(f"no tmpfs in a user namespace here: {res.stderr.strip()}")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "rc.txt").read_text().strip() == "1"
    err = (tmp_path / "err.txt").read_text()
    assert err.count("\n") == 1 and "full" in err and "nothing was imported" in err, err
    assert (tmp_path / "after.csv").read_text() == (tmp_path / "before.csv").read_text()
    assert "intact" in (tmp_path / "check.txt").read_text()
