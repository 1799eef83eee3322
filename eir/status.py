"""``eir status``: one screen on a running EIR, from its metrics endpoint.

Owns the reading of ``GET /metrics`` (`eir.metrics`) as a person wants it:
two scrapes ``interval`` seconds apart give the rates (ECR/s, answers by
Result-Code, decisions by status, each peer's messages/s); the second
scrape gives the rest (peers, list and registry versions, imports,
backlogs). With several workers the series of every worker are summed
(counters, queues) or their worst taken (lag, staleness). Nothing
answering is one line: ``eir: status: nothing answers at URL (why)``.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from prometheus_client.parser import text_string_to_metric_families

Labels = dict[str, str]
OK_CODES = ("2001", "5422")  # an answer with a status, or "unknown equipment": not errors


class StatusError(Exception):
    """Nothing usable answered at the URL; the message is the one line to print."""


@dataclass
class Scrape:
    at: float
    samples: dict[str, list[tuple[Labels, float]]]

    def get(self, name: str, **match: str) -> list[tuple[Labels, float]]:
        return [(labels, v) for labels, v in self.samples.get(name, ())
                if all(labels.get(k) == want for k, want in match.items())]

    def total(self, name: str, **match: str) -> float:
        return sum(v for _, v in self.get(name, **match))

    def worst(self, name: str, **match: str) -> float | None:
        values = [v for _, v in self.get(name, **match)]
        return max(values) if values else None

    def by(self, name: str, label: str, **match: str) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for labels, v in self.get(name, **match):
            out[labels.get(label, "")] += v
        return dict(out)


def scrape(url: str, timeout: float = 5.0) -> Scrape:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            text = resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        raise StatusError(f"{url} answered HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        why = getattr(exc, "reason", None) or exc
        raise StatusError(f"nothing answers at {url} ({why})") from None
    return parse(text, url)


def parse(text: str, where: str) -> Scrape:
    """A metrics page (the text exposition format) as a `Scrape`; ``where`` for errors."""
    samples: dict[str, list[tuple[Labels, float]]] = defaultdict(list)
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[s.name].append((dict(s.labels), float(s.value)))
    except ValueError as exc:
        raise StatusError(f"{where} did not answer with Prometheus metrics ({exc})") from None
    if "eir_build_info" not in samples:
        raise StatusError(f"{where} answered, but not with an EIR's metrics")
    return Scrape(time.monotonic(), dict(samples))


def peers(b: Scrape) -> dict[str, bool]:
    """Each peer (Origin-Host, lower case) the node reports, and whether it is connected
    (in any worker)."""
    up_by: dict[str, bool] = {}
    for labels, v in b.get("eir_peer_up"):
        peer = labels.get("peer", "")
        up_by[peer] = up_by.get(peer, False) or bool(v)
    return up_by


def status(url: str, interval: float = 1.0,
           sleep: Callable[[float], None] = time.sleep) -> str:
    """The screen: two scrapes ``interval`` apart."""
    first = scrape(url)
    sleep(interval)
    second = scrape(url)
    return render(url, first, second)


def render(url: str, a: Scrape, b: Scrape) -> str:
    dt = max(b.at - a.at, 1e-6)

    def rate(name: str, **match: str) -> float:
        return max(b.total(name, **match) - a.total(name, **match), 0.0) / dt

    def rates(name: str, label: str, **match: str) -> dict[str, float]:
        before = a.by(name, label, **match)
        return {k: max(v - before.get(k, 0.0), 0.0) / dt
                for k, v in b.by(name, label, **match).items()}

    lines: list[str] = []
    info = b.get("eir_build_info")
    ident = info[0][0] if info else {}
    workers = b.get("eir_worker_up")
    head = (f"eir {ident.get('version', '?')}: {ident.get('origin_host', '?')} "
            f"(realm {ident.get('origin_realm', '?')}) at {url}")
    if workers:
        up = sum(1 for _, v in workers if v)
        head += f"; {up} of {len(workers)} workers answered"
    lines.append(head)

    # traffic
    ecr = rate("eir_diameter_requests_total", command="ECR")
    codes = rates("eir_diameter_answers_total", "result_code", command="ECR")
    errors = sum(v for k, v in codes.items() if k not in OK_CODES)
    answered = sum(codes.values())
    share = f" ({100 * errors / answered:.2f}%)" if answered else ""
    by_code = "  ".join(f"{k} {_r(v)}" for k, v in sorted(codes.items()) if v) or "none"
    lines.append(f"ECR        {_r(ecr)}/s; answers/s: {by_code}; errors {_r(errors)}/s{share}")
    decisions = rates("eir_decisions_total", "status")
    lines.append("decisions  " + ("  ".join(f"{k} {_r(v)}/s" for k, v in
                                            sorted(decisions.items(), key=lambda kv: -kv[1])
                                            if v) or "none"))
    lines.append("latency    " + _latency(a, b) + _overload(b))

    # the registry served
    versions = sorted({int(v) for _, v in b.get("eir_registry_version")})
    if not versions:
        lines.append("registry   NOT LOADED" + _unavailable(b))
    else:
        version = str(versions[0]) if len(versions) == 1 else \
            f"{versions[0]}-{versions[-1]} (workers differ)"
        entries = b.by("eir_registry_entries", "list")
        n_workers = max(len(workers), 1)
        sizes = ", ".join(f"{k} {int(v / n_workers):,}" for k, v in sorted(entries.items()))
        stale = b.worst("eir_registry_stale_seconds") or 0.0
        fresh = min((v for _, v in b.get("eir_registry_last_refresh_timestamp_seconds")),
                    default=None)
        when = f"STALE for {stale:.0f} s" if stale else \
            f"checked {max(time.time() - fresh, 0):.0f} s ago" if fresh else "not checked"
        pairs = int(b.worst("eir_registry_exception_pairs") or 0)
        lines.append(f"registry   version {version} ({when}); {sizes}; {pairs:,} exception "
                     "pairs" + _unavailable(b))
        lists: dict[str, float] = {}
        for labels, v in b.get("eir_list_version"):
            src = labels.get("source", "")
            lists[src] = max(lists.get(src, v), v)
        lines.append("lists      " + (", ".join(f"{src} version {int(v)}"
                                               for src, v in sorted(lists.items()))
                                      or "no list versions recorded"))
    lines.append("import     " + _import(b))
    pending = int(b.total("eir_observations_pending_rows"))
    lag = b.worst("eir_observations_buffer_lag_seconds") or 0.0
    notes = b.get("eir_notifications_pending")
    note = f"{int(sum(v for _, v in notes)):,} warning(s) not sent" if notes else "not counted"
    oldest = min((v for _, v in b.get("eir_notifications_oldest_pending_timestamp_seconds")),
                 default=None)
    if oldest is not None:
        note += f", the oldest from {_when(oldest)}"
    if b.worst("eir_notification_webhook_enabled"):
        failed = int(b.total("eir_notifications_failed_pending"))
        note += (f"; webhook {_r(rate('eir_notifications_delivered_total'))} delivered/s, "
                 f"{_r(rate('eir_notification_delivery_failures_total'))} failed attempts/s"
                 + (f", {failed:,} FAILED (eir notify list --failed)" if failed else ""))
    lines.append(f"queues     {pending:,} sighting(s) to write (oldest < {lag:.1f} s); "
                 f"notifications: {note}")

    # peers
    up_by = peers(b)
    msg_rates = rates("eir_peer_messages_received_total", "peer")
    n_open = sum(1 for v in up_by.values() if v)
    states = b.by("eir_peer_connections", "state")
    conns = ", ".join(f"{k} {int(v)}" for k, v in states.items() if v) or "none"
    lines.append(f"peers      {n_open} open, {len(up_by) - n_open} down; connections: {conns}")
    for peer, v in sorted(up_by.items(), key=lambda kv: (kv[1], kv[0])):
        mark = "open" if v else "DOWN"
        extra = f"{_r(msg_rates.get(peer, 0.0))} msg/s" if v else ""
        lines.append(f"  {peer:<40} {mark:<5} {extra}".rstrip())
    return "\n".join(lines)


def _r(v: float) -> str:
    return f"{v:,.1f}" if v < 100 else f"{v:,.0f}"


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def _latency(a: Scrape, b: Scrape) -> str:
    name = "eir_request_duration_seconds_bucket"
    after = b.by(name, "le")
    if not after:
        return "not measured (metrics.latency_sample = 0)"
    before = a.by(name, "le")
    delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
    which = "in the last interval"
    if delta.get("+Inf", 0.0) <= 0:
        delta, which = after, "since start"
    total = delta.get("+Inf", 0.0)
    if total <= 0:
        return "no request timed yet"
    cumulative = sorted((float(k), v) for k, v in delta.items())
    parts = []
    for q in (0.5, 0.99):
        bound = next(le for le, n in cumulative if n >= q * total)
        parts.append(f"p{int(q * 100)} <= {_duration(bound)}")
    return f"{', '.join(parts)} ({which}; sampled, in the EIR)"


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "more than 1 s"
    return f"{seconds * 1e6:.0f} µs" if seconds < 0.001 else f"{seconds * 1000:g} ms"


def _overload(b: Scrape) -> str:
    lag = b.worst("eir_event_loop_lag_seconds")
    active = b.worst("eir_overload_active")
    out = f"; loop lag {lag * 1000:.1f} ms" if lag is not None else ""
    return out + ("; OVERLOADED (refusing the excess)" if active else "")


def _unavailable(b: Scrape) -> str:
    for labels, v in b.get("eir_registry_unavailable"):
        if v:
            return f"; REGISTRY UNAVAILABLE: answering {labels.get('mode', '?')}"
    return ""


def _import(b: Scrape) -> str:
    if b.worst("eir_import_running"):
        rows = int(b.worst("eir_import_rows") or 0)
        started = b.worst("eir_import_started_timestamp_seconds") or time.time()
        took = max(time.time() - started, 1e-6)
        return f"RUNNING: {rows:,} rows in {took:.0f} s ({rows / took:,.0f} rows/s)"
    finished = b.worst("eir_import_last_finished_timestamp_seconds")
    if finished is None:
        return "none recorded"
    failed = b.worst("eir_import_last_failed")
    rows = int(b.worst("eir_import_rows") or 0)
    return (f"none running; the last {'FAILED (nothing written)' if failed else 'committed'} "
            f"{rows:,} rows, ended {_when(finished)}")

