"""Is the simulator ever the limit? Its rate alone against the EIR's maximum (issue 4, Speed).

Usage (from the repository root)::

    python -m bench.sim_bench                 # 200k handsets, 10 s per run
    python -m bench.sim_bench --smoke         # 5k handsets, 2 s per run (what CI runs)

In one run, on this machine, each server a process of its own:

1. ``eir-sim population`` writes a population; ``eir registry`` imports it
   into a fresh SQLite registry and ``eir serve`` answers from it under the
   full regime, its test clock at the population's start.
2. ``eir-sim run`` (closed loop, ``--in-flight`` per run) loads the EIR: the
   EIR's maximum rate as the simulator drives it, every answer judged
   (zero mismatches is required, or the figure is not the EIR's).
3. ``eir-sim run`` loads ``bench.echo_server`` (framing only, one fixed
   ECA): the simulator's own rate, generating every ECR from its templates
   and matching and judging every answer (the echo's fixed answer mostly
   mismatches; judging costs the same).

It prints both rates, the simulator's CPU share in each, and the ratio
sim-alone / EIR; the issue's target is at least 1.5. One JSON object on
stdout (``--json-out`` writes it too); a missed target or a failed run is
listed under ``failures`` and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.ecr_bench import Server
from testbed.eirproc import EirProcess, free_port, run_cli

TARGET_RATIO = 1.5


def log(msg: str) -> None:
    print(f"sim_bench: {msg}", file=sys.stderr, flush=True)


def sim_command() -> list[str]:
    script = Path(sys.executable).parent / "eir-sim"
    return [str(script)] if script.exists() else [sys.executable, "-m", "simulator"]


def make_population(work: Path, size: int, seed: int) -> tuple[Path, str]:
    pop = work / "population"
    subprocess.run([*sim_command(), "population", "--size", str(size), "--seed", str(seed),
                    "--out", str(pop)], check=True, capture_output=True, text=True, timeout=600)
    meta = json.loads((pop / "population.json").read_text())
    return pop, str(meta["start"]["iso"])


def seed_registry(pop: Path, db: Path) -> None:
    for args in (("import-tac", "tac.csv"), ("import", "registry.csv"),
                 ("import-observations", "observations.csv")):
        res = run_cli("registry", args[0], "--db", str(db), str(pop / args[1]), timeout=900)
        if res.returncode:
            raise SystemExit(f"sim_bench: eir registry {args[0]} failed: {res.stderr.strip()}")


def run_sim(args: argparse.Namespace, port: int, pop: Path, out: Path) -> dict[str, Any]:
    cmd = [*sim_command(), "run", "--target", f"127.0.0.1:{port}", "--population", str(pop),
           "--in-flight", str(args.in_flight), "--duration", str(args.duration),
           "--mmes-per-realm", str(args.mmes_per_realm), "--seed", str(args.seed),
           "--report", str(out), "--quiet", "--timeout", "10"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + 120)
    if proc.returncode not in (0, 1) or not out.exists():
        raise SystemExit(f"sim_bench: eir-sim run exited {proc.returncode}: "
                         f"{proc.stderr.strip()[-2000:]}")
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def figures(r: dict[str, Any]) -> dict[str, Any]:
    lat = r.get("latency_ms") or {}
    return {"answered": r["answered"], "throughput_per_s": r["throughput_per_s"],
            "timeouts": r["timeouts"], "errors": r["errors"], "mismatches": r["mismatches"],
            "latency_ms_p50": lat.get("p50"), "latency_ms_p99": lat.get("p99"),
            "simulator_cpu_share": round(r["generator_cpu_s"] / max(r["duration_s"], 1e-9), 3),
            "by_status": r["by_status"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sim_bench", description=__doc__)
    p.add_argument("--size", type=int, default=200_000, help="handsets (default 200,000)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per run (default 10)")
    p.add_argument("--in-flight", type=int, default=256, help="closed loop (default 256)")
    p.add_argument("--mmes-per-realm", type=int, default=2,
                   help="MME identities per operator realm (default 2; 4 realms)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="5k handsets, 2 s per run")
    p.add_argument("--json-out", type=Path)
    p.add_argument("--keep", type=Path, help="keep the work directory here")
    args = p.parse_args(argv)
    if args.smoke:
        args.size, args.duration, args.in_flight = 5_000, 2.0, 64
    work = Path(tempfile.mkdtemp(prefix="sim-bench-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    result: dict[str, Any] = {"settings": {k: str(v) if isinstance(v, Path) else v
                                           for k, v in vars(args).items()}}
    try:
        t0 = time.monotonic()
        pop, start = make_population(work, args.size, args.seed)
        db = work / "eir.db"
        seed_registry(pop, db)
        log(f"{args.size:,} handsets generated and imported in {time.monotonic() - t0:.1f} s")
        conf = work / "eir.toml"
        conf.write_text(f'[clock]\ntest_mode = true\nstart = "{start}"\nspeed = 1.0\n')
        with EirProcess(db, port=free_port(), origin_host="eir.localdomain",
                        origin_realm="localdomain", config=conf,
                        log_path=work / "eir.log") as eir:
            log(f"EIR ready on port {eir.port}; loading it for {args.duration} s")
            result["eir"] = figures(run_sim(args, eir.port, pop, work / "eir.json"))
        echo = Server("the echo server",
                      [sys.executable, "-m", "bench.echo_server", "--listen", "127.0.0.1:0",
                       "--max-seconds", str(args.duration + 300)],
                      re.compile(r"ECHO ready on \S+:(\d+)"))
        try:
            echo.wait_ready(60)
            log(f"echo server ready on port {echo.port}; loading it for {args.duration} s")
            result["simulator_alone"] = figures(run_sim(args, echo.port, pop,
                                                        work / "echo.json"))
        finally:
            echo.stop()
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    eir, alone = result["eir"], result["simulator_alone"]
    for label, r in (("EIR", eir), ("echo", alone)):
        if r["timeouts"] or r["errors"]:
            failures.append(f"{label} run: {r['timeouts']} timeouts, {r['errors']} errors")
    if eir["mismatches"]:
        failures.append(f"EIR run: {eir['mismatches']} mismatches against the population")
    ratio = alone["throughput_per_s"] / max(eir["throughput_per_s"], 1e-9)
    result["ratio_sim_alone_to_eir"] = round(ratio, 2)
    result["target_ratio"] = TARGET_RATIO
    if ratio < TARGET_RATIO and not args.smoke:
        failures.append(f"the simulator alone reached {ratio:.2f}x the EIR's rate "
                        f"(target {TARGET_RATIO}x)")
    result["failures"] = failures
    print(f"EIR (full regime)     {eir['throughput_per_s']:>10,.0f} ECR/s   simulator CPU "
          f"{eir['simulator_cpu_share']:.0%}   p99 {eir['latency_ms_p99']} ms   mismatches "
          f"{eir['mismatches']}\n"
          f"simulator alone       {alone['throughput_per_s']:>10,.0f} ECR/s   simulator CPU "
          f"{alone['simulator_cpu_share']:.0%}   (echo server, answers judged)\n"
          f"ratio sim alone / EIR {ratio:>10.2f}   (target >= {TARGET_RATIO})",
          file=sys.stderr)
    for f in failures:
        print(f"FAIL: {f}", file=sys.stderr)
    text = json.dumps(result, sort_keys=True)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    print(text)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
