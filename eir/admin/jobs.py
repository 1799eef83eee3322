"""List imports uploaded to the admin API, run as background jobs of the node, and their progress.

Owns the job: the uploaded CSV (spooled to a temporary file beside the
registry while it is received), one `eir.policy.csvio.import_csv` over it —
the function ``eir registry import`` runs, so the format, the validation, the
one transaction and the audit record are the same — and what a caller polls:
state, rows and bytes done, the result, or the error as a problem naming the
line and the field. The registry writes ``<db>.import`` as for every import
(`eir.policy.import_progress`), so ``eir status`` and the metrics see it too.

One import at a time: the registry writes under one lock, so a second upload
would only wait holding a file; it is refused with 503 and Retry-After
instead. Jobs are kept in memory (the last `KEEP`); a restart forgets them,
the audit trail does not. The parsing runs in a thread
(`eir.policy.import_batches`), but it shares the GIL with the S13 loop of
this process: a very large list is best imported with ``eir registry
import`` in a process of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from eir.policy.csvio import COLUMNS, import_csv
from eir.policy.model import from_epoch
from eir.policy.registry import RowError
from eir.policy.sqlite import SqliteRegistry

log = logging.getLogger("eir.admin")

__all__ = ["Job", "Jobs", "row_field", "row_problem"]

KEEP: Final = 100

# the words a csvio / registry row error starts with, and the column they are about
_FIELD_WORDS: Final = {"imei": "imei", "range": "imei", "list": "list", "op": "op", "sv": "sv",
                       "imsi": "imsi", "reason": "reason", "source": "source",
                       "evidence": "evidence", "note": "note", "since:": "since",
                       "grace_until": "grace_until", "grace_until:": "grace_until",
                       "an": "imsi", "column": "header", "unknown": "header",
                       "missing": "header", "empty": "header", "expected": "fields",
                       "duplicate": "imei", "exception": "imsi", "not": "encoding",
                       "bad": "csv"}


def row_field(message: str) -> str:
    """The column (or "header", "csv", ...) a row error's message is about."""
    first = message.split(" ", 1)[0].lower()
    if first in COLUMNS:
        return first
    return _FIELD_WORDS.get(first, "csv")


def row_problem(exc: RowError) -> dict[str, Any]:
    """A problem document (as a dict) for a rejected file: line and field named."""
    where = f"line {exc.line}" if exc.line else "file"
    return {"type": "about:blank", "title": "Unprocessable Content", "status": 422,
            "detail": f"{where}: {exc.message}; nothing was imported",
            "invalidParams": [{"param": f"line {exc.line}: {row_field(exc.message)}",
                               "reason": exc.message}]}


@dataclass
class Job:
    id: str
    actor: str
    path: Path
    options: dict[str, Any]
    bytes_total: int
    created: float = field(default_factory=time.time)
    state: str = "running"
    finished: float | None = None
    rows_done: int = 0
    bytes_done: int = 0
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    task: asyncio.Task[None] | None = None

    def view(self) -> dict[str, Any]:
        total = self.bytes_total
        done = total if self.state == "done" else self.bytes_done
        shown = {k: v for k, v in self.options.items() if k != "actor"}
        if "list_version" in shown:
            lv = shown["list_version"]
            shown["list_version"] = {"source": lv.source, "version": lv.version, "kind": lv.kind}
        return {"id": self.id, "state": self.state, "actor": self.actor,
                "created": from_epoch(int(self.created)),
                "finished": from_epoch(int(self.finished)) if self.finished else None,
                "rows_done": self.rows_done, "bytes_done": done, "bytes_total": total,
                "percent": round(100.0 * done / total, 1) if total else 100.0,
                "options": shown, "result": self.result, "error": self.error}


class Jobs:
    """The node's import jobs (module docstring)."""

    def __init__(self, registry: SqliteRegistry) -> None:
        self.registry = registry
        self.jobs: dict[str, Job] = {}

    @property
    def running(self) -> Job | None:
        return next((j for j in self.jobs.values() if j.state == "running"), None)

    def spool_path(self) -> Path:
        """Where an upload is received (beside the registry: same disk, same permissions)."""
        return self.registry.path.with_name(
            f".{self.registry.path.name}.upload.{secrets.token_hex(8)}.csv")

    def start(self, path: Path, actor: str, options: dict[str, Any]) -> Job:
        job = Job(secrets.token_hex(8), actor, path, options, path.stat().st_size)
        self.jobs[job.id] = job
        for old in list(self.jobs)[:-KEEP]:
            del self.jobs[old]
        job.task = asyncio.create_task(self._run(job), name=f"admin-import-{job.id}")
        return job

    async def _run(self, job: Job) -> None:
        def progress(rows: int, done: int, _total: int | None) -> None:
            job.rows_done, job.bytes_done = rows, done

        t0 = time.perf_counter()
        try:
            result = await import_csv(self.registry, job.path, progress=progress, **job.options)
        except RowError as exc:  # CsvImportError included: a bad row, a duplicate
            job.state, job.error = "failed", row_problem(exc)
        except (OSError, UnicodeDecodeError, sqlite3.Error) as exc:
            job.state = "failed"
            job.error = {"type": "about:blank", "title": "Service Unavailable", "status": 503,
                         "detail": f"the registry refused the import ({exc}); nothing was "
                                   "imported"}
        except asyncio.CancelledError:
            job.state = "failed"
            job.error = {"type": "about:blank", "title": "Service Unavailable", "status": 503,
                         "detail": "the node stopped during the import; nothing was imported"}
            raise
        else:
            job.state = "done"
            job.rows_done = result.rows + result.removed
            job.result = {"rows": result.rows, "by_list": dict(sorted(result.by_list.items())),
                          "removed": result.removed, "skipped": result.skipped,
                          "registry_version": result.version,
                          "seconds": round(time.perf_counter() - t0, 3)}
            log.info("admin: import %s by %s: %d rows, registry version %d", job.id, job.actor,
                     job.rows_done, result.version)
        finally:
            job.finished = time.time()
            with contextlib.suppress(OSError):
                job.path.unlink()
        if job.error is not None:
            log.warning("admin: import %s by %s failed: %s", job.id, job.actor,
                        job.error["detail"])

    async def close(self) -> None:
        """Cancel what runs (its transaction rolls back) and remove its file."""
        for job in self.jobs.values():
            if job.task is not None and not job.task.done():
                job.task.cancel()
                with contextlib.suppress(BaseException):
                    await job.task

