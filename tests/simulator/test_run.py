"""``eir-sim run``: the load driver, the judge and the command line, over real sockets.

The EIR is the real one (``eir serve`` seeded from a population with the
real ``eir registry`` commands, its test clock at the population's start);
the framing-only ``bench.echo_server`` stands in where only the load's
shape matters (one fixed WHITELISTED answer).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator import population as pop_mod
from simulator.expect import ambiguous, expected
from simulator.judge import Judge
from simulator.load import ClosedLoop, LoadSpec, Poisson, Ramp, SimClock, Storm, run_load
from simulator.mme import PoolConfig, Target
from testbed.certs import make_ca
from testbed.eirproc import EirProcess, free_port, run_cli

REPO = Path(__file__).resolve().parents[2]
DAY = 86_400


def sim(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simulator", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def population(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pop") / "p"
    res = sim("population", "--size", "2500", "--seed", "11", "--out", str(out))
    assert res.returncode == 0, res.stderr
    return out


def seed(pop: Path, db: Path) -> None:
    for cmd, name in (("import-tac", "tac.csv"), ("import", "registry.csv"),
                      ("import-observations", "observations.csv")):
        res = run_cli("registry", cmd, "--db", str(db), str(pop / name))
        assert res.returncode == 0, res.stderr


def clock_toml(path: Path, pop: Path, speed: float = 1.0, anchor: str | None = None) -> Path:
    start = json.loads((pop / "population.json").read_text())["start"]["iso"]
    text = f'[clock]\ntest_mode = true\nstart = "{start}"\nspeed = {speed}\n'
    if anchor:
        text += f'anchor = "{anchor}"\n'
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def eir(population: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EirProcess]:
    d = tmp_path_factory.mktemp("eir")
    seed(population, d / "eir.db")
    with EirProcess(d / "eir.db", origin_host="eir.localdomain", origin_realm="localdomain",
                    config=clock_toml(d / "eir.toml", population)) as proc:
        yield proc


@pytest.fixture(scope="module")
def echo() -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, "-m", "bench.echo_server", "--listen",
                             "127.0.0.1:0", "--max-seconds", "600"], cwd=REPO,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    match = re.search(r"ECHO ready on \S+:(\d+)", line)
    assert match, line
    yield int(match.group(1))
    proc.terminate()
    proc.wait(10)


# -- the command line against our EIR ----------------------------------------------------


def test_run_against_our_eir_has_no_mismatch_in_any_category(
        eir: EirProcess, population: Path, tmp_path: Path) -> None:
    report, html = tmp_path / "r.json", tmp_path / "r.html"
    res = sim("run", "--target", f"127.0.0.1:{eir.port}", "--population", str(population),
              "--count", "6000", "--in-flight", "32", "--order", "sequential",
              "--report", str(report), "--html", str(html), "--scenario", "test")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith("PASS: sent 6,000, answered 6,000")
    r = json.loads(report.read_text())
    assert (r["sent"], r["answered"], r["timeouts"], r["errors"], r["mismatches"]) == \
        (6000, 6000, 0, 0, 0)
    cats = set(pop_mod.load(population).meta["counts"])
    # sequential order over 2,500 handsets: every category was sent and judged
    assert {c for c, v in r["by_category"].items() if v["answered"]} == cats
    judged = sum(sum(v["expected"].values()) - v["expected"].get("unjudged", 0)
                 for v in r["by_category"].values())
    assert judged >= 0.99 * r["answered"]
    assert set(r["by_status"]) >= {"WHITELISTED", "GREYLISTED", "BLACKLISTED"}
    for key in ("p50", "p90", "p99", "p999", "max"):
        assert r["latency_ms"][key] is not None
    assert r["protocol"]["connects"] == 8  # 4 operator realms x 2 MMEs
    page = html.read_text()
    assert "<svg" in page and "PASS" in page
    # the progress line went to stderr once a second
    assert re.search(r"rate\s+[\d,]+/s", res.stderr) or r["duration_s"] < 1


def test_a_wrong_clock_is_seen_as_mismatches(eir: EirProcess, population: Path,
                                             tmp_path: Path) -> None:
    """Judged 60 days on, the grey devices the EIR still sees in grace mismatch."""
    later = pop_mod.iso(pop_mod.load(population).start + 60 * DAY)
    report = tmp_path / "r.json"
    res = sim("run", "--target", f"127.0.0.1:{eir.port}", "--population", str(population),
              "--count", "3000", "--order", "sequential", "--sim-start", later,
              "--report", str(report), "--quiet")
    assert res.returncode == 1
    r = json.loads(report.read_text())
    assert r["mismatches_by_category"]["grey_in_grace"] > 0
    assert r["mismatches_by_category"]["white"] == 0
    assert "mismatches by category:" in res.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--target", "nowhere"], "--target 'nowhere': expected HOST:PORT"),
    (["--target", "127.0.0.1:1"], "no connection to 127.0.0.1:1"),
    (["--population", "/nonexistent"], "--population /nonexistent"),
    (["--count", "0"], "--count must be at least 1"),
    (["--watchdog", "2"], "--watchdog must be at least 6 seconds"),
    (["--speed", "10", "--sim-start", "now"], "--speed needs a --sim-start other than 'now'"),
])
def test_bad_arguments_get_one_line(population: Path, args: list[str], message: str) -> None:
    base = {"--target": "127.0.0.1:1", "--population": str(population)}
    for k, v in zip(args[::2], args[1::2], strict=True):
        base[k] = v
    argv = [x for kv in base.items() for x in kv]
    argv += [a for a in args if a not in base and a not in base.values()]
    res = sim("run", *argv, "--quiet", "--timeout", "1", timeout=60)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eir-sim run: "), res.stderr
    assert message in lines[0]
    assert "Traceback" not in res.stderr


def test_help_and_unknown_command() -> None:
    res = sim("frobnicate")
    assert res.returncode == 2 and "unknown command 'frobnicate'" in res.stderr
    res = sim("--help")
    assert res.returncode == 0 and "population" in res.stdout and "audit" in res.stdout


def test_report_command_renders_a_json_report(eir: EirProcess, population: Path,
                                              tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    assert sim("run", "--target", f"127.0.0.1:{eir.port}", "--population", str(population),
               "--count", "200", "--report", str(report), "--quiet").returncode == 0
    res = sim("report", str(report), "--html", str(tmp_path / "again.html"))
    assert res.returncode == 0 and res.stdout.startswith("PASS")
    assert "<svg" in (tmp_path / "again.html").read_text()
    (tmp_path / "bad.json").write_text("[1, 2]")
    res = sim("report", str(tmp_path / "bad.json"), "--html", str(tmp_path / "x.html"))
    assert res.returncode == 2 and "not a run report" in res.stderr


# -- the judge ------------------------------------------------------------------------------


def test_judge_agrees_with_expect_everywhere(population: Path) -> None:
    """The memo never answers differently from asking `expect` at every check."""
    pop = pop_mod.load(population)
    margin = 600.0
    judge = Judge(pop.handsets, pop.regime, margin)
    rnd = random.Random(3)
    first = [math.nan] * len(pop.handsets)
    t = float(pop.start)
    for _ in range(40_000):
        t += rnd.uniform(0, 4 * 3600)  # ~ 270 days in all: every grace deadline is crossed
        i = rnd.randrange(len(pop.handsets))
        if math.isnan(first[i]):
            first[i] = t
        h = pop.handsets[i]
        want = None if ambiguous(h, t, first[i], pop.regime, margin) else \
            expected(h, t, first[i], pop.regime)
        assert judge(i, t, first[i]) == want, (h, t)


# -- the load driver against the echo server ------------------------------------------------


def _pool(port: int, pop: pop_mod.Population, timeout: float = 5.0) -> PoolConfig:
    return PoolConfig.for_realms([Target("127.0.0.1", port)], [h.realm for h in pop.handsets],
                                 per_realm=1, destination_realm="localdomain", timeout=timeout,
                                 seed=1)


def _drive(port: int, population: Path, spec: LoadSpec) -> dict[str, object]:
    pop = pop_mod.load(population)
    judge = Judge(pop.handsets, pop.regime, 60.0)
    return asyncio.run(run_load(_pool(port, pop), pop.handsets, judge, spec,
                                clock=SimClock(float(pop.start))))


def test_poisson_sends_its_count_at_about_its_rate(echo: int, population: Path) -> None:
    t0 = time.monotonic()
    r = _drive(echo, population, LoadSpec(Poisson(2000), count=3000, seed=5))
    took = time.monotonic() - t0
    assert r["sent"] == r["answered"] == 3000 and r["timeouts"] == 0
    assert 1.0 < took < 6.0  # 1.5 s of arrivals at 2000/s, generous on a shared machine
    assert r["load"]["kind"] == "poisson"  # type: ignore[index]


def test_duration_bounds_an_open_loop(echo: int, population: Path) -> None:
    r = _drive(echo, population, LoadSpec(Ramp(500, 3000, 1.0), duration=1.5, seed=5))
    sent = r["sent"]
    assert isinstance(sent, int)
    # 1 s ramp from 500 to 3000/s (~1,750) then 0.5 s at 3000/s (~1,500)
    assert 2_400 < sent < 4_100
    assert r["answered"] == sent


def test_a_storm_arrives_at_once_beyond_the_in_flight_cap(echo: int, population: Path) -> None:
    spec = LoadSpec(Storm(200, 4000, 0.3), duration=1.0, max_in_flight=100, seed=5)
    r = _drive(echo, population, spec)
    load = r["load"]
    assert isinstance(load, dict)
    assert load["backlog_max"] >= 3000  # the burst waited behind the cap, none was dropped
    assert r["sent"] == r["answered"] >= 4000 and r["timeouts"] == 0


def test_closed_loop_keeps_its_in_flight(echo: int, population: Path) -> None:
    r = _drive(echo, population, LoadSpec(ClosedLoop(16), count=5000, seed=5))
    assert r["sent"] == r["answered"] == 5000
    # the echo always answers WHITELISTED: every other expectation is a mismatch
    by_cat = r["mismatches_by_category"]
    assert isinstance(by_cat, dict)
    assert by_cat["white"] == 0 and by_cat["stolen"] > 0


def test_accelerated_clock_crosses_grace_deadlines(population: Path, tmp_path: Path) -> None:
    """EIR and simulator share start, speed and anchor: grey answers turn black on time."""
    speed = 4 * DAY  # four simulated days per second
    anchor_epoch = time.time() + 3
    anchor = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(anchor_epoch)) + \
        f".{int(anchor_epoch % 1 * 1e6):06d}Z"
    seed(population, tmp_path / "eir.db")
    conf = clock_toml(tmp_path / "eir.toml", population, speed, anchor)
    report = tmp_path / "r.json"
    with EirProcess(tmp_path / "eir.db", port=free_port(), origin_host="eir.localdomain",
                    origin_realm="localdomain", config=conf) as proc:
        wait = anchor_epoch - time.time()
        if wait > 0:
            time.sleep(wait)
        res = sim("run", "--target", f"127.0.0.1:{proc.port}", "--population",
                  str(population), "--duration", "8", "--rate", "800", "--speed", str(speed),
                  "--anchor", anchor, "--timeout", "0.5", "--report", str(report), "--quiet")
    assert res.returncode == 0, res.stdout + res.stderr
    r = json.loads(report.read_text())
    grey = r["by_category"]["grey_in_grace"]["by_status"]
    # 32 simulated days: devices in grace at the start were seen grey, then black
    assert grey.get("GREYLISTED", 0) > 0 and grey.get("BLACKLISTED", 0) > 0
    assert r["mismatches"] == 0


def test_run_over_tls(population: Path, tmp_path: Path) -> None:
    """--tls: every MME connects to the EIR's TLS port with a client certificate."""
    ca = make_ca(tmp_path / "pki")
    server = ca.issue(tmp_path / "pki", "eir.localdomain", dns=("eir.localdomain",),
                      ips=("127.0.0.1",), server=True)
    client = ca.issue(tmp_path / "pki", "mme", client=True)
    seed(population, tmp_path / "eir.db")
    conf = clock_toml(tmp_path / "eir.toml", population)
    tls_port = free_port()
    with conf.open("a") as f:
        f.write(f'[tls]\nenabled = true\nport = {tls_port}\ncert_file = "{server.cert}"\n'
                f'key_file = "{server.key}"\nca_file = "{ca.cert}"\n')
    tls = ("--tls", "--tls-ca", str(ca.cert), "--tls-server-name", "eir.localdomain")
    with EirProcess(tmp_path / "eir.db", origin_host="eir.localdomain",
                    origin_realm="localdomain", config=conf) as proc:
        res = sim("run", "--target", f"127.0.0.1:{tls_port}", "--population", str(population),
                  "--count", "2000", "--in-flight", "32", "--order", "sequential", "--quiet",
                  *tls, "--tls-cert", str(client.cert), "--tls-key", str(client.key))
        assert res.returncode == 0, res.stdout + res.stderr
        assert res.stdout.startswith("PASS: sent 2,000, answered 2,000")
    sessions = [line for line in proc.log().splitlines() if "TLS session" in line]
    assert sessions and all("CN=mme" in line for line in sessions)
    assert "TLS handshake failed" not in proc.log()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("arrivals", [Ramp(2000, 0, 0.5), Storm(0, 300, 0.2)],
                         ids=["ramp-down-to-0", "storm-on-no-base"])
def test_a_load_that_runs_dry_ends_before_its_count(echo: int, population: Path,
                                                    arrivals: Ramp | Storm) -> None:
    """Arrivals that stop (a ramp to 0, a lone burst) end the run; --count is not waited for."""
    t0 = time.monotonic()
    r = _drive(echo, population, LoadSpec(arrivals, count=100_000, seed=5))
    assert time.monotonic() - t0 < 10
    sent = r["sent"]
    assert isinstance(sent, int) and 0 < sent < 100_000 and r["answered"] == sent


def test_time_up_with_a_backlog_is_reported(echo: int, population: Path) -> None:
    spec = LoadSpec(Storm(0, 50_000, 0.0), duration=0.3, max_in_flight=8, seed=5)
    r = _drive(echo, population, spec)
    load = r["load"]
    assert isinstance(load, dict)
    assert load["backlog_dropped"] > 0
    assert load["backlog_dropped"] + r["sent"] == 50_000  # type: ignore[operator]
