"""kill -9 while serving, then a restart: the same lists, observations lost only within the bound.

A real ``eir serve`` records sightings (each ECR of a new (IMEI, IMSI) pair
is one observation row, written behind the hot path every
``observations.flush_seconds``). Batch A is sent, then the test waits well
past a flush; batch B is sent and the server is SIGKILLed at once. After a
restart on the same file: every list answer is the same as before the
kill, every sighting of batch A is on disk, and what is missing is at most
batch B (the sightings of the last flush interval, README "Observations and
what a crash can lose").
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from pathlib import Path

import pytest

from eir.diameter import messages as m
from eir.diameter.client import DiameterClient
from eir.diameter.constants import AvpCode, Vendor
from eir.diameter.dictionary import default_dictionary
from eir.probe import ecr
from testbed.eirproc import EirProcess, run_cli

REALM = "test.local"
DICT = default_dictionary()
LISTED = {"49015420323751": "white", "35332510123456": "black", "86768803654321": "grey"}
REGISTRY = "imei,list,reason\n" + "".join(f"{i},{lst},\n" for i, lst in LISTED.items())
CONFIG = "[observations]\nflush_seconds = 0.2\n"

pytestmark = pytest.mark.timeout(120)


async def _answers(port: int, queries: list[tuple[str, str]]) -> list[int | None]:
    """Equipment-Status per (IMEI, IMSI), all pipelined on one connection."""
    client = DiameterClient(m.Identity("mme.crash.test.local", REALM), DICT)
    await client.connect("127.0.0.1", port, timeout=10)
    try:
        answers = await asyncio.gather(*(
            client.request(ecr("mme.crash.test.local", REALM, REALM, imei, "00", imsi),
                           timeout=20) for imei, imsi in queries))
    finally:
        await client.close()
    out = []
    for ans in answers:
        es = ans.find(AvpCode.EQUIPMENT_STATUS, Vendor.TGPP)
        out.append(es.as_u32() if es is not None else None)
    return out


def _pairs(first: int, n: int) -> list[tuple[str, str]]:
    """n new (IMEI, IMSI) pairs: unknown IMEIs (greylisted) with home IMSIs."""
    return [(f"{35000000000000 + first + i}", f"40101{first + i:010d}") for i in range(n)]


def _observed(db: Path) -> set[tuple[str, str]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return {(f"{imei:014d}", imsi) for imei, imsi in
                conn.execute("SELECT imei, imsi FROM observation")}


async def test_kill_9_while_serving_loses_only_the_last_flush(tmp_path: Path) -> None:
    db = tmp_path / "eir.db"
    (tmp_path / "a.csv").write_text(REGISTRY)
    assert run_cli("registry", "import", "--quiet", "--db", str(db),
                   str(tmp_path / "a.csv")).returncode == 0
    (tmp_path / "eir.toml").write_text(CONFIG)
    listed = [(imei, "401019999999999") for imei in LISTED]
    batch_a, batch_b = _pairs(0, 2000), _pairs(10_000, 2000)

    eir = EirProcess(db, origin_realm=REALM, config=tmp_path / "eir.toml").start()
    try:
        before = await _answers(eir.port, listed)
        await _answers(eir.port, batch_a)
        await asyncio.sleep(2.0)  # ten flush intervals: batch A is written
        await _answers(eir.port, batch_b)
        assert eir.proc is not None
        eir.proc.send_signal(signal.SIGKILL)
        eir.proc.wait(timeout=10)
    finally:
        eir.stop()
    assert eir.proc is not None and eir.proc.returncode == -signal.SIGKILL

    observed = _observed(db)
    assert set(batch_a) <= observed  # older than the last flush: all of it is on disk
    lost = set(batch_b) - observed
    assert observed - set(batch_a) - set(listed) <= set(batch_b)
    print(f"after kill -9: {len(set(batch_b) & observed)} of batch B on disk, {len(lost)} lost")

    with EirProcess(db, origin_realm=REALM, config=tmp_path / "eir.toml") as again:
        assert await _answers(again.port, listed) == before  # the same lists
    assert run_cli("registry", "check", "--db", str(db)).returncode == 0
