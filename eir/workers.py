"""Several worker processes on one listening address: the supervisor and the worker side.

Owns ``server.workers`` > 1 (``eir serve --workers N``). The process model:

- ``eir serve`` becomes a supervisor. It checks that the listen address is
  free (and picks the port when it is 0, so that every worker binds the
  same one), opens the registry once (migrations and the switch to WAL
  happen before any worker opens it), then starts N workers. A worker is a
  fresh interpreter (``python -m eir.cli serve --worker I``), never a fork:
  no event loop, thread or SQLite connection crosses a process boundary,
  and uvloop starts clean in each.
- Each worker reads its settings from its stdin as one JSON line: the config
  the supervisor validated (every worker runs exactly the same settings, a
  test clock's anchor included) and the node's Origin-State-Id (the node's
  identity is one, whichever worker a peer reaches). The supervisor keeps
  that stdin open: its end means the supervisor is gone (even SIGKILLed),
  and the worker then stops as on SIGTERM, so no orphan keeps the port.
  The worker's stdout carries one line to the supervisor, "ready PORT"; its
  fd 1 is then pointed at stderr, where the logs go, tagged with the
  worker's index and pid.
- Every worker listens with SO_REUSEPORT and the kernel spreads the
  connections over them; with ``[tls]`` each worker listens on the TLS port
  too (the supervisor checks the certificate and key first, so a bad one is
  one line at start, not N failing workers). Which loops run where: see
  `eir.app`.
- The supervisor logs "EIR ready: ..." once, when every worker is ready.
  SIGTERM or SIGINT is forwarded to every worker; each stops in
  `eir.app`'s order (DPR to its peers, in-flight answers, last flush); the
  supervisor exits 0 once all have stopped cleanly, 1 otherwise (a worker
  that had to be killed after ``stop_timeout``).
- A worker that dies unexpectedly is restarted after a back-off (0.5 s,
  doubling up to 10 s). More than ``restart_limit`` restarts in a row (a
  worker that served ``stable_seconds`` resets the count) make the
  supervisor give up: it stops the others and exits 1, for the service
  manager to restart the node. A worker that fails before it was ever
  ready fails the start (exit 1): a bad registry file would not get better.

Metrics (``[metrics]``, `eir.metrics`): the supervisor listens on
``metrics.listen``; each scrape writes ``{"scrape": N}`` to every ready
worker's stdin and reads the worker's answer, one line ``metrics JSON``,
from its stdout (the control pipe, which says nothing else after "ready").

One caveat of SO_REUSEPORT: each worker has its own peer table, so two
connections with the same Origin-Host that land on different workers are
both accepted (RFC 6733 5.6.4's election runs within one worker only).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import IO, Any

from eir import metrics, tls
from eir.app import EirApp, Role, apply_reload, merge_live, serve
from eir.config import Config, ConfigError, from_mapping, to_mapping
from eir.policy.sqlite import SqliteRegistry

__all__ = ["Supervisor", "read_handshake", "run_worker", "supervise"]

log = logging.getLogger("eir.supervisor")
wlog = logging.getLogger("eir.worker")

# a worker that stopped cleanly on our signal (before its handlers were installed, the
# signal's default action; a SIGINT from a terminal, KeyboardInterrupt's exit code 130)
_CLEAN_EXITS = frozenset({0, -signal.SIGTERM, -signal.SIGINT, 130})
# the longest line a worker's control pipe may carry: its metrics (a thousand peers ~ 150 KB)
_CONTROL_LINE = 16 << 20


# -- the worker side ------------------------------------------------------------------


def read_handshake(fd: int = 0) -> tuple[Config, int, int, bytes]:
    """(config, worker count, Origin-State-Id, what followed) from the supervisor's line.

    Read with ``os.read``, not a buffered file, so that nothing is lost: what
    came after the line (a SIGHUP's settings, sent while the worker started)
    is returned for the lifeline, which reads the rest of stdin.
    """
    buf = b""
    while b"\n" not in buf:
        chunk = os.read(fd, 65536)
        if not chunk:
            raise ConfigError("worker: no settings from the supervisor on stdin "
                              "(--worker is internal to eir serve --workers)")
        buf += chunk
    line, _, rest = buf.partition(b"\n")
    try:
        hello = json.loads(line)
        return from_mapping(hello["config"]).validate(), int(hello["count"]), \
            int(hello["origin_state_id"]), rest
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"worker: bad settings from the supervisor: {exc}") from None


class _Lifeline(asyncio.Protocol):
    """The read end of the supervisor's pipe: its end means the supervisor is gone.

    After the handshake the supervisor writes one JSON line per SIGHUP, the
    settings read again (``{"config": ...}``); each goes to ``on_config``.
    A ``{"scrape": N}`` line asks for the worker's metrics (``on_scrape``).
    """

    def __init__(self, stop: asyncio.Event,
                 on_config: Callable[[dict[str, Any]], None] | None = None,
                 on_scrape: Callable[[int], None] | None = None) -> None:
        self._stop = stop
        self._on_config = on_config
        self._on_scrape = on_scrape
        self._buf = b""

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while b"\n" in self._buf:
            line, _, self._buf = self._buf.partition(b"\n")
            try:
                message = json.loads(line)
                if "scrape" in message:
                    if self._on_scrape is not None:
                        self._on_scrape(int(message["scrape"]))
                    continue
                settings = message["config"]
            except (ValueError, KeyError, TypeError) as exc:
                wlog.error("bad settings line from the supervisor, ignored: %s", exc)
                continue
            if self._on_config is not None:
                self._on_config(settings)

    def eof_received(self) -> bool | None:
        self._gone()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone()

    def _gone(self) -> None:
        if not self._stop.is_set():
            wlog.warning("the supervisor is gone: stopping")
            self._stop.set()


async def run_worker(config: Config, role: Role, control: IO[bytes], early: bytes = b"") -> None:
    """Serve as worker ``role.index``; say "ready PORT" on ``control``; stop with the supervisor.

    ``early``: what the supervisor sent after the handshake before stdin was
    handed to the lifeline.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    running: list[EirApp] = []
    waiting: list[dict[str, Any]] = []  # settings that came before the worker was ready

    def on_config(settings: dict[str, Any]) -> None:
        if not running:
            waiting[:] = [settings]  # applied once ready: only the latest counts
            return
        apply_reload(running[0], lambda: from_mapping(settings).validate())

    def on_scrape(seq: int) -> None:
        # not ready yet: no answer, the supervisor's scrape times out for this worker
        if running:
            try:
                control.write(b"metrics %d %s\n" % (
                    seq, metrics.to_json(running[0].collector.registry).encode()))
                control.flush()
            except OSError:  # the supervisor is gone; the lifeline stops us
                pass

    # Settings come from the supervisor; a SIGHUP to the whole process group (a closed
    # terminal) must not end a worker, whose default action for it is to exit.
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    stdin = os.fdopen(os.dup(0), "rb", buffering=0)
    transport, lifeline = await loop.connect_read_pipe(
        lambda: _Lifeline(stop, on_config, on_scrape), stdin)
    if early:
        lifeline.data_received(early)

    def ready(app: EirApp) -> None:
        running.append(app)
        if waiting:
            on_config(waiting.pop())
        assert app.server is not None
        try:
            control.write(f"ready {app.server.port}\n".encode())
            control.flush()
        except OSError:  # the supervisor is gone; the lifeline stops us
            pass

    try:
        await serve(config, role, stop=stop, on_ready=ready)
    finally:
        transport.close()


# -- the supervisor ---------------------------------------------------------------------


@dataclass
class _Slot:
    index: int
    proc: asyncio.subprocess.Process | None = None
    ever_ready: bool = False
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    in_a_row: int = 0  # restarts since the worker last served stable_seconds
    exit_code: int | None = None
    starts: int = 0  # for metrics: times it was ready (1 + restarts)
    scrapes: asyncio.Queue[tuple[int, str]] = field(default_factory=asyncio.Queue)
    asking: asyncio.Lock = field(default_factory=asyncio.Lock)


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _signal(proc: asyncio.subprocess.Process | None, sig: int) -> None:
    if proc is not None and proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def _free_port(host: str, port: int) -> int:
    """The port to listen on, checked free by anyone (port 0: one the kernel picks).

    The probe binds without SO_REUSEPORT, so another node on the address,
    reuse-port or not, is found here rather than silently shared.
    """
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the workers do
            s.bind(addr)
            return int(s.getsockname()[1])
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Supervisor:
    """Starts, watches, restarts and stops the worker processes of one node."""

    def __init__(self, config: Config, *, command: tuple[str, ...] | None = None,
                 restart_limit: int = 5, backoff: tuple[float, float] = (0.5, 10.0),
                 stable_seconds: float = 30.0, stop_timeout: float = 40.0,
                 reload: Callable[[], Config] | None = None) -> None:
        # stop_timeout: a worker waits up to 3 s for DPAs, then writes its last
        # batch, which may wait up to the registry's busy timeout (30 s)
        self.config = config
        self.count = config.server.workers
        self.command = command or (sys.executable, "-m", "eir.cli")
        self.restart_limit = restart_limit
        self.backoff = backoff
        self.stable_seconds = stable_seconds
        self.stop_timeout = stop_timeout
        self.slots = [_Slot(i) for i in range(self.count)]
        self._stopping = asyncio.Event()
        self._failure: str | None = None
        self._hello = b""
        self._hello_fields: dict[str, Any] = {}
        self.reload = reload
        self._current = config  # what the workers run (set again by _run, then by SIGHUPs)
        self._address: tuple[str, int] = ("", 0)
        self._tls_port = 0
        self._anchor = ""
        self._scrape_seq = 0

    def _fail(self, why: str) -> None:
        if self._failure is None:
            self._failure = why
            log.error("%s: stopping the node", why)
        self._stopping.set()

    def _request_stop(self, sig: int) -> None:
        if not self._stopping.is_set():
            log.info("%s: stopping %d worker(s)", signal.Signals(sig).name, self.count)
            self._stopping.set()

    def _reload(self) -> None:
        """SIGHUP: read the settings again and hand them to every worker (and to restarts)."""
        if self.reload is None or not self._hello_fields:
            return
        try:
            new = self._fixed(self.reload())
        except ConfigError as exc:
            log.error("SIGHUP: settings not reloaded, the running ones stay: %s", exc)
            return
        # A worker restarted later gets what the running ones apply, not the keys
        # that need a restart of the node (each worker logs those itself).
        self._current, _, _ = merge_live(self._current, new)
        self._hello_fields["config"] = to_mapping(self._current)
        self._hello = json.dumps(self._hello_fields).encode() + b"\n"
        line = json.dumps({"config": to_mapping(new)}).encode() + b"\n"
        sent = 0
        for slot in self.slots:
            proc = slot.proc
            if proc is not None and proc.returncode is None and proc.stdin is not None:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    proc.stdin.write(line)
                    sent += 1
        log.info("SIGHUP: settings sent to %d worker(s)", sent)

    def _fixed(self, c: Config) -> Config:
        """The settings as the workers get them: the port and the clock anchor fixed."""
        cfg = replace(c, server=replace(c.server, listen=_listen(*self._address)),
                      tls=replace(c.tls, port=self._tls_port) if c.tls.enabled else c.tls)
        if cfg.clock.start and not cfg.clock.anchor:
            cfg = replace(cfg, clock=replace(cfg.clock, anchor=self._anchor))
        return cfg

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        sigs = (signal.SIGTERM, signal.SIGINT)
        for sig in sigs:
            loop.add_signal_handler(sig, self._request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        endpoint = None
        if self.config.metrics.enabled:
            collector = metrics.WorkerCollector(self.count, self._ask_metrics,
                                                lambda i: self.slots[i].starts)
            endpoint = metrics.Endpoint(self.config.metrics.endpoint(), collector.render)
            await endpoint.start()
        try:
            return await self._run()
        finally:
            if endpoint is not None:
                await endpoint.stop()
            for sig in (*sigs, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    async def _run(self) -> int:
        c = self.config
        host, port = c.server.endpoint()
        if c.tls.enabled:
            tls.server_context(c.tls)  # a bad certificate or key: one line, no worker started
            self._tls_port = _free_port(host, c.tls.port)
        port = _free_port(host, port) if c.tls.plain or not c.tls.enabled else port
        self._address = (host, port)
        # "the process start" must be one instant for all workers, or each
        # worker's simulated time would differ from the others'
        self._anchor = datetime.fromtimestamp(time.time(), UTC).isoformat()
        cfg = self._current = self._fixed(c)
        registry = SqliteRegistry(cfg.registry.db, exception_cap=cfg.policy.exception_cap)
        await registry.open()  # create and migrate once, before the workers race for it
        await registry.close()
        self._hello_fields = {"count": self.count,
                              "origin_state_id": int(time.time()) & 0xFFFFFFFF,
                              "config": to_mapping(cfg)}
        self._hello = json.dumps(self._hello_fields).encode() + b"\n"
        log.info("starting %d workers on %s (SO_REUSEPORT), registry %s", self.count,
                 _listen(host, port), cfg.registry.db)
        tasks = [asyncio.create_task(self._run_slot(s), name=f"worker-{s.index}")
                 for s in self.slots]
        all_ready = asyncio.ensure_future(asyncio.gather(*(s.ready.wait() for s in self.slots)))
        stopping = asyncio.ensure_future(self._stopping.wait())
        waiters: list[asyncio.Future[Any]] = [all_ready, stopping]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if not self._stopping.is_set():
            where = f"{host}:{port}" if cfg.tls.plain or not cfg.tls.enabled else \
                f"{host}:{self._tls_port} (TLS only)"
            if cfg.tls.enabled and cfg.tls.plain:
                where += f" and TLS on {self._tls_port}"
            log.info("EIR ready: S13 on %s as %s (realm %s), registry %s, %d workers", where,
                     cfg.server.origin_host, cfg.server.origin_realm, cfg.registry.db,
                     self.count)
        await stopping
        all_ready.cancel()
        clean = await self._stop_all(tasks)
        if self._failure is not None:
            return 1
        if not clean:
            return 1
        log.info("stopped: all %d workers exited cleanly", self.count)
        return 0

    async def _spawn(self, slot: _Slot) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            *self.command, "serve", "--worker", str(slot.index),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=_CONTROL_LINE)
        slot.proc = proc
        log.info("worker %d started (pid %d)", slot.index, proc.pid)
        assert proc.stdin is not None
        proc.stdin.write(self._hello)
        with contextlib.suppress(ConnectionError):  # it died at once: seen at wait()
            await proc.stdin.drain()
        return proc

    async def _run_slot(self, slot: _Slot) -> None:
        loop = asyncio.get_running_loop()
        while True:
            proc = await self._spawn(slot)
            if self._stopping.is_set():  # the stop came while it was being started
                _signal(proc, signal.SIGTERM)
            started = loop.time()
            assert proc.stdout is not None
            line = await proc.stdout.readline()  # b"" when it exits first
            reader = None
            if line.startswith(b"ready "):
                if slot.ever_ready:
                    log.info("worker %d ready again (pid %d)", slot.index, proc.pid)
                slot.ever_ready = True
                slot.starts += 1
                slot.ready.set()
                reader = asyncio.create_task(self._read_control(slot, proc.stdout))
            code = await proc.wait()
            if reader is not None:
                reader.cancel()
            if self._stopping.is_set():
                slot.exit_code = code
                return
            what = f"worker {slot.index} (pid {proc.pid}) {_describe(code)}"
            if not slot.ever_ready:
                self._fail(f"{what} before it was ready")
                return
            if loop.time() - started >= self.stable_seconds:
                slot.in_a_row = 0
            slot.in_a_row += 1
            if slot.in_a_row > self.restart_limit:
                self._fail(f"{what}; it was restarted {self.restart_limit} times in a row: "
                           "giving up")
                return
            first, most = self.backoff
            delay = min(most, first * 2 ** (slot.in_a_row - 1))
            log.warning("%s unexpectedly: restarting it in %.1f s (restart %d of at most %d "
                        "in a row)", what, delay, slot.in_a_row, self.restart_limit)
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
                return
            except TimeoutError:
                pass

    # -- metrics: the workers answer over their pipes (eir.metrics) --

    async def _read_control(self, slot: _Slot, stdout: asyncio.StreamReader) -> None:
        """The worker's lines after "ready": its metrics, one line per scrape."""
        while line := await stdout.readline():
            if line.startswith(b"metrics "):
                seq, _, text = line[8:].partition(b" ")
                with contextlib.suppress(ValueError):
                    slot.scrapes.put_nowait((int(seq), text.decode()))

    async def _ask_metrics(self, index: int) -> str | None:
        """One worker's metrics line (None: not running); the caller bounds the wait."""
        slot = self.slots[index]
        proc = slot.proc
        if proc is None or proc.returncode is not None or proc.stdin is None \
                or not slot.ready.is_set():
            return None
        self._scrape_seq += 1
        seq = self._scrape_seq
        async with slot.asking:
            try:
                proc.stdin.write(b'{"scrape": %d}\n' % seq)
            except (ConnectionError, RuntimeError):
                return None
            while True:  # an answer to an earlier ask that timed out is dropped
                got, text = await slot.scrapes.get()
                if got == seq:
                    return text

    async def _stop_all(self, tasks: list[asyncio.Task[None]]) -> bool:
        """SIGTERM to every worker; wait for them (bounded); True if all stopped cleanly."""
        self._stopping.set()
        for slot in self.slots:
            _signal(slot.proc, signal.SIGTERM)
        _done, pending = await asyncio.wait(tasks, timeout=self.stop_timeout)
        clean = True
        if pending:
            late = [s for s in self.slots if s.proc is not None and s.proc.returncode is None]
            log.error("worker(s) %s did not stop within %.0f s: killed",
                      ", ".join(str(s.index) for s in late), self.stop_timeout)
            for slot in late:
                _signal(slot.proc, signal.SIGKILL)
            await asyncio.wait(pending, timeout=5)
            clean = False
        for slot in self.slots:
            if slot.exit_code is not None and slot.exit_code not in _CLEAN_EXITS:
                log.error("worker %d %s at stop", slot.index, _describe(slot.exit_code))
                clean = False
        return clean


def supervise(config: Config, reload: Callable[[], Config] | None = None) -> int:
    """Run ``config.server.workers`` workers until SIGTERM or SIGINT; the exit code.

    SIGHUP calls ``reload`` and hands the settings to every worker.
    """
    async def main() -> int:
        return await Supervisor(config, reload=reload).run()

    return asyncio.run(main())
