"""The list import's staging table: entries appended, then merged in key order.

Owns how an import writes ``list_entry`` (the registry's big table): each
chunk is appended to a temporary table as one JSON statement, and the whole
stage is then upserted into ``list_entry`` by one INSERT ... SELECT ordered
by IMEI. Upserting chunk by chunk lands every row on a random page of a
B-tree that, at ten million entries, no longer fits the page cache (measured:
171 s per 10,000,000 rows, the writer thread the bottleneck); one ordered
pass walks the tree once, and SQLite sorts and writes in C with the GIL
released while the importing thread parses the next rows.

The upsert is `_ENTRY_UPSERT`'s (eir/policy/sqlite.py), in two statements
because ON CONFLICT DO UPDATE cannot see which source rows named a since.
Failure paths find the culprit in the stage with its file line: a duplicate
(twice in the stage, or already written by this import) or a row a CHECK
constraint refused.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, Final

import aiosqlite

__all__ = ["Stage"]

_CREATE: Final = """
CREATE TEMP TABLE IF NOT EXISTS import_stage (
    imei TEXT, list TEXT, reason TEXT, source TEXT, since TEXT, note TEXT,
    grace_until TEXT, evidence TEXT, line INTEGER
)"""

_APPEND: Final = """
INSERT INTO temp.import_stage
SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6, value->>7,
       value->>8
FROM json_each(?1)"""

# ?1 seq, ?2 now. Rows of this import already in list_entry carry seq: the
# WHERE skips them, so a duplicate makes the count written fall short. The
# WHERE true is SQLite's rule for an upsert after a SELECT; ORDER BY rowid
# keeps file order among equal IMEIs, so the first occurrence is written.
_MERGE: Final = """
INSERT INTO list_entry (imei, list, reason, source, since, note, seq, grace_until, evidence)
SELECT imei, list, reason, source, COALESCE(since, ?2), note, ?1, grace_until, evidence
FROM temp.import_stage WHERE {which} ORDER BY imei, rowid
ON CONFLICT (imei) DO UPDATE SET
    list = excluded.list,
    reason = excluded.reason,
    source = excluded.source,
    note = excluded.note,
    grace_until = excluded.grace_until,
    evidence = excluded.evidence,
    prev = NULL,
    -- An entry re-imported onto the same list without a since keeps its
    -- old one: 'since' dates the listing, not the latest edit of a note.
    since = {since},
    seq = excluded.seq
WHERE list_entry.seq <> excluded.seq
"""
_MERGE_UNDATED: Final = _MERGE.format(
    which="since IS NULL",
    since="CASE WHEN list_entry.list <> excluded.list THEN excluded.since"
          " ELSE list_entry.since END")
_MERGE_DATED: Final = _MERGE.format(which="since IS NOT NULL", since="excluded.since")

_DUPLICATE_IN_STAGE: Final = """
SELECT line, imei, first FROM (
    SELECT line, imei, FIRST_VALUE(line) OVER w AS first, ROW_NUMBER() OVER w AS n
    FROM temp.import_stage WINDOW w AS (PARTITION BY imei ORDER BY rowid)
) WHERE n = 2 ORDER BY line LIMIT 1"""

_DUPLICATE_OF_WRITTEN: Final = """
SELECT s.line, s.imei FROM temp.import_stage AS s JOIN list_entry AS e ON e.imei = s.imei
WHERE e.seq = ?1 ORDER BY s.line LIMIT 1"""

# list_entry's CHECK and NOT NULL constraints (migrations 0001 and 0002), as
# a search: only callers that bypass csvio's validation can trip them.
_REFUSED: Final = """
SELECT line, imei, list FROM temp.import_stage
WHERE imei IS NULL
   OR NOT imei GLOB '[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]'
   OR list IS NULL OR list NOT IN ('white', 'grey', 'black') OR reason IS NULL
ORDER BY line LIMIT 1"""


class Stage:
    """One import's staged list entries, on the import's writer connection.

    Lives inside the import's transaction: the temporary table is created
    and emptied there, so a rolled-back import leaves nothing behind.
    """

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self.rows = 0
        self._dated = False
        self._created = False

    async def append(self, entries: Sequence[tuple[Any, ...]], text: str) -> None:
        """Stage entries (import_batches.Batch.entries) given as their JSON ``text``."""
        if not entries:
            return
        if not self._created:
            # The sorter behind the merge's ORDER BY may use a helper thread.
            await self._conn.execute("PRAGMA threads=2")
            await self._conn.execute(_CREATE)
            await self._conn.execute("DELETE FROM temp.import_stage")
            self._created = True
        await self._conn.execute(_APPEND, (text,))
        self.rows += len(entries)
        self._dated = self._dated or any(p[4] is not None for p in entries)

    async def merge(self, seq: int, now: str) -> tuple[int, str] | None:
        """Upsert the stage into list_entry and empty it; (line, problem) if refused.

        On a problem nothing of the merge is written (the caller's import
        then fails as a whole).
        """
        if not self.rows:
            return None
        conn = self._conn
        await conn.execute("SAVEPOINT import_merge")
        try:
            written = 0
            for sql in (_MERGE_UNDATED, _MERGE_DATED) if self._dated else (_MERGE_UNDATED,):
                async with conn.execute(sql, (seq, now)) as cur:
                    written += cur.rowcount
        except sqlite3.IntegrityError as exc:
            await conn.execute("ROLLBACK TO import_merge")
            return await self._refused(exc)
        if written != self.rows:
            await conn.execute("ROLLBACK TO import_merge")
            return await self._duplicate(seq)
        await conn.execute("RELEASE import_merge")
        await conn.execute("DELETE FROM temp.import_stage")
        self.rows, self._dated = 0, False
        return None

    async def drop(self) -> None:
        if self._created:
            await self._conn.execute("DROP TABLE IF EXISTS temp.import_stage")
            await self._conn.execute("PRAGMA threads=0")
            self._created = False

    async def _duplicate(self, seq: int) -> tuple[int, str]:
        found: list[tuple[int, str]] = []
        async with self._conn.execute(_DUPLICATE_IN_STAGE) as cur:
            row = await cur.fetchone()
        if row is not None:
            found.append((row[0], f"IMEI {row[1]} appears twice in this file"
                                  f" (first at line {row[2]})"))
        async with self._conn.execute(_DUPLICATE_OF_WRITTEN, (seq,)) as cur:
            row = await cur.fetchone()
        if row is not None:
            found.append((row[0], f"IMEI {row[1]} appears twice in this file"))
        # pragma: no cover on the fallback: the count fell short for another reason
        return min(found) if found else (0, "row was not stored")

    async def _refused(self, exc: sqlite3.IntegrityError) -> tuple[int, str]:
        async with self._conn.execute(_REFUSED) as cur:
            row = await cur.fetchone()
        if row is None:
            return 0, f"rejected by the database: {exc}"
        return row[0], f"rejected by the database: {exc} (IMEI {row[1]!r}, list {row[2]!r})"
