"""Read-only questions a person asks of the registry: one IMEI's record, a decision and
the facts behind it, and how many devices a new rule table would move.

Owns the answers of ``eir registry show``, ``eir decide`` and ``eir policy
preview`` (eir/regime_cli.py), which the admin HTTP API (eir/admin) gives too:
one implementation, so the terminal and the API never disagree. Nothing here
records anything (POLICY.md: a dry run observes nothing, counts nothing,
starts no grace clock); every answer is read from the registry file, so it
sees what the CLI sees, changes made by another process included.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Final

from eir.policy import notify
from eir.policy.engine import DecisionConfig, decide
from eir.policy.model import Sightings, from_epoch, normalize_imei, to_epoch
from eir.policy.observations import SightingCache
from eir.policy.regime import Regime, status_name
from eir.policy.registry import Snapshot
from eir.policy.sqlite import SqliteRegistry
from eir.policy.sqlite_regime import SqliteObservations

__all__ = ["AT_RANGE", "audit_page", "entries", "entry", "explain", "pairs", "parse_at",
           "point_regime", "preview", "show"]

AT_RANGE: Final = (0, to_epoch("9000-01-01T00:00:00Z"))  # deadlines must stay printable


def parse_at(value: str) -> int:
    """An ISO 8601 time as Unix seconds, within `AT_RANGE`; ValueError says what is wrong."""
    at = to_epoch(value)
    if not AT_RANGE[0] <= at < AT_RANGE[1]:
        raise ValueError(f"{value!r} is outside 1970 to 9000")
    return at


async def point_regime(reg: SqliteRegistry, obs: SqliteObservations, dc: DecisionConfig,
                       imei: str, at: int) -> Regime:
    """A regime over only what decides ``imei`` (`SqliteRegistry.point_snapshot`)."""
    imei14 = normalize_imei(imei)
    snapshot = await reg.point_snapshot(imei14 if imei14 is not None else "0" * 14)
    return Regime(snapshot, dc, SightingCache(obs, dc.is_home), clock=lambda: float(at))


def explain(regime: Regime, imei: str, imsi: str | None, sv: str | None,
            at: int) -> dict[str, Any]:
    """The decision for one check at ``at``, with the facts behind it; records nothing."""
    dc = regime.config
    d, facts = regime.dry_run(imei, imsi, sv, at=at)
    seen = facts.sightings
    return {
        "imei": imei, "imsi": facts.imsi, "sv": sv, "at": from_epoch(at),
        "status": status_name(d.status), "reason": d.reason, "rule": d.rule,
        "list": d.list, "detail": d.detail,
        "deadline": from_epoch(d.deadline) if d.deadline is not None else None,
        "facts": {
            "entry": None if facts.entry is None else {
                "list": facts.entry.list.value, "reason": facts.entry.reason,
                "since": from_epoch(facts.entry_since) if facts.entry_since else None},
            "paired_exception": facts.pair_is_exception,
            "roamer": not dc.is_home(facts.imsi),
            "tac_known": facts.tac_known, "device_class": facts.device_class,
            "first_home_sighting": from_epoch(seen.first_home)
            if seen is not None and seen.first_home is not None else None,
            "imsis_seen": len([k for k in (seen.imsis if seen else {}) if k]),
        },
    }


async def show(reg: SqliteRegistry, obs: SqliteObservations, imei14: str, *,
               dc: DecisionConfig, now: int, offsets_days: Sequence[float],
               at_expiry: bool) -> dict[str, Any]:
    """One IMEI: its entry and pairs, the decision now, its observations, audit history,
    the ranges covering it, its open grace clocks and its warnings."""
    out = await reg.show(imei14)
    regime = await point_regime(reg, obs, dc, imei14, now)
    d = explain(regime, imei14, None, None, now)
    out["decision_now"] = {k: d[k] for k in ("at", "status", "reason", "rule", "deadline")}
    out["observations"] = await obs.history(imei14)
    out["history"] = await reg.history(imei14)
    out["range_entries"] = [
        {"first": f"{r.lo:014d}", "last": f"{r.hi:014d}", "sv": r.sv,
         "list": r.entry.list.value, "reason": r.entry.reason}
        for r in (regime.snapshot.ranges.entries if regime.snapshot.ranges is not None else ())]
    out["pending_deadlines"] = await notify.pending_deadline(
        reg, imei14, offsets_days=offsets_days, at_expiry=at_expiry)
    out["notifications"] = await notify.list_outbox(reg, imei=imei14)
    return out


async def preview(reg: SqliteRegistry, old_dc: DecisionConfig, new_dc: DecisionConfig,
                  now: int, *, on_rows: Callable[[int], None] | None = None,
                  new_snapshot: Snapshot | None = None) -> dict[str, Any]:
    """How many observed devices per operator would change status under ``new_dc`` (and
    ``new_snapshot``: the lists as a new list would make them; default: as they are).

    One device is one (IMEI, IMSI) pair, counted for the operator that saw it
    last. ``on_rows(observations read)`` is called after every batch.
    """
    changes: Counter[tuple[str, str, str]] = Counter()
    pairs: Counter[str] = Counter()
    t0 = time.perf_counter()
    snapshot = await reg.load_snapshot()
    old, new = (snapshot, old_dc), (new_snapshot or snapshot, new_dc)
    async with reg.read() as conn, conn.execute(
        "SELECT o.imei, o.imsi, o.first_seen, o.last_seen, p.name FROM observation AS o"
        " JOIN operator AS p ON p.id = o.operator ORDER BY o.imei, o.last_seen"
    ) as cur:
        current: int | None = None
        rows: list[tuple[str, int, int, str]] = []
        n = 0
        while batch := await cur.fetchmany(50_000):
            for imei, imsi, first, last, op in batch:
                if imei != current:
                    if current is not None:
                        _preview_imei(current, rows, now, old, new, changes, pairs)
                    current, rows = imei, []
                rows.append((imsi, first, last, op))
                n += 1
            if on_rows is not None:
                on_rows(n)
        if current is not None:
            _preview_imei(current, rows, now, old, new, changes, pairs)
    return {
        "at": from_epoch(now), "devices_checked": sum(pairs.values()),
        "seconds": round(time.perf_counter() - t0, 2),
        "by_operator": {op: {"devices": total,
                             "would_change": sum(v for (o, _, _), v in changes.items()
                                                 if o == op),
                             "transitions": {f"{a}->{b}": v for (o, a, b), v in
                                             sorted(changes.items()) if o == op}}
                        for op, total in sorted(pairs.items())},
    }


def _preview_imei(imei: int, rows: list[tuple[str, int, int, str]], now: int,
                  old: tuple[Snapshot, DecisionConfig], new: tuple[Snapshot, DecisionConfig],
                  changes: Counter[tuple[str, str, str]], pairs: Counter[str]) -> None:
    imei14 = f"{imei:014d}"
    seen_by = {dc: Sightings() for dc in {old[1], new[1]}}
    last_op: dict[str, str] = {}
    for imsi, first, last, op in rows:
        for dc, seen in seen_by.items():
            seen.add(imsi, first, last, dc.is_home(imsi or None))
        last_op[imsi] = op
    for imsi, op in last_op.items():
        a, b = (decide(snap.facts(imei14, imsi or None, None, now=now, sightings=seen_by[dc]), dc)
                for snap, dc in (old, new))
        pairs[op] += 1
        if a.status != b.status:
            changes[(op, status_name(a.status), status_name(b.status))] += 1


# -- pages of the lists and of the audit trail (the admin API) ----------------------------

_ENTRY_COLUMNS: Final = ("imei", "list", "reason", "source", "since", "note", "grace_until",
                         "evidence")
_PAIR_COLUMNS: Final = ("imei", "imsi", "reason", "source", "since", "note", "evidence")
_AUDIT_COLUMNS: Final = ("seq", "at", "kind", "count", "actor", "target", "evidence",
                         "summary", "hash")


async def entries(reg: SqliteRegistry, *, after: str = "", limit: int = 100,
                  list_: str | None = None, source: str | None = None,
                  reason: str | None = None) -> list[dict[str, Any]]:
    """List entries by IMEI after ``after`` (keyset paging), optionally filtered."""
    where, params = ["imei > ?"], [after]
    for column, value in (("list", list_), ("source", source), ("reason", reason)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    async with reg.read() as conn, conn.execute(
        f"SELECT {', '.join(_ENTRY_COLUMNS)} FROM list_entry WHERE {' AND '.join(where)}"
        " ORDER BY imei LIMIT ?", (*params, limit)
    ) as cur:
        return [dict(zip(_ENTRY_COLUMNS, row, strict=True)) for row in await cur.fetchall()]


async def entry(reg: SqliteRegistry, imei14: str) -> dict[str, Any] | None:
    """One IMEI's list entry, or None."""
    async with reg.read() as conn, conn.execute(
        f"SELECT {', '.join(_ENTRY_COLUMNS)} FROM list_entry WHERE imei = ?", (imei14,)
    ) as cur:
        row = await cur.fetchone()
    return None if row is None else dict(zip(_ENTRY_COLUMNS, row, strict=True))


async def pairs(reg: SqliteRegistry, *, after: tuple[str, str] = ("", ""), limit: int = 100,
                imei14: str | None = None, networks: Sequence[str] | None = None
                ) -> list[dict[str, Any]]:
    """Exception pairs by (IMEI, IMSI) after ``after``; ``networks``: only IMSIs starting
    with one of these MCC+MNC codes (an empty sequence: none)."""
    where: list[str] = ["(imei, imsi) > (?, ?)"]
    params: list[Any] = list(after)
    if imei14 is not None:
        where.append("imei = ?")
        params.append(imei14)
    if networks is not None:
        # substr, not LIKE: a code is digits only, but LIKE would also match '_' and '%'
        where.append("(" + (" OR ".join("substr(imsi, 1, ?) = ?" for _ in networks) or "0")
                     + ")")
        for code in networks:
            params += [len(code), code]
    async with reg.read() as conn, conn.execute(
        f"SELECT {', '.join(_PAIR_COLUMNS)} FROM exception_pair WHERE {' AND '.join(where)}"
        " ORDER BY imei, imsi LIMIT ?", (*params, limit)
    ) as cur:
        return [dict(zip(_PAIR_COLUMNS, row, strict=True)) for row in await cur.fetchall()]


async def audit_page(reg: SqliteRegistry, *, after: int = 0,
                     limit: int = 100) -> list[dict[str, Any]]:
    """Audit records with seq > ``after``, oldest first, with who, target and hash."""
    async with reg.read() as conn, conn.execute(
        f"SELECT {', '.join(_AUDIT_COLUMNS)} FROM change_log WHERE seq > ? ORDER BY seq"
        " LIMIT ?", (after, limit)
    ) as cur:
        rows = await cur.fetchall()
    out = []
    for row in rows:
        rec = dict(zip(_AUDIT_COLUMNS, row, strict=True))
        rec["action"] = rec.pop("kind")
        rec["summary"] = json.loads(rec["summary"]) if rec["summary"] else None
        out.append(rec)
    return out
