"""eir.policy.import_progress: the <db>.import file an import writes and a server reads."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from eir.policy import import_progress
from eir.policy.model import ListName
from eir.policy.registry import EntryRow, RowError
from eir.policy.sqlite import SqliteRegistry


def test_a_running_import_then_its_end(tmp_path: Path) -> None:
    db = tmp_path / "eir.db"
    assert import_progress.read(db) is None
    now = [100.0]
    p = import_progress.ProgressFile(db, "import", "ministry", clock=lambda: now[0])
    got = import_progress.read(db)
    assert got is not None and (got.state, got.rows, got.pid) == ("running", 0, os.getpid())
    p.rows(10)  # within EVERY of the last write: not written yet
    assert import_progress.read(db).rows == 0  # type: ignore[union-attr]
    now[0] += import_progress.EVERY
    p.rows(20)
    got = import_progress.read(db)
    assert got is not None and (got.rows, got.updated) == (20, 100.0 + import_progress.EVERY)
    p.finish(25)
    got = import_progress.read(db)
    assert got is not None and (got.state, got.rows, got.error) == ("done", 25, None)
    assert got.finished == got.updated
    assert not list(tmp_path.glob("*.tmp"))
    assert got.last_ended() == ("done", 25, got.finished)
    # the next import remembers how this one ended while it runs
    nxt = import_progress.ProgressFile(db, "package-delta", None, clock=lambda: now[0] + 9)
    running = import_progress.read(db)
    assert running is not None and running.state == "running"
    assert running.last_ended() == ("done", 25, got.finished)
    nxt.finish(None, RuntimeError("disk full"))
    ended = import_progress.read(db)
    assert ended is not None and ended.last_ended() == ("failed", 0, now[0] + 9)
    assert ended.error == "disk full"


def test_an_importer_that_died_is_reported_failed(tmp_path: Path) -> None:
    db = tmp_path / "eir.db"
    code = ("import sys; from eir.policy.import_progress import ProgressFile; "
            "ProgressFile(sys.argv[1], 'import', None)")
    subprocess.run([sys.executable, "-c", code, str(db)], check=True, timeout=60)
    got = import_progress.read(db)
    assert got is not None and got.state == "failed"
    assert got.error is not None and "is gone" in got.error


def test_unreadable_files_are_no_import(tmp_path: Path) -> None:
    db = tmp_path / "eir.db"
    for text in ("", "{", '{"state": "odd"}', "[]", json.dumps({"pid": 1})):
        import_progress.path_for(db).write_text(text)
        assert import_progress.read(db) is None, text


def test_a_file_that_cannot_be_written_does_not_fail_the_import(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "gone" / "eir.db"  # no such directory
    with caplog.at_level(logging.INFO, logger="eir.policy"):
        p = import_progress.ProgressFile(db, "import", None)
        p.finish(1)
    assert sum("not written" in r.getMessage() for r in caplog.records) == 1


async def test_the_registry_reports_every_import(tmp_path: Path) -> None:
    db = tmp_path / "eir.db"

    def rows(n: int, bad_at: int | None = None) -> Iterator[EntryRow]:
        for i in range(n):
            if i == bad_at:
                raise RowError(i + 2, "bad row")
            yield EntryRow(f"{35000000000000 + i}", ListName.BLACK, "stolen", source="police",
                           line=i + 2)

    seen: list[int] = []
    async with SqliteRegistry(db, chunk_size=100) as reg:
        await reg.import_rows(rows(250), actor="t", on_chunk=seen.append)
        got = import_progress.read(db)
        assert got is not None and (got.state, got.rows, got.kind, got.actor) == (
            "done", 250, "import", "t")
        assert seen and seen[-1] == 250  # the caller's callback still gets every chunk
        with pytest.raises(RowError):
            await reg.import_rows(rows(250, bad_at=150), kind="package-full")
        got = import_progress.read(db)
        assert got is not None and (got.state, got.kind) == ("failed", "package-full")
        assert got.error == "line 152: bad row"
