"""Prometheus metrics of a running EIR: what is read at scrape time and how it is served.

Owns the metric names (README "Metrics" lists them), the collector that
builds them from the counters the node keeps anyway, the HTTP endpoint
(``GET /metrics``) and the transfer of one worker's metrics to its
supervisor (``eir serve --workers N``).

Nothing here runs per request. The hot path only increments the plain ints
it always did (the S13 fast and general path counts, the regime's decision
counts, the overload guard's counts, the peer machine's message count per
read) and one sampled read in ``metrics.latency_sample`` is timed
(`eir.diameter.latency`); `NodeCollector` reads all of them when Prometheus
asks, on the event loop (the endpoint is an asyncio server of the node's
own loop, so a scrape sees a consistent state and needs no lock).

With several workers (`eir.workers`) the supervisor owns the port: on each
scrape it asks every worker over its lifeline pipe (a ``{"scrape": N}``
line on the worker's stdin, the answer one ``metrics JSON`` line on its
control pipe), adds a ``worker`` label to each sample and serves them all
with its own ``eir_workers`` and ``eir_worker_*``. Counters are never summed
across workers here: each worker's series is a counter of its own, which
resets when that worker restarts, as Prometheus' ``rate()`` expects; the
dashboard and the alert rules aggregate with ``sum``/``max``. Prometheus'
multiprocess mode (one mmap file per process) was not used: it only sees
metric objects that are updated where things happen, which would put a
lock and an mmap write on every request, and it cannot run collectors.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import json
import logging
import termios
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import exposition
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from eir import __version__, webhook
from eir.diameter.constants import Command, ResultCode
from eir.diameter.peer import State
from eir.policy import import_progress

if TYPE_CHECKING:
    from eir.app import EirApp

log = logging.getLogger("eir.metrics")

# command codes (RFC 6733 3.1, TS 29.272 7.2.19) as the metrics name them
COMMANDS = {int(Command.ME_IDENTITY_CHECK): "ECR", int(Command.CAPABILITIES_EXCHANGE): "CER",
            int(Command.DEVICE_WATCHDOG): "DWR", int(Command.DISCONNECT_PEER): "DPR"}
STATUSES = {0: "WHITELISTED", 1: "BLACKLISTED", 2: "GREYLISTED", None: "UNKNOWN"}
PEER_STATES = {s: s.name.lower() for s in State}  # wait_cer, wait_cea, open, closing, closed
# decision reasons are list entries' reasons too (free text a ministry chooses): past this
# many distinct ones, the rarest are reported as "other"
MAX_REASONS = 200
_EQUIPMENT_UNKNOWN = 5422  # Experimental-Result-Code, TS 29.272 7.4.3
_SUCCESS = int(ResultCode.SUCCESS)
RETRY_SECONDS = 10.0  # a port that is taken: bind again this often


def command_name(code: int) -> str:
    return COMMANDS.get(code, "other")


class NodeCollector(Collector):
    """The metrics of one node (one process), read from its `EirApp` at scrape time."""

    def __init__(self, app: EirApp) -> None:
        self.app = app
        # refusals: the overload guard counts them, whichever answer (3004 or 5012) is
        # configured; each scrape gives the new ones the answer configured now
        self._refused_seen = 0
        self._refused: Counter[int] = Counter()
        # per-list counts of the snapshot served, keyed by (id, version, size): a reference
        # would keep an old snapshot's arrays alive until the next scrape
        self._counts: tuple[tuple[int, int, int], dict[str, int]] | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self.registry.register(ProcessCollector(registry=None))

    async def render(self, accept: str) -> tuple[bytes, str]:
        encoder, content_type = exposition.choose_encoder(accept)
        return encoder(self.registry), content_type

    def collect(self) -> Iterator[Metric]:
        app = self.app
        now = time.time()
        info = GaugeMetricFamily("eir_build_info", "The EIR's version and identity (always 1)",
                                 labels=["version", "origin_host", "origin_realm"])
        info.add_metric([__version__, app.config.server.origin_host,
                         app.config.server.origin_realm], 1)
        yield info
        yield from self._traffic()
        yield from self._overload()
        yield from self._peers(now)
        yield from self._registry(now)
        yield from self._imports()
        yield from self._observations()
        if app.n5g is not None:
            n5g = CounterMetricFamily(
                "eir_n5g_requests", "N5g-eir requests (TS 29.511) by HTTP status and result: "
                "the EquipmentStatus of a 200, else the ProblemDetails cause or the RFC 6750 "
                "error ('-': none)", labels=["status", "result"])
            for (code, result), n in sorted(app.n5g.counts.items()):
                n5g.add_metric([str(code), result], n)
            yield n5g
        if app.public_check is not None:
            checks = CounterMetricFamily(
                "eir_public_checks", "Public IMEI check requests by outcome: the answer's "
                "public status, typo (a bad IMEI: no lookup), limited_client or limited_node "
                "(429), unavailable (503)", labels=["outcome"])
            for outcome, n in sorted(app.public_check.counts.items()):
                checks.add_metric([outcome], n)
            yield checks

    # -- requests, answers, decisions, latency --

    def _traffic(self) -> Iterator[Metric]:
        app = self.app
        s13, guard, server = app.s13, app.guard, app.server
        if s13 is None or guard is None or server is None:
            return
        requests: Counter[str] = Counter()
        answers: Counter[tuple[str, str]] = Counter()
        decisions: Counter[tuple[str, str]] = Counter()
        requests["ECR"] = s13.fast + s13.slow + guard.refused
        for code, n in server.stats.requests.items():
            requests[command_name(code)] += n
        for (code, result), n in server.stats.answers.items():
            answers[(command_name(code), str(result))] += n
        for (code, result), n in s13.errors.items():
            answers[(command_name(code), str(result))] += n
        if guard.refused != self._refused_seen:
            self._refused[guard.limits.answer] += guard.refused - self._refused_seen
            self._refused_seen = guard.refused
        for result, n in self._refused.items():
            answers[("ECR", str(result))] += n
        regime = app.regime
        if regime is not None:
            by: Counter[tuple[int | None, str]] = Counter(regime.totals)
            for (_op, status, reason), n in list(regime.counts.items()):
                by[(status, reason)] += n
            for (status, reason), n in _capped(by):
                decisions[(STATUSES[status], reason)] += n
        if app.unavailable_answers and app.config.registry.unavailable == "fail-open":
            # fail-closed answers are 5012 errors, counted by the S13 application
            decisions[("WHITELISTED", "registry_unavailable")] += app.unavailable_answers
        for (named, _reason), n in decisions.items():
            answers[("ECR", str(_EQUIPMENT_UNKNOWN if named == "UNKNOWN" else _SUCCESS))] += n
        if app.n5g is not None:  # decided alike, but answered over N5g (eir_n5g_requests)
            for status, n in app.n5g.decided.items():
                answers[("ECR", str(_SUCCESS if status is not None else _EQUIPMENT_UNKNOWN))] -= n
        req = CounterMetricFamily(
            "eir_diameter_requests", "Diameter requests received, by command: ECR (S13 "
            "application requests: ME-Identity-Check), CER, DWR, DPR or other",
            labels=["command"])
        for name in ("ECR", "CER", "DWR", "DPR"):
            requests.setdefault(name, 0)
        for name, n in sorted(requests.items()):
            req.add_metric([name], n)
        yield req
        ans = CounterMetricFamily(
            "eir_diameter_answers", "Diameter answers sent, by the request's command and the "
            "Result-Code (5422: Experimental-Result ERROR_EQUIPMENT_UNKNOWN)",
            labels=["command", "result_code"])
        answers.setdefault(("ECR", str(_SUCCESS)), 0)
        for (name, code_text), n in sorted(answers.items()):
            ans.add_metric([name, code_text], n)
        yield ans
        dec = CounterMetricFamily(
            "eir_decisions", "Decisions (S13 ECRs and N5g checks) by Equipment-Status "
            "(UNKNOWN: answered 5422 or 404) and reason", labels=["status", "reason"])
        for (named, why), n in sorted(decisions.items()):
            dec.add_metric([named, why], n)
        yield dec
        path = CounterMetricFamily("eir_s13_requests", "S13 requests by the path that answered "
                                   "them: fast (the usual shape) or general (codec and "
                                   "dictionary)", labels=["path"])
        path.add_metric(["fast"], s13.fast)
        path.add_metric(["general"], s13.slow)
        yield path
        yield _counter("eir_origin_host_mismatches", "Requests with no Route-Record whose "
                       "Origin-Host was not their connection's peer", s13.origin_mismatches)
        sampler = server.sampler
        if sampler is not None:
            hist = HistogramMetricFamily(
                "eir_request_duration_seconds", "Time a request spends in the EIR, from the "
                f"read that completed it to the write of its answer, sampled: one read in "
                f"{sampler.every} is timed and counts once per request it completed",
                buckets=[(_le(b), n) for b, n in sampler.cumulative()],
                sum_value=sampler.total)
            yield hist

    def _overload(self) -> Iterator[Metric]:
        guard = self.app.guard
        if guard is None:
            return
        yield _counter("eir_overload_refused", "Requests refused by the overload guard "
                       "(3004 or 5012)", guard.refused)
        yield _counter("eir_overload_refused_over_capacity", "Requests refused while the "
                       "demand exceeded the node's capacity (the rest: over a peer's limit)",
                       guard.refused_over_capacity)
        yield _gauge("eir_overload_active", "1 while the node is over capacity and sends "
                     "DOIC overload reports", 1 if guard.report.active else 0)
        yield _gauge("eir_overload_capacity_requests_per_second", "Requests/s the node "
                     "admits now (+Inf: no limit)", guard.capacity)
        yield _gauge("eir_overload_demand_requests_per_second", "Requests/s arriving from "
                     "all peers, smoothed", guard.demand)
        yield _gauge("eir_overload_doic_reduction_percent", "The reduction DOIC peers are "
                     "asked for (RFC 7683), 0 when none",
                     guard.report.reduction if guard.report.active else 0)
        yield _gauge("eir_event_loop_lag_seconds", "How late the event loop ran at the last "
                     "0.1 s tick: how long a request waits in its socket before it is read",
                     guard.lag)

    # -- peers and what is in flight --

    def _peers(self, now: float) -> Iterator[Metric]:
        app = self.app
        server = app.server
        if server is None:
            return
        mc = app.config.metrics
        server.forget_peers(now - mc.forget_peers_seconds)
        up = GaugeMetricFamily("eir_peer_up", "1 while the peer (Origin-Host, lower case) has "
                               "an open connection; 0 for a peer whose last connection ended "
                               "without a DPR, or one listed in metrics.expected_peers that "
                               "is not connected (a peer that said goodbye is not listed)",
                               labels=["peer"])
        peers: dict[str, int] = {h.lower(): 0 for h in mc.expected_peers}
        failed = server.peers.failed
        peers.update((k, 0) for k in server.last_closed if k in failed)
        peers.update(dict.fromkeys(server.peers.connected, 1))
        for peer, value in sorted(peers.items()):
            up.add_metric([peer], value)
        yield up
        states = dict.fromkeys(PEER_STATES.values(), 0)
        messages = dict(server.peer_messages)
        unread = unsent = paused = 0
        for proto in list(server.protocols):
            conn = proto.conn
            if conn is None:
                continue
            states[PEER_STATES[conn.state]] += 1
            if conn.peer_host is not None:
                key = conn.peer_host.lower()
                messages[key] = messages.get(key, 0) + conn.received
            unread += conn.framer.pending
            t = proto.transport
            if t is None or t.is_closing():
                continue
            unsent += t.get_write_buffer_size()
            unread += _unread(t)
            if not t.is_reading():
                paused += 1
        conns = GaugeMetricFamily("eir_peer_connections", "Connections by RFC 6733 5.6 "
                                  "peer state", labels=["state"])
        for state, n in states.items():
            conns.add_metric([state], n)
        yield conns
        received = CounterMetricFamily("eir_peer_messages_received", "Diameter messages "
                                       "received from each peer (all commands)",
                                       labels=["peer"])
        for peer, n in sorted(messages.items()):
            received.add_metric([peer], n)
        yield received
        yield _counter("eir_peers_denied", "CERs refused with 3010 by peers.allow_hosts / "
                       "allow_networks", server.denied)
        tls = CounterMetricFamily("eir_tls_handshakes", "TLS handshakes on the TLS port",
                                  labels=["result"])
        tls.add_metric(["ok"], server.tls_sessions)
        tls.add_metric(["failed"], server.tls_failures)
        yield tls
        yield _gauge("eir_request_backlog_bytes", "Request bytes in flight towards the EIR: "
                     "received by the kernel and not yet read, or read and not yet a whole "
                     "message, over every peer connection", unread)
        yield _gauge("eir_answer_backlog_bytes", "Answer bytes in flight from the EIR: "
                     "written and not yet taken by the kernel (peers that do not read), "
                     "over every peer connection", unsent)
        yield _gauge("eir_peer_connections_paused", "Connections whose reading is paused "
                     "because the peer does not read its answers", paused)

    # -- the registry and the snapshot served --

    def _registry(self, now: float) -> Iterator[Metric]:
        app = self.app
        mode = app.config.registry.unavailable
        unavailable = GaugeMetricFamily(
            "eir_registry_unavailable", "1 while ECRs are answered without a registry "
            "(registry.unavailable: fail-open answers WHITELISTED, fail-closed 5012)",
            labels=["mode"])
        unavailable.add_metric([mode], 1 if app.regime is None and app.s13 is not None else 0)
        yield unavailable
        yield _counter("eir_registry_unavailable_answers", "ECRs answered without a "
                       "registry (fail-open or fail-closed)", app.unavailable_answers)
        stale = time.monotonic() - app.stale_since if app.stale_since is not None else 0.0
        yield _gauge("eir_registry_stale_seconds", "How long refreshes of the snapshot have "
                     "been failing (0: the last one worked)", stale)
        if app.fresh_at is not None:
            yield _gauge("eir_registry_last_refresh_timestamp_seconds", "When the snapshot "
                         "served was last known to be the registry's current version (Unix "
                         "time; checked every registry.reload_seconds)", app.fresh_at)
        regime = app.regime
        if regime is None:
            return
        snap = regime.snapshot
        yield _gauge("eir_registry_version", "Change-log version of the snapshot served",
                     snap.version)
        key = (id(snap), snap.version, snap.entry_count)
        if self._counts is None or self._counts[0] != key:
            self._counts = (key, snap.counts())
        entries = GaugeMetricFamily("eir_registry_entries", "IMEIs on each list in the "
                                    "snapshot served", labels=["list"])
        for name, n in sorted(self._counts[1].items()):
            entries.add_metric([name], n)
        yield entries
        yield _gauge("eir_registry_exception_pairs", "Exception (IMEI, IMSI) pairs in the "
                     "snapshot served", snap.exception_count)
        yield _gauge("eir_registry_ranges", "IMEI ranges in the snapshot served",
                     len(snap.ranges or ()))
        yield _gauge("eir_registry_tacs", "TACs in the snapshot's TAC database",
                     len(snap.tac))
        lists = GaugeMetricFamily("eir_list_version", "The list version of each publisher's "
                                  "list in the snapshot served", labels=["source"])
        for source, version in sorted(snap.list_versions.items()):
            lists.add_metric([source], version)
        yield lists

    def _imports(self) -> Iterator[Metric]:
        state = import_progress.read(self.app.config.registry.db)
        running = state is not None and state.state == "running"
        yield _gauge("eir_import_running", "1 while an import into the registry runs "
                     "(eir registry import, eir package apply)", 1 if running else 0)
        if state is None:
            return
        yield _gauge("eir_import_rows", "Rows written by the running import, or by the last "
                     "one", state.rows)
        yield _gauge("eir_import_started_timestamp_seconds", "When the running or last "
                     "import started (Unix time)", state.started)
        yield _gauge("eir_import_updated_timestamp_seconds", "When the running or last "
                     "import last reported progress (Unix time)", state.updated)
        ended = state.last_ended()
        if ended is not None:
            how, _rows, finished = ended
            yield _gauge("eir_import_last_failed", "1 if the last import that ended failed "
                         "(nothing of it was written), 0 if it was committed",
                         1 if how == "failed" else 0)
            if finished is not None:
                yield _gauge("eir_import_last_finished_timestamp_seconds", "When the last "
                             "import that ended ended (Unix time)", finished)

    # -- observations and notifications --

    def _observations(self) -> Iterator[Metric]:
        app = self.app
        regime = app.regime
        if regime is None:
            return
        cache = regime.cache
        pending = cache.pending
        yield _gauge("eir_observations_pending_rows", "Sightings queued in memory, not yet "
                     "written to the registry", pending)
        yield _gauge("eir_observations_buffer_lag_seconds", "Age bound of the oldest queued "
                     "sighting: time since the last write of the buffer began (0 when "
                     "nothing is queued); a crash loses at most this much",
                     time.monotonic() - app.flushed_at if pending else 0.0)
        yield _counter("eir_observations_written", "Sightings written to the registry",
                       cache.written)
        yield _counter("eir_observations_flush_failures", "Writes of the observation buffer "
                       "that failed (kept for the next try)", app.flush_failures)
        yield _gauge("eir_observation_cache_imeis", "IMEIs whose history is held in memory",
                     len(cache))
        yield _counter("eir_observation_cache_misses", "Histories read from the registry "
                       "(not in memory, or older than observations.cache_ttl_seconds)",
                       cache.misses)
        if not app.role.runs_registry_jobs:
            return
        yield _counter("eir_notifications_produced", "Warnings to owners of grey devices "
                       "added to the outbox", app.notifications_produced)
        if app.notifications_backlog is not None:
            count, oldest = app.notifications_backlog
            yield _gauge("eir_notifications_pending", "Outbox warnings not yet marked sent "
                         "(eir notify ack), as of the last notifications.interval_seconds",
                         count)
            if oldest is not None:
                yield _gauge("eir_notifications_oldest_pending_timestamp_seconds", "When the "
                             "oldest warning not yet sent was created (Unix time)", oldest)
        yield from self._delivery()

    def _delivery(self) -> Iterator[Metric]:
        """The webhook sender's counts (`eir.webhook`); zeros when ``[webhook]`` is off, so
        that the dashboard and the alerts find every series."""
        sender = self.app.webhook
        stats = sender.stats if sender is not None else webhook.Stats()
        yield _gauge("eir_notification_webhook_enabled", "1 if this process delivers the "
                     "outbox to [webhook].url", 1 if sender is not None else 0)
        yield _counter("eir_notification_delivery_attempts", "POSTs of a warning to the "
                       "webhook started", stats.attempts)
        yield _counter("eir_notifications_delivered", "Warnings the webhook accepted (2xx) "
                       "and marked sent", stats.delivered)
        failures = CounterMetricFamily(
            "eir_notification_delivery_failures", "Webhook attempts that did not deliver, by "
            "reason: timeout, connection, http_408, http_429, http_5xx (tried again), "
            "http_4xx, http_other (failed at once)", labels=["reason"])
        for reason in webhook.REASONS:
            failures.add_metric([reason], stats.failures.get(reason, 0))
        yield failures
        yield _counter("eir_notifications_failed", "Warnings given up on by this process "
                       "(marked failed: eir notify retry sends them again)", stats.given_up)
        if stats.failed_rows is not None:
            yield _gauge("eir_notifications_failed_pending", "Outbox warnings marked failed "
                         "and not sent, as of the sender's last round", stats.failed_rows)
        if stats.retrying_rows is not None:
            yield _gauge("eir_notifications_retrying", "Outbox warnings still to send that "
                         "failed at least once, as of the sender's last round",
                         stats.retrying_rows)
        yield HistogramMetricFamily(
            "eir_notification_delivery_duration_seconds", "Time from the start of a POST to "
            "the webhook to its answer or error",
            buckets=[(_le(b), n) for b, n in stats.latency.cumulative()],
            sum_value=stats.latency.total)


def _capped(by: Counter[tuple[int | None, str]]) -> Iterable[tuple[tuple[int | None, str], int]]:
    """The counts, the rarest reasons past `MAX_REASONS` summed as reason "other"."""
    if len(by) <= MAX_REASONS:
        return by.items()
    kept = by.most_common(MAX_REASONS)
    other: Counter[tuple[int | None, str]] = Counter()
    for (status, _reason), n in by.items():
        other[(status, "other")] += n
    for key, n in kept:
        other[(key[0], "other")] -= n
    return [*kept, *((k, n) for k, n in other.items() if n)]


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _le(bound: float) -> str:
    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]


def _unread(transport: Any) -> int:
    """Bytes the kernel holds for us to read on this connection (FIONREAD), 0 if unknown."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    buf = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, buf, True)
    except (OSError, ValueError):
        return 0
    return int(buf[0])


# -- one worker's metrics, sent to its supervisor ------------------------------------------


def to_json(registry: Collector) -> str:
    """A registry's (or collector's) metrics as one JSON line (no newline inside)."""
    out = [[m.name, m.type, m.documentation, m.unit,
            [[s.name, s.labels, s.value] for s in m.samples]] for m in registry.collect()]
    return json.dumps(out, separators=(",", ":"))


def from_json(text: str, labels: dict[str, str]) -> list[Metric]:
    """Metrics sent by `to_json`, with ``labels`` added to every sample."""
    out = []
    for name, typ, doc, unit, samples in json.loads(text):
        metric = Metric(name, doc, typ, unit)
        for sname, slabels, value in samples:
            metric.add_sample(sname, {**slabels, **labels}, float(value))
        out.append(metric)
    return out


class WorkerCollector(Collector):
    """The supervisor's collector: every worker's metrics, labelled ``worker``, and its own.

    ``ask(index)`` returns the worker's metrics line (None: it did not answer in time);
    ``starts(index)`` how often that worker was started.
    """

    def __init__(self, count: int, ask: Callable[[int], Awaitable[str | None]],
                 starts: Callable[[int], int], timeout: float = 2.0) -> None:
        self.count = count
        self.ask = ask
        self.starts = starts
        self.timeout = timeout
        self._last: list[list[Metric] | None] = [None] * count
        self._process = ProcessCollector(registry=None)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    async def render(self, accept: str) -> tuple[bytes, str]:
        answers = await asyncio.gather(*(self._one(i) for i in range(self.count)))
        self._last = list(answers)
        encoder, content_type = exposition.choose_encoder(accept)
        return encoder(self.registry), content_type

    async def _one(self, index: int) -> list[Metric] | None:
        try:
            line = await asyncio.wait_for(self.ask(index), self.timeout)
        except (TimeoutError, ConnectionError, RuntimeError):
            return None
        if line is None:
            return None
        try:
            return from_json(line, {"worker": str(index)})
        except (ValueError, TypeError) as exc:
            log.warning("worker %d sent metrics that do not read: %s", index, exc)
            return None

    def collect(self) -> Iterator[Metric]:
        yield _gauge("eir_workers", "Worker processes configured (server.workers)",
                     self.count)
        up = GaugeMetricFamily("eir_worker_up", "1 if the worker answered this scrape",
                               labels=["worker"])
        starts = CounterMetricFamily("eir_worker_starts", "Times the worker was started "
                                     "(1 + restarts)", labels=["worker"])
        for i, got in enumerate(self._last):
            up.add_metric([str(i)], 0 if got is None else 1)
            starts.add_metric([str(i)], self.starts(i))
        yield up
        yield starts
        # one family per name, whichever workers have it (the exposition wants each name
        # once); the supervisor's own process metrics as worker "supervisor"
        mine = from_json(to_json(self._process), {"worker": "supervisor"})
        merged: dict[str, Metric] = {}
        for got in (*self._last, mine):
            for metric in got or ():
                have = merged.get(metric.name)
                if have is None:
                    merged[metric.name] = metric
                else:
                    have.samples.extend(metric.samples)
        yield from merged.values()


# -- the HTTP endpoint -----------------------------------------------------------------


Render = Callable[[str], Awaitable[tuple[bytes, str]]]


class Endpoint:
    """``GET /metrics`` on the node's own event loop (HTTP/1.1, one request a connection).

    A port that is taken (the previous instance still stopping, another node
    on the same host) does not stop the EIR: a warning is logged and the
    bind retried every `RETRY_SECONDS`; S13 is served meanwhile.
    """

    def __init__(self, address: tuple[str, int], render: Render,
                 retry_seconds: float = RETRY_SECONDS) -> None:
        self.host, self.port = address
        self.render = render
        self.retry_seconds = retry_seconds
        self._server: asyncio.Server | None = None
        self._retry: asyncio.Task[None] | None = None

    @property
    def serving(self) -> bool:
        return self._server is not None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    async def start(self) -> None:
        if not await self._bind():
            self._retry = asyncio.create_task(self._keep_trying(), name="metrics-bind")

    async def _bind(self, quiet: bool = False) -> bool:
        try:
            self._server = await asyncio.start_server(self._handle, self.host, self.port,
                                                      reuse_address=True)
        except OSError as exc:
            if not quiet:
                log.warning("metrics: cannot listen on %s:%d (%s); serving S13 without "
                            "metrics, retrying every %.0f s", self.host, self.port,
                            exc.strerror or exc, self.retry_seconds)
            return False
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("metrics on %s", self.url)
        return True

    async def _keep_trying(self) -> None:
        while True:
            await asyncio.sleep(self.retry_seconds)
            if await self._bind(quiet=True):
                return

    async def stop(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(BaseException):
                await self._retry
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
            status, body, ctype = await self._respond(head)
            writer.write(b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n" % (status, ctype.encode(), len(body))
                         + body)
            await asyncio.wait_for(writer.drain(), 10.0)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError):
            pass
        except Exception:  # a scrape must never take the node down
            log.exception("metrics: a scrape failed")
        finally:
            writer.close()

    async def _respond(self, head: bytes) -> tuple[bytes, bytes, str]:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            return b"400 Bad Request", b"bad request\n", "text/plain"
        method, target, _ = parts
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines[1:] if line)}
        if method not in ("GET", "HEAD"):
            return b"405 Method Not Allowed", b"GET only\n", "text/plain"
        path = target.split("?", 1)[0]
        if path == "/metrics":
            body, ctype = await self.render(headers.get("accept", ""))
            return b"200 OK", body if method == "GET" else b"", ctype
        if path == "/":
            return b"200 OK", b"eir: metrics at /metrics\n", "text/plain; charset=utf-8"
        return b"404 Not Found", b"not found: try /metrics\n", "text/plain"


def default_url(listen: str) -> str:
    """The metrics URL of a node whose ``metrics.listen`` is ``listen``."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/metrics"


__all__ = ["Endpoint", "NodeCollector", "WorkerCollector", "default_url", "from_json",
           "to_json"]
