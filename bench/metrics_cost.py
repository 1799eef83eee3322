"""What the metrics cost the S13 answer path: this tree against a tree without them.

Usage (from the repository root; BASE is a copy of the tree before, e.g.
``git archive 5116b8f | tar -x -C /tmp/base``)::

    python -m bench.metrics_cost micro --base /tmp/base      # per-read path, in-process
    python -m bench.metrics_cost e2e --base /tmp/base        # eir serve under bench.loadgen
    python -m bench.metrics_cost micro --base . --rounds 1 --reads 2000   # smoke (CI)

``micro``: ``PeerProtocol.data_received`` with one ECR per read (the worst
case: every request pays every per-read cost) through a real peer machine,
the S13 fast path and the overload gate, a transport that only keeps the
writes; 100,000 reads (``--reads``), best of 7, in a fresh interpreter per run with
``PYTHONPATH`` set to the tree under test. Variants: ``base``, this tree with
the latency sampler off (``off``), sampling one read in 16 (``default``) and
every read (``every``). Reported: the median over ``--rounds`` interleaved
runs, in ns per read.

``e2e``: a fresh ``eir serve`` per run (base, this tree with default
metrics, and with a scrape every second), loaded by ``bench.loadgen`` in a
closed loop (4 connections x 16 in flight, 6 s after 2 s of warm-up);
reported: median ECR/s and server CPU per ECR over ``--rounds`` interleaved
rounds. The machine is shared: compare medians and look at the spread.

One JSON object on stdout; a table on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

_MICRO = r"""
import asyncio, sys, time
sys.path.insert(0, sys.argv[2])
import support
from eir.diameter import messages as m
from eir.diameter.codec import Avp
from eir.diameter.constants import Application, AuthSessionState, AvpCode
from eir.diameter.dictionary import default_dictionary
from eir.diameter.overload import Gate, Guard, Limits
from eir.diameter.peer import PeerConnection, Role
from eir.diameter.transport import PeerProtocol
from eir.s13 import S13Application

class Transport:
    def write(self, data): pass
    def is_closing(self): return False
    def get_extra_info(self, key, default=None):
        return ("127.0.0.1", 1) if key == "peername" else default

class Decision:
    status = 0
    reason = "registered"

async def main():
    every = int(sys.argv[1])
    d = default_dictionary()
    s13 = S13Application(support.EIR, d, lambda *a: Decision())
    gate = Gate(s13.handle, Guard(Limits(), time.monotonic(), 0), support.EIR, time.monotonic,
                Avp.u32(AvpCode.AUTH_SESSION_STATE, AuthSessionState.NO_STATE_MAINTAINED).encode())
    kw = {}
    if every:
        from eir.diameter.latency import Sampler
        kw["sampler"] = Sampler(every)
    proto = PeerProtocol(lambda ip, now: PeerConnection(
        Role.RESPONDER, support.EIR, m.Applications(), d, now,
        handlers={int(Application.S13): gate}), **kw)
    proto.connection_made(Transport())
    proto.data_received(support.cer().encode())
    ecr = support.ecr().encode()
    n, best = int(sys.argv[3]), float("inf")
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(n):
            proto.data_received(ecr)
        best = min(best, (time.perf_counter() - t0) / n)
    assert s13.fast >= n
    print(round(best * 1e9))

asyncio.run(main())
"""


def _micro_once(tree: Path, every: int, reads: int) -> int:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, "-c", _MICRO, str(every), str(HERE / "tests"),
                          str(reads)],
                         env=env, capture_output=True, text=True, timeout=300, check=True)
    return int(out.stdout.split()[-1])


def micro(base: Path, rounds: int, reads: int = 100_000) -> dict[str, object]:
    variants = {"base": (base, 0), "off": (HERE, 0), "default": (HERE, 16), "every": (HERE, 1)}
    runs: dict[str, list[int]] = {k: [] for k in variants}
    for r in range(rounds):
        for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            tree, every = variants[name]
            runs[name].append(_micro_once(tree, every, reads))
    med = {k: statistics.median(v) for k, v in runs.items()}
    for k, v in runs.items():
        print(f"{k:8s} median {med[k]:7.0f} ns/read  ratio {med[k] / med['base']:.3f}  {v}",
              file=sys.stderr)
    return {"mode": "micro", "ns_per_read": runs, "median": med,
            "ratio": {k: med[k] / med["base"] for k in med}}


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def e2e(base: Path, rounds: int, db: Path, duration: float) -> dict[str, object]:
    work = Path(f"{db}.metrics-cost")
    work.mkdir(exist_ok=True)
    mport = 19464
    variants = {"base": (base, "", False),
                "metrics": (HERE, f'[metrics]\nlisten = "127.0.0.1:{mport}"\n', False),
                "metrics+scrape1s": (HERE, f'[metrics]\nlisten = "127.0.0.1:{mport}"\n', True)}
    rate: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds):
        for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            tree, cfg, scrape = variants[name]
            conf = work / f"{name}.toml"
            conf.write_text(cfg + '[log]\nlevel = "warning"\n')
            srv = subprocess.Popen([sys.executable, "-m", "eir.cli", "serve", "--db", str(db),
                                    "--listen", "127.0.0.1:13868", "--config", str(conf)],
                                   env=dict(os.environ, PYTHONPATH=str(tree)),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            stop = threading.Event()

            def scraper(stop: threading.Event = stop) -> None:
                while not stop.wait(1.0):
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics",
                                                    timeout=2) as resp:
                            resp.read()
                    except OSError:
                        pass

            thread = threading.Thread(target=scraper) if scrape else None
            try:
                time.sleep(2.0)
                if thread is not None:
                    thread.start()
                c0 = _cpu(srv.pid)
                out = subprocess.run(
                    [sys.executable, "-m", "bench.loadgen", "--target", "127.0.0.1:13868",
                     "--seed", "1", "--duration", str(duration), "--warmup", "2",
                     "--connections", "4", "--in-flight", "16", "--dest-realm", "localdomain",
                     "--quiet"], capture_output=True, text=True, cwd=HERE, timeout=120,
                    env=dict(os.environ, PYTHONPATH=str(HERE)))
                c1 = _cpu(srv.pid)
            finally:
                stop.set()
                if thread is not None:
                    thread.join()
                srv.send_signal(signal.SIGTERM)
                srv.wait(30)
            got = json.loads(out.stdout.strip().splitlines()[-1])
            rate[name].append(float(got["rate"]))
            cpu[name].append(1e6 * (c1 - c0) / max(int(got["answered"]), 1))
            print(f"round {r} {name:18s} {got['rate']:9.0f} ECR/s  server CPU "
                  f"{cpu[name][-1]:.2f} µs/ECR", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in rate.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    for k in variants:
        print(f"{k:18s} median {med[k]:9.0f} ECR/s (ratio {med[k] / med['base']:.3f}, "
              f"spread {min(rate[k]):.0f}-{max(rate[k]):.0f}); CPU {med_cpu[k]:.2f} µs/ECR "
              f"(ratio {med_cpu[k] / med_cpu['base']:.3f})", file=sys.stderr)
    return {"mode": "e2e", "rate": rate, "cpu_us_per_ecr": cpu, "median_rate": med,
            "median_cpu_us_per_ecr": med_cpu,
            "ratio": {k: med[k] / med["base"] for k in med}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.metrics_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("micro", "e2e"))
    p.add_argument("--base", type=Path, required=True,
                   help="a copy of the tree before the metrics (its eir/ is imported)")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--db", type=Path, default=None,
                   help="e2e: the registry served (default: the demo registry, imported)")
    p.add_argument("--duration", type=float, default=6.0, help="e2e: seconds of load")
    p.add_argument("--reads", type=int, default=100_000, help="micro: reads per timing")
    args = p.parse_args(argv)
    if not (args.base / "eir" / "__init__.py").is_file():
        p.error(f"--base {args.base}: no eir/ package there")
    if args.mode == "micro":
        result = micro(args.base.resolve(), args.rounds, args.reads)
    else:
        db = args.db
        if db is None:
            db = Path(f"/tmp/eir-metrics-cost-{os.getpid()}.db")
            subprocess.run([sys.executable, "-m", "eir.cli", "registry", "import", "--quiet",
                            "--db", str(db), str(HERE / "eir" / "data" / "demo-registry.csv")],
                           check=True, cwd=HERE, capture_output=True)
        result = e2e(args.base.resolve(), args.rounds, db, args.duration)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
