"""The access log of the admin API: who read personal data (IMSIs, observations), and when.

Owns one JSON line per read that returned or asked about subscribers
(``admin.access_log``, default ``<registry>.access.log``)::

    {"at": "2026-12-03T18:00:00Z", "actor": "api:op-a", "role": "operator",
     "method": "GET", "path": "/api/v1/entries/35332510123456",
     "imei": "35332510123456", "imsis": 2, "what": "entry"}

Why a log of its own and not the audit trail: the audit trail is the list
change log, and its last sequence number *is* the registry version every
running server polls (DESIGN.md 7): a record per read would make every
server reload its snapshot after each look-up, and reads outnumber changes
by far. The access log is append-only, written and flushed before the
answer leaves (a read that cannot be logged is refused: 503), and holds no
IMSI itself, only how many were shown: it must not become a second copy of
the personal data it watches over.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from eir.admin.auth import Caller
from eir.policy.model import from_epoch

__all__ = ["AccessLog"]


class AccessLog:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file: TextIO | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8")

    def record(self, caller: Caller, method: str, path: str, what: str, *,
               imei: str | None = None, imsis: int = 0, **extra: Any) -> None:
        """Append one line and flush it; OSError when it cannot be written."""
        if self._file is None:
            raise OSError(f"{self.path}: the access log is not open")
        line = json.dumps({"at": from_epoch(int(time.time())), "actor": caller.actor,
                           "role": caller.role.value, "method": method, "path": path,
                           "imei": imei, "imsis": imsis, "what": what, **extra},
                          separators=(",", ":"))
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
