"""SQLite storage backend of the registry (aiosqlite, WAL mode).

Owns the SQLite schema (``eir/policy/migrations/NNNN_name.sql``, applied in
order and recorded in ``schema_version``), the write path of imports, the
reads behind `show`/`export_rows`, and building a `Snapshot` from the
tables. Implements the `eir.policy.registry.Registry` protocol; DESIGN.md
section 5 (embedded registry: SQLite via aiosqlite, WAL) and section 7
(every write appends to ``change_log``; ``current_version`` is MAX(seq)).

Connections:

- one writer connection, used under an asyncio lock, in autocommit mode
  with explicit ``BEGIN IMMEDIATE``/``COMMIT`` so each import is exactly
  one transaction whatever Python's sqlite3 defaults are;
- one shared read-only connection for short reads (`show`,
  `current_version`), which therefore never sees a half-done import made
  through the writer;
- a private read-only connection per `export_rows`/`load_snapshot`, so a
  long read has its own consistent WAL snapshot and does not block polls.

Durability: ``synchronous=FULL``. Writes here are rare and large (imports,
police blocks); losing a committed block on power loss is worse than one
extra fsync per commit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sqlite3
from array import array
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Final

import aiosqlite

from eir.policy import import_batches, import_progress, snapshot_file
from eir.policy.audit import GENESIS, AuditRecord, VerifyResult, record_hash, verify_chain
from eir.policy.model import (
    ListEntry,
    ListName,
    normalize_imei,
    utc_timestamp,
)
from eir.policy.ranges import RangeEntry, RangeTable
from eir.policy.registry import EntryRow, ImportResult, RowError, Snapshot
from eir.policy.sqlite_backup import StoreError
from eir.policy.sqlite_stage import Stage
from eir.policy.tac import TacTable

log = logging.getLogger("eir.policy")

__all__ = [
    "Change",
    "ListVersion",
    "Migration",
    "SqliteRegistry",
    "import_options",
    "load_migrations",
    "split_sql",
]

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

# Parameter batches for "IN (...)" queries on the error path; well under
# SQLite's 32,766 host-parameter limit.
_IN_BATCH: Final = 400

_EXCEPTION_UPSERT: Final = """
INSERT INTO exception_pair (imei, imsi, reason, source, since, note, seq, evidence)
VALUES (?1, ?2, ?3, ?4, COALESCE(?5, ?8), ?6, ?7, ?10)
ON CONFLICT (imei, imsi) DO UPDATE SET
    reason = excluded.reason,
    source = excluded.source,
    note = excluded.note,
    evidence = excluded.evidence,
    since = CASE WHEN ?5 IS NOT NULL THEN excluded.since ELSE exception_pair.since END,
    seq = excluded.seq
WHERE exception_pair.seq <> excluded.seq
"""

_RANGE_UPSERT: Final = """
INSERT INTO range_entry (lo, hi, sv, list, reason, source, since, note, seq, grace_until, evidence)
VALUES (?1, ?11, ?12, ?2, ?3, ?4, COALESCE(?5, ?8), ?6, ?7, ?9, ?10)
ON CONFLICT (lo, hi, sv) DO UPDATE SET
    list = excluded.list,
    reason = excluded.reason,
    source = excluded.source,
    note = excluded.note,
    grace_until = excluded.grace_until,
    evidence = excluded.evidence,
    since = CASE WHEN ?5 IS NOT NULL OR range_entry.list <> excluded.list
                 THEN excluded.since ELSE range_entry.since END,
    seq = excluded.seq
WHERE range_entry.seq <> excluded.seq
"""

def _pair_key(p: _Params) -> Any:
    return p[:2]


_VERSION_SQL: Final = "SELECT COALESCE(MAX(seq), 0) FROM change_log"
_CACHE_KIB: Final = 65_536  # the writer's page cache, 64 MiB
_IMPORT_CACHE_KIB: Final = 1_048_576  # during a list import, up to 1 GiB


async def _snapshot_key(conn: aiosqlite.Connection) -> str:
    """The last change-log row (its seq, and its hash, which covers all earlier rows), the
    schema version and the snapshot builder's version (`eir.policy.snapshot_file`)."""
    async with conn.execute(
        "SELECT seq, COALESCE(hash, '') FROM change_log ORDER BY seq DESC LIMIT 1"
    ) as cur:
        row = await cur.fetchone()
    schema = await _scalar(conn, "SELECT COALESCE(MAX(version), 0) FROM schema_version")
    last = "0:" if row is None else f"{int(row[0])}:{row[1]}"
    return f"{last}/schema {int(schema)}/builder {snapshot_file.BUILDER}"

# Bound to ?1..?10 of the upserts: (imei, list or imsi, reason, source,
# since, note, seq, now, grace_until, evidence); range rows add ?11 hi, ?12 sv.
_Params = tuple[Any, ...]


class Migration:
    """One schema migration file: its number, name and SQL text."""

    __slots__ = ("name", "sql", "version")

    def __init__(self, version: int, name: str, sql: str) -> None:
        self.version = version
        self.name = name
        self.sql = sql

    def __repr__(self) -> str:
        return f"Migration({self.version}, {self.name!r})"


def load_migrations() -> list[Migration]:
    """The packaged migrations, ordered by number; numbers must be 1, 2, 3, ..."""
    found: list[Migration] = []
    for item in resources.files("eir.policy").joinpath("migrations").iterdir():
        m = _MIGRATION_NAME.match(item.name)
        if m is None:
            continue
        found.append(Migration(int(m.group(1)), item.name, item.read_text(encoding="utf-8")))
    found.sort(key=lambda mig: mig.version)
    # A gap or a duplicate number means a file was misnamed; applying the
    # others anyway would leave a schema no code was written for.
    for expected, mig in enumerate(found, start=1):
        if mig.version != expected:
            raise RuntimeError(f"migration numbering broken at {mig.name}: expected {expected:04d}")
    return found


def split_sql(script: str) -> list[str]:
    """Split a SQL script into statements (triggers' BEGIN ... END kept whole).

    Statements are run one by one inside our own transaction, because
    sqlite3's executescript() would first commit whatever is open.
    """
    statements: list[str] = []
    buf: list[str] = []
    for line in script.splitlines(keepends=True):
        buf.append(line)
        text = "".join(buf)
        if sqlite3.complete_statement(text):
            if _strip_sql_comments(text).strip():
                statements.append(text.strip())
            buf = []
    rest = "".join(buf)
    if _strip_sql_comments(rest).strip():
        raise ValueError(f"incomplete SQL statement at end of script: {rest.strip()[:80]!r}")
    return statements


def _strip_sql_comments(text: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in text.splitlines()).replace(";", "")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Change:
    """The open transaction of one audited operation (see `SqliteRegistry.change`)."""

    __slots__ = ("at", "conn", "count", "discard", "seq", "summary")

    def __init__(self, conn: aiosqlite.Connection, seq: int, at: str) -> None:
        self.conn = conn
        self.seq = seq
        self.at = at
        self.count = 0
        self.summary: dict[str, Any] | None = None
        self.discard = False


@dataclass(frozen=True, slots=True)
class ListVersion:
    """A publisher's list version, recorded when its list is applied."""

    source: str
    version: int
    kind: str = "full"  # or "delta"
    sha256: str | None = None
    publisher: str | None = None


def import_options(actor: str | None, *, full: str | None = None, delta: str | None = None,
                   list_version: int | None = None) -> dict[str, Any]:
    """`SqliteRegistry.import_rows` options for a list file (``eir registry import``, the
    admin API's upload): a full list of source ``full`` (replaces that source's entries
    only), or a delta of source ``delta``; ``list_version`` is the version the file brings
    that source's list to. ValueError when they contradict each other."""
    options: dict[str, Any] = {"actor": actor}
    if full and delta:
        raise ValueError("full and delta exclude each other")
    if full:
        options.update(kind="import-full", replace_source=full)
    if list_version is not None:
        if not (full or delta):
            raise ValueError("a list version needs a full or delta SOURCE (whose list it is)")
        options["list_version"] = (ListVersion(full, list_version, "full") if full else
                                   ListVersion(delta or "", list_version, "delta"))
    return options


class SqliteRegistry:
    """The registry in one SQLite file. Use `open()` first (or ``async with``)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], datetime] = _utcnow,
        chunk_size: int = 10_000,
        busy_timeout_ms: int = 30_000,
        exception_cap: int = 10,
    ) -> None:
        if str(path) in ("", ":memory:") or str(path).startswith("file:"):
            # Readers use their own connections, which must see the same file.
            raise ValueError("SqliteRegistry needs a file path, not an in-memory database")
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        self.path = Path(path)
        self._clock = clock
        self._chunk_size = chunk_size
        self._busy_timeout_ms = busy_timeout_ms
        self.exception_cap = exception_cap
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()

    # -- lifecycle ------------------------------------------------------------

    async def open(self) -> None:
        if self._writer is not None:
            return
        writer = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await self._configure(writer)
            mode = await _scalar(writer, "PRAGMA journal_mode=WAL")
            if str(mode).lower() != "wal":
                raise RuntimeError(f"could not switch {self.path} to WAL (got {mode!r})")
            await writer.execute("PRAGMA synchronous=FULL")
            await writer.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
            await self._migrate(writer)
            self._reader = await self._connect_reader()
        except BaseException:
            await writer.close()
            raise
        self._writer = writer

    async def close(self) -> None:
        writer, reader = self._writer, self._reader
        self._writer = self._reader = None
        if reader is not None:
            await reader.close()
        if writer is not None:
            await writer.close()

    async def __aenter__(self) -> SqliteRegistry:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _configure(self, conn: aiosqlite.Connection) -> None:
        await conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
        await conn.execute("PRAGMA foreign_keys=ON")

    async def _connect_reader(self) -> aiosqlite.Connection:
        uri = self.path.absolute().as_uri() + "?mode=ro"
        conn = await aiosqlite.connect(uri, uri=True, isolation_level=None)
        try:
            await self._configure(conn)
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        migrations = load_migrations()
        async with _transaction(conn, "BEGIN IMMEDIATE"):
            # Inside the write lock, so two processes opening a fresh file at
            # once cannot both apply 0001.
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            current = int(
                await _scalar(conn, "SELECT COALESCE(MAX(version), 0) FROM schema_version")
            )
            known = migrations[-1].version if migrations else 0
            if current > known:
                raise StoreError(
                    f"{self.path} has schema version {current}, newer than this code ({known}):"
                    " run the newer eir, or restore a backup taken with this one"
                )
            for mig in migrations:
                if mig.version <= current:
                    continue
                for statement in split_sql(mig.sql):
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                    (mig.version, mig.name, utc_timestamp(self._clock())),
                )
            if current < 2 <= known:
                await self._seal_legacy(conn)

    def _w(self) -> aiosqlite.Connection:
        if self._writer is None:
            raise RuntimeError("registry is not open")
        return self._writer

    def _r(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise RuntimeError("registry is not open")
        return self._reader

    @asynccontextmanager
    async def _private_read(self) -> AsyncIterator[aiosqlite.Connection]:
        self._r()  # fail early, with the same message, when not open
        conn = await self._connect_reader()
        try:
            async with _transaction(conn, "BEGIN"):
                yield conn
        finally:
            await conn.close()

    # -- reads ------------------------------------------------------------------

    async def schema_version(self) -> int:
        async with self._read_lock:
            return int(
                await _scalar(self._r(), "SELECT COALESCE(MAX(version), 0) FROM schema_version")
            )

    async def current_version(self) -> int:
        async with self._read_lock:
            return int(await _scalar(self._r(), _VERSION_SQL))

    async def show(self, imei: str) -> dict[str, Any]:
        """Entry and exception pairs of one IMEI (14 or 15 digits).

        Returns ``{imei, list, reason, source, since, note, pairs: [...]}``;
        for an IMEI on no list, ``list`` and the other entry fields are None
        (it may still have pairs). Raises ValueError for a malformed IMEI.
        """
        imei14 = normalize_imei(imei)
        if imei14 is None:
            raise ValueError(f"not an IMEI (14 or 15 decimal digits): {imei!r}")
        async with self.read() as conn:
            async with conn.execute(
                "SELECT list, reason, source, since, note FROM list_entry WHERE imei = ?",
                (imei14,),
            ) as cur:
                entry = await cur.fetchone()
            async with conn.execute(
                "SELECT imsi, reason, source, since, note FROM exception_pair"
                " WHERE imei = ? ORDER BY imsi",
                (imei14,),
            ) as cur:
                pairs = list(await cur.fetchall())
        fields = ("list", "reason", "source", "since", "note")
        out: dict[str, Any] = {"imei": imei14}
        out.update(zip(fields, entry if entry is not None else (None,) * 5, strict=True))
        out["pairs"] = [
            dict(zip(("imsi", "reason", "source", "since", "note"), p, strict=True)) for p in pairs
        ]
        return out

    async def export_rows(self, source: str | None = None) -> AsyncIterator[EntryRow]:
        """Every entry by IMEI, then every range, then every exception pair.

        ``source`` limits the export to one source's rows (a publisher's list).
        """
        where, params = (" WHERE source IS ?", (source,)) if source is not None else ("", ())
        async with self._private_read() as conn:
            async with conn.execute(
                "SELECT imei, list, reason, source, since, note, grace_until, evidence"
                f" FROM list_entry{where} ORDER BY imei", params
            ) as cur:
                while batch := await cur.fetchmany(5_000):
                    for imei, lst, reason, src, since, note, grace, evidence in batch:
                        yield EntryRow(imei, ListName(lst), reason, None, src, note, since,
                                       grace, evidence)
            async with conn.execute(
                "SELECT lo, hi, sv, list, reason, source, since, note, grace_until, evidence"
                f" FROM range_entry{where} ORDER BY lo, hi, sv", params
            ) as cur:
                for lo, hi, sv, lst, reason, src, since, note, grace, evidence in \
                        await cur.fetchall():
                    yield EntryRow(lo, ListName(lst), reason, None, src, note, since, grace,
                                   evidence, hi if hi != lo or not sv else None, sv or None)
            async with conn.execute(
                "SELECT imei, imsi, reason, source, since, note, evidence FROM exception_pair"
                f"{where} ORDER BY imei, imsi", params
            ) as cur:
                while batch := await cur.fetchmany(5_000):
                    for imei, imsi, reason, src, since, note, evidence in batch:
                        yield EntryRow(imei, ListName.EXCEPTION, reason, imsi, src, note, since,
                                       None, evidence)

    async def snapshot_key(self) -> str:
        """The registry's last change, as `eir.policy.snapshot_file` keys its files."""
        async with self.read() as conn:
            return await _snapshot_key(conn)

    async def load_snapshot(self, *, use_file: bool = False,
                            write_file: bool = True) -> Snapshot:
        """Read all entries and pairs, with their version, in one read transaction.

        ``use_file``: take the snapshot from ``<db>.snapshot`` when it was written
        at the registry's current change (`eir.policy.snapshot_file`), and after a
        full read, write it there for the next start (unless not ``write_file``:
        of several workers, one writes it).
        """
        if not use_file:
            snap, _ = await self._read_snapshot()
            return snap
        path = snapshot_file.path_for(self.path)
        key = await self.snapshot_key()
        cached = await asyncio.to_thread(snapshot_file.load, path, key)
        if cached is not None:
            return cached
        if not write_file:
            snap, _ = await self._read_snapshot()
            return snap
        return await self.rebuild_snapshot_file()

    async def rebuild_snapshot_file(self) -> Snapshot:
        """A full read, written to ``<db>.snapshot`` whatever is there (a warning if it fails)."""
        path = snapshot_file.path_for(self.path)
        snap, key = await self._read_snapshot()
        try:
            await asyncio.to_thread(snapshot_file.save, snap, path, key)
        except OSError as exc:
            log.warning("snapshot file %s not written: %s", path, exc)
        return snap

    async def _read_snapshot(self) -> tuple[Snapshot, str]:
        async with self._private_read() as conn:
            version = int(await _scalar(conn, _VERSION_SQL))
            key = await _snapshot_key(conn)
            async with conn.execute("SELECT DISTINCT list, reason FROM list_entry") as cur:
                kinds_found = sorted((str(lst), str(r)) for lst, r in await cur.fetchall())
            # Numbering the kinds inside SQLite (a join on a tiny temp table)
            # leaves Python only two C-level column copies per batch; mapping
            # (list, reason) to ids in Python took three times as long.
            await conn.execute(
                "CREATE TEMP TABLE snapshot_kind (list TEXT, reason TEXT, id INTEGER,"
                " PRIMARY KEY (list, reason)) WITHOUT ROWID"
            )
            await conn.executemany(
                "INSERT INTO snapshot_kind (list, reason, id) VALUES (?, ?, ?)",
                [(lst, reason, i) for i, (lst, reason) in enumerate(kinds_found)],
            )
            imeis: array[int] = array("q")
            kinds: array[int] = array(Snapshot.kind_typecode(len(kinds_found)))
            since: array[int] = array("I")
            # unixepoch() turns the stored UTC text into the int the engine
            # compares, inside SQLite (a Python strptime per row would triple
            # the load time of ten million entries).
            async with conn.execute(
                "SELECT CAST(e.imei AS INTEGER), k.id, COALESCE(unixepoch(e.since), 0)"
                " FROM list_entry AS e"
                " JOIN snapshot_kind AS k ON k.list = e.list AND k.reason = e.reason"
                " ORDER BY e.imei"
            ) as cur:
                while batch := list(await cur.fetchmany(100_000)):
                    ints, ids, sinces = zip(*batch, strict=True)
                    imeis.extend(ints)
                    kinds.extend(ids)
                    since.extend(sinces)
            async with conn.execute(
                "SELECT CAST(imei AS INTEGER), unixepoch(grace_until) FROM list_entry"
                " WHERE grace_until IS NOT NULL"
            ) as cur:
                grace = {int(k): int(t) for k, t in await cur.fetchall() if t is not None}
            async with conn.execute(
                "SELECT lo, hi, sv, list, reason, unixepoch(since), unixepoch(grace_until)"
                " FROM range_entry"
            ) as cur:
                ranges = RangeTable(
                    RangeEntry(int(lo), int(hi), sv or None, ListEntry(ListName(lst), reason),
                               since, grace_until)
                    for lo, hi, sv, lst, reason, since, grace_until in await cur.fetchall())
            tac_classes: list[str] = []
            async with conn.execute("SELECT DISTINCT class FROM tac ORDER BY class") as cur:
                tac_classes = [str(c) for (c,) in await cur.fetchall()]
            tac_index = {c: i for i, c in enumerate(tac_classes)}
            tacs: array[int] = array("I")
            tac_kinds: array[int] = array("H")
            async with conn.execute("SELECT tac, class FROM tac ORDER BY tac") as cur:
                while batch := list(await cur.fetchmany(100_000)):
                    t_ints, t_cls = zip(*batch, strict=True)
                    tacs.extend(t_ints)
                    tac_kinds.extend(tac_index[c] for c in t_cls)
            async with conn.execute("SELECT source, version FROM list_version") as cur:
                versions = {str(src): int(v) for src, v in await cur.fetchall()}
            async with conn.execute("SELECT imei, imsi FROM exception_pair") as cur:
                exceptions = Snapshot.exception_keys(
                    (str(imei), str(imsi)) for imei, imsi in await cur.fetchall()
                )
        kind_table = tuple(ListEntry(ListName(lst), reason) for lst, reason in kinds_found)
        return Snapshot.from_arrays(
            imeis, kinds, kind_table, exceptions, version, since=since, grace_until=grace,
            ranges=ranges, tac=TacTable(tacs, tac_kinds, tuple(tac_classes)),
            list_versions=versions), key

    async def point_snapshot(self, imei14: str) -> Snapshot:
        """A snapshot holding only what decides ``imei14``: for one-off questions.

        ``eir decide`` and ``eir registry show`` need the decision for one
        IMEI; loading ten million entries for it would take seconds. The
        entry, the ranges covering it, its exception pairs and its TAC give
        the same decision as the full snapshot (a test checks this).
        """
        key = int(imei14)
        tac = key // 1_000_000
        async with self.read() as conn:
            version = int(await _scalar(conn, _VERSION_SQL))
            async with conn.execute(
                "SELECT list, reason, COALESCE(unixepoch(since), 0), unixepoch(grace_until)"
                " FROM list_entry WHERE imei = ?", (imei14,)
            ) as cur:
                entry = await cur.fetchone()
            async with conn.execute(
                "SELECT lo, hi, sv, list, reason, unixepoch(since), unixepoch(grace_until)"
                " FROM range_entry WHERE lo <= ? AND hi >= ?", (imei14, imei14)
            ) as cur:
                ranges = [RangeEntry(int(lo), int(hi), sv or None,
                                     ListEntry(ListName(lst), reason), since, grace)
                          for lo, hi, sv, lst, reason, since, grace in await cur.fetchall()]
            async with conn.execute(
                "SELECT imsi FROM exception_pair WHERE imei = ?", (imei14,)
            ) as cur:
                pairs = [(imei14, str(imsi)) for (imsi,) in await cur.fetchall()]
            async with conn.execute("SELECT class FROM tac WHERE tac = ?", (tac,)) as cur:
                tac_row = await cur.fetchone()
            any_tac = tac_row is not None or bool(
                await _scalar(conn, "SELECT EXISTS (SELECT 1 FROM tac)"))
            async with conn.execute("SELECT source, version FROM list_version") as cur:
                versions = {str(src): int(v) for src, v in await cur.fetchall()}
        if tac_row is not None:
            tacs = TacTable.build([(tac, str(tac_row[0]))])
        elif any_tac:
            # "A TAC database is loaded, and this TAC is not in it": any other TAC says so.
            tacs = TacTable.build([((tac + 1) % 100_000_000, "other")])
        else:
            tacs = TacTable.empty()
        entries = []
        grace: dict[int, int] = {}
        if entry is not None:
            entries.append((imei14, str(entry[0]), str(entry[1]), int(entry[2])))
            if entry[3] is not None:
                grace[key] = int(entry[3])
        return Snapshot.build(entries, pairs, version, grace_until=grace,
                              ranges=RangeTable(ranges), tac=tacs, list_versions=versions)

    async def history(self, imei14: str, limit: int = 100) -> list[dict[str, Any]]:
        """Audit records of lifecycle actions on one IMEI, and the import that last wrote it."""
        async with self.read() as conn, conn.execute(
            "SELECT seq, at, kind, actor, evidence, summary FROM change_log"
            " WHERE target = ? OR seq IN (SELECT seq FROM list_entry WHERE imei = ?"
            " UNION SELECT seq FROM exception_pair WHERE imei = ?)"
            " ORDER BY seq DESC LIMIT ?", (imei14, imei14, imei14, limit)
        ) as cur:
            rows = await cur.fetchall()
        return [{"seq": seq, "at": at, "action": kind, "actor": actor, "evidence": evidence,
                 "summary": json.loads(summary) if summary else None}
                for seq, at, kind, actor, evidence, summary in reversed(list(rows))]

    async def changes(self, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Change-log rows with seq > ``after``, oldest first (for CLIs and audits)."""
        async with (
            self._read_lock,
            self._r().execute(
                "SELECT seq, at, kind, count, summary FROM change_log"
                " WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ) as cur,
        ):
            rows = await cur.fetchall()
        return [
            {
                "seq": seq,
                "at": at,
                "kind": kind,
                "count": count,
                "summary": json.loads(summary) if summary else None,
            }
            for seq, at, kind, count, summary in rows
        ]

    @asynccontextmanager
    async def raw_transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction outside the change log: observations, counters, clocks.

        Not for list changes: those go through `change`, which audits them.
        """
        async with self._write_lock:
            conn = self._w()
            async with _transaction(conn, "BEGIN IMMEDIATE"):
                yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[aiosqlite.Connection]:
        """The shared read-only connection, in one read transaction, for short reads."""
        async with self._read_lock:
            conn = self._r()
            async with _transaction(conn, "BEGIN"):
                yield conn

    # -- audited changes -------------------------------------------------------------

    @asynccontextmanager
    async def change(
        self,
        kind: str,
        *,
        actor: str | None = None,
        target: str | None = None,
        evidence: str | None = None,
    ) -> AsyncIterator[Change]:
        """One audited operation: a transaction with exactly one sealed change_log row.

        The body writes through ``change.conn`` and stamps rows with
        ``change.seq``; it sets ``change.count`` and ``change.summary``. On
        any exception everything is rolled back, the audit record included.
        Setting ``change.discard`` rolls back a change that turned out empty.
        """
        async with self._write_lock:
            conn = self._w()
            async with _transaction(conn, "BEGIN IMMEDIATE"):
                now = utc_timestamp(self._clock())
                async with conn.execute(
                    "INSERT INTO change_log (at, kind, count, actor, target, evidence)"
                    " VALUES (?, ?, 0, ?, ?, ?)",
                    (now, kind, actor, target, evidence),
                ) as cur:
                    seq = cur.lastrowid
                if seq is None:  # pragma: no cover - sqlite always reports it for INSERT
                    raise RuntimeError("change_log insert returned no rowid")
                ch = Change(conn, seq, now)
                yield ch
                if ch.discard:
                    await _settle(conn, "ROLLBACK")
                    return
                await self._seal(conn, AuditRecord(
                    seq, now, kind, ch.count,
                    json.dumps(ch.summary, sort_keys=True) if ch.summary is not None else None,
                    actor, target, evidence))

    async def _seal(self, conn: aiosqlite.Connection, rec: AuditRecord) -> None:
        prev = await _scalar(
            conn, "SELECT hash FROM change_log WHERE seq < ? ORDER BY seq DESC LIMIT 1", (rec.seq,))
        prev_hash = str(prev) if prev is not None else GENESIS
        await conn.execute(
            "UPDATE change_log SET count = ?, summary = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            (rec.count, rec.summary, prev_hash, record_hash(prev_hash, rec), rec.seq))

    async def _seal_legacy(self, conn: aiosqlite.Connection) -> None:
        # Rows written before the audit chain existed (schema 1) are sealed
        # once, in order, when the schema is upgraded.
        async with conn.execute(
            "SELECT seq, at, kind, count, summary, actor, target, evidence FROM change_log"
            " WHERE hash IS NULL ORDER BY seq"
        ) as cur:
            rows = list(await cur.fetchall())
        for row in rows:
            await self._seal(conn, AuditRecord(*row))

    async def audit_records(self) -> AsyncIterator[AuditRecord]:
        """Every audit record, oldest first, from one consistent read."""
        async with self._private_read() as conn, conn.execute(
            "SELECT seq, at, kind, count, summary, actor, target, evidence, prev_hash, hash"
            " FROM change_log ORDER BY seq"
        ) as cur:
            while batch := await cur.fetchmany(5_000):
                for row in batch:
                    yield AuditRecord(*row)

    async def verify_audit(self) -> VerifyResult:
        records = [r async for r in self.audit_records()]
        return verify_chain(records)

    # -- writes -------------------------------------------------------------------

    async def import_rows(
        self,
        rows: Iterable[EntryRow],
        *,
        on_chunk: Callable[[int], None] | None = None,
        kind: str = "import",
        actor: str | None = None,
        replace_source: str | None = None,
        scope_source: str | None = None,
        summary: dict[str, Any] | None = None,
        list_version: ListVersion | None = None,
    ) -> ImportResult:
        """Write all rows in one audited transaction; see `Registry.import_rows`.

        Rows are written in chunks (``chunk_size``) so memory stays flat for
        files of millions of rows. A `RowError` raised by the ``rows``
        iterator is reported only after the rows before it have been checked
        for duplicates, so the error always names the first bad line.

        ``replace_source`` makes this a full list of that source: its rows
        replace every entry of the same source (entries of that source not
        in the file are removed), and never an entry of another source (such
        rows are skipped and counted). ``scope_source`` makes this a delta of
        that source: as with ``replace_source`` its rows never overwrite or
        remove another source's entry (skipped and counted), but entries it
        does not name are left alone. ``summary`` is added to the audit
        record (e.g. the file's SHA-256); ``list_version`` is recorded as the
        version the source's list is now at.

        The ``rows`` iterator runs in a thread of its own, one chunk ahead of
        the writes (eir/policy/import_batches.py), so the event loop stays
        free; it still holds the GIL while it parses, so bulk imports belong
        in the CLI process rather than the S13 server's. List entries reach
        ``list_entry`` through a staging table merged at the end, and before
        any removal row (eir/policy/sqlite_stage.py).

        Its progress goes to ``<db>.import`` (`eir.policy.import_progress`),
        where a running server's metrics read it.
        """
        if replace_source is not None and scope_source is not None:
            raise ValueError("replace_source (a full list) or scope_source (a delta), not both")
        progress = import_progress.ProgressFile(self.path, kind, actor)

        def chunk(rows_done: int) -> None:
            progress.rows(rows_done)
            if on_chunk is not None:
                on_chunk(rows_done)

        try:
            result = await self._import_rows(rows, chunk, kind, actor, replace_source,
                                             scope_source, summary, list_version)
        except BaseException as exc:
            progress.finish(None, exc)
            raise
        progress.finish(result.rows + result.removed)
        return result

    async def _import_rows(
        self,
        rows: Iterable[EntryRow],
        on_chunk: Callable[[int], None],
        kind: str,
        actor: str | None,
        replace_source: str | None,
        scope_source: str | None,
        summary: dict[str, Any] | None,
        list_version: ListVersion | None,
    ) -> ImportResult:
        async with self.change(kind, actor=actor) as ch:
            # A list import writes all over a clustered B-tree in one transaction: with
            # the default 64 MiB page cache, a registry of ~1 GB spills and re-reads
            # pages all along (measured: 11.2M rows 402 s -> 299 s, 3M rows 83 s -> 69 s;
            # the import process then peaks near 1 GB).
            # Only for the import: a server's writer keeps the small cache.
            await ch.conn.execute(f"PRAGMA cache_size=-{_IMPORT_CACHE_KIB}")
            try:
                result = await self._import_locked(ch, rows, on_chunk, replace_source,
                                                   scope_source)
            finally:
                await _settle(ch.conn, f"PRAGMA cache_size=-{_CACHE_KIB}")
            if result.rows == 0 and result.removed == 0 and list_version is None:
                # Nothing to record: a version bump would only make every
                # server reload an identical snapshot.
                ch.discard = True
            else:
                ch.count = result.rows + result.removed
                ch.summary = {"rows": dict(sorted(result.by_list.items())),
                              "removed": result.removed, "skipped": result.skipped,
                              **({"replace_source": replace_source} if replace_source else {}),
                              **({"scope_source": scope_source} if scope_source else {}),
                              **(summary or {})}
                if list_version is not None:
                    await self._record_list_version(ch, list_version)
                    ch.summary["list_version"] = {"source": list_version.source,
                                                  "version": list_version.version,
                                                  "kind": list_version.kind}
        if ch.discard:
            return ImportResult(0, {}, await self.current_version(), 0, result.skipped)
        return result

    async def _record_list_version(self, ch: Change, lv: ListVersion) -> None:
        await ch.conn.execute(
            "INSERT INTO list_version (source, version, kind, applied_at, sha256, publisher, seq)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (source) DO UPDATE SET"
            " version = excluded.version, kind = excluded.kind, applied_at = excluded.applied_at,"
            " sha256 = excluded.sha256, publisher = excluded.publisher, seq = excluded.seq",
            (lv.source, lv.version, lv.kind, ch.at, lv.sha256, lv.publisher, ch.seq))

    async def list_versions(self) -> dict[str, dict[str, Any]]:
        """The list version each source is at, and when and from what it was applied."""
        async with self._read_lock, self._r().execute(
            "SELECT source, version, kind, applied_at, sha256, publisher, seq FROM list_version"
            " ORDER BY source"
        ) as cur:
            rows = await cur.fetchall()
        return {r[0]: dict(zip(("version", "kind", "applied_at", "sha256", "publisher", "seq"),
                               r[1:], strict=True)) for r in rows}

    async def _import_locked(
        self,
        ch: Change,
        rows: Iterable[EntryRow],
        on_chunk: Callable[[int], None] | None,
        replace_source: str | None,
        scope_source: str | None = None,
    ) -> ImportResult:
        conn, seq = ch.conn, ch.seq
        # The source whose entries alone this import may write or remove.
        owner = replace_source if replace_source is not None else scope_source
        by_list: Counter[str] = Counter()
        done = removed = skipped = 0
        pair_imeis: set[str] = set()
        stage = Stage(conn)

        async def merge(later: RowError | None = None) -> None:
            # Entries reach list_entry only here: their problems come out now,
            # and the first bad line of the file is the one reported.
            problem = await stage.merge(seq, ch.at)
            if problem is not None and (later is None or problem[0] < later.line):
                raise RowError(*problem)
            if later is not None:
                raise later

        async with import_batches.prefetched_batches(rows, seq, ch.at,
                                                     self._chunk_size) as chunks:
            async for b in chunks:
                if owner is not None:
                    staged = len(b.entries)
                    skipped += await self._drop_foreign(conn, owner, b.entries, b.entry_lines,
                                                        b.pairs, b.pair_lines, b.ranges,
                                                        b.range_lines)
                    if len(b.entries) != staged:
                        b.entries_json = import_batches.encode_entries(b.entries)
                by_list.update(p[1] for p in b.entries)
                by_list.update(p[1] for p in b.ranges)
                if b.pairs:
                    by_list[ListName.EXCEPTION.value] += len(b.pairs)
                    pair_imeis |= b.pair_imeis
                await stage.append(b.entries, b.entries_json)
                if b.pairs or b.ranges:
                    try:
                        await self._write_chunk(conn, seq, b)
                    except RowError as exc:
                        await merge(exc)
                done += len(b.entries) + len(b.pairs) + len(b.ranges)
                if b.removals:
                    await merge()  # file order: the upserts before these removals
                    gone, foreign = await self._remove(conn, b.removals, owner)
                    removed += gone
                    skipped += foreign
                if on_chunk is not None:
                    on_chunk(done + removed)
                if b.error is not None:
                    await merge(b.error)
        await merge()
        await stage.drop()
        if pair_imeis:
            await self._check_exception_cap(conn, pair_imeis)
        if replace_source is not None:
            removed += await self._remove_stale(conn, replace_source, seq)
        return ImportResult(done, dict(by_list), seq, removed, skipped)

    async def _check_exception_cap(self, conn: aiosqlite.Connection, imeis: set[str]) -> None:
        keys = sorted(imeis)
        for i in range(0, len(keys), _IN_BATCH):
            batch = keys[i : i + _IN_BATCH]
            marks = ",".join("?" * len(batch))
            async with conn.execute(
                f"SELECT imei, COUNT(*) FROM exception_pair WHERE imei IN ({marks})"
                " GROUP BY imei HAVING COUNT(*) > ? ORDER BY imei LIMIT 1",
                (*batch, self.exception_cap),
            ) as cur:
                over = await cur.fetchone()
            if over is not None:
                raise RowError(0, f"IMEI {over[0]} would have {over[1]} exception pairs, more "
                                  f"than the cap of {self.exception_cap}")

    async def _drop_foreign(
        self,
        conn: aiosqlite.Connection,
        source: str,
        *bufs: list[Any],
    ) -> int:
        # A full list of one source never overwrites another source's entry:
        # a ministry list must not undo a police report or a legalisation.
        entries, entry_lines, pairs, pair_lines, ranges, range_lines = bufs
        dropped = 0
        for rows, lines, table, keycols, nkey in (
            (entries, entry_lines, "list_entry", "imei", 1),
            (pairs, pair_lines, "exception_pair", "imei, imsi", 2),
            (ranges, range_lines, "range_entry", "lo, hi, sv", 3),
        ):
            if not rows:
                continue
            keyof = ((lambda p: (p[0],)) if nkey == 1 else (lambda p: (p[0], p[1])) if nkey == 2
                     else (lambda p: (p[0], p[10], p[11])))
            foreign: set[tuple[Any, ...]] = set()
            keys = [keyof(p) for p in rows]
            step = _IN_BATCH // nkey
            for i in range(0, len(keys), step):
                batch = keys[i : i + step]
                marks = ",".join("(" + ",".join("?" * nkey) + ")" for _ in batch)
                async with conn.execute(
                    f"SELECT {keycols} FROM {table} WHERE ({keycols}) IN (VALUES {marks})"
                    " AND source IS NOT ?",
                    (*(v for k in batch for v in k), source),
                ) as cur:
                    foreign.update(tuple(r) for r in await cur.fetchall())
            if foreign:
                keep = [i for i, k in enumerate(keys) if k not in foreign]
                dropped += len(rows) - len(keep)
                rows[:] = [rows[i] for i in keep]
                lines[:] = [lines[i] for i in keep]
        return dropped

    async def _remove(
        self, conn: aiosqlite.Connection, rows: Sequence[EntryRow], source: str | None
    ) -> tuple[int, int]:
        """(rows removed, rows left alone because another source owns them)."""
        n = foreign = 0
        for row in rows:
            key: list[Any]
            if row.list is ListName.EXCEPTION:
                table, where, key = "exception_pair", "imei = ? AND imsi = ?", [row.imei, row.imsi]
            elif row.is_range:
                table, where = "range_entry", "lo = ? AND hi = ? AND sv = ?"
                key = [row.imei, row.hi or row.imei, row.sv or ""]
            else:
                table, where, key = "list_entry", "imei = ?", [row.imei]
            if source is None:
                async with conn.execute(f"DELETE FROM {table} WHERE {where}", key) as cur:
                    n += max(cur.rowcount, 0)
                continue
            async with conn.execute(
                f"DELETE FROM {table} WHERE {where} AND source IS ?", [*key, source]
            ) as cur:
                gone = max(cur.rowcount, 0)
            n += gone
            if not gone and await _scalar(
                conn, f"SELECT EXISTS (SELECT 1 FROM {table} WHERE {where})", key
            ):
                foreign += 1
        return n, foreign

    async def _remove_stale(self, conn: aiosqlite.Connection, source: str, seq: int) -> int:
        n = 0
        for table in ("list_entry", "exception_pair", "range_entry"):
            async with conn.execute(
                f"DELETE FROM {table} WHERE source IS ? AND seq <> ?", (source, seq)
            ) as cur:
                n += max(cur.rowcount, 0)
        return n

    async def _write_chunk(self, conn: aiosqlite.Connection, seq: int,
                           b: import_batches.Batch) -> None:
        """Write a batch's exception pairs and ranges (its entries go to the stage)."""
        # The savepoint lets the duplicate search see the table as it was
        # before this chunk, to tell "twice in this chunk" from "also in an
        # earlier chunk".
        await conn.execute("SAVEPOINT import_chunk")
        pairs, ranges = b.pairs, b.ranges
        short = False
        try:
            if pairs:
                # Key order keeps consecutive upserts on neighbouring B-tree pages;
                # the sort is stable, so a duplicate still follows its first occurrence.
                async with conn.executemany(_EXCEPTION_UPSERT,
                                            sorted(pairs, key=_pair_key)) as cur:
                    short = cur.rowcount != len(pairs)
            if ranges and not short:
                async with conn.executemany(_RANGE_UPSERT, ranges) as cur:
                    if cur.rowcount != len(ranges):
                        await conn.execute("ROLLBACK TO import_chunk")
                        raise RowError(*await _range_duplicate(conn, seq, ranges, b.range_lines))
        except sqlite3.IntegrityError as exc:
            await conn.execute("ROLLBACK TO import_chunk")
            line, message = await self._find_bad_row(conn, pairs, b.pair_lines)
            if message is None and ranges:
                line, message = min(b.range_lines), f"range row rejected by the database: {exc}"
            raise RowError(line, message or f"rejected by the database: {exc}") from exc
        if short:
            await conn.execute("ROLLBACK TO import_chunk")
            raise RowError(*await self._find_duplicate(conn, seq, pairs, b.pair_lines))
        await conn.execute("RELEASE import_chunk")

    async def _find_duplicate(
        self,
        conn: aiosqlite.Connection,
        seq: int,
        pairs: Sequence[_Params],
        pair_lines: Sequence[int],
    ) -> tuple[int, str]:
        found: list[tuple[int, str]] = []
        first_pair: dict[tuple[str, str], int] = {}
        for params, line in zip(pairs, pair_lines, strict=True):
            pair = (str(params[0]), str(params[1]))
            if pair in first_pair:
                found.append((line, f"exception {pair[0]}/{pair[1]} appears twice in this file"
                                    f" (first at line {first_pair[pair]})"))
            else:
                first_pair[pair] = line
        pair_keys = list(first_pair)
        for i in range(0, len(pair_keys), _IN_BATCH // 2):
            pbatch = pair_keys[i : i + _IN_BATCH // 2]
            marks = ",".join("(?, ?)" for _ in pbatch)
            flat = [v for pair in pbatch for v in pair]
            async with conn.execute(
                f"SELECT imei, imsi FROM exception_pair WHERE seq = ? AND (imei, imsi) IN"
                f" (VALUES {marks})",
                (seq, *flat),
            ) as cur:
                for imei, imsi in await cur.fetchall():
                    found.append((first_pair[(imei, imsi)],
                                  f"exception {imei}/{imsi} appears twice in this file"))
        if not found:  # pragma: no cover - rowcount fell short for another reason
            return (min(pair_lines, default=0), "row was not stored")
        return min(found)

    async def _find_bad_row(
        self,
        conn: aiosqlite.Connection,
        pairs: Sequence[_Params],
        pair_lines: Sequence[int],
    ) -> tuple[int, str | None]:
        # Only callers that bypass csvio's validation get here; replaying the
        # chunk row by row is slow but finds the culprit exactly.
        for params, line in zip(pairs, pair_lines, strict=True):
            await conn.execute("SAVEPOINT import_row")
            try:
                await conn.execute(_EXCEPTION_UPSERT, params)
            except sqlite3.IntegrityError as exc:
                await conn.execute("ROLLBACK TO import_row")
                return line, f"rejected by the database: {exc}"
            finally:
                await conn.execute("RELEASE import_row")
        return min(pair_lines, default=0), None


async def _range_duplicate(conn: aiosqlite.Connection, seq: int, ranges: Sequence[_Params],
                           lines: Sequence[int]) -> tuple[int, str]:
    # Ranges are few; duplicates in this chunk, or of a range an earlier chunk
    # of this file wrote (stamped with this seq; the chunk itself was rolled back).
    found: list[tuple[int, str]] = []
    seen: dict[tuple[Any, ...], int] = {}
    for params, line in zip(ranges, lines, strict=True):
        key = (params[0], params[10], params[11])
        what = f"range {key[0]}-{key[1]} sv {key[2] or 'any'}"
        if key in seen:
            found.append((line, f"{what} appears twice in this file (first at line {seen[key]})"))
            continue
        seen[key] = line
        async with conn.execute(
            "SELECT 1 FROM range_entry WHERE lo = ? AND hi = ? AND sv = ? AND seq = ?", (*key, seq)
        ) as cur:
            if await cur.fetchone() is not None:
                found.append((line, f"{what} appears twice in this file"))
    return min(found) if found else (min(lines), "range row was not stored")


async def _scalar(conn: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> Any:
    async with conn.execute(sql, params) as cur:
        row = await cur.fetchone()
    return None if row is None else row[0]


async def _settle(conn: aiosqlite.Connection, sql: str) -> None:
    """Run one transaction-control statement to its end, even when the caller is cancelled.

    aiosqlite runs a statement in its own thread whatever becomes of the task
    awaiting it. A cancel that landed on a BEGIN used to leave the connection
    inside a transaction nobody would end, so every later BEGIN failed ("cannot
    start a transaction within a transaction"): the server's last flush at
    shutdown then lost its grace clocks. Waiting for the statement keeps the
    connection's state known; the cancel is re-raised once it has run.
    """
    fut = asyncio.ensure_future(conn.execute(sql))
    try:
        await asyncio.shield(fut)
    except asyncio.CancelledError:
        await asyncio.wait([fut])
        if not fut.cancelled():
            fut.exception()  # retrieved: the cancel is what the caller must see
        raise


@asynccontextmanager
async def _transaction(conn: aiosqlite.Connection, begin: str) -> AsyncIterator[None]:
    """BEGIN ... COMMIT, rolled back on any exception or cancel, never left open.

    The body may end the transaction itself (a discarded change rolls back);
    then nothing is committed.
    """
    try:
        await _settle(conn, begin)
    except BaseException:
        if conn.in_transaction:
            await _settle(conn, "ROLLBACK")
        raise
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            await _settle(conn, "ROLLBACK")
        raise
    if conn.in_transaction:
        try:
            await _settle(conn, "COMMIT")
        except BaseException:
            if conn.in_transaction:  # a failed COMMIT (SQLITE_BUSY) leaves it open
                await _settle(conn, "ROLLBACK")
            raise
