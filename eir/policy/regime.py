"""The national regime online: one check = snapshot + TAC + observations + clock -> Decision.

Owns the glue between the pure engine and the state it decides from, for
both kinds of question POLICY.md distinguishes:

- `Regime.check` (the S13 hot path): normalizes the inputs, looks the IMEI
  up in the in-memory `Snapshot` (lists, ranges, exceptions, TACs),
  records the sighting in the `SightingCache` *before* deciding (so a first
  sighting starts its grace clock now), decides, counts the decision per
  operator and reason, logs it (IMSI masked unless configured), and notes
  grace clocks that started, for the notification outbox;
- `Regime.dry_run` (``eir decide``, the public check, previews): the same
  decision from the same state at any time, recording nothing.

No clock is read here except the injected one, no database except through
the cache's store (DESIGN.md 3 and 7).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections import Counter
from typing import Final, Literal

from eir.clock import Clock, system_clock
from eir.policy.engine import DecisionConfig, decide
from eir.policy.model import Decision, Facts, Sightings, normalize_imei, normalize_imsi
from eir.policy.observations import SightingCache
from eir.policy.registry import Snapshot

__all__ = ["ClockStart", "ImeiLogMode", "ImsiLogMode", "Regime", "mask_imei", "mask_imsi"]

log = logging.getLogger("eir.decision")

ImsiLogMode = Literal["masked", "hashed", "clear"]
ImeiLogMode = Literal["hashed", "clear"]

ClockStart = tuple[str, str, str, int, int]
"""A grace clock that started: (imei14, imsi or '', reason, start, deadline)."""

_STATUS_NAMES: Final = {0: "WHITELISTED", 1: "BLACKLISTED", 2: "GREYLISTED", None: "UNKNOWN"}


def mask_imsi(imsi: str | None, mode: ImsiLogMode, key: bytes = b"") -> str:
    """An IMSI as logs may show it: a keyed hash, MCC+MNC kept and the MSIN starred, or clear.

    The hash is HMAC-SHA256 under the node's secret log key (`eir.logkey`):
    the same subscriber gets the same pseudonym in every line, and nobody
    without the key can test a guessed IMSI against it.
    """
    if imsi is None:
        return "-"
    if mode == "clear":
        return imsi
    if mode == "hashed":
        return "h:" + hmac.new(key, imsi.encode(), hashlib.sha256).hexdigest()[:16]
    return imsi[:5] + "*" * (len(imsi) - 5)


def printable(text: str) -> str:
    """``text`` as one log line may show it: control characters escaped, so that a value
    sent by a peer (an IMEI AVP, an N5g PEI with %0A) cannot start a forged line."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def mask_imei(imei: str, mode: ImeiLogMode, key: bytes = b"") -> str:
    """An IMEI as logs may show it: a keyed hash (as `mask_imsi`) or clear (escaped)."""
    if mode == "clear":
        return printable(imei)
    return "h:" + hmac.new(key, imei.encode(), hashlib.sha256).hexdigest()[:16]


def status_name(status: int | None) -> str:
    return _STATUS_NAMES[status]


class Regime:
    """Decides S13 checks from the current snapshot and the observation cache."""

    def __init__(
        self,
        snapshot: Snapshot,
        config: DecisionConfig,
        cache: SightingCache,
        *,
        clock: Clock = system_clock,
        log_level: int = logging.DEBUG,
        imsi_log: ImsiLogMode = "masked",
        imei_log: ImeiLogMode = "clear",
        log_key: bytes = b"",
    ) -> None:
        self.snapshot = snapshot  # replaced whole on reload, never mutated
        self.config = config
        self.cache = cache
        self.clock = clock
        self._log_level = log_level
        self._log_on = log.isEnabledFor(log_level)
        self._imsi_log: ImsiLogMode = imsi_log
        self._imei_log: ImeiLogMode = imei_log
        self._log_key = log_key
        # (operator, status, reason) -> count since the last take_counts()
        self.counts: Counter[tuple[str, int | None, str]] = Counter()
        # (status, reason) -> count since start, for logs and metrics
        self.totals: Counter[tuple[int | None, str]] = Counter()
        self.clock_starts: list[ClockStart] = []

    def set_log_level(self, level: int) -> None:
        """The level of the one line logged per decision (SIGHUP may change it)."""
        self._log_level = level
        self.refresh_logging()

    def refresh_logging(self) -> None:
        """Re-read whether decision logging is on (after a log level change)."""
        self._log_on = log.isEnabledFor(self._log_level)

    # -- the hot path ------------------------------------------------------------

    def check(self, imei: str, imsi: str | None, sv: str | None, operator: str) -> Decision:
        """One S13 check: observe, decide, count, log."""
        now = int(self.clock())
        imsi_n = normalize_imsi(imsi) if imsi is not None else None
        imei14 = normalize_imei(imei)
        snap = self.snapshot
        if imei14 is None:
            facts = Facts(imei, None, imsi_n, sv, now=now, operator=operator)
            d = decide(facts, self.config)
        else:
            key = int(imei14)
            entry, since, grace, pair = snap.lookup_full(key, imsi_n, sv)
            tac = snap.tac
            if tac.loaded:
                cls = tac.lookup(key // 1_000_000)
                tac_known: bool | None = cls is not None
            else:
                cls = tac_known = None
            seen, _new = self.cache.observe(key, imsi_n, operator, now)
            facts = Facts(imei, imei14, imsi_n, sv, entry, pair, now, since, grace, tac_known,
                          cls, seen, operator)
            d = decide(facts, self.config)
            if d.status == 2 and d.deadline is not None:
                self._note_clock(imei14, imsi_n, seen, d)
        self.counts[(operator, d.status, d.reason)] += 1
        if self._log_on:
            self._log(imei, imsi_n, sv, operator, d)
        return d

    def _note_clock(self, imei14: str, imsi: str | None, seen: Sightings, d: Decision) -> None:
        rec = seen.imsis.get(imsi or "")
        if rec is None or rec[3]:
            return
        rec[3] = 1
        assert d.deadline is not None
        self.clock_starts.append(
            (imei14, imsi or "", d.reason, d.deadline - self.config.grace_seconds, d.deadline))

    def _log(self, imei: str, imsi: str | None, sv: str | None, operator: str,
             d: Decision) -> None:
        shown_imei = mask_imei(imei, self._imei_log, self._log_key)
        shown_imsi = mask_imsi(imsi, self._imsi_log, self._log_key)
        status = status_name(d.status)
        # the same fields again as ``extra``, for the JSON log format (log.format = "json")
        log.log(self._log_level, "imei=%s imsi=%s sv=%s operator=%s -> %s reason=%s rule=%s%s",
                shown_imei, shown_imsi, printable(sv or "-"), printable(operator), status,
                d.reason, d.rule,
                f" deadline={d.deadline}" if d.deadline is not None else "",
                extra={"event": "decision", "imei": shown_imei, "imsi": shown_imsi,
                       "sv": sv, "operator": operator, "status": status, "reason": d.reason,
                       "rule": d.rule, "deadline": d.deadline})

    def take_counts(self) -> Counter[tuple[str, int | None, str]]:
        """The per-operator counts since the last call (for persisting), added to the totals."""
        counts, self.counts = self.counts, Counter()
        for (_op, status, reason), n in counts.items():
            self.totals[(status, reason)] += n
        return counts

    def take_clock_starts(self) -> list[ClockStart]:
        starts, self.clock_starts = self.clock_starts, []
        return starts

    def put_back(self, counts: Counter[tuple[str, int | None, str]],
                 starts: list[ClockStart]) -> None:
        """Return what a failed write took, so the next flush writes it (nothing is lost)."""
        self.counts.update(counts)
        for (_op, status, reason), n in counts.items():
            self.totals[(status, reason)] -= n
        self.clock_starts[:0] = starts

    # -- read-only questions -------------------------------------------------------

    def dry_run(
        self,
        imei: str,
        imsi: str | None = None,
        sv: str | None = None,
        *,
        at: int | None = None,
        operator: str | None = None,
        config: DecisionConfig | None = None,
        cached: bool = True,
    ) -> tuple[Decision, Facts]:
        """The decision a check would get at ``at`` (default now); observes nothing.

        ``cached=False`` reads the IMEI's history from the store whatever the
        hot set holds, and leaves the hot set alone (`SightingCache.peek`).
        """
        now = int(self.clock()) if at is None else at
        imei14 = normalize_imei(imei)
        seen = None
        if imei14 is not None:
            # As the check would see it: with this sighting added, on a copy.
            seen = Sightings()
            history = self.cache.peek(int(imei14), cached=cached)
            for key, (first, last, home, _noted) in history.imsis.items():
                seen.add(key, first, last, bool(home))
            imsi_n = normalize_imsi(imsi)
            seen.add(imsi_n or "", now, now, (config or self.config).is_home(imsi_n))
        facts = self.snapshot.facts(imei, imsi, sv, now=now, sightings=seen, operator=operator)
        return decide(facts, config or self.config), facts
