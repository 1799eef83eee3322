"""eir.app.EirApp.flush: a failed write keeps decision counts and grace clocks for the next try.

A real app on a real SQLite file and a loopback port; the write of grace
clocks is made to fail once (as a locked database or a cancel at shutdown
would), and nothing that was taken for that write may be lost.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from eir.app import EirApp
from eir.config import from_mapping
from eir.policy import notify
from eir.policy.sqlite import SqliteRegistry
from eir.policy.sqlite_regime import SqliteObservations

IMEI = "35209900176148"
IMSI = "401011111111111"


@pytest.mark.parametrize("error", [RuntimeError("database is locked"), asyncio.CancelledError()])
async def test_a_failed_flush_loses_no_count_and_no_clock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    cfg = from_mapping({"server": {"listen": "127.0.0.1:0"},
                        "registry": {"db": str(tmp_path / "eir.db")}})
    eir = EirApp(cfg)
    await eir.start()
    try:
        assert eir.regime is not None
        d = eir.regime.check(IMEI, IMSI, None, "op-1")
        assert d.reason == "pending_verification"

        real = notify.start_clocks
        calls = 0

        async def fail_once(*args: object, **kwargs: object) -> int:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise error
            return await real(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(notify, "start_clocks", fail_once)
        with pytest.raises(type(error)):
            await eir.flush()
        # the counts were written before the failure; the clock was put back
        assert eir.regime.counts == Counter()
        assert len(eir.regime.clock_starts) == 1
        await eir.flush()
        assert eir.regime.clock_starts == []
        clocks = await notify.pending_deadline(eir.registry, IMEI)
        assert [(c["imsi"], c["reason"]) for c in clocks] == [(IMSI, "pending_verification")]
        counted = await eir.observations.counts(None)
        assert sum(c["count"] for c in counted) == 1
    finally:
        await eir.stop()


async def test_a_failed_count_write_puts_counts_and_clocks_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = from_mapping({"server": {"listen": "127.0.0.1:0"},
                        "registry": {"db": str(tmp_path / "eir.db")}})
    eir = EirApp(cfg)
    await eir.start()
    try:
        assert eir.regime is not None
        eir.regime.check(IMEI, IMSI, None, "op-1")
        real = eir.observations.write_counts

        async def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError("disk I/O error")

        monkeypatch.setattr(eir.observations, "write_counts", broken)
        with pytest.raises(RuntimeError):
            await eir.flush()
        assert sum(eir.regime.counts.values()) == 1
        assert sum(eir.regime.totals.values()) == 0
        assert len(eir.regime.clock_starts) == 1
        monkeypatch.setattr(eir.observations, "write_counts", real)
        await eir.flush()
        assert sum(eir.regime.totals.values()) == 1
        assert await notify.pending_deadline(eir.registry, IMEI) != []
    finally:
        await eir.stop()


async def test_stop_during_a_flush_waits_for_it_and_loses_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM while the flush loop is writing: the write ends, nothing is lost or doubled.

    The cancel lands after the counts were committed: put back, they would be
    written twice by the last flush.
    """
    db = tmp_path / "eir.db"
    cfg = from_mapping({"server": {"listen": "127.0.0.1:0"}, "registry": {"db": str(db)}})
    eir = EirApp(cfg)
    await eir.start()
    assert eir.regime is not None
    eir.regime.check(IMEI, IMSI, None, "op-1")
    real = eir.observations.write_counts
    written = asyncio.Event()

    async def slow(*args: object, **kwargs: object) -> None:
        await real(*args, **kwargs)  # type: ignore[arg-type]
        written.set()
        await asyncio.sleep(0.3)

    monkeypatch.setattr(eir.observations, "write_counts", slow)
    loop_flush = asyncio.create_task(eir.flush())  # as the flush loop would
    await written.wait()
    loop_flush.cancel()  # what stop() does to the loops
    await eir.stop()
    assert loop_flush.cancelled()

    async with SqliteRegistry(db) as reg:
        clocks = await notify.pending_deadline(reg, IMEI)
        store = SqliteObservations(reg)
        counted = await store.counts(None)
        store.close()
    assert [(c["imsi"], c["reason"]) for c in clocks] == [(IMSI, "pending_verification")]
    assert sum(c["count"] for c in counted) == 1
