"""eir.gcpolicy: the serving path on uvloop makes no reference cycles, so freezing is safe.

The policy turns automatic full collections off and freezes what survives
each flush. That is only sound if nothing the server does at steady state
leaves cyclic garbage behind: ECRs and their answers, connections ending
with DPR or a reset, malformed messages answered with an error, flushes.
Each is run here against a real app on a loopback port, on uvloop, with the
collector disabled; a full collection afterwards must find nothing.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from collections import Counter
from pathlib import Path

import pytest

from eir import gcpolicy
from eir.app import EirApp
from eir.config import from_mapping

uvloop = pytest.importorskip("uvloop")

_CLIENT = """
import asyncio, sys
from support import RawClient, dpr, dwr, ecr, with_length, with_version

async def session(port: int, i: int) -> None:
    c = await RawClient.open(port, host=f"mme{i}.test")
    for k in range(5):
        c.send(ecr(f"3520990017{i:04d}", hbh=100 + k, e2e=200 + k,
                   imsi=f"40101{i:010d}").encode())
        await c.read()
    end = i % 3
    if end == 0:
        c.send(dpr().encode())
        await c.read()  # the DPA; the DPR's sender closes (RFC 6733 5.4)
    elif end == 1:
        # an unsupported version is answered (5011); a length under the
        # header's loses the framing: reset (RFC 6733 3, 7.1.5)
        c.send(with_version(ecr(hbh=7, e2e=7).encode(), 2))
        await c.read()
        c.send(with_length(dwr().encode(), 8))
        assert await c.reset_by_server()
    else:
        c.abort()
    c.writer.close()

async def main(port: int, first: int, count: int) -> None:
    for i in range(first, first + count):
        await session(port, i)

asyncio.run(main(*map(int, sys.argv[1:])))
"""


def test_serving_makes_no_cyclic_garbage(tmp_path: Path) -> None:
    thresholds = gc.get_threshold()

    async def work() -> Counter[str]:
        cfg = from_mapping({"server": {"listen": "127.0.0.1:0"},
                            "registry": {"db": str(tmp_path / "eir.db")}})
        eir = EirApp(cfg)
        await eir.start()
        try:
            assert eir._gc_settle, "on uvloop the policy freezes after each flush"
            assert gc.get_threshold() == (gcpolicy.GEN0, gcpolicy.GEN1, 2**31 - 1)
            assert eir.server is not None
            port = eir.server.port

            async def sessions(first: int, count: int) -> None:
                # the client runs in a process of its own: its garbage is not the server's
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-c", _CLIENT, str(port), str(first), str(count),
                    cwd=Path(__file__).resolve().parents[1])
                assert await asyncio.wait_for(proc.wait(), 60) == 0

            await sessions(0, 3)  # warm up: first connections allocate lasting state
            await eir.flush()
            gc.collect()
            gc.disable()
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                await sessions(3, 30)
                await eir.flush()
                await asyncio.sleep(0.2)
                gc.collect()
                return Counter(type(o).__name__ for o in gc.garbage)
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
                gc.enable()
        finally:
            await eir.stop()

    try:
        assert uvloop.run(work()) == Counter()
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_the_standard_loop_keeps_full_collections() -> None:
    thresholds = gc.get_threshold()

    async def main() -> bool:
        return gcpolicy.tune()

    try:
        assert asyncio.run(main()) is False
        assert gc.get_threshold()[2] < 1000
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
