"""End-to-end S13 benchmark: a 1,000,000-IMEI registry, the real EIR, a pipelined load.

Usage (from the repository root)::

    .venv/bin/python -m bench.ecr_bench                 # 1M IMEIs, 10 s per server
    .venv/bin/python -m bench.ecr_bench --smoke         # 10k IMEIs, 2 s (CI)

Steps:

1. Build a registry CSV with a realistic mix (88.7% white, 10% grey, 1.27%
   black, exception pairs for a tenth of the black IMEIs) and import it with
   the real command line, ``eir registry import --db DB --quiet FILE``. The
   database is cached under ``--cache-dir`` keyed by size and seed.
2. Start ``eir serve`` on 127.0.0.1 (a free port) and wait for "EIR ready".
3. Build a query list mixing white, grey, black, unknown IMEIs and black
   IMEIs asked with their exception IMSI, each with the answer it must get,
   and drive the EIR with ``bench.loadgen`` for ``--duration`` seconds.
4. Start ``bench.echo_server`` (framing only: the Python ceiling) and drive
   it with the same load generator and settings.
5. Print a table (stderr) and the figures as JSON (stdout). Exit 1 when a
   request was lost, an answer was wrong or unmatched, or the answer mix is
   not the one the query list implies; 2 when a step failed.

Server CPU is read from /proc/PID/stat (utime+stime) over the load
generator's measurement window; the load generator reports its own.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
GENERATOR_VERSION = 1  # bump when the registry or query generation changes

# Registry mix (shares of the registry): black is 127k of 10M scaled, grey 10%,
# white the rest; a tenth of the black IMEIs have an (IMEI, IMSI) exception pair.
BLACK_SHARE = 0.0127
GREY_SHARE = 0.10
EXCEPTION_SHARE_OF_BLACK = 0.10
WHITE_REASONS = (("registered", 90), ("legalised", 5), ("grandfathered", 5))
GREY_REASONS = (("pending_verification", 100),)
BLACK_REASONS = (("stolen", 60), ("lost", 25), ("counterfeit", 10), ("illegal_import", 5))
SOURCES = ("ministry", "operator", "police")
TAC_PREFIXES = ("35", "86", "01", "49", "99")
SERIALS_PER_TAC = 1_000_000

DEFAULT_MIX = "white=25,grey=25,black=25,unknown=20,exception=5"
CATEGORIES = ("white", "grey", "black", "unknown", "exception")
SERVER_READY_TIMEOUT = 300.0


# -- registry and queries ----------------------------------------------------------------


@dataclass
class Registry:
    white: list[str]
    grey: list[str]
    black: list[str]
    exceptions: list[tuple[str, str]]  # (imei14, imsi)
    unknown: list[str]  # IMEIs on no list, for queries


def _imsi(rnd: random.Random) -> str:
    return f"00101{rnd.randrange(10**10):010d}"


def generate_registry(n: int, seed: int, n_unknown: int) -> Registry:
    """Distinct IMEIs spread over a few hundred TACs; deterministic for (n, seed)."""
    rnd = random.Random(f"eir-bench-{seed}-{n}")
    n_tacs = max(4, min(500, n // 2000))
    tacs: set[str] = set()
    while len(tacs) < n_tacs:
        tacs.add(rnd.choice(TAC_PREFIXES) + f"{rnd.randrange(10**6):06d}")
    tac_list = sorted(tacs)
    space = n_tacs * SERIALS_PER_TAC
    picks = rnd.sample(range(space), n + n_unknown)
    imeis = [f"{tac_list[i // SERIALS_PER_TAC]}{i % SERIALS_PER_TAC:06d}" for i in picks]
    n_black = max(1, round(n * BLACK_SHARE))
    n_grey = max(1, round(n * GREY_SHARE))
    black = imeis[:n_black]
    grey = imeis[n_black:n_black + n_grey]
    white = imeis[n_black + n_grey:n]
    unknown = imeis[n:]
    n_exc = max(1, round(n_black * EXCEPTION_SHARE_OF_BLACK))
    exceptions = [(imei, _imsi(rnd)) for imei in black[:n_exc]]
    return Registry(white, grey, black, exceptions, unknown)


def _weighted(rnd: random.Random, table: tuple[tuple[str, int], ...]) -> str:
    return rnd.choices([r for r, _ in table], [w for _, w in table])[0]


def write_registry_csv(reg: Registry, path: Path, seed: int) -> None:
    rnd = random.Random(seed + 1)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        fh.write("imei,list,reason,imsi,source,note\n")
        rows = ([(i, "white", WHITE_REASONS) for i in reg.white] +
                [(i, "grey", GREY_REASONS) for i in reg.grey] +
                [(i, "black", BLACK_REASONS) for i in reg.black])
        rnd.shuffle(rows)
        for imei, lst, reasons in rows:
            fh.write(f"{imei},{lst},{_weighted(rnd, reasons)},,{rnd.choice(SOURCES)},\n")
        for imei, imsi in reg.exceptions:
            fh.write(f"{imei},exception,owner_recovered,{imsi},police,bench pair\n")
    tmp.replace(path)


def parse_mix(text: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in CATEGORIES or not value.strip():
            raise SystemExit(f"ecr_bench: --mix: expected {'/'.join(CATEGORIES)}=N, got {part!r}")
        mix[name] = float(value)
    total = sum(mix.values())
    if total <= 0:
        raise SystemExit("ecr_bench: --mix: all weights are zero")
    return {k: v / total for k, v in mix.items() if v > 0}


def expected_answer(category: str, unknown_policy: str) -> str:
    return {"white": "WHITELISTED", "grey": "GREYLISTED", "black": "BLACKLISTED",
            "exception": "WHITELISTED",
            "unknown": "5422" if unknown_policy == "reject" else "GREYLISTED"}[category]


def write_queries(reg: Registry, mix: dict[str, float], n: int, seed: int,
                  unknown_policy: str, path: Path) -> dict[str, int]:
    """A shuffled query list with exactly round(n * share) items per category."""
    rnd = random.Random(seed + 2)
    pools: dict[str, list[Any]] = {"white": reg.white, "grey": reg.grey, "black": reg.black,
                                   "unknown": reg.unknown, "exception": reg.exceptions}
    items: list[tuple[str, str, str]] = []
    per_category: dict[str, int] = {}
    for cat, share in mix.items():
        k = round(n * share)
        pool = pools[cat]
        if not pool:
            raise SystemExit(f"ecr_bench: no {cat} IMEIs to query")
        per_category[cat] = k
        for j in range(k):
            if cat == "exception":
                imei, imsi = pool[rnd.randrange(len(pool))]
            else:
                imei = pool[j % len(pool)] if k > len(pool) else pool[rnd.randrange(len(pool))]
                imsi = _imsi(rnd)  # an IMSI with no exception pair
            items.append((imei + "0", imsi, expected_answer(cat, unknown_policy)))
    rnd.shuffle(items)
    with open(path, "w", newline="") as fh:
        fh.write("imei,imsi,expect\n")
        fh.writelines(f"{a},{b},{c}\n" for a, b, c in items)
    return per_category


# -- processes ------------------------------------------------------------------------------


def eir_command() -> list[str]:
    """The ``eir`` command: $EIR_BENCH_EIR (split on spaces), else the venv's script."""
    override = os.environ.get("EIR_BENCH_EIR")
    if override:
        return override.split()
    exe = Path(sys.executable).parent / "eir"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "eir.cli"]


def build_db(args: argparse.Namespace, reg: Registry, cache: Path) -> tuple[Path, dict[str, Any]]:
    """The registry database for (size, seed), built with the real CLI once and cached."""
    db = cache / "registry.db"
    meta_path = cache / "registry.json"
    if db.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        meta["cached"] = True
        return db, meta
    for stale in cache.glob("registry.db*"):
        stale.unlink()
    csv_path = cache / "registry.csv"
    t0 = time.monotonic()
    write_registry_csv(reg, csv_path, args.seed)
    t_csv = time.monotonic() - t0
    cmd = [*eir_command(), "registry", "import", "--db", str(db), "--quiet", str(csv_path)]
    log(f"importing {csv_path.stat().st_size / 1e6:.0f} MB with: {' '.join(cmd)}")
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=REPO)
    t_import = time.monotonic() - t0
    if proc.returncode != 0:
        for stale in cache.glob("registry.db*"):
            stale.unlink()
        raise SystemExit(f"ecr_bench: registry import failed (exit {proc.returncode}):\n"
                         f"{proc.stderr.strip()[-2000:]}")
    csv_path.unlink()  # the database is what is cached; the CSV is cheap to rebuild
    meta = {"imeis": len(reg.white) + len(reg.grey) + len(reg.black),
            "white": len(reg.white), "grey": len(reg.grey), "black": len(reg.black),
            "exception_pairs": len(reg.exceptions), "csv_s": round(t_csv, 2),
            "import_s": round(t_import, 2), "db_mb": round(db.stat().st_size / 1e6, 1)}
    meta_path.write_text(json.dumps(meta))
    meta["cached"] = False
    return db, meta


class Server:
    """A server subprocess whose stderr is read by a thread until a ready line."""

    def __init__(self, name: str, cmd: list[str], ready: re.Pattern[str]) -> None:
        self.name = name
        self.cmd = cmd
        self.lines: deque[str] = deque(maxlen=5000)
        self.ready_re = ready
        self.ready = threading.Event()
        self.port = 0
        self.t_start = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True, cwd=REPO)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.startup_s = 0.0
        self.crashed_at: float | None = None
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if "Traceback" in line and self.crashed_at is None:
                self.crashed_at = time.monotonic()
            if not self.ready.is_set():
                match = self.ready_re.search(line)
                if match:
                    self.port = int(match.group(1))
                    self.startup_s = time.monotonic() - self.t_start
                    self.ready.set()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.2):
            # a start-up traceback may leave the process alive (a non-daemon thread)
            crashed = self.crashed_at is not None and time.monotonic() - self.crashed_at > 2
            if self.proc.poll() is not None or crashed or time.monotonic() > deadline:
                self.stop()
                tail = "\n".join(list(self.lines)[-30:])
                raise SystemExit(f"ecr_bench: {self.name} did not start "
                                 f"(exit {self.proc.returncode}):\n{tail}")

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(5)
        return self.proc.returncode

    def rss_mb(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
        except OSError:
            pass
        return None


class CpuSampler:
    """utime+stime of a process every ``interval`` s, on the monotonic clock."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[int, float]] = []  # (monotonic µs, cpu seconds)
        self.tick = os.sysconf("SC_CLK_TCK")
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def read(self) -> float | None:
        try:
            raw = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return None
        fields = raw[raw.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / self.tick  # utime, stime

    def _run(self) -> None:
        deadline = time.monotonic() + 7200
        while not self._stop.is_set() and time.monotonic() < deadline:
            cpu = self.read()
            if cpu is None:
                return
            self.samples.append((time.monotonic_ns() // 1000, cpu))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(2)

    def percent(self, start_us: int, end_us: int) -> float | None:
        """Average CPU over [start, end] as % of one core, interpolating between samples."""
        s = self.samples
        if len(s) < 2 or end_us <= start_us:
            return None

        def at(t: int) -> float:
            if t <= s[0][0]:
                return s[0][1]
            for (t0, c0), (t1, c1) in itertools.pairwise(s):
                if t0 <= t <= t1:
                    return c0 + (c1 - c0) * (t - t0) / max(t1 - t0, 1)
            return s[-1][1]

        return round(100 * (at(end_us) - at(start_us)) / ((end_us - start_us) / 1e6), 1)


def run_loadgen(args: argparse.Namespace, port: int, queries: Path,
                check: bool) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.loadgen", "--target", f"127.0.0.1:{port}",
           "--imeis", str(queries), "--connections", str(args.connections),
           "--in-flight", str(args.in_flight), "--duration", str(args.duration),
           "--warmup", str(args.warmup), "--drain", str(args.drain),
           "--procs", str(args.procs), "--quiet"]
    if not check:
        cmd.append("--ignore-expect")
    timeout = args.duration + args.drain + 180
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    try:
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        result = {"error": f"loadgen exit {proc.returncode}: {proc.stderr.strip()[-2000:]}"}
    return result


def log(msg: str) -> None:
    print(f"ecr_bench: {msg}", file=sys.stderr, flush=True)


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    figures: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def server_cpu(result: dict[str, Any], sampler: CpuSampler) -> None:
    """Server CPU over the measured window, and per answer: the figure that noise on a
    shared machine disturbs least (a server that gets half a core is slower, not costlier)."""
    pct = sampler.percent(result["measure_start_us"], result["measure_end_us"])
    result["server_cpu_percent"] = pct
    if pct and result.get("rate"):
        result["server_cpu_us_per_answer"] = round(pct / 100 / result["rate"] * 1e6, 2)


def bench_eir(args: argparse.Namespace, db: Path, queries: Path, work: Path,
              out: Outcome) -> dict[str, Any]:
    cfg = work / "eir-bench.toml"
    cfg.write_text(f'[policy]\nunknown_equipment = "{args.unknown_policy}"\n'
                   f'')
    serve = ["serve", "--config", str(cfg), "--db", str(db), "--listen", "127.0.0.1:0",
             "--origin-host", "eir.bench", "--origin-realm", "bench", "--log-level", "info"]
    if args.profile:
        cmd = [sys.executable, "-m", "cProfile", "-o", str(args.profile), "-m", "eir.cli", *serve]
    else:
        cmd = [*eir_command(), *serve]
    log(f"starting the EIR: {' '.join(cmd)}")
    eir = Server("the EIR", cmd, re.compile(r"EIR ready: S13 on \S+:(\d+)"))
    try:
        eir.wait_ready(SERVER_READY_TIMEOUT)
        rss = eir.rss_mb()
        log(f"EIR ready on port {eir.port} after {eir.startup_s:.1f} s (RSS {rss} MB); "
            f"loading it for {args.duration} s")
        sampler = CpuSampler(eir.proc.pid)
        result = run_loadgen(args, eir.port, queries, check=True)
        sampler.stop()
    finally:
        code = eir.stop()
    if "error" not in result:
        server_cpu(result, sampler)
    result["server_rss_mb"] = rss
    result["server_startup_s"] = round(eir.startup_s, 2)
    result["server_exit"] = code
    text = "\n".join(eir.lines)
    loaded = re.search(r"registry \S+ loaded: version \d+, (\d+) entries, (\d+) exception "
                       r"pairs in ([\d.]+) s", text)
    if loaded:
        result["snapshot"] = {"entries": int(loaded.group(1)),
                              "exception_pairs": int(loaded.group(2)),
                              "load_s": float(loaded.group(3))}
    stopped = re.search(r"stopped: (\d+) ECR answered \((\d+) fast path\)", text)
    if stopped:
        result["server_answered"] = int(stopped.group(1))
        result["server_fast_path"] = int(stopped.group(2))
    problems = [ln for ln in eir.lines if " ERROR " in ln or " WARNING " in ln or
                "Traceback" in ln]
    if problems:
        result["server_log_problems"] = problems[:10]
    if code not in (0, None):
        out.failures.append(f"the EIR exited with {code}")
    return result


def bench_echo(args: argparse.Namespace, queries: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.echo_server", "--listen", "127.0.0.1:0",
           "--max-seconds", str(args.duration + args.drain + 300)]
    echo = Server("the echo server", cmd, re.compile(r"ECHO ready on \S+:(\d+)"))
    try:
        echo.wait_ready(60)
        log(f"echo server ready on port {echo.port}; loading it for {args.duration} s")
        sampler = CpuSampler(echo.proc.pid)
        result = run_loadgen(args, echo.port, queries, check=False)
        sampler.stop()
    finally:
        echo.stop()
    if "error" not in result:
        server_cpu(result, sampler)
    return result


def check_eir(r: dict[str, Any], expected: dict[str, float], tolerance: float,
              out: Outcome) -> dict[str, dict[str, float]]:
    """Failures for lost, wrong or unmatched answers and a mix unlike the query list's."""
    if "error" in r:
        out.failures.append(f"EIR run: {r['error']}")
        return {}
    if r["lost"]:
        out.failures.append(f"{r['lost']} request(s) lost (unanswered after the drain)")
    if r["mismatches"]:
        out.failures.append(f"{r['mismatches']} answer(s) not the expected one: "
                            f"{r['mismatch_detail']}")
    if r["unmatched_answers"]:
        out.failures.append(f"{r['unmatched_answers']} answer(s) with an unknown Hop-by-Hop id")
    if r.get("errors"):
        out.failures.append(f"load generator errors: {r['errors'][:3]}")
    answered = max(r["answered"], 1)
    mix: dict[str, dict[str, float]] = {}
    for name in sorted(set(expected) | set(r["status"])):
        want = 100 * expected.get(name, 0.0)
        got = 100 * r["status"].get(name, 0) / answered
        mix[name] = {"expected_pct": round(want, 2), "got_pct": round(got, 2)}
        # a short run sends a sample of the shuffled list: allow 5 sigma of sampling too
        p_want = want / 100
        allowed = 100 * max(tolerance, 5 * math.sqrt(p_want * (1 - p_want) / answered))
        if abs(got - want) > allowed:
            out.failures.append(f"answer mix: {name} {got:.2f}% of answers, "
                                f"{want:.2f}% expected")
    if "server_answered" in r and r["server_answered"] != r["answered"]:
        out.failures.append(f"the EIR counted {r['server_answered']} answers, "
                            f"the load generator {r['answered']}")
    return mix


def table(f: dict[str, Any]) -> str:
    e, c = f.get("eir", {}), f.get("echo", {})

    def lat(r: dict[str, Any], k: str) -> str:
        v = r.get("latency_us", {}).get(k)
        return "-" if v is None else f"{v / 1000:.2f}"

    def num(r: dict[str, Any], k: str, fmt: str = "{:,.0f}") -> str:
        v = r.get(k)
        return "-" if v is None else fmt.format(v)

    def cpu(r: dict[str, Any]) -> str:
        v = r.get("cpu", {}).get("percent_of_core")
        per = r.get("cpu", {}).get("per_process")
        if v is None:
            return "-"
        return f"{v:.0f}%" + (f" ({'/'.join(f'{p:.0f}' for p in per)})" if per else "")

    rows = [("answers/s", num(e, "rate"), num(c, "rate"))]
    rows += [(f"latency {k} (ms)", lat(e, k), lat(c, k))
             for k in ("p50", "p90", "p99", "p99.9", "max")]
    rows += [("sent", num(e, "sent"), num(c, "sent")),
             ("answered", num(e, "answered"), num(c, "answered")),
             ("lost", num(e, "lost"), num(c, "lost")),
             ("server CPU (% of a core)", num(e, "server_cpu_percent", "{:.0f}%"),
              num(c, "server_cpu_percent", "{:.0f}%")),
             ("server CPU per answer (us)", num(e, "server_cpu_us_per_answer", "{:.2f}"),
              num(c, "server_cpu_us_per_answer", "{:.2f}")),
             ("loadgen CPU (% of a core)", cpu(e), cpu(c))]
    w = max(len(r[0]) for r in rows)
    lines = [f"{'':{w}}  {'EIR':>14}  {'echo':>14}"]
    lines += [f"{a:{w}}  {b:>14}  {x:>14}" for a, b, x in rows]
    if f.get("ratio_eir_echo") is not None:
        lines.append(f"EIR/echo: {f['ratio_eir_echo']:.2f}  "
                     f"(target {f['target_rate']:,} ECR/s: "
                     f"{'met' if f['target_met'] else 'NOT met'})")
    if f.get("mix"):
        lines.append("answer mix (EIR)   expected      got")
        lines += [f"  {k:16} {v['expected_pct']:7.2f}% {v['got_pct']:7.2f}%"
                  for k, v in f["mix"].items()]
    for name, r in (("EIR", e), ("echo", c)):
        if r.get("verdict"):
            lines.append(f"{name}: {r['verdict']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ecr_bench",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--imeis", type=int, default=1_000_000, help="registry size (1,000,000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--queries", type=int, default=200_000, help="distinct queries (200,000)")
    p.add_argument("--mix", default=DEFAULT_MIX, help=f"query mix ({DEFAULT_MIX})")
    p.add_argument("--unknown-policy", choices=("reject", "greylist"), default="reject",
                   help="the EIR's policy.unknown_equipment (reject: unknown IMEIs get 5422)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load per server")
    p.add_argument("--warmup", type=float, default=1.0,
                   help="first seconds of each run left out of rate and latency")
    p.add_argument("--drain", type=float, default=5.0, help="seconds to wait for late answers")
    p.add_argument("--connections", type=int, default=4, help="connections (4)")
    p.add_argument("--in-flight", type=int, default=64, help="requests in flight per connection")
    p.add_argument("--procs", type=int, default=1, help="load generator processes (1)")
    p.add_argument("--tolerance", type=float, default=0.02,
                   help="allowed difference of each answer share from the expected (0.02)")
    p.add_argument("--target-rate", type=int, default=30_000, help="ECR/s to call the target met")
    p.add_argument("--cache-dir", type=Path,
                   default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                   / "eir-bench")
    p.add_argument("--no-echo", action="store_true", help="skip the echo server run")
    p.add_argument("--profile", type=Path, help="run the EIR under cProfile, stats to FILE")
    p.add_argument("--json-out", type=Path, help="also write the JSON figures here")
    p.add_argument("--smoke", action="store_true",
                   help="tiny run for CI: 10k IMEIs, 5k queries, 2 s, 2 connections")
    args = p.parse_args(argv)
    if args.smoke:
        args.imeis, args.queries, args.duration, args.warmup = 10_000, 5_000, 2.0, 0.5
        args.connections, args.in_flight, args.drain = 2, 16, 5.0
    if args.warmup >= args.duration:
        p.error("--warmup must be shorter than --duration")
    mix = parse_mix(args.mix)
    t_all = time.monotonic()
    out = Outcome()

    key = f"n{args.imeis}-s{args.seed}-g{GENERATOR_VERSION}"
    cache = args.cache_dir / key
    cache.mkdir(parents=True, exist_ok=True)
    n_unknown = max(1000, min(args.queries, 200_000))
    t0 = time.monotonic()
    reg = generate_registry(args.imeis, args.seed, n_unknown)
    log(f"registry of {args.imeis:,} IMEIs generated in {time.monotonic() - t0:.1f} s")
    db, meta = build_db(args, reg, cache)
    log(f"registry database {db} ({'cached' if meta['cached'] else 'built'}: {meta})")

    qhash = hashlib.sha256(f"{args.queries}|{sorted(mix.items())}|{args.unknown_policy}"
                           .encode()).hexdigest()[:12]
    queries = cache / f"queries-{qhash}.csv"
    per_cat = write_queries(reg, mix, args.queries, args.seed, args.unknown_policy, queries)
    n_q = sum(per_cat.values())
    expected: dict[str, float] = {}
    for cat, k in per_cat.items():
        name = expected_answer(cat, args.unknown_policy)
        expected[name] = expected.get(name, 0.0) + k / n_q
    del reg

    with tempfile.TemporaryDirectory(prefix="eir-bench-") as tmp:
        work = Path(tmp)
        try:
            eir = bench_eir(args, db, queries, work, out)
        except SystemExit as exc:
            print(exc, file=sys.stderr)
            return 2
    mix_report = check_eir(eir, expected, args.tolerance, out)
    echo: dict[str, Any] = {}
    if not args.no_echo:
        echo = bench_echo(args, queries)
        if "error" in echo:
            out.failures.append(f"echo run: {echo['error']}")
        elif echo["lost"]:
            out.failures.append(f"echo run: {echo['lost']} request(s) lost")
    from bench.loadgen import generator_verdict

    for r in (eir, echo):
        if r and "error" not in r:
            r["verdict"] = generator_verdict(r)
            r.pop("hist", None)
    rate_e, rate_c = eir.get("rate"), echo.get("rate")
    figures = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "registry": meta,
        "queries": {"count": n_q, "per_category": per_cat},
        "expected_mix": {k: round(v, 4) for k, v in expected.items()},
        "mix": mix_report,
        "eir": eir,
        "echo": echo,
        "ratio_eir_echo": round(rate_e / rate_c, 3) if rate_e and rate_c else None,
        "target_rate": args.target_rate,
        "target_met": bool(rate_e and rate_e >= args.target_rate),
        "failures": out.failures,
        "elapsed_s": round(time.monotonic() - t_all, 1),
    }
    if args.profile and args.profile.exists():
        figures["profile"] = str(args.profile)
        print(profile_top(args.profile), file=sys.stderr)
    print(table(figures), file=sys.stderr)
    for f in out.failures:
        print(f"FAIL: {f}", file=sys.stderr)
    text = json.dumps(figures)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    print(text, flush=True)
    return 1 if out.failures else 0


def profile_top(path: Path, n: int = 25) -> str:
    import io
    import pstats

    buf = io.StringIO()
    stats = pstats.Stats(str(path), stream=buf)
    stats.sort_stats("tottime").print_stats(n)
    return buf.getvalue()


if __name__ == "__main__":
    sys.exit(main())
