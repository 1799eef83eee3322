"""``eir registry import | export | check | backup | restore``: registry commands.

Owns what the operator sees of provisioning: a progress bar for imports of
millions of rows, a one-line error naming the file, line and problem, and
JSON for ``show``. The work itself is ``eir.policy.csvio`` and the SQLite
registry; a failed import has changed nothing (one transaction).
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from eir.policy import sqlite_backup
from eir.policy.csvio import CsvImportError, export_csv, import_csv
from eir.policy.registry import RowError
from eir.policy.sqlite import SqliteRegistry


@contextmanager
def row_progress(label: str, *, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """A rows-done callback: a live counter on a terminal, else a line every 5 s."""
    tty = enabled and sys.stderr.isatty()
    bar = Progress(TextColumn(f"{label}"), TextColumn("{task.fields[rows]:,} rows"),
                   TimeElapsedColumn(), transient=True, disable=not tty)
    task = bar.add_task(label, total=None, rows=0)
    last = [time.perf_counter()]

    def report(rows: int) -> None:
        bar.update(task, rows=rows)
        now = time.perf_counter()
        if enabled and not tty and now - last[0] >= 5:
            last[0] = now
            print(f"eir: {label}: {rows:,} rows", file=sys.stderr)

    with bar:
        yield report


def _fail(message: str) -> int:
    print(f"eir: {message}", file=sys.stderr)
    return 1


async def import_file(db: str, path: Path, *, progress: bool = True,
                      **options: Any) -> int:
    """Import a list CSV; ``options`` go to the registry (actor, replace_source, ...)."""
    if not path.is_file():
        return _fail(f"{path}: no such file")
    registry = SqliteRegistry(db)
    t0 = time.perf_counter()
    tty = progress and sys.stderr.isatty()
    bar = Progress(TextColumn("importing {task.description}"), BarColumn(), TaskProgressColumn(),
                   TextColumn("{task.fields[rows]:,} rows"), TimeElapsedColumn(),
                   TimeRemainingColumn(), transient=True, disable=not tty)
    task = bar.add_task(path.name, total=path.stat().st_size or None, rows=0)
    last = [t0]

    def report(rows: int, done: int, total: int | None) -> None:
        bar.update(task, completed=done, total=total, rows=rows)
        now = time.perf_counter()
        if progress and not tty and now - last[0] >= 5:
            # no terminal (a log file, CI): a line every 5 s instead of a bar
            last[0] = now
            pct = f" ({100 * done / total:.0f}%)" if total else ""
            print(f"eir: importing {path.name}: {rows:,} rows{pct}", file=sys.stderr)

    try:
        await registry.open()
        with bar:
            result = await import_csv(registry, path, progress=report, **options)
    except (CsvImportError, RowError) as exc:
        return _fail(f"{path}: {exc}; nothing was imported")
    except (OSError, UnicodeDecodeError) as exc:
        return _fail(f"{path}: {exc}; nothing was imported")
    except sqlite3.Error as exc:  # SQLITE_FULL: "database or disk is full", ...
        return _fail(f"{path}: the registry database {db} refused the import ({exc}); "
                     "nothing was imported")
    finally:
        await registry.close()
    took = time.perf_counter() - t0
    mix = ", ".join(f"{k} {v:,}" for k, v in sorted(result.by_list.items()))
    extra = "".join(f", {n:,} {what}" for n, what in ((result.removed, "removed"),
                                                     (result.skipped, "skipped: another "
                                                      "source's entry")) if n)
    print(f"eir: imported {result.rows:,} rows from {path} into {db} in {took:.1f} s "
          f"({mix}{extra}); registry version {result.version}", file=sys.stderr)
    return 0


async def export_file(db: str, path: Path | None) -> int:
    if not Path(db).is_file():
        return _fail(f"{db}: no such registry")
    registry = SqliteRegistry(db)
    try:
        await registry.open()
        n = await export_csv(registry, path if path is not None else sys.stdout)
    finally:
        await registry.close()
    if path is not None:
        print(f"eir: exported {n:,} rows to {path}", file=sys.stderr)
    return 0


def _describe(f: sqlite_backup.FileFacts) -> str:
    return (f"version {f.version}, {f.entries:,} entries, schema {f.schema_version}, "
            f"audit head {(f.audit_head or '-')[:16]}, {f.bytes / 1e6:,.1f} MB")


async def check_file(db: str, *, full: bool = False) -> int:
    """``eir registry check``: 0 when the file is intact, 1 with the first problems."""
    path = Path(db)
    t0 = time.perf_counter()
    problems = await asyncio.to_thread(sqlite_backup.check, path, full=full)
    took = time.perf_counter() - t0
    if problems:
        for p in problems[:10]:
            print(f"eir: {path}: {p}", file=sys.stderr)
        return _fail(f"{path}: damaged ({len(problems)} problem(s) found by "
                     f"{'integrity_check' if full else 'quick_check'} in {took:.1f} s); "
                     "restore a backup (eir registry restore)")
    f = await asyncio.to_thread(sqlite_backup.facts, path)
    print(f"eir: {path}: intact ({'integrity_check' if full else 'quick_check'} in {took:.1f} s);"
          f" {_describe(f)}", file=sys.stderr)
    return 0


async def backup_file(db: str, dest: Path) -> int:
    """``eir registry backup``: a consistent copy of the live registry, servers running."""
    t0 = time.perf_counter()
    f = await asyncio.to_thread(sqlite_backup.backup, Path(db), dest)
    print(f"eir: backed up {db} to {dest} in {time.perf_counter() - t0:.1f} s: {_describe(f)}",
          file=sys.stderr)
    return 0


async def restore_file(db: str, source: Path, actor: str | None) -> int:
    """``eir registry restore``: the live registry becomes the backup, audited."""
    if not Path(db).is_file():
        return _fail(f"{db}: no such registry (copy the backup into place instead)")
    registry = SqliteRegistry(db)
    try:
        await registry.open()  # the live file is a registry at a schema this code knows
        known = await registry.schema_version()
    finally:
        await registry.close()
    t0 = time.perf_counter()
    got, before = await asyncio.to_thread(sqlite_backup.restore, source, Path(db), known)
    registry = SqliteRegistry(db)
    try:
        await registry.open()  # migrates a backup taken at an older schema
        async with registry.change("restore", actor=actor) as ch:
            ch.summary = {"source": str(source), "restored_version": got.version,
                          "replaced_version": before, "entries": got.entries,
                          "audit_head": got.audit_head}
        now = await registry.current_version()
    finally:
        await registry.close()
    print(f"eir: restored {db} from {source} in {time.perf_counter() - t0:.1f} s: "
          f"{_describe(got)}; registry version {now} (was {before}); servers reload it",
          file=sys.stderr)
    return 0
