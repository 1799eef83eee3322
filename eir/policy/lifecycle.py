"""Lifecycle actions on one IMEI: legalise, report stolen or lost, recovered, exception pairs.

Owns the rules of each action (POLICY.md "The regime in facts": an owner
legalises a grey or illegally imported device with evidence; the police
block a stolen phone and unblock it when it comes back; a small number of
(IMEI, IMSI) pairs may be allowed despite a block). Each action is one
audited change (`SqliteRegistry.change`): one hash-chained record naming
who, what, why and the evidence, in the same transaction as the write.

The CLI and the admin HTTP API (eir/admin) call these same functions. A
change made while a server runs reaches its next ECR within the server's
reload period (one second by default).
"""

from __future__ import annotations

import json
from typing import Any, Final

from eir.policy.model import ListName, Reason, normalize_imei, normalize_imsi
from eir.policy.sqlite import Change, SqliteRegistry

__all__ = [
    "LifecycleError",
    "NoSuchPair",
    "add_exception",
    "legalise",
    "recovered",
    "remove_exception",
    "report",
]

# POLICY.md: legalisation moves a grey or an illegally imported device to white.
_LEGALISABLE_BLACK: Final = frozenset({Reason.ILLEGAL_IMPORT.value})
_REPORTABLE: Final = frozenset({Reason.STOLEN.value, Reason.LOST.value})


class LifecycleError(ValueError):
    """The action is not allowed on this IMEI now; the message says why.

    ``field`` names the argument at fault when the input itself is bad (an
    IMEI that is not one, no evidence); it is None when the input is fine but
    the IMEI's state forbids the action (already white, not reported).
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NoSuchPair(LifecycleError):
    """The exception pair to remove is not there."""


def _imei(imei: str) -> str:
    imei14 = normalize_imei(imei)
    if imei14 is None:
        raise LifecycleError(f"{imei!r} is not an IMEI (14 or 15 decimal digits)", "imei")
    return imei14


def _evidence(evidence: str | None) -> str:
    if not evidence or not evidence.strip():
        raise LifecycleError("an evidence reference is required (receipt, case number, ...)",
                             "evidence")
    evidence = evidence.strip()
    if len(evidence) > 128 or not evidence.isprintable():
        raise LifecycleError("evidence must be printable text of at most 128 characters",
                             "evidence")
    return evidence


async def _entry(ch: Change, imei14: str) -> dict[str, Any] | None:
    async with ch.conn.execute(
        "SELECT list, reason, source, since, note, grace_until, evidence, prev"
        " FROM list_entry WHERE imei = ?", (imei14,)
    ) as cur:
        row = await cur.fetchone()
    if row is None:
        return None
    keys = ("list", "reason", "source", "since", "note", "grace_until", "evidence", "prev")
    return dict(zip(keys, row, strict=True))


async def _put(ch: Change, imei14: str, list_: ListName, reason: str, source: str,
               evidence: str | None, note: str | None, prev: dict[str, Any] | None) -> None:
    await ch.conn.execute(
        "INSERT INTO list_entry (imei, list, reason, source, since, note, seq, evidence, prev)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (imei) DO UPDATE SET"
        " list = excluded.list, reason = excluded.reason, source = excluded.source,"
        " since = excluded.since, note = excluded.note, seq = excluded.seq,"
        " evidence = excluded.evidence, prev = excluded.prev, grace_until = NULL",
        (imei14, list_.value, reason, source, ch.at, note, ch.seq, evidence,
         json.dumps(prev, sort_keys=True) if prev is not None else None))


def _summary(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any]:
    def brief(e: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if e is None else {k: e[k] for k in ("list", "reason", "source")}

    return {"before": brief(before), "after": brief(after)}


async def legalise(reg: SqliteRegistry, imei: str, *, evidence: str | None, actor: str,
                   imsi: str | None = None, note: str | None = None) -> int:
    """Grey (listed or implicit) or illegal-import black -> white ``legalised``; returns the seq.

    With ``imsi``, the owner's (IMEI, IMSI) pair is also registered, so the
    owner is never taken for a clone of this IMEI.
    """
    imei14, ev = _imei(imei), _evidence(evidence)
    imsi_n = normalize_imsi(imsi) if imsi else None
    if imsi and imsi_n is None:
        raise LifecycleError(f"IMSI {imsi!r} is not 5 to 15 decimal digits", "imsi")
    async with reg.change("legalise", actor=actor, target=imei14, evidence=ev) as ch:
        old = await _entry(ch, imei14)
        if old is not None:
            if old["list"] == "white":
                raise LifecycleError(f"{imei14} is already white ({old['reason']})")
            if old["list"] == "black" and old["reason"] not in _LEGALISABLE_BLACK:
                raise LifecycleError(
                    f"{imei14} is black for {old['reason']!r}: only grey or illegal-import "
                    "devices can be legalised")
        await _put(ch, imei14, ListName.WHITE, Reason.LEGALISED.value, "legalisation", ev, note,
                   old)
        if imsi_n is not None:
            await _add_pair(reg, ch, imei14, imsi_n, Reason.LEGALISED.value, "legalisation", ev)
        ch.count = 1 + (imsi_n is not None)
        ch.summary = _summary(old, {"list": "white", "reason": "legalised",
                                    "source": "legalisation"})
        if imsi_n is not None:
            ch.summary["pair"] = imsi_n
    return ch.seq


async def report(reg: SqliteRegistry, imei: str, *, reason: str, evidence: str | None,
                 actor: str, source: str = "police", note: str | None = None) -> int:
    """Block a stolen or lost device (black, source police); returns the seq."""
    imei14, ev = _imei(imei), _evidence(evidence)
    if reason not in _REPORTABLE:
        raise LifecycleError(f"reason must be one of {sorted(_REPORTABLE)}, not {reason!r}",
                             "reason")
    async with reg.change(f"report-{reason}", actor=actor, target=imei14, evidence=ev) as ch:
        old = await _entry(ch, imei14)
        if old is not None and old["list"] == "black" and old["reason"] in _REPORTABLE:
            raise LifecycleError(f"{imei14} is already reported {old['reason']}")
        # The entry it replaces is kept, so `recovered` can put it back.
        await _put(ch, imei14, ListName.BLACK, reason, source, ev, note, old)
        ch.count = 1
        ch.summary = _summary(old, {"list": "black", "reason": reason, "source": source})
    return ch.seq


async def recovered(reg: SqliteRegistry, imei: str, *, evidence: str | None, actor: str) -> int:
    """Lift a stolen/lost block: restore the entry it replaced, or none; returns the seq."""
    imei14, ev = _imei(imei), _evidence(evidence)
    async with reg.change("recovered", actor=actor, target=imei14, evidence=ev) as ch:
        old = await _entry(ch, imei14)
        if old is None or old["list"] != "black" or old["reason"] not in _REPORTABLE:
            what = "on no list" if old is None else f"{old['list']} ({old['reason']})"
            raise LifecycleError(f"{imei14} is not reported stolen or lost: it is {what}")
        prev = json.loads(old["prev"]) if old["prev"] else None
        if prev is None:
            await ch.conn.execute("DELETE FROM list_entry WHERE imei = ?", (imei14,))
        else:
            await ch.conn.execute(
                "UPDATE list_entry SET list = ?, reason = ?, source = ?, since = ?, note = ?,"
                " grace_until = ?, evidence = ?, prev = ?, seq = ? WHERE imei = ?",
                (prev["list"], prev["reason"], prev["source"], prev["since"], prev["note"],
                 prev["grace_until"], prev["evidence"], prev["prev"], ch.seq, imei14))
        ch.count = 1
        ch.summary = _summary(old, prev)
    return ch.seq


async def _add_pair(reg: SqliteRegistry, ch: Change, imei14: str, imsi: str, reason: str,
                    source: str, evidence: str) -> None:
    async with ch.conn.execute(
        "SELECT COUNT(*), SUM(imsi = ?) FROM exception_pair WHERE imei = ?", (imsi, imei14)
    ) as cur:
        row = await cur.fetchone()
    count, present = (int(row[0]), int(row[1] or 0)) if row is not None else (0, 0)
    if not present and count >= reg.exception_cap:
        raise LifecycleError(f"{imei14} already has {count} exception pairs, the cap "
                             f"(policy.exception_cap = {reg.exception_cap})")
    await ch.conn.execute(
        "INSERT INTO exception_pair (imei, imsi, reason, source, since, seq, evidence)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (imei, imsi) DO UPDATE SET"
        " reason = excluded.reason, source = excluded.source, seq = excluded.seq,"
        " evidence = excluded.evidence",
        (imei14, imsi, reason, source, ch.at, ch.seq, evidence))


async def add_exception(reg: SqliteRegistry, imei: str, imsi: str, *, evidence: str | None,
                        actor: str, source: str = "operator") -> int:
    """Allow (IMEI, IMSI) despite a block (POLICY.md step 2), within the per-IMEI cap."""
    imei14, ev = _imei(imei), _evidence(evidence)
    imsi_n = normalize_imsi(imsi)
    if imsi_n is None:
        raise LifecycleError(f"IMSI {imsi!r} is not 5 to 15 decimal digits", "imsi")
    async with reg.change("exception-add", actor=actor, target=imei14, evidence=ev) as ch:
        await _add_pair(reg, ch, imei14, imsi_n, Reason.PAIRED_EXCEPTION.value, source, ev)
        ch.count = 1
        ch.summary = {"imsi": imsi_n}
    return ch.seq


async def remove_exception(reg: SqliteRegistry, imei: str, imsi: str, *, actor: str,
                           evidence: str | None = None) -> int:
    imei14 = _imei(imei)
    imsi_n = normalize_imsi(imsi)
    if imsi_n is None:
        raise LifecycleError(f"IMSI {imsi!r} is not 5 to 15 decimal digits", "imsi")
    async with reg.change("exception-remove", actor=actor, target=imei14,
                          evidence=evidence) as ch:
        async with ch.conn.execute(
            "DELETE FROM exception_pair WHERE imei = ? AND imsi = ?", (imei14, imsi_n)
        ) as cur:
            if cur.rowcount != 1:
                raise NoSuchPair(f"no exception pair {imei14}/{imsi_n}")
        ch.count = 1
        ch.summary = {"imsi": imsi_n}
    return ch.seq
