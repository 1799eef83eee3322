"""Rolling restart (SIGUSR2 to ``eir serve --workers N``): no request lost, failures abort.

Real processes over 127.0.0.1: the EIR through ``testbed.eirproc``, the load from
``eir-sim run`` (``python -m simulator``) judged against its own population, every
wait bounded. The supervisor's roll logic (coalescing, a new worker that is never
ready, the accept queue handed from the old worker to the new) is also run with
stand-in workers, a few lines of Python each, which is fast and needs no registry.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_workers import (
    FAST,
    REALM,
    UNKNOWN,
    WHITE,
    Peer,
    alive,
    answer_of,
    children,
    close_all,
    eir_with_registry,
    peers_on_every_worker,
    until,
)

from eir.config import from_mapping
from eir.diameter.constants import AvpCode, EquipmentStatus
from eir.probe import ecr
from eir.workers import Supervisor
from testbed.eirproc import EirProcess, run_cli

REPO = Path(__file__).resolve().parents[2]
W, G = EquipmentStatus.WHITELISTED, EquipmentStatus.GREYLISTED

pytestmark = pytest.mark.timeout(120)


def _sim(*args: str) -> list[str]:
    return [sys.executable, "-m", "simulator", *args]


def _answered(log: str) -> int:
    return sum(int(n) for n in re.findall(r"stopped: (\d+) ECR answered", log))


# -- under load: the simulator sees no failure ---------------------------------------


async def test_a_rolling_restart_under_load_loses_no_request(tmp_path: Path) -> None:
    pop = tmp_path / "pop"
    res = subprocess.run(_sim("population", "--size", "2500", "--seed", "11", "--out",
                              str(pop)), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    db = tmp_path / "eir.db"
    for cmd, name in (("import-tac", "tac.csv"), ("import", "registry.csv"),
                      ("import-observations", "observations.csv")):
        res = run_cli("registry", cmd, "--db", str(db), str(pop / name))
        assert res.returncode == 0, res.stderr
    start = json.loads((pop / "population.json").read_text())["start"]["iso"]
    (tmp_path / "eir.toml").write_text(
        f'[clock]\ntest_mode = true\nstart = "{start}"\nspeed = 1.0\n')
    report = tmp_path / "r.json"
    with EirProcess(db, origin_host="eir.localdomain", origin_realm="localdomain",
                    config=tmp_path / "eir.toml", extra=("--workers", "2"),
                    ready_timeout=30) as eir:
        assert eir.proc is not None
        before = children(eir.proc.pid)
        assert len(before) == 2
        # 8 MMEs (4 operator realms x 2), each with one connection, a Poisson load
        sim = subprocess.Popen(_sim("run", "--target", f"127.0.0.1:{eir.port}", "--population",
                                    str(pop), "--rate", "400", "--duration", "12", "--quiet",
                                    "--report", str(report)),
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
        try:
            await until(lambda: eir.log().count(" open from ") >= 8, 20,
                        "the simulator's MMEs did not connect:\n" + eir.log_tail())
            await asyncio.sleep(1.5)  # a second and more of load before the roll
            eir.send_signal(signal.SIGUSR2)
            await until(lambda: "rolling restart done" in eir.log(), 30,
                        "the rolling restart did not finish:\n" + eir.log_tail(40))
            assert sim.poll() is None, "the load ended before the roll did: no overlap"
            out, _ = await asyncio.to_thread(sim.communicate, timeout=60)
        finally:
            if sim.poll() is None:
                sim.kill()
        after = children(eir.proc.pid)
        assert len(after) == 2 and not set(after) & set(before), (before, after)
        assert not any(alive(p) for p in before)
        log = eir.log()
        assert await asyncio.to_thread(eir.stop, signal.SIGTERM, 20) == 0, eir.log_tail()
    assert sim.returncode == 0, out
    assert out.startswith("PASS: "), out
    r = json.loads(report.read_text())
    load, proto = r["load"], r["protocol"]
    assert r["sent"] >= 3000, out
    assert (r["answered"], r["timeouts"], r["errors"], r["mismatches"]) == \
        (r["sent"], 0, 0, 0), out
    assert (load["arrivals"], load["not_sent"], load["unanswered_at_end"]) == \
        (r["sent"], 0, 0), load
    # the roll did reach the MMEs: DPRs, and every connection came back
    assert proto["dpr_received"] >= 8 and proto["reconnects"] == proto["dpr_received"], proto
    assert (proto["retransmissions"], proto["connection_losses"], proto["not_sent_no_peer"],
            proto["unknown_hbh"]) == (0, 0, 0, 0), proto
    # each request was answered once, by one of the four workers (their own counts)
    assert _answered(eir.log()) == r["sent"]
    for step in (r"rolling restart: replacing 2 workers one at a time",
                 r"worker 0: pid \d+ started beside pid \d+",
                 r"worker 0: pid \d+ ready in [\d.]+ s; stopping pid \d+",
                 r"worker 1: pid \d+ exited with code 0 after",
                 r"rolling restart done: 2 of 2 workers replaced in [\d.]+ s"):
        assert re.search(step, log), step


# -- a roll that cannot complete -------------------------------------------------------


def _pids(eir: EirProcess) -> set[int]:
    assert eir.proc is not None
    return set(children(eir.proc.pid))


async def _status_for_realm(peer: Peer, dest_realm: str) -> int:
    ans = await peer.client.request(ecr(peer.host, REALM, dest_realm, WHITE, "00"), timeout=5)
    rc = ans.find(AvpCode.RESULT_CODE)
    assert rc is not None, ans
    return rc.as_u32()


async def test_a_failing_new_worker_aborts_the_roll_and_the_old_ones_serve(
        tmp_path: Path) -> None:
    config = tmp_path / "eir.toml"
    with eir_with_registry(tmp_path, extra=("--workers", "2")) as eir:
        pids = _pids(eir)
        peers = await peers_on_every_worker(eir)
        assert await _status_for_realm(peers[0], "other.realm") == 3003  # not our realm

        # a file that does not load: refused, no worker touched
        config.write_text("[policy]\ngrace_days = -1\n")
        eir.send_signal(signal.SIGUSR2)
        await until(lambda: "rolling restart refused" in eir.log(), 10, eir.log_tail())
        assert "grace_days must be between" in eir.log()

        # a file that loads but on which a worker cannot start: the new worker 0 fails,
        # the roll stops there
        config.write_text(FAST + '[log]\nkey_file = "/nonexistent/dir/eir.logkey"\n')
        eir.send_signal(signal.SIGUSR2)
        await until(lambda: "rolling restart aborted" in eir.log(), 30, eir.log_tail())
        # the code is 1, or 255 when asyncio's child watcher misses so quick an exit under
        # load ("Unknown child process pid ..., will report returncode 255", Python 3.11)
        assert re.search(r"rolling restart aborted: the new worker 0 \(pid \d+\) ended before "
                         r"it was ready \(exited with code (1|255)\); 0 of 2 workers replaced",
                         eir.log()), eir.log_tail()
        assert "/nonexistent/dir/eir.logkey: cannot be created" in eir.log()
        assert _pids(eir) == pids
        for p in peers:  # the same connections, served as before
            assert p.is_open
            assert await answer_of(p, WHITE) == W
            assert await answer_of(p, UNKNOWN) == G

        # fixed: the roll applies what SIGHUP cannot (server.realms needs a restart)
        config.write_text(FAST + '[server]\nrealms = ["other.realm"]\n')
        eir.send_signal(signal.SIGUSR2)
        await until(lambda: "rolling restart done" in eir.log(), 30, eir.log_tail(30))
        assert "changed: server.realms" in eir.log()
        assert not _pids(eir) & pids and len(_pids(eir)) == 2
        await until(lambda: not any(p.is_open for p in peers), 10, "a peer got no DPR")
        fresh = await peers_on_every_worker(eir)
        for p in fresh:
            assert await _status_for_realm(p, "other.realm") == 2001
        await close_all(peers + fresh)
        assert await asyncio.to_thread(eir.stop, signal.SIGTERM, 20) == 0, eir.log_tail()


async def test_one_process_says_a_rolling_restart_needs_workers(tmp_path: Path) -> None:
    with eir_with_registry(tmp_path) as eir:
        eir.send_signal(signal.SIGUSR2)  # its default action would end the process
        await until(lambda: "a rolling restart needs several workers" in eir.log(), 10,
                    eir.log_tail())
        peer = Peer()  # one process: its log lines carry no worker tag, no Peer.open
        await peer.client.connect("127.0.0.1", eir.port, timeout=5)
        assert await answer_of(peer, WHITE) == W
        assert eir.proc is not None and eir.proc.poll() is None
        await close_all([peer])
        assert await asyncio.to_thread(eir.stop, signal.SIGTERM, 20) == 0


# -- the supervisor with stand-in workers ------------------------------------------------

# says ready after 0.4 s (a roll of two takes a second) unless MARKER exists; exits 0 on
# SIGTERM; ends with its stdin
_STAND_IN = ("import os, signal, sys, time; sys.stdin.readline(); "
             "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); time.sleep(0.4); "
             "os.path.exists({marker!r}) or print('ready 0', flush=True); sys.stdin.read()")

# serves its inherited listening socket, writing its pid to each connection, unless
# MARKER exists: then it says ready and accepts nothing (connections queue up)
_ACCEPTOR = """
import json, os, signal, socket, sys
hello = json.loads(sys.stdin.readline())
sock = socket.socket(fileno=hello["listen_fds"][0])
signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
idle = os.path.exists({marker!r})
print("ready 0", flush=True)
if idle:
    sys.stdin.read()
while True:
    conn, _ = sock.accept()
    conn.sendall(str(os.getpid()).encode())
    conn.close()
"""


def _supervisor(tmp_path: Path, code: str, **kw: float) -> Supervisor:
    cfg = from_mapping({"server": {"listen": "127.0.0.1:0", "workers": 2},
                        "registry": {"db": str(tmp_path / "eir.db")}}).validate()
    return Supervisor(cfg, command=(sys.executable, "-c", code), stop_timeout=5, **kw)


async def _ready(sup: Supervisor) -> list[int]:
    await until(lambda: sup._all_ready, 20, "workers not ready")
    return [s.current.pid for s in sup.slots if s.current is not None]


async def test_rolls_asked_for_during_a_roll_make_one_more_and_a_stuck_worker_aborts(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", "eir.supervisor")
    marker = tmp_path / "stuck"
    sup = _supervisor(tmp_path, _STAND_IN.format(marker=str(marker)), ready_timeout=1.0)
    run = asyncio.create_task(sup.run())
    first = await _ready(sup)

    os.kill(os.getpid(), signal.SIGUSR2)
    await until(lambda: sup._rolling, 10, "no roll")
    for _ in range(3):  # three more while it rolls (it waits 0.4 s for each): one more roll
        os.kill(os.getpid(), signal.SIGUSR2)
        await asyncio.sleep(0.02)
    assert sup.rolls == 0 and sup._rolling
    await until(lambda: sup.rolls == 2 and not sup._rolling, 20, caplog.text)
    await asyncio.sleep(0.3)
    assert sup.rolls == 2 and sup.roll_aborts == 0
    assert "another one follows it" in caplog.text
    second = [s.current.pid for s in sup.slots if s.current is not None]
    assert len(second) == 2 and not set(first) & set(second)

    marker.touch()  # the next new worker never says ready
    os.kill(os.getpid(), signal.SIGUSR2)
    await until(lambda: sup.roll_aborts == 1, 20, caplog.text)
    assert re.search(r"rolling restart aborted: the new worker 0 \(pid \d+\) was not ready "
                     r"within 1 s \(exited with code 0\); 0 of 2 workers replaced", caplog.text)
    assert [s.current.pid for s in sup.slots if s.current is not None] == second
    assert all(s.current is not None and s.current.alive for s in sup.slots)

    sup._request_stop(signal.SIGTERM)
    assert await asyncio.wait_for(run, 20) == 0
    assert "stopped: all 2 workers exited cleanly" in caplog.text


async def test_connections_queued_on_a_retiring_worker_are_accepted_by_its_successor(
        tmp_path: Path) -> None:
    """The accept queue is the slot's socket, which outlives the old worker: nothing queued
    there is reset when it exits (with a socket per worker process, Linux resets them)."""
    marker = tmp_path / "idle"
    marker.touch()
    sup = _supervisor(tmp_path, _ACCEPTOR.format(marker=str(marker)))
    run = asyncio.create_task(sup.run())
    old = await _ready(sup)
    port = sup._address[1]
    # both workers accept nothing: the kernel queues every connection on a slot's socket
    clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(40)]
    marker.unlink()
    sup._request_roll()
    await until(lambda: sup.rolls == 1, 20, "no roll")
    answers: list[bytes | str] = []
    for c in clients:
        try:
            answers.append(c.recv(16))
        except OSError as exc:
            answers.append(repr(exc))
        finally:
            c.close()
    new = {str(s.current.pid).encode() for s in sup.slots if s.current is not None}
    assert not new & {str(p).encode() for p in old}
    assert set(answers) <= new, answers  # every queued connection answered by a new worker
    assert len(answers) == 40
    sup._request_stop(signal.SIGTERM)
    assert await asyncio.wait_for(run, 20) == 0


def test_queued_connections_die_with_a_listener_of_their_own() -> None:
    """Why the sockets are the supervisor's: the kernel behaviour the design avoids."""
    migrate = Path("/proc/sys/net/ipv4/tcp_migrate_req")
    if migrate.exists() and migrate.read_text().strip() != "0":
        pytest.skip("net.ipv4.tcp_migrate_req is on: the kernel moves such a queue itself")

    def listener(port: int = 0) -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", port))
        s.listen(64)
        return s

    a = listener()
    b = listener(a.getsockname()[1])
    clients = [socket.create_connection(a.getsockname(), timeout=2) for _ in range(40)]
    a.close()  # a worker with a socket of its own exits with connections in its queue
    time.sleep(0.1)
    reset = queued = 0
    for c in clients:
        c.setblocking(False)
        try:
            reset += c.recv(1) == b""
        except BlockingIOError:
            queued += 1  # in b's queue, alive
        except ConnectionResetError:
            reset += 1
        finally:
            c.close()
    b.close()
    assert reset > 0 and reset + queued == 40, (reset, queued)
