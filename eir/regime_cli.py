"""The regime commands a person runs: lifecycle actions, dry runs, previews, audit, stats.

Owns what operators and the ministry see of the national regime from the
command line: ``eir decide`` (a decision and the rule behind it, observing
nothing), ``eir policy preview --with NEW.toml`` (how many devices per
operator would change status), the lifecycle actions of
`eir.policy.lifecycle`, TAC and history imports, ``eir registry show`` with
its history and deadlines, ``eir audit verify`` and ``eir stats``. Errors
are one line naming the problem; nothing stored changes on an error.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from eir.config import Config, ConfigError, load
from eir.policy import lifecycle, notify, snapshot_file
from eir.policy.engine import DecisionConfig, decide
from eir.policy.model import (
    Sightings,
    from_epoch,
    normalize_imei,
    normalize_imsi,
    to_epoch,
)
from eir.policy.observations import SightingCache
from eir.policy.ranges import RangeEntry
from eir.policy.regime import Regime, status_name
from eir.policy.registry import RowError, Snapshot
from eir.policy.sqlite import SqliteRegistry
from eir.policy.sqlite_regime import (
    SqliteObservations,
    parse_observation_csv,
    parse_tac_csv,
)
from eir.registry_cli import row_progress


class CliError(Exception):
    """A one-line error for the person at the terminal."""


def fail(message: str) -> int:
    print(f"eir: {message}", file=sys.stderr)
    return 1


def load_config(path: str | None, db: str | None) -> Config:
    return load(path, {"registry": {"db": db} if db else {}})


@asynccontextmanager
async def open_registry(cfg: Config, *, must_exist: bool = True
                        ) -> AsyncIterator[tuple[SqliteRegistry, SqliteObservations]]:
    db = cfg.registry.db
    if must_exist and not Path(db).is_file():
        raise CliError(f"{db}: no such registry")
    reg = SqliteRegistry(db, exception_cap=cfg.policy.exception_cap)
    obs = SqliteObservations(reg)
    await reg.open()
    try:
        yield reg, obs
    finally:
        obs.close()
        await reg.close()


_AT_RANGE = (0, to_epoch("9000-01-01T00:00:00Z"))  # deadlines must stay printable


def _at(value: str | None, cfg: Config) -> int:
    if value is None:
        return int(cfg.make_clock()())
    try:
        at = to_epoch(value)
    except ValueError as exc:
        raise CliError(f"--at: {exc}") from None
    if not _AT_RANGE[0] <= at < _AT_RANGE[1]:
        raise CliError(f"--at: {value!r} is outside 1970 to 9000")
    return at


async def explain(cfg: Config, reg: SqliteRegistry, obs: SqliteObservations, imei: str,
                  imsi: str | None, sv: str | None, at: int,
                  dc: DecisionConfig | None = None) -> dict[str, Any]:
    """The decision for one check at ``at``, with the facts behind it; records nothing."""
    imei14 = normalize_imei(imei)
    dc = dc or cfg.decision_config()
    snapshot = await reg.point_snapshot(imei14) if imei14 is not None else \
        await reg.point_snapshot("0" * 14)
    regime = Regime(snapshot, dc, SightingCache(obs, dc.is_home), clock=lambda: float(at))
    d, facts = regime.dry_run(imei, imsi, sv, at=at)
    out: dict[str, Any] = {
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
            "first_home_sighting": from_epoch(facts.sightings.first_home)
            if facts.sightings is not None and facts.sightings.first_home is not None else None,
            "imsis_seen": len([k for k in (facts.sightings.imsis if facts.sightings else {})
                               if k]),
        },
    }
    return out


async def decide_cmd(config: str | None, db: str | None, imei: str, imsi: str | None,
                     sv: str | None, at: str | None) -> int:
    cfg = load_config(config, db)
    if imsi is not None and normalize_imsi(imsi) is None:
        raise CliError(f"--imsi {imsi!r} is not 5 to 15 decimal digits")
    async with open_registry(cfg) as (reg, obs):
        out = await explain(cfg, reg, obs, imei, imsi, sv, _at(at, cfg))
    print(json.dumps(out, indent=2))
    return 0


async def show_cmd(config: str | None, db: str | None, imei: str) -> int:
    cfg = load_config(config, db)
    imei14 = normalize_imei(imei)
    if imei14 is None:
        raise CliError(f"{imei!r} is not an IMEI (14 or 15 decimal digits)")
    async with open_registry(cfg) as (reg, obs):
        out = await reg.show(imei14)
        now = int(cfg.make_clock()())
        d = await explain(cfg, reg, obs, imei14, None, None, now)
        out["decision_now"] = {k: d[k] for k in ("at", "status", "reason", "rule", "deadline")}
        out["observations"] = await obs.history(imei14)
        out["history"] = await reg.history(imei14)
        out["range_entries"] = [
            {"first": f"{r.lo:014d}", "last": f"{r.hi:014d}", "sv": r.sv,
             "list": r.entry.list.value, "reason": r.entry.reason}
            for r in _covering_ranges(await reg.point_snapshot(imei14))]
        n = cfg.notifications
        out["pending_deadlines"] = await notify.pending_deadline(
            reg, imei14, offsets_days=n.offsets_days, at_expiry=n.at_expiry)
        out["notifications"] = await notify.list_outbox(reg, imei=imei14)
    print(json.dumps(out, indent=2, default=str))
    return 0


def _covering_ranges(snapshot: Snapshot) -> tuple[RangeEntry, ...]:
    return snapshot.ranges.entries if snapshot.ranges is not None else ()


async def lifecycle_cmd(config: str | None, db: str | None, action: str, imei: str,
                        *, command: str | None = None, **kw: Any) -> int:
    """Run one lifecycle action; ``command`` is the name the person typed, for messages."""
    shown = command or action
    cfg = load_config(config, db)
    async with open_registry(cfg) as (reg, _obs):
        try:
            if action == "legalise":
                seq = await lifecycle.legalise(reg, imei, **kw)
            elif action in ("stolen", "lost"):
                seq = await lifecycle.report(reg, imei, reason=action, **kw)
            elif action == "recovered":
                seq = await lifecycle.recovered(reg, imei, **kw)
            elif action == "exception-add":
                seq = await lifecycle.add_exception(reg, imei, **kw)
            else:
                seq = await lifecycle.remove_exception(reg, imei, **kw)
        except lifecycle.LifecycleError as exc:
            raise CliError(f"{shown}: {exc}; nothing changed") from None
    print(f"eir: {shown} {imei}: done (audit record {seq}); a running server applies it "
          "within its reload period", file=sys.stderr)
    return 0


def _read_text(path: Path) -> tuple[bytes, list[str]]:
    if not path.is_file():
        raise CliError(f"{path}: no such file")
    data = path.read_bytes()
    try:
        return data, data.decode("utf-8-sig").splitlines(keepends=True)
    except UnicodeDecodeError as exc:
        raise CliError(f"{path}: not valid UTF-8 ({exc.reason}); nothing was imported") from None


async def import_tac_cmd(db: str | None, path: Path, actor: str | None = None) -> int:
    cfg = load_config(None, db)
    data, lines = _read_text(path)  # before opening: a bad file must not create a registry
    t0 = time.perf_counter()
    async with open_registry(cfg, must_exist=False) as (_reg, obs):
        try:
            with row_progress(f"importing TACs from {path.name}") as report:
                n = await obs.import_tac(parse_tac_csv(lines), actor=actor, on_chunk=report,
                                         summary={"file_sha256": hashlib.sha256(data).hexdigest()})
        except RowError as exc:
            raise CliError(f"{path}: {exc}; nothing was imported") from None
    print(f"eir: imported {n:,} TACs from {path} in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
    return 0


async def import_observations_cmd(db: str | None, path: Path, actor: str | None = None) -> int:
    cfg = load_config(None, db)
    data, lines = _read_text(path)
    async with open_registry(cfg, must_exist=False) as (_reg, obs):
        try:
            with row_progress(f"importing observations from {path.name}") as report:
                n = await obs.import_history(
                    parse_observation_csv(lines), on_chunk=report, actor=actor,
                    summary={"file_sha256": hashlib.sha256(data).hexdigest()})
        except RowError as exc:
            raise CliError(f"{path}: {exc}; nothing was imported") from None
    print(f"eir: imported {n:,} observations from {path}", file=sys.stderr)
    return 0


async def audit_verify_cmd(db: str | None, expect_head: str | None) -> int:
    cfg = load_config(None, db)
    async with open_registry(cfg) as (reg, _obs):
        result = await reg.verify_audit()
    if not result.ok:
        return fail(f"audit trail BROKEN after {result.records - 1} good record(s): "
                    f"{result.problem}")
    if expect_head is not None and expect_head != result.head:
        return fail(f"audit trail head is {result.head}, not the expected {expect_head}: "
                    "records were rewritten or the trail is not the one recorded")
    print(f"eir: audit trail intact: {result.records} record(s), head {result.head}")
    return 0


async def audit_log_cmd(db: str | None, limit: int) -> int:
    cfg = load_config(None, db)
    async with open_registry(cfg) as (reg, _obs):
        records = [r async for r in reg.audit_records()]
    for r in records[-limit:] if limit > 0 else []:
        print(json.dumps({"seq": r.seq, "at": r.at, "action": r.kind, "actor": r.actor,
                          "target": r.target, "evidence": r.evidence, "count": r.count,
                          "summary": json.loads(r.summary) if r.summary else None,
                          "hash": r.hash}))
    return 0


async def stats_cmd(db: str | None, day: str | None) -> int:
    cfg = load_config(None, db)
    if day is not None:
        try:
            datetime.strptime(day, "%Y-%m-%d")
        except ValueError:
            raise CliError(f"--day {day!r} is not a date YYYY-MM-DD") from None
    async with open_registry(cfg) as (_reg, obs):
        rows = await obs.counts(day)
    if not rows:
        print("eir: no decisions counted yet", file=sys.stderr)
        return 0
    print(f"{'day':10}  {'operator':32}  {'status':11}  {'reason':24}  {'count':>10}")
    for r in rows:
        print(f"{r['day']:10}  {r['operator'][:32]:32}  {r['status']:11}  "
              f"{r['reason'][:24]:24}  {r['count']:>10,}")
    return 0


async def prune_cmd(config: str | None, db: str | None) -> int:
    cfg = load_config(config, db)
    before = int(cfg.make_clock()() - cfg.observations.retention_days * 86400)
    async with open_registry(cfg) as (_reg, obs):
        n = await obs.prune(before)
    print(f"eir: pruned {n:,} observations not seen since {from_epoch(before)}",
          file=sys.stderr)
    return 0


async def snapshot_cmd(config: str | None, db: str | None) -> int:
    """Rebuild ``<db>.snapshot`` now: after an import (the next start reads it), or after
    an edit made outside the EIR, which changes no key."""
    cfg = load_config(config, db)
    t0 = time.perf_counter()
    async with open_registry(cfg) as (reg, _obs):
        snap = await reg.rebuild_snapshot_file()
        key = await reg.snapshot_key()
    path = snapshot_file.path_for(reg.path)
    if snapshot_file.load(path, key) is None:
        raise CliError(f"{path}: the snapshot file could not be written (see the warning)")
    print(f"eir: snapshot of version {snap.version} ({snap.entry_count:,} entries) in {path} "
          f"({path.stat().st_size / 1e6:,.0f} MB, {time.perf_counter() - t0:.1f} s)",
          file=sys.stderr)
    return 0


async def preview_cmd(config: str | None, db: str | None, new_path: str,
                      at: str | None) -> int:
    """How many observed devices per operator would change status under NEW config."""
    cfg = load_config(config, db)
    try:
        new_cfg = load(new_path)
    except ConfigError as exc:
        raise CliError(f"--with {new_path}: {exc}") from None
    old_dc, new_dc = cfg.decision_config(), new_cfg.decision_config()
    now = _at(at, cfg)
    changes: Counter[tuple[str, str, str]] = Counter()
    pairs: Counter[str] = Counter()
    t0 = time.perf_counter()
    async with open_registry(cfg) as (reg, _obs):
        snapshot = await reg.load_snapshot()
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
                            _preview_imei(snapshot, current, rows, now, old_dc, new_dc,
                                          changes, pairs)
                        current, rows = imei, []
                    rows.append((imsi, first, last, op))
                    n += 1
                if sys.stderr.isatty():
                    print(f"\reir: preview: {n:,} observations", end="", file=sys.stderr)
            if current is not None:
                _preview_imei(snapshot, current, rows, now, old_dc, new_dc, changes, pairs)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    out = {
        "at": from_epoch(now), "devices_checked": sum(pairs.values()),
        "seconds": round(time.perf_counter() - t0, 2),
        "by_operator": {op: {"devices": total,
                             "would_change": sum(v for (o, _, _), v in changes.items()
                                                 if o == op),
                             "transitions": {f"{a}->{b}": v for (o, a, b), v in
                                             sorted(changes.items()) if o == op}}
                        for op, total in sorted(pairs.items())},
    }
    print(json.dumps(out, indent=2))
    return 0


def _preview_imei(snapshot: Any, imei: int, rows: list[tuple[str, int, int, str]], now: int,
                  old: DecisionConfig, new: DecisionConfig,
                  changes: Counter[tuple[str, str, str]], pairs: Counter[str]) -> None:
    # One device = one (IMEI, IMSI) pair, counted for the operator that saw it last.
    imei14 = f"{imei:014d}"
    seen_by = {dc: Sightings() for dc in {old, new}}
    last_op: dict[str, str] = {}
    for imsi, first, last, op in rows:
        for dc, seen in seen_by.items():
            seen.add(imsi, first, last, dc.is_home(imsi or None))
        last_op[imsi] = op
    for imsi, op in last_op.items():
        a = decide(snapshot.facts(imei14, imsi or None, None, now=now, sightings=seen_by[old]),
                   old)
        b = decide(snapshot.facts(imei14, imsi or None, None, now=now, sightings=seen_by[new]),
                   new)
        pairs[op] += 1
        if a.status != b.status:
            changes[(op, status_name(a.status), status_name(b.status))] += 1
