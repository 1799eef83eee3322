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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from eir.config import Config, ConfigError, load
from eir.policy import lifecycle, queries, snapshot_file
from eir.policy.model import (
    from_epoch,
    normalize_imei,
    normalize_imsi,
)
from eir.policy.registry import RowError
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


def _at(value: str | None, cfg: Config) -> int:
    if value is None:
        return int(cfg.make_clock()())
    try:
        return queries.parse_at(value)
    except ValueError as exc:
        raise CliError(f"--at: {exc}") from None


async def explain(cfg: Config, reg: SqliteRegistry, obs: SqliteObservations, imei: str,
                  imsi: str | None, sv: str | None, at: int) -> dict[str, Any]:
    """The decision for one check at ``at``, with the facts behind it; records nothing."""
    regime = await queries.point_regime(reg, obs, cfg.decision_config(), imei, at)
    return queries.explain(regime, imei, imsi, sv, at)


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
    n = cfg.notifications
    async with open_registry(cfg) as (reg, obs):
        out = await queries.show(reg, obs, imei14, dc=cfg.decision_config(),
                                 now=int(cfg.make_clock()()), offsets_days=n.offsets_days,
                                 at_expiry=n.at_expiry)
    print(json.dumps(out, indent=2, default=str))
    return 0


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
    tty = sys.stderr.isatty()

    def shown(n: int) -> None:
        if tty:
            print(f"\reir: preview: {n:,} observations", end="", file=sys.stderr)

    async with open_registry(cfg) as (reg, _obs):
        out = await queries.preview(reg, cfg.decision_config(), new_cfg.decision_config(),
                                    _at(at, cfg), on_rows=shown)
    if tty:
        print(file=sys.stderr)
    print(json.dumps(out, indent=2))
    return 0
