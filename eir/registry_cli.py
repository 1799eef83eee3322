"""``eir registry import | export | show``: the registry commands a person runs.

Owns what the operator sees of provisioning: a progress bar for imports of
millions of rows, a one-line error naming the file, line and problem, and
JSON for ``show``. The work itself is ``eir.policy.csvio`` and the SQLite
registry; a failed import has changed nothing (one transaction).
"""

from __future__ import annotations

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
