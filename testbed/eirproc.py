"""Our EIR as a real process, driven through its command line, for tests and benchmarks.

Treats the EIR as a black box (DESIGN.md layer rule 6): ``eir registry import`` and
``eir serve`` are run as subprocesses, readiness is the "EIR ready" log line, and stopping
is a signal. Everything binds 127.0.0.1 and every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType


def eir_command() -> list[str]:
    """The ``eir`` entry point of the running interpreter's environment."""
    script = Path(sys.executable).parent / "eir"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "eir.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(*args: str, timeout: float = 300, check: bool = False
            ) -> subprocess.CompletedProcess[str]:
    """Run ``eir ARGS...`` to completion; output captured as text."""
    return subprocess.run([*eir_command(), *args], capture_output=True, text=True,
                          timeout=timeout, check=check)


class EirProcess:
    """``eir serve`` in the background; a context manager that always stops it."""

    def __init__(self, db: Path | str, *, port: int | None = None,
                 origin_host: str = "eir.test.local", origin_realm: str = "test.local",
                 config: Path | str | None = None, extra: tuple[str, ...] = (),
                 log_path: Path | str | None = None, ready_timeout: float = 60.0,
                 host: str = "127.0.0.1", prefix: tuple[str, ...] = ()) -> None:
        """``host``: the address to listen on (127.0.0.1 unless inside a namespace the caller
        made); ``prefix``: a command the EIR runs under, e.g. ``("ip", "netns", "exec", NS)``
        (it must exec the EIR, so that signals reach it)."""
        self.db = str(db)
        self.host = host
        self.prefix = prefix
        self.port = port or free_port()
        self.origin_host = origin_host
        self.origin_realm = origin_realm
        self.config = config
        self.extra = extra
        self.log_path = Path(log_path) if log_path else Path(f"{self.db}.{self.port}.log")
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self.stop_seconds: float | None = None

    def start(self) -> EirProcess:
        args = [*self.prefix, *eir_command(), "serve", "--db", self.db,
                "--listen", f"{self.host}:{self.port}",
                "--origin-host", self.origin_host, "--origin-realm", self.origin_realm,
                *self.extra]
        if self.config:
            args += ["--config", str(self.config)]
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if "EIR ready" in self.log():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"eir serve exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"eir serve not ready in {self.ready_timeout} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the log (for failure messages)."""
        return "\n".join(self.log().splitlines()[-lines:])

    def send_signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal, wait (bounded), kill if need be; returns the exit code."""
        if self.proc is None:
            return -1
        if self.proc.poll() is None:
            t0 = time.monotonic()
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
                self.stop_seconds = time.monotonic() - t0
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.returncode = self.proc.returncode
        return self.returncode

    def __enter__(self) -> EirProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
