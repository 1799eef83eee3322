"""``eir-sim audit`` end to end: real EIR processes on 127.0.0.1, signed scorecards.

Our EIR, seeded from a population through its own command line (the
population's ``imports`` recipe) and run with a test clock at the
population's start, must pass: every conformance case, no mismatch in any
category, the newest list version enforced. Seeded with only the base list
it must show lag. With the regime switched off (the plain list lookup of
TS 29.272, unknown devices rejected) and as freeDiameter's stub EIR, it
must fail exactly where the answers differ, which the test computes
independently: from the real engine's dry run, and from the stub's rule.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eir.cli import main as eir_main
from eir.config import load as load_config
from eir.policy.observations import SightingCache
from eir.policy.regime import Regime as EirRegime
from eir.policy.regime import status_name
from eir.policy.sqlite import SqliteRegistry
from eir.policy.sqlite_regime import SqliteObservations
from simulator import expect
from simulator.audit import (
    DEFAULT_MARGIN,
    Check,
    latency,
    list_lag,
    main_audit,
    main_keygen,
    main_verify,
    sample,
)
from simulator.population import CATEGORIES, Handset, Population, import_argv, load, main_population
from testbed import fdpeer
from testbed.eirproc import EirProcess, free_port

EVEN = {c: 1.0 for c in CATEGORIES} | {"clone": 2.0, "white": 2.0}
PER_CATEGORY = 20
AUDITOR = ["--origin-host", "audit.test.local", "--origin-realm", "test.local"]
# POLICY.md's regime switched off: the plain list lookup, unknown equipment 5422
REGIME_OFF = {"rule_order": ["malformed", "paired_exception", "black", "white", "grey",
                             "unknown"],
              "unknown_equipment": "reject"}


@pytest.fixture(scope="module")
def pop_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pop")
    assert main_population(["--size", "400", "--seed", "7", "--out", str(out),
                            "--weights", ",".join(f"{c}={w}" for c, w in EVEN.items())]) == 0
    return out


@pytest.fixture(scope="module")
def pop(pop_dir: Path) -> Population:
    return load(pop_dir)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("keys")
    assert main_keygen(["--out", str(d / "ministry")]) == 0
    return d / "ministry.private.pem", d / "ministry.public.pem"


@pytest.fixture(autouse=True)
def _actor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EIR_ACTOR", "test_audit")


def seed(db: Path, pop_dir: Path, *, deltas: bool = True) -> None:
    """Apply the population's imports recipe with the ``eir`` command line."""
    for item in load(pop_dir).imports:
        if item["kind"] == "delta" and not deltas:
            continue
        assert eir_main(import_argv(item, pop_dir, str(db))) == 0, item


def eir_config(path: Path, pop: Population, policy: dict[str, Any] | None = None) -> Path:
    """The EIR's test clock starts at the population's start (the audit's default --at)."""
    text = f'[clock]\ntest_mode = true\nstart = "{pop.meta["start"]["iso"]}"\n'
    if policy:
        text += "[policy]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in policy.items())
    path.write_text(text)
    return path


def audit(port: int, pop_dir: Path, keys: tuple[Path, Path], out: Path, *extra: str
          ) -> tuple[int, dict[str, Any]]:
    rc = main_audit(["--target", f"127.0.0.1:{port}", "--population", str(pop_dir),
                     "--key", str(keys[0]), "--out", str(out),
                     "--per-category", str(PER_CATEGORY), *AUDITOR, *extra])
    for name in ("scorecard.json", "scorecard.html"):
        assert main_verify([str(out / name), "--key", str(keys[1])]) == 0, name
    card = json.loads((out / "scorecard.json").read_bytes())["scorecard"]
    assert isinstance(card, dict)
    return rc, card


def judged_sample(pop: Population) -> list[Handset]:
    """The handsets the audit sends, computed the way it documents."""
    return [h for h in sample(pop, PER_CATEGORY, pop.seed)
            if not expect.ambiguous(h, pop.start, None, pop.regime, DEFAULT_MARGIN)]


def mismatches_by_category(card: dict[str, Any]) -> dict[str, int]:
    return {c: s["mismatched"] for c, s in card["enforcement"]["categories"].items()
            if s["mismatched"]}


# -- our EIR ----------------------------------------------------------------------------------


def test_our_eir_passes_the_audit(pop: Population, pop_dir: Path, keys: tuple[Path, Path],
                                  tmp_path: Path) -> None:
    db = tmp_path / "eir.db"
    seed(db, pop_dir)
    with EirProcess(db, config=eir_config(tmp_path / "eir.toml", pop)) as eir:
        rc, card = audit(eir.port, pop_dir, keys, tmp_path / "out")
    assert rc == 0, card["reasons"]
    assert (card["verdict"], card["score"], card["reasons"]) == ("PASS", 100.0, [])
    conf = card["conformance"]
    assert conf["passed"] == conf["total"] == len(conf["cases"]) >= 20
    cats = card["enforcement"]["categories"]
    assert set(cats) == set(CATEGORIES)  # every category sampled ...
    for name, s in cats.items():
        assert s["sent"] > 0 and s["mismatched"] == 0 and s["matched"] == s["sent"], name
        assert s["sent"] + s["unjudged"] == s["sampled"] == min(PER_CATEGORY,
                                                                 len(pop.category(name)))
    lag = card["list_lag"]
    assert lag["newest_fully_enforced"] == lag["newest_version"] == pop.newest_version == 4
    assert lag["behind"] == 0
    assert all(lag["versions"][str(v)]["sent"] > 0 for v in range(1, 5))  # ... and version
    lat = card["latency_ms"]
    assert lat["count"] == card["enforcement"]["sent"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["max"]
    assert card["population"]["seed"] == 7 and len(card["population"]["sha256"]) == 64
    assert card["time"]["simulated_at"] == pop.meta["start"]["iso"]
    assert card["peer"]["origin_host"] == "eir.test.local"
    assert card["auditor"]["destination_realm"] == "test.local"


def test_an_eir_with_only_the_base_list_lags(pop: Population, pop_dir: Path,
                                            keys: tuple[Path, Path], tmp_path: Path) -> None:
    db = tmp_path / "eir.db"
    seed(db, pop_dir, deltas=False)
    with EirProcess(db, config=eir_config(tmp_path / "eir.toml", pop)) as eir:
        rc, card = audit(eir.port, pop_dir, keys, tmp_path / "out")
    assert rc == 1 and card["verdict"] == "FAIL"
    lag = card["list_lag"]
    assert (lag["newest_fully_enforced"], lag["behind"]) == (1, 3)
    assert lag["versions"]["1"]["mismatched"] == 0
    for v in ("2", "3", "4"):  # every sampled entry of a missing delta answered wrongly
        row = lag["versions"][v]
        assert row["sent"] > 0 and row["mismatched"] == row["sent"] and row["match_rate"] == 0
    # exactly the delta-tagged handsets mismatch
    delta_sent = sum(lag["versions"][v]["sent"] for v in ("2", "3", "4"))
    assert card["enforcement"]["mismatched"] == delta_sent
    assert set(mismatches_by_category(card)) <= {"white", "stolen", "exception"}
    for s in card["enforcement"]["categories"].values():
        for ex in s["examples"]:
            assert ex["list_version"] > 1
    assert card["conformance"]["passed"] == card["conformance"]["total"]
    assert any("list lag" in r for r in card["reasons"])


# -- a wrong EIR: ours with the regime off ----------------------------------------------------


class DryRun:
    """The real engine's read-only decision over a seeded registry: an independent oracle."""

    def __init__(self, db: Path, policy: dict[str, Any]) -> None:
        self.cfg = load_config(None, {"registry": {"db": str(db)}, "policy": policy})
        self.reg = SqliteRegistry(str(db), exception_cap=self.cfg.policy.exception_cap)
        self.obs = SqliteObservations(self.reg)

    async def answers(self, handsets: list[Handset], at: int) -> list[str]:
        await self.reg.open()
        try:
            dc = self.cfg.decision_config()
            regime = EirRegime(await self.reg.load_snapshot(), dc,
                               SightingCache(self.obs, dc.is_home), clock=lambda: float(at))
            out = []
            for h in handsets:
                d, _ = regime.dry_run(h.imei, h.imsi, h.sv, at=at, operator=h.realm)
                out.append("5422" if d.status is None else status_name(d.status))
            return out
        finally:
            self.obs.close()
            await self.reg.close()


def test_our_eir_with_the_regime_off_fails_where_answers_differ(
        pop: Population, pop_dir: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    oracle_db = tmp_path / "oracle.db"
    seed(oracle_db, pop_dir)
    sent = judged_sample(pop)
    got = asyncio.run(DryRun(oracle_db, REGIME_OFF).answers(sent, pop.start))
    differ = Counter(h.category for h, g in zip(sent, got, strict=True)
                     if g != expect.expected(h, pop.start, None, pop.regime))
    # the plain lookup still gets the lists right, and the national rules wrong
    assert not set(differ) & {"white", "stolen", "exception", "malformed"}
    assert {"grandfathered", "roamer", "m2m", "counterfeit", "brand_new"} <= set(differ)

    db = tmp_path / "eir.db"
    seed(db, pop_dir)
    cfg = eir_config(tmp_path / "eir.toml", pop, REGIME_OFF)
    with EirProcess(db, config=cfg) as eir:
        rc, card = audit(eir.port, pop_dir, keys, tmp_path / "out")
    assert rc == 1 and card["verdict"] == "FAIL"
    assert mismatches_by_category(card) == dict(differ)
    assert card["enforcement"]["mismatched_categories"] == sorted(differ)
    assert card["conformance"]["passed"] == card["conformance"]["total"]


# -- a wrong EIR we did not write: freeDiameter's stub ----------------------------------------


def stub_rule(imei: str) -> str:
    """testbed/freediameter/ecr_gen.c, server mode: by the IMEI's first two digits."""
    return {"35": "BLACKLISTED", "86": "GREYLISTED"}.get(imei[:2], "WHITELISTED")


@pytest.fixture
def stub() -> Iterator[fdpeer.FdServer]:
    if not fdpeer.available():
        if fdpeer.must_not_skip():
            raise RuntimeError(f"interop tools missing in CI: {fdpeer.unavailable_reason()}")
        pytest.skip(fdpeer.unavailable_reason() or "freeDiameter missing")
    with fdpeer.stub_eir() as srv:
        yield srv


@pytest.mark.interop
def test_freediameters_stub_eir_is_audited_and_its_mismatches_reported(
        stub: fdpeer.FdServer, pop: Population, pop_dir: Path, keys: tuple[Path, Path],
        tmp_path: Path) -> None:
    rc, card = audit(stub.port, pop_dir, keys, tmp_path / "out", "--timeout", "2")
    assert rc == 1 and card["verdict"] == "FAIL"
    assert card["peer"]["product_name"] == "freeDiameter"
    sent = judged_sample(pop)
    differ = Counter(h.category for h in sent
                     if stub_rule(h.imei) != expect.expected(h, pop.start, None, pop.regime))
    assert len(differ) >= 8
    assert mismatches_by_category(card) == dict(differ)
    assert card["enforcement"]["no_answer"] == 0  # it answered everything, wrongly
    # its conformance was judged too: it passes some cases and fails others
    conf = card["conformance"]
    assert 0 < conf["passed"] < conf["total"]
    assert card["list_lag"]["newest_fully_enforced"] is None  # even base entries are wrong
    stats = stub.stop()
    assert stats.answered >= card["enforcement"]["sent"]


# -- unusable input ---------------------------------------------------------------------------


def test_bad_files_keys_and_targets_exit_2_with_one_line(
        pop_dir: Path, keys: tuple[Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("junk\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    good = ["--population", str(pop_dir), "--key", str(keys[0]), "--out", str(tmp_path / "o")]
    port = f"127.0.0.1:{free_port()}"
    cases = {
        "no population": ["--target", port, *good[2:], "--population", str(tmp_path / "none")],
        "not a population": ["--target", port, *good[2:], "--population", str(empty)],
        "not a key": ["--target", port, *good[:2], "--key", str(junk), *good[4:]],
        "public key": ["--target", port, *good[:2], "--key", str(keys[1]), *good[4:]],
        "nothing listening": ["--target", port, *good],
        "bad target": ["--target", "nowhere", *good],
        "no output": ["--target", port, *good[:4]],
        "no such directory": ["--target", port, *good[:4], "--scorecard",
                              str(tmp_path / "a" / "b.json")],
        "bad time": ["--target", port, *good, "--at", "soon"],
    }
    capsys.readouterr()
    for what, argv in cases.items():
        assert main_audit(argv) == 2, what
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("eir-sim audit: "), (what, err)
        assert "Traceback" not in err
    assert not (tmp_path / "o" / "scorecard.json").exists()


def test_an_eir_that_refuses_the_auditor_cannot_be_audited(
        pop: Population, pop_dir: Path, keys: tuple[Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "eir.toml"
    cfg.write_text('[peers]\nallow_hosts = ["mme*"]\n')
    with EirProcess(tmp_path / "eir.db", config=cfg) as eir:
        capsys.readouterr()
        assert main_audit(["--target", f"127.0.0.1:{eir.port}", "--population", str(pop_dir),
                           "--key", str(keys[0]), "--out", str(tmp_path / "o"), *AUDITOR]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused the capabilities exchange" in err and "3010" in err


# -- the sample, lag and latency ------------------------------------------------------------


def test_the_sample_is_stratified_and_reproducible(pop: Population) -> None:
    a = sample(pop, PER_CATEGORY, 7)
    assert [h.index for h in a] == [h.index for h in sample(pop, PER_CATEGORY, 7)]
    assert [h.index for h in a] != [h.index for h in sample(pop, PER_CATEGORY, 8)]
    assert len({h.index for h in a}) == len(a)
    by_cat = Counter(h.category for h in a)
    for c, hs in pop.by_category().items():
        assert by_cat[c] == min(PER_CATEGORY, len(hs))
        # every (list version, role) of the category is represented when N allows it
        strata = {(h.list_version, h.role) for h in hs}
        if len(strata) <= PER_CATEGORY:
            assert {(h.list_version, h.role) for h in a if h.category == c} == strata, c
    assert {h.list_version for h in a} == {None, 1, 2, 3, 4}
    assert len(sample(pop, 1, 7)) == len(pop.by_category())


def check(version: int | None, ok: bool, judged: bool = True) -> Check:
    h = Handset(0, "white", "registered", "35209900176148", "401011234567890", "01", "r",
                list_version=version)
    return Check(h, "WHITELISTED", "registered", judged, "WHITELISTED" if ok else "GREYLISTED")


def test_list_lag_names_the_newest_version_fully_enforced() -> None:
    ok = [check(1, True), check(2, True), check(3, True), check(None, False)]
    assert list_lag(ok, 1, 3)["newest_fully_enforced"] == 3
    lag = list_lag([*ok, check(2, False), check(3, False, judged=False)], 1, 3)
    assert (lag["newest_fully_enforced"], lag["behind"]) == (1, 2)
    assert lag["versions"]["2"] == {"sent": 2, "matched": 1, "mismatched": 1,
                                    "match_rate": 0.5}
    assert lag["versions"]["3"]["sent"] == 1  # the unjudged one is not counted
    none = list_lag([check(1, False), check(2, True)], 1, 2)
    assert (none["newest_fully_enforced"], none["behind"]) == (None, None)
    # a version with nothing sampled does not stop the count, and says so
    gap = list_lag([check(1, True), check(3, True)], 1, 3)
    assert gap["newest_fully_enforced"] == 3 and gap["versions"]["2"]["match_rate"] is None


def test_latency_percentiles_are_nearest_rank() -> None:
    assert latency([]) == {"count": 0, "p50": None, "p99": None, "max": None}
    values = [float(v) for v in range(1, 201)]
    assert latency(values) == {"count": 200, "p50": 100.0, "p99": 198.0, "max": 200.0}
    assert latency([0.1234567]) == {"count": 1, "p50": 0.123, "p99": 0.123, "max": 0.123}
