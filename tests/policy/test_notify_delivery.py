"""The outbox's delivery state (migration 0003; eir.policy.notify): claims count the attempt
and lease the row, failures schedule the next try or mark the warning failed, failed ones
are sent again on request; ``eir notify list | retry`` show and change it."""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from eir import notify_cli
from eir.policy import notify
from eir.policy.sqlite import SqliteRegistry

NOW = 1_900_000_000.0
ROW = ("2030-01-01T00:00:00Z", "2030-01-31T00:00:00Z", "2030-01-01T00:00:00Z", "m")


async def add(reg: SqliteRegistry, n: int) -> list[int]:
    async with reg.raw_transaction() as conn:
        await conn.executemany(
            "INSERT INTO outbox (imei, imsi, kind, due_at, deadline, created, message)"
            " VALUES (?, '401011234567890', 'day0', ?, ?, ?, ?)",
            [(f"352099001761{i:02d}", *ROW) for i in range(n)])
    return [r["id"] for r in await notify.list_outbox(reg)]


@pytest.fixture
async def reg(tmp_path: Path) -> AsyncIterator[SqliteRegistry]:
    async with SqliteRegistry(tmp_path / "eir.db") as r:
        yield r


async def test_a_claim_counts_the_attempt_and_leases_the_row(reg: SqliteRegistry) -> None:
    ids = await add(reg, 3)
    got = await notify.claim_due(reg, NOW, lease=30.0, limit=2)
    assert [r["id"] for r in got] == ids[:2]
    assert all(r["attempts"] == 1 and r["first_attempt_at"] == NOW and
               r["next_attempt_at"] == NOW + 30 for r in got)
    # leased: not taken again before the lease ends, the third one is
    assert [r["id"] for r in await notify.claim_due(reg, NOW + 1, 30.0, 10)] == ids[2:]
    assert await notify.claim_due(reg, NOW + 29, 30.0, 10) == []
    again = await notify.claim_due(reg, NOW + 30, 30.0, 10)
    assert [r["id"] for r in again] == ids[:2]
    assert all(r["attempts"] == 2 and r["first_attempt_at"] == NOW for r in again)
    assert await notify.claim_due(reg, NOW, 30.0, 0) == []


async def test_failures_retry_or_fail_and_a_sent_row_is_left_alone(
        reg: SqliteRegistry) -> None:
    a, b, c = await add(reg, 3)
    await notify.claim_due(reg, NOW, 30.0, 10)
    assert await notify.record_failure(reg, a, "HTTP 503", retry_at=NOW + 5)
    assert await notify.record_failure(reg, b, "HTTP 400" + "x" * 900, retry_at=None,
                                       now=int(NOW))
    await notify.mark_sent(reg, [c], now=int(NOW))
    assert not await notify.record_failure(reg, c, "late", retry_at=None)  # acked meanwhile
    assert not await notify.record_failure(reg, b, "again", retry_at=NOW)  # already failed
    rows = {r["id"]: r for r in await notify.list_outbox(reg)}
    assert rows[a]["next_attempt_at"] == NOW + 5 and rows[a]["failed_at"] is None
    assert rows[b]["failed_at"] == "2030-03-17T17:46:40Z" and len(rows[b]["last_error"]) == 500
    assert rows[c]["last_error"] is None and rows[c]["sent_at"] is not None
    assert [r["id"] for r in await notify.claim_due(reg, NOW + 5, 30.0, 10)] == [a]
    counts = await notify.delivery_counts(reg)
    assert counts == {"failed": 1, "retrying": 1, "next_due": NOW + 35, "due_now": 0}
    # still to send: a; failed: b; the backlog counts a only
    assert (await notify.backlog(reg))[0] == 1
    assert [r["id"] for r in await notify.list_outbox(reg, pending_only=True)] == [a]
    assert [r["id"] for r in await notify.list_outbox(reg, failed_only=True)] == [b]


async def test_requeue_sends_failed_ones_again_as_new(reg: SqliteRegistry) -> None:
    a, b, c = await add(reg, 3)
    await notify.claim_due(reg, NOW, 30.0, 10)
    for i in (a, b):
        await notify.record_failure(reg, i, "HTTP 400", retry_at=None)
    assert await notify.requeue_failed(reg, [a, c, 999]) == 1
    assert await notify.requeue_failed(reg) == 1
    assert await notify.requeue_failed(reg) == 0
    rows = {r["id"]: r for r in await notify.list_outbox(reg)}
    for i in (a, b):
        assert (rows[i]["failed_at"], rows[i]["attempts"], rows[i]["first_attempt_at"],
                rows[i]["next_attempt_at"]) == (None, 0, None, None)
        assert rows[i]["last_error"] == "HTTP 400"
    assert {r["id"] for r in await notify.claim_due(reg, NOW, 30.0, 10)} == {a, b}


async def test_a_version_2_outbox_is_migrated(tmp_path: Path) -> None:
    """An outbox made before 0003: its rows are still to send, with no attempt."""
    db = tmp_path / "eir.db"
    async with SqliteRegistry(db) as reg:
        await add(reg, 1)
    with sqlite3.connect(db) as conn:  # back to schema 2, as an older eir left it
        conn.execute("DROP INDEX outbox_undelivered")
        for col in ("attempts", "first_attempt_at", "next_attempt_at", "last_error",
                    "failed_at"):
            conn.execute(f"ALTER TABLE outbox DROP COLUMN {col}")
        conn.execute("DELETE FROM schema_version WHERE version = 3")
    async with SqliteRegistry(db) as reg:
        assert await reg.schema_version() == 3
        [row] = await notify.list_outbox(reg, pending_only=True)
        assert (row["attempts"], row["failed_at"], row["next_attempt_at"]) == (0, None, None)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    notify_cli.add_parser(sub)
    return parser.parse_args(["notify", *argv])


async def _cli_outbox(db: Path) -> list[int]:
    async with SqliteRegistry(db) as reg:
        a, b, c, d = await add(reg, 4)
        await notify.claim_due(reg, NOW, 30.0, 3)
        await notify.record_failure(reg, a, "HTTP 400: bad\tmsisdn\n", retry_at=None,
                                    now=int(NOW))
        await notify.record_failure(reg, b, "no answer within 10 s", retry_at=NOW + 5)
        await notify.mark_sent(reg, [c], now=int(NOW))
    return [a, b, c, d]


def test_cli_shows_the_delivery_state_and_retries(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b, c, d = asyncio.run(_cli_outbox(tmp_path / "eir.db"))
    db = str(tmp_path / "eir.db")

    def run(*argv: str) -> tuple[int, str, str]:
        code = notify_cli.run(parse(*argv))
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = run("list", "--db", db)
    lines = [line.split("\t") for line in out.splitlines()]
    assert code == 0 and lines[0][6:9] == ["sent_at", "attempts", "last_error"]
    state = {int(f[0]): (f[6], f[7], f[8]) for f in lines[1:]}
    assert state == {a: ("failed 2030-03-17T17:46:40Z", "1", "HTTP 400: bad msisdn"),
                     b: ("retrying", "1", "no answer within 10 s"),
                     c: ("2030-03-17T17:46:40Z", "1", "-"), d: ("pending", "0", "-")}
    code, out, _ = run("list", "--db", db, "--failed", "--json")
    assert code == 0 and [r["id"] for r in json.loads(out)] == [a]
    code, out, _ = run("list", "--db", db, "--pending")
    assert {int(line.split("\t")[0]) for line in out.splitlines()[1:]} == {b, d}
    code, _, err = run("retry", "--db", db, str(a), "999")
    assert code == 1 and "no outbox warning with id 999" in err
    code, _, err = run("retry", "--db", db, str(a))
    assert code == 0 and err == "eir: 1 failed warning(s) queued to send again\n"
    code, _, err = run("retry", "--db", db, "--all-failed")
    assert code == 0 and "eir: 0 failed warning(s)" in err
    with pytest.raises(SystemExit):
        parse("retry", "--db", db)  # neither ids nor --all-failed
    with pytest.raises(SystemExit):
        parse("list", "--pending", "--failed")
    code, out, _ = run("list", "--db", db, "--failed", "--json")
    assert code == 0 and json.loads(out) == []
