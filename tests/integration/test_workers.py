"""``eir serve --workers N``: N processes answering S13 on one port, one registry.

Real processes over 127.0.0.1 (the supervisor through ``testbed.eirproc``),
our MME-side client, every wait bounded. A connection's worker is read from
the log: each worker tags its lines ``[worker I pid P]`` and logs the
Origin-Host of every peer that opens, and each client has its own.
The supervisor's restart and give-up logic is also run with stand-in
workers (a few lines of Python), which is fast and needs no registry.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from eir.config import ConfigError, from_mapping, load, to_mapping
from eir.diameter import messages as m
from eir.diameter.client import DiameterClient, DiameterError
from eir.diameter.constants import AvpCode, DisconnectCause, EquipmentStatus, Vendor
from eir.diameter.dictionary import default_dictionary
from eir.probe import ecr
from eir.workers import Supervisor
from testbed.eirproc import EirProcess, run_cli

W, B, G = EquipmentStatus.WHITELISTED, EquipmentStatus.BLACKLISTED, EquipmentStatus.GREYLISTED
WHITE, BLACK, NEW_BLACK = "49015420323751", "35332510123456", "35209900176148"
REGISTRY = f"imei,list,reason,imsi,source,note\n{WHITE},white,registered,,ministry,\n" \
           f"{BLACK},black,stolen,,police,\n"
REALM = "test.local"
FAST = "[registry]\nreload_seconds = 0.2\n[observations]\nflush_seconds = 0.2\n"
DICT = default_dictionary()

pytestmark = pytest.mark.timeout(60)


# -- helpers ---------------------------------------------------------------------------------


def eir_with_registry(tmp_path: Path, *, extra: tuple[str, ...] = (), config: str = FAST
                      ) -> EirProcess:
    db = tmp_path / "eir.db"
    (tmp_path / "a.csv").write_text(REGISTRY)
    res = run_cli("registry", "import", "--quiet", "--db", str(db), str(tmp_path / "a.csv"))
    assert res.returncode == 0, res.stderr
    (tmp_path / "eir.toml").write_text(config)
    return EirProcess(db, origin_realm=REALM, config=tmp_path / "eir.toml", extra=extra,
                      ready_timeout=20)


class Peer:
    """One MME connection with an Origin-Host of its own, and the worker that took it."""

    count = 0

    def __init__(self) -> None:
        Peer.count += 1
        self.host = f"mme-{os.getpid()}-{Peer.count}.{REALM}"
        self.client = DiameterClient(m.Identity(self.host, REALM), DICT)
        self.worker = -1
        self.pid = -1
        self.sent = 0

    async def open(self, eir: EirProcess) -> Peer:
        try:
            await self.client.connect("127.0.0.1", eir.port, timeout=5)
        except (ConnectionError, TimeoutError) as exc:
            raise AssertionError(f"{self.host}: {exc!r}\n{eir.log_tail(30)}") from exc
        pattern = re.compile(rf"\[worker (\d+) pid (\d+)\]: peer {re.escape(self.host)} \(realm")
        found = await until(lambda: pattern.search(eir.log()), 5, f"no log line for {self.host}")
        self.worker, self.pid = int(found[1]), int(found[2])
        return self

    async def status(self, imei: str, imsi: str | None = None) -> int | None:
        self.sent += 1
        ans = await self.client.request(ecr(self.host, REALM, REALM, imei, "00", imsi),
                                        timeout=5)
        assert DICT.check_message(ans) is None
        rc = ans.find(AvpCode.RESULT_CODE)
        assert rc is not None and rc.as_u32() == 2001, ans
        es = ans.find(AvpCode.EQUIPMENT_STATUS, Vendor.TGPP)
        return es.as_u32() if es is not None else None

    @property
    def is_open(self) -> bool:
        proto = self.client.proto
        return proto is not None and not proto.closed.done()


async def until(probe: Callable[[], object], seconds: float, what: str) -> object:
    """Poll ``probe`` until it returns something true; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        got = probe()
        if got:
            return got
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def until_async(probe: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await probe():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def peers_on_every_worker(eir: EirProcess, workers: int = 2, most: int = 40
                                ) -> list[Peer]:
    """Open connections until each worker holds at least one (the kernel picks the worker)."""
    peers: list[Peer] = []
    while {p.worker for p in peers} != set(range(workers)):
        assert len(peers) < most, f"{most} connections, workers seen: " \
                                  f"{sorted({p.worker for p in peers})}\n{eir.log_tail()}"
        peers.append(await Peer().open(eir))
    return peers


def one_per_worker(peers: list[Peer]) -> dict[int, Peer]:
    return {p.worker: p for p in reversed(peers) if p.is_open}


def children(pid: int) -> dict[int, str]:
    """The live child processes of ``pid`` and their command lines (from /proc)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            out[int(entry)] = cmd.rstrip(b"\0").replace(b"\0", b" ").decode()
    return out


def alive(pid: int) -> bool:
    """Not yet reaped. A zombie leader is not enough: its other threads may still hold the
    listening socket (a connection landing there is reset), so wait for the reap."""
    return Path(f"/proc/{pid}").exists()


async def all_gone(pids: list[int], seconds: float = 5) -> None:
    await until(lambda: not any(alive(p) for p in pids), seconds,
                f"processes left behind: {[p for p in pids if alive(p)]}")


async def close_all(peers: list[Peer]) -> None:
    for p in peers:
        if p.is_open:
            await p.client.close(timeout=2)


# -- config and flags ------------------------------------------------------------------------


def test_workers_setting_is_validated_with_one_line_errors(tmp_path: Path) -> None:
    assert load(None).server.workers == 1
    path = tmp_path / "eir.toml"
    for toml, says in (("[server]\nworkers = 0\n", "server.workers: must be between 1 and"),
                       ("[server]\nworkers = 1000\n", "server.workers: must be between 1 and"),
                       ('[server]\nworkers = "2"\n', "server.workers: expected an integer")):
        path.write_text(toml)
        with pytest.raises(ConfigError) as err:
            load(path)
        assert says in str(err.value) and "\n" not in str(err.value)
    path.write_text("[server]\nworkers = 3\n")
    assert load(path).server.workers == 3
    assert load(path, {"server": {"workers": 2}}).server.workers == 2
    res = run_cli("serve", "--db", str(tmp_path / "x.db"), "--workers", "0")
    assert res.returncode == 1
    assert res.stderr.strip() == "eir: config: server.workers: must be between 1 and 256, got 0"
    # the settings a worker receives are the supervisor's, exactly
    cfg = load(path, {"clock": {"test_mode": True, "start": "2026-01-01T00:00:00+00:00"}})
    assert from_mapping(to_mapping(cfg)).validate() == cfg


# -- real processes --------------------------------------------------------------------------


async def test_two_workers_answer_on_one_port_and_both_see_an_import(tmp_path: Path) -> None:
    with eir_with_registry(tmp_path, extra=("--workers", "2")) as eir:
        log = eir.log()
        assert log.count("EIR ready") == 1 and "2 workers" in log, log
        assert eir.proc is not None
        workers = children(eir.proc.pid)
        assert len(workers) == 2 and all("--worker" in c for c in workers.values()), workers

        peers = await peers_on_every_worker(eir)
        for p in peers:
            assert (await p.status(WHITE), await p.status(BLACK)) == (W, B)
        on = one_per_worker(peers)
        assert {p.pid for p in on.values()} == set(workers)
        for p in on.values():
            assert await p.status(NEW_BLACK) == G  # unknown: grey

        (tmp_path / "b.csv").write_text(f"imei,list,reason\n{NEW_BLACK},black,stolen\n")
        res = await asyncio.to_thread(run_cli, "registry", "import", "--quiet", "--db", eir.db,
                                      str(tmp_path / "b.csv"))
        assert res.returncode == 0, res.stderr
        t0 = time.monotonic()
        for i, p in sorted(on.items()):
            await until_async(lambda p=p: _is_black(p), 5,
                              f"worker {i} did not see the import:\n{eir.log_tail()}")
        assert time.monotonic() - t0 < 5
        assert len(re.findall(r"\[worker \d pid \d+\]: registry changed", eir.log())) == 2

        # the supervisor SIGKILLed: its workers see their lifeline end and stop as on SIGTERM
        os.kill(eir.proc.pid, signal.SIGKILL)
        await until(lambda: all(p.client.disconnect_cause is not None for p in on.values()), 5,
                    "no DPR after the supervisor died:\n" + eir.log_tail())
        assert {p.client.disconnect_cause for p in on.values()} == {DisconnectCause.REBOOTING}
        await all_gone(list(workers))
        await close_all(peers)


async def _is_black(p: Peer) -> bool:
    return await p.status(NEW_BLACK) == B


async def test_sigkilled_worker_is_restarted_and_sigterm_stops_all(tmp_path: Path) -> None:
    with eir_with_registry(tmp_path, config=FAST + "[server]\nworkers = 2\n") as eir:
        assert eir.proc is not None
        supervisor = eir.proc.pid
        first = children(supervisor)
        victim = next(pid for pid, cmd in first.items() if cmd.endswith("--worker 1"))
        peers = await peers_on_every_worker(eir)

        os.kill(victim, signal.SIGKILL)
        await all_gone([victim])
        # the port keeps answering while worker 1 is down and after it is back
        for _ in range(6):
            p = await Peer().open(eir)
            peers.append(p)
            assert await p.status(BLACK) == B
        await until(lambda: "worker 1 ready again" in eir.log(), 10,
                    "worker 1 was not restarted:\n" + eir.log_tail())
        assert re.search(r"worker 1 \(pid \d+\) was killed by SIGKILL unexpectedly: "
                         r"restarting it in", eir.log())
        now = children(supervisor)
        assert len(now) == 2 and victim not in now
        peers += await peers_on_every_worker(eir)
        live = [p for p in peers if p.is_open]
        assert {p.pid for p in live} == set(now)
        assert all(p.pid != victim for p in live)
        for p in live:
            assert await p.status(WHITE) == W

        # stopped from a thread: this loop answers the DPRs meanwhile
        assert await asyncio.to_thread(eir.stop, signal.SIGTERM, 15) == 0, eir.log_tail()
        await until(lambda: all(p.client.disconnect_cause is not None for p in live), 5,
                    "a peer got no DPR")
        assert {p.client.disconnect_cause for p in live} == {DisconnectCause.REBOOTING}
        await all_gone([*first, *now])
        assert "stopped: all 2 workers exited cleanly" in eir.log()
        await close_all(peers)


async def test_observations_of_both_workers_land_while_the_registry_is_locked(
        tmp_path: Path) -> None:
    """Both workers flush into one SQLite file at once, behind a writer holding the lock."""
    imsi = "401011234567{:03d}"
    with eir_with_registry(tmp_path, extra=("--workers", "2")) as eir:
        on = one_per_worker(await peers_on_every_worker(eir))
        shared = "86768803654321"  # one pair, seen by worker 0 first, then by worker 1
        lock = sqlite3.connect(eir.db, isolation_level=None, timeout=10)
        try:
            lock.execute("BEGIN IMMEDIATE")  # every flush now waits for this writer
            before = int(time.time())
            assert await on[0].status(shared, imsi.format(999)) == G
            after = int(time.time())
            await asyncio.sleep(1.2)
            assert await on[1].status(shared, imsi.format(999)) == G
            expected = {(shared, imsi.format(999))}
            for n in range(40):
                for i, p in on.items():
                    imei = f"3520990{i}{n:06d}"
                    assert await p.status(imei, imsi.format(n)) == G
                    expected.add((imei, imsi.format(n)))
            await asyncio.sleep(1.0)  # several flush periods: both workers are waiting
        finally:
            lock.execute("COMMIT")
            lock.close()

        def stored() -> dict[tuple[str, str], tuple[int, int]]:
            with sqlite3.connect(eir.db) as conn:
                rows = conn.execute("SELECT imei, imsi, first_seen, last_seen FROM observation")
                return {(f"{i:014d}", s): (f, la) for i, s, f, la in rows}

        await until(lambda: expected <= set(stored()), 10,
                    f"observations missing: {len(expected - set(stored()))}\n{eir.log_tail()}")
        first_seen, last_seen = stored()[(shared, imsi.format(999))]
        assert before <= first_seen <= after < last_seen  # the earliest sighting won
        sent = sum(p.sent for p in on.values())
        assert await asyncio.to_thread(eir.stop, signal.SIGTERM, 15) == 0, eir.log_tail()
    log = eir.log()
    assert "failed" not in log and "Traceback" not in log, log
    with sqlite3.connect(eir.db) as conn:
        counted = conn.execute("SELECT SUM(count) FROM decision_count").fetchone()[0]
    # every ECR of the test was counted once: no batch of either worker was lost
    assert counted == sent == _answered(log)


def _answered(log: str) -> int:
    return sum(int(n) for n in re.findall(r"stopped: (\d+) ECR answered", log))


# -- the supervisor with stand-in workers ------------------------------------------------------

_READY_THEN_EXIT = ("import sys, time; sys.stdin.readline(); print('ready 0', flush=True); "
                    "time.sleep(0.05); sys.exit(3)")
_NEVER_READY = "import sys; sys.stdin.readline(); sys.exit(2)"


def _supervisor(tmp_path: Path, code: str) -> Supervisor:
    cfg = from_mapping({"server": {"listen": "127.0.0.1:0", "workers": 2},
                        "registry": {"db": str(tmp_path / "eir.db")}}).validate()
    return Supervisor(cfg, command=(sys.executable, "-c", code), restart_limit=3,
                      backoff=(0.01, 0.05), stop_timeout=5)


async def test_restarts_are_bounded_then_the_supervisor_gives_up(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", "eir.supervisor")
    assert await asyncio.wait_for(_supervisor(tmp_path, _READY_THEN_EXIT).run(), 20) == 1
    text = caplog.text
    assert "restart 3 of at most 3 in a row" in text
    assert "restarted 3 times in a row: giving up" in text


async def test_a_worker_that_never_gets_ready_fails_the_start(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", "eir.supervisor")
    assert await asyncio.wait_for(_supervisor(tmp_path, _NEVER_READY).run(), 20) == 1
    assert "exited with code 2 before it was ready" in caplog.text
    assert "EIR ready" not in caplog.text


# -- SIGHUP: settings reloaded without dropping a connection ------------------------------

UNKNOWN = "86768803654321"  # on no list: the policy's unknown_equipment decides it
PEERS_MME = '[peers]\nallow_hosts = ["mme-*"]\n'
PEERS_OTHER = '[peers]\nallow_hosts = ["other-*"]\n'


async def answer_of(peer: Peer, imei: str) -> int | str:
    """Equipment-Status, or "5422" when the answer is EQUIPMENT_UNKNOWN."""
    ans = await peer.client.request(ecr(peer.host, REALM, REALM, imei, "00"), timeout=5)
    es = ans.find(AvpCode.EQUIPMENT_STATUS, Vendor.TGPP)
    if es is not None:
        return es.as_u32()
    exp = ans.find(AvpCode.EXPERIMENTAL_RESULT)
    assert exp is not None, ans
    return str(exp.find(AvpCode.EXPERIMENTAL_RESULT_CODE).as_u32())  # type: ignore[union-attr]


async def refused(eir: EirProcess) -> bool:
    """A new peer named mme-... is turned away at its CER (3010)."""
    peer = Peer()
    try:
        await peer.client.connect("127.0.0.1", eir.port, timeout=5)
    except DiameterError as exc:  # "CER refused by the peer: Result-Code 3010"
        return "3010" in str(exc)
    await peer.client.close()
    return False


@pytest.mark.parametrize("workers", [1, 2])
async def test_sighup_applies_peers_and_policy_and_drops_no_connection(
        tmp_path: Path, workers: int) -> None:
    extra = ("--workers", str(workers)) if workers > 1 else ()
    with eir_with_registry(tmp_path, extra=extra, config=FAST + PEERS_MME) as eir:
        if workers > 1:
            peers = await peers_on_every_worker(eir, workers)
        else:  # one process: its log lines carry no worker tag
            peers = [Peer()]
            await peers[0].client.connect("127.0.0.1", eir.port, timeout=5)
        for p in peers:
            assert await answer_of(p, UNKNOWN) == G  # greylist: the default
        (tmp_path / "eir.toml").write_text(
            FAST + PEERS_OTHER + '[policy]\nunknown_equipment = "reject"\n'
            "[server]\nwatchdog_seconds = 12\n")
        eir.send_signal(signal.SIGHUP)
        await until(lambda: eir.log().count("SIGHUP: settings reloaded") >= workers, 10,
                    f"no reload logged\n{eir.log_tail()}")
        assert "need a restart, not applied: server.watchdog_seconds" in eir.log()
        for p in peers:  # the same connections, the new policy
            assert p.is_open
            assert await answer_of(p, UNKNOWN) == "5422"
            assert await answer_of(p, WHITE) == W
        assert await refused(eir), eir.log_tail()

        if workers > 1:  # a SIGHUP to a worker itself (a closed terminal) is ignored
            os.kill(peers[0].pid, signal.SIGHUP)
            await asyncio.sleep(0.5)
            assert peers[0].is_open and await answer_of(peers[0], WHITE) == W

        (tmp_path / "eir.toml").write_text("[policy]\ngrace_days = -1\n")  # a bad file
        eir.send_signal(signal.SIGHUP)
        await until(lambda: "settings not reloaded" in eir.log(), 10, eir.log_tail())
        for p in peers:
            assert await answer_of(p, UNKNOWN) == "5422"  # what ran before stays
        assert eir.proc is not None and eir.proc.poll() is None


def test_the_handshake_keeps_what_the_supervisor_sent_after_it() -> None:
    """A SIGHUP's settings may follow the hello in the same read: they are not lost."""
    from eir.workers import read_handshake

    r, w = os.pipe()
    hello = {"count": 2, "origin_state_id": 7, "config": to_mapping(load(None)),
             "listen_fds": [5, 6]}
    os.write(w, (json.dumps(hello) + "\n" + '{"config": {}}\n').encode())
    os.close(w)
    try:
        got = read_handshake(r)
    finally:
        os.close(r)
    assert (got.count, got.origin_state_id, got.config.server.workers) == (2, 7, 1)
    assert got.listen_fds == (5, 6)
    assert got.rest == b'{"config": {}}\n'
