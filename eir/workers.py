"""Several worker processes on one listening address: the supervisor and the worker side.

Owns ``server.workers`` > 1 (``eir serve --workers N``). The process model:

- ``eir serve`` becomes a supervisor. It checks that the listen address is
  free (and picks the port when it is 0, so that every worker binds the
  same one), opens the registry once (migrations and the switch to WAL
  happen before any worker opens it), then starts N workers. A worker is a
  fresh interpreter (``python -m eir.cli serve --worker I``), never a fork:
  no event loop, thread or SQLite connection crosses a process boundary,
  and uvloop starts clean in each.
- The listening sockets are the supervisor's: one per worker slot, each
  bound with SO_REUSEPORT to the one address (the kernel spreads the
  connections over them) and handed to the slot's worker as an inherited
  file descriptor. A worker that stops closes its copy only, so the
  socket's accept queue outlives it (see the rolling restart below).
- Each worker reads its settings from its stdin as one JSON line: the config
  the supervisor validated (every worker runs exactly the same settings, a
  test clock's anchor included), the node's Origin-State-Id (the node's
  identity is one, whichever worker a peer reaches) and the numbers of its
  listening descriptors. The supervisor keeps that stdin open: its end means
  the supervisor is gone (even SIGKILLed), and the worker then stops as on
  SIGTERM, so no orphan keeps the port. The worker's stdout carries one line
  to the supervisor, "ready PORT"; its fd 1 is then pointed at stderr, where
  the logs go, tagged with the worker's index and pid.
- With ``[tls]`` each worker also listens on the TLS port, with SO_REUSEPORT
  (the supervisor checks the certificate and key first, so a bad one is one
  line at start, not N failing workers). Those sockets are the workers' own:
  a rolling restart can reset a TLS connection still waiting in a retiring
  worker's accept queue (the peer reconnects), which the plain listener's
  handed-down sockets avoid. Which loops run where: see `eir.app`.
- The supervisor logs "EIR ready: ..." once, when every worker is ready.
  SIGTERM or SIGINT is forwarded to every worker; each stops in
  `eir.app`'s order (DPR to its peers, in-flight answers, last flush); the
  supervisor exits 0 once all have stopped cleanly, 1 otherwise (a worker
  that had to be killed after ``stop_timeout``).
- A worker that dies unexpectedly is restarted after a back-off (0.5 s,
  doubling up to 10 s). Its slot's sockets are closed at once (the kernel
  then sends new connections to the live workers; those queued on the dead
  one are reset, as on any crash) and made anew for the restart. More than
  ``restart_limit`` restarts in a row (a worker that served
  ``stable_seconds`` resets the count) make the supervisor give up: it
  stops the others and exits 1, for the service manager to restart the
  node. A worker that fails before it was ever ready fails the start
  (exit 1): a bad registry file would not get better.
- SIGHUP: the settings are read again and each worker applies what may
  change while serving (`eir.app.merge_live`).

Rolling restart (issue 6, "change without downtime"): SIGUSR2 to the
supervisor reads the config file again and replaces the workers one at a
time: start the new worker on the same slot (it shares the old one's
listening sockets), wait until it says ready (snapshot loaded, accepting),
then SIGTERM the old one, which stops accepting, sends DPR (REBOOTING,
RFC 6733 5.4) to its peers, answers what they sent before their DPA, writes
its last batch and exits; then the next slot. The MMEs reconnect and the
kernel hands their connections to the live workers. Because the accept
queue belongs to a socket the supervisor and the new worker still hold, a
connection queued but not yet accepted when the old worker closes is
accepted by the new one: with a socket per worker, Linux resets the queue
of a listener that closes (20 of 40 queued connections reset when one of
two SO_REUSEPORT listeners closed, measured here; ``net.ipv4.tcp_migrate_req``
is off by default). A rolling restart applies every setting but
``server.listen`` and ``server.workers`` (the sockets and the slots are the
supervisor's; those two are logged and kept): it is how settings that
SIGHUP cannot change, or new code, reach a running node. While a slot is
replaced its two workers run side by side: one more snapshot in memory, and
for worker 0 the registry jobs twice, which is safe (`eir.app`). A SIGUSR2 during a
roll is coalesced into one more roll after it. A new worker that exits or is
not ready within ``ready_timeout`` aborts the roll: it is stopped, the
workers not yet replaced keep serving, later restarts use the previous
settings, and the reason is logged; so does a config file that does not
load (no worker is touched).

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

from eir import metrics, sdnotify, tls, webhook
from eir.app import EirApp, Role, apply_reload, merge_live, serve
from eir.config import Config, ConfigError, from_mapping, to_mapping
from eir.policy.sqlite import SqliteRegistry

__all__ = ["ROLL_SIGNAL", "Handshake", "Supervisor", "read_handshake", "run_worker",
           "supervise"]

log = logging.getLogger("eir.supervisor")
wlog = logging.getLogger("eir.worker")

ROLL_SIGNAL = signal.SIGUSR2  # a rolling restart of the workers

# a worker that stopped cleanly on our signal (before its handlers were installed, the
# signal's default action; a SIGINT from a terminal, KeyboardInterrupt's exit code 130)
_CLEAN_EXITS = frozenset({0, -signal.SIGTERM, -signal.SIGINT, 130})
# the longest line a worker's control pipe may carry: its metrics (a thousand peers ~ 150 KB)
_CONTROL_LINE = 16 << 20

_BACKLOG = 512  # as eir.diameter.server.ServerConfig's; the worker listens with it again


# -- the worker side ------------------------------------------------------------------


@dataclass(frozen=True)
class Handshake:
    """What a worker learns from the supervisor's first line on its stdin."""

    config: Config
    count: int  # workers in the node
    origin_state_id: int
    listen_fds: tuple[int, ...]  # the slot's listening sockets (inherited descriptors)
    rest: bytes  # what followed the line in the same read (a SIGHUP's settings)


def read_handshake(fd: int = 0) -> Handshake:
    """The supervisor's line, and what followed it.

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
        return Handshake(from_mapping(hello["config"]).validate(), int(hello["count"]),
                         int(hello["origin_state_id"]),
                         tuple(int(fd) for fd in hello.get("listen_fds", ())), rest)
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


@dataclass(eq=False)
class _Worker:
    """One worker process, as the supervisor follows it."""

    index: int
    proc: asyncio.subprocess.Process
    generation: int  # the rolling restart whose settings it was started with (0: none)
    started: float  # loop time
    said_ready: asyncio.Task[bool]  # True once it said "ready"; False if its stdout ended
    exited: asyncio.Task[int]  # its exit code
    # metrics: the answers to scrapes, read from its stdout after "ready" by ``control``
    scrapes: asyncio.Queue[tuple[int, str]] = field(default_factory=asyncio.Queue)
    asking: asyncio.Lock = field(default_factory=asyncio.Lock)
    control: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return not self.exited.done()

    def signal(self, sig: int) -> None:
        if self.alive and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)


async def _said_ready(stream: asyncio.StreamReader | None) -> bool:
    if stream is None:
        return False
    line = await stream.readline()  # b"" when it exits first
    return line.startswith(b"ready ")


@dataclass(eq=False)
class _Slot:
    index: int
    sockets: list[socket.socket] = field(default_factory=list)
    current: _Worker | None = None
    successor: _Worker | None = None  # being started by a rolling restart
    ever_ready: bool = False
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    in_a_row: int = 0  # restarts since the worker last served stable_seconds
    # held by whoever starts a worker here: the slot's own restarts, a rolling restart
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    starts: int = 0  # for metrics: workers of this slot that became ready (1 + restarts)

    def close_sockets(self) -> None:
        for s in self.sockets:
            s.close()
        self.sockets = []


class _RollAborted(Exception):
    """A rolling restart cannot go on; the message says why."""


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


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


def _listeners(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address of ``host`` (as asyncio's create_server binds),
    SO_REUSEPORT so that each slot's join the one group."""
    out: list[socket.socket] = []
    seen: set[tuple[int, Any]] = set()
    try:
        for family, kind, proto, _, addr in socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
            if (family, addr) in seen:
                continue
            seen.add((family, addr))
            s = socket.socket(family, kind, proto)
            out.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(addr)
            s.listen(_BACKLOG)
    except OSError as exc:
        for s in out:
            s.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return out


def _listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Supervisor:
    """Starts, watches, restarts, replaces (rolling restart) and stops a node's workers."""

    def __init__(self, config: Config, *, command: tuple[str, ...] | None = None,
                 restart_limit: int = 5, backoff: tuple[float, float] = (0.5, 10.0),
                 stable_seconds: float = 30.0, stop_timeout: float = 40.0,
                 ready_timeout: float = 300.0,
                 reload: Callable[[], Config] | None = None) -> None:
        # stop_timeout: a worker waits up to 3 s for DPAs, then writes its last
        # batch, which may wait up to the registry's busy timeout (30 s).
        # ready_timeout: a new worker of a rolling restart loads its snapshot (0.3 s
        # from the snapshot file for 11M entries, a full read of the registry without it)
        # and checks the file (2.3 s for 10M, quick_check)
        self.config = config
        self.count = config.server.workers
        self.command = command or (sys.executable, "-m", "eir.cli")
        self.restart_limit = restart_limit
        self.backoff = backoff
        self.stable_seconds = stable_seconds
        self.stop_timeout = stop_timeout
        self.ready_timeout = ready_timeout
        self.slots = [_Slot(i) for i in range(self.count)]
        self._stopping = asyncio.Event()
        self._failure: str | None = None
        self._hello_fields: dict[str, Any] = {}
        self.reload = reload
        self._current = config  # what the workers run (set again by _run, then by SIGHUPs)
        self._address: tuple[str, int] = ("", 0)
        self._tls_port = 0
        self._plain = True
        self._anchor = ""
        self._live: set[_Worker] = set()
        self._generation = 0
        self._roll_wanted = asyncio.Event()
        self._rolling = False
        self._all_ready = False
        self.rolls = 0  # rolling restarts completed
        self.roll_aborts = 0
        self._scrape_seq = 0

    def _fail(self, why: str) -> None:
        if self._failure is None:
            self._failure = why
            log.error("%s: stopping the node", why)
        self._stopping.set()

    def _request_stop(self, sig: int) -> None:
        if not self._stopping.is_set():
            log.info("%s: stopping %d worker(s)", signal.Signals(sig).name, self.count)
            sdnotify.stopping(f"stopping {self.count} workers (DPR to their peers)")
            self._stopping.set()
            self._roll_wanted.set()  # the roller wakes up and ends

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
        line = json.dumps({"config": to_mapping(new)}).encode() + b"\n"
        sent = 0
        for w in list(self._live):
            stdin = w.proc.stdin
            if w.proc.returncode is None and stdin is not None:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    stdin.write(line)
                    sent += 1
        log.info("SIGHUP: settings sent to %d worker(s)", sent)

    def _request_roll(self) -> None:
        """SIGUSR2: a rolling restart, now or after the one running (coalesced)."""
        if self._stopping.is_set():
            return
        name = ROLL_SIGNAL.name
        if self._rolling:
            log.info("%s during a rolling restart: another one follows it (several such "
                     "requests make one)", name)
        elif not self._all_ready:
            log.info("%s before every worker was ready: the rolling restart starts once they "
                     "are", name)
        else:
            log.info("%s: rolling restart of %d workers", name, self.count)
        self._roll_wanted.set()

    def _fixed(self, c: Config) -> Config:
        """The settings as the workers get them: the port and the clock anchor fixed."""
        cfg = replace(c, server=replace(c.server, listen=_listen(*self._address)),
                      tls=replace(c.tls, port=self._tls_port) if c.tls.enabled else c.tls)
        if cfg.clock.start and not cfg.clock.anchor:
            cfg = replace(cfg, clock=replace(cfg.clock, anchor=self._anchor))
        return cfg

    def _set_current(self, cfg: Config) -> None:
        self._current = cfg
        self._hello_fields["config"] = to_mapping(cfg)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        sigs = (signal.SIGTERM, signal.SIGINT)
        for sig in sigs:
            loop.add_signal_handler(sig, self._request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, sdnotify.reload_with, self._reload)
        loop.add_signal_handler(ROLL_SIGNAL, self._request_roll)
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
            for sig in (*sigs, signal.SIGHUP, ROLL_SIGNAL):
                loop.remove_signal_handler(sig)
            for slot in self.slots:
                slot.close_sockets()

    async def _run(self) -> int:
        c = self.config
        host, port = c.server.endpoint()
        if c.tls.enabled:
            tls.server_context(c.tls)  # a bad certificate or key: one line, no worker started
            self._tls_port = _free_port(host, c.tls.port)
        webhook.check(c.webhook)  # so is a missing token or secret file
        port = _free_port(host, port) if c.tls.plain or not c.tls.enabled else port
        self._address = (host, port)
        self._plain = c.tls.plain or not c.tls.enabled  # TLS only: no plain port to hand down
        if self._plain:
            for slot in self.slots:
                slot.sockets = _listeners(host, port)
        # "the process start" must be one instant for all workers, or each
        # worker's simulated time would differ from the others'
        self._anchor = datetime.fromtimestamp(time.time(), UTC).isoformat()
        cfg = self._fixed(c)
        registry = SqliteRegistry(cfg.registry.db, exception_cap=cfg.policy.exception_cap)
        await registry.open()  # create and migrate once, before the workers race for it
        await registry.close()
        self._hello_fields = {"count": self.count,
                              "origin_state_id": int(time.time()) & 0xFFFFFFFF}
        self._set_current(cfg)
        log.info("starting %d workers on %s (SO_REUSEPORT), registry %s", self.count,
                 _listen(host, port), cfg.registry.db)
        tasks = [asyncio.create_task(self._run_slot(s), name=f"worker-{s.index}")
                 for s in self.slots]
        all_ready = asyncio.ensure_future(asyncio.gather(*(s.ready.wait() for s in self.slots)))
        stopping = asyncio.ensure_future(self._stopping.wait())
        waiters: list[asyncio.Future[Any]] = [all_ready, stopping]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        roller: asyncio.Task[None] | None = None
        if not self._stopping.is_set():
            self._all_ready = True
            where = f"{host}:{port}" if cfg.tls.plain or not cfg.tls.enabled else \
                f"{host}:{self._tls_port} (TLS only)"
            if cfg.tls.enabled and cfg.tls.plain:
                where += f" and TLS on {self._tls_port}"
            log.info("EIR ready: S13 on %s as %s (realm %s), registry %s, %d workers", where,
                     cfg.server.origin_host, cfg.server.origin_realm, cfg.registry.db,
                     self.count)
            sdnotify.ready(f"serving S13 with {self.count} workers on {where}")
            roller = asyncio.create_task(self._roller(), name="rolling-restart")
        await stopping
        all_ready.cancel()
        # retrieve what the gather ended with, so that asyncio does not log "exception was
        # never retrieved" for a start that failed
        await asyncio.wait([all_ready])
        if not all_ready.cancelled():
            all_ready.exception()
        clean = await self._stop_all(tasks, roller)
        if self._failure is not None:
            return 1
        if not clean:
            return 1
        log.info("stopped: all %d workers exited cleanly", self.count)
        return 0

    async def _spawn(self, slot: _Slot, generation: int) -> _Worker:
        """Start a worker on ``slot``'s sockets (made anew if a crash closed them)."""
        loop = asyncio.get_running_loop()
        if not slot.sockets and self._plain:
            slot.sockets = _listeners(*self._address)
        fds = [s.fileno() for s in slot.sockets]
        hello = json.dumps({**self._hello_fields, "listen_fds": fds}).encode() + b"\n"
        proc = await asyncio.create_subprocess_exec(
            *self.command, "serve", "--worker", str(slot.index),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, pass_fds=fds,
            limit=_CONTROL_LINE)
        w = _Worker(slot.index, proc, generation, loop.time(),
                    asyncio.create_task(_said_ready(proc.stdout)),
                    asyncio.create_task(proc.wait()))
        self._live.add(w)
        w.control = asyncio.create_task(self._read_control(w))
        w.exited.add_done_callback(lambda _: self._live.discard(w))
        log.info("worker %d started (pid %d)", slot.index, proc.pid)
        if self._stopping.is_set():  # the stop came while it was being started
            w.signal(signal.SIGTERM)
        assert proc.stdin is not None
        proc.stdin.write(hello)
        with contextlib.suppress(ConnectionError):  # it died at once: seen at wait()
            await proc.stdin.drain()
        return w

    async def _run_slot(self, slot: _Slot) -> None:
        loop = asyncio.get_running_loop()
        async with slot.lock:
            try:
                w = await self._spawn(slot, self._generation)
            except OSError as exc:
                self._fail(f"worker {slot.index} could not be started: {exc}")
                return
            slot.current = w
        restarted = False
        while True:
            if await w.said_ready:
                if restarted:
                    log.info("worker %d ready again (pid %d)", slot.index, w.pid)
                slot.ever_ready = True
                slot.starts += 1
                slot.ready.set()
            code = await w.exited
            if self._stopping.is_set():
                return
            if slot.current is not w:  # retired by a rolling restart: follow its successor
                assert slot.current is not None
                w, restarted = slot.current, False
                continue
            what = f"worker {slot.index} (pid {w.pid}) {_describe(code)}"
            if not slot.ever_ready:
                self._fail(f"{what} before it was ready")
                return
            if slot.successor is None:
                # no connection should wait in a queue nobody accepts from during the
                # back-off: the kernel sends them to the live workers (a rolling restart
                # starting a successor here shares the sockets: they stay)
                slot.close_sockets()
            if loop.time() - w.started >= self.stable_seconds:
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
            async with slot.lock:
                if slot.current is not w:  # a rolling restart put a worker here meanwhile
                    assert slot.current is not None
                    w, restarted = slot.current, False
                    log.info("worker %d: the rolling restart's new worker (pid %d) took its "
                             "place: not restarted", slot.index, w.pid)
                    continue
                try:
                    w = await self._spawn(slot, self._generation)
                except OSError as exc:
                    self._fail(f"worker {slot.index} could not be restarted: {exc}")
                    return
                slot.current = w
                restarted = True

    # -- rolling restart --

    async def _roller(self) -> None:
        """Runs the rolling restarts asked for, one after the other."""
        while True:
            await self._roll_wanted.wait()
            self._roll_wanted.clear()
            if self._stopping.is_set():
                return
            self._rolling = True
            sdnotify.status(f"rolling restart of {self.count} workers (SIGUSR2)")
            try:
                await self._roll()
            except Exception:  # an OS error starting a process, say: the node serves on
                log.exception("rolling restart failed; the workers not yet replaced keep "
                              "serving")
                self.roll_aborts += 1
            finally:
                self._rolling = False
                sdnotify.status(f"serving S13 with {self.count} workers; rolling restarts: "
                                f"{self.rolls} done, {self.roll_aborts} aborted")

    def _settings_for_roll(self) -> tuple[Config, list[str]]:
        """The config file read again; the keys kept as they are (``server.listen``,
        ``server.workers``: the sockets and slots are the supervisor's)."""
        raw = self.reload() if self.reload is not None else self.config
        kept = []
        if raw.server.endpoint() != self.config.server.endpoint():
            kept.append("server.listen")
        if raw.server.workers != self.count:
            kept.append("server.workers")
            raw = replace(raw, server=replace(raw.server, workers=self.count))
        return self._fixed(raw), kept

    async def _roll(self) -> bool:
        """Replace every worker, one at a time; False when the roll did not complete."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            new, kept = self._settings_for_roll()
        except ConfigError as exc:
            self.roll_aborts += 1
            log.error("rolling restart refused: the settings do not load (%s); the %d running "
                      "workers keep serving, none was replaced", exc, self.count)
            return False
        previous = self._current
        _, live, restart = merge_live(previous, new)
        changed = sorted(live + restart)
        self._generation += 1
        gen = self._generation
        self._set_current(new)
        before = {s.index: s.current.pid for s in self.slots if s.current is not None}
        log.info("rolling restart: replacing %d workers one at a time; settings read again, "
                 "changed: %s%s", self.count, ", ".join(changed) or "none",
                 f"; changed but kept (they need a full restart): {', '.join(kept)}"
                 if kept else "")
        replaced = 0
        try:
            for slot in self.slots:
                if await self._roll_slot(slot, gen):
                    replaced += 1
        except _RollAborted as exc:
            self.roll_aborts += 1
            self._set_current(previous)
            if self._stopping.is_set():
                log.warning("rolling restart interrupted by the stop (%s): %d of %d workers "
                            "replaced", exc, replaced, self.count)
            else:
                log.error("rolling restart aborted: %s; %d of %d workers replaced, the others "
                          "keep serving with the previous settings (which restarts use "
                          "again)", exc, replaced, self.count)
            return False
        except Exception:
            self._set_current(previous)
            raise
        self.rolls += 1
        after = {s.index: s.current.pid for s in self.slots if s.current is not None}
        log.info("rolling restart done: %d of %d workers replaced in %.1f s (pids %s -> %s)",
                 replaced, self.count, loop.time() - t0,
                 ", ".join(str(before[i]) for i in sorted(before)),
                 ", ".join(str(after[i]) for i in sorted(after)))
        return True

    async def _roll_slot(self, slot: _Slot, gen: int) -> bool:
        """Replace ``slot``'s worker; False when there was none to replace."""
        async with slot.lock:
            if self._stopping.is_set():
                raise _RollAborted("the node is stopping")
            old = slot.current
            if old is None or not old.alive:
                log.info("rolling restart: worker %d is down; its restart gets the new "
                         "settings", slot.index)
                return False
            if old.generation >= gen:
                log.info("rolling restart: worker %d (pid %d) was restarted with the new "
                         "settings already", slot.index, old.pid)
                return False
            await self._replace(slot, old, gen)
            return True

    async def _replace(self, slot: _Slot, old: _Worker, gen: int) -> None:
        """Start a successor on ``slot``, then retire ``old``; _RollAborted says why not."""
        loop = asyncio.get_running_loop()
        i = slot.index
        t0 = loop.time()
        try:
            new = await self._spawn(slot, gen)
        except OSError as exc:
            raise _RollAborted(f"a new worker {i} could not be started: {exc}") from None
        slot.successor = new
        try:
            log.info("rolling restart: worker %d: pid %d started beside pid %d, waiting until "
                     "it is ready", i, new.pid, old.pid)
            why = await self._until_ready(new)
            if why is not None:
                code = await self._retire(new)
                raise _RollAborted(f"the new worker {i} (pid {new.pid}) {why} "
                                   f"({_describe(code)})")
            slot.current = new
        finally:
            slot.successor = None
        t1 = loop.time()
        log.info("rolling restart: worker %d: pid %d ready in %.1f s; stopping pid %d (DPR to "
                 "its peers, in-flight answers, last flush)", i, new.pid, t1 - t0, old.pid)
        code = await self._retire(old)
        log.log(logging.INFO if code in _CLEAN_EXITS else logging.WARNING,
                "rolling restart: worker %d: pid %d %s after %.1f s", i, old.pid,
                _describe(code), loop.time() - t1)

    async def _until_ready(self, w: _Worker) -> str | None:
        """Wait until ``w`` says ready: None, or why it did not."""
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait([w.said_ready, stopping], timeout=self.ready_timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if w.said_ready.done():
            return None if w.said_ready.result() else "ended before it was ready"
        if self._stopping.is_set():
            return "was not ready when the node was told to stop"
        return f"was not ready within {self.ready_timeout:g} s"

    async def _retire(self, w: _Worker) -> int:
        """SIGTERM, and the exit code (SIGKILL after ``stop_timeout``)."""
        w.signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(asyncio.shield(w.exited), self.stop_timeout)
        except TimeoutError:
            log.error("worker %d (pid %d) did not stop within %.0f s: killed", w.index, w.pid,
                      self.stop_timeout)
            w.signal(signal.SIGKILL)
            return await w.exited

    # -- metrics: the workers answer over their pipes (eir.metrics) --

    async def _read_control(self, w: _Worker) -> None:
        """The worker's lines after "ready": its metrics, one line per scrape."""
        if not await w.said_ready:
            return
        self.slots[w.index].starts += 1
        stdout = w.proc.stdout
        assert stdout is not None
        while line := await stdout.readline():
            if line.startswith(b"metrics "):
                seq, _, text = line[8:].partition(b" ")
                with contextlib.suppress(ValueError):
                    w.scrapes.put_nowait((int(seq), text.decode()))

    async def _ask_metrics(self, index: int) -> str | None:
        """The metrics line of slot ``index``'s serving worker (None: none is serving); the
        caller bounds the wait."""
        w = self.slots[index].current
        stdin = w.proc.stdin if w is not None else None
        if w is None or not w.alive or stdin is None or not w.said_ready.done() \
                or not w.said_ready.result():
            return None
        self._scrape_seq += 1
        seq = self._scrape_seq
        async with w.asking:
            try:
                stdin.write(b'{"scrape": %d}\n' % seq)
            except (ConnectionError, RuntimeError):
                return None
            while True:  # an answer to an earlier ask that timed out is dropped
                got, text = await w.scrapes.get()
                if got == seq:
                    return text

    # -- the stop --

    async def _stop_all(self, tasks: list[asyncio.Task[None]],
                        roller: asyncio.Task[None] | None) -> bool:
        """SIGTERM to every worker; wait for them (bounded); True if all stopped cleanly."""
        self._stopping.set()
        self._roll_wanted.set()
        live = list(self._live)
        for w in live:
            w.signal(signal.SIGTERM)
        waited: list[asyncio.Future[Any]] = [*tasks, *(w.exited for w in live)]
        if roller is not None:
            waited.append(roller)
        _done, pending = await asyncio.wait(waited, timeout=self.stop_timeout)
        clean = True
        if pending:
            late = [w for w in self._live if w.alive]
            log.error("worker(s) %s did not stop within %.0f s: killed",
                      ", ".join(f"{w.index} (pid {w.pid})" for w in late), self.stop_timeout)
            for w in late:
                w.signal(signal.SIGKILL)
            await asyncio.wait(pending, timeout=5)
            clean = False
        for w in live:
            if w.exited.done() and w.exited.result() not in _CLEAN_EXITS:
                log.error("worker %d %s at stop", w.index, _describe(w.exited.result()))
                clean = False
        return clean


def supervise(config: Config, reload: Callable[[], Config] | None = None) -> int:
    """Run ``config.server.workers`` workers until SIGTERM or SIGINT; the exit code.

    SIGHUP calls ``reload`` and hands the settings to every worker; SIGUSR2
    calls it and replaces the workers one at a time (a rolling restart).
    """
    async def main() -> int:
        return await Supervisor(config, reload=reload).run()

    return asyncio.run(main())
