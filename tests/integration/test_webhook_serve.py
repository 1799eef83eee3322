"""End to end: a running EIR (`EirApp`, in-process, test clock) gets an ECR for an
unverified device, starts its grace clock, produces the warnings and delivers each one,
once, to a real HTTP gateway on 127.0.0.1; the metrics show it.

The test clock runs at 10 simulated days per second, so the whole 30-day grace (warnings
at days 0, 20, 27 and at expiry) passes in about three seconds.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))

from webhook_gateway import Gateway

from eir.app import EirApp
from eir.config import from_mapping
from eir.diameter import messages as m
from eir.diameter.client import DiameterClient
from eir.diameter.constants import AvpCode, Vendor
from eir.diameter.dictionary import default_dictionary
from eir.policy import notify
from eir.probe import ecr

pytestmark = pytest.mark.timeout(60)

IMEI = "35209900176148"
IMSI = "401011234567890"  # a home subscriber: the grace clock starts (POLICY.md step 12)
REALM = "localdomain"
MME = "mme1.localdomain"


async def until(probe: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not probe():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_a_warning_produced_by_the_server_is_delivered_once(tmp_path: Path) -> None:
    with Gateway() as gateway:
        gateway.fail(1, 503)  # the first POST fails: the server retries it
        cfg = from_mapping({
            "server": {"listen": "127.0.0.1:0"},
            "registry": {"db": str(tmp_path / "eir.db"), "reload_seconds": 0.2},
            "observations": {"flush_seconds": 0.1},
            "notifications": {"interval_seconds": 0.1},
            "metrics": {"enabled": False},
            "clock": {"test_mode": True, "start": "2030-01-01T00:00:00Z", "speed": 864_000.0},
            "webhook": {"url": gateway.url, "poll_seconds": 0.05, "timeout_seconds": 2.0,
                        "backoff_base_seconds": 0.05, "backoff_cap_seconds": 0.2},
        }).validate()
        app = EirApp(cfg)
        await app.start()
        try:
            assert app.webhook is not None and app.server is not None
            client = DiameterClient(m.Identity(MME, REALM), default_dictionary())
            await client.connect("127.0.0.1", app.server.port, timeout=5)
            try:
                ans = await client.request(ecr(MME, REALM, REALM, IMEI, "00", IMSI))
            finally:
                await client.close()
            status = ans.find(AvpCode.EQUIPMENT_STATUS, Vendor.TGPP)
            assert status is not None and status.as_u32() == 2  # GREYLISTED
            await until(lambda: len(gateway.by_key()) == 4, 20,
                        f"not all four warnings delivered: {gateway.requests}")
            await until(lambda: app.webhook is not None and app.webhook.stats.delivered == 4,
                        10, "not marked")
            await asyncio.sleep(0.5)  # more rounds: nothing is sent twice
            text = (await app.collector.render(""))[0].decode()
        finally:
            await app.stop()
        by_key = gateway.by_key()
        assert sorted(len(v) for v in by_key.values()) == [1, 1, 1, 2]  # one 503, re-sent
        kinds = [r.json["kind"] for r in gateway.requests if r.status == 200]
        # (in the order produced, unless a loaded machine let two fall due in one round)
        assert sorted(kinds) == ["day0", "day20", "day27", "expiry"]
        assert all(r.json["imei"] == IMEI and r.json["imsi"] == IMSI for r in gateway.requests)
        [last] = [r for r in gateway.requests if r.json["kind"] == "expiry"]
        assert "grace period ended" in last.json["message"]

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("eir_notification_webhook_enabled", ())] == 1
    assert samples[("eir_notifications_delivered_total", ())] == 4
    assert samples[("eir_notification_delivery_attempts_total", ())] == 5
    assert samples[("eir_notification_delivery_failures_total", (("reason", "http_5xx"),))] == 1
    assert samples[("eir_notifications_failed_total", ())] == 0
    assert samples[("eir_notification_delivery_duration_seconds_count", ())] == 5
    assert samples[("eir_notifications_produced_total", ())] == 4
    # the outbox after the stop: all four sent, nothing pending or failed
    from eir.policy.sqlite import SqliteRegistry

    async with SqliteRegistry(tmp_path / "eir.db") as reg:
        rows = await notify.list_outbox(reg)
        assert [(r["kind"], r["sent_at"] is not None, r["failed_at"]) for r in rows] == [
            ("day0", True, None), ("day20", True, None), ("day27", True, None),
            ("expiry", True, None)]
        assert await notify.backlog(reg) == (0, None)


async def test_without_a_url_nothing_is_sent_and_the_counts_are_zero(tmp_path: Path) -> None:
    cfg = from_mapping({"server": {"listen": "127.0.0.1:0"},
                        "registry": {"db": str(tmp_path / "eir.db")},
                        "metrics": {"enabled": False}}).validate()
    app = EirApp(cfg)
    await app.start()
    try:
        assert app.webhook is None
        text = (await app.collector.render(""))[0].decode()
    finally:
        await app.stop()
    assert "eir_notification_webhook_enabled 0.0" in text
    assert "eir_notifications_delivered_total 0.0" in text
    assert 'eir_notification_delivery_failures_total{reason="timeout"} 0.0' in text


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_missing_token_file_stops_serve_with_one_line(tmp_path: Path, workers: str) -> None:
    from testbed.eirproc import run_cli

    cfg = tmp_path / "eir.toml"
    cfg.write_text('[webhook]\nurl = "http://127.0.0.1:9/sms"\n'
                   f'bearer_token_file = "{tmp_path / "missing"}"\n')
    res = run_cli("serve", "--db", str(tmp_path / "eir.db"), "--listen", "127.0.0.1:0",
                  "--workers", workers, "--config", str(cfg), "--metrics-listen",
                  "127.0.0.1:0", timeout=60)
    assert res.returncode == 1
    assert res.stderr.splitlines()[-1] == (
        f"eir: config: webhook.bearer_token_file: cannot read {tmp_path / 'missing'}: "
        "No such file or directory")
    assert not (tmp_path / "eir.db").exists()  # nothing started
