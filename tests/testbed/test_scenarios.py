"""``python -m testbed``: every named scenario end to end, as processes (issue 4 item 6).

Each scenario runs as the newcomer runs it (``python -m testbed run NAME``), with a smaller
population and count, and is judged here from what it wrote (report.json, the scorecard),
not only from its exit status. ``netem`` skips where the kernel has no netem (the
scenario says so in one line); ``audit-third-party`` needs simulator/audit.py and
freeDiameter (a failure instead of a skip when ``fdpeer.must_not_skip()``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from eir import config as eir_config
from testbed import fdpeer, netns, scenarios

ROOT = Path(__file__).resolve().parents[2]
CATEGORIES = ("white", "grandfathered", "grey_in_grace", "grey_near_expiry", "grey_expired",
              "stolen", "exception", "counterfeit", "malformed", "roamer", "m2m", "clone",
              "brand_new")


def run_testbed(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "testbed", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


def run_scenario(name: str, out: Path, *args: str) -> tuple[subprocess.CompletedProcess[str],
                                                             dict[str, Any]]:
    r = run_testbed("run", name, "--out", str(out), *args)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert f"testbed: {name}: PASS" in r.stdout, r.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["scenario"] == name
    return r, report


def assert_clean(report: dict[str, Any]) -> None:
    assert report["answered"] == report["sent"] > 0
    assert report["mismatches"] == 0, report["mismatch_examples"]
    assert report["timeouts"] == 0 and report["errors"] == 0
    assert not any(report["mismatches_by_category"].values())


def assert_html_with_plots(path: Path) -> None:
    html = path.read_text()
    assert "<svg" in html or "<img" in html, f"{path}: no plot"


def judged(report: dict[str, Any], category: str) -> dict[str, int]:
    return dict(report["by_category"][category]["expected"])


# --------------------------------------------------------------------------- command line


def test_list_names_every_scenario_on_one_line_each() -> None:
    r = run_testbed("list", timeout=60)
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert [ln.split()[0] for ln in lines] == list(scenarios.SCENARIOS)
    for name in ("smoke", "storm", "grace-fast-forward", "clone-cluster",
                 "audit-third-party", "netem"):
        assert name in scenarios.SCENARIOS


@pytest.mark.parametrize("args, words", [
    (("run", "no-such-scenario"), "unknown scenario 'no-such-scenario'"),
    (("run", "smoke", "--count", "0"), "--count"),
    (("run", "smoke", "--size", "many"), "--size"),
    (("walk",), "invalid choice"),
    ((), "required"),
])
def test_bad_arguments_are_one_line_and_exit_2(args: tuple[str, ...], words: str,
                                                tmp_path: Path) -> None:
    r = run_testbed(*args, "--out", str(tmp_path)) if args[:1] == ("run",) else run_testbed(*args)
    assert r.returncode == 2
    assert r.stdout == ""
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert words in r.stderr
    assert "Traceback" not in r.stderr


def test_a_setup_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "work").mkdir(parents=True)  # not the testbed's: it refuses to delete it
    r = run_testbed("run", "smoke", "--out", str(out), timeout=60)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "setup error" in r.stderr and "work" in r.stderr


# --------------------------------------------------------------------------- pieces


def test_seed_commands_follow_the_population_imports(tmp_path: Path) -> None:
    db = tmp_path / "eir.db"
    plain = scenarios.seed_commands(tmp_path, {}, db)
    assert [c[1] for c in plain] == ["import-tac", "import", "import-observations"]
    meta = {"imports": [
        {"file": "tac.csv", "kind": "tac"},
        {"file": "base.csv", "kind": "full", "list_version": 1, "source": "ministry"},
        {"file": "d2.csv", "kind": "delta", "list_version": 2, "source": "ministry"},
        {"file": "observations.csv", "kind": "observations"}]}
    cmds = scenarios.seed_commands(tmp_path, meta, db)
    assert [c[1] for c in cmds] == ["import-tac", "import", "import", "import-observations"]
    assert cmds[1][-5:] == ["--full", "ministry", "--list-version", "1",
                            str(tmp_path / "base.csv")]
    assert cmds[2][-5:] == ["--delta", "ministry", "--list-version", "2",
                            str(tmp_path / "d2.csv")]
    with pytest.raises(scenarios.SetupError, match="kind is not one of"):
        scenarios.seed_commands(tmp_path, {"imports": [{"file": "x", "kind": "odd"}]}, db)


def test_the_eir_config_is_one_the_eir_accepts(tmp_path: Path) -> None:
    path = tmp_path / "eir.toml"
    regime = {"grace_days": 30.0, "cutoff": "2025-05-25T00:00:00+05:00", "home_mccs": ["401"],
              "clone_threshold": 5, "clone_window_days": 30.0, "strict": True}
    scenarios.eir_config(path, start_iso="2026-03-02T00:00:00+00:00", speed=172800.0,
                         anchor_iso=scenarios.iso(1_800_000_000.0), regime=regime,
                         allow_networks=[netns.NETWORK])
    cfg = eir_config.load(path)
    assert cfg.clock.test_mode and cfg.clock.speed == 172800.0
    assert cfg.policy.unknown_equipment == "reject" and cfg.policy.home_mccs == ("401",)
    assert cfg.peers.allow_networks == (netns.NETWORK,)
    clock = cfg.make_clock()
    assert clock is not None


def _report(by_category: dict[str, dict[str, int]], **kw: int) -> dict[str, Any]:
    base: dict[str, Any] = {"sent": 10, "answered": 10, "mismatches": 0, "timeouts": 0,
                            "errors": 0, "mismatches_by_category": {}}
    base.update(kw)
    base["by_category"] = {c: {"answered": 1, "expected": e} for c, e in by_category.items()}
    return base


def test_pass_conditions_see_what_they_are_about(tmp_path: Path) -> None:
    sc = scenarios.SCENARIOS["grace-fast-forward"]
    ctx = scenarios.Context(sc, tmp_path, tmp_path, 10, 10, sys.stdout,
                            meta={"counts": {c: 1 for c in scenarios.GREY_CATEGORIES}})
    flipped = {c: {"GREYLISTED": 3, "BLACKLISTED": 2} for c in scenarios.GREY_CATEGORIES}
    assert scenarios.clean(_report(flipped), ctx) == []
    assert scenarios.grace_crossed(_report(flipped), ctx) == []
    never = dict(flipped, brand_new={"GREYLISTED": 5})
    assert any("brand_new" in p for p in scenarios.grace_crossed(_report(never), ctx))
    assert scenarios.clean(_report(flipped, timeouts=1), ctx) == ["1 timeouts"]
    bad = _report(flipped, mismatches=2)
    bad["mismatches_by_category"] = {"clone": 2}
    assert len(scenarios.clean(bad, ctx)) == 2


def test_the_stub_rule_is_the_one_fdpeer_documents() -> None:
    assert scenarios.stub_answer("35000000000000") == "BLACKLISTED"
    assert scenarios.stub_answer("86000000000000") == "GREYLISTED"
    assert scenarios.stub_answer("49015420323751") == "WHITELISTED"
    assert "35.." in (fdpeer.__doc__ or "") and "86.." in (fdpeer.__doc__ or "")


# --------------------------------------------------------------------------- scenarios


@pytest.mark.timeout(180)
def test_smoke_zero_mismatches_in_every_category(tmp_path: Path) -> None:
    r, report = run_scenario("smoke", tmp_path, "--size", "2000", "--count", "5000")
    assert_clean(report)
    assert set(report["by_category"]) == set(CATEGORIES)
    for cat, s in report["by_category"].items():
        assert s["answered"] > 0 and s["mismatches"] == 0, cat
    assert re.search(r"^PASS: sent 5,000, answered 5,000", r.stdout, re.M)
    assert f"report: {tmp_path / 'report.json'}" in r.stdout
    assert f"html: {tmp_path / 'report.html'}" in r.stdout
    assert_html_with_plots(tmp_path / "report.html")
    assert "eir serve stopped (SIGTERM) with exit 0" in r.stdout
    assert (tmp_path / "eir.log").read_text().count("EIR ready") == 1
    assert not (tmp_path / "work").exists()  # removed after a pass without --keep


@pytest.mark.timeout(180)
def test_storm_zero_mismatches_zero_timeouts(tmp_path: Path) -> None:
    _, report = run_scenario("storm", tmp_path, "--size", "2000", "--count", "6000", "--keep")
    assert_clean(report)
    assert report["load"]["kind"] == "storm"
    assert report["load"]["max_in_flight"] == 256
    assert_html_with_plots(tmp_path / "report.html")
    assert (tmp_path / "work" / "population" / "population.json").is_file()  # --keep


@pytest.mark.timeout(180)
def test_grace_fast_forward_flips_grey_to_black(tmp_path: Path) -> None:
    _, report = run_scenario("grace-fast-forward", tmp_path, "--size", "3000",
                             "--count", "30000")
    assert_clean(report)
    assert report["speed"] > 86_400
    for cat in scenarios.GREY_CATEGORIES:
        got = judged(report, cat)
        assert got.get("GREYLISTED", 0) > 0 and got.get("BLACKLISTED", 0) > 0, (cat, got)
    assert judged(report, "grey_expired").keys() <= {"BLACKLISTED", "unjudged"}
    assert_html_with_plots(tmp_path / "report.html")


@pytest.mark.timeout(180)
def test_clone_cluster_members_flagged_owners_white(tmp_path: Path) -> None:
    r, report = run_scenario("clone-cluster", tmp_path, "--size", "2000", "--count", "4000")
    assert_clean(report)
    clone = report["by_category"]["clone"]
    assert clone["sent"] > report["sent"] / 3  # the population is weighted to clones
    got = judged(report, "clone")
    assert got.get("WHITELISTED", 0) > 0
    assert got.get("GREYLISTED", 0) + got.get("BLACKLISTED", 0) > 0
    assert "member GREYLISTED clone_suspected" in r.stdout or \
        "member BLACKLISTED clone_suspected" in r.stdout
    assert "owner WHITELISTED" in r.stdout
    assert_html_with_plots(tmp_path / "report.html")


def _namespaces() -> set[str]:
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return {ln.split()[0] for ln in r.stdout.splitlines() if ln.startswith("eirtb-")}


def _netns_scenario(name: str, tmp_path: Path) -> None:
    why = netns.unavailable_reason()
    if why:
        pytest.skip(why)
    before = _namespaces()
    r = run_testbed("run", name, "--out", str(tmp_path), "--size", "2000", "--count", "3000")
    assert _namespaces() == before, "namespaces left behind"
    if r.returncode == 0 and f"testbed: {name}: skipped: " in r.stdout:
        last = r.stdout.strip().splitlines()[-1]
        assert "netem" in last
        pytest.skip(last)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    report = json.loads((tmp_path / "report.json").read_text())
    assert_clean(report)
    assert report["targets"] == [f"{netns.EIR_ADDR}:3868"]  # across the veth, not loopback
    assert_html_with_plots(tmp_path / "report.html")


@pytest.mark.timeout(180)
def test_netem_across_namespaces(tmp_path: Path) -> None:
    _netns_scenario("netem", tmp_path)


@pytest.mark.timeout(180)
def test_netns_plain_veth(tmp_path: Path) -> None:
    _netns_scenario("netns", tmp_path)


def _audit_ready() -> None:
    if not (ROOT / "simulator" / "audit.py").is_file():
        pytest.skip("simulator/audit.py is missing (eir-sim audit not written yet)")


@pytest.mark.interop
@pytest.mark.timeout(240)
def test_audit_third_party_finds_the_stub_eirs_mismatches(tmp_path: Path) -> None:
    _audit_ready()
    why = fdpeer.unavailable_reason()
    if why:
        if fdpeer.must_not_skip():
            pytest.fail(f"freeDiameter missing where it is required: {why}")
        pytest.skip(why)
    r = run_testbed("run", "audit-third-party", "--out", str(tmp_path), "--size", "1500", "--keep")
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    card = json.loads((tmp_path / "audit" / "scorecard.json").read_text())["scorecard"]
    assert card["verdict"] == "FAIL"
    enf = card["enforcement"]
    assert enf["mismatched"] > 0
    # The stub answers by IMEI prefix: wherever that differs from the regime for most of a
    # category, the audit reports mismatches in that category.
    share = scenarios.stub_differs(tmp_path / "work" / "population")
    differing = {c for c, s in share.items() if s >= 0.5}
    assert differing, share
    assert differing <= set(enf["mismatched_categories"]), (share, enf["mismatched_categories"])
    assert "valid, signed by key" in r.stdout
    assert "altered by one byte fails verification" in r.stdout
    html = (tmp_path / "audit" / "scorecard.html").read_text()
    assert "FAIL" in html


@pytest.mark.timeout(240)
def test_audit_ours_finds_nothing(tmp_path: Path) -> None:
    _audit_ready()
    r = run_testbed("run", "audit-ours", "--out", str(tmp_path), "--size", "1500")
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    card = json.loads((tmp_path / "audit" / "scorecard.json").read_text())["scorecard"]
    assert card["verdict"] == "PASS" and card["enforcement"]["mismatched"] == 0
    assert card["enforcement"]["sent"] > 100
    assert "valid, signed by key" in r.stdout
