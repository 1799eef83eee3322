"""eir.webhook's pure parts and the [webhook] config: outcomes, Retry-After, backoff, the
idempotency key, the signature, the payload, validation naming the key."""

from __future__ import annotations

import hashlib
import hmac
import random
from email.utils import formatdate

import pytest

from eir.config import ConfigError, load
from eir.webhook import (
    REASONS,
    Histogram,
    backoff,
    classify,
    idempotency_key,
    payload,
    retry_after,
    signature,
)

ROW = {"id": 7, "imei": "35209900176148", "imsi": "401011234567890", "kind": "day20",
       "due_at": "2030-01-21T00:00:00Z", "deadline": "2030-01-31T00:00:00Z",
       "created": "2030-01-21T00:00:05Z", "message": "Your device ...", "sent_at": None,
       "attempts": 3, "first_attempt_at": 1.0, "next_attempt_at": None, "last_error": "x",
       "failed_at": None}


@pytest.mark.parametrize(("status", "reason", "retry"), [
    (200, None, False), (202, None, False), (204, None, False),
    (408, "http_408", True), (429, "http_429", True), (500, "http_5xx", True),
    (503, "http_5xx", True), (599, "http_5xx", True),
    (400, "http_4xx", False), (401, "http_4xx", False), (404, "http_4xx", False),
    (422, "http_4xx", False), (301, "http_other", False), (600, "http_other", False),
])
def test_classify(status: int, reason: str | None, retry: bool) -> None:
    got = classify(status, None, "", 0.0)
    assert got.delivered == (reason is None)
    assert (got.reason, got.retry) == (reason, retry)
    assert reason is None or reason in REASONS


def test_classify_keeps_a_short_error_and_the_retry_after() -> None:
    got = classify(503, "7", "x" * 1000, 0.0)
    assert got.retry_after == 7.0
    assert got.error == "HTTP 503: " + "x" * 200
    assert classify(400, "7", "  ", 0.0).error == "HTTP 400"
    assert classify(400, "7", "", 0.0).retry_after is None  # not retried anyway


def test_retry_after_seconds_and_dates() -> None:
    now = 1_900_000_000.0
    assert retry_after("120", now) == 120.0
    assert retry_after(" 0 ", now) == 0.0
    assert retry_after(formatdate(now + 90, usegmt=True), now) == pytest.approx(90.0)
    assert retry_after(formatdate(now - 90, usegmt=True), now) == 0.0  # past: at once
    assert retry_after("9" * 12, now) == 86_400.0  # capped at a day
    assert retry_after(None, now) is None
    assert retry_after("soon", now) is None
    assert retry_after("-5", now) is None


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    rng = random.Random(1)
    for attempt, full in ((1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (9, 60.0), (500, 60.0)):
        waits = [backoff(attempt, 1.0, 60.0, rng) for _ in range(200)]
        assert all(full / 2 <= w <= full for w in waits), (attempt, min(waits), max(waits))
        assert max(waits) - min(waits) > full / 4  # jittered, not constant


def test_idempotency_key_is_the_warnings_identity() -> None:
    key = idempotency_key(ROW)
    assert key.startswith("eir-") and len(key) == 44
    # not the row id nor the delivery state: a restored backup's renumbered row keeps it
    assert idempotency_key({**ROW, "id": 99, "attempts": 9, "created": "x"}) == key
    for field, value in (("imei", "49015420323751"), ("imsi", ""), ("kind", "day27"),
                         ("due_at", "2030-01-22T00:00:00Z")):
        assert idempotency_key({**ROW, field: value}) != key


def test_payload() -> None:
    assert payload(ROW) == {
        "id": 7, "idempotency_key": idempotency_key(ROW), "imei": "35209900176148",
        "imsi": "401011234567890", "kind": "day20", "language": "en",
        "message": "Your device ...", "due_at": "2030-01-21T00:00:00Z",
        "deadline": "2030-01-31T00:00:00Z", "created": "2030-01-21T00:00:05Z"}
    assert payload({**ROW, "imsi": ""})["imsi"] is None
    # what changes between tries is not in the body (the gateway compares it under a key)
    assert payload({**ROW, "attempts": 4, "last_error": "y"}) == payload(ROW)


def test_signature() -> None:
    body = b'{"id":7}'
    got = signature(b"k", 1_900_000_000, body)
    want = hmac.new(b"k", b"1900000000." + body, hashlib.sha256).hexdigest()
    assert got == f"t=1900000000,v1={want}"


def test_histogram_is_cumulative() -> None:
    h = Histogram(bounds=(0.1, 1.0))
    for v in (0.05, 0.5, 0.5, 3.0):
        h.observe(v)
    assert h.cumulative() == [(0.1, 1), (1.0, 3), (float("inf"), 4)]
    assert h.total == pytest.approx(4.05)
    assert Histogram(bounds=(1.0,)).cumulative() == [(1.0, 0), (float("inf"), 0)]


def test_config_defaults_and_values() -> None:
    w = load(None).webhook
    assert not w.enabled and w.url == ""
    w = load(None, {"webhook": {"url": "https://gw.example/sms", "concurrency": 8,
                                "ca_file": "/etc/ca.pem"}}).webhook
    assert w.enabled and w.concurrency == 8 and w.timeout_seconds == 10.0


@pytest.mark.parametrize(("values", "key"), [
    ({"url": "gw.example/sms"}, "webhook.url"),
    ({"url": "ftp://gw.example/"}, "webhook.url"),
    ({"url": "http://"}, "webhook.url"),
    ({"url": "http://gw:70000/"}, "webhook.url"),
    ({"url": "http://gw/", "ca_file": "ca.pem"}, "webhook.ca_file"),
    ({"timeout_seconds": 0}, "webhook.timeout_seconds"),
    ({"timeout_seconds": "10"}, "webhook.timeout_seconds"),
    ({"retry_for_seconds": float("inf")}, "webhook.retry_for_seconds"),
    ({"backoff_base_seconds": -1}, "webhook.backoff_base_seconds"),
    ({"backoff_base_seconds": 5.0, "backoff_cap_seconds": 1.0}, "webhook.backoff_cap_seconds"),
    ({"poll_seconds": 0}, "webhook.poll_seconds"),
    ({"batch_size": 0}, "webhook.batch_size"),
    ({"concurrency": 0}, "webhook.concurrency"),
    ({"max_attempts": 0}, "webhook.max_attempts"),
    ({"max_attempts": 1.5}, "webhook.max_attempts"),
    ({"bogus": 1}, "webhook.bogus"),
])
def test_config_errors_name_the_key(values: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(None, {"webhook": values})
