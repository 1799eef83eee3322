"""Wiring of a running EIR: registry, regime, S13 application, Diameter server, background work.

Owns start-up and the shutdown order (stop accepting, DPR to every peer,
answer what is in flight, write what was observed, close), and the
background loops of a running node:

- snapshot refresh (DESIGN.md 4 and 7): the change log's version is polled,
  a changed registry is loaded in the background and the new snapshot
  replaces the old one in a single assignment, so no request is dropped or
  answered from a half-loaded registry;
- flush: queued observations, decision counts and started grace clocks are
  written every ``observations.flush_seconds`` (sooner when many are
  queued), which bounds what a crash can lose;
- notifications: the warnings due are added to the outbox;
- pruning: observations older than the retention are deleted.

With ``server.workers`` > 1 (`eir.workers`) each worker process runs an
`EirApp` with its `Role`: every worker listens on the same address
(SO_REUSEPORT), loads its own snapshot and runs its own refresh loop (so a
registry change reaches each within ``registry.reload_seconds``) and its own
flush loop (the buffers it flushes are its own; the upserts are idempotent
and each write waits for the SQLite write lock, ``busy_timeout``). The jobs
that work on the registry as a whole, notifications and pruning, run in
worker 0 only: both would be safe to run concurrently (the outbox is INSERT
OR IGNORE, pruning is a DELETE), but N copies would re-decide every due
clock N times and hold the one write lock N times longer, delaying every
worker's flush. A restarted worker 0 takes them up again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from eir import gcpolicy
from eir.config import Config
from eir.diameter import messages as m
from eir.diameter.constants import Application
from eir.diameter.dictionary import default_dictionary
from eir.diameter.peer import Admission, Timers
from eir.diameter.server import DiameterServer, ServerConfig
from eir.policy import notify, sqlite_backup
from eir.policy.model import Decision, Status, from_epoch
from eir.policy.observations import SightingCache
from eir.policy.regime import Regime
from eir.policy.sqlite import SqliteRegistry
from eir.policy.sqlite_backup import StoreError
from eir.policy.sqlite_regime import SqliteObservations
from eir.s13 import S13Application

log = logging.getLogger("eir")


@dataclass(frozen=True)
class Role:
    """Which of the node's worker processes this is (the default: the only one)."""

    index: int = 0
    count: int = 1
    # the node's Origin-State-Id, the same in every worker (None: taken at start)
    origin_state_id: int | None = None

    @property
    def runs_registry_jobs(self) -> bool:
        """Notifications, pruning and writing the snapshot file: once per registry, so in
        worker 0 only."""
        return self.index == 0


class EirApp:
    def __init__(self, config: Config, role: Role | None = None) -> None:
        self.config = config
        self.role = role or Role()
        self.registry = SqliteRegistry(config.registry.db,
                                       exception_cap=config.policy.exception_cap)
        self.observations = SqliteObservations(self.registry)
        self.clock = config.make_clock()
        self.regime: Regime | None = None
        self.server: DiameterServer | None = None
        self.s13: S13Application | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._flushing: asyncio.Future[None] | None = None
        self._gc_settle = False

    async def start(self) -> None:
        # The check reads the whole file in a thread (3.4 s for the 10M registry, measured)
        # while the snapshot loads; nothing is served before it has passed.
        checked = asyncio.create_task(self._check_store())
        try:
            await self._start_serving(checked)
        except BaseException:
            if not checked.done():
                await asyncio.wait([checked])
            damage = None if checked.cancelled() else checked.exception()
            if damage is not None:  # the load tripped on what the check names better
                raise damage from None
            raise

    async def _start_serving(self, checked: asyncio.Task[None]) -> None:
        c = self.config
        await self.registry.open()
        t0 = time.perf_counter()
        snapshot = await self.registry.load_snapshot(
            use_file=c.registry.snapshot_file, write_file=self.role.runs_registry_jobs)
        log.info("registry %s loaded: version %d, %d entries, %d exception pairs, %d ranges, "
                 "%d TACs in %.2f s", c.registry.db, snapshot.version, snapshot.entry_count,
                 snapshot.exception_count, len(snapshot.ranges or ()), len(snapshot.tac),
                 time.perf_counter() - t0)
        log.info("list versions: %s", _versions(snapshot.list_versions))
        self._gc_settle = gcpolicy.tune()
        dc = c.decision_config()
        o = c.observations
        cache = SightingCache(self.observations, dc.is_home, max_imeis=o.cache_imeis,
                              resolution=o.last_seen_resolution_seconds,
                              ttl=o.cache_ttl_seconds, max_pending=o.max_pending)
        self.regime = Regime(
            snapshot, dc, cache, clock=self.clock,
            log_level=logging.getLevelName(c.log.decisions.upper()),
            imsi_log="clear" if c.log.imsi == "clear" else
            "hashed" if c.log.imsi == "hashed" else "masked",
            imsi_salt=c.server.origin_host.encode())
        if c.clock.start:
            log.warning("TEST CLOCK: simulated time %s at speed %g (never in production)",
                        from_epoch(self.clock()), c.clock.speed)
        host, port = c.server.endpoint()
        ident = m.Identity(c.server.origin_host, c.server.origin_realm,
                           c.server.host_ip_addresses or (_host_ip(host),),
                           product_name=c.server.product_name,
                           origin_state_id=(int(time.time()) if self.role.origin_state_id is None
                                            else self.role.origin_state_id) & 0xFFFFFFFF)
        dictionary = default_dictionary()
        self.s13 = S13Application(ident, dictionary, self.regime.check,
                                  realms=(c.server.origin_realm, *c.server.realms),
                                  origin_check=c.peers.origin_host_check)
        self.server = DiameterServer(
            ServerConfig(host=host, port=port, ident=ident,
                         admission=Admission(c.peers.allow_hosts, c.peers.allow_networks),
                         timers=Timers(tw=c.server.watchdog_seconds),
                         max_message=c.server.max_message_bytes,
                         reuse_port=self.role.count > 1),
            dictionary, {Application.S13: self.s13.handle})
        await checked
        await self.server.start()
        loops = [self._refresh_loop, self._flush_loop]
        if self.role.runs_registry_jobs:
            loops += [self._notify_loop, self._prune_loop]
        for loop in loops:
            self._tasks.append(asyncio.create_task(loop(), name=loop.__name__))
        if self.role.count == 1:
            log.info("EIR ready: S13 on %s:%d as %s (realm %s), registry %s", host,
                     self.server.port, c.server.origin_host, c.server.origin_realm,
                     c.registry.db)
        else:  # the supervisor says "EIR ready" once every worker is
            log.info("worker %d of %d ready: S13 on %s:%d, %s", self.role.index,
                     self.role.count, host, self.server.port,
                     "runs notifications and pruning" if self.role.runs_registry_jobs else
                     "answers and flushes its observations")

    async def _check_store(self) -> None:
        """Refuse to serve from a damaged registry file (issue 6: fail-safe, never wrong)."""
        how = self.config.registry.integrity_check
        path = self.registry.path
        if how == "off" or not self.role.runs_registry_jobs or not path.is_file():
            return
        t0 = time.perf_counter()
        problems = await asyncio.to_thread(sqlite_backup.check, path, full=how == "full")
        if problems:
            raise StoreError(f"{path} is damaged ({problems[0]}; {len(problems)} problem(s)): "
                             "not serving from it; restore a backup (eir registry restore)")
        log.info("registry %s intact (%s_check in %.2f s)", path,
                 "integrity" if how == "full" else "quick", time.perf_counter() - t0)

    async def _refresh_loop(self) -> None:
        assert self.regime is not None
        while True:
            await asyncio.sleep(self.config.registry.reload_seconds)
            try:
                version = await self.registry.current_version()
                if version == self.regime.snapshot.version:
                    continue
                t0 = time.perf_counter()
                snapshot = await self.registry.load_snapshot(
                    use_file=self.config.registry.snapshot_file,
                    write_file=self.role.runs_registry_jobs)
                self.regime.snapshot = snapshot
                log.info("registry changed: snapshot version %d loaded in %.2f s "
                         "(%d entries, %d exception pairs); list versions %s", snapshot.version,
                         time.perf_counter() - t0, snapshot.entry_count,
                         snapshot.exception_count, _versions(snapshot.list_versions))
            except Exception:  # a bad moment of the database must not stop serving
                log.exception("registry refresh failed; serving the previous snapshot")

    async def flush(self) -> None:
        """Write queued observations, decision counts and grace clocks (one batch each).

        One flush runs at a time, as a task of its own: a caller cancelled
        at shutdown stops waiting but the write runs to its end, and `stop`
        waits for it before the last flush.
        """
        if self.regime is None:
            return
        while self._flushing is not None and not self._flushing.done():
            await asyncio.wait([self._flushing])
        self._flushing = asyncio.ensure_future(self._flush_now())
        await asyncio.shield(self._flushing)

    async def _flush_now(self) -> None:
        regime = self.regime
        assert regime is not None
        await regime.cache.flush()
        counts = regime.take_counts()
        starts = regime.take_clock_starts()
        try:
            if counts:
                await self.observations.write_counts(counts, self.clock())
                counts = Counter()
            if starts:
                n = self.config.notifications
                await notify.start_clocks(self.registry, starts, n.offsets_days, n.at_expiry)
        except BaseException:
            # a cancel at shutdown or a database error must not drop a grace clock
            regime.put_back(counts, starts)
            raise

    async def _flush_loop(self) -> None:
        assert self.regime is not None
        cache = self.regime.cache
        period = self.config.observations.flush_seconds
        while True:
            # a short tick, so a burst of new sightings is written before
            # max_pending rows are at risk, not only every flush_seconds
            deadline = time.monotonic() + period
            while time.monotonic() < deadline and cache.pending < cache.max_pending:
                await asyncio.sleep(min(0.05, period))
            try:
                await self.flush()
            except Exception:
                log.exception("writing observations failed; they are kept for the next try")
            if self._gc_settle:
                gcpolicy.settle()

    async def _notify_loop(self) -> None:
        assert self.regime is not None
        regime = self.regime
        n = self.config.notifications

        def decide_at(imei14: str, imsi: str | None, at: int) -> Decision:
            return regime.dry_run(imei14, imsi, at=at)[0]

        while True:
            await asyncio.sleep(n.interval_seconds)
            try:
                await self.flush()
                made = await notify.produce_due(self.registry, int(self.clock()), decide_at,
                                                n.offsets_days, n.at_expiry)
                if made:
                    log.info("notifications: %d warning(s) added to the outbox", made)
            except Exception:
                log.exception("producing notifications failed; will retry")

    async def _prune_loop(self) -> None:
        o = self.config.observations
        while True:
            await asyncio.sleep(o.prune_interval_seconds)
            try:
                before = int(self.clock() - o.retention_days * 86400)
                pruned = await self.observations.prune(before)
                if pruned:
                    log.info("observations: pruned %d not seen since %s", pruned,
                             from_epoch(before))
            except Exception:
                log.exception("pruning observations failed; will retry")

    async def stop(self) -> None:
        try:
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(BaseException):
                    await task
            if self.server is not None:
                await self.server.stop()
            if self._flushing is not None:
                await asyncio.wait([self._flushing])
                if not self._flushing.cancelled() and self._flushing.exception() is not None:
                    log.warning("a flush failed at shutdown (%s); retrying",
                                self._flushing.exception())
            # what was observed up to the last answer is written before exit
            try:
                await self.flush()
            except Exception:
                log.exception("the last flush failed: observations, decision counts and grace "
                              "clocks since the previous flush are not written")
        finally:
            self.observations.close()
            # the registry's thread would keep the process alive past SIGTERM
            await self.registry.close()
        if self.s13 is not None and self.regime is not None:
            self.regime.take_counts()
            log.info("stopped: %d ECR answered (%d fast path), decisions %s",
                     self.s13.fast + self.s13.slow, self.s13.fast,
                     {f"{_status_name(s)}/{r}": n for (s, r), n in sorted(
                         self.regime.totals.items(), key=lambda kv: -kv[1])})


def _versions(versions: dict[str, int]) -> str:
    return ", ".join(f"{src} {v}" for src, v in sorted(versions.items())) or "none recorded"


def _status_name(status: int | None) -> str:
    return "UNKNOWN(5422)" if status is None else Status(status).name


def _host_ip(host: str) -> str:
    # a wildcard listen address says nothing about where peers reach us:
    # set server.host_ip_addresses for the CEA in that case
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "localhost": "127.0.0.1", "": "127.0.0.1"
            }.get(host, host)


async def serve(config: Config, role: Role | None = None, *, stop: asyncio.Event | None = None,
                on_ready: Callable[[EirApp], None] | None = None) -> None:
    """Run until SIGTERM or SIGINT (or ``stop`` is set); then stop in order and return.

    ``on_ready`` is called once the node answers (a worker tells its supervisor).
    """
    app = EirApp(config, role)
    if stop is None:
        stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await app.start()
    except BaseException:
        await app.stop()  # the registry's thread must not keep the process alive
        raise
    try:
        if on_ready is not None:
            on_ready(app)
        await stop.wait()
        log.info("stopping: DPR to %d peer(s)",
                 len(app.server.protocols) if app.server else 0)
    finally:
        await app.stop()
