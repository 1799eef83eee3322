"""eir.policy.snapshot_file: the snapshot kept beside the registry, used only when current.

Real SQLite files under tmp_path. The property that matters: a load with the
file gives exactly the snapshot a full read gives (same digest), after every
kind of change, and a file that is stale, damaged or foreign is never used.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from eir.policy import lifecycle, snapshot_file
from eir.policy.csvio import import_csv
from eir.policy.sqlite import ListVersion, SqliteRegistry
from eir.policy.sqlite_regime import SqliteObservations

SEED = "\n".join((
    "imei,list,reason,imsi,source,grace_until",
    "35209900176148,black,stolen,,police,",
    "49015420323751,grey,,,ministry,2025-08-01T00:00:00Z",
    "260531793113837,white,legalised,,ministry,",
    "35209900176148,exception,,250011234567890,police,",
    "352099001761400-352099001761499,white,registered,,operator,",
)) + "\n"


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[SqliteRegistry]:
    reg = SqliteRegistry(tmp_path / "eir.db")
    await reg.open()
    await import_csv(reg, io.BytesIO(SEED.encode()), actor="test")
    await SqliteObservations(reg).import_tac([(35209900, "Acme", "One", "smartphone"),
                                              (86768803, "Acme", "Two", "m2m")], actor="test")
    yield reg
    await reg.close()


async def assert_file_load_is_a_full_read(reg: SqliteRegistry) -> None:
    via_file = await reg.load_snapshot(use_file=True)
    full = await reg.load_snapshot()
    assert via_file.version == full.version
    assert via_file.digest() == full.digest()
    assert via_file.list_versions == full.list_versions
    assert via_file.tac.lookup(35209900) == full.tac.lookup(35209900) is not None


async def test_the_second_load_comes_from_the_file(registry: SqliteRegistry,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    first = await registry.load_snapshot(use_file=True)
    path = snapshot_file.path_for(registry.path)
    assert path.exists()

    async def no_scan() -> object:
        raise AssertionError("the registry was scanned although the file is current")
    monkeypatch.setattr(registry, "_read_snapshot", no_scan)
    again = await registry.load_snapshot(use_file=True)
    assert again.digest() == first.digest() and again.version == first.version
    entry, paired = again.lookup("35209900176148", "250011234567890")
    assert entry is not None and entry.reason == "stolen" and paired
    assert again.ranges is not None and again.ranges.find(35209900176145, None) is not None
    assert again.parts().grace_until.get(49015420323751) is not None


async def test_every_kind_of_change_makes_the_file_stale(registry: SqliteRegistry) -> None:
    await assert_file_load_is_a_full_read(registry)
    changes = [
        lambda: import_csv(registry, io.BytesIO(b"imei,list\n11111111111111,white\n"),
                           actor="t"),
        lambda: lifecycle.report(registry, "260531793113837", reason="lost", evidence="c9",
                                 actor="t"),
        lambda: lifecycle.add_exception(registry, "35209900176148", "250011234567891",
                                        evidence="e", actor="t"),
        lambda: SqliteObservations(registry).import_tac([(35209900, "Acme", "One", "m2m")],
                                                        actor="t"),
        lambda: import_csv(registry, io.BytesIO(b"imei,list,source\n22222222222222,black,m\n"),
                           actor="t", replace_source="m",
                           list_version=ListVersion("m", 9, "full")),
    ]
    for change in changes:
        before = (await registry.load_snapshot(use_file=True)).digest()
        await change()
        await assert_file_load_is_a_full_read(registry)
        assert (await registry.load_snapshot(use_file=True)).digest() != before


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["body", "truncated", "magic", "empty", "header"])
async def test_a_damaged_file_is_read_past_and_rewritten(
        registry: SqliteRegistry, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    good = await registry.load_snapshot(use_file=True)
    path = snapshot_file.path_for(registry.path)
    if damage == "body":
        _flip(path, path.stat().st_size - 3)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-10])
    elif damage == "magic":
        _flip(path, 0)
    elif damage == "header":  # valid JSON, not an object: still never a crash
        head = b"[1]"
        path.write_bytes(snapshot_file.MAGIC + len(head).to_bytes(8, "little") + head
                         + hashlib.sha256(head).digest())
    else:
        path.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="eir.policy"):
        again = await registry.load_snapshot(use_file=True)
    assert again.digest() == good.digest()
    assert "not used" in caplog.text
    assert snapshot_file.load(path, await registry.snapshot_key()) is not None  # rewritten


async def test_a_rebuilt_registry_does_not_take_the_old_file(tmp_path: Path) -> None:
    """Same change count, other content: the key is the audit chain's head, not the count."""
    db = tmp_path / "eir.db"
    for list_ in ("white", "black"):
        for leftover in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            leftover.unlink(missing_ok=True)
        reg = SqliteRegistry(db)
        await reg.open()
        try:
            await import_csv(reg, io.BytesIO(f"imei,list\n11111111111111,{list_}\n".encode()),
                             actor="t")
            snap = await reg.load_snapshot(use_file=True)
            entry, _ = snap.lookup("11111111111111")
            assert entry is not None and entry.list.value == list_
        finally:
            await reg.close()


async def test_an_unwritable_place_only_costs_the_file(
        registry: SqliteRegistry, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    def refuse(*_: object) -> None:
        raise PermissionError("read-only file system")
    monkeypatch.setattr(snapshot_file, "save", refuse)
    with caplog.at_level(logging.WARNING, logger="eir.policy"):
        snap = await registry.load_snapshot(use_file=True)
    assert snap.entry_count > 0 and "not written" in caplog.text
    assert not snapshot_file.path_for(registry.path).exists()


async def test_the_file_takes_the_registry_mode_and_orphans_go(registry: SqliteRegistry) -> None:
    registry.path.chmod(0o640)
    path = snapshot_file.path_for(registry.path)
    orphan = path.with_name(f"{path.name}.999999999.abc.tmp")  # a writer long gone
    orphan.write_bytes(b"half a file")
    await registry.rebuild_snapshot_file()
    assert path.stat().st_mode & 0o777 == 0o640
    assert not orphan.exists()
    assert not list(path.parent.glob(f"{path.name}.*.tmp"))


async def test_a_worker_that_does_not_write_leaves_the_file_alone(
        registry: SqliteRegistry) -> None:
    snap = await registry.load_snapshot(use_file=True, write_file=False)
    assert snap.entry_count > 0
    assert not snapshot_file.path_for(registry.path).exists()
