"""Delivery of the notification outbox to a webhook: an SMS gateway's HTTP endpoint.

Owns the HTTP side of POLICY.md's "notification outbox: warnings to grey
owners ..., each sent once" (config ``[webhook]``, README "Notifications").
The outbox rows and their delivery state belong to `eir.policy.notify`
(migration 0003); this module takes the due ones, POSTs them and records
what came back. It runs in the process that runs the registry jobs
(worker 0, `eir.app`).

- One POST per warning: a JSON document (`payload`), the same bytes on every
  try, with an ``Idempotency-Key`` header (draft-ietf-httpapi-idempotency-
  key-header) derived from the warning's identity (`idempotency_key`), so
  the gateway can drop a re-send it already took. Optional
  ``Authorization: Bearer`` (RFC 6750 2.1) and ``X-Eir-Signature``
  (HMAC-SHA256 over the timestamp and the body, `signature`).
- 2xx: delivered, the row is marked sent (`notify.mark_sent`). The row is
  never POSTed again by this process: if the mark itself fails (the
  database), the id is kept and the mark retried before anything else is
  taken from the outbox.
- 408, 429, 5xx (RFC 9110 15.5.9, RFC 6585 4, RFC 9110 15.6), timeouts,
  connection and TLS errors: tried again after an exponential backoff
  (``backoff_base_seconds`` doubled per attempt up to
  ``backoff_cap_seconds``, each wait drawn in 50-100 % of that) or after
  the answer's Retry-After (RFC 9110 10.2.3) when that is longer, until
  ``max_attempts`` POSTs or ``retry_for_seconds`` since the first: then the
  warning is marked failed.
- Any other answer (4xx, 3xx: a re-send would get the same): failed at once.
  ``eir notify retry`` puts failed warnings back in the queue.

Each attempt is counted in the outbox before its POST and the row leased
for the time a whole batch can take (`notify.claim_due`), so a crash during
a POST leaves the warning due again after the lease: never lost. What is
not possible over HTTP is exactly-once: a crash after the gateway accepted
a warning and before it is marked sent re-sends it (same key, same body).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import random
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Final

import httpx

from eir import __version__
from eir.config import ConfigError, WebhookSection
from eir.policy import notify
from eir.policy.sqlite import SqliteRegistry

__all__ = ["REASONS", "Histogram", "Outcome", "Stats", "Webhook", "backoff", "check",
           "classify", "idempotency_key", "payload", "retry_after", "signature"]

log = logging.getLogger("eir.webhook")

REASONS: Final = ("timeout", "connection", "http_408", "http_429", "http_5xx", "http_4xx",
                  "http_other")
"""Why an attempt failed, as eir_notification_delivery_failures_total{reason} says it."""

LANGUAGE: Final = "en"  # `notify.message_for` writes English
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_MAX_RETRY_AFTER: Final = 86_400.0  # a Retry-After past a day is taken as a day
_ERROR_BODY: Final = 200  # characters of an error answer's body kept in last_error


# -- what is sent ----------------------------------------------------------------------------


def idempotency_key(row: dict[str, Any]) -> str:
    """The warning's key: the same for every re-send of it, from this process or a later one.

    Made from what identifies a warning (the outbox's UNIQUE (imei, imsi, kind), and its
    due time), not from the row id, which a restored backup may give to another warning.
    """
    ident = "\x1f".join((row["imei"], row["imsi"] or "", row["kind"], row["due_at"]))
    return "eir-" + hashlib.sha256(ident.encode()).hexdigest()[:40]


def payload(row: dict[str, Any]) -> dict[str, Any]:
    """The JSON document POSTed for one outbox row (README "Notifications")."""
    return {
        "id": row["id"],
        "idempotency_key": idempotency_key(row),
        "imei": row["imei"],
        "imsi": row["imsi"] or None,
        "kind": row["kind"],
        "language": LANGUAGE,
        "message": row["message"],
        "due_at": row["due_at"],
        "deadline": row["deadline"],
        "created": row["created"],
    }


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """``X-Eir-Signature``: ``t=<unix time>,v1=<hex HMAC-SHA256 of "<t>." + body>``."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


# -- what came back --------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One attempt's result: delivered, or why not and whether to try again."""

    delivered: bool
    reason: str | None = None  # one of REASONS when not delivered
    retry: bool = False
    retry_after: float | None = None  # seconds the gateway asked us to wait
    error: str = ""


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After value (delay-seconds or an HTTP-date), or None."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), _MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(0.0, when - now), _MAX_RETRY_AFTER)


def classify(status: int, retry_after_header: str | None, body: str, now: float) -> Outcome:
    """An HTTP answer's outcome: 2xx delivered; 408, 429, 5xx again later; others failed."""
    if 200 <= status < 300:
        return Outcome(True)
    error = f"HTTP {status}" + (f": {body.strip()[:_ERROR_BODY]}" if body.strip() else "")
    wait = retry_after(retry_after_header, now)
    if status == 408:
        return Outcome(False, "http_408", True, wait, error)
    if status == 429:
        return Outcome(False, "http_429", True, wait, error)
    if 500 <= status < 600:
        return Outcome(False, "http_5xx", True, wait, error)
    return Outcome(False, "http_4xx" if 400 <= status < 500 else "http_other", False, None, error)


def backoff(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """The wait after failed attempt number ``attempt`` (1, 2, ...): base * 2^(attempt - 1)
    up to cap, drawn in [50 %, 100 %] of that, so that warnings failed together do not all
    come back together."""
    full = min(cap, base * 2.0 ** min(max(attempt - 1, 0), 60))
    return full * (0.5 + 0.5 * rng.random())


# -- counts for metrics ----------------------------------------------------------------------


@dataclass
class Histogram:
    """Cumulative-bucket counts of durations (seconds), as Prometheus reads them."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        if not self.counts:
            self.counts = [0] * len(self.bounds)
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at most that), +Inf last."""
        counts = self.counts or [0] * len(self.bounds)
        return [*zip(self.bounds, counts, strict=True), (math.inf, self.count)]


@dataclass
class Stats:
    """What this process did, for `eir.metrics` (read at scrape time)."""

    attempts: int = 0  # POSTs started
    delivered: int = 0  # answered 2xx
    failures: Counter[str] = field(default_factory=Counter)  # attempts not delivered, by reason
    given_up: int = 0  # warnings this process marked failed
    latency: Histogram = field(default_factory=Histogram)  # POST to answer (or error)
    # the outbox as of the last round (None: not read yet): warnings marked failed, and
    # those still to send that were tried at least once
    failed_rows: int | None = None
    retrying_rows: int | None = None


# -- the sender ------------------------------------------------------------------------------


def _read_secret(key: str, path: str) -> bytes:
    try:
        data = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"webhook.{key}: cannot read {path}: {exc.strerror or exc}") from None
    if not data:
        raise ConfigError(f"webhook.{key}: {path} is empty")
    return data


def check(config: WebhookSection) -> None:
    """Read the token, secret and CA files of an enabled ``[webhook]``: a ConfigError names
    the key of one that cannot be used (the supervisor's check before any worker starts)."""
    if config.enabled:
        _Files(config)


class _Files:
    """What ``[webhook]``'s files hold: the bearer token, the signing key, the TLS context."""

    def __init__(self, config: WebhookSection) -> None:
        self.token = (_read_secret("bearer_token_file", config.bearer_token_file).decode()
                      if config.bearer_token_file else None)
        self.secret = (_read_secret("signing_secret_file", config.signing_secret_file)
                       if config.signing_secret_file else None)
        self.tls: ssl.SSLContext | None = None
        if config.url.startswith("https:"):
            try:
                self.tls = ssl.create_default_context(cafile=config.ca_file or None)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"webhook.ca_file: cannot read {config.ca_file}: {exc}"
                                  ) from None


class Webhook:
    """Takes due warnings from the outbox and POSTs them to ``config.url`` (`run`).

    ``clock`` stamps ``sent_at`` and ``failed_at`` (the node's clock, a test clock in
    tests); ``now`` (the system clock) times retries and leases, which are real waits.
    The token and secret files are read here: a missing one is a ConfigError.
    """

    def __init__(self, registry: SqliteRegistry, config: WebhookSection, *,
                 clock: Callable[[], float] = time.time,
                 now: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        if not config.enabled:
            raise ConfigError("webhook.url: not set")
        self.registry = registry
        self.config = config
        self.clock = clock
        self.now = now
        self.rng = rng or random.Random()
        self.stats = Stats()
        files = _Files(config)
        self._token, self._secret, self._tls = files.token, files.secret, files.tls
        # a claim leases its rows for as long as the whole batch can take, plus a margin
        rounds = math.ceil(config.batch_size / config.concurrency)
        self.lease = (rounds + 1) * config.timeout_seconds + 10.0
        # delivered (2xx) but not yet marked sent: never POSTed again, marked first
        self._unmarked: set[int] = set()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._done = asyncio.Event()
        self._client: httpx.AsyncClient | None = None
        self._next_due: float | None = None  # the earliest retry time, as of the last round
        # failed attempts as of the last warning in the log: (count, monotonic time), by reason
        self._failures_logged: tuple[int, float] = (0, -math.inf)
        self._failures_seen: Counter[str] = Counter()

    # -- the loop --

    async def run(self) -> None:
        """Deliver until `stop`: a round whenever something is due, else a wait of at most
        ``poll_seconds`` (less when a retry falls due sooner)."""
        c = self.config
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(c.timeout_seconds), verify=self._tls or True,
            trust_env=False, follow_redirects=False,
            limits=httpx.Limits(max_connections=c.concurrency,
                                max_keepalive_connections=c.concurrency),
            headers={"User-Agent": f"eir/{__version__}"})
        log.info("notifications: delivering the outbox to %s (%d at a time, %d attempts or "
                 "%g s at most per warning)", _shown(c.url), c.concurrency, c.max_attempts,
                 c.retry_for_seconds)
        try:
            while not self._stopping.is_set():
                try:
                    taken = await self.run_once()
                except Exception:
                    log.exception("notifications: the outbox could not be read or written; "
                                  "retrying in %g s", c.poll_seconds)
                    await self._sleep(c.poll_seconds)
                    continue
                if not taken:
                    await self._sleep(self._idle_wait())
        finally:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):
                await asyncio.shield(client.aclose())
            self._done.set()

    async def run_once(self) -> int:
        """One round: mark what was delivered and not yet marked, take the due warnings (at
        most ``batch_size``), POST them (``concurrency`` at a time) and record each
        outcome. Returns how many were taken."""
        await self._mark_unmarked()
        rows = await notify.claim_due(self.registry, self.now(), self.lease,
                                      self.config.batch_size)
        if rows:
            gate = asyncio.Semaphore(self.config.concurrency)

            unsent: list[int] = []

            async def one(row: dict[str, Any]) -> None:
                async with gate:
                    if self._stopping.is_set():  # stopping: the rest of the batch waits
                        unsent.append(int(row["id"]))
                        return
                    await self._deliver(row)

            await asyncio.gather(*(one(r) for r in rows))
            if unsent:
                await notify.release(self.registry, unsent)
        self._log_failures()
        counts = await notify.delivery_counts(self.registry)
        self.stats.failed_rows = int(counts["failed"] or 0)
        self.stats.retrying_rows = int(counts["retrying"] or 0)
        next_due = counts["next_due"]
        self._next_due = None if next_due is None else float(next_due)
        return len(rows)

    def _log_failures(self) -> None:
        """A warning at most once a minute while attempts fail (each one is a debug line)."""
        failed = sum(self.stats.failures.values())
        now = time.monotonic()
        if failed == self._failures_logged[0] or now - self._failures_logged[1] < 60.0:
            return
        since = self.stats.failures - self._failures_seen
        log.warning("notifications: %d attempt(s) to deliver failed since the last report "
                    "(%s); %d warning(s) given up on in all", sum(since.values()),
                    ", ".join(f"{k} {n}" for k, n in sorted(since.items())), self.stats.given_up)
        self._failures_logged = (failed, now)
        self._failures_seen = Counter(self.stats.failures)

    def _idle_wait(self) -> float:
        wait = self.config.poll_seconds
        if self._next_due is not None:
            wait = min(wait, max(0.0, self._next_due - self.now()) + 0.001)
        return wait

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        stop = asyncio.ensure_future(self._stopping.wait())
        wake = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait((stop, wake), timeout=seconds,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            wake.cancel()

    def wake(self) -> None:
        """Look at the outbox now (new warnings were added), not at the next poll."""
        self._wake.set()

    async def stop(self) -> None:
        """Take nothing more; let the POSTs in flight end (each within timeout_seconds) and
        record them. `run` returns then."""
        self._stopping.set()
        if self._client is None and not self._done.is_set():
            return  # never ran
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), self.config.timeout_seconds + 5.0)

    # -- one warning --

    async def _deliver(self, row: dict[str, Any]) -> None:
        client = self._client
        assert client is not None
        body = json.dumps(payload(row), separators=(",", ":"), ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json; charset=utf-8",
                   "Idempotency-Key": idempotency_key(row),
                   "X-Eir-Attempt": str(row["attempts"])}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        if self._secret is not None:
            headers["X-Eir-Signature"] = signature(self._secret, int(self.now()), body)
        self.stats.attempts += 1
        timeout = self.config.timeout_seconds
        t0 = time.monotonic()
        try:
            # httpx's timeout is per phase (connect, each read, ...): the whole POST is
            # bounded too, so a gateway that trickles its answer cannot hold a warning
            async with asyncio.timeout(timeout):
                resp = await client.post(self.config.url, content=body, headers=headers)
            outcome = classify(resp.status_code, resp.headers.get("retry-after"), resp.text,
                               self.now())
        except (TimeoutError, httpx.TimeoutException):
            outcome = Outcome(False, "timeout", True, None, f"no answer within {timeout:g} s")
        except httpx.HTTPError as exc:
            outcome = Outcome(False, "connection", True, None,
                              f"{type(exc).__name__}: {exc}" if str(exc) else
                              type(exc).__name__)
        finally:
            self.stats.latency.observe(time.monotonic() - t0)
        await self._record(row, outcome)

    async def _record(self, row: dict[str, Any], outcome: Outcome) -> None:
        ident = int(row["id"])
        if outcome.delivered:
            self.stats.delivered += 1
            self._unmarked.add(ident)
            try:
                await self._mark_unmarked()
            except Exception:
                log.exception("notifications: warning %d was delivered but could not be "
                              "marked sent; it is not sent again, marking is retried", ident)
            return
        assert outcome.reason is not None
        self.stats.failures[outcome.reason] += 1
        c = self.config
        attempts = int(row["attempts"])
        now = self.now()
        first = float(row["first_attempt_at"] if row["first_attempt_at"] is not None else now)
        retry_at: float | None = None
        error = outcome.error
        if outcome.retry and attempts < c.max_attempts and now - first < c.retry_for_seconds:
            wait = backoff(attempts, c.backoff_base_seconds, c.backoff_cap_seconds, self.rng)
            retry_at = now + max(wait, outcome.retry_after or 0.0)
        elif outcome.retry:
            error = (f"{error} (given up after {attempts} attempt(s) over "
                     f"{now - first:.0f} s)")
        try:
            changed = await notify.record_failure(self.registry, ident, error,
                                                  retry_at=retry_at, now=int(self.clock()))
        except Exception:
            # the lease ends and the warning is tried again: the attempt was counted
            log.exception("notifications: recording the failed attempt of warning %d failed",
                          ident)
            return
        if retry_at is None and changed:
            self.stats.given_up += 1
            log.warning("notifications: warning %d failed: %s (eir notify retry %d sends it "
                        "again)", ident, error, ident)
        elif retry_at is not None:
            log.debug("notifications: warning %d not delivered (attempt %d): %s; next try in "
                      "%.1f s", ident, attempts, error, retry_at - now)

    async def _mark_unmarked(self) -> None:
        if not self._unmarked:
            return
        ids = sorted(self._unmarked)
        await notify.mark_sent(self.registry, ids, now=int(self.clock()))
        self._unmarked.difference_update(ids)


def _shown(url: str) -> str:
    """The URL without any user:password in it (for the log)."""
    parts = httpx.URL(url)
    return str(parts.copy_with(username=None, password=None)) if parts.userinfo else url
