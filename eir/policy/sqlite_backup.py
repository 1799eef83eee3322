"""Integrity check, online backup and restore of the SQLite registry file.

Owns the registry file as a whole (issue 6, crash safety): ``PRAGMA
quick_check`` / ``integrity_check`` at start and on demand, a consistent copy
taken while servers run (SQLite's online backup API: one read transaction,
so the copy is the registry at one change-log version), and a restore that
replaces the live content the same way while servers keep answering from
their snapshots.

A backup is written to ``DEST.tmp``, checked, flushed to disk and only then
renamed to ``DEST``: a crash leaves either no backup or a whole one. A
restore first checks the source (a SQLite registry, intact, a schema this
code knows), then copies it over the live database in one write
transaction; a reader sees the old registry or the restored one, never a
mix. The restored change log is moved past every version servers have
seen, so each of them reloads (eir/app.py compares versions for equality).

Everything here is synchronous sqlite3, run by the caller in a thread.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FileFacts", "StoreError", "backup", "check", "facts", "restore"]


class StoreError(RuntimeError):
    """The registry file cannot be used as it is; the message says why."""


@dataclass(frozen=True, slots=True)
class FileFacts:
    """What a registry file holds, for the operator to compare copies by."""

    path: Path
    schema_version: int
    version: int  # MAX(change_log.seq)
    entries: int
    audit_head: str | None  # the hash of the last audit record
    bytes: int


def _connect_ro(path: Path, busy_ms: int = 5000) -> sqlite3.Connection:
    if not path.is_file():
        raise StoreError(f"{path}: no such file")
    try:
        conn = sqlite3.connect(path.absolute().as_uri() + "?mode=ro", uri=True,
                               isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout={busy_ms}")
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot be opened: {exc}") from None
    return conn


def check(path: Path, *, full: bool = False) -> list[str]:
    """The problems ``PRAGMA quick_check`` (or ``integrity_check``) finds; [] when intact.

    quick_check reads every page and checks the B-tree structure, but not
    that each index agrees with its table (integrity_check does, far slower).
    """
    conn = _connect_ro(path)
    try:
        rows = conn.execute("PRAGMA integrity_check" if full else "PRAGMA quick_check")
        # One problem a line, whichever way SQLite packs them into rows.
        problems = [line.strip() for r in rows.fetchall() for line in str(r[0]).splitlines()
                    if line.strip() and not line.startswith("*** in database")]
    except sqlite3.OperationalError as exc:  # locked, busy, cannot open: not damage
        raise StoreError(f"{path}: cannot be checked: {exc}") from None
    except sqlite3.DatabaseError as exc:  # "file is not a database", a torn header
        return [str(exc)]
    finally:
        conn.close()
    return [] if problems == ["ok"] else problems


def facts(path: Path) -> FileFacts:
    conn = _connect_ro(path)
    try:
        conn.execute("BEGIN")
        return _facts(conn, path)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path}: not a registry database: {exc}") from None
    finally:
        conn.close()


def _facts(conn: sqlite3.Connection, path: Path) -> FileFacts:
    def one(sql: str) -> Any:
        row = conn.execute(sql).fetchone()
        return None if row is None else row[0]

    has = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    missing = {"schema_version", "change_log", "list_entry"} - has
    if missing:
        raise StoreError(f"{path}: not a registry database (no table {', '.join(sorted(missing))})")
    head = one("SELECT hash FROM change_log WHERE hash IS NOT NULL ORDER BY seq DESC LIMIT 1") \
        if "hash" in {r[1] for r in conn.execute("PRAGMA table_info(change_log)")} else None
    return FileFacts(path, int(one("SELECT COALESCE(MAX(version), 0) FROM schema_version") or 0),
                     int(one("SELECT COALESCE(MAX(seq), 0) FROM change_log") or 0),
                     int(one("SELECT COUNT(*) FROM list_entry") or 0),
                     None if head is None else str(head), path.stat().st_size)


def backup(source: Path, dest: Path) -> FileFacts:
    """Copy the live registry ``source`` to the new file ``dest``; the copy's facts.

    Never overwrites: ``dest`` must not exist. The copy is quick-checked
    before it takes its name.
    """
    if dest.exists():
        raise StoreError(f"{dest} exists: a backup never overwrites a file, choose another name")
    if not dest.parent.is_dir():
        raise StoreError(f"{dest.parent}: no such directory")
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.unlink(missing_ok=True)
    src = _connect_ro(source)
    try:
        out = sqlite3.connect(tmp, isolation_level=None)
        try:
            src.backup(out)  # one step: one read transaction, one version
            # A single-file copy: the journal mode is the header's, and the
            # restore or the next open switches it back to WAL.
            out.execute("PRAGMA journal_mode=DELETE")
        finally:
            out.close()
    except sqlite3.Error as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"backup of {source} failed: {exc}") from None
    finally:
        src.close()
    problems = check(tmp)
    if problems:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"backup of {source} failed its check: {problems[0]}")
    _fsync(tmp)
    os.replace(tmp, dest)
    _fsync(dest.parent)
    return facts(dest)


def restore(source: Path, live: Path, known_schema: int, busy_ms: int = 30_000) -> tuple[
        FileFacts, int]:
    """Replace the live registry's content with the backup ``source``.

    Returns the source's facts and the live version before the restore; the
    restored change log continues after that version. The caller then
    records the restore in the audit trail (its seq is then past every
    version a server has loaded).
    """
    problems = check(source)
    if problems:
        raise StoreError(f"{source} is damaged, not restored: {problems[0]}")
    got = facts(source)
    if got.schema_version > known_schema:
        raise StoreError(f"{source} has schema version {got.schema_version}, newer than this "
                         f"code ({known_schema}): not restored")
    src = _connect_ro(source)
    try:
        dst = sqlite3.connect(live, isolation_level=None)
        try:
            dst.execute(f"PRAGMA busy_timeout={busy_ms}")
            before = int(dst.execute("SELECT COALESCE(MAX(seq), 0) FROM change_log").fetchone()[0])
            src.backup(dst)
            if str(dst.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower() != "wal":
                raise StoreError(f"{live}: restored, but could not switch back to WAL")
            # AUTOINCREMENT continues from sqlite_sequence: past the old live
            # version, so the restore's own record is a version no server has.
            dst.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = 'change_log'",
                        (before,))
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise StoreError(f"restore of {live} from {source} failed, live registry unchanged: "
                         f"{exc}") from None
    finally:
        src.close()
    return got, before


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
