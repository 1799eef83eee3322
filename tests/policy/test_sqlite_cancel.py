"""A cancel that lands on a transaction's BEGIN, body or COMMIT leaves the registry usable."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from eir.policy.sqlite import SqliteRegistry


async def _write(reg: SqliteRegistry, value: int, started: asyncio.Event | None = None) -> None:
    async with reg.raw_transaction() as conn:
        if started is not None:
            started.set()
        await conn.execute("INSERT INTO decision_count (day, operator, status, reason, count)"
                           " VALUES ('2026-12-02', ?, 0, 'r', 1)", (f"op-{value}",))


@pytest.mark.parametrize("ticks", range(0, 12))
async def test_a_cancelled_write_leaves_no_open_transaction(tmp_path: Path, ticks: int) -> None:
    async with SqliteRegistry(tmp_path / "eir.db") as reg:
        task = asyncio.create_task(_write(reg, 1))
        for _ in range(ticks):  # land the cancel on each await in turn
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await _write(reg, 2)  # must not fail "cannot start a transaction within a transaction"
        async with reg.read() as conn, conn.execute(
                "SELECT operator FROM decision_count ORDER BY operator") as cur:
            ops = [r[0] for r in await cur.fetchall()]
        assert ops in (["op-2"], ["op-1", "op-2"])
        assert not reg._w().in_transaction


@pytest.mark.parametrize("ticks", range(0, 8))
async def test_a_cancelled_read_leaves_no_open_transaction(tmp_path: Path, ticks: int) -> None:
    async with SqliteRegistry(tmp_path / "eir.db") as reg:
        async def read() -> None:
            async with reg.read() as conn, conn.execute("SELECT 1") as cur:
                await cur.fetchall()
        task = asyncio.create_task(read())
        for _ in range(ticks):
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await read()
        assert not reg._r().in_transaction
