"""Wiring of a running EIR: registry, snapshot refresh, S13 application, Diameter server.

Owns start-up and the shutdown order (stop accepting, DPR to every peer,
answer what is in flight, close), and keeping the in-memory snapshot in
step with the registry while serving (DESIGN.md 4 and 7): the change log's
version is polled, a changed registry is loaded in the background and the
new snapshot replaces the old one in a single assignment, so no request
is dropped or answered from a half-loaded registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass

from eir.config import Config
from eir.diameter import messages as m
from eir.diameter.constants import Application
from eir.diameter.dictionary import default_dictionary
from eir.diameter.peer import Admission, Timers
from eir.diameter.server import DiameterServer, ServerConfig
from eir.policy.engine import DecisionConfig, decide
from eir.policy.model import Decision, Status
from eir.policy.registry import Snapshot
from eir.policy.sqlite import SqliteRegistry
from eir.s13 import S13Application

log = logging.getLogger("eir")


@dataclass
class SnapshotHolder:
    """The snapshot the hot path reads; replaced whole, never mutated in place."""

    snapshot: Snapshot
    config: DecisionConfig

    def decide(self, imei: str, imsi: str | None, sv: str | None) -> Decision:
        return decide(self.snapshot.facts(imei, imsi, sv), self.config)


class EirApp:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.registry = SqliteRegistry(config.registry.db)
        self.holder: SnapshotHolder | None = None
        self.server: DiameterServer | None = None
        self.s13: S13Application | None = None
        self._refresh_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        c = self.config
        await self.registry.open()
        t0 = time.perf_counter()
        snapshot = await self.registry.load_snapshot()
        log.info("registry %s loaded: version %d, %d entries, %d exception pairs in %.2f s",
                 c.registry.db, snapshot.version, snapshot.entry_count,
                 snapshot.exception_count, time.perf_counter() - t0)
        self.holder = SnapshotHolder(snapshot, DecisionConfig(
            unknown_equipment="reject" if c.policy.unknown_equipment == "reject" else "greylist"))
        host, port = c.server.endpoint()
        ident = m.Identity(c.server.origin_host, c.server.origin_realm,
                           c.server.host_ip_addresses or (_host_ip(host),),
                           product_name=c.server.product_name,
                           origin_state_id=int(time.time()) & 0xFFFFFFFF)
        dictionary = default_dictionary()
        self.s13 = S13Application(ident, dictionary, self.holder.decide,
                                  realms=(c.server.origin_realm, *c.server.realms))
        self.server = DiameterServer(
            ServerConfig(host=host, port=port, ident=ident,
                         admission=Admission(c.peers.allow_hosts, c.peers.allow_networks),
                         timers=Timers(tw=c.server.watchdog_seconds),
                         max_message=c.server.max_message_bytes),
            dictionary, {Application.S13: self.s13.handle})
        await self.server.start()
        self._refresh_task = asyncio.create_task(self._refresh_loop())
        log.info("EIR ready: S13 on %s:%d as %s (realm %s), registry %s", host,
                 self.server.port, c.server.origin_host, c.server.origin_realm, c.registry.db)

    async def _refresh_loop(self) -> None:
        assert self.holder is not None
        while True:
            await asyncio.sleep(self.config.registry.reload_seconds)
            try:
                version = await self.registry.current_version()
                if version == self.holder.snapshot.version:
                    continue
                t0 = time.perf_counter()
                snapshot = await self.registry.load_snapshot()
                self.holder.snapshot = snapshot
                log.info("registry changed: snapshot version %d loaded in %.2f s "
                         "(%d entries, %d exception pairs)", snapshot.version,
                         time.perf_counter() - t0, snapshot.entry_count,
                         snapshot.exception_count)
            except Exception:  # a bad moment of the database must not stop serving
                log.exception("registry refresh failed; serving the previous snapshot")

    async def stop(self) -> None:
        try:
            if self._refresh_task is not None:
                self._refresh_task.cancel()
                with contextlib.suppress(BaseException):
                    await self._refresh_task
            if self.server is not None:
                await self.server.stop()
        finally:
            # the registry's thread would keep the process alive past SIGTERM
            await self.registry.close()
        if self.s13 is not None:
            log.info("stopped: %d ECR answered (%d fast path), decisions %s",
                     self.s13.fast + self.s13.slow, self.s13.fast,
                     {f"{_status_name(s)}/{r}": n for (s, r), n in sorted(
                         self.s13.counts.items(), key=lambda kv: -kv[1])})


def _status_name(status: int | None) -> str:
    return "UNKNOWN(5422)" if status is None else Status(status).name


def _host_ip(host: str) -> str:
    # a wildcard listen address says nothing about where peers reach us:
    # set server.host_ip_addresses for the CEA in that case
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "localhost": "127.0.0.1", "": "127.0.0.1"
            }.get(host, host)


async def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT; then stop in order and return."""
    app = EirApp(config)
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
        await stop.wait()
        log.info("stopping: DPR to %d peer(s)",
                 len(app.server.protocols) if app.server else 0)
    finally:
        await app.stop()
