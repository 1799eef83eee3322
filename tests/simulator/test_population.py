"""The simulator's population: reproducible, realistic, and agreeing with the real EIR.

The strong check: every file the population writes imports into a real
registry (through the ``eir`` command line, in-process and once as a real
process), and then the EIR's own decision for every handset, at several
simulated times, equals what `simulator.expect` says from the handset's
category alone. The two were written apart (the simulator never imports
``eir.policy``), so agreement means both read POLICY.md the same way.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import astuple
from pathlib import Path
from typing import Any

import pytest

from eir.cli import main as eir_main
from eir.config import load as load_config
from eir.policy.model import luhn_check_digit
from eir.policy.observations import SightingCache
from eir.policy.regime import Regime as EirRegime
from eir.policy.regime import status_name
from eir.policy.sqlite import SqliteRegistry
from eir.policy.sqlite_regime import SqliteObservations
from simulator import expect
from simulator import imei as ids
from simulator.expect import Regime
from simulator.population import (
    CATEGORIES,
    DEFAULT_WEIGHTS,
    Handset,
    Options,
    Population,
    generate,
    import_argv,
    iso,
    load,
    main_population,
    make,
)
from testbed.eirproc import run_cli

DAY = 86_400
FILES = ("population.json", "handsets.csv", "registry.csv", "registry-base.csv",
         "registry-delta-2.csv", "registry-delta-3.csv", "registry-delta-4.csv", "tac.csv",
         "observations.csv", "expected.csv")
# Every category well represented in a small population: enough clone
# handsets for two or three clusters, some of each role.
EVEN = {c: 1.0 for c in CATEGORIES} | {"clone": 2.0, "white": 2.0}


def digests(d: Path) -> dict[str, str]:
    return {name: hashlib.sha256((d / name).read_bytes()).hexdigest() for name in FILES}


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def pop_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pop")
    assert main_population(["--size", "400", "--seed", "7", "--out", str(out),
                            "--weights", ",".join(f"{c}={w}" for c, w in EVEN.items())]) == 0
    return out


@pytest.fixture(scope="module")
def pop(pop_dir: Path) -> Population:
    return load(pop_dir)


# -- reproducibility --------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_population(tmp_path: Path) -> None:
    argv = ["--size", "3000", "--start", "2026-02-01T00:00:00Z"]
    for name, seed in (("a", "11"), ("b", "11"), ("c", "12")):
        assert main_population([*argv, "--seed", seed, "--out", str(tmp_path / name)]) == 0
    a, b, c = (digests(tmp_path / n) for n in "abc")
    assert a == b
    assert all(a[f] != c[f] for f in FILES if f != "tac.csv") and a["tac.csv"] != c["tac.csv"]
    meta = json.loads((tmp_path / "a" / "population.json").read_text())
    assert meta["files"] == {f: a[f] for f in FILES if f != "population.json"}
    assert (meta["seed"], meta["size"], meta["start"]) == (
        11, 3000, {"iso": "2026-02-01T00:00:00Z", "epoch": 1769904000})


def test_identical_across_processes_and_hash_seeds(tmp_path: Path) -> None:
    # str hashing is randomised per process: nothing may depend on set or hash order
    argv = ["--size", "2000", "--seed", "4"]
    assert main_population([*argv, "--out", str(tmp_path / "here")]) == 0
    code = ("import sys; from simulator.population import main_population; "
            "sys.exit(main_population(sys.argv[1:]))")
    res = subprocess.run([sys.executable, "-c", code, *argv, "--out", str(tmp_path / "there")],
                         env={**os.environ, "PYTHONHASHSEED": "12345"}, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert digests(tmp_path / "here") == digests(tmp_path / "there")


@pytest.mark.parametrize("size", range(0, 41))
def test_every_size_gets_exactly_its_handsets(size: int) -> None:
    pop = generate(Options(size=size, seed=size)).population
    assert len(pop.handsets) == size == sum(pop.meta["counts"].values())
    assert [h.index for h in pop.handsets] == list(range(size))
    clones = len(pop.category("clone"))
    assert clones == 0 or clones >= pop.regime.clone_threshold + 2


def test_load_round_trips_the_generated_population(tmp_path: Path) -> None:
    made = make(Options(size=500, seed=3, weights=EVEN), tmp_path)
    back = load(tmp_path)
    assert [astuple(h) for h in back.handsets] == [astuple(h) for h in made.handsets]
    assert back.regime == made.regime == Regime()
    assert back.start == made.start and back.seed == 3
    assert {c: len(hs) for c, hs in back.by_category().items()} == back.meta["counts"]
    assert back.category("clone") == back.by_category()["clone"]
    with pytest.raises(KeyError):
        back.category("purple")


# -- realism ----------------------------------------------------------------------------------


def test_imeis_are_valid_and_unique_where_they_should_be(pop: Population, pop_dir: Path) -> None:
    bodies: Counter[str] = Counter()
    for h in pop.handsets:
        if h.category == "malformed":
            continue
        assert len(h.imei) in (14, 15) and h.imei.isdigit(), h
        if len(h.imei) == 15:  # checked with the EIR's own Luhn as an independent oracle
            assert int(h.imei[14]) == luhn_check_digit(h.imei[:14]), h
        bodies[h.imei[:14]] += 1
    shared = {b for b, n in bodies.items() if n > 1}
    assert shared == {h.imei[:14] for h in pop.handsets
                      if h.category == "clone" or (h.category == "exception"
                                                   and h.role == "other")}
    for name in ("registry.csv", "observations.csv"):
        for r in rows(pop_dir / name):
            assert len(r["imei"]) == 15 and int(r["imei"][14]) == luhn_check_digit(r["imei"][:14])
    assert sum(len(h.imei) == 15 for h in pop.handsets) > 0.3 * len(pop.handsets)
    assert sum(len(h.imei) == 14 for h in pop.handsets) > 0.3 * len(pop.handsets)


def test_malformed_imeis_are_not_imeis(pop: Population) -> None:
    bad = pop.category("malformed")
    assert {h.role for h in bad} == {"zeros", "short", "long", "letters", "separators"}
    for h in bad:
        is_imei = len(h.imei) in (14, 15) and h.imei.isdigit() and h.imei[:14] != "0" * 14
        assert not is_imei, h
        assert "," not in h.imei and '"' not in h.imei


def test_tacs_and_imsis(pop: Population, pop_dir: Path) -> None:
    tac = {r["tac"]: r for r in rows(pop_dir / "tac.csv")}
    assert len(tac) == 1000 and all(len(t) == 8 and t.isdigit() for t in tac)
    assert {r["class"] for r in tac.values()} == {"smartphone", "feature_phone", "tablet", "m2m"}
    home_plmns = {"40101", "40102", "40107", "40177"}
    imsis = [h.imsi for h in pop.handsets]
    assert len(set(imsis)) == len(imsis)
    for h in pop.handsets:
        assert len(h.imsi) == 15 and h.imsi.isdigit()
        assert len(h.sv) == 2 and h.sv.isdigit() and h.sv != "99"
        # every MME is a Kazakh operator's, roamers included (they visit one)
        assert h.realm in {f"epc.mnc{p[3:]:0>3}.mcc401.3gppnetwork.org" for p in home_plmns}
        roaming = h.category == "roamer" or (h.category == "stolen" and h.role == "roaming")
        assert (h.imsi[:3] != "401") == roaming, h
        if not roaming:
            assert h.imsi[:5] in home_plmns
        if h.category == "malformed":
            continue
        known = h.imei[:8] in tac
        unknown_tac = h.category == "counterfeit" or (h.category == "roamer"
                                                      and h.role == "unknown_tac")
        assert known != unknown_tac, h
        if known:
            assert (tac[h.imei[:8]]["class"] == "m2m") == (h.category == "m2m"), h
    assert {h.imsi[:3] for h in pop.category("roamer")} >= {"250"}


def test_category_weights_are_respected(tmp_path: Path) -> None:
    gen = generate(Options(size=20_000, seed=5))
    counts = Counter(h.category for h in gen.population.handsets)
    assert set(counts) == set(CATEGORIES)
    total = sum(DEFAULT_WEIGHTS.values())
    for c, w in DEFAULT_WEIGHTS.items():
        assert abs(counts[c] - 20_000 * w / total) <= 2, (c, counts[c])
    assert sum(counts.values()) == 20_000
    # weights named on the command line override the defaults; 0 drops a category
    assert main_population(["--size", "1000", "--seed", "1", "--out", str(tmp_path),
                            "--weights", "white=0,stolen=1,brand_new=1"]) == 0
    meta = json.loads((tmp_path / "population.json").read_text())
    assert "white" not in meta["counts"]
    assert meta["counts"]["stolen"] > meta["counts"]["grey_in_grace"] * 5


def test_clone_clusters_share_one_imei_and_exceed_the_threshold(pop: Population) -> None:
    clusters = pop.clusters()
    assert len(clusters) >= 2
    roles: Counter[str] = Counter()
    for members in clusters.values():
        assert len({h.imei[:14] for h in members}) == 1
        assert len(members) > pop.regime.clone_threshold + 1
        assert members[0].role == "owner" and sum(h.role == "owner" for h in members) == 1
        firsts = sorted(members, key=lambda h: h.first_seen or 0)
        assert firsts[0].role in ("owner", "first")
        for h in members:
            assert h.cluster_seen == members[0].cluster_seen and len(h.cluster_seen) == len(members)
            assert h.first_seen is not None and h.last_seen is not None
            assert h.first_seen <= h.last_seen <= pop.start
            roles[h.role] += 1
    assert roles["member"] > roles["owner"]


def test_grey_deadlines_keep_clear_of_the_start(pop: Population) -> None:
    guard = pop.meta["guard_seconds"]
    g = pop.regime.grace_s
    for h in pop.handsets:
        if h.first_seen is None or h.category in ("grandfathered",) or h.role in ("owner",
                                                                                    "first"):
            continue
        deadline = h.first_seen + g
        assert abs(deadline - pop.start) > guard, h
        if h.category == "grey_near_expiry":
            assert pop.start + guard < deadline <= pop.start + 3 * DAY
        elif h.category == "grey_in_grace":
            assert deadline > pop.start + 7 * DAY
        elif h.category == "grey_expired":
            assert deadline < pop.start and h.first_seen > pop.regime.cutoff_epoch
    for h in pop.category("grandfathered"):
        assert h.first_seen is not None and h.first_seen < pop.regime.cutoff_epoch


def test_expected_csv_states_the_expectation_at_the_start(pop: Population, pop_dir: Path) -> None:
    table = rows(pop_dir / "expected.csv")
    assert len(table) == len(pop.handsets)
    for r, h in zip(table, pop.handsets, strict=True):
        e = expect.expectation(h, pop.start, None, pop.regime)
        assert (int(r["index"]), r["imei"], r["expected"], r["reason"]) == (
            h.index, h.imei, e.outcome, e.reason)
    seen = Counter(r["expected"] for r in table)
    assert set(seen) == {"WHITELISTED", "GREYLISTED", "BLACKLISTED"}


def test_command_line_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "x")
    for bad in (["--weights", "purple=1"], ["--weights", "white=-1"], ["--start", "soon"]):
        with pytest.raises(SystemExit) as exc:
            main_population(["--size", "10", "--seed", "1", "--out", out, *bad])
        assert exc.value.code == 2
    capsys.readouterr()
    # a start too close to the cut-off cannot hold a grey_expired handset
    assert main_population(["--size", "10", "--seed", "1", "--out", out,
                            "--start", "2025-06-10T00:00:00Z"]) == 1
    assert "cut-off" in capsys.readouterr().err
    assert main_population(["--size", "10", "--seed", "1", "--out", out, "--weights",
                            "grey_in_grace=0,grey_near_expiry=0",
                            "--start", "2025-06-10T00:00:00Z"]) == 1
    assert "grey_expired" in capsys.readouterr().err
    assert main_population(["--size", "10", "--seed", "1", "--out", out,
                            "--home-mcc", "40"]) == 1
    assert not (tmp_path / "x" / "handsets.csv").exists()


# -- the cross-check against the real EIR ------------------------------------------------------


def import_into(db: Path, d: Path) -> None:
    for args in (("registry", "import", "--quiet", str(d / "registry.csv")),
                 ("registry", "import-tac", str(d / "tac.csv")),
                 ("registry", "import-observations", str(d / "observations.csv"))):
        assert eir_main([*args, "--db", str(db)]) == 0, args


@pytest.fixture(scope="module")
def seeded_db(pop_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("eir") / "eir.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EIR_ACTOR", "test_population")
        import_into(db, pop_dir)
    return db


class Eir:
    """The real EIR's regime over one registry file, at a chosen time."""

    def __init__(self, db: Path, policy: dict[str, Any]) -> None:
        self.cfg = load_config(None, {"registry": {"db": str(db)}, "policy": policy})
        self.dc = self.cfg.decision_config()
        self.reg = SqliteRegistry(str(db), exception_cap=self.cfg.policy.exception_cap)
        self.obs = SqliteObservations(self.reg)
        self.now = 0

    async def __aenter__(self) -> Eir:
        await self.reg.open()
        snapshot = await self.reg.load_snapshot()
        self.regime = EirRegime(snapshot, self.dc, SightingCache(self.obs, self.dc.is_home),
                                clock=lambda: float(self.now))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.obs.close()
        await self.reg.close()

    def dry_run(self, h: Handset, at: int) -> tuple[str, str]:
        d, _ = self.regime.dry_run(h.imei, h.imsi, h.sv, at=at, operator=h.realm)
        return outcome(d.status), d.reason

    def check(self, h: Handset, at: int) -> tuple[str, str]:
        self.now = at
        d = self.regime.check(h.imei, h.imsi, h.sv, h.realm)
        return outcome(d.status), d.reason


def outcome(status: int | None) -> str:
    return "5422" if status is None else status_name(status)


# start, just after the near-expiry deadlines, mid-way (members of clusters
# still active, some turned black), and past every grace and clone window
OFFSETS = (0, 3 * DAY + 1, 20 * DAY, 31 * DAY)


@pytest.mark.parametrize("strict", [False, True], ids=["greylist", "reject"])
async def test_the_eir_agrees_with_every_expectation(pop: Population, seeded_db: Path,
                                                     strict: bool) -> None:
    regime = Regime(strict=strict)
    policy = {"unknown_equipment": "reject" if strict else "greylist"}
    disagree: list[str] = []
    seen: Counter[tuple[str, str, str]] = Counter()
    async with Eir(seeded_db, policy) as eir:
        for offset in OFFSETS:
            at = pop.start + offset
            for h in pop.handsets:
                e = expect.expectation(h, at, None, regime)
                got = eir.dry_run(h, at)
                seen[(h.category, h.role, e.outcome)] += 1
                if got != (e.outcome, e.reason):
                    disagree.append(f"+{offset / DAY:g}d {h}: EIR {got}, expected "
                                    f"{(e.outcome, e.reason)}")
    assert not disagree, "\n".join(disagree[:20])
    # the check is not vacuous: every category and each of its roles was judged, and
    # the clone members were seen grey, black and (after the lapse) white
    assert {c for c, _, _ in seen} == set(CATEGORIES)
    clone = {o for c, r, o in seen if c == "clone" and r == "member"}
    assert clone == {"GREYLISTED", "BLACKLISTED", "WHITELISTED"}
    if strict:
        assert any(o == "5422" for _, _, o in seen)


async def test_the_eir_agrees_on_both_sides_of_every_change(pop: Population,
                                                           seeded_db: Path) -> None:
    # Each change of outcome the simulator predicts (grace deadlines, clone
    # lapses) is checked one second before it and at it: the exact instants.
    disagree: list[str] = []
    judged: Counter[str] = Counter()
    horizon = pop.start + 60 * DAY
    async with Eir(seeded_db, {}) as eir:
        for h in pop.handsets:
            t = expect.changes_at(h, pop.start)
            while t is not None and t < horizon:
                for at in (t - 1, t):
                    e = expect.expectation(h, at)
                    got = eir.dry_run(h, at)
                    if got != (e.outcome, e.reason):
                        disagree.append(f"{at - pop.start}s {h}: EIR {got}, expected {e}")
                judged[h.category] += 1
                t = expect.changes_at(h, t)
    assert not disagree, "\n".join(disagree[:20])
    assert {"grey_in_grace", "grey_near_expiry", "clone"} <= set(judged)
    assert judged["clone"] > len([h for h in pop.category("clone") if h.role == "member"])


async def test_a_brand_new_device_is_grey_from_its_first_check(pop: Population,
                                                               seeded_db: Path) -> None:
    # The live path (observes): the clock starts at the run's first check.
    fresh = pop.category("brand_new")[:10]
    first = pop.start + 5 * DAY
    async with Eir(seeded_db, {}) as eir:
        for h in fresh:
            for at in (first, first + 29 * DAY, first + 30 * DAY - 1, first + 30 * DAY,
                       first + 45 * DAY):
                assert eir.check(h, at)[0] == expect.expected(h, at, first), (h, at)
            assert expect.changes_at(h, first, first) == first + 30 * DAY
            assert expect.expected(h, first + 30 * DAY, first) == "BLACKLISTED"


def test_eir_decide_command_agrees_for_each_category(
        pop: Population, seeded_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    at = pop.start + 2 * DAY
    for c, hs in pop.by_category().items():
        h = hs[0]
        code = eir_main(["decide", h.imei, "--imsi", h.imsi, "--sv", h.sv, "--db",
                         str(seeded_db), "--at", iso(at)])
        out = capsys.readouterr().out
        assert code == 0
        d = json.loads(out)
        assert (d["status"], d["reason"]) == (
            expect.expected(h, at), expect.expectation(h, at).reason), c


# -- list versions ---------------------------------------------------------------------------


def test_the_registry_is_published_as_a_base_list_and_deltas(pop: Population,
                                                             pop_dir: Path) -> None:
    assert pop.imports == [
        {"file": "tac.csv", "kind": "tac"},
        {"file": "registry-base.csv", "kind": "full", "list_version": 1, "source": "ministry"},
        *({"file": f"registry-delta-{v}.csv", "kind": "delta", "list_version": v,
           "source": "ministry"} for v in (2, 3, 4)),
        {"file": "observations.csv", "kind": "observations"}]
    assert (pop.base_version, pop.newest_version) == (1, 4)
    full = rows(pop_dir / "registry.csv")
    parts = rows(pop_dir / "registry-base.csv")
    for v in (2, 3, 4):
        delta = rows(pop_dir / f"registry-delta-{v}.csv")
        assert delta and {r.pop("op") for r in delta} == {"add"}
        assert pop.meta["lists"]["versions"][str(v)]["rows"] == len(delta)
        parts += delta
    def key(r: dict[str, str]) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(r.items()))
    assert sorted(map(key, parts)) == sorted(map(key, full))  # base + deltas = the full list
    # every handset whose answer rests on a list entry carries its version; recent
    # entries are in later versions
    since = {(r["imei"][:14], r["list"]): r["since"] for r in full}
    last: dict[int, str] = {}
    first: dict[int, str] = {}
    for h in pop.handsets:
        listed = h.category in ("white", "stolen", "exception", "clone") or (
            h.category.startswith("grey_") and h.role == "listed")
        assert (h.list_version is not None) == listed, h
        if h.category in ("clone", "grey_in_grace", "grey_near_expiry", "grey_expired"):
            assert h.list_version in (None, 1), h
        if h.category in ("white", "stolen"):
            assert h.list_version is not None
            s = since[(h.imei[:14], "white" if h.category == "white" else "black")]
            last[h.list_version] = max(last.get(h.list_version, s), s)
            first[h.list_version] = min(first.get(h.list_version, s), s)
    assert sorted(last) == [1, 2, 3, 4]
    for v in (1, 2, 3):
        assert last[v] <= first[v + 1], v


def test_the_imports_recipe_seeds_the_real_eir(pop: Population, pop_dir: Path,
                                               tmp_path: Path) -> None:
    db, whole = tmp_path / "eir.db", tmp_path / "whole.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EIR_ACTOR", "test_population")
        for item in pop.imports:
            assert eir_main(import_argv(item, pop_dir, str(db))) == 0, item
        assert eir_main(["registry", "import", "--quiet", "--db", str(whole),
                         str(pop_dir / "registry.csv")]) == 0
        for d in (db, whole):
            assert eir_main(["registry", "export", "--db", str(d), str(d) + ".csv"]) == 0

    def content(path: str) -> list[tuple[str, ...]]:
        return sorted(tuple(v for k, v in r.items() if k != "since" or v)
                      for r in rows(Path(path)))
    assert content(f"{db}.csv") == content(f"{whole}.csv")

    # the EIR records the version the last delta brought the ministry's list to
    async def versions() -> dict[str, dict[str, Any]]:
        reg = SqliteRegistry(str(db))
        await reg.open()
        try:
            return await reg.list_versions()
        finally:
            await reg.close()
    got = asyncio.run(versions())
    newest = pop.meta["lists"]["newest_version"]
    assert newest > 1
    assert got["ministry"]["version"] == newest and got["ministry"]["kind"] == "delta"
    with pytest.raises(ValueError, match="kind"):
        import_argv({"file": "x.csv", "kind": "zip"}, pop_dir)


async def test_an_eir_without_the_deltas_misses_exactly_the_delta_entries(
        pop: Population, pop_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "base.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EIR_ACTOR", "test_population")
        for item in pop.imports:
            if item["kind"] != "delta":
                argv = import_argv(item, pop_dir, str(db))
                assert await asyncio.to_thread(eir_main, argv) == 0
    wrong = set()
    async with Eir(db, {}) as eir:
        for h in pop.handsets:
            if eir.dry_run(h, pop.start)[0] != expect.expected(h, pop.start):
                wrong.add(h.index)
    lagging = {h.index for h in pop.handsets if (h.list_version or 0) > pop.base_version}
    assert wrong == lagging and len(lagging) > 20


def test_files_import_through_the_real_eir_process(pop_dir: Path, pop: Population,
                                                   tmp_path: Path) -> None:
    db = str(tmp_path / "eir.db")
    for cmd in ("import", "import-tac", "import-observations"):
        name = {"import": "registry.csv", "import-tac": "tac.csv",
                "import-observations": "observations.csv"}[cmd]
        res = run_cli("registry", cmd, *(["--quiet"] if cmd == "import" else []),
                      "--db", db, str(pop_dir / name))
        assert res.returncode == 0, res.stderr
    h = pop.category("exception")[0]
    res = run_cli("decide", h.imei, "--imsi", h.imsi, "--db", db, "--at",
                  pop.meta["start"]["iso"])
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["status"] == expect.expected(h, pop.start)


# -- identities (simulator.imei) --------------------------------------------------------------


def test_check_digits_match_ts_23003_annex_b_examples() -> None:
    # PROTOCOL.md 4 works 26053179311383 -> 7 by hand; the others are script-checked there
    for body, cd in (("26053179311383", 7), ("49015420323751", 8), ("35209900176148", 1),
                     ("00000000000000", 0)):
        assert ids.check_digit(body) == cd
        assert ids.is_valid_imei15(body + str(cd))
        assert not ids.is_valid_imei15(body + str((cd + 1) % 10))
    for bad in ("1234567890123", "3520990017614A", "352099001761481"):
        with pytest.raises(ValueError):
            ids.check_digit(bad)


def test_fast_check_digit_agrees_with_the_plain_one_and_the_eirs() -> None:
    import random
    rng = random.Random(0)
    for _ in range(5000):
        tac, serial = rng.randrange(10**8), rng.randrange(10**6)
        body = f"{tac:08d}{serial:06d}"
        fast = ids.check_digit_fast(ids.tac_part(tac), serial)
        assert fast == ids.check_digit(body) == luhn_check_digit(body), body


def test_imsis_and_realms() -> None:
    assert ids.realm("401", "02") == "epc.mnc002.mcc401.3gppnetwork.org"
    assert ids.realm("310", "260") == "epc.mnc260.mcc310.3gppnetwork.org"
    assert ids.imsi("40177", 42) == "401770000000042"
    assert ids.imsi("310260", 123) == "310260000000123"  # 3-digit MNC: 9-digit MSIN
    with pytest.raises(ValueError):
        ids.imsi("40101", 10**10)
    assert abs(sum(n.share for n in ids.HOME_OPERATORS) - 1) < 1e-9
    assert abs(sum(n.share for n in ids.ROAMING_NETWORKS) - 1) < 1e-9
    assert all(n.mcc != "401" for n in ids.ROAMING_NETWORKS)
