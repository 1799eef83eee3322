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
- notifications: the warnings due are added to the outbox (and delivered to
  ``[webhook]``'s URL by `eir.webhook`);
- pruning: observations older than the retention are deleted;
- metrics (`eir.metrics`): a single process serves ``GET /metrics`` itself
  (``[metrics]``); the workers of ``--workers N`` answer their supervisor's
  scrapes instead (`eir.workers`). The loops above leave what the metrics
  read (when the snapshot was last known current, when the observation
  buffer was last written, the notification backlog) where the collector
  reads it at scrape time.

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
import socket
import sqlite3
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eir import gcpolicy, logkey, metrics, n5g, public, sdnotify, tls, webhook
from eir.config import Config, ConfigError, OverloadSection
from eir.diameter import messages as m
from eir.diameter.codec import Avp
from eir.diameter.constants import Application, AuthSessionState, AvpCode
from eir.diameter.dictionary import default_dictionary
from eir.diameter.overload import Gate, Guard
from eir.diameter.peer import Admission, Timers
from eir.diameter.server import DiameterServer, ServerConfig
from eir.http import HttpServer
from eir.policy import notify, sqlite_backup
from eir.policy.model import Decision, Status, from_epoch
from eir.policy.observations import SightingCache
from eir.policy.regime import Regime
from eir.policy.registry import Snapshot
from eir.policy.sqlite import SqliteRegistry
from eir.policy.sqlite_backup import StoreError
from eir.policy.sqlite_regime import SqliteObservations
from eir.s13 import Decide, DecisionUnavailable, S13Application
from eir.sbi_token import TokenVerifier, load_public_key

if TYPE_CHECKING:  # imported when enabled: FastAPI and pydantic take a while to import
    from eir.admin.app import AdminServer

log = logging.getLogger("eir")

# SIGHUP applies these (and [policy] but home_mccs) while serving; the rest needs a restart
_LIVE = frozenset({"peers.allow_hosts", "peers.allow_networks", "peers.origin_host_check",
                   "log.level", "log.decisions", "log.loggers", "registry.reload_seconds",
                   "metrics.expected_peers", "metrics.forget_peers_seconds",
                   *(f"overload.{f.name}" for f in fields(OverloadSection))})
# while refusing requests, a summary line at most this often
_OVERLOAD_LOG_SECONDS = 10.0
# the sighting cache keeps each sighting's home flag; the importer's cap is not the server's
_RESTART_POLICY = frozenset({"policy.home_mccs", "policy.exception_cap"})

# what a registry that cannot be read raises (StoreError is a RuntimeError; so is a file
# that cannot be switched to WAL)
_UNAVAILABLE = (RuntimeError, sqlite3.Error, OSError)

# registry.unavailable = "fail-open": what an ECR gets while no registry can be read
_FAIL_OPEN = Decision(Status.WHITELISTED, "registry_unavailable", rule="fail_open")


@dataclass(frozen=True)
class Role:
    """Which of the node's worker processes this is (the default: the only one)."""

    index: int = 0
    count: int = 1
    # the node's Origin-State-Id, the same in every worker (None: taken at start)
    origin_state_id: int | None = None
    # the listening sockets the supervisor made for this worker's slot (inherited file
    # descriptors): served instead of binding, so that a worker replaced by a rolling
    # restart hands its accept queue to its successor (`eir.workers`)
    listen_fds: tuple[int, ...] = ()

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
        self.guard: Guard | None = None
        self.gate: Gate | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._flushing: asyncio.Future[None] | None = None
        self._gc_settle = False
        # fail-safe: answers given with no registry, and since when (monotonic)
        self.unavailable_answers = 0
        self._unavailable_since: float | None = None
        self._unavailable_logged = 0.0
        # refreshes failing while serving: since when the snapshot is stale (monotonic)
        self.stale_since: float | None = None
        self._stale_logged = 0.0
        self._tls: ssl.SSLContext | None = None
        # for metrics: when the snapshot was last known to be the registry's current
        # version (wall time), when the observation buffer was last written (monotonic),
        # failed flushes, and the notification outbox (worker 0's loop asks)
        self.fresh_at: float | None = None
        self.flushed_at = time.monotonic()
        self.flush_failures = 0
        self.notifications_produced = 0
        self.notifications_backlog: tuple[int, int | None] | None = None
        # delivers the outbox ([webhook]); its token and secret files are read here
        self.webhook = (webhook.Webhook(self.registry, config.webhook, clock=self.clock)
                        if config.webhook.enabled and self.role.runs_registry_jobs else None)
        self.n5g: n5g.N5gApi | None = None  # [n5g]: N5g-eir for AMFs, in every worker
        self.n5g_server: HttpServer | None = None
        self.collector = metrics.NodeCollector(self)
        self.endpoint: metrics.Endpoint | None = None
        self.public: HttpServer | None = None  # [public]: worker 0 only (eir.public)
        self.public_check: public.PublicCheck | None = None
        self.admin: AdminServer | None = None

    async def start(self) -> None:
        c = self.config
        # a bad certificate or key stops the start before the registry is read
        self._tls = tls.server_context(c.tls) if c.tls.enabled else None
        try:
            snapshot = await self._load()
        except _UNAVAILABLE as exc:
            if c.registry.unavailable == "stop":
                raise
            # Fail-safe (issue 6): answer as configured, visibly, and keep trying.
            self._unavailable_since = time.monotonic()
            log.error("registry %s unavailable at start (%s): answering every ECR %s until it "
                      "loads; retrying every %g s", c.registry.db, exc, self._fallback_words(),
                      c.registry.reload_seconds)
            await self._serve(self._unavailable)
            self._tasks.append(asyncio.create_task(self._recover_loop(), name="recover"))
            return
        self._use(snapshot)
        self.fresh_at = time.time()
        assert self.regime is not None
        await self._serve(self.regime.check)
        self._start_loops()

    async def _load(self) -> Snapshot:
        """Check, open and load the registry; the check's finding wins over the load's."""
        c = self.config
        if not self.registry.path.exists():
            log.warning("registry %s does not exist: starting with a new, empty registry",
                        c.registry.db)
        # The check reads the whole file in a thread (3.4 s for the 10M registry, measured)
        # while the snapshot loads; nothing is served before it has passed.
        checked = asyncio.create_task(self._check_store())
        try:
            await self.registry.open()
            t0 = time.perf_counter()
            snapshot = await self.registry.load_snapshot(
                use_file=c.registry.snapshot_file, write_file=self.role.runs_registry_jobs)
            await checked
        except BaseException as exc:
            if not checked.done():
                await asyncio.wait([checked])
            damage = None if checked.cancelled() else checked.exception()
            await self.registry.close()
            if damage is not None and isinstance(exc, Exception):
                raise damage from None  # the load tripped on what the check names better
            raise  # a cancel (shutdown) stays a cancel
        log.info("registry %s loaded: version %d, %d entries, %d exception pairs, %d ranges, "
                 "%d TACs in %.2f s", c.registry.db, snapshot.version, snapshot.entry_count,
                 snapshot.exception_count, len(snapshot.ranges or ()), len(snapshot.tac),
                 time.perf_counter() - t0)
        log.info("list versions: %s", _versions(snapshot.list_versions))
        return snapshot

    def _use(self, snapshot: Snapshot) -> None:
        """Build the regime over a loaded snapshot."""
        c = self.config
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
            imei_log="clear" if c.log.imei == "clear" else "hashed",
            log_key=self._log_key())

    def _log_key(self) -> bytes:
        c = self.config.log
        if c.imsi != "hashed" and c.imei != "hashed":
            return b""
        path = Path(c.key_file) if c.key_file else Path(f"{self.config.registry.db}.logkey")
        return logkey.load_or_create(path)

    async def _serve(self, decide: Decide) -> None:
        c = self.config
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
        self.s13 = S13Application(ident, dictionary, decide,
                                  realms=(c.server.origin_realm, *c.server.realms),
                                  origin_check=c.peers.origin_host_check)
        self.guard = Guard(c.overload.limits(self.role.count), time.monotonic(),
                           int(time.time() * 1000))
        self.gate = Gate(self.s13.handle, self.guard, ident, time.monotonic, Avp.u32(
            AvpCode.AUTH_SESSION_STATE, AuthSessionState.NO_STATE_MAINTAINED).encode())
        self.server = DiameterServer(
            ServerConfig(host=host, port=port, ident=ident,
                         admission=Admission(c.peers.allow_hosts, c.peers.allow_networks),
                         timers=Timers(tw=c.server.watchdog_seconds,
                                       cer=c.server.cer_timeout_seconds,
                                       message=c.server.message_timeout_seconds),
                         max_message=c.server.max_message_bytes,
                         reuse_port=self.role.count > 1,
                         plain=c.tls.plain or self._tls is None, tls=self._tls,
                         tls_port=c.tls.port,
                         tls_handshake_timeout=c.server.cer_timeout_seconds,
                         sockets=tuple(socket.socket(fileno=fd)
                                       for fd in self.role.listen_fds),
                         latency_sample=c.metrics.latency_sample if c.metrics.enabled else 0),
            dictionary, {Application.S13: self.gate})
        await self.server.start()
        if c.n5g.enabled:
            await self._serve_n5g(self.s13)
        if c.metrics.enabled and self.role.count == 1:  # workers: the supervisor serves
            self.endpoint = metrics.Endpoint(c.metrics.endpoint(), self.collector.render)
            await self.endpoint.start()
        if c.public.enabled and self.role.runs_registry_jobs:
            self.public_check = public.PublicCheck(c.public, lambda: self.regime)
            self.public = HttpServer.listen(
                "public", c.public, self.public_check,
                reuse_port=self.role.count > 1, read_timeout=public.READ_TIMEOUT)
            await self.public.start()
        if c.admin.enabled and self.role.runs_registry_jobs:  # eir.admin.app: why worker 0
            from eir.admin.app import AdminServer

            self.admin = AdminServer(self)
            await self.admin.start()
        self._tasks.append(asyncio.create_task(self._overload_loop(), name="overload"))
        where = (f"{host}:{self.server.port}" if self._tls is None or c.tls.plain else
                 f"{host}:{self.server.tls_port} (TLS only)")
        if self._tls is not None:
            log.info("%s", tls.describe(c.tls, host, self.server.tls_port))
            if c.tls.plain:
                where += f" and TLS on {self.server.tls_port}"
        if self.role.count == 1:
            log.info("EIR ready: S13 on %s as %s (realm %s), registry %s", where,
                     c.server.origin_host, c.server.origin_realm, c.registry.db)
        else:  # the supervisor says "EIR ready" once every worker is
            log.info("worker %d of %d ready: S13 on %s, %s", self.role.index,
                     self.role.count, where,
                     "runs notifications and pruning" if self.role.runs_registry_jobs else
                     "answers and flushes its observations")

    async def _serve_n5g(self, s13: S13Application) -> None:
        """N5g-eir (`eir.n5g`) deciding with S13's current decision function."""
        c = self.config.n5g
        verifier = None
        if c.token_key_file:
            try:
                key = load_public_key(c.token_key_file)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"n5g.token_key_file: {c.token_key_file}: {exc}") from None
            verifier = TokenVerifier(key, scope=n5g.SCOPE, audience=c.token_audience,
                                     issuer=c.token_issuer)
        self.n5g = n5g.N5gApi(s13, operator=c.operator, verifier=verifier)
        self.n5g_server = HttpServer.listen("n5g", c, self.n5g, reuse_port=self.role.count > 1)
        await self.n5g_server.start()

    def _start_loops(self) -> None:
        loops = [self._refresh_loop, self._flush_loop]
        if self.role.runs_registry_jobs:
            loops += [self._notify_loop, self._prune_loop]
            if self.webhook is not None:
                loops.append(self.webhook.run)
        for loop in loops:
            self._tasks.append(asyncio.create_task(loop(), name=loop.__name__))

    # -- SIGHUP: settings that change while serving --

    def reconfigure(self, new: Config) -> tuple[list[str], list[str]]:
        """Apply the settings of ``new`` that can change while serving; no connection drops.

        Returns (keys applied, keys that differ but need a restart), as
        ``section.key`` (`merge_live`). The peer allow-list applies to the next
        CER (peers already admitted stay), the Origin-Host check and the policy
        to the next request, the log levels at once.
        """
        merged, applied, restart = merge_live(self.config, new)
        dc = merged.decision_config()  # a ConfigError here leaves everything as it was
        levels = merged.log.logger_levels()
        before = self.config.log.logger_levels()
        self.config = merged
        if self.server is not None:
            self.server.config.admission = Admission(merged.peers.allow_hosts,
                                                     merged.peers.allow_networks)
        if self.s13 is not None:
            self.s13.origin_check = merged.peers.origin_host_check
        if self.guard is not None:
            self.guard.reconfigure(merged.overload.limits(self.role.count))
        logging.getLogger().setLevel(merged.log.level.upper())
        for name in before.keys() - levels.keys():  # no longer set: follows log.level again
            # (but aiosqlite's debug lines carry IMEIs in clear: cli.setup_logging)
            logging.getLogger(name).setLevel(logging.INFO if name == "aiosqlite" else
                                             logging.NOTSET)
        for name, lvl in levels.items():
            logging.getLogger(name).setLevel(lvl)
        if self.regime is not None:
            self.regime.config = dc
            self.regime.set_log_level(logging.getLevelName(merged.log.decisions.upper()))
        return applied, restart

    # -- overload (issue 6; eir.diameter.overload) --

    async def _overload_loop(self) -> None:
        """Tick the admission guard; its lag is how late this loop wakes (the time a
        request waits in the node before it is read)."""
        guard = self.guard
        assert guard is not None
        logged = time.monotonic()
        refused = over = 0
        before = guard.refused
        while True:
            interval = guard.limits.interval
            due = time.monotonic() + interval
            await asyncio.sleep(interval)
            now = time.monotonic()
            was = guard.report.active
            if guard.tick(now, max(0.0, now - due)):
                self._log_report(guard, was)
            if guard.auto_cap is not None or guard.refused != before:
                log.debug("overload tick: lag %.1f ms, demand %.0f/s, capacity %s, measured-load "
                          "limit %s, %d refused", guard.lag * 1000, guard.demand,
                          _rate(guard.capacity), _rate(guard.auto_cap or float("inf")),
                          guard.refused - before)
            refused += guard.refused - before
            over += (guard.refused - before) if guard.overloaded else 0
            if refused and now - logged >= _OVERLOAD_LOG_SECONDS:
                log.warning("overload: %d request(s) refused with %d in the last %.0f s (%d "
                            "while the node was over capacity, the rest over a peer's limit); "
                            "capacity %s, demand %.0f/s, loop lag %.0f ms", refused,
                            guard.limits.answer, now - logged, over, _rate(guard.capacity),
                            guard.demand, guard.lag * 1000)
                refused = over = 0
            if not refused:
                logged = now
            before = guard.refused

    def _log_report(self, guard: Guard, was_active: bool) -> None:
        r = guard.report
        if r.active and not was_active:
            log.warning("overload: demand %.0f/s is over the capacity of %s (loop lag %.0f ms): "
                        "refusing the excess with %d; DOIC peers asked to shed %d%% "
                        "(OC-OLR sequence %d)", guard.demand, _rate(guard.capacity),
                        guard.lag * 1000, guard.limits.answer, r.reduction, r.seq)
        elif r.active:
            log.debug("overload: DOIC reduction now %d%% (sequence %d); demand %.0f/s, capacity %s",
                     r.reduction, r.seq, guard.demand, _rate(guard.capacity))
        elif was_active:
            log.warning("overload over: demand %.0f/s within capacity %s; %d refused so far; "
                        "DOIC peers told the report ended (validity 0, sequence %d)",
                        guard.demand, _rate(guard.capacity), guard.refused, r.seq)

    # -- no registry at all: fail-closed or fail-open (registry.unavailable) --

    def _fallback_words(self) -> str:
        return ("5012 UNABLE_TO_COMPLY (fail-closed)" if self.config.registry.unavailable ==
                "fail-closed" else "WHITELISTED, reason registry_unavailable (fail-open)")

    def _unavailable(self, imei: str, imsi: str | None, sv: str | None,
                     operator: str) -> Decision:
        self.unavailable_answers += 1
        now = time.monotonic()
        if now - self._unavailable_logged >= 60:
            self._unavailable_logged = now
            log.error("registry unavailable for %.0f s: %d ECR answered %s so far",
                      now - (self._unavailable_since or now), self.unavailable_answers,
                      self._fallback_words())
        if self.config.registry.unavailable == "fail-closed":
            raise DecisionUnavailable("registry unavailable: fail-closed")
        return _FAIL_OPEN

    async def _recover_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.registry.reload_seconds)
            try:
                snapshot = await self._load()
            except _UNAVAILABLE as exc:
                log.debug("registry still unavailable: %s", exc)
                continue
            self._use(snapshot)
            self.fresh_at = time.time()
            assert self.regime is not None and self.s13 is not None
            self.s13.decide = self.regime.check
            log.warning("registry available again after %.1f s: %d ECR were answered %s; "
                        "deciding from the registry now",
                        time.monotonic() - (self._unavailable_since or time.monotonic()),
                        self.unavailable_answers, self._fallback_words())
            self._unavailable_since = None
            self._start_loops()
            return

    async def _check_store(self) -> None:
        """Refuse to serve from a damaged registry file (issue 6: fail-safe, never wrong)."""
        how = self.config.registry.integrity_check
        path = self.registry.path
        # Every worker checks (the page cache is shared, so the second read is cheap): a
        # worker must not serve from a file another one refuses.
        if how == "off" or not path.is_file():
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
                    self._fresh()
                    continue
                t0 = time.perf_counter()
                snapshot = await self.registry.load_snapshot(
                    use_file=self.config.registry.snapshot_file,
                    write_file=self.role.runs_registry_jobs)
                self.regime.snapshot = snapshot
                self._fresh()
                log.info("registry changed: snapshot version %d loaded in %.2f s "
                         "(%d entries, %d exception pairs); list versions %s", snapshot.version,
                         time.perf_counter() - t0, snapshot.entry_count,
                         snapshot.exception_count, _versions(snapshot.list_versions))
            except Exception as exc:  # a bad moment of the database must not stop serving
                now = time.monotonic()
                if self.stale_since is None:
                    self.stale_since = now
                    log.exception("registry refresh failed; serving the previous snapshot "
                                  "(version %d)", self.regime.snapshot.version)
                elif now - self._stale_logged >= 60:
                    log.error("registry refresh still failing (%s); the snapshot (version %d) "
                              "is %.0f s stale", exc, self.regime.snapshot.version,
                              now - self.stale_since)
                else:
                    continue
                self._stale_logged = now

    def _fresh(self) -> None:
        self.fresh_at = time.time()
        if self.stale_since is not None:
            log.warning("registry readable again after %.1f s stale",
                        time.monotonic() - self.stale_since)
            self.stale_since = None

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
        started = time.monotonic()
        await regime.cache.flush()
        self.flushed_at = started  # what is still queued came after this instant
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
                self.flush_failures += 1
                log.exception("writing observations failed; they are kept for the next try")
            if self._gc_settle:
                gcpolicy.settle()

    async def _notify_loop(self) -> None:
        assert self.regime is not None
        regime = self.regime
        n = self.config.notifications

        def decide_at(imei14: str, imsi: str | None, at: int) -> Decision:
            return regime.dry_run(imei14, imsi, at=at)[0]

        with contextlib.suppress(Exception):  # the metrics' first figure; the loop logs
            self.notifications_backlog = await notify.backlog(self.registry)
        while True:
            await asyncio.sleep(n.interval_seconds)
            try:
                await self.flush()
                made = await notify.produce_due(self.registry, int(self.clock()), decide_at,
                                                n.offsets_days, n.at_expiry)
                self.notifications_produced += made
                if made:
                    log.info("notifications: %d warning(s) added to the outbox", made)
                    if self.webhook is not None:  # sent now, not at its next poll
                        self.webhook.wake()
                self.notifications_backlog = await notify.backlog(self.registry)
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

    @property
    def workers(self) -> int:
        return self.role.count

    async def metrics_text(self) -> str:
        """This process's metrics page (the admin API's peers read it as `eir status` does)."""
        return (await self.collector.render("text/plain"))[0].decode()

    async def stop(self) -> None:
        try:
            # the HTTP listeners end together: each gives its requests in flight up to
            # eir.http.GRACEFUL_SECONDS, and the DPRs wait for them
            await asyncio.gather(*(http.stop() for http in (self.public, self.admin,
                                                            self.n5g_server)
                                   if http is not None))
            if self.endpoint is not None:
                await self.endpoint.stop()
            if self.webhook is not None:  # the POSTs in flight end and are recorded
                await self.webhook.stop()
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
            log.info("stopped: %d ECR answered (%d fast path), %d refused (overload), "
                     "decisions %s", self.s13.fast + self.s13.slow, self.s13.fast,
                     self.guard.refused if self.guard is not None else 0,
                     {f"{_status_name(s)}/{r}": n for (s, r), n in sorted(
                         self.regime.totals.items(), key=lambda kv: -kv[1])})


def live_key(name: str) -> bool:
    """Whether SIGHUP applies ``section.key`` while serving (else it needs a restart)."""
    return name in _LIVE or (name.startswith("policy.") and name not in _RESTART_POLICY)


def merge_live(old: Config, new: Config) -> tuple[Config, list[str], list[str]]:
    """``old`` with the settings of ``new`` that may change while serving.

    Returns (the merged settings, keys taken from ``new``, keys that differ
    but need a restart and keep their ``old`` value), keys as ``section.key``.
    """
    applied: list[str] = []
    restart: list[str] = []
    sections: dict[str, Any] = {}
    for f in fields(Config):
        before, after = getattr(old, f.name), getattr(new, f.name)
        live: dict[str, Any] = {}
        for key in (k.name for k in fields(before)):
            if getattr(before, key) == getattr(after, key):
                continue
            name = f"{f.name}.{key}"
            if live_key(name):
                live[key] = getattr(after, key)
                applied.append(name)
            else:
                restart.append(name)
        sections[f.name] = replace(before, **live)
    return replace(old, **sections), applied, restart


def apply_reload(app: EirApp, reload: Callable[[], Config]) -> None:
    """SIGHUP: read the settings again and apply what may change; log what happened."""
    try:
        new = reload()
        applied, restart = app.reconfigure(new)
    except ConfigError as exc:
        log.error("SIGHUP: settings not reloaded, the running ones stay: %s", exc)
        return
    log.warning("SIGHUP: settings reloaded; applied: %s%s", ", ".join(applied) or "nothing changed",
                f"; changed but need a restart, not applied: {', '.join(restart)}"
                if restart else "")


def _versions(versions: dict[str, int]) -> str:
    return ", ".join(f"{src} {v}" for src, v in sorted(versions.items())) or "none recorded"


def _rate(value: float) -> str:
    return f"{value:,.0f}/s" if value != float("inf") else "unlimited"


def _status_name(status: int | None) -> str:
    return "UNKNOWN(5422)" if status is None else Status(status).name


def _host_ip(host: str) -> str:
    # a wildcard listen address says nothing about where peers reach us:
    # set server.host_ip_addresses for the CEA in that case
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "localhost": "127.0.0.1", "": "127.0.0.1"
            }.get(host, host)


def _no_rolling_restart(role: Role) -> None:
    if role.count == 1:
        log.warning("SIGUSR2: a rolling restart needs several workers (eir serve --workers N, "
                    "N >= 2); nothing was done")


async def serve(config: Config, role: Role | None = None, *, stop: asyncio.Event | None = None,
                on_ready: Callable[[EirApp], None] | None = None,
                reload: Callable[[], Config] | None = None) -> None:
    """Run until SIGTERM or SIGINT (or ``stop`` is set); then stop in order and return.

    ``on_ready`` is called once the node answers (a worker tells its supervisor).
    With ``reload`` (the config file read again), SIGHUP applies what changed.
    """
    app = EirApp(config, role)
    if stop is None:
        stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, sdnotify.reload_with, apply_reload, app, reload)
    # SIGUSR2 asks the supervisor for a rolling restart (eir.workers); its default action
    # would end the process, so a worker ignores it (a signal to the whole process group)
    # and a single process says that it takes several workers
    loop.add_signal_handler(signal.SIGUSR2, _no_rolling_restart, app.role)
    try:
        await app.start()
    except BaseException:
        await app.stop()  # the registry's thread must not keep the process alive
        raise
    try:
        if on_ready is not None:
            on_ready(app)
        sdnotify.ready(f"serving S13 as {app.config.server.origin_host}, registry "
                       f"{app.config.registry.db}")  # a worker has no NOTIFY_SOCKET (eir.cli)
        await stop.wait()
        sdnotify.stopping()
        log.info("stopping: DPR to %d peer(s)",
                 len(app.server.protocols) if app.server else 0)
    finally:
        await app.stop()
