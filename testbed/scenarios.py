"""Named end-to-end scenarios: a population, a seeded EIR and the simulator, as processes.

``python -m testbed run SCENARIO`` (see ``testbed/__main__.py``) runs one of :data:`SCENARIOS`:

1. ``eir-sim population`` makes the handsets and the registry files (fixed seed);
2. the ``eir`` CLI seeds a fresh SQLite registry from them (TAC table, lists, history; or
   the population's ordered ``imports`` when it lists them, with their list versions);
3. ``eir serve`` starts with a test clock that shows the population's start time at an
   anchor instant, at the scenario's speed (``[clock]`` in a TOML config file);
4. ``eir-sim run`` loads it with simulated MMEs, the same start, speed and anchor, and writes
   ``report.json`` and ``report.html``;
5. the EIR is stopped with SIGTERM (it must exit 0) and the scenario's own pass condition is
   judged from ``report.json``.

The testbed treats both as black boxes (DESIGN.md layer rule 6): it runs their command lines
and reads their files (``population.json``, the reports), never their modules. Everything
binds 127.0.0.1, except the ``netem``/``netns`` scenarios whose namespaces this run makes.
Every wait is bounded; seeds are fixed.

Outcomes: :data:`PASS` (exit 0), :data:`FAIL` (1), :data:`SETUP` (2: something needed could
not be made or started; one line names it), :data:`SKIPPED` (0, the environment cannot run the
scenario: no namespaces or no netem).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from simulator.population import import_argv

from . import fdpeer, netns
from .eirproc import EirProcess, eir_command

PASS, FAIL, SETUP, SKIPPED = "PASS", "FAIL", "SETUP", "SKIPPED"
EXIT = {PASS: 0, FAIL: 1, SETUP: 2, SKIPPED: 0}

ORIGIN_HOST = "eir.localdomain"
ORIGIN_REALM = "localdomain"  # eir-sim's default Destination-Realm
GREY_CATEGORIES = ("grey_in_grace", "grey_near_expiry", "brand_new")
WORK_MARK = ".testbed-work"
DAY = 86_400

Report = dict[str, Any]
Check = Callable[[Report, "Context"], list[str]]


class SetupError(Exception):
    """A step the scenario needs failed (not the EIR's answers): exit 2, one line."""


class Skipped(Exception):
    """The environment cannot run this scenario (the message says why): exit 0."""


# --------------------------------------------------------------------------- processes


def sim_command() -> list[str]:
    """The ``eir-sim`` entry point of the running interpreter's environment."""
    script = Path(sys.executable).parent / "eir-sim"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "simulator"]


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _run(what: str, args: Sequence[str], *, timeout: float = 300,
         ok: Sequence[int] = (0,)) -> subprocess.CompletedProcess[str]:
    """Run a setup command; a non-zero status or a timeout is a :class:`SetupError`."""
    try:
        r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                           check=False)
    except subprocess.TimeoutExpired:
        raise SetupError(f"{what}: no result within {timeout:.0f} s") from None
    except OSError as exc:
        raise SetupError(f"{what}: {exc}") from None
    if r.returncode not in ok:
        detail = _last_line(r.stderr) or _last_line(r.stdout) or f"exit {r.returncode}"
        raise SetupError(f"{what} failed (exit {r.returncode}): {detail}")
    return r


def iso(epoch: float) -> str:
    """An ISO 8601 UTC instant with microseconds (what ``[clock]`` reads)."""
    return datetime.fromtimestamp(epoch, UTC).isoformat()


# --------------------------------------------------------------------------- the registry


def seed_commands(pop_dir: Path, meta: dict[str, Any], db: Path) -> list[list[str]]:
    """The ``eir registry`` commands that seed ``db`` from a population, in order.

    A population that lists ``imports`` ({"file", "kind": tac|full|delta|observations,
    "list_version"?, "source"?}) is imported in that order (full lists with their source and
    list version, by `simulator.population.import_argv`); otherwise the TAC table, the list
    entries and the history.
    """
    base = ["registry"]
    imports = meta.get("imports")
    if not imports:
        return [[*base, "import-tac", "--db", str(db), str(pop_dir / "tac.csv")],
                [*base, "import", "--db", str(db), "--quiet", str(pop_dir / "registry.csv")],
                [*base, "import-observations", "--db", str(db),
                 str(pop_dir / "observations.csv")]]
    try:
        return [import_argv(item, pop_dir, str(db)) for item in imports]
    except (KeyError, ValueError) as exc:
        raise SetupError(f"{pop_dir / 'population.json'}: imports: {exc}") from None


def eir_config(path: Path, *, start_iso: str, speed: float, anchor_iso: str,
               regime: dict[str, Any], allow_networks: Sequence[str] = ()) -> None:
    """A TOML config: the test clock, the population's regime, the allowed peer networks."""
    lines = ["[clock]", "test_mode = true", f"start = {json.dumps(start_iso)}",
             f"speed = {float(speed)!r}", f"anchor = {json.dumps(anchor_iso)}", "",
             "[policy]"]
    if "grace_days" in regime:
        lines.append(f"grace_days = {float(regime['grace_days'])!r}")
    if "cutoff" in regime:
        lines.append(f"cutoff = {json.dumps(str(regime['cutoff']))}")
    if "home_mccs" in regime:
        lines.append(f"home_mccs = {json.dumps([str(m) for m in regime['home_mccs']])}")
    if "clone_threshold" in regime:
        lines.append(f"clone_threshold = {int(regime['clone_threshold'])}")
    if "clone_window_days" in regime:
        lines.append(f"clone_window_days = {float(regime['clone_window_days'])!r}")
    if regime.get("strict"):
        lines.append('unknown_equipment = "reject"')
    if allow_networks:
        lines += ["", "[peers]", f"allow_networks = {json.dumps(list(allow_networks))}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    """A named run. ``load(count)`` gives eir-sim's load options for ``count`` requests."""

    name: str
    summary: str
    kind: str = "run"  # run | netns | audit
    size: int = 5000
    seed: int = 1
    weights: str | None = None
    count: int = 20_000
    load: Callable[[int], list[str]] = field(default=lambda n: ["--in-flight", "64"])
    speed: float | Callable[[int], float] = 1.0
    timeout: float = 5.0
    margin_real_s: float | None = None  # judging margin in real seconds (x speed)
    sim_extra: tuple[str, ...] = ()
    netem: tuple[str, ...] = ()
    audit_target: str = ""  # audit: "stub" (freeDiameter) or "ours"
    checks: tuple[Check, ...] = ()

    def speed_for(self, count: int) -> float:
        return self.speed(count) if callable(self.speed) else float(self.speed)


@dataclass
class Context:
    """What a run made: paths, the population's metadata, the options used."""

    scenario: Scenario
    out: Path
    work: Path
    size: int
    count: int
    stream: TextIO
    pop_dir: Path = Path()
    meta: dict[str, Any] = field(default_factory=dict)
    db: Path = Path()
    eir: EirProcess | None = None
    notes: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


# -- pass conditions (each returns the problems it found) ----------------------------------


def clean(report: Report, ctx: Context) -> list[str]:
    """Zero mismatches, timeouts and protocol errors, and something was answered."""
    problems = []
    if not report.get("answered"):
        problems.append("nothing answered")
    for key in ("mismatches", "timeouts", "errors"):
        if report.get(key):
            problems.append(f"{report[key]:,} {key}")
    bad = {c: n for c, n in (report.get("mismatches_by_category") or {}).items() if n}
    if bad:
        problems.append("mismatches in " + ", ".join(f"{c} {n:,}" for c, n in bad.items()))
    return problems


def all_categories_answered(report: Report, ctx: Context) -> list[str]:
    """Every category of the population was sent and judged (when the count allows it)."""
    counts: dict[str, int] = ctx.meta.get("counts") or {}
    by_cat: dict[str, Any] = report.get("by_category") or {}
    missing = [c for c in counts if not (by_cat.get(c) or {}).get("answered")]
    if missing and ctx.count >= 50 * len(counts):
        return ["categories never answered: " + ", ".join(missing)]
    if missing:
        ctx.notes.append("not exercised at this --count: " + ", ".join(missing))
    return []


def _statuses(report: Report, category: str, key: str = "expected") -> dict[str, int]:
    cat = (report.get("by_category") or {}).get(category) or {}
    return {str(k): int(v) for k, v in (cat.get(key) or {}).items()}


def grace_crossed(report: Report, ctx: Context) -> list[str]:
    """Each grey category was judged both GREYLISTED and (grace expired) BLACKLISTED."""
    problems = []
    counts: dict[str, int] = ctx.meta.get("counts") or {}
    for cat in GREY_CATEGORIES:
        if not counts.get(cat):
            continue
        judged = _statuses(report, cat)
        if not judged.get("GREYLISTED") or not judged.get("BLACKLISTED"):
            problems.append(f"{cat}: judged {judged or 'nothing'}, wanted both GREYLISTED and "
                            "BLACKLISTED (grace expired during the run)")
        else:
            ctx.notes.append(f"{cat}: GREYLISTED {judged['GREYLISTED']:,} -> "
                             f"BLACKLISTED {judged['BLACKLISTED']:,}")
    return problems


def clones_flagged(report: Report, ctx: Context) -> list[str]:
    """Clone members answered grey/black while owners answered white; reasons cross-checked.

    The wire carries no reason, so a few members and owners are asked of the EIR itself
    (``eir decide``, read-only) at the population's start: members must come out
    ``clone_suspected`` and owners WHITELISTED, as the population's expected.csv says.
    """
    judged = _statuses(report, "clone")
    problems = []
    if not judged.get("WHITELISTED"):
        problems.append(f"clone: no owner judged WHITELISTED ({judged})")
    if not (judged.get("GREYLISTED", 0) + judged.get("BLACKLISTED", 0)):
        problems.append(f"clone: no member judged GREYLISTED/BLACKLISTED ({judged})")
    ctx.notes.append("clone judged: " + ", ".join(f"{k} {v:,}" for k, v in judged.items()))
    problems += _decide_sample(ctx)
    return problems


def _decide_sample(ctx: Context, per_role: int = 3) -> list[str]:
    import csv

    picked: dict[str, list[dict[str, str]]] = {"member": [], "owner": []}
    with (ctx.pop_dir / "expected.csv").open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            role = row.get("role", "")
            if row.get("category") != "clone" or role not in picked:
                continue
            if role == "member" and row.get("reason") != "clone_suspected":
                continue
            if len(picked[role]) < per_role:
                picked[role].append(row)
    start = str(ctx.meta["start"]["iso"])
    rows = [r for rs in picked.values() for r in rs]
    procs = [subprocess.Popen([*eir_command(), "decide", r["imei"], "--imsi", r["imsi"],
                               "--at", start, "--db", str(ctx.db)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in rows]
    problems, seen = [], []
    for r, p in zip(rows, procs, strict=True):
        try:
            out, _ = p.communicate(timeout=60)
            d = json.loads(out)
        except (subprocess.TimeoutExpired, ValueError):
            p.kill()
            p.communicate()
            problems.append(f"eir decide {r['imei']}: no answer")
            continue
        got = f"{d.get('status')} {d.get('reason')}"
        seen.append(f"{r['role']} {got}")
        if r["role"] == "member" and (d.get("reason") != "clone_suspected"
                                      or d.get("status") != r["expected"]):
            problems.append(f"clone member {r['imei']}/{r['imsi']}: EIR decides {got}, "
                            f"expected {r['expected']} clone_suspected")
        if r["role"] == "owner" and d.get("status") != "WHITELISTED":
            problems.append(f"clone owner {r['imei']}/{r['imsi']}: EIR decides {got}")
    if not picked["member"] or not picked["owner"]:
        problems.append("the population has no clone member/owner to cross-check")
    if seen:
        ctx.notes.append("eir decide at start: " + "; ".join(sorted(set(seen))))
    return problems


# -- the catalogue -------------------------------------------------------------------------


def _storm_load(n: int) -> list[str]:
    burst = max(1, int(n * 0.4))
    return ["--storm", f"2000:{burst}:1.5", "--max-in-flight", "256"]


GRACE_RATE = 2000.0  # requests per second of the grace scenario
GRACE_SPAN_DAYS = 40.0  # simulated days it covers, whatever the count


def _grace_speed(n: int) -> float:
    """Simulated seconds per real second so that ``n`` requests span GRACE_SPAN_DAYS."""
    seconds = max(1.0, n / GRACE_RATE)
    return round(GRACE_SPAN_DAYS * DAY / seconds)


NETEM = ("delay", "20ms", "5ms", "loss", "0.5%")

SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("smoke", "default population, closed loop (64 in flight): zero mismatches in "
             "every category", checks=(clean, all_categories_answered)),
    Scenario("storm", "Poisson 2000/s plus an attach storm (40% of the count at once at "
             "1.5 s) capped at 256 in flight: zero mismatches, zero timeouts",
             load=_storm_load, checks=(clean,)),
    Scenario("grace-fast-forward", f"clocks at ~{GRACE_SPAN_DAYS:.0f} simulated days per "
             "run, Poisson 2000/s: grey devices flip GREYLISTED -> BLACKLISTED mid-run, zero "
             "mismatches", count=40_000, load=lambda n: ["--rate", f"{GRACE_RATE:g}"],
             weights="grey_in_grace=0.15,grey_near_expiry=0.15,brand_new=0.15",
             # Answers within 0.3 real seconds of a deadline are not judged (the EIR decides
             # when it gets to the request: latency and stalls times the speed); the
             # simulator's default margin, 2 x timeout x speed, would hide most of the
             # near-expiry flips, which all come in the first simulated three days.
             speed=_grace_speed, timeout=1.0, margin_real_s=0.3,
             checks=(clean, grace_crossed)),
    Scenario("clone-cluster", "population weighted to clone clusters: members GREYLISTED/"
             "BLACKLISTED clone_suspected, owners WHITELISTED, zero mismatches",
             weights="clone=2", count=10_000, load=lambda n: ["--in-flight", "32"],
             checks=(clean, clones_flagged)),
    Scenario("netem", "MMEs and EIR in two network namespaces over a veth link with netem "
             f"{' '.join(NETEM)}: zero mismatches, zero timeouts", kind="netns",
             count=5_000, netem=NETEM, checks=(clean,)),
    Scenario("netns", "as netem over a plain veth link (no delay or loss; for kernels "
             "without sch_netem)", kind="netns", count=5_000, checks=(clean,)),
    Scenario("audit-third-party", "the ministry's audit of freeDiameter's stub EIR: the "
             "audit finds its mismatches and the signed scorecard verifies", kind="audit",
             size=2000, audit_target="stub"),
    Scenario("audit-ours", "the same audit of our EIR: no mismatches, the scorecard "
             "verifies", kind="audit", size=2000, audit_target="ours"),
)}


# --------------------------------------------------------------------------- running


def _prepare_out(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for name in ("report.json", "report.html", "eir.log", "sim.log"):
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()
    work = out / "work"
    if work.exists():
        if not (work / WORK_MARK).exists():
            raise SetupError(f"{work} exists and was not made by the testbed; remove it")
        shutil.rmtree(work)
    work.mkdir()
    (work / WORK_MARK).write_text("made by python -m testbed; removed by the next run\n")
    return work


def make_population(ctx: Context) -> None:
    sc = ctx.scenario
    ctx.pop_dir = ctx.work / "population"
    args = [*sim_command(), "population", "--size", str(ctx.size), "--seed", str(sc.seed),
            "--out", str(ctx.pop_dir)]
    if sc.weights:
        args += ["--weights", sc.weights]
    _run("eir-sim population", args, timeout=300)
    try:
        ctx.meta = json.loads((ctx.pop_dir / "population.json").read_text(encoding="utf-8"))
        str(ctx.meta["start"]["iso"])  # must exist
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SetupError(f"{ctx.pop_dir / 'population.json'}: unreadable ({exc})") from None
    counts = ctx.meta.get("counts") or {}
    ctx.say(f"testbed: population {ctx.size:,} handsets, seed {sc.seed}, "
            f"{len(counts)} categories, start {ctx.meta['start']['iso']}")


def seed_registry(ctx: Context) -> None:
    ctx.db = ctx.work / "eir.db"
    for cmd in seed_commands(ctx.pop_dir, ctx.meta, ctx.db):
        _run(f"eir {' '.join(cmd[:2])}", [*eir_command(), *cmd], timeout=300)
    ctx.say(f"testbed: registry {ctx.db} seeded")


def _anchor(speed: float, lead: float) -> float:
    """A whole-second real instant ``lead`` s from now (whole: eir-sim reads whole seconds)."""
    return float(math.ceil(time.time() + (lead if speed > 1 else 0.0)))


def _start_eir(ctx: Context, config: Path, *, host: str = "127.0.0.1",
               port: int | None = None, prefix: tuple[str, ...] = ()) -> EirProcess:
    eir = EirProcess(ctx.db, port=port, origin_host=ORIGIN_HOST, origin_realm=ORIGIN_REALM,
                     config=config, log_path=ctx.out / "eir.log", ready_timeout=60,
                     host=host, prefix=prefix)
    ctx.eir = eir
    try:
        eir.start()
    except RuntimeError:
        last = _last_line(eir.log()) or "no output"
        raise SetupError(f"eir serve did not start: {last} (log {eir.log_path})") from None
    return eir


def _wait_for_anchor(anchor: float, speed: float) -> None:
    """At high speed, start sending close to the anchor (the simulated start)."""
    if speed > 1:
        delay = anchor - time.time() - 0.3  # eir-sim's own start-up
        if delay > 0:
            time.sleep(delay)


def run_sim(ctx: Context, target: str, anchor: float, speed: float,
            prefix: tuple[str, ...] = ()) -> tuple[int, Report]:
    sc = ctx.scenario
    report_path, html_path = ctx.out / "report.json", ctx.out / "report.html"
    args = [*prefix, *sim_command(), "run", "--target", target, "--population",
            str(ctx.pop_dir), "--count", str(ctx.count), *sc.load(ctx.count),
            "--timeout", f"{sc.timeout:g}", "--speed", f"{speed:g}", "--anchor", iso(anchor),
            "--report", str(report_path), "--html", str(html_path),
            "--scenario", sc.name, "--quiet", *sc.sim_extra]
    if sc.margin_real_s is not None:
        args += ["--margin", f"{max(60.0, sc.margin_real_s * speed):.0f}"]
    limit = 120 + ctx.count / 200
    with (ctx.out / "sim.log").open("w", encoding="utf-8") as log:
        try:
            r = subprocess.run(args, stdout=subprocess.PIPE, stderr=log, text=True,
                               timeout=limit, check=False)
        except subprocess.TimeoutExpired:
            raise SetupError(f"eir-sim run: no result within {limit:.0f} s") from None
    for line in r.stdout.splitlines():
        ctx.say(line)
    if r.returncode not in (0, 1):
        err = _last_line((ctx.out / "sim.log").read_text(errors="replace"))
        raise SetupError(f"eir-sim run failed (exit {r.returncode}): {err}")
    try:
        report: Report = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SetupError(f"eir-sim run wrote no readable report: {exc}") from None
    return r.returncode, report


def _stop_eir(ctx: Context) -> list[str]:
    if ctx.eir is None:
        return []
    code = ctx.eir.stop(timeout=20)
    took = ctx.eir.stop_seconds
    ctx.say(f"testbed: eir serve stopped (SIGTERM) with exit {code}"
            + (f" in {took:.1f} s" if took is not None else ""))
    return [] if code == 0 else [f"eir serve exited with {code} on SIGTERM"]


def _judge(ctx: Context, sim_rc: int, report: Report) -> list[str]:
    problems = [p for check in ctx.scenario.checks for p in check(report, ctx)]
    if sim_rc != 0 and not problems:
        problems.append(f"eir-sim run exited {sim_rc}")
    return problems


def _run_load(ctx: Context) -> list[str]:
    sc = ctx.scenario
    make_population(ctx)
    seed_registry(ctx)
    speed = sc.speed_for(ctx.count)
    anchor = _anchor(speed, lead=3.0)
    config = ctx.work / "eir.toml"
    eir_config(config, start_iso=str(ctx.meta["start"]["iso"]), speed=speed,
               anchor_iso=iso(anchor), regime=ctx.meta.get("regime") or {})
    eir = _start_eir(ctx, config)
    ctx.say(f"testbed: eir serve ready on 127.0.0.1:{eir.port} (clock speed {speed:g}, "
            f"anchor {iso(anchor)})")
    problems: list[str] = []
    try:
        _wait_for_anchor(anchor, speed)
        rc, report = run_sim(ctx, f"127.0.0.1:{eir.port}", anchor, speed)
        problems = _judge(ctx, rc, report)
    finally:
        problems += _stop_eir(ctx)
    return problems


def _run_netns(ctx: Context) -> list[str]:
    sc = ctx.scenario
    try:  # first: no population is made where the namespaces cannot be
        cm = netns.veth_pair(sc.netem)
        link = cm.__enter__()
    except netns.Unavailable as exc:
        raise Skipped(str(exc)) from None
    problems: list[str] = []
    try:
        make_population(ctx)
        seed_registry(ctx)
        ctx.say(f"testbed: namespaces {link.eir_ns} ({link.eir_addr}, EIR) and {link.mme_ns} "
                f"({link.mme_addr}, MMEs) over veth"
                + (f", netem {' '.join(link.netem)} on both ends" if link.netem else ""))
        speed = sc.speed_for(ctx.count)
        anchor = _anchor(speed, lead=3.0)
        config = ctx.work / "eir.toml"
        eir_config(config, start_iso=str(ctx.meta["start"]["iso"]), speed=speed,
                   anchor_iso=iso(anchor), regime=ctx.meta.get("regime") or {},
                   allow_networks=[link.network])
        port = 3868
        eir = _start_eir(ctx, config, host=link.eir_addr, port=port,
                         prefix=link.exec_prefix(link.eir_ns))
        ctx.say(f"testbed: eir serve ready on {link.eir_addr}:{eir.port} in {link.eir_ns}")
        try:
            rc, report = run_sim(ctx, f"{link.eir_addr}:{port}", anchor, speed,
                                 prefix=link.exec_prefix(link.mme_ns))
            problems = _judge(ctx, rc, report)
        finally:
            problems += _stop_eir(ctx)
    finally:
        cm.__exit__(None, None, None)
        ctx.say(f"testbed: namespaces {link.eir_ns}, {link.mme_ns} deleted")
    return problems


# -- the audit ------------------------------------------------------------------------------


def audit_unavailable_reason() -> str | None:
    """None when this checkout's ``eir-sim`` has the ``audit`` command (simulator/audit.py)."""
    try:
        r = subprocess.run([*sim_command(), "audit", "--help"], capture_output=True, text=True,
                           timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"eir-sim audit --help: {exc}"
    if r.returncode != 0 or "--population" not in r.stdout:
        return ("eir-sim audit is not available (simulator/audit.py missing?): "
                f"{_last_line(r.stderr) or f'exit {r.returncode}'}")
    return None


def _keygen(ctx: Context) -> tuple[Path, Path]:
    keys = ctx.work / "keys"
    keys.mkdir()
    prefix = keys / "ministry"
    _run("eir-sim keygen", [*sim_command(), "keygen", "--out", str(prefix)], timeout=60)
    private, public = Path(f"{prefix}.private.pem"), Path(f"{prefix}.public.pem")
    if not private.is_file() or not public.is_file():
        raise SetupError(f"eir-sim keygen --out {prefix}: no {private.name} / {public.name}")
    return private, public


def stub_answer(imei: str) -> str:
    """What freeDiameter's stub EIR answers (testbed/fdpeer.py): 35.. black, 86.. grey."""
    if imei.startswith("35"):
        return "BLACKLISTED"
    if imei.startswith("86"):
        return "GREYLISTED"
    return "WHITELISTED"


def stub_differs(pop_dir: Path) -> dict[str, float]:
    """Per category, the share of the population the stub answers unlike expected.csv."""
    import csv

    total: dict[str, int] = {}
    wrong: dict[str, int] = {}
    with (pop_dir / "expected.csv").open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            cat = row["category"]
            total[cat] = total.get(cat, 0) + 1
            if stub_answer(row["imei"]) != row["expected"]:
                wrong[cat] = wrong.get(cat, 0) + 1
    return {c: wrong.get(c, 0) / n for c, n in total.items()}


def _judge_audit(ctx: Context, card: dict[str, Any]) -> list[str]:
    enf = card.get("enforcement") or {}
    conf = card.get("conformance") or {}
    cats: dict[str, Any] = enf.get("categories") or {}
    mism = int(enf.get("mismatched") or 0)
    flagged = list(enf.get("mismatched_categories") or [])
    ctx.say(f"testbed: scorecard {card.get('verdict')} score {card.get('score')}: "
            f"conformance {conf.get('passed')}/{conf.get('total')}, enforcement "
            f"{enf.get('matched')}/{enf.get('sent')} matched, mismatches in "
            f"{', '.join(flagged) or 'no category'}")
    problems = []
    if not enf.get("sent"):
        problems.append("the audit judged no handset")
    if ctx.scenario.audit_target == "ours":
        if mism or card.get("verdict") != "PASS":
            problems.append(f"the audit of our EIR says {card.get('verdict')}: "
                            + "; ".join(card.get("reasons") or []))
        return problems
    if not mism:
        problems.append("the audit found no mismatches in freeDiameter's stub EIR")
    # Where the stub's answer differs for most of a category, the sample must show it.
    share = stub_differs(ctx.pop_dir)
    missed = [c for c, s in cats.items() if s.get("sent") and share.get(c, 0) >= 0.5
              and not s.get("mismatched")]
    if missed:
        problems.append("the audit missed the stub's wrong answers in " + ", ".join(missed))
    return problems


def _verify(ctx: Context, card_path: Path, public: Path) -> list[str]:
    problems = []
    v = subprocess.run([*sim_command(), "verify", str(card_path), "--key", str(public)],
                       capture_output=True, text=True, timeout=60, check=False)
    ctx.say(f"testbed: eir-sim verify {card_path.name}: exit {v.returncode}: "
            f"{_last_line(v.stdout) or _last_line(v.stderr)}")
    if v.returncode != 0:
        problems.append("the signed scorecard does not verify")
    tampered = ctx.work / f"altered-{card_path.name}"
    data = bytearray(card_path.read_bytes())
    i = data.find(b'"mismatched":')
    data[i + len(b'"mismatched":') if i >= 0 else len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    t = subprocess.run([*sim_command(), "verify", str(tampered), "--key", str(public)],
                       capture_output=True, text=True, timeout=60, check=False)
    if t.returncode == 0:
        problems.append("a scorecard altered by one byte still verifies")
    else:
        ctx.say(f"testbed: the scorecard altered by one byte fails verification "
                f"(exit {t.returncode})")
    return problems


def _run_audit(ctx: Context) -> list[str]:
    sc = ctx.scenario
    reason = audit_unavailable_reason()
    if reason:
        raise SetupError(reason)
    if sc.audit_target == "stub":
        reason = fdpeer.unavailable_reason()
        if reason:
            raise SetupError(reason)
    make_population(ctx)
    private, public = _keygen(ctx)
    audit_dir = ctx.out / "audit"
    shutil.rmtree(audit_dir, ignore_errors=True)
    problems: list[str] = []
    with contextlib.ExitStack() as stack:
        if sc.audit_target == "stub":
            try:
                srv = fdpeer.start_server(workdir=ctx.work / "fd")
            except fdpeer.FdPeerError as exc:
                raise SetupError(f"freeDiameter stub EIR: {_last_line(str(exc))}") from None
            stack.callback(srv.stop)
            target = f"127.0.0.1:{srv.port}"
            ctx.say(f"testbed: freeDiameter stub EIR {srv.identity} (realm {srv.realm}) on "
                    f"{target}")
        else:
            seed_registry(ctx)
            anchor = _anchor(1.0, 0)
            config = ctx.work / "eir.toml"
            eir_config(config, start_iso=str(ctx.meta["start"]["iso"]), speed=1.0,
                       anchor_iso=iso(anchor), regime=ctx.meta.get("regime") or {})
            eir = _start_eir(ctx, config)
            stack.callback(lambda: problems.extend(_stop_eir(ctx)))
            target = f"127.0.0.1:{eir.port}"
            ctx.say(f"testbed: eir serve ready on {target}")
        args = [*sim_command(), "audit", "--target", target, "--population", str(ctx.pop_dir),
                "--key", str(private), "--out", str(audit_dir),
                "--origin-host", "audit.test.local", "--origin-realm", "test.local",
                "--timeout", "5"]
        try:
            r = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
        except subprocess.TimeoutExpired:
            raise SetupError("eir-sim audit: no result within 600 s") from None
        (ctx.out / "sim.log").write_text(r.stdout + r.stderr, encoding="utf-8")
        for line in (r.stdout + r.stderr).splitlines():
            ctx.say(line)
        if r.returncode not in (0, 1):
            raise SetupError(f"eir-sim audit failed (exit {r.returncode}): "
                             f"{_last_line(r.stderr) or _last_line(r.stdout)}")
    card_path = audit_dir / "scorecard.json"
    try:
        envelope = json.loads(card_path.read_text(encoding="utf-8"))
        card = envelope["scorecard"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SetupError(f"{card_path}: no readable scorecard ({exc})") from None
    problems += _judge_audit(ctx, card)
    problems += _verify(ctx, card_path, public)
    html = audit_dir / "scorecard.html"
    if html.is_file():
        ctx.say(f"scorecard: {card_path}\nhtml: {html}")
    else:
        problems.append(f"no HTML scorecard {html}")
    return problems


RUNNERS: dict[str, Callable[[Context], list[str]]] = {
    "run": _run_load, "netns": _run_netns, "audit": _run_audit}


@dataclass(frozen=True)
class Outcome:
    status: str
    problems: tuple[str, ...] = ()
    message: str = ""

    @property
    def exit_code(self) -> int:
        return EXIT[self.status]


def run(name: str, *, out: Path | None = None, size: int | None = None,
        count: int | None = None, keep: bool = False,
        stream: TextIO | None = None) -> Outcome:
    """Run scenario ``name``; prints progress and the report to ``stream`` (stdout)."""
    stream = stream or sys.stdout
    sc = SCENARIOS.get(name)
    if sc is None:
        raise SetupError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    out = Path(out) if out is not None else Path("testbed-out") / name
    out = out.resolve()
    ctx = Context(sc, out, Path(), size or sc.size, count or sc.count, stream)
    ctx.work = _prepare_out(out)
    ctx.say(f"testbed: {sc.name}: {sc.summary}")
    t0 = time.monotonic()
    outcome: Outcome
    try:
        problems = RUNNERS[sc.kind](ctx)
        outcome = Outcome(FAIL if problems else PASS, tuple(problems))
    except Skipped as exc:
        outcome = Outcome(SKIPPED, message=str(exc))
    except SetupError as exc:
        outcome = Outcome(SETUP, message=str(exc))
    finally:
        if ctx.eir is not None and ctx.eir.returncode is None:
            ctx.eir.stop()
    for note in ctx.notes:
        ctx.say(f"testbed: {note}")
    took = time.monotonic() - t0
    if outcome.status == FAIL and ctx.eir is not None:
        ctx.say(f"testbed: last lines of {ctx.eir.log_path}:")
        for line in ctx.eir.log_tail(20).splitlines():
            ctx.say(f"  {line}")
    if outcome.status in (PASS, SKIPPED) and not keep:
        shutil.rmtree(ctx.work, ignore_errors=True)
    if outcome.status == PASS:
        ctx.say(f"testbed: {sc.name}: PASS in {took:.1f} s; report {out / 'report.json'}"
                if sc.kind != "audit" else f"testbed: {sc.name}: PASS in {took:.1f} s")
    elif outcome.status == FAIL:
        ctx.say(f"testbed: {sc.name}: FAIL in {took:.1f} s: " + "; ".join(outcome.problems))
    elif outcome.status == SKIPPED:
        ctx.say(f"testbed: {sc.name}: skipped: {outcome.message}")
    return outcome
