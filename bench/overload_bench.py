"""Overload control measured: a configured limit offered twice over, fairness, and a
saturated CPU (issue 6, item 1).

Usage (from the repository root)::

    python -m bench.overload_bench                 # limit 4,000/s, 10 s surge, sweep to max
    python -m bench.overload_bench --smoke         # tiny and short (what CI runs)

Three parts, each a real ``eir serve`` on a copy of a generated registry (the
full regime), loaded by ``bench.loadgen`` processes in open loop (requests on
a Poisson schedule, whatever comes back):

1. **Limit** (``overload.max_rate = L``): a background peer pair sends 0.5 L
   for the whole run and a surge pair 1.5 L for ``--duration`` seconds, so the
   node is offered 2 L, then 0.5 L. Figures: answered successfully per second
   during the surge (target: at least 90% of L), the latency of every refusal
   (target: at most 5 ms, all of them), p99 of the admitted requests (target:
   10 ms), the server's resident memory over the run (flat), and how long
   refusals go on after the surge ends (target: under 1 s).
2. **Fairness**: a polite peer at 0.2 L (under its half share) beside a peer
   sending ten times its share (5 L). Target: the polite peer's success
   rate at least 99.9%.
3. **Saturation**: no configured limit, the measured-load limit on
   (``overload.max_lag_seconds = 0.5``), then off (the default), at offered
   loads up to the most the generator can send
   (``--sweep``, multiples of the throughput measured first in a closed loop):
   goodput and latency against offered load, both ways.

Targets missed are reported (``target_met``), not failures: the machine is
shared. The exit status is 1 only when a request goes unanswered or a run
breaks. Figures as one JSON object on stdout (and ``--json-out``), a table on
stderr, plots in a self-contained HTML page (``--html``).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.ecr_bench import (
    DEFAULT_MIX,
    POLICIES,
    REPO,
    Server,
    Sizes,
    eir_command,
    fresh_copy,
    parse_mix,
    prepare,
    remove_db,
    write_queries,
)

READY = re.compile(r"EIR ready: S13 on \S+:(\d+)")
SUCCESS = ("WHITELISTED", "GREYLISTED", "BLACKLISTED", "5422")


def log(msg: str) -> None:
    print(f"overload_bench: {msg}", file=sys.stderr, flush=True)


class RssSampler:
    """The server's resident memory (MiB) every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self.thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self.thread.start()

    def _run(self, interval: float) -> None:
        deadline = time.monotonic() + 3600
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                text = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            for line in text.splitlines():
                if line.startswith("VmRSS:"):
                    self.samples.append((time.monotonic() - self._t0, int(line.split()[1]) / 1024))
            self._stop.wait(interval)

    def stop(self) -> list[tuple[float, float]]:
        self._stop.set()
        self.thread.join(2)
        return self.samples


class Load:
    """One ``bench.loadgen`` process in open loop (or closed loop when ``rate`` is None)."""

    def __init__(self, port: int, queries: Path, name: str, *, rate: float | None,
                 seconds: float, connections: int, procs: int = 1, drain: float = 5.0) -> None:
        cmd = [sys.executable, "-m", "bench.loadgen", "--target", f"127.0.0.1:{port}",
               "--imeis", str(queries), "--ignore-expect", "--quiet",
               "--connections", str(connections), "--duration", str(seconds),
               "--drain", str(drain), "--procs", str(procs), "--host-suffix", name]
        if rate is not None:
            cmd += ["--rate", str(rate)]
        self.name = name
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, cwd=REPO)
        self.timeout = seconds + drain + 120

    def result(self) -> dict[str, Any]:
        try:
            out, err = self.proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        try:
            r: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            return {"error": f"loadgen {self.name} exit {self.proc.returncode}: {err[-1500:]}"}
        for key in ("hist", "hist_send", "hist_lag", "hist_refused"):
            r.pop(key, None)
        return r


def ok_count(r: dict[str, Any]) -> int:
    return sum(n for k, n in r.get("status", {}).items() if k in SUCCESS)


def start_eir(work: Path, db: Path, label: str, overload: dict[str, Any]) -> Server:
    served = fresh_copy(db, work / f"{label}.db")
    cfg = work / f"{label}.toml"
    lines = ["[overload]"] + [f"{k} = {v}" for k, v in overload.items()]
    cfg.write_text("\n".join(lines) + "\n")
    cmd = [*eir_command(), "serve", "--config", str(cfg), "--db", str(served),
           "--listen", "127.0.0.1:0", "--origin-host", "eir.bench", "--origin-realm", "bench",
           "--log-level", "info"]
    log(f"starting the EIR ({label}): overload {overload}")
    eir = Server(f"the EIR ({label})", cmd, READY)
    eir.wait_ready(600)
    return eir


def stop_eir(eir: Server, work: Path, label: str) -> dict[str, Any]:
    code = eir.stop()
    remove_db(work / f"{label}.db")
    lines = list(eir.lines)
    return {"exit": code, "overload_log": [ln for ln in lines if "overload" in ln][:20],
            "problems": [ln for ln in lines if "Traceback" in ln or " ERROR " in ln][:5]}


# -- part 1: a limit offered twice over ------------------------------------------------------


def limit_part(args: argparse.Namespace, work: Path, db: Path, queries: Path,
               failures: list[str]) -> dict[str, Any]:
    limit = args.limit
    eir = start_eir(work, db, "limit", {"max_rate": limit})
    rss = RssSampler(eir.proc.pid)
    try:
        tail = args.recover
        background = Load(eir.port, queries, "background", rate=0.5 * limit,
                          seconds=args.duration + tail, connections=2)
        time.sleep(0.3)
        surge = Load(eir.port, queries, "surge", rate=1.5 * limit, seconds=args.duration,
                     connections=2)
        bg, sg = background.result(), surge.result()
    finally:
        samples = rss.stop()
        server = stop_eir(eir, work, "limit")
    broken = _broken("limit", (bg, sg), failures)
    if broken:
        return {"error": broken}
    # both timelines on the background's clock (CLOCK_MONOTONIC is shared by processes)
    shift = round((sg["t0_us"] - bg["t0_us"]) / 1e6)
    bg_ok, sg_ok = _ok_timeline(bg), [0] * shift + _ok_timeline(sg)
    good = [(bg_ok[i] if i < len(bg_ok) else 0) + (sg_ok[i] if i < len(sg_ok) else 0)
            for i in range(len(bg_ok))]
    secs = max(1, round(sg["send_s"]))  # the surge's seconds, less the first (its ramp)
    window = range(shift + (1 if secs >= 3 else 0), shift + secs)
    goodput = sum(good[i] for i in window if i < len(good)) / max(1, len(window))
    refused_lat = sg.get("refused_latency_us", {})
    bg_refused_lat = bg.get("refused_latency_us", {})
    worst_refusal_ms = max(refused_lat.get("max", 0), bg_refused_lat.get("max", 0)) / 1000
    admitted_p99_ms = max(sg["latency_us"].get("p99", 0), bg["latency_us"].get("p99", 0)) / 1000
    # recovery: the seconds, after the surge stopped sending, that still had refusals
    end = (sg["t0_us"] + sg["send_s"] * 1e6 - bg["t0_us"]) / 1e6
    late = [i for i, n in enumerate(bg["timeline_refused"]) if n and i + 1 > end]
    recovered_in = math.ceil(late[-1] + 1 - end) if late else 0
    mem = [m for _, m in samples]
    settled = [m for t, m in samples if t > 2.0] or mem
    return {
        "limit": limit,
        "offered": round(bg["open_loop"]["offered_rate"] + sg["open_loop"]["offered_rate"]),
        "goodput": round(goodput), "goodput_share": round(goodput / limit, 3),
        "good_per_second": good,
        "refused": bg["refused"] + sg["refused"],
        "surge_refused_share": round(sg["refused"] / max(1, sg["answered"]), 3),
        "background_success": round(ok_count(bg) / max(1, bg["answered"]), 5),
        "worst_refusal_ms": worst_refusal_ms,
        "refusal_latency_us": {"surge": refused_lat, "background": bg_refused_lat},
        "admitted_p99_ms": admitted_p99_ms,
        "admitted_latency_us": {"surge": sg["latency_us"], "background": bg["latency_us"]},
        "recovered_within_s": recovered_in,
        "rss_mib": {"first": mem[0] if mem else None, "max": max(mem) if mem else None,
                    "last": mem[-1] if mem else None,
                    "growth_after_2s": round(settled[-1] - settled[0], 1) if settled else None},
        "rss_samples": [[round(t, 1), round(m, 1)] for t, m in samples],
        "surge_seconds": [shift, round(end, 1)],
        "timeline": {"background_ok": bg_ok, "background_refused": bg["timeline_refused"],
                     "surge_ok": sg_ok, "surge_refused": [0] * shift + sg["timeline_refused"]},
        "server": server,
    }


def _broken(part: str, runs: tuple[dict[str, Any], ...], failures: list[str]) -> str | None:
    """Note each run's unanswered requests; the first run that broke, if any."""
    for r in runs:
        if "error" in r:
            failures.append(f"{part}: {r['error']}")
            return str(r["error"])
        if r["lost"]:
            failures.append(f"{part}: {r['lost']} request(s) of {r['target']} unanswered")
    return None


def _ok_timeline(r: dict[str, Any]) -> list[int]:
    return [a - b for a, b in zip(r["timeline"], r["timeline_refused"], strict=False)]


# -- part 2: fairness -------------------------------------------------------------------------


def fairness_part(args: argparse.Namespace, work: Path, db: Path, queries: Path,
                  failures: list[str]) -> dict[str, Any]:
    limit = args.limit
    eir = start_eir(work, db, "fair", {"max_rate": limit})
    try:
        # two peers: each one's fair share is L/2
        polite = Load(eir.port, queries, "polite", rate=0.2 * limit, seconds=args.duration,
                      connections=1)
        flood = Load(eir.port, queries, "flood", rate=10 * limit / 2, seconds=args.duration,
                     connections=1)
        pr, fr = polite.result(), flood.result()
    finally:
        server = stop_eir(eir, work, "fair")
    broken = _broken("fairness", (pr, fr), failures)
    if broken:
        return {"error": broken}
    return {
        "polite_offered": pr["open_loop"]["offered_rate"],
        "flood_offered": fr["open_loop"]["offered_rate"],
        "polite_success": round(ok_count(pr) / max(1, pr["answered"]), 5),
        "polite_refused": pr["refused"],
        "flood_success": round(ok_count(fr) / max(1, fr["answered"]), 4),
        "admitted_rate": round((ok_count(pr) + ok_count(fr)) / max(pr["send_s"], 1e-9)),
        "server": server,
    }


# -- part 3: a saturated CPU --------------------------------------------------------------------


def saturation_part(args: argparse.Namespace, work: Path, db: Path, queries: Path,
                    failures: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, overload in (("on", {"max_lag_seconds": 0.5}), ("off", {"max_lag_seconds": 0})):
        eir = start_eir(work, db, f"sat-{label}", overload)
        points = []
        try:
            if "capacity" not in out:
                closed = Load(eir.port, queries, "probe", rate=None, seconds=args.point,
                              connections=4).result()
                if "error" in closed:
                    failures.append(f"saturation: {closed['error']}")
                    return out
                out["capacity"] = round(closed["rate"])
                log(f"closed-loop throughput {out['capacity']:,}/s")
            for k in args.sweep:
                rate = k * out["capacity"]
                r = Load(eir.port, queries, f"sweep{label}", rate=rate, seconds=args.point,
                         connections=4, procs=2, drain=10.0).result()
                if "error" in r:
                    failures.append(f"saturation {label} x{k}: {r['error']}")
                    continue
                if r["lost"]:
                    failures.append(f"saturation {label} x{k}: {r['lost']} unanswered")
                # answered successfully per second from the first answer to the last (the
                # backlog a server without control builds is answered after the sending)
                points.append({
                    "multiple": k, "asked": round(rate),
                    "offered": r["open_loop"]["offered_rate"],
                    "goodput": round(r["rate"] * ok_count(r) / max(1, r["answered"])),
                    "answer_window_s": round((r["measure_end_us"] - r["measure_start_us"]) / 1e6,
                                             2),
                    "refused": r["refused"], "lost": r["lost"],
                    "p50_ms": r["latency_us"].get("p50", 0) / 1000,
                    "p99_ms": r["latency_us"].get("p99", 0) / 1000,
                    "refusal_p99_ms": r.get("refused_latency_us", {}).get("p99", 0) / 1000,
                    "generator_cpu": r["cpu"]["percent_of_core"]})
                log(f"{label} x{k}: offered {points[-1]['offered']:,.0f}/s, goodput "
                    f"{points[-1]['goodput']:,}/s, p99 {points[-1]['p99_ms']:.1f} ms, "
                    f"{r['refused']:,} refused")
        finally:
            out[f"server_{label}"] = stop_eir(eir, work, f"sat-{label}")
        out[label] = points
    return out


# -- report ----------------------------------------------------------------------------------------


def targets(f: dict[str, Any]) -> list[dict[str, Any]]:
    lim, fair = f.get("limit", {}), f.get("fairness", {})
    rows = []

    def add(name: str, value: Any, ok: bool) -> None:
        rows.append({"target": name, "measured": value, "met": bool(ok)})

    if "goodput_share" in lim:
        add("answered successfully at 2x the limit >= 90% of the limit",
            f"{lim['goodput_share']:.1%}", lim["goodput_share"] >= 0.9)
        add("every refusal within 5 ms", f"{lim['worst_refusal_ms']:.1f} ms worst",
            lim["worst_refusal_ms"] <= 5)
        add("p99 of admitted requests <= 10 ms", f"{lim['admitted_p99_ms']:.1f} ms",
            lim["admitted_p99_ms"] <= 10)
        growth = lim["rss_mib"]["growth_after_2s"]
        add("memory flat under overload", f"{growth:+.1f} MiB", growth is not None and growth < 16)
        add("normal within 1 s after the load drops", f"{lim['recovered_within_s']} s",
            lim["recovered_within_s"] <= 1)
    if "polite_success" in fair:
        add("a polite peer beside one at 10x its share >= 99.9%",
            f"{fair['polite_success']:.3%}", fair["polite_success"] >= 0.999)
    return rows


def table(f: dict[str, Any]) -> str:
    lines = ["", "overload control", "-" * 78]
    for t in f["targets"]:
        lines.append(f"{'met ' if t['met'] else 'MISS'}  {t['target']:<58} {t['measured']}")
    sat = f.get("saturation", {})
    if sat.get("on"):
        lines += ["", f"saturation (closed-loop throughput {sat.get('capacity', 0):,}/s)",
                  f"{'x':>5} {'offered/s':>10} | {'goodput on':>10} {'p99 on':>9} | "
                  f"{'goodput off':>11} {'p99 off':>9}"]
        off = {p["multiple"]: p for p in sat.get("off", [])}
        for p in sat["on"]:
            o = off.get(p["multiple"], {})
            lines.append(f"{p['multiple']:>5} {p['offered']:>10,.0f} | {p['goodput']:>10,} "
                         f"{p['p99_ms']:>7.1f}ms | {o.get('goodput', 0):>11,} "
                         f"{o.get('p99_ms', 0):>7.1f}ms")
    return "\n".join(lines)


def html_report(f: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    def img(fig: Any, alt: str) -> str:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'

    parts = []
    lim = f.get("limit", {})
    if "timeline" in lim:
        fig = Figure(figsize=(8, 3.6), layout="constrained")
        ax = fig.add_subplot()
        tl = lim["timeline"]
        for key, label in (("background_ok", "background: answered"),
                           ("surge_ok", "surge: answered"),
                           ("surge_refused", "surge: refused (3004)"),
                           ("background_refused", "background: refused")):
            ax.plot(range(len(tl[key])), tl[key], label=label, marker=".")
        ax.plot(range(len(lim["good_per_second"])), lim["good_per_second"], color="black",
                linewidth=2, label="answered in all")
        ax.axhline(lim["limit"], color="grey", linestyle="--", label="configured limit")
        ax.set_xlabel("second")
        ax.set_ylabel("answers per second")
        ax.set_title(f"limit {lim['limit']:,.0f}/s offered 2x, then 0.5x")
        ax.legend(fontsize=8)
        parts.append(img(fig, "answers and refusals per second"))
        if lim.get("rss_samples"):
            fig = Figure(figsize=(8, 2.4), layout="constrained")
            ax = fig.add_subplot()
            ax.plot([t for t, _ in lim["rss_samples"]], [m for _, m in lim["rss_samples"]])
            ax.set_xlabel("seconds")
            ax.set_ylabel("server RSS (MiB)")
            parts.append(img(fig, "server memory"))
    sat = f.get("saturation", {})
    if sat.get("on"):
        fig = Figure(figsize=(8, 3.6), layout="constrained")
        ax1, ax2 = fig.subplots(1, 2)
        for label, style in (("on", "o-"), ("off", "s--")):
            # by the load actually offered: past its limit the generator sends what it can
            pts = sorted(sat.get(label, []), key=lambda p: p["offered"])
            name = f"measured-load limit {label}"
            ax1.plot([p["offered"] for p in pts], [p["goodput"] for p in pts], style, label=name)
            ax2.plot([p["offered"] for p in pts], [max(p["p99_ms"], 0.01) for p in pts],
                     style, label=name)
        ax1.set_xlabel("offered ECR/s")
        ax1.set_ylabel("answered successfully /s")
        ax2.set_xlabel("offered ECR/s")
        ax2.set_ylabel("p99 latency of admitted (ms)")
        ax2.set_yscale("log")
        ax1.legend(fontsize=8)
        ax2.legend(fontsize=8)
        parts.append(img(fig, "goodput and latency against offered load"))
    rows = "".join(f"<tr><td>{'met' if t['met'] else 'missed'}</td><td>{html.escape(t['target'])}"
                   f"</td><td>{html.escape(str(t['measured']))}</td></tr>" for t in f["targets"])
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<title>EIR overload control</title></head><body>"
            f"<h1>EIR overload control</h1><p>{html.escape(f['when'])}</p>"
            f"<table border='1' cellpadding='4'>{rows}</table>" + "".join(parts) +
            f"<pre>{html.escape(table(f))}</pre></body></html>")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.overload_bench",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--limit", type=float, default=4000.0, help="overload.max_rate (4,000)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of surge (10)")
    p.add_argument("--recover", type=float, default=4.0, help="seconds after the surge (4)")
    p.add_argument("--point", type=float, default=5.0, help="seconds per saturation point")
    p.add_argument("--sweep", default="0.5,0.8,1,1.5,2,3",
                   help="offered loads as multiples of the closed-loop throughput")
    p.add_argument("--imeis", type=int, default=100_000, help="registry size (100,000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--parts", default="limit,fairness,saturation")
    p.add_argument("--cache-dir", type=Path,
                   default=Path.home() / ".cache" / "eir-bench")
    p.add_argument("--json-out", type=Path)
    p.add_argument("--html", type=Path, default=Path("overload-report.html"))
    p.add_argument("--smoke", action="store_true",
                   help="CI: 10k IMEIs, limit 1,000/s, 2 s per part, two sweep points")
    args = p.parse_args(argv)
    if args.smoke:
        args.imeis, args.limit, args.duration, args.recover = 10_000, 1000.0, 2.0, 2.0
        args.point, args.sweep = 1.5, "0.5,2"
    try:
        args.sweep = [float(x) for x in args.sweep.split(",")]
    except ValueError:
        p.error(f"--sweep: {args.sweep!r} is not a list of numbers")
    parts = set(args.parts.split(","))
    if not parts <= {"limit", "fairness", "saturation"} or args.limit <= 0:
        p.error("--parts: limit, fairness, saturation; --limit must be positive")
    t0 = time.monotonic()
    order = POLICIES["regime"]
    prep = prepare(Sizes.from_total(args.imeis), args.seed, 20_000, parse_mix(DEFAULT_MIX),
                   2_000, args.cache_dir)
    failures: list[str] = []
    f: dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                         "settings": {k: (str(v) if isinstance(v, Path) else v)
                                      for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="eir-overload-") as tmp:
        work = Path(tmp)
        queries = work / "queries.csv"
        write_queries(prep.queries, order, "greylist", queries)
        try:
            if "limit" in parts:
                f["limit"] = limit_part(args, work, prep.db, queries, failures)
            if "fairness" in parts:
                f["fairness"] = fairness_part(args, work, prep.db, queries, failures)
            if "saturation" in parts:
                f["saturation"] = saturation_part(args, work, prep.db, queries, failures)
        except SystemExit as exc:
            print(exc, file=sys.stderr)
            return 2
    f["targets"] = targets(f)
    f["failures"] = failures
    f["elapsed_s"] = round(time.monotonic() - t0, 1)
    print(table(f), file=sys.stderr)
    args.html.write_text(html_report(f))
    log(f"report: {args.html.resolve()}")
    for msg in failures:
        print(f"FAIL: {msg}", file=sys.stderr)
    text = json.dumps(f)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    print(text, flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
