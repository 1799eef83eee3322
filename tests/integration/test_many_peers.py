"""Many peers and many connections against a real ``eir serve`` process.

- 1,000 MMEs connected at once, each with its own Origin-Host: every one
  gets its CEA and an answer to an ECR while all are connected.
- 10,000 connect / CER / ECR / DPR cycles (16 at a time): the server holds
  as many file descriptors afterwards as before, and its resident memory
  grows by less than a bound (measured after a first 1,000 cycles, so that
  allocator pools and caches are already warm).

- A peer that sends 200,000 ECRs and reads nothing: the server stops
  reading from it (backpressure), its memory stays bounded, and every
  request is answered once the peer reads again.

Figures (fds, RSS) are read from /proc/PID of the server.
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import RawClient

from eir.diameter import messages as m
from eir.diameter.client import DiameterClient
from eir.diameter.constants import AvpCode
from eir.diameter.dictionary import default_dictionary
from eir.probe import ecr
from testbed.eirproc import EirProcess, run_cli

REALM = "test.local"
DICT = default_dictionary()
REGISTRY = "imei,list,reason\n49015420323751,white,registered\n"

pytestmark = pytest.mark.timeout(300)


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _server(tmp_path: Path) -> EirProcess:
    db = tmp_path / "eir.db"
    (tmp_path / "a.csv").write_text(REGISTRY)
    res = run_cli("registry", "import", "--quiet", "--db", str(db), str(tmp_path / "a.csv"))
    assert res.returncode == 0, res.stderr
    return EirProcess(db, origin_realm=REALM, ready_timeout=30)


def ecr_message(imei: str, origin_host: str, realm: str) -> bytes:
    return ecr(origin_host, realm, realm, imei, "00").encode()


async def _ecr_ok(client: DiameterClient, host: str) -> None:
    ans = await client.request(ecr(host, REALM, REALM, "49015420323751", "00"), timeout=20)
    rc = ans.find(AvpCode.RESULT_CODE)
    assert rc is not None and rc.as_u32() == 2001


async def test_a_thousand_peers_at_once_are_all_served(tmp_path: Path) -> None:
    with _server(tmp_path) as eir:
        assert eir.proc is not None
        clients = [DiameterClient(m.Identity(f"mme{i}.{REALM}", REALM), DICT)
                   for i in range(1000)]
        sem = asyncio.Semaphore(100)  # the listen backlog is 512: connect in waves

        async def connect(c: DiameterClient) -> None:
            async with sem:
                await c.connect("127.0.0.1", eir.port, timeout=20)

        await asyncio.gather(*(connect(c) for c in clients))
        assert _fds(eir.proc.pid) >= 1000  # all of them are open at the server at once
        await asyncio.gather(*(_ecr_ok(c, f"mme{i}.{REALM}") for i, c in enumerate(clients)))
        await asyncio.gather(*(c.close() for c in clients))


async def test_ten_thousand_connection_cycles_leak_no_fd_and_no_memory(tmp_path: Path) -> None:
    with _server(tmp_path) as eir:
        assert eir.proc is not None
        pid = eir.proc.pid
        counter = iter(range(1 << 30))

        async def cycles(n: int) -> None:
            async def one() -> None:
                host = f"cycle{next(counter)}.{REALM}"
                c = DiameterClient(m.Identity(host, REALM), DICT)
                await c.connect("127.0.0.1", eir.port, timeout=20)
                await _ecr_ok(c, host)
                await c.close()

            async def worker(k: int) -> None:
                for _ in range(k):
                    await one()

            await asyncio.gather(*(worker(n // 16) for _ in range(16)))

        await cycles(1_000)  # warm-up
        await asyncio.sleep(0.5)
        fds0, rss0 = _fds(pid), _rss_kib(pid)
        t0 = time.monotonic()
        await cycles(10_000)
        took = time.monotonic() - t0
        # the server closes a connection after the DPA; let the last ones go
        deadline = time.monotonic() + 10
        while _fds(pid) > fds0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        fds1, rss1 = _fds(pid), _rss_kib(pid)
        print(f"10,000 cycles in {took:.1f} s; fds {fds0} -> {fds1}; RSS {rss0} -> {rss1} KiB")
        assert fds1 <= fds0
        assert rss1 - rss0 < 8 * 1024, f"RSS grew {rss1 - rss0} KiB over 10,000 cycles"


async def test_a_peer_that_stops_reading_is_paused_with_memory_bounded(tmp_path: Path) -> None:
    """200,000 ECRs sent without reading a single answer: the server stops reading
    (its answers have nowhere to go), its memory stays bounded, and once the peer
    reads again every request is answered."""
    with _server(tmp_path) as eir:
        assert eir.proc is not None
        pid = eir.proc.pid
        client = await RawClient.open(eir.port, host=f"mme.slow.{REALM}")
        template = bytearray(ecr_message(imei="49015420323751", origin_host=f"mme.slow.{REALM}",
                                         realm=REALM))
        n = 200_000
        blob = bytearray(len(template) * n)
        for i in range(n):
            struct.pack_into(">II", template, 12, i, i)  # hop-by-hop, end-to-end
            blob[i * len(template):(i + 1) * len(template)] = template
        rss0 = _rss_kib(pid)
        client.writer.write(bytes(blob))
        with pytest.raises(TimeoutError):  # the server stopped reading: our send backs up
            await asyncio.wait_for(client.writer.drain(), 3)
        grown = _rss_kib(pid) - rss0
        assert grown < 64 * 1024, f"server RSS grew {grown} KiB holding a stalled peer"

        seen = 0
        deadline = time.monotonic() + 120
        while seen < n and time.monotonic() < deadline:
            ans = await client.read(timeout=30)
            assert ans.hbh == seen  # every request answered, in order
            seen += 1
        assert seen == n
        await client.close()
