"""eir.policy.sqlite_backup: integrity check, online backup and audited restore.

Real SQLite files under tmp_path; damage is real bytes overwritten in a page.
"""

from __future__ import annotations

import io
import json
import sqlite3
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import damage_btree_page, import_text

from eir.policy import sqlite_backup
from eir.policy.csvio import export_csv
from eir.policy.sqlite import SqliteRegistry
from eir.policy.sqlite_backup import StoreError
from eir.registry_cli import restore_file

FIRST = "imei,list,reason,source\n" + "".join(
    f"{35209900000000 + i},white,registered,ministry\n" for i in range(2000))
SECOND = "imei,list,reason,source\n35209900176148,black,stolen,police\n"


async def _export(db: Path) -> str:
    out = io.StringIO(newline="")
    async with SqliteRegistry(db) as reg:
        await export_csv(reg, out)
    return out.getvalue()


async def test_check_finds_damage_and_passes_an_intact_file(tmp_path: Path) -> None:
    db = tmp_path / "eir.db"
    await import_text(db, FIRST)
    assert sqlite_backup.check(db) == []
    assert sqlite_backup.check(db, full=True) == []
    damage_btree_page(db, "list_entry")
    assert sqlite_backup.check(db) != []
    not_db = tmp_path / "notes.txt"
    not_db.write_text("hello " * 2000)
    assert sqlite_backup.check(not_db) != []
    with pytest.raises(StoreError, match="no such file"):
        sqlite_backup.check(tmp_path / "missing.db")


async def test_backup_is_a_checked_copy_and_never_overwrites(tmp_path: Path) -> None:
    db, dest = tmp_path / "eir.db", tmp_path / "backup.db"
    await import_text(db, FIRST)
    live = sqlite_backup.facts(db)
    got = sqlite_backup.backup(db, dest)
    assert (got.version, got.entries, got.audit_head) == (live.version, 2000, live.audit_head)
    assert got.audit_head is not None
    assert not dest.with_name("backup.db.tmp").exists()
    assert await _export(dest) == await _export(db)
    with pytest.raises(StoreError, match="never overwrites"):
        sqlite_backup.backup(db, dest)
    with pytest.raises(StoreError, match="no such directory"):
        sqlite_backup.backup(db, tmp_path / "nope" / "b.db")


async def test_restore_brings_back_the_backup_and_is_audited(tmp_path: Path) -> None:
    db, dest = tmp_path / "eir.db", tmp_path / "backup.db"
    await import_text(db, FIRST)
    sqlite_backup.backup(db, dest)
    at_backup = await _export(db)
    await import_text(db, SECOND)
    assert await _export(db) != at_backup
    before = sqlite_backup.facts(db).version

    assert await restore_file(str(db), dest, "ops") == 0
    assert await _export(db) == at_backup
    async with SqliteRegistry(db) as reg:
        assert await reg.current_version() == before + 1  # past every version served
        assert (await reg.verify_audit()).ok
        last = [r async for r in reg.audit_records()][-1]
        assert (last.kind, last.actor) == ("restore", "ops")
        assert last.summary is not None
        assert json.loads(last.summary)["replaced_version"] == before


async def test_restore_refuses_a_damaged_or_newer_source_and_changes_nothing(
        tmp_path: Path) -> None:
    db = tmp_path / "eir.db"
    await import_text(db, FIRST)
    before = await _export(db)
    damaged = tmp_path / "damaged.db"
    sqlite_backup.backup(db, damaged)
    damage_btree_page(damaged, "list_entry")
    with pytest.raises(StoreError, match="damaged, not restored"):
        await restore_file(str(db), damaged, "ops")
    newer = tmp_path / "newer.db"
    sqlite_backup.backup(db, newer)
    with sqlite3.connect(newer) as conn:
        conn.execute("INSERT INTO schema_version VALUES (999, '0999_future.sql', 'x')")
    with pytest.raises(StoreError, match="newer than this code"):
        await restore_file(str(db), newer, "ops")
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(StoreError, match="not a registry database"):
        await restore_file(str(db), other, "ops")
    assert await _export(db) == before


async def test_newer_schema_is_a_store_error_with_advice(tmp_path: Path) -> None:
    db = tmp_path / "eir.db"
    await import_text(db, FIRST)
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO schema_version VALUES (999, '0999_future.sql', 'x')")
    reg = SqliteRegistry(db)
    with pytest.raises(StoreError, match=r"newer than this code.*restore a backup"):
        await reg.open()
    await reg.close()
