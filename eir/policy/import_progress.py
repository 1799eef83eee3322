"""How far the import into a registry has come, in a small file beside it, for metrics.

Owns the sidecar file ``<registry>.import``: the state of the running or
last import into that registry (list CSVs, packages: everything that goes
through ``SqliteRegistry.import_rows``), as one JSON object:

    {"pid": 4242, "kind": "import", "actor": "ministry", "state": "running",
     "rows": 1230000, "started": 1764770000.5, "updated": 1764770042.1,
     "finished": null, "error": null,
     "previous": {"state": "done", "rows": 42, "finished": 1764700000.0}}

``state`` is ``running``, ``done`` or ``failed``; the times are Unix seconds;
``previous`` is the import before (how it ended), kept while one runs.
An import is one SQLite transaction, so a server cannot see its progress
in the database before it commits: the importer writes this file instead,
at its start, at most every ``EVERY`` seconds while rows are written, and
at its end. Written to a temporary name and renamed, so a reader sees one
state or the next, never half of one. A reader that finds ``running`` with
a ``pid`` that no longer exists reports the import as ``failed`` (the
importer was killed: its transaction rolled back). Writing the file never
fails an import: it is logged (at info) and the import goes on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("eir.policy")

EVERY = 0.5  # seconds between writes while rows are written
STATES = ("running", "done", "failed")


def path_for(db: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(db)}.import")


@dataclass
class ImportState:
    pid: int
    kind: str
    actor: str | None
    state: str
    rows: int
    started: float
    updated: float
    finished: float | None = None
    error: str | None = None
    previous: dict[str, Any] | None = None  # state, rows, finished of the one before

    def last_ended(self) -> tuple[str, int, float | None] | None:
        """(done or failed, rows, when) of the last import that ended, if any."""
        if self.state != "running":
            return self.state, self.rows, self.finished
        p = self.previous
        if not p or p.get("state") not in ("done", "failed"):
            return None
        return str(p["state"]), int(p.get("rows") or 0), p.get("finished")


class ProgressFile:
    """The writer: one per import."""

    def __init__(self, db: str | os.PathLike[str], kind: str, actor: str | None,
                 clock: Any = time.time) -> None:
        self.path = path_for(db)
        self._clock = clock
        now = clock()
        before = read(db)
        ended = before.last_ended() if before is not None else None
        previous = None if ended is None else dict(zip(("state", "rows", "finished"), ended,
                                                       strict=True))
        self.state = ImportState(os.getpid(), kind, actor, "running", 0, now, now,
                                 previous=previous)
        self._written = 0.0
        self._failed = False
        self._write()

    def rows(self, rows: int) -> None:
        """Rows written so far; the file is rewritten at most every ``EVERY`` seconds."""
        self.state.rows = rows
        now = self._clock()
        if now - self._written >= EVERY:
            self.state.updated = now
            self._write()

    def finish(self, rows: int | None, error: BaseException | None = None) -> None:
        s = self.state
        s.updated = s.finished = self._clock()
        if rows is not None:
            s.rows = rows
        s.state = "done" if error is None else "failed"
        s.error = None if error is None else (str(error) or type(error).__name__)[:500]
        self._write()

    def _write(self) -> None:
        self._written = self._clock()
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(asdict(self.state)))
            os.replace(tmp, self.path)
        except OSError as exc:
            if not self._failed:  # once per import; info: the import's own error (a full
                self._failed = True  # disk fails both) is the one line a person needs
                log.info("import progress file %s not written: %s", self.path, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()


def read(db: str | os.PathLike[str]) -> ImportState | None:
    """The state of the running or last import; None when there was none (or the file is
    unreadable). A running import whose process is gone is reported ``failed``."""
    try:
        data = json.loads(path_for(db).read_text())
        state = ImportState(**{k: data[k] for k in ImportState.__dataclass_fields__
                               if k in data})
    except (OSError, ValueError, TypeError):
        return None
    if state.state not in STATES:
        return None
    if state.state == "running" and not _alive(state.pid):
        state.state = "failed"
        state.error = f"the importing process (pid {state.pid}) is gone"
    return state


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    except (OSError, ValueError, OverflowError):
        return False
    return True
