"""SQLite storage of the regime's own data: observations, decision counts, the TAC database.

Owns the SQL behind `eir.policy.observations.ObservationStore` (point reads
on the hot path's misses, idempotent batch writes, pruning after the
retention, history import), the per-day decision counters, and the TAC
database import (``tac,brand,model,class``). Tables: migration 0002.

Observation writes do not touch the change log: a sighting is not a list
change, so it neither bumps the snapshot version nor enters the audit
trail. TAC and history imports are operations a person runs, so each is one
audited change.

The hot path's miss read uses its own synchronous ``sqlite3`` connection
(read-only, in the event loop's thread): a primary-key range read of a
clustered table takes microseconds, less than handing it to a thread.
"""

from __future__ import annotations

import csv
import hashlib
import sqlite3
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

from eir.policy.model import normalize_imei, normalize_imsi, to_epoch
from eir.policy.observations import ObservationRow
from eir.policy.registry import RowError
from eir.policy.sqlite import SqliteRegistry

__all__ = ["SqliteObservations", "import_tac_csv", "parse_observation_csv", "parse_tac_csv"]

_OBS_UPSERT: Final = """
INSERT INTO observation (imei, imsi, operator, first_seen, last_seen) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (imei, imsi, operator) DO UPDATE SET
    first_seen = MIN(first_seen, excluded.first_seen),
    last_seen = MAX(last_seen, excluded.last_seen)
"""

_STATUS_NAMES: Final = {0: "WHITELISTED", 1: "BLACKLISTED", 2: "GREYLISTED", None: "UNKNOWN"}

TAC_COLUMNS: Final = ("tac", "brand", "model", "class")
OBSERVATION_COLUMNS: Final = ("imei", "imsi", "operator", "first_seen", "last_seen")


class SqliteObservations:
    """Observation store and counters over an open `SqliteRegistry`."""

    def __init__(self, registry: SqliteRegistry) -> None:
        self.registry = registry
        self._sync: sqlite3.Connection | None = None
        self._operators: dict[str, int] = {}

    # -- hot path: synchronous point reads ---------------------------------------

    def _reader(self) -> sqlite3.Connection:
        if self._sync is None:
            uri = self.registry.path.absolute().as_uri() + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=2000")
            self._sync = conn
        return self._sync

    def read_sightings(self, imei: int) -> list[tuple[str, int, int]]:
        """(imsi, first_seen, last_seen) per IMSI of one IMEI, merged over operators."""
        rows = self._reader().execute(
            "SELECT imsi, MIN(first_seen), MAX(last_seen) FROM observation WHERE imei = ?"
            " GROUP BY imsi", (imei,)).fetchall()
        return [(str(i), int(f), int(la)) for i, f, la in rows]

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    # -- batch writes -----------------------------------------------------------------

    async def _operator_ids(self, names: Iterable[str]) -> dict[str, int]:
        missing = sorted({n for n in names if n not in self._operators})
        if missing:
            conn = self.registry._w()
            await conn.executemany("INSERT OR IGNORE INTO operator (name) VALUES (?)",
                                   [(n,) for n in missing])
            for n in missing:
                async with conn.execute("SELECT id FROM operator WHERE name = ?", (n,)) as cur:
                    row = await cur.fetchone()
                assert row is not None
                self._operators[n] = int(row[0])
        return self._operators

    async def write_sightings(self, rows: Iterable[ObservationRow],
                              operators: Collection[str] | None = None) -> None:
        """Upsert a batch (earliest first_seen, latest last_seen win); one transaction.

        Without ``operators`` the rows are sorted here first; with them, they
        are taken as they come, lazily, in the writer's thread (the hot-path
        cache's flush: already in IMEI order).
        """
        if operators is None:
            rows = sorted(rows)
            operators = {r[2] for r in rows}
        if not operators:
            return
        try:
            async with self.registry.raw_transaction() as conn:
                ids = await self._operator_ids(operators)
                await conn.executemany(
                    _OBS_UPSERT, ((i, s, ids[o], f, la) for i, s, o, f, la in rows))
        except BaseException:
            self._operators.clear()  # ids inserted by the rolled-back transaction are gone
            raise

    async def write_counts(self, counts: Counter[tuple[str, int | None, str]], now: float) -> None:
        """Add decision counts to the day of ``now`` (UTC)."""
        if not counts:
            return
        day = datetime.fromtimestamp(int(now), UTC).strftime("%Y-%m-%d")
        async with self.registry.raw_transaction() as conn:
            await conn.executemany(
                "INSERT INTO decision_count (day, operator, status, reason, count)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (day, operator, status, reason)"
                " DO UPDATE SET count = count + excluded.count",
                [(day, op, _STATUS_NAMES[st], reason, n)
                 for (op, st, reason), n in counts.items()])

    async def prune(self, before: int, batch: int = 50_000) -> int:
        """Delete observations last seen before ``before``; in batches, so readers keep going."""
        total = 0
        while True:
            async with self.registry.raw_transaction() as conn, conn.execute(
                "DELETE FROM observation WHERE (imei, imsi, operator) IN"
                " (SELECT imei, imsi, operator FROM observation WHERE last_seen < ? LIMIT ?)",
                (before, batch),
            ) as cur:
                n = max(cur.rowcount, 0)
            total += n
            if n < batch:
                return total

    # -- reads for people ---------------------------------------------------------------

    async def history(self, imei14: str) -> list[dict[str, Any]]:
        async with self.registry.read() as conn, conn.execute(
            "SELECT o.imsi, p.name, o.first_seen, o.last_seen FROM observation AS o"
            " JOIN operator AS p ON p.id = o.operator WHERE o.imei = ? ORDER BY o.first_seen",
            (int(imei14),),
        ) as cur:
            rows = await cur.fetchall()
        return [{"imsi": imsi or None, "operator": op, "first_seen": _ts(f), "last_seen": _ts(la)}
                for imsi, op, f, la in rows]

    async def counts(self, day: str | None = None) -> list[dict[str, Any]]:
        where, params = (" WHERE day = ?", (day,)) if day else ("", ())
        async with self.registry.read() as conn, conn.execute(
            "SELECT day, operator, status, reason, count FROM decision_count"
            f"{where} ORDER BY day, operator, count DESC", params
        ) as cur:
            rows = await cur.fetchall()
        return [dict(zip(("day", "operator", "status", "reason", "count"), r, strict=True))
                for r in rows]

    async def observed_imeis(self) -> list[tuple[int, str]]:
        """Every observed IMEI with the operator that saw it last (for previews)."""
        async with self.registry.read() as conn, conn.execute(
            "SELECT o.imei, p.name, MAX(o.last_seen) FROM observation AS o"
            " JOIN operator AS p ON p.id = o.operator GROUP BY o.imei"
        ) as cur:
            return [(int(i), str(op)) for i, op, _ in await cur.fetchall()]

    # -- history import -------------------------------------------------------------------

    async def import_history(self, rows: Iterable[ObservationRow], *, actor: str | None = None,
                             summary: dict[str, Any] | None = None,
                             on_chunk: Callable[[int], None] | None = None) -> int:
        """Import operators' past sightings (one audited change); return the row count."""
        try:
            return await self._import_history(rows, actor, summary, on_chunk)
        except BaseException:
            self._operators.clear()  # ids inserted by the rolled-back transaction are gone
            raise

    async def _import_history(self, rows: Iterable[ObservationRow], actor: str | None,
                              summary: dict[str, Any] | None,
                              on_chunk: Callable[[int], None] | None) -> int:
        n = 0
        async with self.registry.change("import-observations", actor=actor) as ch:
            chunk: list[ObservationRow] = []

            async def flush() -> None:
                ids = await self._operator_ids(r[2] for r in chunk)
                await ch.conn.executemany(
                    _OBS_UPSERT, [(i, s, ids[o], f, la) for i, s, o, f, la in chunk])
                chunk.clear()
                if on_chunk is not None:
                    on_chunk(n)

            for row in rows:
                chunk.append(row)
                n += 1
                if len(chunk) >= 10_000:
                    await flush()
            await flush()
            ch.count = n
            ch.summary = {"observations": n, **(summary or {})}
            if n == 0:
                ch.discard = True
        return n

    async def import_tac(self, rows: Iterable[tuple[int, str | None, str | None, str]], *,
                         actor: str | None = None, summary: dict[str, Any] | None = None,
                         on_chunk: Callable[[int], None] | None = None) -> int:
        """Upsert TAC rows (tac, brand, model, class) in one audited change."""
        n = 0
        async with self.registry.change("import-tac", actor=actor) as ch:
            chunk: list[tuple[Any, ...]] = []

            async def flush() -> None:
                await ch.conn.executemany(
                    "INSERT INTO tac (tac, brand, model, class, seq) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (tac) DO UPDATE SET brand = excluded.brand,"
                    " model = excluded.model, class = excluded.class, seq = excluded.seq",
                    chunk)
                chunk.clear()
                if on_chunk is not None:
                    on_chunk(n)

            for tac, brand, model, cls in rows:
                chunk.append((tac, brand, model, cls.strip().lower(), ch.seq))
                n += 1
                if len(chunk) >= 20_000:
                    await flush()
            await flush()
            ch.count = n
            ch.summary = {"tacs": n, **(summary or {})}
            if n == 0:
                ch.discard = True
        return n


def _ts(t: int) -> str:
    return datetime.fromtimestamp(int(t), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _csv_rows(lines: Iterable[str], columns: tuple[str, ...],
              required: frozenset[str]) -> Iterator[tuple[int, dict[str, str]]]:
    reader = csv.reader(lines, strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise RowError(1, "empty file: a header row is required")
        names = [h.strip().lower().lstrip("\ufeff") for h in header]
        unknown = [n for n in names if n not in columns]
        if unknown:
            raise RowError(1, f"unknown column(s) {', '.join(map(repr, unknown))}; "
                              f"allowed: {', '.join(columns)}")
        missing = sorted(required - set(names))
        if missing:
            raise RowError(1, f"missing required column(s) {', '.join(missing)}")
        for record in reader:
            if not record or (len(record) == 1 and not record[0].strip()):
                continue
            if len(record) != len(names):
                raise RowError(reader.line_num,
                               f"expected {len(names)} fields, found {len(record)}")
            yield reader.line_num, {n: v.strip() for n, v in zip(names, record, strict=True)}
    except csv.Error as exc:
        raise RowError(reader.line_num, f"bad CSV: {exc}") from None


def parse_tac_csv(lines: Iterable[str]) -> Iterator[tuple[int, str | None, str | None, str]]:
    """Rows of ``tac,brand,model,class``; a bad row raises `RowError` naming its line."""
    seen: set[int] = set()
    for line, rec in _csv_rows(lines, TAC_COLUMNS, frozenset({"tac", "class"})):
        tac = rec["tac"]
        if len(tac) != 8 or not (tac.isascii() and tac.isdigit()):
            raise RowError(line, f"TAC {tac!r} is not 8 decimal digits")
        cls = rec["class"].lower()
        if not cls or len(cls) > 64 or not cls.isprintable():
            raise RowError(line, "class must be printable text of 1 to 64 characters")
        if int(tac) in seen:
            raise RowError(line, f"TAC {tac} appears twice in this file")
        seen.add(int(tac))
        yield int(tac), rec.get("brand") or None, rec.get("model") or None, cls


def parse_observation_csv(lines: Iterable[str]) -> Iterator[ObservationRow]:
    """Rows of ``imei,imsi,operator,first_seen[,last_seen]`` (operators' history)."""
    for line, rec in _csv_rows(lines, OBSERVATION_COLUMNS,
                               frozenset({"imei", "operator", "first_seen"})):
        imei = normalize_imei(rec["imei"])
        if imei is None:
            raise RowError(line, f"IMEI {rec['imei']!r} is not 14 or 15 decimal digits")
        raw_imsi = rec.get("imsi", "")
        imsi = normalize_imsi(raw_imsi) if raw_imsi else ""
        if imsi is None:
            raise RowError(line, f"IMSI {raw_imsi!r} is not 5 to 15 decimal digits")
        op = rec["operator"]
        if not op or len(op) > 128 or not op.isprintable():
            raise RowError(line, "operator must be printable text of 1 to 128 characters")
        try:
            first = to_epoch(rec["first_seen"])
            last = to_epoch(rec["last_seen"]) if rec.get("last_seen") else first
        except ValueError as exc:
            raise RowError(line, str(exc)) from None
        if last < first:
            raise RowError(line, "last_seen is before first_seen")
        yield int(imei), imsi, op, first, last


async def import_tac_csv(obs: SqliteObservations, path: Path | IO[bytes],
                         **kwargs: Any) -> int:
    """Import a TAC CSV file (one audited change, the file's SHA-256 in the record)."""
    data = path.read_bytes() if isinstance(path, Path) else path.read()
    digest = hashlib.sha256(data).hexdigest()
    lines = data.decode("utf-8-sig").splitlines(keepends=True)
    return await obs.import_tac(parse_tac_csv(lines), summary={"file_sha256": digest}, **kwargs)
