"""The node's secret key for pseudonyms in logs (issue 6: IMSIs and IMEIs not in clear).

Owns one file of 32 random bytes, readable by its owner only, made on first
use and then read as it is: logs keyed with it show the same pseudonym for
the same device across restarts. Nodes that should correlate their logs
share the file; a leaked log without the key reveals no identity (a
keyed hash cannot be tested against guessed IMSIs or IMEIs).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["KEY_BYTES", "LogKeyError", "load_or_create"]

KEY_BYTES = 32


class LogKeyError(RuntimeError):
    """The key file cannot be used; the message says why."""


def load_or_create(path: Path) -> bytes:
    """The key in ``path``, made there first if there is none (mode 0600)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise LogKeyError(f"log key {path}: cannot be created: {exc.strerror}") from None
    else:
        # O_EXCL: of two processes starting at once, one writes and both read it
        try:
            os.write(fd, os.urandom(KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise LogKeyError(f"log key {path}: cannot be read: {exc.strerror}") from None
    if len(key) < 16:
        raise LogKeyError(f"log key {path}: {len(key)} bytes, at least 16 needed (delete it to "
                          "make a new one; pseudonyms in older logs then no longer match)")
    return key
