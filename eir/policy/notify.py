"""The notification outbox: warnings to owners of grey devices, each produced once.

Owns the ``grace_clock`` and ``outbox`` tables (migration 0002) and the
schedule of warnings POLICY.md asks for under "What the registry must keep":
*a notification outbox: warnings to grey owners at configured offsets (for
example days 0, 20, 27 and at expiry), each sent once.*

- `start_clocks` records the grace clocks the running regime saw start
  (`eir.policy.regime.ClockStart`); the first clock of an (IMEI, IMSI) pair
  wins and is never reset by a later start.
- `produce_due` turns due clocks into outbox rows. Each clock is re-decided
  at ``now`` (read-only): a device that left grey (legalised, or blocked for
  another reason such as theft) has its clock closed and gets nothing more;
  otherwise every warning whose time has come is inserted, once, including
  the ones missed while the server was down. The expiry warning needs the
  decision itself to say the grace ran out (BLACKLISTED ``grace_expired`` or
  ``clone_suspected``).
- `list_outbox`, `mark_sent` and `pending_deadline` are the reads and the
  acknowledgement a person or a sender process uses.
- `claim_due`, `record_failure`, `requeue_failed` and `delivery_counts` keep
  each warning's delivery state (migration 0003) for the webhook sender
  (`eir.webhook`, which does the HTTP): a claim counts the attempt and
  leases the row before the POST, so a crash in the middle of one leaves it
  due again after the lease, never lost; a failure either schedules the
  next try or marks the warning failed, which only `requeue_failed` undoes.

"Once" rests on the outbox's UNIQUE (imei, imsi, kind) and INSERT OR IGNORE,
so a second or concurrent run, or a crash between the insert and the clock
update, can never duplicate a warning. Clock times are integer UTC epoch
seconds; outbox times are the registry's text ``YYYY-MM-DDTHH:MM:SSZ``.
None of this is a list change: it goes through `SqliteRegistry.raw_transaction`
and stays out of the audit trail.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

from eir.policy.model import Decision, Reason, Status, from_epoch, normalize_imei, to_epoch
from eir.policy.regime import ClockStart
from eir.policy.sqlite import SqliteRegistry

__all__ = [
    "EXPIRED_REASONS",
    "DecideAt",
    "Step",
    "backlog",
    "claim_due",
    "delivery_counts",
    "list_outbox",
    "mark_sent",
    "message_for",
    "offset_kind",
    "outbox_ids",
    "pending_deadline",
    "produce_due",
    "record_failure",
    "release",
    "requeue_failed",
    "schedule",
    "start_clocks",
]

log = logging.getLogger("eir.notify")

DAY: Final = 86_400

DecideAt = Callable[[str, str | None, int], Decision]
"""A read-only re-decision: ``(imei14, imsi or None, at) -> Decision``; observes nothing."""

Step = tuple[str, int]
"""One warning of a clock's schedule: (kind, due time in UTC epoch seconds)."""

EXPIRED_REASONS: Final = frozenset({Reason.GRACE_EXPIRED.value, Reason.CLONE_SUSPECTED.value})
"""Reasons of a BLACKLISTED decision that mean "the grace period ran out"."""

# Clocks re-decided and updated per write transaction: the write lock is
# held while deciding, so keep each transaction short for the observation
# flushes waiting on it.
_CHUNK: Final = 500

# A clock whose re-decision raised is retried this much later, so one bad
# row cannot stall the others nor be retried in a tight loop.
_RETRY_SECONDS: Final = 3600

_OUTBOX_COLUMNS: Final = (
    "id", "imei", "imsi", "kind", "due_at", "deadline", "created", "message", "sent_at",
    "attempts", "first_attempt_at", "next_attempt_at", "last_error", "failed_at",
)

# Not yet delivered nor given up on: what a sender still has to deliver.
_UNDELIVERED: Final = "sent_at IS NULL AND failed_at IS NULL"

_OUTBOX_INSERT: Final = """
INSERT OR IGNORE INTO outbox (imei, imsi, kind, due_at, deadline, created, message)
VALUES (?, ?, ?, ?, ?, ?, ?)
"""


# -- the schedule -------------------------------------------------------------------


def offset_kind(days: float) -> str:
    """The outbox kind of an offset: ``day0``, ``day20``, ``day0.5`` (no ``.0``)."""
    if float(days).is_integer():
        return f"day{int(days)}"
    return f"day{days!r}"


def schedule(
    started: int, deadline: int, offsets_days: Sequence[float], at_expiry: bool
) -> list[Step]:
    """A clock's warnings in due order: one per distinct offset, then ``expiry`` at the deadline.

    On equal times an offset warning comes before the expiry one.
    """
    steps: list[tuple[int, int, str]] = [
        (started + round(d * DAY), 0, offset_kind(d)) for d in sorted(set(offsets_days))
    ]
    if at_expiry:
        steps.append((deadline, 1, "expiry"))
    steps.sort()
    return [(kind, due) for due, _order, kind in steps]


def _is_expired(d: Decision) -> bool:
    return d.status == Status.BLACKLISTED and d.reason in EXPIRED_REASONS


def _still_concerned(d: Decision) -> bool:
    """Grey, or black because the grace ran out: the owner still gets warnings."""
    return d.status == Status.GREYLISTED or _is_expired(d)


# -- starting clocks ----------------------------------------------------------------


async def start_clocks(
    registry: SqliteRegistry,
    starts: Iterable[ClockStart],
    offsets_days: Sequence[float],
    at_expiry: bool,
) -> int:
    """Record grace clocks that started; returns how many were new.

    The first clock of an (IMEI, IMSI) pair wins: a pair that already has a
    clock (open or closed) keeps it. Within one batch the earliest start of
    a pair wins. ``next_due`` is the first warning's time, NULL when the
    configuration asks for no warning at all.
    """
    ordered = sorted(starts, key=lambda s: s[3])
    if not ordered:
        return 0
    # The first warning's time, as schedule() would give it, without building
    # each schedule: the rows are made lazily in the writer's thread, so a
    # flush of thousands of clocks does not hold the event loop.
    first_offset = min((round(d * DAY) for d in offsets_days), default=None)

    def first_due(start: int, deadline: int) -> int | None:
        due = None if first_offset is None else start + first_offset
        if at_expiry and (due is None or deadline < due):
            due = deadline
        return due

    rows = ((int(imei14), imsi or "", reason, start, deadline, first_due(start, deadline))
            for imei14, imsi, reason, start, deadline in ordered)
    async with registry.raw_transaction() as conn, conn.executemany(
        "INSERT OR IGNORE INTO grace_clock"
        " (imei, imsi, reason, started, deadline, next_step, next_due)"
        " VALUES (?, ?, ?, ?, ?, 0, ?)",
        rows,
    ) as cur:
        added = max(int(cur.rowcount), 0)
    return added


# -- producing warnings ---------------------------------------------------------------


def _days(n: int) -> str:
    return f"{n} day" if n == 1 else f"{n} days"


def message_for(imei14: str, kind: str, decision: Decision, deadline: int, now: int) -> str:
    """The text of one warning (English), as true at ``now`` when it is produced."""
    when = from_epoch(deadline)
    legalise = ("To legalise it, supply its purchase data or proof of travel (for example, that "
                "you were abroad when you bought it) to the national device registry; it then "
                "moves to the white list.")
    if decision.reason == Reason.CLONE_SUSPECTED.value:
        what = (f"The IMEI {imei14} of your device is also used by other devices, so it is "
                "suspected to be a clone.")
    elif decision.reason in (Reason.PENDING_VERIFICATION.value, Reason.GRACE_EXPIRED.value):
        what = (f"Your device with IMEI {imei14} is not verified in the national device "
                "registry: its legal import has not been confirmed.")
    else:
        what = (f"Your device with IMEI {imei14} is on the grey list of the national device "
                f"registry (reason: {decision.reason}).")
    if _is_expired(decision):
        state = (f"Its grace period ended at {when} UTC (0 days left): it can no longer make "
                 "calls or send SMS on the national networks.")
        return f"{what} {state} {legalise} It will then work again."
    left = max(0, -(-(deadline - now) // DAY))  # whole days, rounded up
    state = (f"It keeps working until {when} UTC ({_days(left)} left); after that it can no "
             "longer make calls or send SMS on the national networks.")
    return f"{what} {state} {legalise}"


async def produce_due(
    registry: SqliteRegistry,
    now: int,
    decide_at: DecideAt,
    offsets_days: Sequence[float],
    at_expiry: bool,
    limit: int = 10_000,
) -> int:
    """Produce the warnings due at ``now`` for at most ``limit`` clocks; returns rows added.

    Clocks are taken oldest ``next_due`` first. Each one is re-decided at
    ``now``: a device neither grey nor black for an expired grace has its
    clock closed (``closed`` = the decision's reason) and gets nothing.
    Otherwise every warning of its schedule due by ``now`` is inserted (INSERT
    OR IGNORE: missed ones are caught up, none is ever produced twice), the
    expiry warning only once the decision says the grace ran out. The clock
    then points at its next warning (``next_due`` NULL after the last). The
    deadline used is the decision's (an extended grace moves the expiry).
    """
    made = 0
    left = limit
    while left > 0:
        async with registry.raw_transaction() as conn:
            async with conn.execute(
                "SELECT imei, imsi, reason, started, deadline, next_step, next_due"
                " FROM grace_clock WHERE next_due IS NOT NULL AND next_due <= ?"
                " ORDER BY next_due, imei, imsi LIMIT ?",
                (now, min(left, _CHUNK)),
            ) as cur:
                clocks = list(await cur.fetchall())
            if not clocks:
                break
            outbox: list[tuple[str, str, str, str, str, str, str]] = []
            updates: list[tuple[int, int, int | None, str | None, int, str]] = []
            for imei, imsi, _reason, started, deadline, _step, _due in clocks:
                imei14 = f"{int(imei):014d}"
                try:
                    d = decide_at(imei14, imsi or None, now)
                except Exception:
                    log.exception("notifications: re-deciding %s failed; retrying later", imei14)
                    updates.append((deadline, _step, now + _RETRY_SECONDS, None, imei, imsi))
                    continue
                if not _still_concerned(d):
                    updates.append((deadline, _step, None, d.reason, imei, imsi))
                    continue
                if d.deadline is not None:
                    deadline = d.deadline
                expired = _is_expired(d)
                steps = schedule(started, deadline, offsets_days, at_expiry)
                next_step, next_due = len(steps), None
                for i, (kind, due) in enumerate(steps):
                    if due > now or (kind == "expiry" and not expired):
                        # never before its time, and never before now: each
                        # processed clock leaves the due set of this call
                        next_step, next_due = i, max(due, now + 1)
                        break
                    outbox.append((imei14, imsi, kind, from_epoch(due), from_epoch(deadline),
                                   from_epoch(now), message_for(imei14, kind, d, deadline, now)))
                updates.append((deadline, next_step, next_due, None, imei, imsi))
            if outbox:
                async with conn.executemany(_OUTBOX_INSERT, outbox) as cur:
                    made += max(int(cur.rowcount), 0)
            await conn.executemany(
                "UPDATE grace_clock SET deadline = ?, next_step = ?, next_due = ?,"
                " closed = COALESCE(?, closed) WHERE imei = ? AND imsi = ?",
                updates,
            )
        left -= len(clocks)
    return made


# -- reads and acknowledgements -----------------------------------------------------


def _imei14(imei: str) -> str:
    imei14 = normalize_imei(imei)
    if imei14 is None:
        raise ValueError(f"not an IMEI (14 or 15 decimal digits): {imei!r}")
    return imei14


async def list_outbox(
    registry: SqliteRegistry,
    *,
    pending_only: bool = False,
    failed_only: bool = False,
    imei: str | None = None,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """Outbox rows by id: all, or only those still to send (not sent, not failed), or
    only those given up on (failed), optionally of one IMEI."""
    where: list[str] = []
    params: list[Any] = []
    if pending_only:
        where.append(_UNDELIVERED)
    if failed_only:
        where.append("failed_at IS NOT NULL AND sent_at IS NULL")
    if imei is not None:
        where.append("imei = ?")
        params.append(_imei14(imei))
    sql = f"SELECT {', '.join(_OUTBOX_COLUMNS)} FROM outbox"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id LIMIT ?"
    params.append(max(limit, 0))
    async with registry.read() as conn, conn.execute(sql, params) as cur:
        rows = await cur.fetchall()
    return [dict(zip(_OUTBOX_COLUMNS, row, strict=True)) for row in rows]


async def backlog(registry: SqliteRegistry) -> tuple[int, int | None]:
    """(warnings still to send, Unix time the oldest of them was created or None), for
    metrics: one pass over the outbox. Warnings given up on (failed) are not waiting:
    `delivery_counts` counts them."""
    async with registry.read() as conn, conn.execute(
            f"SELECT count(*), min(created) FROM outbox WHERE {_UNDELIVERED}") as cur:
        row = await cur.fetchone()
    assert row is not None
    return int(row[0]), to_epoch(row[1]) if row[1] is not None else None


# ids per statement: well under SQLite's bound on host parameters (999 before 3.32)
_ID_BATCH: Final = 400


async def _update_by_ids(conn: Any, sql: str, params: Sequence[Any], ids: Iterable[int]) -> int:
    """Run ``sql`` (an UPDATE ending in ``id IN ({marks})``) over ``ids`` in batches, with
    ``params`` before each batch's ids; returns the rows changed."""
    wanted = sorted(set(ids))
    n = 0
    for i in range(0, len(wanted), _ID_BATCH):
        batch = wanted[i : i + _ID_BATCH]
        async with conn.execute(sql.format(marks=",".join("?" * len(batch))),
                                (*params, *batch)) as cur:
            n += max(int(cur.rowcount), 0)
    return n


async def outbox_ids(registry: SqliteRegistry, ids: Iterable[int]) -> set[int]:
    """Those of ``ids`` that name an outbox row."""
    wanted = sorted(set(ids))
    found: set[int] = set()
    async with registry.read() as conn:
        for i in range(0, len(wanted), _ID_BATCH):
            batch = wanted[i : i + _ID_BATCH]
            marks = ",".join("?" * len(batch))
            async with conn.execute(f"SELECT id FROM outbox WHERE id IN ({marks})", batch) as cur:
                found.update(int(r[0]) for r in await cur.fetchall())
    return found


async def mark_sent(registry: SqliteRegistry, ids: Iterable[int], *,
                    now: int | None = None) -> int:
    """Mark outbox rows sent (at ``now``, default the system clock); returns how many changed.

    A row already marked keeps its first ``sent_at``; unknown ids are ignored.
    """
    wanted = sorted(set(ids))
    if not wanted:
        return 0
    at = from_epoch(time.time() if now is None else now)
    async with registry.raw_transaction() as conn:
        return await _update_by_ids(
            conn, "UPDATE outbox SET sent_at = ? WHERE sent_at IS NULL AND id IN ({marks})",
            (at,), wanted)


# -- delivery state (migration 0003; the HTTP is eir.webhook's) ----------------------------


async def claim_due(registry: SqliteRegistry, now: float, lease: float,
                    limit: int) -> list[dict[str, Any]]:
    """Take up to ``limit`` warnings due for a delivery attempt at ``now``, oldest first.

    Due: not sent, not failed, and ``next_attempt_at`` NULL or passed. In the
    same write transaction each one taken counts the attempt (``attempts`` + 1,
    ``first_attempt_at`` set on the first) and is leased until ``now + lease``:
    another sender does not take it meanwhile, and a sender that dies during
    the POST leaves it due again when the lease ends. Times are Unix seconds
    (float). Returns the rows as `list_outbox` does, with the counts updated.
    """
    if limit < 1:
        return []
    cols = ", ".join(_OUTBOX_COLUMNS)
    async with registry.raw_transaction() as conn:
        async with conn.execute(
            f"SELECT id FROM outbox WHERE {_UNDELIVERED}"
            " AND (next_attempt_at IS NULL OR next_attempt_at <= ?)"
            " ORDER BY id LIMIT ?", (now, limit),
        ) as cur:
            ids = [int(r[0]) for r in await cur.fetchall()]
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        await conn.execute(
            "UPDATE outbox SET attempts = attempts + 1,"
            " first_attempt_at = COALESCE(first_attempt_at, ?), next_attempt_at = ?"
            f" WHERE id IN ({marks})", (now, now + lease, *ids))
        async with conn.execute(
            f"SELECT {cols} FROM outbox WHERE id IN ({marks}) ORDER BY id", ids
        ) as cur:
            rows = await cur.fetchall()
    return [dict(zip(_OUTBOX_COLUMNS, row, strict=True)) for row in rows]


async def release(registry: SqliteRegistry, ids: Iterable[int]) -> int:
    """Give back claimed warnings that were not POSTed after all (a sender stopping): due at
    once again, their attempt not counted. Returns how many."""
    async with registry.raw_transaction() as conn:
        return await _update_by_ids(
            conn,
            "UPDATE outbox SET attempts = max(attempts - 1, 0), next_attempt_at = NULL,"
            " first_attempt_at = CASE WHEN attempts <= 1 THEN NULL ELSE first_attempt_at END"
            f" WHERE {_UNDELIVERED} AND id IN ({{marks}})", (), ids)


async def record_failure(registry: SqliteRegistry, outbox_id: int, error: str, *,
                         retry_at: float | None, now: int | None = None) -> bool:
    """Record a failed attempt: due again at ``retry_at`` (Unix seconds), or, with
    ``retry_at`` None, given up on: ``failed_at`` = ``now`` (default the system clock).

    A warning marked sent meanwhile (``eir notify ack``) is left alone; returns
    whether the row changed.
    """
    failed = None if retry_at is not None else from_epoch(time.time() if now is None else now)
    async with registry.raw_transaction() as conn, conn.execute(
        "UPDATE outbox SET last_error = ?, next_attempt_at = ?, failed_at = ?"
        " WHERE id = ? AND sent_at IS NULL AND failed_at IS NULL",
        (error[:500], retry_at, failed, outbox_id),
    ) as cur:
        return int(cur.rowcount) > 0


async def requeue_failed(registry: SqliteRegistry, ids: Iterable[int] | None = None) -> int:
    """Deliver failed warnings again (all, or those of ``ids``): as new, with their attempt
    count and retry period starting again; the last error is kept. Returns how many."""
    sql = ("UPDATE outbox SET failed_at = NULL, attempts = 0, first_attempt_at = NULL,"
           " next_attempt_at = NULL WHERE failed_at IS NOT NULL AND sent_at IS NULL")
    async with registry.raw_transaction() as conn:
        if ids is None:
            async with conn.execute(sql) as cur:
                return max(int(cur.rowcount), 0)
        return await _update_by_ids(conn, sql + " AND id IN ({marks})", (), ids)


async def delivery_counts(registry: SqliteRegistry) -> dict[str, int | float | None]:
    """For metrics and the sender's sleep: warnings ``failed`` (given up on), ``retrying``
    (still to send, with at least one attempt) and ``next_due`` (the earliest
    ``next_attempt_at`` of those still to send, None when one is due at once or none is
    left; ``due_now``: how many have no time set)."""
    async with registry.read() as conn, conn.execute(
        "SELECT"
        " (SELECT count(*) FROM outbox WHERE failed_at IS NOT NULL AND sent_at IS NULL),"
        f" (SELECT count(*) FROM outbox WHERE {_UNDELIVERED} AND attempts > 0),"
        f" (SELECT min(next_attempt_at) FROM outbox WHERE {_UNDELIVERED}),"
        f" (SELECT count(*) FROM outbox WHERE {_UNDELIVERED} AND next_attempt_at IS NULL)"
    ) as cur:
        row = await cur.fetchone()
    assert row is not None
    return {"failed": int(row[0]), "retrying": int(row[1]),
            "next_due": None if row[2] is None else float(row[2]), "due_now": int(row[3])}


async def pending_deadline(
    registry: SqliteRegistry,
    imei14: str,
    *,
    offsets_days: Sequence[float] | None = None,
    at_expiry: bool = True,
) -> list[dict[str, Any]]:
    """The open grace clocks of one IMEI (14 or 15 digits), for ``eir registry show``.

    One dict per IMSI (``''`` when none): reason, started, deadline,
    ``next_warning_at`` (None when no warning is left) and the warnings
    already produced (kind, due_at, sent_at). With the configured
    ``offsets_days``, ``next_warning`` names the kind of the next one.
    """
    key = _imei14(imei14)
    async with registry.read() as conn:
        async with conn.execute(
            "SELECT imsi, reason, started, deadline, next_step, next_due FROM grace_clock"
            " WHERE imei = ? AND closed IS NULL ORDER BY imsi",
            (int(key),),
        ) as cur:
            clocks = list(await cur.fetchall())
        async with conn.execute(
            "SELECT imsi, kind, due_at, sent_at FROM outbox WHERE imei = ? ORDER BY due_at, id",
            (key,),
        ) as cur:
            sent = list(await cur.fetchall())
    out: list[dict[str, Any]] = []
    for imsi, reason, started, deadline, next_step, next_due in clocks:
        row: dict[str, Any] = {
            "imsi": imsi,
            "reason": reason,
            "started": from_epoch(started),
            "deadline": from_epoch(deadline),
            "next_warning_at": None if next_due is None else from_epoch(next_due),
            "warnings": [{"kind": k, "due_at": due, "sent_at": s}
                         for i, k, due, s in sent if i == imsi],
        }
        if offsets_days is not None:
            steps = schedule(started, deadline, offsets_days, at_expiry)
            row["next_warning"] = (steps[next_step][0]
                                   if next_due is not None and next_step < len(steps) else None)
        out.append(row)
    return out
