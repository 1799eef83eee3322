"""``eir-sim``: the simulator's command line (issue 4).

Owns the argument parsing and the wiring of the simulator's commands:

- ``population``: a reproducible handset population (`simulator.population`);
- ``run``: load an EIR with attaching handsets and judge every answer against
  the population's expectations (`simulator.load`, `simulator.mme`), with a
  live progress line and JSON / HTML reports (`simulator.report`);
- ``report``: re-render an HTML report from a JSON one;
- ``audit``, ``verify``, ``keygen``: the ministry's compliance audit and its
  signed scorecard (`simulator.audit`).

Bad arguments, files or targets end in one line on stderr naming the
problem, exit status 2; a run that completes exits 0 when its verdict is
PASS and 1 when it is FAIL (mismatches, timeouts or protocol errors).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import math
import ssl
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eir.diameter.tls import client_context

from . import population as pop_mod
from .cliparse import Parser
from .judge import Judge
from .load import (
    Arrivals,
    ClosedLoop,
    DailyCurve,
    Expect,
    LoadSpec,
    Poisson,
    Ramp,
    SimClock,
    Storm,
    run_load,
)
from .mme import PoolConfig, parse_target
from .report import verdict, write_html, write_json

__all__ = ["main", "main_run", "make_expect"]

USAGE_ERROR = 2


class UsageError(Exception):
    """A bad argument or file: one line on stderr, exit status 2."""


# -- expectations --------------------------------------------------------------------------


def make_expect(population: pop_mod.Population, margin: float) -> Expect:
    """``expect(index, sim_time, first_sent)`` for the load driver.

    A check within ``margin`` simulated seconds of a change of outcome is not
    judged (None): the EIR's clock and ours differ by the request's latency
    times the clock speed (see `simulator.expect.ambiguous`).
    """
    return Judge(population.handsets, population.regime, margin)


# -- eir-sim run ---------------------------------------------------------------------------


def _floats(text: str, n: int, what: str) -> list[float]:
    parts = text.split(":")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != n or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: expected {what}")
    return values


def _ramp(text: str) -> Ramp:
    a, b, over = _floats(text, 3, "START_RATE:END_RATE:SECONDS")
    return Ramp(a, b, over)


def _storm(text: str) -> Storm:
    base, burst, at = _floats(text, 3, "BASE_RATE:BURST:AT_SECONDS")
    return Storm(base, int(burst), at)


def _positive(kind: type[int] | type[float]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not v > 0 or not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
        return v
    return parse


def _sim_start(text: str) -> str:
    if text in ("population", "now"):
        return text
    try:
        pop_mod.parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected 'population', 'now' or an ISO 8601 instant") from None
    return text


def run_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="eir-sim run",
        description="Load an EIR with simulated MMEs and judge every answer against the "
                    "population's expectations.\nExit 0: PASS (no mismatch, timeout or "
                    "error); 1: FAIL; 2: bad arguments or no connection.",
        epilog="examples:\n"
               "  eir-sim run --target 127.0.0.1:3868 --population pop --count 1000\n"
               "  eir-sim run --target 127.0.0.1:3868 --population pop --rate 500 --duration 60 "
               "--report run.json --html run.html")
    p.add_argument("--target", action="append", required=True, metavar="HOST:PORT",
                   help="an EIR or relay; repeat for failover (the first is each MME's primary)")
    p.add_argument("--population", type=Path, required=True, metavar="DIR",
                   help="a directory written by `eir-sim population`")
    load = p.add_argument_group("load (one of; default --in-flight 64)")
    how = load.add_mutually_exclusive_group()
    how.add_argument("--rate", type=_positive(float), help="open loop: Poisson arrivals per second")
    how.add_argument("--ramp", type=_ramp, metavar="START:END:SECONDS",
                     help="open loop: a linear ramp of the rate, then the end rate")
    how.add_argument("--storm", type=_storm, metavar="BASE:BURST:AT",
                     help="open loop at BASE/s, and BURST attaches at once AT seconds in "
                          "(an MME restart)")
    how.add_argument("--daily", type=_positive(float), metavar="PEAK_RATE",
                     help="open loop: a 24-hour attach curve with this peak, compressed into "
                          "--duration (or --day-seconds)")
    how.add_argument("--in-flight", type=_positive(int),
                     help="closed loop: this many requests always in flight")
    load.add_argument("--day-seconds", type=_positive(float),
                      help="length of the compressed day of --daily")
    load.add_argument("--count", type=int, help="requests in all")
    load.add_argument("--duration", type=_positive(float), help="seconds of sending")
    load.add_argument("--max-in-flight", type=_positive(int),
                      help="open loop: a backlog forms beyond this many in flight")
    load.add_argument("--order", choices=("random", "sequential"), default="random",
                      help="handsets drawn at random (default) or cycled in order")
    load.add_argument("--seed", type=int, default=1, help="random seed of the run (default 1)")
    mme = p.add_argument_group("MMEs")
    mme.add_argument("--mmes-per-realm", type=_positive(int), default=2,
                     help="MME peer identities per operator realm (default 2)")
    mme.add_argument("--destination-realm", default="localdomain",
                     help="the EIR's realm (default localdomain)")
    mme.add_argument("--timeout", type=_positive(float), default=5.0,
                     help="per-request timeout, seconds (default 5)")
    mme.add_argument("--watchdog", type=float, default=30.0,
                     help="RFC 3539 Tw, seconds, at least 6 (default 30)")
    mme.add_argument("--retry-3004", action="store_true",
                     help="on 3004 TOO_BUSY try another target, as an MME would")
    mme.add_argument("--doic", action="store_true",
                     help="advertise DOIC (RFC 7683) and honour overload reports")
    mme.add_argument("--vsai", action="store_true",
                     help="put Vendor-Specific-Application-Id in ECRs (TS 29.272 7.2.2 says "
                          "not to; some old agents want it)")
    tls = p.add_argument_group("TLS (RFC 6733 2.1: --target is then the EIR's TLS port, "
                               "5658 by default)")
    tls.add_argument("--tls", action="store_true", help="TLS from the start, then the CER")
    tls.add_argument("--tls-ca", type=Path, metavar="FILE",
                     help="CAs to verify the EIR's certificate (default: the system's)")
    tls.add_argument("--tls-cert", type=Path, metavar="FILE",
                     help="the MMEs' client certificate (PEM)")
    tls.add_argument("--tls-key", type=Path, metavar="FILE", help="its private key (PEM)")
    tls.add_argument("--tls-server-name", metavar="NAME",
                     help="the name the EIR's certificate must carry (default: the target host)")
    clock = p.add_argument_group("clock (must match the EIR's [clock] for grace deadlines)")
    clock.add_argument("--sim-start", type=_sim_start, default="population",
                       help="simulated time at the anchor: 'population' (its start, default), "
                            "'now' (the real clock) or an ISO 8601 instant")
    clock.add_argument("--speed", type=_positive(float), default=1.0,
                       help="simulated seconds per real second (default 1)")
    clock.add_argument("--anchor", type=_sim_start, metavar="ISO",
                       help="the real instant at which the clock shows --sim-start (the EIR's "
                            "clock.anchor); default: when the run starts")
    clock.add_argument("--margin", type=float,
                       help="simulated seconds around a change of outcome left unjudged "
                            "(default max(60, 2 x timeout x speed))")
    out = p.add_argument_group("output")
    out.add_argument("--report", type=Path, metavar="FILE.json", help="write the JSON report")
    out.add_argument("--html", type=Path, metavar="FILE.html",
                     help="write the HTML report with plots")
    out.add_argument("--scenario", help="a name for the run, shown in the reports")
    out.add_argument("--quiet", action="store_true", help="no progress line")
    return p


def _arrivals(a: argparse.Namespace) -> Arrivals:
    if a.rate is not None:
        return Poisson(a.rate)
    if a.ramp is not None:
        return a.ramp  # type: ignore[no-any-return]
    if a.storm is not None:
        return a.storm  # type: ignore[no-any-return]
    if a.daily is not None:
        return DailyCurve(a.daily, day_s=a.day_seconds)
    return ClosedLoop(a.in_flight or 64)


def _precise_epoch(text: str) -> float:
    t = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.timestamp()


def _clock(a: argparse.Namespace, population: pop_mod.Population) -> SimClock:
    anchor = None
    if a.anchor is not None:
        if a.anchor in ("population", "now"):
            raise UsageError("--anchor: expected an ISO 8601 instant")
        # fractions matter: at speed 86,400 half a second is half a simulated day
        anchor = _precise_epoch(a.anchor)
    if a.sim_start == "now":
        if a.speed != 1.0:
            raise UsageError("--speed needs a --sim-start other than 'now'")
        return SimClock(None)
    start = float(population.start) if a.sim_start == "population" else \
        _precise_epoch(a.sim_start)
    return SimClock(start, a.speed, anchor)


def _load_population(directory: Path) -> pop_mod.Population:
    try:
        return pop_mod.load(directory)
    except FileNotFoundError as exc:
        raise UsageError(f"--population {directory}: {exc.strerror}: {exc.filename}") from None
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"--population {directory}: not a population ({exc})") from None


def _summary(report: dict[str, Any]) -> str:
    lat = report.get("latency_ms") or {}

    def ms(k: str) -> str:
        v = lat.get(k)
        return "-" if v is None else f"{v:.3f}"

    status = ", ".join(f"{k} {v:,}" for k, v in sorted(report["by_status"].items(),
                                                       key=lambda kv: -kv[1]))
    bad = {c: n for c, n in report["mismatches_by_category"].items() if n}
    v = verdict(report)
    lines = [
        f"{v.word}: sent {report['sent']:,}, answered {report['answered']:,}, "
        f"timeouts {report['timeouts']:,}, errors {report['errors']:,}, "
        f"mismatches {report['mismatches']:,}",
        f"throughput {report['throughput_per_s']:,.0f}/s; latency ms p50 {ms('p50')} "
        f"p90 {ms('p90')} p99 {ms('p99')} p99.9 {ms('p999')} max {ms('max')}",
        f"answers: {status or 'none'}",
    ]
    load = report.get("load") or {}
    unsent = [f"{load[k]:,} {what}" for k, what in
              (("not_sent", "arrivals not sent (no connection or DOIC throttling)"),
               ("backlog_dropped", "arrivals still waiting when the time was up"))
              if load.get(k)]
    if unsent:
        lines.append("not sent: " + "; ".join(unsent))
    if bad:
        lines.append("mismatches by category: "
                     + ", ".join(f"{c} {n:,}" for c, n in bad.items()))
    if v.reasons:
        lines.append("why: " + "; ".join(v.reasons))
    return "\n".join(lines)


async def _run(a: argparse.Namespace) -> dict[str, Any]:
    population = _load_population(a.population)
    if not population.handsets:
        raise UsageError(f"--population {a.population}: no handsets")
    try:
        targets = [parse_target(t) for t in a.target]
    except ValueError as exc:
        raise UsageError(f"--target {exc}") from None
    if a.count is None and a.duration is None:
        a.count = 10_000
    if a.count is not None and a.count < 1:
        raise UsageError("--count must be at least 1")
    if not (math.isfinite(a.watchdog) and a.watchdog >= 6):
        raise UsageError("--watchdog must be at least 6 seconds (RFC 3539 3.4.1)")
    if a.timeout > 60:
        raise UsageError("--timeout is at most 60 seconds (latencies are kept up to 60 s)")
    if a.margin is not None and not (math.isfinite(a.margin) and a.margin >= 0):
        raise UsageError("--margin must be a number of seconds >= 0")
    if a.max_in_flight is not None and a.in_flight is not None:
        raise UsageError("--max-in-flight is for open loops; --in-flight is a closed loop")
    if a.day_seconds is not None and a.daily is None:
        raise UsageError("--day-seconds goes with --daily")
    if a.anchor is not None and a.sim_start == "now":
        raise UsageError("--anchor needs a --sim-start other than 'now'")
    clock = _clock(a, population)
    margin = a.margin if a.margin is not None else max(60.0, 2 * a.timeout * a.speed)
    realms = [h.realm for h in population.handsets]
    cfg = PoolConfig.for_realms(
        targets, realms, per_realm=a.mmes_per_realm, destination_realm=a.destination_realm,
        timeout=a.timeout, retry_3004=a.retry_3004, doic=a.doic, vsai_in_requests=a.vsai,
        tw=a.watchdog, seed=a.seed, tls=_tls(a), tls_server_name=a.tls_server_name)
    spec = LoadSpec(_arrivals(a), count=a.count, duration=a.duration,
                    max_in_flight=a.max_in_flight, order=a.order, seed=a.seed,
                    scenario=a.scenario,
                    extra={"population_dir": str(a.population), "population_seed": population.seed,
                           "population_size": len(population.handsets), "margin_s": margin})
    return await run_load(cfg, population.handsets, make_expect(population, margin), spec,
                          clock=clock, progress=not a.quiet)


def _tls(a: argparse.Namespace) -> ssl.SSLContext | None:
    if not (a.tls or a.tls_ca or a.tls_cert or a.tls_key):
        return None
    try:
        return client_context(ca_file=str(a.tls_ca) if a.tls_ca else None,
                              cert_file=str(a.tls_cert) if a.tls_cert else None,
                              key_file=str(a.tls_key) if a.tls_key else None)
    except (ValueError, OSError) as exc:  # ssl.SSLError is an OSError
        raise UsageError(f"--tls: {exc}") from None


def _event_loop() -> Callable[[Any], Any]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return asyncio.run
    return uvloop.run


def main_run(argv: Sequence[str] | None = None) -> int:
    a = run_parser().parse_args(argv)
    try:
        report = _event_loop()(_run(a))
    except KeyboardInterrupt:
        print("eir-sim run: interrupted", file=sys.stderr)
        return 130
    except UsageError as exc:
        print(f"eir-sim run: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except (ConnectionError, OSError) as exc:
        print(f"eir-sim run: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except ValueError as exc:
        print(f"eir-sim run: {exc}", file=sys.stderr)
        return USAGE_ERROR
    try:
        if a.report:
            write_json(report, a.report)
        if a.html:
            write_html(report, a.html)
    except OSError as exc:
        print(f"eir-sim run: cannot write the report: {exc}", file=sys.stderr)
        return USAGE_ERROR
    print(_summary(report))
    for what, path in (("report", a.report), ("html", a.html)):
        if path:
            print(f"{what}: {path}")
    return 0 if verdict(report).passed else 1


# -- eir-sim report --------------------------------------------------------------------------


def report_parser() -> Parser:
    p = Parser(prog="eir-sim report",
               description="Render the HTML page of a JSON run report (eir-sim run --report).",
               epilog="example:\n  eir-sim report run.json --html run.html")
    p.add_argument("report", type=Path, metavar="FILE.json", help="a report of eir-sim run")
    p.add_argument("--html", type=Path, required=True, metavar="FILE.html",
                   help="the page to write")
    return p


def main_report(argv: Sequence[str] | None = None) -> int:
    a = report_parser().parse_args(argv)
    try:
        data = json.loads(a.report.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or "sent" not in data:
            raise ValueError("not a run report (no 'sent')")
        write_html(data, a.html)
    except (OSError, ValueError) as exc:
        print(f"eir-sim report: {a.report}: {exc}", file=sys.stderr)
        return USAGE_ERROR
    print(f"{verdict(data).word}: html {a.html}")
    return 0


# -- dispatch -------------------------------------------------------------------------------


def _audit(name: str) -> Callable[[Sequence[str]], int]:
    def call(argv: Sequence[str]) -> int:
        # the audit pulls in cryptography: imported only when asked for
        audit = importlib.import_module("simulator.audit")
        fn: Callable[[list[str]], int] = getattr(audit, f"main_{name}")
        return fn(list(argv))
    return call


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "population": (lambda argv: pop_mod.main_population(list(argv)),
                   "write a reproducible handset population and the EIR's registry seed"),
    "run": (main_run, "load an EIR and judge every answer (reports: --report, --html)"),
    "report": (main_report, "render the HTML page of a JSON run report"),
    "audit": (_audit("audit"), "audit an EIR and sign its scorecard with the ministry's key"),
    "verify": (_audit("verify"), "check a scorecard's signature with the ministry's public key"),
    "keygen": (_audit("keygen"), "make an Ed25519 key pair for signing scorecards"),
}


def _scorecard_parser(name: str) -> Callable[[], argparse.ArgumentParser]:
    def make() -> argparse.ArgumentParser:
        module = importlib.import_module("simulator.audit" if name == "audit" else
                                         "simulator.scorecard")
        made: argparse.ArgumentParser = getattr(
            module, "parser" if name == "audit" else f"{name}_parser")()
        return made
    return make


# each command's parser, for `eir-sim COMMAND --help` and the test that every option is
# explained (tests/test_cli_help.py)
PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "population": pop_mod.parser, "run": run_parser, "report": report_parser,
    "audit": _scorecard_parser("audit"), "verify": _scorecard_parser("verify"),
    "keygen": _scorecard_parser("keygen"),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
        text = ("usage: eir-sim COMMAND [options]   (eir-sim COMMAND --help)\n\n"
                "The EIR simulator: MMEs that attach handsets, and the ministry's audit.\n\n"
                + "\n".join(lines) + "\n\nexamples:\n"
                "  eir-sim population --size 5000 --seed 1 --out pop\n"
                "  eir-sim run --target 127.0.0.1:3868 --population pop --count 1000")
        if args and args[0] not in ("-h", "--help"):
            print(f"eir-sim: unknown command {args[0]!r}; commands: {', '.join(COMMANDS)} "
                  "(see --help)", file=sys.stderr)
            return USAGE_ERROR
        print(text, file=sys.stderr if not args else sys.stdout)
        return USAGE_ERROR if not args else 0
    fn, _ = COMMANDS[args[0]]
    return fn(args[1:])


if __name__ == "__main__":
    sys.exit(main())
