"""eir.metrics and eir.status without a running EIR: the HTTP endpoint, the worker transfer,
the reason cap, the status screen, the [metrics] settings and the JSON log fields.

The collector over a real node is tested in tests/integration/test_metrics.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from eir import metrics, status
from eir.cli import _JsonFormatter
from eir.config import ConfigError, from_mapping


class _Fixed:
    """A collector with one counter and one histogram."""

    def collect(self) -> list[CounterMetricFamily | HistogramMetricFamily]:
        c = CounterMetricFamily("eir_things", "things", labels=["kind"])
        c.add_metric(["a"], 3)
        h = HistogramMetricFamily("eir_wait_seconds", "waits",
                                  buckets=[("0.001", 1), ("+Inf", 4)], sum_value=2.5)
        return [c, h]


def _registry() -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Fixed())  # type: ignore[arg-type]
    return reg


async def _get(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    writer.write_eof()  # (a request cut short: the server sees its end)
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


async def test_endpoint_serves_metrics_and_refuses_the_rest() -> None:
    async def render(accept: str) -> tuple[bytes, str]:
        return f"eir_x 1\n# accept={accept}\n".encode(), "text/plain; version=0.0.4"

    ep = metrics.Endpoint(("127.0.0.1", 0), render)
    await ep.start()
    try:
        ok = await _get(ep.port, b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n"
                                  b"Accept: application/openmetrics-text\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"Content-Type: text/plain; version=0.0.4" in ok
        assert ok.endswith(b"eir_x 1\n# accept=application/openmetrics-text\n")
        head = await _get(ep.port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK") and head.endswith(b"\r\n\r\n")
        assert (await _get(ep.port, b"POST /metrics HTTP/1.1\r\n\r\n")).startswith(
            b"HTTP/1.1 405")
        assert (await _get(ep.port, b"GET /other HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
        assert (await _get(ep.port, b"nonsense\r\n\r\n")).startswith(b"HTTP/1.1 400")
        # a client that leaves mid-request costs nothing; the next scrape is answered
        assert await _get(ep.port, b"GET /met") == b""
        assert (await _get(ep.port, b"GET / HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.1 200")
    finally:
        await ep.stop()
    with pytest.raises(OSError):
        await _get(ep.port, b"GET /metrics HTTP/1.1\r\n\r\n")


async def test_a_taken_port_is_a_warning_and_is_retried(caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    async def render(accept: str) -> tuple[bytes, str]:
        return b"eir_x 1\n", "text/plain"

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    ep = metrics.Endpoint(("127.0.0.1", port), render, retry_seconds=0.1)
    with caplog.at_level(logging.WARNING, logger="eir.metrics"):
        await ep.start()
    assert any(f"cannot listen on 127.0.0.1:{port}" in r.getMessage() for r in caplog.records)
    try:
        holder.close()
        for _ in range(100):
            if ep.serving:
                break
            await asyncio.sleep(0.05)
        assert ep.serving
        assert (await _get(port, b"GET /metrics HTTP/1.1\r\n\r\n")).endswith(b"eir_x 1\n")
    finally:
        await ep.stop()


def test_worker_metrics_cross_the_pipe_with_their_worker_label() -> None:
    line = metrics.to_json(_registry())
    assert "\n" not in line
    got = metrics.from_json(line, {"worker": "3"})
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for m in got for s in m.samples}
    assert samples[("eir_things_total", (("kind", "a"), ("worker", "3")))] == 3
    assert samples[("eir_wait_seconds_bucket", (("le", "+Inf"), ("worker", "3")))] == 4
    assert samples[("eir_wait_seconds_sum", (("worker", "3"),))] == 2.5
    assert {m.type for m in got} == {"counter", "histogram"}


async def test_the_supervisor_serves_every_worker_once_per_name() -> None:
    line = metrics.to_json(_registry())

    async def ask(index: int) -> str | None:
        return line if index in (0, 2) else None  # worker 1 does not answer

    collector = metrics.WorkerCollector(3, ask, lambda i: i + 1)
    body, ctype = await collector.render("")
    assert ctype.startswith("text/plain")
    families = list(text_string_to_metric_families(body.decode()))
    names = [f.name for f in families]
    assert len(names) == len(set(names)), "a family name twice"
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families for s in f.samples}
    assert samples[("eir_workers", ())] == 3
    assert [samples[("eir_worker_up", (("worker", w),))] for w in "012"] == [1, 0, 1]
    assert samples[("eir_worker_starts_total", (("worker", "1"),))] == 2
    assert {lab for (n, lab) in samples if n == "eir_things_total"} == {
        (("kind", "a"), ("worker", "0")), (("kind", "a"), ("worker", "2"))}
    assert ("process_cpu_seconds_total", (("worker", "supervisor"),)) in samples


def test_reasons_past_the_cap_are_summed_as_other() -> None:
    by: Counter[tuple[int | None, str]] = Counter()
    for i in range(metrics.MAX_REASONS + 50):
        by[(i % 3, f"r{i}")] = i + 1
    capped = list(metrics._capped(by))
    assert len(capped) <= metrics.MAX_REASONS + 3
    assert sum(n for _, n in capped) == sum(by.values())
    for status_ in range(3):
        assert sum(n for (s, _), n in capped if s == status_) == \
            sum(n for (s, _), n in by.items() if s == status_)
    assert ((0, "r0") not in dict(capped)) and dict(capped)[(0, "other")] > 0
    small: Counter[tuple[int | None, str]] = Counter({(None, "unknown"): 2})
    assert list(metrics._capped(small)) == [((None, "unknown"), 2)]


def test_default_url_follows_the_listen_address() -> None:
    assert metrics.default_url("127.0.0.1:9464") == "http://127.0.0.1:9464/metrics"
    assert metrics.default_url("0.0.0.0:9000") == "http://127.0.0.1:9000/metrics"
    assert metrics.default_url("[::]:9000") == "http://[::1]:9000/metrics"
    assert metrics.default_url("[::1]:9464") == "http://[::1]:9464/metrics"


# -- eir status ------------------------------------------------------------------------------


def _scrape(at: float, text: str) -> status.Scrape:
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), s.value))
    return status.Scrape(at, samples)


BEFORE = """
eir_build_info{version="0.1.0",origin_host="eir.a",origin_realm="a"} 1
eir_worker_up{worker="0"} 1
eir_worker_up{worker="1"} 1
eir_diameter_requests_total{command="ECR",worker="0"} 1000
eir_diameter_requests_total{command="ECR",worker="1"} 1000
eir_diameter_answers_total{command="ECR",result_code="2001",worker="0"} 1000
eir_diameter_answers_total{command="ECR",result_code="2001",worker="1"} 1000
eir_decisions_total{status="WHITELISTED",reason="registered",worker="0"} 1000
eir_decisions_total{status="WHITELISTED",reason="registered",worker="1"} 1000
eir_request_duration_seconds_bucket{le="0.0001",worker="0"} 10
eir_request_duration_seconds_bucket{le="0.001",worker="0"} 10
eir_request_duration_seconds_bucket{le="+Inf",worker="0"} 10
eir_peer_messages_received_total{peer="mme1",worker="0"} 500
"""
AFTER = """
eir_build_info{version="0.1.0",origin_host="eir.a",origin_realm="a"} 1
eir_worker_up{worker="0"} 1
eir_worker_up{worker="1"} 1
eir_diameter_requests_total{command="ECR",worker="0"} 2000
eir_diameter_requests_total{command="ECR",worker="1"} 1500
eir_diameter_answers_total{command="ECR",result_code="2001",worker="0"} 1980
eir_diameter_answers_total{command="ECR",result_code="3004",worker="0"} 20
eir_diameter_answers_total{command="ECR",result_code="2001",worker="1"} 1500
eir_decisions_total{status="WHITELISTED",reason="registered",worker="0"} 1980
eir_decisions_total{status="WHITELISTED",reason="registered",worker="1"} 1500
eir_request_duration_seconds_bucket{le="0.0001",worker="0"} 60
eir_request_duration_seconds_bucket{le="0.001",worker="0"} 109
eir_request_duration_seconds_bucket{le="+Inf",worker="0"} 110
eir_peer_up{peer="mme1",worker="0"} 1
eir_peer_up{peer="mme1",worker="1"} 0
eir_peer_up{peer="mme2",worker="1"} 0
eir_peer_messages_received_total{peer="mme1",worker="0"} 1000
eir_peer_connections{state="open",worker="0"} 1
eir_registry_version{worker="0"} 41
eir_registry_version{worker="1"} 42
eir_registry_entries{list="black",worker="0"} 10
eir_registry_entries{list="black",worker="1"} 10
eir_list_version{source="gsma",worker="0"} 7
eir_list_version{source="gsma",worker="1"} 7
eir_registry_unavailable{mode="stop",worker="0"} 0
eir_import_running 1
eir_import_rows 5000
eir_event_loop_lag_seconds{worker="0"} 0.002
eir_overload_active{worker="1"} 1
eir_notifications_pending{worker="0"} 3
"""


def test_status_shows_the_webhook_when_it_runs() -> None:
    before = BEFORE + """eir_notification_webhook_enabled{worker="0"} 1
eir_notifications_delivered_total{worker="0"} 10
eir_notification_delivery_failures_total{reason="http_5xx",worker="0"} 4
"""
    after = AFTER + """eir_notification_webhook_enabled{worker="0"} 1
eir_notifications_delivered_total{worker="0"} 30
eir_notification_delivery_failures_total{reason="http_5xx",worker="0"} 6
eir_notification_delivery_failures_total{reason="timeout",worker="0"} 2
eir_notifications_failed_pending{worker="0"} 2
"""
    screen = status.render("http://x/metrics", _scrape(0.0, before), _scrape(2.0, after))
    assert ("3 warning(s) not sent; webhook 10.0 delivered/s, 2.0 failed attempts/s, 2 FAILED "
            "(eir notify list --failed)") in screen
    off = status.render("http://x/metrics", _scrape(0.0, BEFORE), _scrape(2.0, AFTER))
    assert "webhook" not in off


def test_status_screen_from_two_scrapes() -> None:
    screen = status.render("http://x/metrics", _scrape(0.0, BEFORE), _scrape(2.0, AFTER))
    lines = screen.splitlines()
    assert lines[0] == "eir 0.1.0: eir.a (realm a) at http://x/metrics; 2 of 2 workers answered"
    # (2000 - 1000 + 1500 - 1000) / 2 s; 20 of 1500 answers in 2 s were 3004
    assert lines[1].startswith("ECR        750/s; answers/s: 2001 740  3004 10.0; errors 10.0/s")
    assert "(1.33%)" in lines[1]
    assert "WHITELISTED 740/s" in lines[2]
    # 100 timed in the interval: 50 under 100 µs, 99 under 1 ms
    assert "p50 <= 100 µs, p99 <= 1 ms (in the last interval" in lines[3]
    assert "loop lag 2.0 ms" in lines[3] and "OVERLOADED" in lines[3]
    assert "version 41-42 (workers differ)" in screen and "black 10" in screen
    assert "gsma version 7" in screen
    assert "RUNNING: 5,000 rows" in screen
    assert "3 warning(s) not sent" in screen
    assert "1 open, 1 down" in screen
    assert any(line.split()[:2] == ["mme1", "open"] and "250 msg/s" in line for line in lines)
    assert any(line.split() == ["mme2", "DOWN"] for line in lines)


def test_status_says_in_one_line_when_nothing_answers() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(status.StatusError, match=rf"nothing answers at http://127.0.0.1:{port}/"):
        status.status(f"http://127.0.0.1:{port}/metrics", 0.0)


async def test_status_refuses_what_is_not_an_eir() -> None:
    async def render(accept: str) -> tuple[bytes, str]:
        return b"up 1\n", "text/plain"

    ep = metrics.Endpoint(("127.0.0.1", 0), render)
    await ep.start()
    try:
        with pytest.raises(status.StatusError, match="not with an EIR's metrics"):
            await asyncio.to_thread(status.scrape, f"http://127.0.0.1:{ep.port}/metrics")
        with pytest.raises(status.StatusError, match="HTTP 404"):
            await asyncio.to_thread(status.scrape, f"http://127.0.0.1:{ep.port}/nope")
    finally:
        await ep.stop()


# -- settings and logs -------------------------------------------------------------------------


@pytest.mark.parametrize(("table", "message"), [
    ({"listen": "9464"}, "metrics.listen"),
    ({"listen": "example.org:9464"}, "metrics.listen"),
    ({"latency_sample": -1}, "metrics.latency_sample"),
    ({"forget_peers_seconds": 0.0}, "metrics.forget_peers_seconds"),
    ({"expected_peers": ["mme one"]}, "metrics.expected_peers"),
    ({"enabled": "yes"}, "metrics.enabled"),
])
def test_bad_metrics_settings_name_their_key(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_mapping({"metrics": table}).validate()


def test_metrics_are_on_by_default_on_loopback() -> None:
    cfg = from_mapping({}).validate()
    assert cfg.metrics.enabled and cfg.metrics.endpoint() == ("127.0.0.1", 9464)
    assert cfg.metrics.latency_sample == 16


def test_json_log_lines_carry_the_fields_passed_as_extra() -> None:
    fmt = _JsonFormatter({"worker": 1})
    record = logging.LogRecord("eir.policy", logging.INFO, __file__, 1, "imei=%s -> %s",
                               ("h:ab", "BLACKLISTED"), None)
    record.__dict__.update({"event": "decision", "imei": "h:ab", "status": "BLACKLISTED",
                            "deadline": None})
    out = json.loads(fmt.format(record))
    assert out["msg"] == "imei=h:ab -> BLACKLISTED" and out["level"] == "info"
    assert out["worker"] == 1 and isinstance(out["pid"], int)
    assert {k: out[k] for k in ("event", "imei", "status", "deadline")} == {
        "event": "decision", "imei": "h:ab", "status": "BLACKLISTED", "deadline": None}
    assert "args" not in out and "levelno" not in out


def test_single_loggers_get_their_own_level_and_sighup_changes_it(tmp_path: Path) -> None:
    from eir.app import EirApp

    with pytest.raises(ConfigError, match=r"log\.loggers: 'eir\.diameter' is not NAME=LEVEL"):
        from_mapping({"log": {"loggers": ["eir.diameter"]}}).validate()
    with pytest.raises(ConfigError, match=r"log\.loggers: 'eir=loud'"):
        from_mapping({"log": {"loggers": ["eir=loud"]}}).validate()
    first = from_mapping({"registry": {"db": str(tmp_path / "eir.db")},
                          "log": {"loggers": ["eir.diameter=warning", "eir.test.x=debug"]}}
                         ).validate()
    assert first.log.logger_levels() == {"eir.diameter": "WARNING", "eir.test.x": "DEBUG"}
    app = EirApp(first)
    try:
        app.reconfigure(first)  # what setup_logging does at start
        assert logging.getLogger("eir.diameter").level == logging.WARNING
        second = from_mapping({"registry": {"db": str(tmp_path / "eir.db")},
                               "log": {"loggers": ["eir.diameter=error"]}}).validate()
        applied, restart = app.reconfigure(second)
        assert "log.loggers" in applied and not restart
        assert logging.getLogger("eir.diameter").level == logging.ERROR
        assert logging.getLogger("eir.test.x").level == logging.NOTSET  # follows log.level
    finally:
        logging.getLogger("eir.diameter").setLevel(logging.NOTSET)
        logging.getLogger("eir.test.x").setLevel(logging.NOTSET)
        app.observations.close()
