"""eir.webhook against a real HTTP server on 127.0.0.1: each warning delivered once, retried
with backoff, Retry-After honoured, timeouts, permanent failures, a crash between the POST
and the mark.

The gateway (``webhook_gateway``) is a real HTTP/1.1 server in a thread; the outbox a
real SQLite registry under tmp_path, filled by `notify.produce_due` as the server fills it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from webhook_gateway import Gateway, Reply

from eir.config import ConfigError, WebhookSection
from eir.policy import notify
from eir.policy.model import Decision, Status
from eir.policy.sqlite import SqliteRegistry
from eir.webhook import Webhook, idempotency_key, payload

pytestmark = pytest.mark.timeout(60)

DAY = 86_400
T0 = 1_748_779_200  # 2025-06-01T12:00:00Z
IMSI = "401011234567890"


def imeis(n: int) -> list[str]:
    return [f"352099001761{i:02d}" for i in range(n)]


async def fill(reg: SqliteRegistry, n: int) -> list[dict[str, Any]]:
    """``n`` day0 warnings in the outbox, as the notifications loop makes them."""
    await notify.start_clocks(reg, [(i, IMSI, "pending_verification", T0, T0 + 30 * DAY)
                                    for i in imeis(n)], (0.0,), False)

    def grey(imei14: str, imsi: str | None, at: int) -> Decision:
        return Decision(Status.GREYLISTED, "pending_verification", None, None, "unknown",
                        T0 + 30 * DAY)

    assert await notify.produce_due(reg, T0, grey, (0.0,), False) == n
    return await notify.list_outbox(reg)


@pytest.fixture
async def reg(tmp_path: Path) -> AsyncIterator[SqliteRegistry]:
    async with SqliteRegistry(tmp_path / "eir.db") as r:
        yield r


@pytest.fixture
def gateway() -> Any:
    with Gateway() as gw:
        yield gw


def section(url: str, **kw: Any) -> WebhookSection:
    base: dict[str, Any] = {"url": url, "timeout_seconds": 2.0, "poll_seconds": 0.05,
                            "backoff_base_seconds": 0.05, "backoff_cap_seconds": 1.0}
    return WebhookSection(**{**base, **kw})


async def until(probe: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not probe():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


class Running:
    """A sender running in a task, stopped (cleanly) at the end."""

    def __init__(self, sender: Webhook) -> None:
        self.sender = sender
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Webhook:
        self.task = asyncio.create_task(self.sender.run())
        return self.sender

    async def __aexit__(self, *exc: object) -> None:
        await self.sender.stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, 10)


async def state(reg: SqliteRegistry) -> dict[int, dict[str, Any]]:
    return {r["id"]: r for r in await notify.list_outbox(reg)}


async def test_each_warning_delivered_once_with_key_token_and_signature(
        reg: SqliteRegistry, gateway: Gateway, tmp_path: Path) -> None:
    rows = await fill(reg, 12)
    (tmp_path / "token").write_text("s3cret-token\n")
    (tmp_path / "secret").write_bytes(b"hmac-key")
    sender = Webhook(reg, section(gateway.url, concurrency=3, batch_size=5,
                                  bearer_token_file=str(tmp_path / "token"),
                                  signing_secret_file=str(tmp_path / "secret")),
                     clock=lambda: T0 + 60)
    async with Running(sender):
        await until(lambda: sender.stats.delivered == 12, 10, "not all delivered")
        await asyncio.sleep(0.3)  # a few more polls: nothing is sent again
    assert len(gateway.requests) == 12
    by_key = gateway.by_key()
    assert len(by_key) == 12 and all(len(v) == 1 for v in by_key.values())
    for row in rows:
        [req] = by_key[idempotency_key(row)]
        assert req.json == payload(row)
        assert req.json["imei"] == row["imei"] and req.json["imsi"] == IMSI
        assert req.json["kind"] == "day0" and req.json["language"] == "en"
        assert req.json["message"] == row["message"]
        assert req.headers["authorization"] == "Bearer s3cret-token"
        assert req.headers["content-type"].startswith("application/json")
        t, _, v1 = req.headers["x-eir-signature"].partition(",v1=")
        want = hmac.new(b"hmac-key", t.removeprefix("t=").encode() + b"." + req.raw,
                        hashlib.sha256).hexdigest()
        assert v1 == want
    after = await state(reg)
    assert all(r["sent_at"] == "2025-06-01T12:01:00Z" and r["attempts"] == 1 and
               r["failed_at"] is None for r in after.values())
    assert await notify.backlog(reg) == (0, None)
    s = sender.stats
    assert (s.attempts, s.delivered, sum(s.failures.values()), s.given_up) == (12, 12, 0, 0)
    assert s.latency.count == 12 and s.failed_rows == 0


async def test_5xx_retried_with_backoff_then_delivered_once(
        reg: SqliteRegistry, gateway: Gateway) -> None:
    [row] = await fill(reg, 1)
    gateway.fail(3, 503, body="busy")
    sender = Webhook(reg, section(gateway.url, backoff_base_seconds=0.2,
                                  backoff_cap_seconds=0.4))
    async with Running(sender):
        await until(lambda: sender.stats.delivered == 1, 10, "not delivered")
        await asyncio.sleep(0.3)
    reqs = gateway.requests
    assert [r.status for r in reqs] == [503, 503, 503, 200]
    assert len({r.key for r in reqs}) == 1 and len({r.raw for r in reqs}) == 1
    assert [r.headers["x-eir-attempt"] for r in reqs] == ["1", "2", "3", "4"]
    # waits drawn in 50-100 % of 0.2, 0.4, 0.4 (the cap); generous margins above
    gaps = [b.at - a.at for a, b in itertools.pairwise(reqs)]
    assert 0.09 <= gaps[0] <= 1.0 and 0.19 <= gaps[1] <= 1.2 and 0.19 <= gaps[2] <= 1.2, gaps
    [after] = (await state(reg)).values()
    assert after["attempts"] == 4 and after["sent_at"] is not None
    assert after["last_error"] == "HTTP 503: busy"  # kept as history
    assert sender.stats.failures["http_5xx"] == 3 and sender.stats.delivered == 1
    assert row["id"] == after["id"]


async def test_429_retry_after_is_honoured(reg: SqliteRegistry, gateway: Gateway) -> None:
    await fill(reg, 1)
    gateway.fail(1, 429, headers={"Retry-After": "1"})
    sender = Webhook(reg, section(gateway.url))  # backoff alone would wait 25-50 ms
    async with Running(sender):
        await until(lambda: sender.stats.delivered == 1, 10, "not delivered")
    first, second = gateway.requests
    assert first.status == 429 and second.status == 200
    assert 0.95 <= second.at - first.at <= 3.0
    assert sender.stats.failures["http_429"] == 1


async def test_a_hang_past_the_timeout_is_retried_with_the_same_key(
        reg: SqliteRegistry, gateway: Gateway) -> None:
    await fill(reg, 1)
    gateway.then(Reply(200, delay=2.0))  # answers, but too late
    sender = Webhook(reg, section(gateway.url, timeout_seconds=0.3))
    async with Running(sender):
        await until(lambda: sender.stats.delivered == 1, 10, "not delivered")
    first, second = gateway.requests
    assert first.key == second.key and first.raw == second.raw
    assert sender.stats.failures["timeout"] == 1
    assert sender.stats.latency.count == 2
    [row] = (await state(reg)).values()
    assert row["attempts"] == 2 and row["last_error"] == "no answer within 0.3 s"


async def test_connection_refused_is_retried(reg: SqliteRegistry,
                                             caplog: pytest.LogCaptureFixture) -> None:
    await fill(reg, 1)
    with Gateway() as gone:
        url = gone.url
    sender = Webhook(reg, section(url, max_attempts=3))
    async with Running(sender):
        await until(lambda: sender.stats.given_up == 1, 10, "not given up")
    assert sender.stats.failures["connection"] == 3
    # the failures are one warning a minute at most; the give-up one of its own
    summaries = [r.getMessage() for r in caplog.records
                 if "attempt(s) to deliver failed" in r.getMessage()]
    assert summaries == ["notifications: 1 attempt(s) to deliver failed since the last "
                         "report (connection 1); 0 warning(s) given up on in all"]
    assert any("failed: ConnectError" in r.getMessage() and "eir notify retry" in
               r.getMessage() for r in caplog.records)
    [row] = (await state(reg)).values()
    assert row["failed_at"] is not None and row["attempts"] == 3
    assert "given up after 3 attempt(s)" in row["last_error"]


async def test_a_4xx_fails_at_once_and_retry_sends_it_again(
        reg: SqliteRegistry, gateway: Gateway) -> None:
    rows = await fill(reg, 2)
    gateway.fail(1, 400, body='{"error": "bad msisdn"}')
    sender = Webhook(reg, section(gateway.url, concurrency=1), clock=lambda: T0 + 120)
    async with Running(sender):
        await until(lambda: sender.stats.delivered == 1 and sender.stats.given_up == 1, 10,
                    "not done")
        await asyncio.sleep(0.3)
        assert len(gateway.requests) == 2  # the failed one is not tried again
        got = await state(reg)
        failed = got[rows[0]["id"]]
        assert failed["failed_at"] == "2025-06-01T12:02:00Z" and failed["sent_at"] is None
        assert failed["attempts"] == 1
        assert failed["last_error"] == 'HTTP 400: {"error": "bad msisdn"}'
        assert got[rows[1]["id"]]["sent_at"] is not None
        assert sender.stats.failures["http_4xx"] == 1 and sender.stats.failed_rows == 1
        # failed is not pending: the backlog alert does not count it
        assert (await notify.backlog(reg))[0] == 0
        assert [r["id"] for r in await notify.list_outbox(reg, failed_only=True)] == \
            [rows[0]["id"]]
        # a person sends it again
        assert await notify.requeue_failed(reg, [rows[0]["id"]]) == 1
        await until(lambda: sender.stats.delivered == 2, 10, "not sent again")
    assert [r.status for r in gateway.requests] == [400, 200, 200]
    assert gateway.requests[0].key == gateway.requests[2].key
    assert (await state(reg))[rows[0]["id"]]["sent_at"] is not None


async def test_give_up_after_retry_for_seconds(reg: SqliteRegistry, gateway: Gateway) -> None:
    await fill(reg, 1)
    gateway.fail(100, 500)
    sender = Webhook(reg, section(gateway.url, retry_for_seconds=0.5,
                                  backoff_base_seconds=0.1, backoff_cap_seconds=0.1))
    async with Running(sender):
        await until(lambda: sender.stats.given_up == 1, 10, "not given up")
        n = len(gateway.requests)
        await asyncio.sleep(0.3)
        assert len(gateway.requests) == n
    assert 4 <= n <= 12, n  # one every 50-100 ms for half a second


async def test_crash_after_the_post_before_the_mark(
        reg: SqliteRegistry, gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway took the warning (2xx); marking it sent fails and the node dies. This
    sender never POSTs it again; the next process re-sends it after the lease, with the same
    Idempotency-Key and body (the gateway's dedupe), and marks it."""
    [row] = await fill(reg, 1)
    real = notify.mark_sent

    async def broken(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("disk I/O error")

    monkeypatch.setattr(notify, "mark_sent", broken)
    first = Webhook(reg, section(gateway.url))
    async with Running(first):
        await until(lambda: first.stats.delivered == 1, 10, "not delivered")
        await asyncio.sleep(0.5)  # ten polls: the mark is retried, the POST is not
    assert len(gateway.requests) == 1
    [pending] = (await state(reg)).values()
    assert pending["sent_at"] is None and pending["attempts"] == 1  # the crash: no mark
    # the next process, before the lease ends: nothing; after it: the re-send
    monkeypatch.setattr(notify, "mark_sent", real)
    early = Webhook(reg, section(gateway.url))
    assert await early.run_once() == 0
    later = Webhook(reg, section(gateway.url), now=lambda: time.time() + first.lease + 1)
    async with Running(later):
        await until(lambda: later.stats.delivered == 1, 10, "not re-sent")
    one, two = gateway.requests
    assert one.key == two.key == idempotency_key(row) and one.raw == two.raw
    [done] = (await state(reg)).values()
    assert done["sent_at"] is not None and done["attempts"] == 2


async def test_stop_waits_for_the_post_in_flight(reg: SqliteRegistry, gateway: Gateway) -> None:
    await fill(reg, 1)
    gateway.then(Reply(200, delay=0.5))
    sender = Webhook(reg, section(gateway.url))
    task = asyncio.create_task(sender.run())
    await until(lambda: len(gateway.requests) == 1, 10, "no POST")
    await sender.stop()
    await asyncio.wait_for(task, 5)
    assert sender.stats.delivered == 1
    [row] = (await state(reg)).values()
    assert row["sent_at"] is not None


async def test_a_missing_token_file_is_a_config_error(reg: SqliteRegistry, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^webhook\.bearer_token_file: cannot read"):
        Webhook(reg, section("http://127.0.0.1:1/", bearer_token_file=str(tmp_path / "no")))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match=r"^webhook\.signing_secret_file: .* is empty"):
        Webhook(reg, section("http://127.0.0.1:1/", signing_secret_file=str(tmp_path / "empty")))


async def test_stop_mid_batch_gives_the_rest_back(reg: SqliteRegistry, gateway: Gateway) -> None:
    """Stopping while a batch is half sent: the POST in flight ends and is recorded; the
    warnings not POSTed yet are due at once for the next process, no attempt counted."""
    await fill(reg, 5)
    gateway.then(Reply(200, delay=0.5))
    sender = Webhook(reg, section(gateway.url, batch_size=5, concurrency=1))
    task = asyncio.create_task(sender.run())
    await until(lambda: len(gateway.requests) == 1, 10, "no POST")
    await sender.stop()
    await asyncio.wait_for(task, 5)
    assert len(gateway.requests) == 1 and sender.stats.delivered == 1
    rows = list((await state(reg)).values())
    assert sum(r["sent_at"] is not None for r in rows) == 1
    rest = [r for r in rows if r["sent_at"] is None]
    assert [(r["attempts"], r["first_attempt_at"], r["next_attempt_at"]) for r in rest] == \
        [(0, None, None)] * 4
    nxt = Webhook(reg, section(gateway.url, batch_size=5))
    async with Running(nxt):
        await until(lambda: nxt.stats.delivered == 4, 10, "the rest not delivered")
    assert len(gateway.by_key()) == 5 and len(gateway.requests) == 5


async def test_https_with_the_configured_ca(reg: SqliteRegistry, tmp_path: Path) -> None:
    """An https gateway whose certificate the configured ca_file signs is delivered to; one
    from another CA is a TLS error, retried (a connection failure), never delivered."""
    from testbed.certs import make_ca

    ca, other = make_ca(tmp_path / "pki", "Gateway CA"), make_ca(tmp_path / "pki", "Other CA")
    leaf = ca.issue(tmp_path / "pki", "gw", ips=("127.0.0.1",), server=True, stem="gw")
    await fill(reg, 1)
    with Gateway(tls=(leaf.cert, leaf.key)) as gw:
        assert gw.url.startswith("https://")
        wrong = Webhook(reg, section(gw.url, ca_file=str(other.cert), max_attempts=2))
        async with Running(wrong):
            await until(lambda: wrong.stats.given_up == 1, 10, "not given up")
        assert wrong.stats.failures["connection"] == 2 and gw.requests == []
        [row] = (await state(reg)).values()
        assert "CERTIFICATE_VERIFY_FAILED" in row["last_error"]
        assert await notify.requeue_failed(reg) == 1
        right = Webhook(reg, section(gw.url, ca_file=str(ca.cert)))
        async with Running(right):
            await until(lambda: right.stats.delivered == 1, 10, "not delivered")
        assert len(gw.requests) == 1
