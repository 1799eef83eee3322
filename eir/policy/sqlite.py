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
import os
import re
import sqlite3
from array import array
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Final

import aiosqlite

from eir.policy.model import ListEntry, ListName, normalize_imei, utc_timestamp
from eir.policy.registry import EntryRow, ImportResult, RowError, Snapshot

__all__ = ["Migration", "SqliteRegistry", "load_migrations", "split_sql"]

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

# Parameter batches for "IN (...)" queries on the error path; well under
# SQLite's 32,766 host-parameter limit.
_IN_BATCH: Final = 400

_ENTRY_UPSERT: Final = """
INSERT INTO list_entry (imei, list, reason, source, since, note, seq)
VALUES (?1, ?2, ?3, ?4, COALESCE(?5, ?8), ?6, ?7)
ON CONFLICT (imei) DO UPDATE SET
    list = excluded.list,
    reason = excluded.reason,
    source = excluded.source,
    note = excluded.note,
    -- An entry re-imported onto the same list without a since keeps its
    -- old one: 'since' dates the listing, not the latest edit of a note.
    since = CASE WHEN ?5 IS NOT NULL OR list_entry.list <> excluded.list
                 THEN excluded.since ELSE list_entry.since END,
    seq = excluded.seq
-- A row already written by this same import is a duplicate in the input;
-- skipping it makes executemany's rowcount fall short, which is how
-- duplicates are detected without holding every IMEI in memory.
WHERE list_entry.seq <> excluded.seq
"""

_EXCEPTION_UPSERT: Final = """
INSERT INTO exception_pair (imei, imsi, reason, source, since, note, seq)
VALUES (?1, ?2, ?3, ?4, COALESCE(?5, ?8), ?6, ?7)
ON CONFLICT (imei, imsi) DO UPDATE SET
    reason = excluded.reason,
    source = excluded.source,
    note = excluded.note,
    since = CASE WHEN ?5 IS NOT NULL THEN excluded.since ELSE exception_pair.since END,
    seq = excluded.seq
WHERE exception_pair.seq <> excluded.seq
"""

_VERSION_SQL: Final = "SELECT COALESCE(MAX(seq), 0) FROM change_log"

# Bound to ?1..?8 of the upserts: (imei, list or imsi, reason, source,
# since, note, seq, now).
_Params = tuple[str, str, str, str | None, str | None, str | None, int, str]


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


class SqliteRegistry:
    """The registry in one SQLite file. Use `open()` first (or ``async with``)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], datetime] = _utcnow,
        chunk_size: int = 10_000,
        busy_timeout_ms: int = 30_000,
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
            await writer.execute("PRAGMA cache_size=-65536")  # 64 MiB helps big imports
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
        await conn.execute("BEGIN IMMEDIATE")
        try:
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
                raise RuntimeError(
                    f"{self.path} has schema version {current}, newer than this code ({known})"
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
            await conn.execute("COMMIT")
        except BaseException:
            await conn.execute("ROLLBACK")
            raise

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
            await conn.execute("BEGIN")
            try:
                yield conn
            finally:
                await conn.execute("COMMIT")
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
        async with self._read_lock:
            conn = self._r()
            await conn.execute("BEGIN")
            try:
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
            finally:
                await conn.execute("COMMIT")
        fields = ("list", "reason", "source", "since", "note")
        out: dict[str, Any] = {"imei": imei14}
        out.update(zip(fields, entry if entry is not None else (None,) * 5, strict=True))
        out["pairs"] = [
            dict(zip(("imsi", "reason", "source", "since", "note"), p, strict=True)) for p in pairs
        ]
        return out

    async def export_rows(self) -> AsyncIterator[EntryRow]:
        """Every entry by IMEI, then every exception pair by (IMEI, IMSI)."""
        async with self._private_read() as conn:
            async with conn.execute(
                "SELECT imei, list, reason, source, since, note FROM list_entry ORDER BY imei"
            ) as cur:
                while batch := await cur.fetchmany(5_000):
                    for imei, lst, reason, source, since, note in batch:
                        yield EntryRow(imei, ListName(lst), reason, None, source, note, since)
            async with conn.execute(
                "SELECT imei, imsi, reason, source, since, note FROM exception_pair"
                " ORDER BY imei, imsi"
            ) as cur:
                while batch := await cur.fetchmany(5_000):
                    for imei, imsi, reason, source, since, note in batch:
                        yield EntryRow(imei, ListName.EXCEPTION, reason, imsi, source, note, since)

    async def load_snapshot(self) -> Snapshot:
        """Read all entries and pairs, with their version, in one read transaction."""
        async with self._private_read() as conn:
            version = int(await _scalar(conn, _VERSION_SQL))
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
            async with conn.execute(
                "SELECT CAST(e.imei AS INTEGER), k.id FROM list_entry AS e"
                " JOIN snapshot_kind AS k ON k.list = e.list AND k.reason = e.reason"
                " ORDER BY e.imei"
            ) as cur:
                while batch := list(await cur.fetchmany(100_000)):
                    ints, ids = zip(*batch, strict=True)
                    imeis.extend(ints)
                    kinds.extend(ids)
            async with conn.execute("SELECT imei, imsi FROM exception_pair") as cur:
                exceptions = Snapshot.exception_keys(
                    (str(imei), str(imsi)) for imei, imsi in await cur.fetchall()
                )
        kind_table = tuple(ListEntry(ListName(lst), reason) for lst, reason in kinds_found)
        return Snapshot.from_arrays(imeis, kinds, kind_table, exceptions, version)

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

    # -- writes -------------------------------------------------------------------

    async def import_rows(
        self,
        rows: Iterable[EntryRow],
        *,
        on_chunk: Callable[[int], None] | None = None,
        kind: str = "import",
    ) -> ImportResult:
        """Upsert all rows in one transaction; see `Registry.import_rows`.

        Rows are written in chunks (``chunk_size``) so memory stays flat for
        files of millions of rows. A `RowError` raised by the ``rows``
        iterator is reported only after the rows before it have been checked
        for duplicates, so the error always names the first bad line.

        The ``rows`` iterator runs on the event loop between chunks (a CSV
        chunk of 10,000 rows parses in a few tens of milliseconds), so bulk
        imports belong in the CLI process rather than the S13 server's.
        """
        async with self._write_lock:
            conn = self._w()
            await conn.execute("BEGIN IMMEDIATE")
            try:
                result = await self._import_locked(conn, rows, on_chunk, kind)
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
            if result.rows == 0:
                # Nothing to record: a version bump would only make every
                # server reload an identical snapshot.
                await conn.execute("ROLLBACK")
                async with self._read_lock:
                    version = int(await _scalar(self._r(), _VERSION_SQL))
                return ImportResult(0, {}, version)
            await conn.execute("COMMIT")
            return result

    async def _import_locked(
        self,
        conn: aiosqlite.Connection,
        rows: Iterable[EntryRow],
        on_chunk: Callable[[int], None] | None,
        kind: str,
    ) -> ImportResult:
        now = utc_timestamp(self._clock())
        async with conn.execute(
            "INSERT INTO change_log (at, kind, count) VALUES (?, ?, 0)", (now, kind)
        ) as cur:
            seq = cur.lastrowid
        if seq is None:  # pragma: no cover - sqlite always reports it for INSERT
            raise RuntimeError("change_log insert returned no rowid")
        by_list: Counter[str] = Counter()
        entries: list[_Params] = []
        entry_lines: list[int] = []
        pairs: list[_Params] = []
        pair_lines: list[int] = []
        done = 0
        pending: RowError | None = None

        async def flush() -> None:
            nonlocal done
            if not entries and not pairs:
                return
            # Writing in key order keeps consecutive upserts on neighbouring
            # B-tree pages (about 20% faster on shuffled input, measured). The
            # sort is stable, so a duplicate still follows its first occurrence.
            e_order = sorted(range(len(entries)), key=lambda i: entries[i][0])
            p_order = sorted(range(len(pairs)), key=lambda i: pairs[i][:2])
            await self._write_chunk(
                conn,
                seq,
                [entries[i] for i in e_order],
                [entry_lines[i] for i in e_order],
                [pairs[i] for i in p_order],
                [pair_lines[i] for i in p_order],
            )
            done += len(entries) + len(pairs)
            entries.clear()
            entry_lines.clear()
            pairs.clear()
            pair_lines.clear()
            if on_chunk is not None:
                on_chunk(done)

        iterator: Iterator[EntryRow] = iter(rows)
        while True:
            try:
                row = next(iterator)
            except StopIteration:
                break
            except RowError as exc:
                pending = exc
                break
            lst = row.list
            problem = _shape_problem(row)
            if problem is not None:
                pending = RowError(row.line, problem)
                break
            if lst is ListName.EXCEPTION:
                imsi = row.imsi or ""  # _shape_problem guarantees an imsi here
                pairs.append(
                    (row.imei, imsi, row.reason, row.source, row.since, row.note, seq, now)
                )
                pair_lines.append(row.line)
            else:
                entries.append(
                    (row.imei, lst.value, row.reason, row.source, row.since, row.note, seq, now)
                )
                entry_lines.append(row.line)
            by_list[lst.value] += 1
            if len(entries) + len(pairs) >= self._chunk_size:
                await flush()
        await flush()
        if pending is not None:
            raise pending
        await conn.execute(
            "UPDATE change_log SET count = ?, summary = ? WHERE seq = ?",
            (done, json.dumps(dict(sorted(by_list.items()))), seq),
        )
        return ImportResult(done, dict(by_list), seq)

    async def _write_chunk(
        self,
        conn: aiosqlite.Connection,
        seq: int,
        entries: Sequence[_Params],
        entry_lines: Sequence[int],
        pairs: Sequence[_Params],
        pair_lines: Sequence[int],
    ) -> None:
        # The savepoint lets the duplicate search see the table as it was
        # before this chunk, to tell "twice in this chunk" from "also in an
        # earlier chunk".
        await conn.execute("SAVEPOINT import_chunk")
        short = False
        try:
            if entries:
                async with conn.executemany(_ENTRY_UPSERT, entries) as cur:
                    short = cur.rowcount != len(entries)
            if pairs and not short:
                async with conn.executemany(_EXCEPTION_UPSERT, pairs) as cur:
                    short = cur.rowcount != len(pairs)
        except sqlite3.IntegrityError as exc:
            await conn.execute("ROLLBACK TO import_chunk")
            line, message = await self._find_bad_row(conn, entries, entry_lines, pairs, pair_lines)
            raise RowError(line, message or f"rejected by the database: {exc}") from exc
        if short:
            await conn.execute("ROLLBACK TO import_chunk")
            line, message = await self._find_duplicate(
                conn, seq, entries, entry_lines, pairs, pair_lines
            )
            raise RowError(line, message)
        await conn.execute("RELEASE import_chunk")

    async def _find_duplicate(
        self,
        conn: aiosqlite.Connection,
        seq: int,
        entries: Sequence[_Params],
        entry_lines: Sequence[int],
        pairs: Sequence[_Params],
        pair_lines: Sequence[int],
    ) -> tuple[int, str]:
        found: list[tuple[int, str]] = []
        first: dict[str, int] = {}
        for params, line in zip(entries, entry_lines, strict=True):
            imei = str(params[0])
            if imei in first:
                found.append(
                    (line, f"IMEI {imei} appears twice in this file (first at line {first[imei]})")
                )
            else:
                first[imei] = line
        keys = list(first)
        for i in range(0, len(keys), _IN_BATCH):
            batch = keys[i : i + _IN_BATCH]
            marks = ",".join("?" * len(batch))
            async with conn.execute(
                f"SELECT imei FROM list_entry WHERE seq = ? AND imei IN ({marks})", (seq, *batch)
            ) as cur:
                for (imei,) in await cur.fetchall():
                    found.append((first[imei], f"IMEI {imei} appears twice in this file"))
        first_pair: dict[tuple[str, str], int] = {}
        for params, line in zip(pairs, pair_lines, strict=True):
            pair = (str(params[0]), str(params[1]))
            if pair in first_pair:
                found.append(
                    (
                        line,
                        f"exception {pair[0]}/{pair[1]} appears twice in this file"
                        f" (first at line {first_pair[pair]})",
                    )
                )
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
                    found.append(
                        (
                            first_pair[(imei, imsi)],
                            f"exception {imei}/{imsi} appears twice in this file",
                        )
                    )
        if not found:  # pragma: no cover - rowcount fell short for another reason
            return (min([*entry_lines, *pair_lines], default=0), "row was not stored")
        return min(found)

    async def _find_bad_row(
        self,
        conn: aiosqlite.Connection,
        entries: Sequence[_Params],
        entry_lines: Sequence[int],
        pairs: Sequence[_Params],
        pair_lines: Sequence[int],
    ) -> tuple[int, str | None]:
        # Only callers that bypass csvio's validation get here; replaying the
        # chunk row by row is slow but finds the culprit exactly.
        for sql, rows, lines in (
            (_ENTRY_UPSERT, entries, entry_lines),
            (_EXCEPTION_UPSERT, pairs, pair_lines),
        ):
            for params, line in zip(rows, lines, strict=True):
                await conn.execute("SAVEPOINT import_row")
                try:
                    await conn.execute(sql, params)
                except sqlite3.IntegrityError as exc:
                    await conn.execute("ROLLBACK TO import_row")
                    return line, f"rejected by the database: {exc}"
                finally:
                    await conn.execute("RELEASE import_row")
        return min([*entry_lines, *pair_lines], default=0), None


def _shape_problem(row: EntryRow) -> str | None:
    # Only what csvio cannot be relied on for when rows come from elsewhere;
    # formats (digits, lengths) are left to the tables' CHECK constraints.
    if row.list is ListName.EXCEPTION:
        return None if row.imsi else "exception row needs an imsi"
    if row.list not in (ListName.WHITE, ListName.GREY, ListName.BLACK):
        return f"unknown list {row.list!r}"
    if row.imsi is not None:
        return "imsi is only allowed on exception rows"
    return None


async def _scalar(conn: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> Any:
    async with conn.execute(sql, params) as cur:
        row = await cur.fetchone()
    return None if row is None else row[0]
