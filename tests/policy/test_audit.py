"""eir.policy.audit and the sealed change log: the hash chain, tampering, triggers, legacy rows.

An intruder with the file is simulated with a plain ``sqlite3`` connection
beside the open registry: it drops the triggers where it needs to, then
changes, deletes, inserts or re-orders rows. `verify_audit` must say which
record is broken.
"""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from eir.policy.audit import GENESIS, AuditRecord, record_hash, verify_chain
from eir.policy.csvio import CsvImportError, import_csv
from eir.policy.lifecycle import (
    LifecycleError,
    add_exception,
    legalise,
    recovered,
    remove_exception,
    report,
)
from eir.policy.model import ListName
from eir.policy.registry import EntryRow
from eir.policy.sqlite import SqliteRegistry, load_migrations, split_sql
from eir.policy.sqlite_regime import SqliteObservations

IMEI_A = "35209900176148"
IMEI_B = "49015420323751"
IMEI_C = "26053179311383"
IMSI = "401011234567890"
T0 = 1_748_779_200  # 2025-06-01T12:00:00Z


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)  # every record gets its own time
        return self.now


def csv_bytes(*lines: str) -> io.BytesIO:
    return io.BytesIO(("\n".join(lines) + "\n").encode())


async def records(reg: SqliteRegistry) -> list[AuditRecord]:
    return [r async for r in reg.audit_records()]


async def mixed_operations(reg: SqliteRegistry) -> None:
    """One of every kind of audited change."""
    await import_csv(reg, csv_bytes("imei,list,reason,source",
                                    f"{IMEI_A},black,illegal_import,ministry",
                                    f"{IMEI_B},grey,,ministry"), actor="loader")
    await legalise(reg, IMEI_A, evidence="receipt 1", actor="clerk", imsi=IMSI)
    await report(reg, IMEI_C, reason="stolen", evidence="case 2", actor="officer")
    await add_exception(reg, IMEI_C, IMSI, evidence="order 3", actor="op")
    await remove_exception(reg, IMEI_C, IMSI, actor="op")
    await recovered(reg, IMEI_C, evidence="case 2 closed", actor="officer")
    obs = SqliteObservations(reg)
    await obs.import_tac([(35209900, "Acme", "A1", "smartphone")], actor="tacs",
                         summary={"file_sha256": "ab" * 32})
    await obs.import_history([(int(IMEI_B), IMSI, "op-1", T0, T0 + 60)], actor="hist")
    await import_csv(reg, csv_bytes("imei,list,op", f"{IMEI_B},grey,remove"),
                     actor="loader", scope_source="ministry")


@pytest.fixture
async def reg(tmp_path: Path) -> AsyncIterator[SqliteRegistry]:
    async with SqliteRegistry(tmp_path / "eir.db", clock=Clock()) as r:
        await mixed_operations(r)
        yield r


def intrude(path: Path, *statements: tuple[str, tuple[Any, ...]]) -> None:
    """Run statements as someone with the file would: triggers dropped first."""
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("DROP TRIGGER IF EXISTS change_log_no_update")
        db.execute("DROP TRIGGER IF EXISTS change_log_no_delete")
        for sql, params in statements:
            db.execute(sql, params)


def raw_row(path: Path, seq: int) -> dict[str, Any]:
    with closing(sqlite3.connect(path)) as db:
        db.row_factory = sqlite3.Row
        return dict(db.execute("SELECT * FROM change_log WHERE seq = ?", (seq,)).fetchone())


def put_back(path: Path, row: dict[str, Any]) -> None:
    cols = ", ".join(row)
    marks = ", ".join("?" * len(row))
    intrude(path, (f"INSERT OR REPLACE INTO change_log ({cols}) VALUES ({marks})",
                   tuple(row.values())))


# -- a clean chain ---------------------------------------------------------------------------


def test_empty_chain_is_valid() -> None:
    result = verify_chain([])
    assert (result.ok, result.records, result.head, result.broken_seq) == (True, 0, GENESIS, None)


async def test_fresh_chain_of_mixed_operations_verifies(reg: SqliteRegistry) -> None:
    recs = await records(reg)
    assert [r.kind for r in recs] == [
        "import", "legalise", "report-stolen", "exception-add", "exception-remove",
        "recovered", "import-tac", "import-observations", "import"]
    assert [r.seq for r in recs] == list(range(1, len(recs) + 1))
    assert recs[0].prev_hash == GENESIS
    for before, rec in zip([None, *recs], recs, strict=False):
        prev = GENESIS if before is None else before.hash
        assert prev is not None and rec.prev_hash == prev
        assert rec.hash == record_hash(prev, rec)
        assert rec.hash is not None and len(rec.hash) == 64
    result = await reg.verify_audit()
    assert (result.ok, result.records, result.head, result.broken_seq, result.problem) == (
        True, len(recs), recs[-1].hash, None, None)
    # Who, when, why, with what evidence.
    assert (recs[0].actor, recs[0].target, recs[0].evidence) == ("loader", None, None)
    assert json.loads(recs[0].summary or "")["file_sha256"]
    assert (recs[1].actor, recs[1].target, recs[1].evidence) == ("clerk", IMEI_A, "receipt 1")
    assert json.loads(recs[6].summary or "") == {"tacs": 1, "file_sha256": "ab" * 32}
    assert json.loads(recs[8].summary or "")["scope_source"] == "ministry"


async def test_chain_survives_reopening_and_grows(tmp_path: Path) -> None:
    path = tmp_path / "eir.db"
    async with SqliteRegistry(path, clock=Clock()) as reg:
        await mixed_operations(reg)
        head = (await reg.verify_audit()).head
    async with SqliteRegistry(path, clock=Clock()) as reg:
        again = await reg.verify_audit()
        assert again.ok and again.head == head
        await report(reg, IMEI_B, reason="lost", evidence="case 9", actor="officer")
        grown = await reg.verify_audit()
        assert grown.ok and grown.records == again.records + 1
        assert (await records(reg))[-1].prev_hash == head


def test_canonical_form_ignores_json_spacing_and_key_order() -> None:
    a = AuditRecord(1, "2025-06-01T12:00:00Z", "import", 2, '{"b": 1, "a": [1, 2]}', "x", None,
                    None)
    b = replace(a, summary='{"a":[1,2],"b":1}')
    assert a.canonical() == b.canonical()
    assert record_hash(GENESIS, a) == record_hash(GENESIS, b)
    assert record_hash(GENESIS, a) != record_hash("1" * 64, a)


# -- tampering -------------------------------------------------------------------------------

# Each field with a function giving a different value of the same kind.
MUTATIONS: dict[str, Any] = {
    "at": lambda v: "2000-01-01T00:00:00Z",
    "kind": lambda v: v + "x",
    "count": lambda v: v + 1,
    "summary": lambda v: json.dumps({"tampered": True}),
    "actor": lambda v: (v or "") + "x",
    "target": lambda v: (v or "") + "1",
    "evidence": lambda v: (v or "") + "x",
    "prev_hash": lambda v: "f" * 64,
    "hash": lambda v: "e" * 64,
}


@pytest.mark.parametrize("field", list(MUTATIONS))
async def test_changing_any_field_of_any_record_is_detected(reg: SqliteRegistry,
                                                            field: str) -> None:
    path = reg.path
    n = len(await records(reg))
    for seq in range(1, n + 1):
        original = raw_row(path, seq)
        intrude(path, (f"UPDATE change_log SET {field} = ? WHERE seq = ?",
                       (MUTATIONS[field](original[field]), seq)))
        result = await reg.verify_audit()
        # A changed hash no longer matches its own record's content either.
        assert not result.ok, (field, seq)
        assert result.broken_seq == seq, (field, seq, result)
        assert result.problem is not None and result.problem.startswith(f"record {seq}:")
        assert result.records == seq
        put_back(path, original)
    assert (await reg.verify_audit()).ok


async def test_a_summary_that_is_not_json_is_named(reg: SqliteRegistry) -> None:
    intrude(reg.path, ("UPDATE change_log SET summary = 'not json' WHERE seq = 2", ()))
    result = await reg.verify_audit()
    assert not result.ok and result.broken_seq == 2


async def test_deleting_a_record_is_detected_at_the_next_one(reg: SqliteRegistry) -> None:
    path = reg.path
    n = len(await records(reg))
    for seq in range(1, n):
        original = raw_row(path, seq)
        intrude(path, ("DELETE FROM change_log WHERE seq = ?", (seq,)))
        result = await reg.verify_audit()
        assert (result.ok, result.broken_seq) == (False, seq + 1)
        assert result.problem == (f"record {seq + 1}: previous-hash link broken "
                                  "(a record before it was changed, inserted or deleted)")
        put_back(path, original)
    assert (await reg.verify_audit()).ok


async def test_deleting_the_last_record_changes_the_head(reg: SqliteRegistry) -> None:
    # Documented limit: a cut tail verifies, and is caught by comparing heads.
    good = await reg.verify_audit()
    intrude(reg.path, ("DELETE FROM change_log WHERE seq = ?", (good.records,)))
    cut = await reg.verify_audit()
    assert cut.ok and cut.records == good.records - 1
    assert cut.head != good.head


async def test_inserting_a_record_is_detected(reg: SqliteRegistry) -> None:
    path = reg.path
    good = await reg.verify_audit()
    n = good.records
    forged = AuditRecord(n + 1, "2025-06-02T00:00:00Z", "legalise", 1, None, "intruder",
                         IMEI_B, "none")
    insert = ("INSERT INTO change_log (seq, at, kind, count, summary, actor, target, evidence,"
              " prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
    fields = (forged.seq, forged.at, forged.kind, forged.count, forged.summary, forged.actor,
              forged.target, forged.evidence)
    # Unsealed (as a writer that bypassed `change` would leave it).
    intrude(path, (insert, (*fields, None, None)))
    result = await reg.verify_audit()
    assert (result.ok, result.broken_seq) == (False, n + 1)
    # Sealed with a made-up hash.
    intrude(path, ("DELETE FROM change_log WHERE seq = ?", (n + 1,)),
            (insert, (*fields, good.head, "d" * 64)))
    result = await reg.verify_audit()
    assert (result.ok, result.broken_seq) == (False, n + 1)
    assert "content does not match its hash" in (result.problem or "")
    # Sealed correctly: only the head tells (``eir audit verify --expect-head``).
    intrude(path, ("DELETE FROM change_log WHERE seq = ?", (n + 1,)),
            (insert, (*fields, good.head, record_hash(good.head, forged))))
    result = await reg.verify_audit()
    assert result.ok and result.head != good.head


async def test_inserting_a_well_sealed_record_in_the_middle_is_caught_at_the_next(
    reg: SqliteRegistry,
) -> None:
    recs = await records(reg)
    at = 3
    before = recs[at - 1]
    assert before.hash is not None
    forged = AuditRecord(before.seq, before.at, "legalise", 1, None, "intruder", IMEI_B, "x",
                         before.hash)
    forged = replace(forged, hash=record_hash(before.hash, forged))
    tampered = [*recs[:at], forged, *recs[at:]]
    result = verify_chain(tampered)
    assert (result.ok, result.broken_seq, result.records) == (False, recs[at].seq, at + 2)
    assert "previous-hash link broken" in (result.problem or "")


async def test_reordering_records_is_detected(reg: SqliteRegistry) -> None:
    # Swap records 3 and 4 by their seq.
    intrude(reg.path,
            ("UPDATE change_log SET seq = -1 WHERE seq = 3", ()),
            ("UPDATE change_log SET seq = 3 WHERE seq = 4", ()),
            ("UPDATE change_log SET seq = 4 WHERE seq = -1", ()))
    result = await reg.verify_audit()
    assert (result.ok, result.broken_seq) == (False, 3)
    # Swapped back, the chain is whole again.
    intrude(reg.path,
            ("UPDATE change_log SET seq = -1 WHERE seq = 3", ()),
            ("UPDATE change_log SET seq = 3 WHERE seq = 4", ()),
            ("UPDATE change_log SET seq = 4 WHERE seq = -1", ()))
    assert (await reg.verify_audit()).ok
    # The same in memory, each record keeping its own seq.
    recs = await records(reg)
    swapped = [*recs[:2], recs[3], recs[2], *recs[4:]]
    result = verify_chain(swapped)
    assert (result.ok, result.broken_seq) == (False, 4)


async def test_triggers_refuse_update_and_delete(reg: SqliteRegistry) -> None:
    with closing(sqlite3.connect(reg.path)) as db:
        for sql in ("UPDATE change_log SET actor = 'x' WHERE seq = 1",
                    "UPDATE change_log SET hash = NULL WHERE seq = 2",
                    "DELETE FROM change_log WHERE seq = 1",
                    "DELETE FROM change_log"):
            with pytest.raises(sqlite3.DatabaseError, match="the audit trail is append-only"):
                db.execute(sql)
            db.rollback()
    assert (await reg.verify_audit()).ok


# -- legacy rows and rows that nobody sealed -------------------------------------------------


def write_schema_1(path: Path) -> None:
    """A registry file as version 0001 of the code left it, written by hand."""
    first = load_migrations()[0]
    assert first.version == 1
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY,"
                   " name TEXT NOT NULL, applied_at TEXT NOT NULL)")
        for statement in split_sql(first.sql):
            db.execute(statement)
        db.execute("INSERT INTO schema_version VALUES (1, ?, '2025-01-01T00:00:00Z')",
                   (first.name,))
        db.execute("INSERT INTO change_log (at, kind, count, summary) VALUES"
                   " ('2025-01-01T00:00:00Z', 'import', 2, '{\"rows\": {\"black\": 2}}')")
        db.execute("INSERT INTO change_log (at, kind, count, summary) VALUES"
                   " ('2025-01-02T00:00:00Z', 'import', 1, NULL)")
        db.execute("INSERT INTO list_entry (imei, list, reason, source, since, seq) VALUES"
                   f" ('{IMEI_A}', 'black', 'stolen', 'police', '2025-01-01T00:00:00Z', 1)")


async def test_legacy_rows_are_sealed_when_the_schema_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    write_schema_1(path)
    async with SqliteRegistry(path, clock=Clock()) as reg:
        assert await reg.schema_version() == len(load_migrations())
        recs = await records(reg)
        assert [(r.seq, r.kind, r.count, r.actor) for r in recs] == [
            (1, "import", 2, None), (2, "import", 1, None)]
        assert recs[0].prev_hash == GENESIS and recs[1].prev_hash == recs[0].hash
        result = await reg.verify_audit()
        assert result.ok and result.records == 2
        sealed_head = result.head
        # Sealed rows are now append-only, like any other.
        with closing(sqlite3.connect(path)) as db, pytest.raises(sqlite3.DatabaseError,
                                                                  match="append-only"):
            db.execute("UPDATE change_log SET kind = 'x' WHERE seq = 1")
        # New changes chain onto the sealed legacy rows.
        await recovered(reg, IMEI_A, evidence="found", actor="officer")
        recs = await records(reg)
        assert recs[-1].prev_hash == sealed_head
        assert (await reg.verify_audit()).ok
    # Opening again seals nothing twice.
    async with SqliteRegistry(path, clock=Clock()) as reg:
        assert [r.hash for r in await records(reg)] == [r.hash for r in recs]


async def test_an_unsealed_row_in_a_current_file_is_not_laundered_on_open(
    tmp_path: Path,
) -> None:
    path = tmp_path / "eir.db"
    async with SqliteRegistry(path, clock=Clock()) as reg:
        await mixed_operations(reg)
        n = len(await records(reg))
    with closing(sqlite3.connect(path)) as db, db:  # no trigger refuses an INSERT
        db.execute("INSERT INTO change_log (at, kind, count) VALUES"
                   " ('2025-06-03T00:00:00Z', 'import', 0)")
    async with SqliteRegistry(path, clock=Clock()) as reg:
        recs = await records(reg)
        assert recs[-1].seq == n + 1 and recs[-1].hash is None
        result = await reg.verify_audit()
        assert (result.ok, result.broken_seq) == (False, n + 1)


# -- what leaves no record -------------------------------------------------------------------


async def test_empty_and_failed_operations_leave_no_record(reg: SqliteRegistry) -> None:
    before = await records(reg)
    version = await reg.current_version()
    result = await reg.import_rows([])
    assert (result.rows, result.version) == (0, version)
    await import_csv(reg, csv_bytes("imei,list"))
    # A full list whose every row belongs to another source writes nothing either.
    skipped = await import_csv(reg, csv_bytes("imei,list,source", f"{IMEI_A},black,ministry"),
                               replace_source="nobody")
    assert (skipped.rows, skipped.skipped) == (0, 1)
    assert await SqliteObservations(reg).import_tac([]) == 0
    with pytest.raises(CsvImportError, match="line 3"):
        await import_csv(reg, csv_bytes("imei,list", f"{IMEI_B},white", "bad,white"))
    with pytest.raises(LifecycleError):
        await legalise(reg, IMEI_A, evidence="again", actor="clerk")
    assert await records(reg) == before
    assert await reg.current_version() == version
    assert (await reg.verify_audit()).ok


async def test_a_row_error_from_other_writers_leaves_no_record(reg: SqliteRegistry) -> None:
    before = await records(reg)

    def rows() -> Any:
        yield EntryRow(IMEI_C, ListName.WHITE, "registered")
        raise RuntimeError("source went away")

    with pytest.raises(RuntimeError):
        await reg.import_rows(rows())
    assert await records(reg) == before


async def test_an_empty_history_import_leaves_no_record(reg: SqliteRegistry) -> None:
    before = await records(reg)
    version = await reg.current_version()
    assert await SqliteObservations(reg).import_history([]) == 0
    assert await reg.current_version() == version
    assert await records(reg) == before
