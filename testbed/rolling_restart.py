"""A rolling restart under load: ``eir-sim run`` across SIGUSR2 must see no failure.

Usage (from the repository root)::

    .venv/bin/python -m testbed.rolling_restart                  # 2 workers, 1,000/s, 12 s
    .venv/bin/python -m testbed.rolling_restart --workers 4 --rate 5000 --duration 30 \\
        --roll-at 5,15

A population is written with ``eir-sim population`` and its registry seed
imported with the real ``eir registry`` commands; ``eir serve --workers N``
runs with the test clock at the population's start; ``eir-sim run`` sends a
Poisson load (or ``--in-flight``: a closed loop) and judges every answer. At
each ``--roll-at`` second SIGUSR2 goes to the supervisor. The result: the
simulator's counts (sent, answered, timeouts, errors, mismatches, not sent),
its protocol counters (DPRs received, reconnections, requests that waited for
a connection, retransmissions), each roll's duration from the EIR's log and
the worker pids before and after. Exit status 0 when the simulator's
verdict is PASS, a roll completed and none failed, and every worker was
replaced; 1 otherwise, 2 on a setup error.
Treats the EIR and the simulator as black boxes (DESIGN.md 3.6).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from testbed.eirproc import EirProcess, run_cli

__all__ = ["main"]

REPO = Path(__file__).resolve().parents[1]


def _sim(*args: str) -> list[str]:
    return [sys.executable, "-m", "simulator", *args]


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry.name))
    return sorted(out)


def _setup(work: Path, size: int, seed: int) -> tuple[Path, Path, Path]:
    pop = work / "pop"
    res = subprocess.run(_sim("population", "--size", str(size), "--seed", str(seed), "--out",
                              str(pop)), cwd=REPO, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"eir-sim population failed: {res.stderr.strip()}")
    db = work / "eir.db"
    for cmd, name in (("import-tac", "tac.csv"), ("import", "registry.csv"),
                      ("import-observations", "observations.csv")):
        res = run_cli("registry", cmd, "--db", str(db), str(pop / name))
        if res.returncode != 0:
            raise RuntimeError(f"eir registry {cmd} failed: {res.stderr.strip()}")
    start = json.loads((pop / "population.json").read_text())["start"]["iso"]
    config = work / "eir.toml"
    config.write_text(f'[clock]\ntest_mode = true\nstart = "{start}"\nspeed = 1.0\n')
    return pop, db, config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed.rolling_restart",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rate", type=float, default=1000.0, help="Poisson arrivals per second")
    p.add_argument("--in-flight", type=int, help="a closed loop instead of --rate")
    p.add_argument("--duration", type=float, default=12.0, help="seconds of load")
    p.add_argument("--roll-at", default="4", metavar="S[,S...]",
                   help="seconds into the load at which SIGUSR2 is sent (default 4)")
    p.add_argument("--mmes-per-realm", type=int, default=2)
    p.add_argument("--size", type=int, default=5000, help="handsets in the population")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--work", type=Path, help="working directory (default: a temporary one)")
    p.add_argument("--json-out", type=Path)
    args = p.parse_args(argv)
    try:
        at = sorted(float(x) for x in args.roll_at.split(","))
    except ValueError:
        p.error("--roll-at: numbers of seconds, comma-separated")
    if args.workers < 2 or not all(0 < t < args.duration for t in at):
        p.error("--workers must be at least 2 and every --roll-at within --duration")
    with tempfile.TemporaryDirectory(prefix="eir-roll-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        try:
            pop, db, config = _setup(work, args.size, args.seed)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"rolling_restart: {exc}", file=sys.stderr)
            return 2
        return _run(args, at, work, pop, db, config)


def _run(args: argparse.Namespace, at: list[float], work: Path, pop: Path, db: Path,
         config: Path) -> int:
    report = work / "report.json"
    load = ["--in-flight", str(args.in_flight)] if args.in_flight else ["--rate",
                                                                        str(args.rate)]
    with EirProcess(db, origin_host="eir.localdomain", origin_realm="localdomain",
                    config=config, extra=("--workers", str(args.workers)),
                    ready_timeout=120) as eir:
        assert eir.proc is not None
        pids_before = _children(eir.proc.pid)
        sim = subprocess.Popen(_sim("run", "--target", f"127.0.0.1:{eir.port}",
                                    "--population", str(pop), *load, "--duration",
                                    str(args.duration), "--mmes-per-realm",
                                    str(args.mmes_per_realm), "--quiet",
                                    "--report", str(report)),
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
        t0 = time.monotonic()
        for t in at:
            time.sleep(max(0.0, t0 + t - time.monotonic()))
            eir.send_signal(signal.SIGUSR2)
        try:
            out, _ = sim.communicate(timeout=args.duration + 120)
        except subprocess.TimeoutExpired:
            sim.kill()
            out, _ = sim.communicate()
        pids_after = _children(eir.proc.pid)
        code = eir.stop(signal.SIGTERM, 60)
    log = eir.log()
    rolls = [float(s) for s in re.findall(r"rolling restart done: \d+ of \d+ workers replaced "
                                          r"in ([\d.]+) s", log)]
    problems = re.findall(r"rolling restart (?:aborted|refused|failed)[^\n]*", log)
    try:
        r = json.loads(report.read_text())
    except (OSError, ValueError):
        print(f"rolling_restart: no report from eir-sim run:\n{out}", file=sys.stderr)
        return 2
    proto = r["protocol"]
    result = {
        "workers": args.workers, "load": r["load"].get("kind"), "rate": args.rate,
        "in_flight": args.in_flight, "duration_s": args.duration, "roll_at_s": at,
        "sent": r["sent"], "answered": r["answered"], "timeouts": r["timeouts"],
        "errors": r["errors"], "mismatches": r["mismatches"],
        "not_sent": r["load"]["not_sent"], "latency_ms": r["latency_ms"],
        "dpr_received": proto["dpr_received"], "reconnects": proto["reconnects"],
        "waited_for_connection": proto.get("waited_for_connection", 0),
        "retransmissions": proto["retransmissions"], "connect_failures":
        proto["connect_failures"], "rolls_done": len(rolls), "roll_seconds": rolls,
        "roll_problems": problems, "pids_before": pids_before, "pids_after": pids_after,
        "eir_exit": code, "verdict": out.splitlines()[0] if out else "",
    }
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    lat = r["latency_ms"]
    print(f"rolling_restart: {args.workers} workers, {len(at)} SIGUSR2, {len(rolls)} rolls "
          f"done (a signal during a roll is coalesced) in "
          f"{', '.join(f'{s:.1f}' for s in rolls) or '-'} s; sent {r['sent']:,}, answered "
          f"{r['answered']:,}, timeouts {r['timeouts']:,}, errors {r['errors']:,}, mismatches "
          f"{r['mismatches']:,}, not sent {r['load']['not_sent']:,}; {proto['dpr_received']} "
          f"DPRs, {proto.get('waited_for_connection', 0):,} requests waited for a connection, "
          f"{proto['retransmissions']} retransmissions; latency p99 {lat['p99']} ms, max "
          f"{lat['max']} ms")
    passed = (out.startswith("PASS") and rolls and not problems
              and code == 0 and not set(pids_before) & set(pids_after))
    if not passed:
        print(f"rolling_restart: FAIL\n{out}\n{chr(10).join(problems)}", file=sys.stderr)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
