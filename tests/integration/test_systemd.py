"""The systemd unit (ops/systemd) and the sd_notify protocol of a real ``eir serve``.

The unit file is checked by ``systemd-analyze verify`` (skipped with the reason where
systemd is not installed, a failure in CI) and against the code it depends on (the
supervisor's stop timeout). The notifications are read from a real AF_UNIX datagram
socket the test binds and names in ``$NOTIFY_SOCKET``, with the sender's pid from
SCM_CREDENTIALS, as systemd reads them (``NotifyAccess=main``: only the main process
counts, so a worker must never send).
"""

from __future__ import annotations

import configparser
import inspect
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from eir import config as eir_config
from eir import sdnotify
from eir.workers import Supervisor
from testbed.eirproc import EirProcess, eir_command
from testbed.fdpeer import must_not_skip

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "ops" / "systemd" / "eir.service"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None,
                                       comment_prefixes=("#",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_unit_verifies(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if must_not_skip():
            pytest.fail("systemd-analyze missing where it is required (CI): apt-get install "
                        "systemd")
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    # the unit names the install path of README's walk-through; verify the same unit
    # with this environment's eir (verify checks that the command is executable)
    unit = tmp_path / "eir.service"
    text = UNIT.read_text()
    assert "ExecStart=/opt/eir/.venv/bin/eir serve --config /etc/eir/eir.toml" in text
    unit.write_text(text.replace("/opt/eir/.venv/bin/eir", eir_command()[0]))
    res = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True,
                         timeout=60)
    ours = [line for line in (res.stdout + res.stderr).splitlines() if "eir.service" in line]
    assert res.returncode == 0 and not ours, res.stdout + res.stderr


def test_unit_matches_the_code() -> None:
    s = _unit()["Service"]
    assert s["Type"] == "notify" and s["NotifyAccess"] == "main"
    assert s["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert s["KillSignal"] == "SIGTERM" and s["KillMode"] == "mixed"
    assert s["Restart"] == "on-failure" and s["CapabilityBoundingSet"] == ""
    assert s["ProtectSystem"] == "strict" and s["NoNewPrivileges"] == "yes"
    assert s["StateDirectory"] == "eir"
    # systemd must not kill a node still stopping in order: the supervisor's own bound
    # for its workers (then SIGKILL and 5 s) fits inside TimeoutStopSec
    stop = inspect.signature(Supervisor.__init__).parameters["stop_timeout"].default
    assert float(s["TimeoutStopSec"]) >= stop + 5
    example = ROOT / "ops" / "systemd" / "eir.toml"
    cfg = eir_config.load(example)
    assert cfg.registry.db.startswith("/var/lib/eir/")  # StateDirectory=eir


class _NotifySocket:
    """What systemd does: a datagram socket, each message with its sender's pid."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

    def read(self, timeout: float) -> tuple[int, dict[str, str]]:
        self.sock.settimeout(timeout)
        data, anc, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = next(struct.unpack("3i", d[:12])[0] for level, kind, d in anc
                   if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
        return pid, dict(line.split("=", 1) for line in data.decode().splitlines())

    def expect(self, key: str, pid: int, timeout: float = 60) -> dict[str, str]:
        """The next message; it must carry ``key`` and come from ``pid``."""
        got_pid, msg = self.read(timeout)
        assert got_pid == pid, f"{msg} came from pid {got_pid}, not the main process {pid}"
        assert msg.get(key) == "1", msg
        return msg

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_notify_protocol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    # a path for one process, the abstract namespace ("@name") for the supervisor
    address = (str(tmp_path / "notify") if workers == 1 else
               f"@eir-test-notify-{os.getpid()}-{time.monotonic_ns()}")
    listener = _NotifySocket(address if workers == 1 else "\0" + address[1:])
    monkeypatch.setenv(sdnotify.ENV, address)
    config = tmp_path / "eir.toml"
    config.write_text("[log]\nlevel = \"info\"\n")
    eir = EirProcess(tmp_path / "eir.db", config=config,
                     extra=("--workers", str(workers), "--metrics-listen", "127.0.0.1:0"))
    try:
        with eir:
            assert eir.proc is not None
            pid = eir.proc.pid
            ready = listener.expect("READY", pid)
            assert "serving S13" in ready["STATUS"], ready
            config.write_text("[log]\nlevel = \"warning\"\n")
            eir.send_signal(signal.SIGHUP)
            reloading = listener.expect("RELOADING", pid, timeout=10)
            assert int(reloading["MONOTONIC_USEC"]) > 0
            listener.expect("READY", pid, timeout=10)
            eir.send_signal(signal.SIGTERM)
            listener.expect("STOPPING", pid, timeout=10)
            assert eir.stop(timeout=60) == 0, eir.log_tail()
        # nothing else was sent: no worker spoke, nothing after STOPPING
        with pytest.raises(TimeoutError):
            listener.read(0.3)
        assert "SIGHUP" in eir.log()
    finally:
        listener.close()


def test_without_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    monkeypatch.delenv(sdnotify.ENV, raising=False)
    assert sdnotify.ready("x") is False
    monkeypatch.setenv(sdnotify.ENV, str(tmp_path / "nobody-listens"))
    assert sdnotify.ready("x") is False  # a failed send never raises
    listener = _NotifySocket(str(tmp_path / "n"))
    monkeypatch.setenv(sdnotify.ENV, str(tmp_path / "n"))
    try:
        assert sdnotify.status("two\nlines")
        assert listener.read(1)[1] == {"STATUS": "two lines"}
    finally:
        listener.close()
