"""Where the regime's time goes: CPU µs per check of each piece of `Regime.check`, in-process.

Usage (from the repository root)::

    .venv/bin/python -m bench.regime_path               # the regime_bench registry (10M/1M/150k)
    .venv/bin/python -m bench.regime_path --smoke       # ~10k entries (CI)

``bench.regime_bench`` measures the whole server; this takes its cached
registry and query list (built by it, or here, the same way) and times the
pieces of the S13 decision path with ``time.process_time`` (so other busy
processes disturb it less than wall-clock figures), over the whole query list:

- `Regime.check` with the plain list order and with the full regime, on a
  fresh observation cache: the first pass (every pair a first sighting: a
  point read of the IMEI's history in SQLite, a row queued, grace clocks
  noted) and the second pass (histories in the hot set); the garbage
  collector's share of each (``gc.callbacks``);
- the pieces on the hot set: IMEI/IMSI normalisation, `Snapshot.lookup_full`,
  `TacTable.lookup`, `SightingCache.observe` (hot, and first sighting with and
  without the garbage collector, and the store read alone), building `Facts`,
  `decide` under each rule order, the per-decision counter;
- the writes behind the hot path: `SightingCache.flush` per row,
  `notify.start_clocks` per clock, `write_counts`.

The numbers are per check (or per row / clock written); a table goes to
stderr and JSON to stdout. Nothing is asserted: figures vary with the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.ecr_bench import (
    DEFAULT_TAC_ROWS,
    POLICIES,
    Sizes,
    log,
    parse_mix,
    prepare,
    remove_db,
)
from bench.regime_bench import DEFAULT_MIX
from eir.policy import notify
from eir.policy.engine import DecisionConfig, decide
from eir.policy.model import Facts, normalize_imei, normalize_imsi
from eir.policy.observations import SightingCache
from eir.policy.regime import Regime
from eir.policy.sqlite import SqliteRegistry
from eir.policy.sqlite_regime import SqliteObservations

SV = "01"
OPERATOR = "bench"


class GcTimer:
    """Time spent in the garbage collector, and collections per generation."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self._t0 = 0.0

    def __enter__(self) -> GcTimer:
        gc.callbacks.append(self._cb)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._cb)

    def _cb(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._t0
            self.collections[info["generation"]] += 1


def timed(fn: Callable[[], object], n: int) -> dict[str, Any]:
    """CPU µs per item of ``fn`` (a loop over n items) and the collector's share."""
    gc.collect()
    with GcTimer() as g:
        c0 = time.process_time()
        fn()
        cpu = time.process_time() - c0
    return {"us": round(cpu * 1e6 / n, 2), "gc_us": round(g.seconds * 1e6 / n, 2),
            "collections": g.collections}


async def measure(db: Path, items: list[tuple[str, str]]) -> dict[str, Any]:
    n = len(items)
    out: dict[str, Any] = {"checks": n}
    reg = SqliteRegistry(str(db))
    await reg.open()
    try:
        t0 = time.perf_counter()
        snap = await reg.load_snapshot()
        out["snapshot_load_s"] = round(time.perf_counter() - t0, 2)
        obs = SqliteObservations(reg)
        cfgs = {m: DecisionConfig(rule_order=order) for m, order in POLICIES.items()}
        now = int(time.time())
        checks: dict[str, Any] = {}
        regime: Regime | None = None
        for mode in ("plain", "regime"):
            cache = SightingCache(obs, cfgs[mode].is_home)
            regime = Regime(snap, cfgs[mode], cache)
            check = regime.check

            def run() -> None:
                for imei, imsi in items:
                    check(imei, imsi, SV, OPERATOR)  # noqa: B023 (called right away)

            first = timed(run, n)
            second = timed(run, n)
            checks[mode] = {"first_pass": first, "second_pass": second,
                            "cache_misses": cache.misses, "rows_queued": cache.pending,
                            "clocks_noted": len(regime.clock_starts)}
            log(f"Regime.check, {mode}: first pass {first['us']} µs, second {second['us']} µs")
        out["check"] = checks
        assert regime is not None
        hot = regime.cache
        keys = []
        for imei, imsi in items:
            imei14 = normalize_imei(imei)
            assert imei14 is not None
            keys.append((int(imei14), normalize_imsi(imsi)))
        tac = snap.tac
        pieces: dict[str, dict[str, Any]] = {}

        def piece(name: str, fn: Callable[[], object]) -> None:
            pieces[name] = timed(fn, n)

        def normalise() -> None:
            for imei, imsi in items:
                normalize_imei(imei)
                normalize_imsi(imsi)

        def lookups() -> None:
            for k, s in keys:
                snap.lookup_full(k, s, SV)

        def tacs() -> None:
            for k, _s in keys:
                tac.lookup(k // 1_000_000)

        def observe_hot() -> None:
            for k, s in keys:
                hot.observe(k, s, OPERATOR, now)

        piece("normalize_imei + normalize_imsi", normalise)
        piece("Snapshot.lookup_full", lookups)
        piece("TacTable.lookup", tacs)
        piece("SightingCache.observe, hot", observe_hot)
        fresh = SightingCache(obs, cfgs["regime"].is_home)

        def observe_first() -> None:
            for k, s in keys:
                fresh.observe(k, s, OPERATOR, now)

        piece("SightingCache.observe, first sighting", observe_first)
        fresh_nogc = SightingCache(obs, cfgs["regime"].is_home)

        def observe_first_nogc() -> None:
            gc.disable()
            try:
                for k, s in keys:
                    fresh_nogc.observe(k, s, OPERATOR, now)
            finally:
                gc.enable()

        piece("SightingCache.observe, first sighting, gc disabled", observe_first_nogc)

        def reads() -> None:
            for k, _s in keys:
                obs.read_sightings(k)

        piece("SqliteObservations.read_sightings alone", reads)
        facts: list[Facts] = []
        for (k, s), (imei, _raw) in zip(keys, items, strict=True):
            entry, since, grace, pair = snap.lookup_full(k, s, SV)
            cls = tac.lookup(k // 1_000_000)
            seen, _new = hot.observe(k, s, OPERATOR, now)
            facts.append(Facts(imei=imei, imei14=imei[:14], imsi=s, software_version=SV,
                               entry=entry, pair_is_exception=pair, now=now, entry_since=since,
                               entry_grace_until=grace, tac_known=cls is not None,
                               device_class=cls, sightings=seen, operator=OPERATOR))

        def build() -> None:
            for f in facts:
                Facts(imei=f.imei, imei14=f.imei14, imsi=f.imsi, software_version=SV,
                      entry=f.entry, pair_is_exception=f.pair_is_exception, now=now,
                      entry_since=f.entry_since, entry_grace_until=f.entry_grace_until,
                      tac_known=f.tac_known, device_class=f.device_class,
                      sightings=f.sightings, operator=OPERATOR)

        piece("Facts(...)", build)
        for mode, cfg in cfgs.items():
            def decide_all(cfg: DecisionConfig = cfg) -> None:
                for f in facts:
                    decide(f, cfg)

            piece(f"decide, {mode} order", decide_all)
        decisions = [decide(f, cfgs["regime"]) for f in facts]
        counter: Counter[tuple[str, int | None, str]] = Counter()

        def count() -> None:
            for d in decisions:
                counter[(OPERATOR, d.status, d.reason)] += 1

        piece("counts[(operator, status, reason)] += 1", count)
        out["pieces"] = pieces
        writes: dict[str, Any] = {}
        c0 = time.process_time()
        rows = await fresh.flush()
        writes["flush_us_per_row"] = round((time.process_time() - c0) * 1e6 / max(rows, 1), 2)
        writes["flush_rows"] = rows
        starts = regime.take_clock_starts()
        c0 = time.process_time()
        added = await notify.start_clocks(reg, starts, (0.0, 20.0, 27.0), True)
        writes["start_clocks_us_per_clock"] = round(
            (time.process_time() - c0) * 1e6 / max(added, 1), 2)
        writes["clocks"] = added
        c0 = time.process_time()
        await obs.write_counts(regime.take_counts(), now)
        writes["write_counts_ms"] = round((time.process_time() - c0) * 1e3, 2)
        out["writes"] = writes
        obs.close()
    finally:
        await reg.close()
    return out


def table(f: dict[str, Any]) -> str:
    lines = [f"CPU µs per check over {f['checks']:,} checks (gc: the collector's share)",
             f"{'':56} {'µs':>8} {'gc µs':>8}"]
    for mode, c in f["check"].items():
        for p in ("first_pass", "second_pass"):
            r = c[p]
            lines.append(f"{'Regime.check, ' + mode + ', ' + p.replace('_', ' '):56} "
                         f"{r['us']:8.2f} {r['gc_us']:8.2f}")
    for name, r in f["pieces"].items():
        lines.append(f"{'  ' + name:56} {r['us']:8.2f} {r['gc_us']:8.2f}")
    w = f["writes"]
    lines.append(f"SightingCache.flush: {w['flush_us_per_row']} µs CPU per row "
                 f"({w['flush_rows']:,} rows); notify.start_clocks: "
                 f"{w['start_clocks_us_per_clock']} µs per clock ({w['clocks']:,}); "
                 f"write_counts {w['write_counts_ms']} ms")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.regime_path",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--white", type=int, default=10_000_000)
    p.add_argument("--grey", type=int, default=1_000_000)
    p.add_argument("--black", type=int, default=150_000)
    p.add_argument("--mix", default=DEFAULT_MIX)
    p.add_argument("--queries", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tac-rows", type=int, default=DEFAULT_TAC_ROWS)
    p.add_argument("--cache-dir", type=Path,
                   default=Path.home() / ".cache" / "eir-bench")
    p.add_argument("--json-out", type=Path)
    p.add_argument("--smoke", action="store_true", help="~10k entries, 5k queries (CI)")
    args = p.parse_args(argv)
    if args.smoke:
        args.white, args.grey, args.black = 8_800, 1_000, 200
        args.queries, args.tac_rows = 5_000, min(args.tac_rows, 2_000)
    try:
        prep = prepare(Sizes(args.white, args.grey, args.black), args.seed, args.queries,
                       parse_mix(args.mix), args.tac_rows, args.cache_dir)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    items = [(q.imei, q.imsi) for q in prep.queries]
    with tempfile.TemporaryDirectory(prefix="eir-regime-path-") as tmp:
        db = Path(tmp) / "registry.db"
        shutil.copyfile(prep.db, db)
        try:
            figures = asyncio.run(measure(db, items))
        finally:
            remove_db(db)
    figures["registry"] = prep.meta
    print(table(figures), file=sys.stderr)
    text = json.dumps(figures)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
