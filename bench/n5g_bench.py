"""N5g-eir benchmark: the same registry and queries over S13 (Diameter) and N5g (HTTP/2).

Usage (from the repository root)::

    .venv/bin/python -m bench.n5g_bench                 # 100k IMEIs, 10 s per run
    .venv/bin/python -m bench.n5g_bench --smoke         # 10k IMEIs, 2 s (CI)

Steps:

1. The registry database and query list of `bench.ecr_bench` (cached under
   ``--cache-dir``), ``policy.unknown_equipment = "reject"``, so unknown IMEIs get
   5422 on S13 and 404 ERROR_EQUIPMENT_UNKNOWN on N5g.
2. ``eir serve`` with ``[n5g]`` on a cleartext port: ``bench.loadgen`` drives S13
   (ECR/ECA, the ``ecr_bench`` load), then ``h2load`` (nghttp2, an independent C
   HTTP/2 client) drives ``GET /n5g-eir-eic/v1/equipment-status?pei=imei-..&supi=
   imsi-..`` over h2c (prior knowledge) with the same connections and requests in
   flight (HTTP/2 streams per connection), cycling through the same queries.
3. ``eir serve`` again with ``[n5g]`` over TLS (a test CA's certificate, ALPN h2):
   h2load once more.
4. Before each h2load run, a sample of the queries is asked with httpx (HTTP/2)
   and every answer checked against the expected status; during the run the
   share of 404 answers must match the query mix.

It prints a table (stderr) and the figures as JSON (stdout): requests/s,
latency percentiles (h2load's per-request log), server CPU per answer, and
the N5g/S13 ratios of the same run. It also times the N5g ASGI callable alone
(in this process, a constant decision) to show how much of an N5g request's
server CPU is ours and how much is the HTTP/2 server's (hypercorn). Exit 1
when an answer was wrong, a request failed or the mix is off; 2 when a step
failed (h2load missing: ``apt-get install nghttp2-client``).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import re
import resource
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.ecr_bench import (
    POLICIES,
    CpuSampler,
    Server,
    Sizes,
    add_common_args,
    eir_command,
    figure_rows,
    fresh_copy,
    parse_mix,
    policy_toml,
    prepare,
    remove_db,
    render,
    run_loadgen,
    server_cpu,
    settings_of,
    smoke_settings,
    write_queries,
)
from eir.n5g import STATUS_PATH, N5gApi
from testbed.certs import make_ca
from testbed.eirproc import free_port

MIX = "white=30,grey=25,black=25,unknown=20"
SAMPLE = 300  # queries checked one by one before each h2load run
ORDER = POLICIES["regime"]


def log(msg: str) -> None:
    print(f"n5g_bench: {msg}", file=sys.stderr, flush=True)


def percentiles(values: list[int]) -> dict[str, int]:
    if not values:
        return {}
    values.sort()
    n = len(values)
    out = {k: values[min(n - 1, int(n * q))] for k, q in
           (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999))}
    out["max"] = values[-1]
    return out


def read_rows(path: Path) -> list[tuple[str, str, str]]:
    with open(path, newline="") as fh:
        return [(r["imei"], r["imsi"], r["expect"]) for r in csv.DictReader(fh)]


def uri(base: str, imei: str, imsi: str) -> str:
    return f"{base}{STATUS_PATH}?pei=imei-{imei}" + (f"&supi=imsi-{imsi}" if imsi else "")


def check_sample(base: str, rows: list[tuple[str, str, str]], ca: Path | None) -> list[str]:
    """Ask SAMPLE queries one by one over HTTP/2; the wrong answers, described."""
    wrong = []
    # cleartext: HTTP/2 with prior knowledge (http1 off); TLS: h2 chosen by ALPN
    verify = ssl.create_default_context(cafile=str(ca)) if ca else False
    with httpx.Client(http1=ca is not None, http2=True, verify=verify, timeout=10) as client:
        for imei, imsi, expect in rows[:SAMPLE]:
            r = client.get(uri(base, imei, imsi))
            got = "5422" if r.status_code == 404 and \
                r.json().get("cause") == "ERROR_EQUIPMENT_UNKNOWN" else \
                r.json().get("status") if r.status_code == 200 else str(r.status_code)
            if r.http_version != "HTTP/2" or got != expect:
                wrong.append(f"{imei}: {r.http_version} {r.status_code} {got}, expected {expect}")
    return wrong


H2_FINISHED = re.compile(r"finished in ([\d.]+)s, ([\d.]+) req/s")
H2_REQUESTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                         r"(\d+) failed, (\d+) errored, (\d+) timeout")
H2_CODES = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


def run_h2load(args: argparse.Namespace, base: str, rows: list[tuple[str, str, str]],
               work: Path, sampler: CpuSampler, label: str) -> dict[str, Any]:
    uris = work / f"{label}-uris.txt"
    uris.write_text("".join(uri(base, i, s) + "\n" for i, s, _ in rows))
    logfile = work / f"{label}-h2load.log"
    cmd = ["h2load", "-c", str(args.connections), "-m", str(args.in_flight), "-t", "1",
           "-D", f"{int((args.duration - args.warmup) * 1000)}ms",
           "--warm-up-time", f"{int(args.warmup * 1000)}ms",
           "-i", str(uris), "--log-file", str(logfile)]
    log(f"{label}: {' '.join(cmd)}")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic_ns() // 1000
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          timeout=args.duration + args.drain + 120)
    t1 = time.monotonic_ns() // 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = proc.stdout
    finished, reqs, codes = H2_FINISHED.search(out), H2_REQUESTS.search(out), \
        H2_CODES.search(out)
    if proc.returncode != 0 or not (finished and reqs and codes):
        return {"error": f"h2load exit {proc.returncode}: {(out + proc.stderr)[-2000:]}"}
    durations = []
    for line in logfile.read_text().splitlines():
        cols = line.split("\t")
        if len(cols) >= 3:
            durations.append(int(cols[2]))
    total, _started, done, ok, failed, errored, timeout = map(int, reqs.groups())
    c2, c3, c4, c5 = map(int, codes.groups())
    wall = (t1 - t0) / 1e6
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    result: dict[str, Any] = {
        "rate": float(finished.group(2)), "sent": total, "answered": done,
        "lost": total - done, "failed": failed, "errored": errored, "timeout": timeout,
        "succeeded": ok, "status": {"2xx": c2, "3xx": c3, "4xx": c4, "5xx": c5},
        "latency_us": percentiles(durations),
        "cpu": {"percent_of_core": round(100 * cpu / wall, 1) if wall else None},
        # the measured window: after the warm-up, to the end of the run
        "measure_start_us": t0 + int(args.warmup * 1e6), "measure_end_us": t1,
    }
    server_cpu(result, sampler)
    return result


def start_eir(label: str, db: Path, work: Path, n5g: str) -> tuple[Server, Path]:
    served = fresh_copy(db, work / f"{label}.db")
    cfg = work / f"{label}.toml"
    cfg.write_text(policy_toml(ORDER, "reject") + "[metrics]\nenabled = false\n" + n5g)
    cmd = [*eir_command(), "serve", "--config", str(cfg), "--db", str(served),
           "--listen", "127.0.0.1:0", "--origin-host", "eir.bench", "--origin-realm", "bench",
           "--log-level", "info"]
    log(f"starting the EIR ({label}): {' '.join(cmd)}")
    eir = Server(f"the EIR ({label})", cmd, re.compile(r"EIR ready: S13 on \S+:(\d+)"))
    eir.wait_ready(600)
    return eir, served


def check_mix(r: dict[str, Any], expected_404: float, tolerance: float, label: str,
              failures: list[str]) -> None:
    if "error" in r:
        failures.append(f"{label}: {r['error']}")
        return
    st = r["status"]
    answered = sum(st.values())
    share = st["4xx"] / answered if answered else 0.0
    r["share_404"] = round(share, 4)
    if r["lost"] or r["errored"] or r["timeout"] or st["5xx"] or st["3xx"]:
        failures.append(f"{label}: {r['lost']} lost, {r['errored']} errored, {r['timeout']} "
                        f"timed out, {st['5xx']} 5xx, {st['3xx']} 3xx")
    if abs(share - expected_404) > tolerance:
        failures.append(f"{label}: {share:.2%} answered 404, expected {expected_404:.2%}")


def app_layer_us(n: int) -> float:
    """µs per request of the N5g ASGI callable alone (query parsing to the two sends),
    with a constant decision: what a request costs us before and after the engine."""

    class Decided:
        status = 0
        reason = "bench"

    class Source:
        @staticmethod
        def decide(imei: str, imsi: str | None, sv: str | None, operator: str) -> Decided:
            return Decided()

    api = N5gApi(Source(), operator="bench")
    scope = {"type": "http", "path": STATUS_PATH, "method": "GET", "headers": [],
             "query_string": b"pei=imei-352099001761481&supi=imsi-401011234567890"}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    async def loop() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            await api(scope, receive, send)
        return (time.perf_counter() - t0) / n * 1e6

    return round(asyncio.run(loop()), 2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.n5g_bench",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--imeis", type=int, default=100_000, help="registry size (100,000)")
    p.add_argument("--mix", default=MIX, help=f"query mix ({MIX})")
    p.add_argument("--no-tls", action="store_true", help="skip the N5g over TLS run")
    p.add_argument("--smoke", action="store_true",
                   help="tiny run for CI: 10k IMEIs, 5k queries, 2 s, 2 connections")
    add_common_args(p)
    args = p.parse_args(argv)
    if args.smoke:
        args.imeis = 10_000
        smoke_settings(args)
    if args.warmup >= args.duration:
        p.error("--warmup must be shorter than --duration")
    if shutil.which("h2load") is None:
        print("n5g_bench: h2load not found (Debian: apt-get install nghttp2-client)",
              file=sys.stderr)
        return 2
    t_all = time.monotonic()
    failures: list[str] = []
    try:
        prep = prepare(Sizes.from_total(args.imeis), args.seed, args.queries,
                       parse_mix(args.mix), args.tac_rows, args.cache_dir)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="eir-n5g-bench-") as tmp:
        work = Path(tmp)
        queries = work / "queries.csv"
        expected = write_queries(prep.queries, ORDER, "reject", queries)
        rows = read_rows(queries)
        expected_404 = expected.get("5422", 0.0)
        port = free_port()
        try:
            eir, served = start_eir("h2c", prep.db, work,
                                    f'[n5g]\nenabled = true\nlisten = "127.0.0.1:{port}"\n')
        except SystemExit as exc:
            print(exc, file=sys.stderr)
            return 2
        try:
            sampler = CpuSampler(eir.proc.pid)
            log(f"S13: bench.loadgen for {args.duration} s")
            runs["s13"] = run_loadgen(args, eir.port, queries, check=True)
            if "error" not in runs["s13"]:
                server_cpu(runs["s13"], sampler)
            base = f"http://127.0.0.1:{port}"
            failures += [f"h2c: {w}" for w in check_sample(base, rows, None)]
            runs["n5g_h2c"] = run_h2load(args, base, rows, work, sampler, "h2c")
            sampler.stop()
        finally:
            eir.stop()
            remove_db(served)
        if not args.no_tls:
            ca = make_ca(work)
            leaf = ca.issue(work, "eir.bench", dns=["localhost"], ips=["127.0.0.1"],
                            server=True)
            port = free_port()
            eir, served = start_eir(
                "tls", prep.db, work,
                f'[n5g]\nenabled = true\nlisten = "127.0.0.1:{port}"\n'
                f'cert_file = "{leaf.cert}"\nkey_file = "{leaf.key}"\n')
            try:
                sampler = CpuSampler(eir.proc.pid)
                base = f"https://127.0.0.1:{port}"
                failures += [f"tls: {w}" for w in check_sample(base, rows, ca.cert)]
                runs["n5g_tls"] = run_h2load(args, base, rows, work, sampler, "tls")
                sampler.stop()
            finally:
                eir.stop()
                remove_db(served)
    s13 = runs["s13"]
    if "error" in s13:
        failures.append(f"S13 run: {s13['error']}")
    elif s13.get("lost") or s13.get("mismatches"):
        failures.append(f"S13 run: {s13.get('lost')} lost, {s13.get('mismatches')} wrong")
    for label in ("n5g_h2c", "n5g_tls"):
        if label in runs:
            check_mix(runs[label], expected_404, args.tolerance, label, failures)
    for r in runs.values():
        r.pop("hist", None)
    rate = s13.get("rate")
    figures: dict[str, Any] = {
        "settings": settings_of(args),
        "registry": prep.meta,
        "queries": {"count": len(prep.queries), "expected_404_share": round(expected_404, 4)},
        **runs,
        "ratio_n5g_h2c_s13": round(runs["n5g_h2c"]["rate"] / rate, 3)
        if rate and runs["n5g_h2c"].get("rate") else None,
        "ratio_n5g_tls_s13": round(runs["n5g_tls"]["rate"] / rate, 3)
        if rate and runs.get("n5g_tls", {}).get("rate") else None,
        "app_layer_us_per_request": app_layer_us(20_000),
        "failures": failures,
        "elapsed_s": round(time.monotonic() - t_all, 1),
    }
    print(table(figures), file=sys.stderr)
    for f in failures:
        print(f"FAIL: {f}", file=sys.stderr)
    text = json.dumps(figures)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    print(text, flush=True)
    return 1 if failures else 0


def table(f: dict[str, Any]) -> str:
    labels = [k for k in ("s13", "n5g_h2c", "n5g_tls") if k in f]
    names = {"s13": "S13 (Diameter)", "n5g_h2c": "N5g h2c", "n5g_tls": "N5g TLS h2"}
    lines = render([names[k] for k in labels], figure_rows([f[k] for k in labels]))
    for key, what in (("ratio_n5g_h2c_s13", "N5g h2c/S13"), ("ratio_n5g_tls_s13",
                                                                 "N5g TLS/S13")):
        if f.get(key) is not None:
            lines.append(f"{what}: {f[key]:.2f} (requests/s, same run)")
    per = f.get("n5g_h2c", {}).get("server_cpu_us_per_answer")
    if per:
        ours = f["app_layer_us_per_request"]
        s13 = f.get("s13", {}).get("server_cpu_us_per_answer")
        lines.append(f"N5g app layer alone: {ours:.2f} us of {per:.2f} us server CPU per "
                     f"h2c request" + (f" (an S13 ECR, decision included: {s13:.2f} us)"
                                        if s13 else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
