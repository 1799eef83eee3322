"""What the national regime costs: ECR/s with the full regime next to the plain list lookup.

Usage (from the repository root)::

    .venv/bin/python -m bench.regime_bench              # 10M white, 150k black, 1M grey
    .venv/bin/python -m bench.regime_bench --smoke      # ~10k entries, 2 s per server (CI)

The requirement (issue): "The policy must not cost the server more than a
fifth of its throughput": ECR/s with the full regime on must be at least
0.80 of ECR/s with the plain list lookup, measured in the same run.

Steps:

1. One registry, built with the real CLI and cached like ``bench.ecr_bench``
   does (``--white``, ``--grey``, ``--black``; a TAC database covering every
   TAC used, a few percent of them M2M; the sighting history of a few clone
   IMEIs), and one query list over it: white, grey, black, unknown IMEIs and
   exception pairs asked with home IMSIs (MCC 401), plus a few percent of
   inbound roamers and of clone-suspected IMEIs.
2. The SAME query list, load shape and duration against two servers, each on
   a fresh copy of the database:

   - ``plain``: ``[policy] rule_order`` = the plain list lookup
     (malformed, paired_exception, black, white, grey, unknown);
   - ``regime``: the full default rule order (roaming, unknown TAC, exempt
     class, clones, grandfathering too), observations recorded and flushed.

   Each query's expected answer is set per run from its facts (an M2M IMEI
   on the grey list is GREYLISTED in the plain run, WHITELISTED
   exempt_class in the regime run) and every answer is checked.
3. Print both runs' ECR/s, latency percentiles, server CPU per answer,
   observation rows and grace clocks written, and the ratio regime/plain
   (throughput, and by server CPU per answer, the figure that noise on a
   shared machine disturbs least) as a table on stderr and JSON on stdout.

Exit status: 0 every answer right and none lost; 1 a check failed; 2 a step
failed. A ratio below the target is reported (``target_met``), not an exit
status: CI machines are shared. ``--rounds N`` alternates the two runs N
times (plain first, then regime first, ...) and reports the medians.
"""

from __future__ import annotations

import argparse
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.ecr_bench import (
    POLICIES,
    Outcome,
    Sizes,
    add_common_args,
    bench_eir,
    check_eir,
    figure_rows,
    greylisted_pairs,
    log,
    parse_mix,
    policy_toml,
    prepare,
    render,
    settings_of,
    smoke_settings,
    write_queries,
)

DEFAULT_MIX = "white=25,grey=25,black=20,unknown=20,exception=5,roamer=3,clone=2"
MODES = ("plain", "regime")
TARGET_RATIO = 0.80
# Reasons only the regime's own rules give (POLICY.md steps 4 to 7 and 11).
PER_ECR_CALLS = 0.01  # profile rows of functions called less often are start-up or loop
REGIME_REASONS = ("roaming_exempt", "unknown_tac", "exempt_class", "clone_suspected")


def phase_rates(timeline: list[int], first: int) -> dict[str, float | None]:
    """Answers/s while the first ``first`` answers came back (the first pass over the query
    list: every query a first sighting) and after it (repeats: the hot set), from the load
    generator's 1 s timeline of the whole run (warm-up included, the last partial second
    left out)."""
    full = timeline[:-1]
    cum = 0
    for i, n in enumerate(full):
        if n and cum + n >= first:
            frac = (first - cum) / n
            t_cross = i + frac
            after = full[i + 1:]
            repeat_s = (1 - frac) + len(after)
            repeat_n = n - (first - cum) + sum(after)
            return {"first_pass_s": round(t_cross, 2),
                    "first_pass_rate": round(first / t_cross) if t_cross else None,
                    "repeat_rate": round(repeat_n / repeat_s) if repeat_s >= 1 else None}
        cum += n
    return {"first_pass_s": None,
            "first_pass_rate": round(cum / len(full)) if full else None, "repeat_rate": None}


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median rate (the lower one of an even count)."""
    ok = sorted((r for r in runs if r.get("rate")), key=lambda r: r["rate"])
    return ok[(len(ok) - 1) // 2] if ok else (runs[0] if runs else {})


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v]
    return statistics.median(vals) if vals else None


def summarise(results: dict[str, list[dict[str, Any]]], history_rows: int, n_queries: int,
              target: float) -> dict[str, Any]:
    """Ratios regime/plain (medians over rounds) and the per-run figures to report."""
    for runs in results.values():
        for r in runs:
            if r.get("timeline"):
                r["phases"] = phase_rates(r["timeline"], n_queries)
            db = r.get("db_after", {})
            if "observations" in db:
                r["observations_written"] = db["observations"] - history_rows
            if "grace_clocks" in db:
                r["grace_clocks_started"] = db["grace_clocks"]
    rate = {m: _median([r.get("rate") for r in results[m]]) for m in MODES}
    cpu = {m: _median([r.get("server_cpu_us_per_answer") for r in results[m]]) for m in MODES}
    ratio = round(rate["regime"] / rate["plain"], 3) if rate["regime"] and rate["plain"] \
        else None
    ratio_cpu = round(cpu["plain"] / cpu["regime"], 3) if cpu["regime"] and cpu["plain"] \
        else None
    rounds = [round(a["rate"] / b["rate"], 3) if a.get("rate") and b.get("rate") else None
              for a, b in zip(results["regime"], results["plain"], strict=True)]
    phase = {m: {k: _median([r.get("phases", {}).get(k) for r in results[m]])
                 for k in ("first_pass_rate", "repeat_rate")} for m in MODES}
    return {"rate": rate, "cpu_us_per_answer": cpu, "ratio": ratio, "ratio_by_cpu": ratio_cpu,
            "ratio_per_round": rounds, "phases": phase, "target_ratio": target,
            "target_met": bool(ratio is not None and ratio >= target)}


def table(f: dict[str, Any]) -> str:
    runs = [f["runs"][m] for m in MODES]
    rows = figure_rows(runs)

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}" if a and b else "-"

    def lat(r: dict[str, Any], k: str) -> float | None:
        v = r.get("latency_us", {}).get(k)
        return float(v) if v is not None else None

    extra = {"answers/s": ratio(runs[1].get("rate"), runs[0].get("rate")),
             "server CPU per answer (us)": ratio(runs[1].get("server_cpu_us_per_answer"),
                                                 runs[0].get("server_cpu_us_per_answer"))}
    for k in ("p50", "p90", "p99", "p99.9", "max"):
        extra[f"latency {k} (ms)"] = ratio(lat(runs[1], k), lat(runs[0], k))
    table_rows = [(name, [*vals, extra.get(name, "")]) for name, vals in rows]

    def num(r: dict[str, Any], *keys: str, fmt: str = "{:,}") -> str:
        v: Any = r
        for k in keys:
            v = v.get(k) if isinstance(v, dict) else None
        return "-" if v is None else fmt.format(v)

    table_rows += [
        (name, [num(r, "phases", key) for r in runs]
         + [ratio(runs[1].get("phases", {}).get(key), runs[0].get("phases", {}).get(key))])
        for name, key in (("answers/s, first pass (all new)", "first_pass_rate"),
                          ("answers/s, repeats (hot set)", "repeat_rate"))]
    table_rows += [
        ("mismatched answers", [num(r, "mismatches") for r in runs] + [""]),
        ("observation rows written", [num(r, "observations_written") for r in runs] + [""]),
        ("grace clocks started", [num(r, "grace_clocks_started") for r in runs] + [""]),
        ("new grey pairs without a clock", [num(r, "clock_gaps", "without_clock")
                                            for r in runs] + [""]),
        ("snapshot load (s)", [num(r, "snapshot", "load_s", fmt="{:.1f}") for r in runs] + [""]),
        ("server RSS when ready (MB)", [num(r, "server_rss_mb", fmt="{:,.0f}") for r in runs]
         + [""]),
    ]
    lines = render([*MODES, "regime/plain"], table_rows)
    s = f["summary"]
    if s["ratio"] is not None:
        lines.append(f"regime/plain throughput: {s['ratio']:.2f} (target >= "
                     f"{s['target_ratio']:.2f}: {'met' if s['target_met'] else 'NOT met'}); "
                     f"by server CPU per answer: "
                     f"{s['ratio_by_cpu'] if s['ratio_by_cpu'] is not None else '-'}")
    if len(s["ratio_per_round"]) > 1:
        lines.append(f"rounds: {len(s['ratio_per_round'])}, medians above; ratio per round "
                     f"{s['ratio_per_round']}")
    for m in MODES:
        for r in f["all_runs"][m] if f.get("all_runs") else [f["runs"][m]]:
            gaps = r.get("clock_gaps", {})
            if gaps.get("without_clock"):
                lines.append(f"WARNING: {r.get('label', m)}: {gaps['without_clock']:,} of "
                             f"{gaps['greylisted_pairs_first_seen']:,} pairs first answered "
                             "GREYLISTED have no grace clock after the server stopped")
    for m, r in zip(MODES, runs, strict=True):
        top = sorted(r.get("decisions", {}).items(), key=lambda kv: -kv[1])
        if top:
            total = sum(n for _, n in top)
            lines.append(f"{m} decisions: " + ", ".join(
                f"{k} {100 * n / total:.1f}%" for k, n in top))
        if r.get("verdict"):
            lines.append(f"{m}: {r['verdict']}")
    return "\n".join(lines)


# -- profiles --------------------------------------------------------------------------------


def _label(key: tuple[str, int, str]) -> str:
    file, line, func = key
    if file == "~":
        return func
    parts = Path(file).parts
    short = "/".join(parts[parts.index("eir"):]) if "eir" in parts else Path(file).name
    return f"{short}:{line}({func})"


def profile_costs(path: Path, answered: int) -> dict[str, tuple[float, float, float]]:
    """function -> (own µs per ECR, cumulative µs per ECR, calls per ECR) over a server's life."""
    stats = pstats.Stats(str(path), stream=io.StringIO())
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    n = max(answered, 1)
    return {_label(k): (tt * 1e6 / n, ct * 1e6 / n, nc / n)
            for k, (_cc, nc, tt, ct, _callers) in raw.items()}


def profile_report(paths: dict[str, Path], answered: dict[str, int], top: int = 30) -> str:
    """The regime server's top functions by own time, per ECR, next to the plain server's."""
    costs = {m: profile_costs(p, answered[m]) for m, p in paths.items() if p.exists()}
    if "regime" not in costs:
        return "no regime profile was written"
    reg, plain = costs["regime"], costs.get("plain", {})
    lines = [f"cProfile, µs per ECR answered (regime {answered['regime']:,} ECRs, plain "
             f"{answered.get('plain', 0):,}), functions called at least once per "
             f"{int(1 / PER_ECR_CALLS)} ECRs (start-up and the event loop left out); cProfile "
             "inflates small functions and hides the garbage collector's time in whatever "
             "function triggered it",
             f"{'own regime':>10} {'own plain':>10} {'delta':>7} {'cum regime':>10} "
             f"{'calls/ECR':>9}  function"]
    per_ecr = {name: v for name, v in reg.items() if v[2] >= PER_ECR_CALLS}
    for name, (tt, ct, nc) in sorted(per_ecr.items(), key=lambda kv: -kv[1][0])[:top]:
        p = plain.get(name, (0.0, 0.0, 0.0))
        lines.append(f"{tt:10.2f} {p[0]:10.2f} {tt - p[0]:+7.2f} {ct:10.2f} {nc:9.2f}  {name}")
    lines.append("largest own-time increases, regime - plain:")
    deltas = sorted(((tt - plain.get(name, (0.0, 0.0, 0.0))[0], name)
                     for name, (tt, _ct, _nc) in per_ecr.items()), reverse=True)[:12]
    lines += [f"{d:+10.2f}  {name}" for d, name in deltas]
    total = {m: sum(v[0] for v in c.values() if v[2] >= PER_ECR_CALLS)
             for m, c in costs.items()}
    lines.append("own time in these functions per ECR: " +
                 ", ".join(f"{m} {t:.2f} µs" for m, t in total.items()))
    return "\n".join(lines)


# -- the run ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.regime_bench",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--white", type=int, default=10_000_000, help="white entries (10,000,000)")
    p.add_argument("--grey", type=int, default=1_000_000, help="grey entries (1,000,000)")
    p.add_argument("--black", type=int, default=150_000, help="black entries (150,000)")
    p.add_argument("--mix", default=DEFAULT_MIX, help=f"query mix ({DEFAULT_MIX})")
    p.add_argument("--unknown-policy", choices=("reject", "greylist"), default="greylist",
                   help="policy.unknown_equipment in both runs (greylist, the regime's default)")
    add_common_args(p)
    p.add_argument("--rounds", type=int, default=1,
                   help="alternate the two runs this many times; medians are reported (1)")
    p.add_argument("--target-ratio", type=float, default=TARGET_RATIO,
                   help=f"regime/plain throughput to call the target met ({TARGET_RATIO})")
    p.add_argument("--profile", type=Path, metavar="PREFIX",
                   help="run both EIRs under cProfile: PREFIX-plain.prof, PREFIX-regime.prof")
    p.add_argument("--smoke", action="store_true",
                   help="tiny run for CI: ~10k entries, 5k queries, 2 s per server")
    args = p.parse_args(argv)
    if args.smoke:
        args.white, args.grey, args.black = 8_800, 1_000, 200
        smoke_settings(args)
    if args.warmup >= args.duration:
        p.error("--warmup must be shorter than --duration")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    mix = parse_mix(args.mix)
    t_all = time.monotonic()
    out = Outcome()
    try:
        prep = prepare(Sizes(args.white, args.grey, args.black), args.seed, args.queries, mix,
                       args.tac_rows, args.cache_dir)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    from bench.loadgen import generator_verdict

    results: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    expected: dict[str, dict[str, float]] = {}
    profiles: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="eir-regime-bench-") as tmp:
        work = Path(tmp)
        files = {m: work / f"queries-{m}.csv" for m in MODES}
        greylisted: dict[str, set[tuple[int, str]]] = {}
        for m in MODES:
            expected[m] = write_queries(prep.queries, POLICIES[m], args.unknown_policy, files[m])
            greylisted[m] = greylisted_pairs(prep.queries, POLICIES[m], args.unknown_policy)
        for rnd in range(args.rounds):
            for m in (MODES if rnd % 2 == 0 else MODES[::-1]):
                label = m if args.rounds == 1 else f"{m}#{rnd + 1}"
                profile = None
                if args.profile:
                    profile = profiles[m] = Path(f"{args.profile}-{m}.prof")
                try:
                    r = bench_eir(args, prep.db, files[m], work, out, label=label,
                                  policy=policy_toml(POLICIES[m], args.unknown_policy),
                                  profile=profile, greylisted=greylisted[m])
                except SystemExit as exc:
                    print(exc, file=sys.stderr)
                    return 2
                r["label"] = label
                r["mix"] = check_eir(r, expected[m], args.tolerance, out, label)
                if "error" not in r:
                    r["verdict"] = generator_verdict(r)
                    r.pop("hist", None)
                results[m].append(r)
                log(f"{label}: {r.get('rate', 0):,.0f} answers/s, "
                    f"{r.get('server_cpu_us_per_answer', '-')} us CPU per answer")
    summary = summarise(results, int(prep.meta.get("history_rows", 0)), len(prep.queries),
                        args.target_ratio)
    figures = {
        "settings": settings_of(args),
        "registry": prep.meta,
        "queries": {"count": len(prep.queries), "per_category": prep.per_category},
        "rule_orders": {m: list(POLICIES[m]) for m in MODES},
        "expected_mix": {m: {k: round(v, 4) for k, v in e.items()}
                         for m, e in expected.items()},
        "runs": {m: median_run(results[m]) for m in MODES},
        "all_runs": results if args.rounds > 1 else None,
        "summary": summary,
        "failures": out.failures,
        "elapsed_s": round(time.monotonic() - t_all, 1),
    }
    if profiles:
        answered = {m: int(median_run(results[m]).get("server_answered", 0)) for m in profiles}
        report = profile_report(profiles, answered)
        figures["profile"] = {m: str(p) for m, p in profiles.items()}
        print(report, file=sys.stderr)
    print(table(figures), file=sys.stderr)
    for f in out.failures:
        print(f"FAIL: {f}", file=sys.stderr)
    text = json.dumps(figures)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    print(text, flush=True)
    return 1 if out.failures else 0


if __name__ == "__main__":
    sys.exit(main())
