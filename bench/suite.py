"""The whole performance suite of issue 5 in one run: ``python -m bench all``.

Usage (from the repository root)::

    .venv/bin/python -m bench all                      # 10M white, 1M grey, 150k black
    .venv/bin/python -m bench all --smoke              # tiny registry, 1.5 s per run (CI)
    .venv/bin/python -m bench all --sizes 1000000,10000000,30000000

Every server is driven by the same load generator (``bench.loadgen``), on
127.0.0.1, each run on a fresh server (and, for the EIR, a fresh copy of the
cached registry database):

1. registry: built with the real CLI and cached (``bench.ecr_bench.prepare``);
   the list import's time and rows/s, and whether it is one audit record
   (``eir audit log``);
2. throughput of the EIR, full default regime, closed loop over 1, 4 and 16
   connections (each its own Origin-Host), ``--in-flight`` requests in flight
   on each: ECR/s, answered, lost, mismatches, the answer mix, the observation
   rows persisted, the generator's CPU share, server CPU per answer, the
   EIR's start-up time and resident memory (when ready and after the load);
3. baselines, same generator and load shape: the framing-only echo server
   and freeDiameter's stub EIR (its answers follow its own IMEI-prefix rule,
   so they are not checked), each as a ratio ours/theirs;
4. latency, open loop (``loadgen --rate``) at 25%, 50% and 80% of the EIR's
   4-connection maximum: p50, p99, p99.9 from the scheduled send time;
5. latency as in-flight grows: closed loop, 4 connections, 1/4/16/64 in
   flight per connection;
6. ``--sizes``: throughput (4 connections) and resident memory per registry
   size (white entries; grey and black scaled in the main registry's ratio).

It writes ``suite.json`` and ``suite.html`` (figures as inline SVG) to
``--out`` and prints progress lines and a final table with the issue's
targets (MET / NOT MET and the margin). A missed target is not an error:
the exit status is 1 only when a run broke (a request lost, a wrong answer
from our EIR, a server that crashed or did not start), else 0.
"""

from __future__ import annotations

import argparse
import html
import io
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.ecr_bench import (
    DEFAULT_MIX,
    DEFAULT_TAC_ROWS,
    POLICIES,
    REPO,
    SERVER_READY_TIMEOUT,
    CpuSampler,
    Outcome,
    Prepared,
    Server,
    Sizes,
    check_eir,
    db_counts,
    eir_command,
    fresh_copy,
    parse_mix,
    parse_server_log,
    policy_toml,
    prepare,
    remove_db,
    server_cpu,
    write_queries,
)

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

SUITE_VERSION = 1
CONNECTIONS = (1, 4, 16)
BASE_CONNECTIONS = 4  # the "measured maximum", latency, in-flight and size runs
IN_FLIGHT = 64
IN_FLIGHT_SWEEP = (1, 4, 16, 64)
RATE_SHARES = (25, 50, 80)  # % of the maximum, open loop
# The issue's targets (measured with the 10M-white, 1M-grey, 150k-black registry).
TARGET_RATE = 60_000
TARGET_RATIO_FD = 2.0
TARGET_P99_AT_50_US = 1_000
TARGET_P999_AT_80_US = 5_000
TARGET_IMPORT_10M_S = 60.0
TARGET_READY_S = 10.0
TARGET_RSS_MIB = 1.5e9 / 2**20  # 1.5 GB, in the MiB that VmRSS is read in
ISSUE_SIZES = (10_000_000, 1_000_000, 150_000)  # white, grey, black
CURVE_PERCENTILES = (50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99)
EIR_READY = re.compile(r"EIR ready: S13 on \S+:(\d+)")
ECHO_READY = re.compile(r"ECHO ready on \S+:(\d+)")
FD_HOSTS = "test.local"  # the stub accepts only Origin-Hosts *.test.local


# -- the run's state ---------------------------------------------------------------------------


@dataclass
class Served:
    """One registry database and the query file over it."""

    label: str
    sizes: Sizes
    prep: Prepared
    queries: Path  # imei,imsi,expect under the full regime
    expected: dict[str, float]  # the answer mix the query list implies

    @property
    def history_rows(self) -> int:
        return int(self.prep.meta.get("history_rows", 0))


@dataclass
class Load:
    """The load shape of one run: closed loop (in_flight per connection) or open (rate)."""

    connections: int
    in_flight: int = IN_FLIGHT
    rate: float | None = None

    def describe(self) -> str:
        conns = f"{self.connections} connection{'s' if self.connections > 1 else ''}"
        if self.rate is not None:
            return f"{conns}, open loop at {self.rate:,.0f}/s"
        return f"{conns} x {self.in_flight} in flight"


@dataclass
class Suite:
    args: argparse.Namespace
    work: Path
    total_steps: int
    step: int = 0
    out: Outcome = field(default_factory=Outcome)
    t0: float = field(default_factory=time.monotonic)

    def progress(self, what: str) -> None:
        self.step += 1
        elapsed = time.monotonic() - self.t0
        say(f"suite: {self.step}/{self.total_steps} {what} ... ({elapsed:.0f} s)")

    def fail(self, msg: str) -> None:
        msg = msg.strip()
        self.out.failures.append(msg)
        say(f"suite:   FAIL: {msg}")


def say(msg: str) -> None:
    print(msg, flush=True)


def note(r: dict[str, Any]) -> None:
    """The one-line result of a run, under its progress line."""
    if "skipped" in r:
        say(f"suite:   skipped: {r['skipped']}")
        return
    if "error" in r:
        return  # already reported by a FAIL line
    lat = r.get("latency_us", {})
    parts = [f"{r.get('rate', 0):,.0f} answers/s"]
    parts += [f"{k} {lat[k] / 1000:.2f} ms" for k in ("p50", "p99", "p99.9") if k in lat]
    parts.append(f"lost {r.get('lost', '-')}")
    if r.get("expectations_checked"):
        parts.append(f"mismatches {r.get('mismatches', '-')}")
    if r.get("server_cpu_us_per_answer") is not None:
        parts.append(f"server {r['server_cpu_us_per_answer']:.1f} us/answer")
    parts.append(f"loadgen CPU {r.get('cpu', {}).get('percent_of_core', 0):.0f}%")
    say("suite:   " + ", ".join(parts))


# -- the load generator ------------------------------------------------------------------------


def latency_curve(hist_b64: str | None) -> list[list[float]]:
    """[percentile, µs] from an encoded HDR histogram, for the percentile plot."""
    if not hist_b64:
        return []
    from hdrh.histogram import HdrHistogram

    h = HdrHistogram.decode(hist_b64)
    if h.get_total_count() == 0:
        return []
    return [[p, float(h.get_value_at_percentile(p))] for p in CURVE_PERCENTILES] + \
        [[100.0, float(h.get_max_value())]]


def run_loadgen(s: Suite, port: int, queries: Path, load: Load, *, check: bool,
                fd: bool = False) -> dict[str, Any]:
    a = s.args
    cmd = [sys.executable, "-m", "bench.loadgen", "--target", f"127.0.0.1:{port}",
           "--imeis", str(queries), "--connections", str(load.connections),
           "--duration", str(a.duration), "--warmup", str(a.warmup), "--drain", str(a.drain),
           "--quiet", "--keep-hist"]
    if load.rate is not None:
        cmd += ["--rate", f"{load.rate:.1f}"]
    else:
        cmd += ["--in-flight", str(load.in_flight)]
    if not check:
        cmd.append("--ignore-expect")
    if fd:
        cmd += ["--host-suffix", FD_HOSTS, "--origin-realm", FD_HOSTS, "--dest-realm", FD_HOSTS]
    timeout = a.duration + a.drain + 120
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"the load generator did not finish in {timeout:.0f} s"}
    try:
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": f"loadgen exit {proc.returncode}: {proc.stderr.strip()[-2000:]}"}
    if "error" not in result:
        from bench.loadgen import generator_verdict

        result["verdict"] = generator_verdict(result)
        result["latency_curve"] = latency_curve(result.get("hist"))
    for key in ("hist", "hist_send", "hist_lag"):
        result.pop(key, None)
    result["load"] = {"connections": load.connections,
                      "in_flight": None if load.rate is not None else load.in_flight,
                      "rate": load.rate}
    return result


# -- servers -----------------------------------------------------------------------------------


def run_eir(s: Suite, served: Served, load: Load, label: str,
            before_remove: Callable[[Path], None] | None = None) -> dict[str, Any]:
    """One ``eir serve`` (full default regime) on a fresh copy of the registry, one load."""
    a = s.args
    db = fresh_copy(served.prep.db, s.work / "served.db")
    cfg = s.work / "eir.toml"
    cfg.write_text(policy_toml(POLICIES["regime"], a.unknown_policy))
    cmd = [*eir_command(), "serve", "--config", str(cfg), "--db", str(db),
           "--listen", "127.0.0.1:0", "--origin-host", "eir.bench", "--origin-realm", "bench",
           "--log-level", "info"]
    result: dict[str, Any] = {}
    eir: Server | None = None
    try:
        try:
            eir = Server(f"the EIR ({label})", cmd, EIR_READY)
            eir.wait_ready(SERVER_READY_TIMEOUT)
        except SystemExit as exc:
            s.fail(f"{label}: {exc}")
            return {"error": str(exc)[:2000]}
        rss_ready = eir.rss_mb()
        sampler = CpuSampler(eir.proc.pid)
        result = run_loadgen(s, eir.port, served.queries, load, check=True)
        sampler.stop()
        rss_after = eir.rss_mb()
        alive = eir.proc.poll() is None
        code = eir.stop()
        if "error" not in result:
            server_cpu(result, sampler)
        result.update(server_rss_ready_mb=rss_ready, server_rss_after_mb=rss_after,
                      server_startup_s=round(eir.startup_s, 2), server_exit=code)
        parse_server_log(list(eir.lines), result)
        if not alive or eir.crashed_at is not None:
            s.fail(f"{label}: the EIR crashed during the run (exit {code}): "
                   + " | ".join(list(eir.lines)[-5:]))
        elif code not in (0, None):
            s.fail(f"{label}: the EIR exited with {code}")
        result["db_after"] = counts = db_counts(db)
        if "observations" in counts:
            written = counts["observations"] - served.history_rows
            result["observations_written"] = written
            if "server_answered" in result:  # each new (IMEI, IMSI) pair is one row
                result["sightings"] = {"new_pairs": written,
                                       "known_pairs": result["server_answered"] - written}
        if before_remove is not None:
            before_remove(db)
    finally:
        if eir is not None:
            eir.stop()
        remove_db(db)
    if "error" in result:
        s.fail(f"{label}: {result['error']}")
    else:
        checked = Outcome()
        result["mix"] = check_eir(result, served.expected, a.tolerance, checked, label)
        for msg in checked.failures:
            s.fail(msg)
    return result


def run_echo(s: Suite, queries: Path, load: Load, label: str) -> dict[str, Any]:
    a = s.args
    cmd = [sys.executable, "-m", "bench.echo_server", "--listen", "127.0.0.1:0",
           "--max-seconds", str(int(a.duration + a.drain + 300))]
    echo: Server | None = None
    alive = False
    try:
        try:
            echo = Server("the echo server", cmd, ECHO_READY)
            echo.wait_ready(60)
        except SystemExit as exc:
            s.fail(f"{label}: {exc}")
            return {"error": str(exc)[:2000]}
        sampler = CpuSampler(echo.proc.pid)
        result = run_loadgen(s, echo.port, queries, load, check=False)
        sampler.stop()
        alive = echo.proc.poll() is None
    finally:
        code = echo.stop() if echo is not None else None
    if not alive:
        s.fail(f"{label}: the echo server died during the run (exit {code})")
    return baseline_checks(s, result, sampler, label)


def run_fd(s: Suite, queries: Path, load: Load, label: str) -> dict[str, Any]:
    """freeDiameter's stub EIR (testbed.fdpeer), or why it was skipped."""
    from testbed import fdpeer

    reason = fdpeer.unavailable_reason()
    if reason:
        return {"skipped": reason}
    try:
        srv = fdpeer.start_server()
    except (fdpeer.FdPeerError, OSError) as exc:
        s.fail(f"{label}: freeDiameter's stub EIR did not start: {str(exc)[-1000:]}")
        return {"error": f"did not start: {str(exc)[-1000:]}"}
    alive = False
    try:
        sampler = CpuSampler(srv.proc.pid)
        result = run_loadgen(s, srv.port, queries, load, check=False, fd=True)
        sampler.stop()
        alive = srv.running()
    finally:
        stats = srv.stop()
    if not alive:
        s.fail(f"{label}: freeDiameter's stub EIR died during the run")
    result["server_answered"] = stats.answered
    result["server_parse_errors"] = stats.parse_errors
    return baseline_checks(s, result, sampler, label)


def baseline_checks(s: Suite, result: dict[str, Any], sampler: CpuSampler,
                    label: str) -> dict[str, Any]:
    if "error" in result:
        s.fail(f"{label}: {result['error']}")
        return result
    server_cpu(result, sampler)
    if result["lost"]:
        s.fail(f"{label}: {result['lost']} request(s) lost")
    if result["unmatched_answers"]:
        s.fail(f"{label}: {result['unmatched_answers']} answer(s) with an unknown Hop-by-Hop id")
    return result


# -- phases ------------------------------------------------------------------------------------


def prepare_registry(s: Suite, sizes: Sizes, label: str) -> Served:
    a = s.args
    prep = prepare(sizes, a.seed, a.queries, a.mix_shares, a.tac_rows, a.cache_dir)
    queries = s.work / f"queries-{label}.csv"
    expected = write_queries(prep.queries, POLICIES["regime"], a.unknown_policy, queries)
    return Served(label, sizes, prep, queries, expected)


def audit_of_import(s: Suite, served: Served) -> dict[str, Any]:
    """``eir audit log`` on a copy of the registry: how many records the list import left."""
    copy = fresh_copy(served.prep.db, s.work / "audit.db")
    try:
        proc = subprocess.run([*eir_command(), "audit", "log", "--db", str(copy),
                               "--limit", "1000000"], capture_output=True, text=True,
                              timeout=600, cwd=REPO)
    finally:
        remove_db(copy)
    if proc.returncode != 0:
        return {"error": f"eir audit log exit {proc.returncode}: {proc.stderr.strip()[-500:]}"}
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    actions: dict[str, int] = {}
    for r in records:
        actions[r.get("action", "?")] = actions.get(r.get("action", "?"), 0) + 1
    imports = [r for r in records if r.get("action") == "import"]
    return {"records": len(records), "actions": actions, "import_records": len(imports),
            "import_rows": imports[0].get("count") if len(imports) == 1 else None}


def registry_phase(s: Suite) -> Served:
    a = s.args
    main = Sizes(a.white, a.grey, a.black)
    s.progress(f"registry {main.white:,} white, {main.grey:,} grey, {main.black:,} black "
               f"and a {a.tac_rows:,}-row TAC database (built once, then cached)")
    served = prepare_registry(s, main, "main")
    meta = served.prep.meta
    audit = audit_of_import(s, served)
    rows = int(meta["imeis"] + meta["exception_pairs"])  # rows of the list CSV
    imp = {"rows": rows, "seconds": meta["import_s"],
           "rows_per_s": round(rows / meta["import_s"]) if meta["import_s"] else None,
           "seconds_per_10m_rows": round(meta["import_s"] * 10_000_000 / rows, 1) if rows
           else None, "cached": meta["cached"], "built_at": meta["built_at"],
           "audit": audit}
    say(f"suite:   {rows:,} rows imported in {meta['import_s']:.1f} s "
        f"({imp['rows_per_s'] or 0:,} rows/s"
        f"{', at the build of the cached database' if meta['cached'] else ''}); audit: "
        + (f"{audit['import_records']} import record(s) of {_n(audit['import_rows'])} rows"
           if "error" not in audit else audit["error"]))
    s.out.figures["registry"] = {"sizes": {"white": main.white, "grey": main.grey,
                                           "black": main.black},
                                 "meta": meta, "import": imp, "db": str(served.prep.db),
                                 "queries": {"count": len(served.prep.queries),
                                             "mix": a.mix,
                                             "per_category": served.prep.per_category,
                                             "expected_answers": {
                                                 k: round(v, 4)
                                                 for k, v in served.expected.items()}}}
    return served


def throughput_phase(s: Suite, main: Served) -> None:
    a = s.args
    eir: dict[str, Any] = {}
    echo: dict[str, Any] = {}
    fd: dict[str, Any] = {}
    s.out.figures["throughput"] = {"eir": eir, "echo": echo, "fd": fd,
                                   "in_flight_per_connection": a.in_flight}
    for n in a.connections:
        load = Load(n, a.in_flight)
        s.progress(f"throughput EIR {load.describe()}")
        eir[str(n)] = r = run_eir(s, main, load, f"EIR {n} conn")
        note(r)
    for n in a.connections:
        load = Load(n, a.in_flight)
        s.progress(f"throughput echo server {load.describe()}")
        echo[str(n)] = r = run_echo(s, main.queries, load, f"echo {n} conn")
        note(r)
    for n in a.connections:
        load = Load(n, a.in_flight)
        s.progress(f"throughput freeDiameter stub EIR {load.describe()}")
        fd[str(n)] = r = {"skipped": "--no-fd"} if a.no_fd else \
            run_fd(s, main.queries, load, f"freeDiameter {n} conn")
        note(r)
    ratios: dict[str, dict[str, float | None]] = {"echo": {}, "fd": {}}
    for name, runs in (("echo", echo), ("fd", fd)):
        for n, r in runs.items():
            ours = eir.get(n, {}).get("rate")
            theirs = r.get("rate")
            ratios[name][n] = round(ours / theirs, 3) if ours and theirs else None
    s.out.figures["throughput"]["ratios"] = ratios


def base_rate(s: Suite) -> float | None:
    r = s.out.figures["throughput"]["eir"].get(str(s.args.base_connections), {})
    rate = r.get("rate")
    return float(rate) if rate and not r.get("lost") else None


def latency_phase(s: Suite, main: Served) -> None:
    a = s.args
    top = base_rate(s)
    runs: dict[str, Any] = {}
    s.out.figures["latency_open_loop"] = {"max_rate": top, "connections": a.base_connections,
                                          "arrival": "poisson", "runs": runs}
    for pct in a.rates:
        if top is None:
            s.progress(f"latency EIR open loop at {pct}% of the maximum")
            runs[str(pct)] = {"skipped": f"no {a.base_connections}-connection maximum measured"}
            note(runs[str(pct)])
            continue
        load = Load(a.base_connections, rate=top * pct / 100)
        s.progress(f"latency EIR open loop at {pct}% of {top:,.0f}/s: {load.describe()}")
        r = run_eir(s, main, load, f"EIR open loop {pct}%")
        r["share_pct"] = pct
        runs[str(pct)] = r
        note(r)


def in_flight_phase(s: Suite, main: Served) -> None:
    a = s.args
    runs: dict[str, Any] = {}
    s.out.figures["in_flight"] = {"connections": a.base_connections, "runs": runs}
    for k in a.in_flight_sweep:
        load = Load(a.base_connections, k)
        if k == a.in_flight and str(a.base_connections) in s.out.figures["throughput"]["eir"]:
            runs[str(k)] = {**s.out.figures["throughput"]["eir"][str(a.base_connections)],
                            "same_run_as": f"throughput, {a.base_connections} connections"}
            continue  # the same load as the throughput run: not run twice
        s.progress(f"latency EIR as in-flight grows: {load.describe()}")
        runs[str(k)] = r = run_eir(s, main, load, f"EIR {k} in flight")
        note(r)


def sizes_phase(s: Suite, main: Served) -> None:
    a = s.args
    runs: dict[str, Any] = {}
    s.out.figures["sizes"] = {"connections": a.base_connections, "runs": runs}
    for white in a.sizes:
        if white == a.white:
            base = s.out.figures["throughput"]["eir"].get(str(a.base_connections), {})
            runs[str(white)] = size_entry(main.sizes, main.prep.meta, base,
                                          f"throughput, {a.base_connections} connections")
            continue
        sizes = Sizes(white, max(1, round(white * a.grey / a.white)),
                      max(1, round(white * a.black / a.white)))
        s.progress(f"registry size {white:,} white ({sizes.grey:,} grey, {sizes.black:,} "
                   f"black): EIR {Load(a.base_connections).describe()}")
        try:
            served = prepare_registry(s, sizes, f"w{white}")
        except SystemExit as exc:
            s.fail(f"registry of {white:,} white: {exc}")
            runs[str(white)] = {"error": str(exc)[:2000]}
            continue
        r = run_eir(s, served, Load(a.base_connections, a.in_flight), f"EIR {white:,} white")
        runs[str(white)] = size_entry(sizes, served.prep.meta, r, None)
        note(r)
        served.queries.unlink(missing_ok=True)


def size_entry(sizes: Sizes, meta: dict[str, Any], r: dict[str, Any],
               same_run_as: str | None) -> dict[str, Any]:
    return {"white": sizes.white, "grey": sizes.grey, "black": sizes.black,
            "imeis": sizes.total, "db_mb": meta.get("db_mb"), "import_s": meta.get("import_s"),
            "rate": r.get("rate"), "lost": r.get("lost"),
            "latency_us": r.get("latency_us", {}),
            "server_rss_ready_mb": r.get("server_rss_ready_mb"),
            "server_rss_after_mb": r.get("server_rss_after_mb"),
            "server_startup_s": r.get("server_startup_s"),
            "snapshot_load_s": r.get("snapshot", {}).get("load_s"),
            "server_cpu_us_per_answer": r.get("server_cpu_us_per_answer"),
            "same_run_as": same_run_as, **({"error": r["error"]} if "error" in r else {})}


# -- summary and targets -----------------------------------------------------------------------


def main_eir_runs(f: dict[str, Any]) -> list[dict[str, Any]]:
    """Every EIR run on the main registry (throughput, open loop, in flight), once each."""
    runs = list(f.get("throughput", {}).get("eir", {}).values())
    runs += list(f.get("latency_open_loop", {}).get("runs", {}).values())
    runs += [r for r in f.get("in_flight", {}).get("runs", {}).values() if not r.get("same_run_as")]
    return [r for r in runs if isinstance(r, dict) and "rate" in r]


def server_summary(f: dict[str, Any]) -> dict[str, Any]:
    """Start-up time and resident memory of the EIR over the main registry's runs."""
    runs = main_eir_runs(f)
    ready = [r["server_startup_s"] for r in runs if r.get("server_startup_s") is not None]
    snap = [r["snapshot"]["load_s"] for r in runs if "snapshot" in r]
    rss_ready = [r["server_rss_ready_mb"] for r in runs if r.get("server_rss_ready_mb")]
    rss_after = [r["server_rss_after_mb"] for r in runs if r.get("server_rss_after_mb")]

    def stats(v: list[float]) -> dict[str, float] | None:
        return {"median": round(statistics.median(v), 2), "min": min(v), "max": max(v),
                "runs": len(v)} if v else None

    return {"ready_s": stats(ready), "snapshot_load_s": stats(snap),
            "rss_ready_mib": stats(rss_ready), "rss_after_load_mib": stats(rss_after)}


def _target(name: str, value: float | None, limit: float, *, at_least: bool, unit: str,
            limit_shown: str, shown: str = "", note: str = "") -> dict[str, Any]:
    """One target of the issue; margin_pct > 0 is headroom, < 0 how far it is missed (for an
    "at most" target missed, ``margin`` also says how many times the limit it is)."""
    base = {"name": name, "target": limit, "at_least": at_least, "unit": unit,
            "limit_shown": f"{'>=' if at_least else '<='} {limit_shown}", "note": note}
    if value is None:
        return {**base, "value": None, "met": None, "margin_pct": None, "margin": "",
                "shown": "not measured"}
    met = value >= limit if at_least else value <= limit
    margin = (value / limit - 1) if at_least else (1 - value / limit)
    if met:
        text = f"{100 * margin:.0f}% headroom"
    elif at_least:
        text = f"{100 * -margin:.0f}% short"
    else:
        text = f"{value / limit:.1f}x the limit"
    return {**base, "value": value, "met": met, "margin_pct": round(100 * margin, 1),
            "margin": text, "shown": shown or f"{value:,.4g} {unit}"}


def targets(f: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    size_note = ""
    if (args.white, args.grey, args.black) != ISSUE_SIZES:
        size_note = (f"registry {args.white:,}/{args.grey:,}/{args.black:,} white/grey/black; "
                     "the target is for 10M/1M/150k")
    out: list[dict[str, Any]] = []
    eir = f.get("throughput", {}).get("eir", {})
    best = max(((float(r["rate"]), n) for n, r in eir.items()
                if r.get("rate") and not r.get("lost") and not r.get("mismatches")),
               default=None)
    out.append(_target("ECR/s from one EIR process, full regime, none lost",
                       best[0] if best else None, TARGET_RATE, at_least=True, unit="ECR/s",
                       limit_shown=f"{TARGET_RATE:,} ECR/s",
                       shown=f"{best[0]:,.0f} ECR/s ({best[1]} conn)" if best else "",
                       note=size_note))
    fd = f.get("throughput", {}).get("ratios", {}).get("fd", {})
    measured = {n: v for n, v in fd.items() if v}
    worst = min(measured.items(), key=lambda kv: kv[1]) if measured else None
    skipped = next((r["skipped"] for r in f.get("throughput", {}).get("fd", {}).values()
                    if "skipped" in r), "")
    out.append(_target("EIR / freeDiameter stub EIR, same load, same run (lowest)",
                       worst[1] if worst else None, TARGET_RATIO_FD, at_least=True, unit="x",
                       limit_shown=f"{TARGET_RATIO_FD:g}x",
                       shown=", ".join(f"{v:.2f}x ({n} conn)" for n, v in measured.items()),
                       note=skipped))
    lat = f.get("latency_open_loop", {}).get("runs", {})
    for pct, key, limit in (("50", "p99", TARGET_P99_AT_50_US),
                            ("80", "p99.9", TARGET_P999_AT_80_US)):
        v = lat.get(pct, {}).get("latency_us", {}).get(key)
        out.append(_target(f"{key} at {pct}% of the maximum rate, open loop", v, limit,
                           at_least=False, unit="us", limit_shown=f"{limit / 1000:g} ms",
                           shown=f"{v / 1000:.2f} ms" if v is not None else "",
                           note="from the scheduled send time"))
    imp = f.get("registry", {}).get("import", {})
    secs = imp.get("seconds_per_10m_rows")
    out.append(_target("import of 10,000,000 rows", secs, TARGET_IMPORT_10M_S, at_least=False,
                       unit="s", limit_shown=f"{TARGET_IMPORT_10M_S:g} s",
                       shown=f"{secs:.1f} s" if secs is not None else "",
                       note=f"{imp.get('rows', 0):,} rows in {imp.get('seconds', 0):.1f} s, "
                            "scaled to 10M" + (" (measured at the build of the cached "
                                                 "database)" if imp.get("cached") else "")))
    audit = imp.get("audit", {})
    one = audit.get("import_records")
    rec = _target("the import is one audit record", float(one) if one is not None else None,
                  1, at_least=False, unit="records", limit_shown="1 record",
                  shown=f"{one} import record(s), {_n(audit.get('import_rows'))} rows"
                  if one is not None else "", note=audit.get("error", ""))
    if one is not None:
        rec["met"] = one == 1 and audit.get("import_rows") == imp.get("rows")
        rec["margin_pct"] = None
        rec["margin"] = ""
    out.append(rec)
    srv = f.get("server", {})
    ready = (srv.get("ready_s") or {}).get("median")
    out.append(_target("EIR ready after start (median of its starts)", ready, TARGET_READY_S,
                       at_least=False, unit="s", limit_shown=f"{TARGET_READY_S:g} s",
                       shown=f"{ready:.1f} s (max {srv['ready_s']['max']:.1f})" if ready else "",
                       note=size_note))
    rss = (srv.get("rss_after_load_mib") or {}).get("max")
    out.append(_target("EIR resident memory (largest, after the load)", rss, TARGET_RSS_MIB,
                       at_least=False, unit="MiB",
                       limit_shown=f"1.5 GB ({TARGET_RSS_MIB:,.0f} MiB)",
                       shown=f"{rss:,.0f} MiB" if rss else "", note=size_note))
    return out


def verdict_word(t: dict[str, Any]) -> str:
    if t["met"] is None:
        return "NOT MEASURED"
    word = "MET" if t["met"] else "NOT MET"
    return word + (f" ({t['margin']})" if t.get("margin") else "")


# -- the printed table -------------------------------------------------------------------------


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v / 1000:.2f}"


def _n(v: Any, fmt: str = "{:,.0f}") -> str:
    return "-" if v is None else fmt.format(v)


def _grid(header: list[str], rows: list[tuple[str, list[str]]]) -> list[str]:
    w = max([len(r[0]) for r in rows] + [0])
    cols = [max([len(h)] + [len(r[1][i]) for r in rows]) for i, h in enumerate(header)]
    lines = [f"{'':{w}}" + "".join(f"  {h:>{c}}" for h, c in zip(header, cols, strict=True))]
    lines += [f"{a:{w}}" + "".join(f"  {v:>{c}}" for v, c in zip(vals, cols, strict=True))
              for a, vals in rows]
    return lines


def _run_rows(runs: list[dict[str, Any]], *, eir: bool) -> list[tuple[str, list[str]]]:
    def lat(r: dict[str, Any], k: str) -> str:
        return _ms(r.get("latency_us", {}).get(k))

    def status(r: dict[str, Any]) -> str:
        return r.get("skipped", r.get("error", ""))[:12] or "-"

    rows = [("answers/s", [_n(r.get("rate")) if "rate" in r else status(r) for r in runs]),
            ("latency p50 / p99 (ms)", [f"{lat(r, 'p50')} / {lat(r, 'p99')}" for r in runs]),
            ("answered", [_n(r.get("answered")) for r in runs]),
            ("lost", [_n(r.get("lost")) for r in runs])]
    if eir:
        rows.append(("mismatches", [_n(r.get("mismatches")) for r in runs]))
    rows += [("server CPU (% of a core)", [_n(r.get("server_cpu_percent"), "{:.0f}%")
                                           for r in runs]),
             ("server CPU per answer (us)", [_n(r.get("server_cpu_us_per_answer"), "{:.2f}")
                                             for r in runs]),
             ("loadgen CPU (% of a core)",
              [_n(r.get("cpu", {}).get("percent_of_core"), "{:.0f}%") for r in runs])]
    if eir:
        rows += [("observation rows persisted", [_n(r.get("observations_written"))
                                                 for r in runs]),
                 ("known pairs answered", [_n(r.get("sightings", {}).get("known_pairs"))
                                           for r in runs]),
                 ("EIR ready after (s)", [_n(r.get("server_startup_s"), "{:.1f}") for r in runs]),
                 ("RSS ready / after (MiB)", [f"{_n(r.get('server_rss_ready_mb'))} / "
                                              f"{_n(r.get('server_rss_after_mb'))}"
                                              for r in runs])]
    return rows


def table(f: dict[str, Any]) -> str:
    lines: list[str] = []
    reg = f.get("registry", {})
    if reg:
        m, imp = reg["meta"], reg["import"]
        lines += ["== registry ==",
                  f"lists: {m['white']:,} white, {m['grey']:,} grey, {m['black']:,} black, "
                  f"{m['exception_pairs']:,} exception pairs; TAC database {m['tac']['rows']:,} "
                  f"rows; {m['db_mb']:,} MB ({'cached' if m['cached'] else 'built now'})",
                  f"list import: {imp['rows']:,} rows in {imp['seconds']:.1f} s "
                  f"({_n(imp['rows_per_s'])} rows/s); audit: "
                  f"{imp['audit'].get('import_records', '?')} import record(s), "
                  f"{imp['audit'].get('records', '?')} records in all"]
    srv = f.get("server", {})
    if srv.get("ready_s"):
        r, a = srv["ready_s"], srv.get("rss_after_load_mib") or {}
        lines.append(f"EIR start to ready: median {r['median']:.1f} s (min {r['min']:.1f}, max "
                     f"{r['max']:.1f}, {r['runs']} starts); RSS when ready median "
                     f"{_n((srv.get('rss_ready_mib') or {}).get('median'))} MiB, after the load "
                     f"max {_n(a.get('max'))} MiB")
    tp = f.get("throughput", {})
    if tp:
        conns = list(tp["eir"])
        lines += ["", f"== throughput, closed loop, {tp['in_flight_per_connection']} in flight "
                      "per connection =="]
        for name, key, eir in (("EIR (full regime)", "eir", True), ("echo server", "echo", False),
                               ("freeDiameter stub EIR", "fd", False)):
            runs = [tp[key].get(n, {}) for n in conns]
            rows = _run_rows(runs, eir=eir)
            if key != "eir":
                rows.insert(1, (f"EIR / {'echo' if key == 'echo' else 'freeDiameter'}",
                                [_n(tp["ratios"][key].get(n), "{:.2f}") for n in conns]))
            lines += [f"-- {name}", *_grid([f"{n} conn" for n in conns], rows)]
        base = tp["eir"].get(str(f["settings"]["base_connections"]), {})
        if base.get("mix"):
            lines.append(f"answer mix, EIR {f['settings']['base_connections']} connections "
                         "(expected / got): " + ", ".join(
                             f"{k} {v['expected_pct']:.1f}/{v['got_pct']:.1f}%"
                             for k, v in base["mix"].items()))
        if base.get("decisions"):
            top = sorted(base["decisions"].items(), key=lambda kv: -kv[1])
            total = sum(v for _, v in top) or 1
            lines.append("decisions: " + ", ".join(f"{k} {100 * v / total:.1f}%"
                                                   for k, v in top[:8]))
    lo = f.get("latency_open_loop", {})
    if lo.get("runs"):
        lines += ["", f"== latency, open loop (Poisson), {lo['connections']} connections, "
                      f"share of {_n(lo['max_rate'])} ECR/s =="]
        rows = []
        for pct, r in lo["runs"].items():
            lat, send = r.get("latency_us", {}), r.get("latency_from_send_us", {})
            lag = r.get("open_loop", {}).get("send_lag_us", {})
            rows.append((f"{pct}%", [_n(r.get("open_loop", {}).get("offered_rate")),
                                     _n(r.get("rate")), _ms(lat.get("p50")), _ms(lat.get("p99")),
                                     _ms(lat.get("p99.9")), _ms(lat.get("max")),
                                     _ms(send.get("p99")), _ms(lag.get("p99")),
                                     _n(r.get("lost"))]))
        lines += _grid(["offered/s", "answers/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms",
                        "p99 send", "lag p99", "lost"], rows)
        lines.append("(p50..max from the scheduled send time; 'p99 send' from the actual send; "
                     "'lag' how late the generator sent)")
    fl = f.get("in_flight", {})
    if fl.get("runs"):
        lines += ["", f"== in flight per connection, closed loop, {fl['connections']} "
                      "connections =="]
        rows = [(k, [_n(r.get("rate")), _ms(r.get("latency_us", {}).get("p50")),
                     _ms(r.get("latency_us", {}).get("p99")),
                     _ms(r.get("latency_us", {}).get("p99.9")), _n(r.get("lost")),
                     _n(r.get("cpu", {}).get("percent_of_core"), "{:.0f}%")])
                for k, r in fl["runs"].items()]
        lines += _grid(["ECR/s", "p50 ms", "p99 ms", "p99.9 ms", "lost", "loadgen"], rows)
    sz = f.get("sizes", {})
    if sz.get("runs"):
        lines += ["", f"== registry size, {sz['connections']} connections =="]
        rows = [(f"{int(k):,} white", [_n(r.get("imeis")), _n(r.get("rate")),
                                       _n(r.get("server_rss_ready_mb")),
                                       _n(r.get("server_rss_after_mb")),
                                       _n(r.get("server_startup_s"), "{:.1f}"),
                                       _n(r.get("db_mb"))])
                for k, r in sz["runs"].items()]
        lines += _grid(["IMEIs", "ECR/s", "RSS ready", "RSS after", "ready s", "db MB"], rows)
    if f.get("targets"):
        lines += ["", "== targets (issue 5) =="]
        w = max(len(t["name"]) for t in f["targets"])
        v = max(len(verdict_word(t)) for t in f["targets"])
        for t in f["targets"]:
            extra = f"  [{t['note']}]" if t.get("note") else ""
            lines.append(f"{t['name']:{w}}  {verdict_word(t):{v}}  {t['shown']} "
                         f"(target {t['limit_shown']}){extra}")
    for fail in f.get("failures", []):
        lines.append(f"FAIL: {fail}")
    return "\n".join(lines)


# -- the HTML page -----------------------------------------------------------------------------

_RC: dict[RcKeyType, Any] = {
    "font.family": "DejaVu Sans", "font.size": 9.5, "axes.titlesize": 10,
    "axes.spines.top": False, "axes.spines.right": False, "axes.edgecolor": "#9aa3ad",
    "axes.grid": True, "axes.axisbelow": True, "grid.color": "#e8ebef",
    "legend.frameon": False, "legend.fontsize": 8.5, "svg.fonttype": "none",
}
_COLOURS = {"eir": "#1f6fb2", "echo": "#8a8f98", "fd": "#d9822b"}
_SVG_PROLOGUE = re.compile(r"\A.*?(?=<svg\b)", re.S)
_SVG_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)


@contextmanager
def _plotting() -> Iterator[None]:
    import matplotlib

    matplotlib.use("Agg")  # never a GUI backend
    with matplotlib.rc_context(_RC):
        yield


def _figure(width: float = 6.6, height: float = 3.4) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def svg_of(fig: Any, title: str) -> str:
    """The figure as an inline <svg> element titled for screen readers."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": f"suite:{title}"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = _SVG_METADATA.sub("", _SVG_PROLOGUE.sub("", buf.getvalue(), count=1), count=1)
    end = text.index(">") + 1
    head = text[:end - 1].replace(
        "<svg ", f'<svg class="plot" role="img" aria-label="{html.escape(title)}" ', 1)
    return head + f"><title>{html.escape(title)}</title>" + text[end:].rstrip()


def _thousands(axis: Any) -> None:
    """Tick labels 20k, 1.5M instead of 20000, 1500000."""
    from matplotlib.ticker import EngFormatter

    axis.set_major_formatter(EngFormatter(sep=""))


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="#777777")
    ax.set_xticks([])
    ax.set_yticks([])


def fig_throughput(f: dict[str, Any]) -> Any:
    tp = f.get("throughput", {})
    fig = _figure()
    ax = fig.add_subplot()
    conns = list(tp.get("eir", {}))
    names = (("eir", "our EIR (full regime)"), ("echo", "echo server (Python ceiling)"),
             ("fd", "freeDiameter stub EIR (C)"))
    width = 0.27
    rates: list[float] = []
    for j, (key, label) in enumerate(names):
        xs, ys = [], []
        for i, n in enumerate(conns):
            v = tp.get(key, {}).get(n, {}).get("rate")
            if v:
                xs.append(i + (j - 1) * width)
                ys.append(v)
        rates += ys
        if xs:
            bars = ax.bar(xs, ys, width, label=label, color=_COLOURS[key])
            ax.bar_label(bars, labels=[f"{v / 1000:,.0f}k" for v in ys], fontsize=7.5,
                         padding=2)
    if not rates:
        _empty(ax, "no throughput measured")
        return fig
    if max(rates) / max(min(rates), 1) > 20:
        ax.set_yscale("log")
    ax.axhline(TARGET_RATE, color="#c0392b", lw=1, ls="--", label=f"target {TARGET_RATE:,}/s")
    ax.set_xticks(range(len(conns)), [f"{n} connection{'s' if n != '1' else ''}"
                                      for n in conns])
    ax.set_ylabel("answers/s")
    _thousands(ax.yaxis)
    ax.set_title(f"Throughput, closed loop, {tp.get('in_flight_per_connection')} in flight "
                 "per connection")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=7.5)
    return fig


def fig_timeline(f: dict[str, Any]) -> Any:
    fig = _figure()
    ax = fig.add_subplot()
    drawn = False
    for n, r in f.get("throughput", {}).get("eir", {}).items():
        tl = r.get("timeline") or []
        if len(tl) > 3:  # three whole seconds at least (the last one is partial)
            ax.plot(range(len(tl) - 1), tl[:-1], marker="o", ms=3,
                    label=f"{n} connection{'s' if n != '1' else ''}")
            drawn = True
    if not drawn:
        _empty(ax, "runs too short for a timeline (1 s buckets)")
        return fig
    ax.set_xlabel("second of the run (warm-up included)")
    ax.set_ylabel("answers/s")
    _thousands(ax.yaxis)
    ax.set_title("Our EIR over time: the first pass over the queries writes every pair")
    ax.set_ylim(bottom=0)
    ax.legend()
    return fig


def _nines(p: float) -> float:
    return -math.log10(max(1 - p / 100, 1e-5))


def fig_open_loop(f: dict[str, Any]) -> Any:
    lo = f.get("latency_open_loop", {})
    fig = _figure(9.0, 3.4)
    ax1, ax2 = fig.subplots(1, 2)
    runs = {k: r for k, r in lo.get("runs", {}).items() if r.get("latency_us")}
    if not runs:
        _empty(ax1, "no open-loop run")
        _empty(ax2, "")
        return fig
    for pct, r in runs.items():
        curve = [c for c in r.get("latency_curve", []) if c[0] < 100]
        if curve:
            ax1.plot([_nines(p) for p, _ in curve], [v / 1000 for _, v in curve], marker="o",
                     ms=3, label=f"{pct}% ({r.get('rate', 0):,.0f}/s)")
    ticks = [50.0, 90.0, 99.0, 99.9, 99.99]
    ax1.set_xticks([_nines(p) for p in ticks], [f"p{p:g}" for p in ticks])
    ax1.set_yscale("log")
    ax1.set_ylabel("latency (ms), from the scheduled send")
    ax1.set_title("Latency by percentile, open loop")
    ax1.plot([_nines(99)], [TARGET_P99_AT_50_US / 1000], "v", color="#c0392b",
             label="targets: p99 1 ms at 50%, p99.9 5 ms at 80%")
    ax1.plot([_nines(99.9)], [TARGET_P999_AT_80_US / 1000], "v", color="#c0392b")
    ax1.legend(fontsize=7.5)
    xs = [float(k) for k in runs]
    for key, style in (("p50", "-o"), ("p99", "-s"), ("p99.9", "-^")):
        ax2.plot(xs, [r["latency_us"].get(key, 0) / 1000 for r in runs.values()], style,
                 ms=4, label=key)
    ax2.set_yscale("log")
    ax2.set_xticks(xs, [f"{k}%" for k in runs])
    ax2.set_xlabel(f"offered rate, share of {lo.get('max_rate') or 0:,.0f} ECR/s")
    ax2.set_ylabel("latency (ms)")
    ax2.set_title("Percentiles against the offered rate")
    ax2.legend()
    return fig


def fig_in_flight(f: dict[str, Any]) -> Any:
    fl = f.get("in_flight", {})
    fig = _figure(9.0, 3.2)
    ax1, ax2 = fig.subplots(1, 2)
    runs = {k: r for k, r in fl.get("runs", {}).items() if r.get("rate")}
    if not runs:
        _empty(ax1, "no in-flight run")
        _empty(ax2, "")
        return fig
    xs = [int(k) for k in runs]
    ax1.plot(xs, [r["rate"] for r in runs.values()], "-o", color=_COLOURS["eir"])
    ax1.set_xscale("log", base=2)
    ax1.set_xticks(xs, [str(x) for x in xs])
    ax1.set_ylim(bottom=0)
    _thousands(ax1.yaxis)
    ax1.set_xlabel(f"requests in flight per connection ({fl.get('connections')} connections)")
    ax1.set_ylabel("ECR/s")
    ax1.set_title("Throughput as in-flight grows")
    for key, style in (("p50", "-o"), ("p99", "-s")):
        ax2.plot(xs, [r["latency_us"].get(key, 0) / 1000 for r in runs.values()], style,
                 ms=4, label=key)
    ax2.set_xscale("log", base=2)
    ax2.set_xticks(xs, [str(x) for x in xs])
    ax2.set_yscale("log")
    ax2.set_xlabel("requests in flight per connection")
    ax2.set_ylabel("latency (ms)")
    ax2.set_title("Latency as in-flight grows (closed loop)")
    ax2.legend()
    return fig


def fig_sizes(f: dict[str, Any]) -> Any:
    sz = f.get("sizes", {})
    fig = _figure(9.0, 3.2)
    ax1, ax2 = fig.subplots(1, 2)
    runs = {k: r for k, r in sz.get("runs", {}).items() if r.get("rate")}
    if not runs:
        _empty(ax1, "no size run")
        _empty(ax2, "")
        return fig
    xs = [r["imeis"] for r in runs.values()]
    ax1.plot(xs, [r["rate"] for r in runs.values()], "-o", color=_COLOURS["eir"])
    ax1.set_ylim(bottom=0)
    _thousands(ax1.yaxis)
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xticks(xs)
        ax.minorticks_off()
        _thousands(ax.xaxis)
    ax1.set_xlabel("registry size (IMEIs, all lists)")
    ax1.set_ylabel("ECR/s")
    ax1.set_title(f"Throughput by registry size ({sz.get('connections')} connections)")
    for key, label in (("server_rss_ready_mb", "when ready"),
                       ("server_rss_after_mb", "after the load")):
        ax2.plot(xs, [r.get(key) or 0 for r in runs.values()], "-o", label=label)
    ax2.axhline(TARGET_RSS_MIB, color="#c0392b", lw=1, ls="--", label="target 1.5 GB")
    ax2.set_ylim(bottom=0)
    ax2.set_xlabel("registry size (IMEIs, all lists)")
    ax2.set_ylabel("resident memory (MiB)")
    ax2.set_title("EIR resident memory by registry size")
    ax2.legend()
    return fig


FIGURES: tuple[tuple[str, Callable[[dict[str, Any]], Any]], ...] = (
    ("Throughput: our EIR, the echo server and freeDiameter's stub EIR", fig_throughput),
    ("Our EIR's answers per second over each throughput run", fig_timeline),
    ("Latency at fixed offered rates, open loop", fig_open_loop),
    ("Latency and throughput as in-flight requests grow", fig_in_flight),
    ("Throughput and resident memory by registry size", fig_sizes),
)

_CSS = """
body{font-family:"DejaVu Sans","Liberation Sans",Arial,sans-serif;margin:24px auto;
max-width:1200px;color:#222;line-height:1.4;padding:0 16px}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
td,th{border:1px solid #dde1e6;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f3f5f7}
.met{color:#1e7b34;font-weight:bold}.missed{color:#b03a2e;font-weight:bold}
.none{color:#777}.fail{background:#fbeaea;border:1px solid #e2b4b4;padding:8px}
svg.plot{display:block;width:100%;height:auto;max-width:900px}
figure{margin:1em 0}figcaption{font-weight:bold;margin-bottom:.3em}
pre{background:#f6f8fa;padding:10px;overflow-x:auto;font-size:.82em}
"""


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(f: dict[str, Any]) -> str:
    e = html.escape
    parts = [f"<h1>EIR performance suite</h1><p>{e(f['started_at'])}, "
             f"{e(str(f['machine']['cpus']))} CPUs, Python {e(f['machine']['python'])}, "
             f"{f['elapsed_s']:.0f} s in all; command <code>{e(f['command'])}</code></p>"]
    if f.get("failures"):
        parts.append("<div class='fail'><b>Runs that broke:</b><ul>" + "".join(
            f"<li>{e(x)}</li>" for x in f["failures"]) + "</ul></div>")
    rows = []
    for t in f.get("targets", []):
        cls = "none" if t["met"] is None else "met" if t["met"] else "missed"
        rows.append([e(t["name"]), e(t["limit_shown"]), e(t["shown"]),
                     f"<span class='{cls}'>{e(verdict_word(t))}</span>", e(t.get("note", ""))])
    parts.append("<h2>Targets (issue 5)</h2>" + _html_table(
        ["target", "limit", "measured", "verdict", "note"], rows))
    with _plotting():
        for title, make in FIGURES:
            fig = make(f)
            parts.append(f"<figure><figcaption>{e(title)}</figcaption>{svg_of(fig, title)}"
                         "</figure>")
    parts.append(f"<h2>All figures</h2><pre>{e(table(f))}</pre>")
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<title>EIR performance suite</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n")


# -- the command line --------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    try:
        out = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N,N,...") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench all",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench-results"),
                   help="directory for suite.json and suite.html (bench-results/)")
    p.add_argument("--white", type=int, default=ISSUE_SIZES[0], help="white entries (10M)")
    p.add_argument("--grey", type=int, default=ISSUE_SIZES[1], help="grey entries (1M)")
    p.add_argument("--black", type=int, default=ISSUE_SIZES[2], help="black entries (150k)")
    p.add_argument("--sizes", type=_ints,
                   help="registry sizes as white entries, e.g. 1000000,10000000,30000000 "
                        "(grey and black scaled in the main registry's ratio; default: only "
                        "the main registry)")
    p.add_argument("--mix", default=DEFAULT_MIX, help=f"query mix ({DEFAULT_MIX})")
    p.add_argument("--unknown-policy", choices=("reject", "greylist"), default="reject",
                   help="policy.unknown_equipment (reject, as ecr_bench: four distinct answers)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--queries", type=int, default=200_000, help="distinct queries (200,000)")
    p.add_argument("--tac-rows", type=int, default=DEFAULT_TAC_ROWS,
                   help=f"rows of the TAC database ({DEFAULT_TAC_ROWS:,})")
    p.add_argument("--connections", type=_ints, default=list(CONNECTIONS),
                   help="connection counts of the throughput runs (1,4,16)")
    p.add_argument("--base-connections", type=int, default=BASE_CONNECTIONS,
                   help="connections of the maximum and of the latency, in-flight and size "
                        "runs (4; one of --connections)")
    p.add_argument("--in-flight", type=int, default=IN_FLIGHT,
                   help="requests in flight per connection in the throughput runs (64)")
    p.add_argument("--in-flight-sweep", type=_ints, default=list(IN_FLIGHT_SWEEP),
                   help="in-flight counts of the latency-as-in-flight-grows runs (1,4,16,64)")
    p.add_argument("--rates", type=_ints, default=list(RATE_SHARES),
                   help="open-loop rates, %% of the maximum (25,50,80)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load per run (10)")
    p.add_argument("--warmup", type=float, default=1.0,
                   help="first seconds of each run left out of rate and latency (1)")
    p.add_argument("--drain", type=float, default=5.0, help="seconds to wait for late answers")
    p.add_argument("--tolerance", type=float, default=0.02,
                   help="allowed difference of each answer share from the expected (0.02)")
    p.add_argument("--no-fd", action="store_true", help="skip freeDiameter's stub EIR")
    p.add_argument("--cache-dir", type=Path,
                   default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                   / "eir-bench", help="registry cache (~/.cache/eir-bench)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny run for CI: 20k white, 1.5 s per run, every phase")
    return p


def smoke_settings(args: argparse.Namespace) -> None:
    args.white, args.grey, args.black = 20_000, 2_000, 300
    args.queries, args.tac_rows = 5_000, min(args.tac_rows, 2_000)
    args.duration, args.warmup, args.drain = 1.5, 0.3, 3.0
    if args.sizes is None:
        args.sizes = [10_000, 20_000]  # one more registry, so that phase runs too


def count_steps(args: argparse.Namespace) -> int:
    sweep = [k for k in args.in_flight_sweep if k != args.in_flight]
    extra_sizes = [w for w in args.sizes if w != args.white]
    return 1 + 3 * len(args.connections) + len(args.rates) + len(sweep) + len(extra_sizes)


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.smoke:
        smoke_settings(args)
    if args.sizes is None:
        args.sizes = [args.white]
    if args.warmup >= args.duration:
        p.error("--warmup must be shorter than --duration")
    if args.base_connections not in args.connections:
        p.error("--base-connections must be one of --connections")
    if min(args.white, args.grey, args.black) < 1:
        p.error("--white, --grey and --black must be at least 1")
    args.mix_shares = parse_mix(args.mix)
    args.out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="eir-suite-") as tmp:
        s = Suite(args, Path(tmp), count_steps(args))
        f = s.out.figures
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                    if k != "mix_shares"}
        f.update(suite_version=SUITE_VERSION, started_at=started.isoformat(timespec="seconds"),
                 command=" ".join(["python -m bench all",
                                   *(argv if argv is not None else sys.argv[1:])]),
                 settings=settings,
                 machine={"cpus": os.cpu_count(), "python": platform.python_version(),
                          "platform": platform.platform(), "loadavg_start": os.getloadavg()})
        say(f"suite: {s.total_steps} steps, {args.duration} s of load each; results in "
            f"{args.out}/")
        try:
            main_reg = registry_phase(s)
        except SystemExit as exc:
            s.fail(f"registry: {exc}")
        else:
            throughput_phase(s, main_reg)
            latency_phase(s, main_reg)
            in_flight_phase(s, main_reg)
            sizes_phase(s, main_reg)
    f["server"] = server_summary(f)
    f["targets"] = targets(f, args)
    f["machine"]["loadavg_end"] = os.getloadavg()
    f["failures"] = s.out.failures
    f["elapsed_s"] = round(time.monotonic() - s.t0, 1)
    text = table(f)
    say("")
    say(text)
    json_path, html_path = args.out / "suite.json", args.out / "suite.html"
    _write(json_path, json.dumps(f, indent=1) + "\n")
    _write(html_path, render_html(f))
    say(f"\nsuite: {f['elapsed_s']:.0f} s; wrote {json_path} and {html_path}"
        + (f"; {len(s.out.failures)} run(s) broke" if s.out.failures else ""))
    return 1 if s.out.failures else 0


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    shutil.move(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
