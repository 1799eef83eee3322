"""End-to-end S13 benchmark: a 1,000,000-IMEI registry, the real EIR, a pipelined load.

Usage (from the repository root)::

    .venv/bin/python -m bench.ecr_bench                 # 1M IMEIs, 10 s per server
    .venv/bin/python -m bench.ecr_bench --smoke         # 10k IMEIs, 2 s (CI)

Steps:

1. Build a registry CSV with a realistic mix (88.7% white, 10% grey, 1.27%
   black, exception pairs for a tenth of the black IMEIs), a TAC database
   covering every TAC used (a few percent of them M2M) and the history of a
   few clone-suspected IMEIs, and import them with the real command line
   (``eir registry import``, ``import-tac``, ``import-observations``). The
   database is cached under ``--cache-dir`` keyed by sizes and seed; every
   run serves a fresh copy of it, so the observations one run records never
   change what the next one sees.
2. Start ``eir serve`` on 127.0.0.1 (a free port) and wait for "EIR ready".
3. Build a query list mixing white, grey, black, unknown IMEIs and black
   IMEIs asked with their exception IMSI (optionally inbound roamers and
   clones), each with the answer the configured rule order must give it,
   and drive the EIR with ``bench.loadgen`` for ``--duration`` seconds.
4. Start ``bench.echo_server`` (framing only: the Python ceiling) and drive
   it with the same load generator and settings.
5. Print a table (stderr) and the figures as JSON (stdout). Exit 1 when a
   request was lost, an answer was wrong or unmatched, or the answer mix is
   not the one the query list implies; 2 when a step failed.

Server CPU is read from /proc/PID/stat (utime+stime) over the load
generator's measurement window; the load generator reports its own.
``bench.regime_bench`` reuses these pieces to compare the full regime with
the plain list lookup.
"""

from __future__ import annotations

import argparse
import ast
import csv
import hashlib
import itertools
import json
import math
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from eir.policy.engine import DEFAULT_RULE_ORDER, PLAIN_LIST_ORDER

REPO = Path(__file__).resolve().parent.parent
GENERATOR_VERSION = 2  # bump when the registry or query generation changes

# Registry mix (shares of the registry): black is 127k of 10M scaled, grey 10%,
# white the rest; a tenth of the black IMEIs have an (IMEI, IMSI) exception pair.
BLACK_SHARE = 0.0127
GREY_SHARE = 0.10
EXCEPTION_SHARE_OF_BLACK = 0.10
WHITE_REASONS = (("registered", 90), ("legalised", 5), ("grandfathered", 5))
GREY_REASONS = (("pending_verification", 100),)
BLACK_REASONS = (("stolen", 60), ("lost", 25), ("counterfeit", 10), ("illegal_import", 5))
SOURCES = ("ministry", "operator", "police")
TAC_PREFIXES = ("35", "86", "01", "49", "99")
SERIALS_PER_TAC = 1_000_000

# The regime's defaults (eir/config.py [policy]): home MCC 401, so queries carry
# Kazakh IMSIs (MCC 401, MNC 01); inbound roamers carry a Russian one (MCC 250).
HOME_PLMN = "40101"
ROAMING_PLMN = "25001"
# The TAC database: every TAC the registry uses, a few percent of them M2M
# (exempt by default), the rest handsets; topped up with TACs nobody asks about.
M2M_TAC_SHARE = 0.03
HANDSET_CLASSES = (("smartphone", 85), ("feature_phone", 15))
DEFAULT_TAC_ROWS = 20_000
# Clone-suspected IMEIs: white-listed, with CLONE_IMSIS home IMSIs on record
# (imported history, all within the clone window), more than the default
# threshold of 5; they are asked with any IMSI but the first seen.
CLONE_IMSIS = 7
HISTORY_OPERATOR = "bench-history"
# Grey entries are imported "now" (grace 30 days) and the clone history is
# dated at the build: a cached database older than this is rebuilt.
REGISTRY_MAX_AGE_DAYS = 20.0

DEFAULT_MIX = "white=25,grey=25,black=25,unknown=20,exception=5"
CATEGORIES = ("white", "grey", "black", "unknown", "exception", "roamer", "clone")
SERVER_READY_TIMEOUT = 600.0

# The two rule orders the benchmarks run (eir.policy.engine; [policy] rule_order).
POLICIES: dict[str, tuple[str, ...]] = {"regime": DEFAULT_RULE_ORDER, "plain": PLAIN_LIST_ORDER}


# -- registry and queries ----------------------------------------------------------------


@dataclass
class Registry:
    white: list[str]  # white IMEIs for queries (the clone IMEIs are white too, listed apart)
    grey: list[str]
    black: list[str]
    exceptions: list[tuple[str, str]]  # (imei14, imsi)
    unknown: list[str]  # IMEIs on no list, for queries
    tac_class: dict[str, str]  # device class of every TAC used
    clones: list[tuple[str, list[str]]]  # (white imei14, its home IMSIs, first seen first)

    @property
    def sizes(self) -> dict[str, int]:
        return {"white": len(self.white) + len(self.clones), "grey": len(self.grey),
                "black": len(self.black)}


@dataclass(frozen=True)
class Sizes:
    """How many entries each list of the generated registry has."""

    white: int
    grey: int
    black: int

    @classmethod
    def from_total(cls, n: int) -> Sizes:
        """The shares of the national registry (127k black of 10M, 10% grey) scaled to n."""
        black = max(1, round(n * BLACK_SHARE))
        grey = max(1, round(n * GREY_SHARE))
        return cls(n - black - grey, grey, black)

    @property
    def total(self) -> int:
        return self.white + self.grey + self.black

    def key(self, seed: int) -> str:
        return f"w{self.white}-g{self.grey}-b{self.black}-s{seed}-v{GENERATOR_VERSION}"


def _imsi(rnd: random.Random, plmn: str = HOME_PLMN) -> str:
    return f"{plmn}{rnd.randrange(10**10):010d}"


def generate_registry(sizes: Sizes, seed: int, n_unknown: int) -> Registry:
    """Distinct IMEIs spread over a few hundred TACs; deterministic for (sizes, seed)."""
    n = sizes.total
    rnd = random.Random(f"eir-bench-{seed}-{sizes.white}-{sizes.grey}-{sizes.black}")
    n_tacs = max(20, min(500, n // 2000))
    tacs: set[str] = set()
    while len(tacs) < n_tacs:
        tacs.add(rnd.choice(TAC_PREFIXES) + f"{rnd.randrange(10**6):06d}")
    tac_list = sorted(tacs)
    m2m = set(rnd.sample(tac_list, max(1, round(n_tacs * M2M_TAC_SHARE))))
    tac_class = {t: "m2m" if t in m2m else _weighted(rnd, HANDSET_CLASSES) for t in tac_list}
    space = n_tacs * SERIALS_PER_TAC
    picks = rnd.sample(range(space), n + n_unknown)
    imeis = [f"{tac_list[i // SERIALS_PER_TAC]}{i % SERIALS_PER_TAC:06d}" for i in picks]
    del picks
    n_black, n_grey = sizes.black, sizes.grey
    black = imeis[:n_black]
    grey = imeis[n_black:n_black + n_grey]
    unknown = imeis[n:]
    # clone IMEIs: white, in handset TACs (an M2M class would exempt them first)
    white_all = imeis[n_black + n_grey:n]
    del imeis
    n_clones = min(max(10, n // 5000), sizes.white // 2)
    clone_imeis: list[str] = []
    for imei in reversed(white_all):
        if len(clone_imeis) >= n_clones:
            break
        if imei[:8] not in m2m:
            clone_imeis.append(imei)
    taken = set(clone_imeis)
    white = [i for i in white_all if i not in taken]
    del white_all
    clones = [(imei, [_imsi(rnd) for _ in range(CLONE_IMSIS)]) for imei in clone_imeis]
    n_exc = max(1, round(n_black * EXCEPTION_SHARE_OF_BLACK))
    exceptions = [(imei, _imsi(rnd)) for imei in black[:n_exc]]
    return Registry(white, grey, black, exceptions, unknown, tac_class, clones)


def _weighted(rnd: random.Random, table: tuple[tuple[str, int], ...]) -> str:
    return rnd.choices([r for r, _ in table], [w for _, w in table])[0]


def write_registry_csv(reg: Registry, path: Path, seed: int) -> None:
    rnd = random.Random(seed + 1)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        fh.write("imei,list,reason,imsi,source,note\n")
        rows = ([(i, "white", WHITE_REASONS) for i in reg.white] +
                [(i, "white", WHITE_REASONS[:1]) for i, _ in reg.clones] +
                [(i, "grey", GREY_REASONS) for i in reg.grey] +
                [(i, "black", BLACK_REASONS) for i in reg.black])
        rnd.shuffle(rows)
        for imei, lst, reasons in rows:
            fh.write(f"{imei},{lst},{_weighted(rnd, reasons)},,{rnd.choice(SOURCES)},\n")
        for imei, imsi in reg.exceptions:
            fh.write(f"{imei},exception,owner_recovered,{imsi},police,bench pair\n")
    tmp.replace(path)


def write_tac_csv(reg: Registry, path: Path, rows: int, seed: int) -> dict[str, int]:
    """The TAC database (tac,brand,model,class): the TACs used and filler up to ``rows``."""
    rnd = random.Random(seed + 3)
    table = dict(reg.tac_class)
    while len(table) < rows:
        tac = f"{rnd.randrange(10**8):08d}"
        if tac not in table:
            table[tac] = "m2m" if rnd.random() < M2M_TAC_SHARE else \
                _weighted(rnd, HANDSET_CLASSES)
    with open(path, "w", newline="") as fh:
        fh.write("tac,brand,model,class\n")
        for tac in sorted(table):
            fh.write(f"{tac},Brand{int(tac) % 97},Model {tac[-4:]},{table[tac]}\n")
    return {"rows": len(table), "used": len(reg.tac_class),
            "used_m2m": sum(1 for c in reg.tac_class.values() if c == "m2m")}


def write_history_csv(reg: Registry, path: Path, built_at: int) -> int:
    """The clone IMEIs' sightings: CLONE_IMSIS home IMSIs each, an hour apart, before the build."""
    n = 0
    with open(path, "w", newline="") as fh:
        fh.write("imei,imsi,operator,first_seen,last_seen\n")
        for imei, imsis in reg.clones:
            for k, imsi in enumerate(imsis):
                first = _iso(built_at - (CLONE_IMSIS + 1 - k) * 3600)
                fh.write(f"{imei},{imsi},{HISTORY_OPERATOR},{first},{_iso(built_at)}\n")
                n += 1
    return n


def _iso(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_mix(text: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in CATEGORIES or not value.strip():
            raise SystemExit(f"ecr_bench: --mix: expected {'/'.join(CATEGORIES)}=N, got {part!r}")
        mix[name] = float(value)
    total = sum(mix.values())
    if total <= 0:
        raise SystemExit("ecr_bench: --mix: all weights are zero")
    return {k: v / total for k, v in mix.items() if v > 0}


@dataclass(frozen=True)
class Query:
    """One query and the facts that decide its answer."""

    imei: str  # 15 digits, as sent
    imsi: str
    category: str
    listed: str  # white, grey, black, or "" (on no list)
    pair: bool  # (IMEI, IMSI) is a registered exception pair
    roamer: bool  # the IMSI is not from a home MCC
    tac_class: str  # device class in the TAC database ("" = TAC not in it)
    clone: bool  # more home IMSIs on record than the clone threshold, this one not the first

    FIELDS: ClassVar[tuple[str, ...]] = ("imei", "imsi", "category", "list", "pair", "roamer",
                                         "tac_class", "clone")

    def row(self) -> list[str]:
        return [self.imei, self.imsi, self.category, self.listed, str(int(self.pair)),
                str(int(self.roamer)), self.tac_class, str(int(self.clone))]

    @classmethod
    def from_row(cls, r: list[str]) -> Query:
        return cls(r[0], r[1], r[2], r[3], r[4] == "1", r[5] == "1", r[6], r[7] == "1")


def make_queries(reg: Registry, mix: dict[str, float], n: int,
                 seed: int) -> tuple[list[Query], dict[str, int]]:
    """A shuffled query list with exactly round(n * share) items per category.

    Every IMEI is asked with one IMSI of its own throughout (a home IMSI; a
    foreign one for roamers), so no IMEI turns clone-suspected by accident.
    """
    rnd = random.Random(seed + 2)
    pools: dict[str, list[Any]] = {"white": reg.white, "grey": reg.grey, "black": reg.black,
                                   "unknown": reg.unknown, "exception": reg.exceptions,
                                   "roamer": reg.unknown, "clone": reg.clones}
    pairs = set(reg.exceptions)
    own: dict[tuple[str, bool], str] = {}

    def imsi_of(imei: str, roamer: bool) -> str:
        imsi = own.get((imei, roamer))
        while imsi is None or (imei, imsi) in pairs:
            imsi = own[(imei, roamer)] = _imsi(rnd, ROAMING_PLMN if roamer else HOME_PLMN)
        return imsi

    items: list[Query] = []
    per_category: dict[str, int] = {}
    for cat, share in mix.items():
        k = round(n * share)
        pool = pools[cat]
        if not pool:
            raise SystemExit(f"ecr_bench: no {cat} IMEIs to query")
        per_category[cat] = k
        for j in range(k):
            pick = pool[j % len(pool)] if k > len(pool) else pool[rnd.randrange(len(pool))]
            lst, pair, roamer, clone = cat, False, False, False
            if cat == "exception":
                imei, imsi = pick
                lst, pair = "black", True
            elif cat == "clone":
                imei, imsis = pick
                imsi = imsis[1 + rnd.randrange(len(imsis) - 1)]  # never the first seen
                lst, clone = "white", True
            else:
                imei = pick
                roamer = cat == "roamer"
                imsi = imsi_of(imei, roamer)
                if cat in ("unknown", "roamer"):
                    lst = ""
            items.append(Query(imei + "0", imsi, cat, lst, pair, roamer,
                               reg.tac_class.get(imei[:8], ""), clone))
    rnd.shuffle(items)
    return items, per_category


def expected_answer(q: Query, order: tuple[str, ...], unknown_policy: str) -> str:
    """The answer POLICY.md's rules, walked in ``order``, give a query (an independent model
    of eir.policy.engine for the facts the benchmark generates)."""
    for rule in order:
        if rule == "paired_exception" and q.pair and q.listed == "black":
            return "WHITELISTED"
        if rule == "black" and q.listed == "black":
            return "BLACKLISTED"
        if rule == "roaming" and q.roamer:
            return "WHITELISTED"
        if rule == "unknown_tac" and not q.tac_class:
            return "BLACKLISTED"
        if rule == "exempt_class" and q.tac_class == "m2m":
            return "WHITELISTED"
        if rule == "clone" and q.clone:
            return "GREYLISTED"  # the grace of the pair's first sighting is running
        if rule == "white" and q.listed == "white":
            return "WHITELISTED"
        if rule == "grey" and q.listed == "grey":
            return "GREYLISTED"  # imported at the build, less than 30 days ago
        if rule == "unknown":
            return "5422" if unknown_policy == "reject" else "GREYLISTED"
        if rule not in ("malformed", "paired_exception", "black", "roaming", "unknown_tac",
                        "exempt_class", "clone", "white", "grey", "grandfathered"):
            # malformed: no query is; grandfathered: no first sighting predates the cut-off
            raise SystemExit(f"ecr_bench: the benchmark does not model rule {rule!r}")
    raise SystemExit(f"ecr_bench: rule order {order} has no terminal rule")


def write_query_facts(queries: list[Query], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(Query.FIELDS)
        w.writerows(q.row() for q in queries)
    tmp.replace(path)


def read_query_facts(path: Path) -> list[Query]:
    with open(path, newline="") as fh:
        rows = csv.reader(fh)
        if next(rows, None) != list(Query.FIELDS):
            raise ValueError(f"{path}: not a query facts file")
        return [Query.from_row(r) for r in rows]


def write_queries(queries: list[Query], order: tuple[str, ...], unknown_policy: str,
                  path: Path) -> dict[str, float]:
    """The load generator's query file (imei,imsi,expect) for one rule order; returns the
    expected share of each answer."""
    counts: dict[str, int] = {}
    with open(path, "w", newline="") as fh:
        fh.write("imei,imsi,expect\n")
        for q in queries:
            want = expected_answer(q, order, unknown_policy)
            counts[want] = counts.get(want, 0) + 1
            fh.write(f"{q.imei},{q.imsi},{want}\n")
    total = max(sum(counts.values()), 1)
    return {k: v / total for k, v in sorted(counts.items())}


def policy_toml(order: tuple[str, ...], unknown_policy: str) -> str:
    """The [policy] table of one run: the rule order and the unknown-equipment answer."""
    names = ", ".join(f'"{r}"' for r in order)
    return f'[policy]\nunknown_equipment = "{unknown_policy}"\nrule_order = [{names}]\n'


# -- the registry database --------------------------------------------------------------------


def eir_command() -> list[str]:
    """The ``eir`` command: $EIR_BENCH_EIR (split on spaces), else the venv's script."""
    override = os.environ.get("EIR_BENCH_EIR")
    if override:
        return override.split()
    exe = Path(sys.executable).parent / "eir"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "eir.cli"]


def run_eir_cli(cli_args: list[str], what: str) -> float:
    """Run one ``eir`` command (an import); its duration, or SystemExit naming the failure."""
    cmd = [*eir_command(), *cli_args]
    log(f"{what}: {' '.join(cmd)}")
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=7200, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"ecr_bench: {what} failed (exit {proc.returncode}):\n"
                         f"{proc.stderr.strip()[-2000:]}")
    return time.monotonic() - t0


def build_db(get_registry: Callable[[], Registry], seed: int, tac_rows: int,
             cache: Path) -> tuple[Path, dict[str, Any]]:
    """The registry database for (sizes, seed), built with the real CLI once and cached.

    Lists with ``eir registry import``, the TAC database with ``import-tac``, the clone
    IMEIs' history with ``import-observations``. A cached database older than
    REGISTRY_MAX_AGE_DAYS is rebuilt: its grey entries and clone history are dated.
    """
    db = cache / "registry.db"
    meta_path = cache / "registry.json"
    if db.exists() and meta_path.exists():
        meta: dict[str, Any] = json.loads(meta_path.read_text())
        age_days = (time.time() - meta.get("built_at", 0)) / 86400
        if 0 <= age_days < REGISTRY_MAX_AGE_DAYS:
            meta["cached"] = True
            meta["age_days"] = round(age_days, 2)
            return db, meta
        log(f"the cached registry is {age_days:.0f} days old: its grey entries and clone "
            "history are dated, so it is rebuilt")
    meta_path.unlink(missing_ok=True)
    for stale in cache.glob("registry.db*"):
        stale.unlink()
    reg = get_registry()
    built_at = int(time.time())
    csv_path, tac_path, hist_path = (cache / "registry.csv", cache / "tac.csv",
                                     cache / "history.csv")
    try:
        t0 = time.monotonic()
        write_registry_csv(reg, csv_path, seed)
        tac = write_tac_csv(reg, tac_path, tac_rows, seed)
        n_hist = write_history_csv(reg, hist_path, built_at)
        t_csv = time.monotonic() - t0
        log(f"importing {csv_path.stat().st_size / 1e6:.0f} MB of lists")
        t_import = run_eir_cli(["registry", "import", "--db", str(db), "--quiet",
                                str(csv_path)], "list import")
        t_tac = run_eir_cli(["registry", "import-tac", "--db", str(db), str(tac_path)],
                            "TAC import")
        t_hist = run_eir_cli(["registry", "import-observations", "--db", str(db),
                              str(hist_path)], "history import")
    except BaseException:
        for stale in cache.glob("registry.db*"):
            stale.unlink()
        raise
    finally:
        for path in (csv_path, tac_path, hist_path):  # the database is what is cached
            path.unlink(missing_ok=True)
    meta = {**reg.sizes, "imeis": sum(reg.sizes.values()),
            "exception_pairs": len(reg.exceptions), "clone_imeis": len(reg.clones),
            "tac": tac, "history_rows": n_hist, "built_at": built_at,
            "csv_s": round(t_csv, 2), "import_s": round(t_import, 2),
            "import_tac_s": round(t_tac, 2), "import_history_s": round(t_hist, 2),
            "db_mb": round(db.stat().st_size / 1e6, 1)}
    meta_path.write_text(json.dumps(meta))
    meta["cached"] = False
    meta["age_days"] = 0.0
    return db, meta


@dataclass
class Prepared:
    """A registry database and a query list over it."""

    db: Path
    meta: dict[str, Any]
    queries: list[Query]
    per_category: dict[str, int]
    cache: Path


def prepare(sizes: Sizes, seed: int, n_queries: int, mix: dict[str, float], tac_rows: int,
            cache_dir: Path) -> Prepared:
    """The cached database and query facts for these settings, built when missing."""
    cache = cache_dir / f"{sizes.key(seed)}-t{tac_rows}"
    cache.mkdir(parents=True, exist_ok=True)
    n_unknown = max(1000, min(n_queries, 200_000))
    reg: list[Registry] = []

    def registry() -> Registry:
        if not reg:
            t0 = time.monotonic()
            reg.append(generate_registry(sizes, seed, n_unknown))
            log(f"registry of {sizes.total:,} IMEIs generated in {time.monotonic() - t0:.1f} s")
        return reg[0]

    db, meta = build_db(registry, seed, tac_rows, cache)
    if not db.with_name(db.name + ".snapshot").exists():
        # the EIR's snapshot file (`eir registry snapshot`): served copies start from it
        took = run_eir_cli(["registry", "snapshot", "--db", str(db)], "snapshot file")
        log(f"snapshot file written in {took:.1f} s")
    log(f"registry database {db} ({'cached' if meta['cached'] else 'built'}: "
        f"{ {k: v for k, v in meta.items() if k != 'tac'} })")
    qhash = hashlib.sha256(f"{n_queries}|{sorted(mix.items())}".encode()).hexdigest()[:12]
    facts = cache / f"queries-{qhash}.csv"
    if facts.exists():
        queries = read_query_facts(facts)
        per_cat = {c: sum(1 for q in queries if q.category == c) for c in mix}
    else:
        queries, per_cat = make_queries(registry(), mix, n_queries, seed)
        write_query_facts(queries, facts)
    return Prepared(db, meta, queries, per_cat, cache)


def fresh_copy(db: Path, dest: Path) -> Path:
    """A copy of the cached database for one server run (it records observations)."""
    shutil.copyfile(db, dest)
    for suffix in ("-wal", ".snapshot"):  # the snapshot file: the EIR's fast start
        side = db.with_name(db.name + suffix)
        if side.exists():
            shutil.copyfile(side, dest.with_name(dest.name + suffix))
    return dest


def remove_db(db: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal", ".snapshot"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)


def db_counts(db: Path) -> dict[str, int]:
    """Rows the regime writes, counted in a served copy after its server stopped."""
    conn = sqlite3.connect(db)
    try:
        def one(sql: str) -> int:
            row = conn.execute(sql).fetchone()
            return int(row[0] or 0) if row else 0

        return {"observations": one("SELECT COUNT(*) FROM observation"),
                "grace_clocks": one("SELECT COUNT(*) FROM grace_clock"),
                "decisions_counted": one("SELECT SUM(count) FROM decision_count")}
    except sqlite3.Error:
        return {}
    finally:
        conn.close()


def greylisted_pairs(queries: list[Query], order: tuple[str, ...],
                     unknown_policy: str) -> set[tuple[int, str]]:
    """(IMEI as int, IMSI) of the queries answered GREYLISTED: each starts a grace clock."""
    return {(int(q.imei[:14]), q.imsi) for q in queries
            if expected_answer(q, order, unknown_policy) == "GREYLISTED"}


def clock_gaps(db: Path, greylisted: set[tuple[int, str]], since: int) -> dict[str, int]:
    """Pairs first seen by this run (first_seen >= since) and answered GREYLISTED, and how
    many of them have no grace clock: each must have one once the server has stopped, or
    its owner never gets the warnings."""
    conn = sqlite3.connect(db)
    try:
        seen = {(int(i), str(s)) for i, s in conn.execute(
            "SELECT imei, imsi FROM observation WHERE first_seen >= ?", (since,))}
        clocks = {(int(i), str(s)) for i, s in conn.execute("SELECT imei, imsi FROM grace_clock")}
    except sqlite3.Error:
        return {}
    finally:
        conn.close()
    grey = seen & greylisted
    return {"greylisted_pairs_first_seen": len(grey), "without_clock": len(grey - clocks)}


# -- processes ----------------------------------------------------------------------------------


class Server:
    """A server subprocess whose stderr is read by a thread until a ready line."""

    def __init__(self, name: str, cmd: list[str], ready: re.Pattern[str]) -> None:
        self.name = name
        self.cmd = cmd
        self.lines: deque[str] = deque(maxlen=5000)
        self.ready_re = ready
        self.ready = threading.Event()
        self.port = 0
        self.t_start = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True, cwd=REPO)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.startup_s = 0.0
        self.crashed_at: float | None = None
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if "Traceback" in line and self.crashed_at is None:
                self.crashed_at = time.monotonic()
            if not self.ready.is_set():
                match = self.ready_re.search(line)
                if match:
                    self.port = int(match.group(1))
                    self.startup_s = time.monotonic() - self.t_start
                    self.ready.set()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.2):
            # a start-up traceback may leave the process alive (a non-daemon thread)
            crashed = self.crashed_at is not None and time.monotonic() - self.crashed_at > 2
            if self.proc.poll() is not None or crashed or time.monotonic() > deadline:
                self.stop()
                tail = "\n".join(list(self.lines)[-30:])
                raise SystemExit(f"ecr_bench: {self.name} did not start "
                                 f"(exit {self.proc.returncode}):\n{tail}")

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(5)
        return self.proc.returncode

    def rss_mb(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
        except OSError:
            pass
        return None


class CpuSampler:
    """utime+stime of a process every ``interval`` s, on the monotonic clock."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[int, float]] = []  # (monotonic µs, cpu seconds)
        self.tick = os.sysconf("SC_CLK_TCK")
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def read(self) -> float | None:
        try:
            raw = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return None
        fields = raw[raw.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / self.tick  # utime, stime

    def _run(self) -> None:
        deadline = time.monotonic() + 7200
        while not self._stop.is_set() and time.monotonic() < deadline:
            cpu = self.read()
            if cpu is None:
                return
            self.samples.append((time.monotonic_ns() // 1000, cpu))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(2)

    def percent(self, start_us: int, end_us: int) -> float | None:
        """Average CPU over [start, end] as % of one core, interpolating between samples."""
        s = self.samples
        if len(s) < 2 or end_us <= start_us:
            return None

        def at(t: int) -> float:
            if t <= s[0][0]:
                return s[0][1]
            for (t0, c0), (t1, c1) in itertools.pairwise(s):
                if t0 <= t <= t1:
                    return c0 + (c1 - c0) * (t - t0) / max(t1 - t0, 1)
            return s[-1][1]

        return round(100 * (at(end_us) - at(start_us)) / ((end_us - start_us) / 1e6), 1)


def run_loadgen(args: argparse.Namespace, port: int, queries: Path,
                check: bool) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.loadgen", "--target", f"127.0.0.1:{port}",
           "--imeis", str(queries), "--connections", str(args.connections),
           "--in-flight", str(args.in_flight), "--duration", str(args.duration),
           "--warmup", str(args.warmup), "--drain", str(args.drain),
           "--procs", str(args.procs), "--quiet"]
    if not check:
        cmd.append("--ignore-expect")
    timeout = args.duration + args.drain + 180
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    try:
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        result = {"error": f"loadgen exit {proc.returncode}: {proc.stderr.strip()[-2000:]}"}
    return result


def log(msg: str) -> None:
    print(f"ecr_bench: {msg}", file=sys.stderr, flush=True)


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    figures: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def server_cpu(result: dict[str, Any], sampler: CpuSampler) -> None:
    """Server CPU over the measured window, and per answer: the figure that noise on a
    shared machine disturbs least (a server that gets half a core is slower, not costlier)."""
    pct = sampler.percent(result["measure_start_us"], result["measure_end_us"])
    result["server_cpu_percent"] = pct
    if pct and result.get("rate"):
        result["server_cpu_us_per_answer"] = round(pct / 100 / result["rate"] * 1e6, 2)


SNAPSHOT_RE = re.compile(r"registry \S+ loaded: version \d+, (\d+) entries, (\d+) exception "
                         r"pairs, (\d+) ranges, (\d+) TACs in ([\d.]+) s")
STOPPED_RE = re.compile(r"stopped: (\d+) ECR answered \((\d+) fast path\)"
                        r"(?:, (\d+) refused \(overload\))?(?:, decisions (\{.*\}))?")


def parse_server_log(lines: list[str], result: dict[str, Any]) -> None:
    """Snapshot size and load time, answers, fast path and decisions from the EIR's log."""
    text = "\n".join(lines)
    loaded = SNAPSHOT_RE.search(text)
    if loaded:
        result["snapshot"] = {"entries": int(loaded.group(1)),
                              "exception_pairs": int(loaded.group(2)),
                              "ranges": int(loaded.group(3)), "tacs": int(loaded.group(4)),
                              "load_s": float(loaded.group(5))}
    stopped = STOPPED_RE.search(text)
    if stopped:
        result["server_answered"] = int(stopped.group(1))
        result["server_fast_path"] = int(stopped.group(2))
        result["server_refused"] = int(stopped.group(3) or 0)
        if stopped.group(4):
            try:
                decisions = ast.literal_eval(stopped.group(4))
            except (ValueError, SyntaxError):
                decisions = None
            if isinstance(decisions, dict):
                result["decisions"] = decisions
    problems = [ln for ln in lines if " ERROR " in ln or " WARNING " in ln or "Traceback" in ln]
    if problems:
        result["server_log_problems"] = problems[:10]


def bench_eir(args: argparse.Namespace, db: Path, queries: Path, work: Path, out: Outcome, *,
              policy: str, label: str = "EIR", profile: Path | None = None,
              greylisted: set[tuple[int, str]] | None = None) -> dict[str, Any]:
    """One run of ``eir serve`` on a fresh copy of ``db`` with the [policy] table given.

    With ``greylisted`` (the pairs the queries must get GREYLISTED), also counts the
    pairs first seen in the run that have no grace clock afterwards (``clock_gaps``).
    """
    served = fresh_copy(db, work / f"{label}.db")
    started = int(time.time()) - 1
    cfg = work / f"{label}.toml"
    cfg.write_text(policy)
    serve = ["serve", "--config", str(cfg), "--db", str(served), "--listen", "127.0.0.1:0",
             "--origin-host", "eir.bench", "--origin-realm", "bench", "--log-level", "info"]
    if profile:
        cmd = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "eir.cli", *serve]
    else:
        cmd = [*eir_command(), *serve]
    log(f"starting the EIR ({label}): {' '.join(cmd)}")
    eir = Server(f"the EIR ({label})", cmd, re.compile(r"EIR ready: S13 on \S+:(\d+)"))
    try:
        eir.wait_ready(SERVER_READY_TIMEOUT)
        rss = eir.rss_mb()
        log(f"EIR ({label}) ready on port {eir.port} after {eir.startup_s:.1f} s "
            f"(RSS {rss} MB); loading it for {args.duration} s")
        sampler = CpuSampler(eir.proc.pid)
        result = run_loadgen(args, eir.port, queries, check=True)
        sampler.stop()
    finally:
        code = eir.stop()
    if "error" not in result:
        server_cpu(result, sampler)
    result["server_rss_mb"] = rss
    result["server_startup_s"] = round(eir.startup_s, 2)
    result["server_exit"] = code
    parse_server_log(list(eir.lines), result)
    result["db_after"] = db_counts(served)
    if greylisted is not None:
        result["clock_gaps"] = clock_gaps(served, greylisted, started)
        missing = result["clock_gaps"].get("without_clock")
        if missing:
            out.failures.append(
                f"{label}: {missing:,} of "
                f"{result['clock_gaps']['greylisted_pairs_first_seen']:,} pairs answered "
                "GREYLISTED for the first time have no grace clock after the server stopped")
    remove_db(served)
    if "snapshot" not in result:
        out.failures.append(f"{label}: no 'registry ... loaded' line in the EIR's log "
                            "(has its format changed?)")
    if code not in (0, None):
        out.failures.append(f"{label}: the EIR exited with {code}")
    return result


def bench_echo(args: argparse.Namespace, queries: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.echo_server", "--listen", "127.0.0.1:0",
           "--max-seconds", str(args.duration + args.drain + 300)]
    echo = Server("the echo server", cmd, re.compile(r"ECHO ready on \S+:(\d+)"))
    try:
        echo.wait_ready(60)
        log(f"echo server ready on port {echo.port}; loading it for {args.duration} s")
        sampler = CpuSampler(echo.proc.pid)
        result = run_loadgen(args, echo.port, queries, check=False)
        sampler.stop()
    finally:
        echo.stop()
    if "error" not in result:
        server_cpu(result, sampler)
    return result


def check_eir(r: dict[str, Any], expected: dict[str, float], tolerance: float,
              out: Outcome, label: str = "EIR") -> dict[str, dict[str, float]]:
    """Failures for lost, wrong or unmatched answers and a mix unlike the query list's."""
    if "error" in r:
        out.failures.append(f"{label} run: {r['error']}")
        return {}
    if r["lost"]:
        out.failures.append(f"{label}: {r['lost']} request(s) lost (unanswered after the drain)")
    if not r.get("expectations_checked"):
        out.failures.append(f"{label}: answers were not checked against the expected ones")
    if r["mismatches"]:
        out.failures.append(f"{label}: {r['mismatches']} answer(s) not the expected one: "
                            f"{r['mismatch_detail']}")
    if r["unmatched_answers"]:
        out.failures.append(f"{label}: {r['unmatched_answers']} answer(s) with an unknown "
                            "Hop-by-Hop id")
    if r.get("errors"):
        out.failures.append(f"{label}: load generator errors: {r['errors'][:3]}")
    answered = max(r["answered"], 1)
    mix: dict[str, dict[str, float]] = {}
    for name in sorted(set(expected) | set(r["status"])):
        want = 100 * expected.get(name, 0.0)
        got = 100 * r["status"].get(name, 0) / answered
        mix[name] = {"expected_pct": round(want, 2), "got_pct": round(got, 2)}
        # a short run sends a sample of the shuffled list: allow 5 sigma of sampling too
        p_want = want / 100
        allowed = 100 * max(tolerance, 5 * math.sqrt(p_want * (1 - p_want) / answered))
        if abs(got - want) > allowed:
            out.failures.append(f"{label}: answer mix: {name} {got:.2f}% of answers, "
                                f"{want:.2f}% expected")
    if "server_answered" in r and r["server_answered"] != r["answered"]:
        out.failures.append(f"{label}: the EIR counted {r['server_answered']} answers, "
                            f"the load generator {r['answered']}")
    return mix


def figure_rows(runs: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """The table rows every benchmark prints, one value per run."""

    def lat(r: dict[str, Any], k: str) -> str:
        v = r.get("latency_us", {}).get(k)
        return "-" if v is None else f"{v / 1000:.2f}"

    def num(r: dict[str, Any], k: str, fmt: str = "{:,.0f}") -> str:
        v = r.get(k)
        return "-" if v is None else fmt.format(v)

    def cpu(r: dict[str, Any]) -> str:
        v = r.get("cpu", {}).get("percent_of_core")
        per = r.get("cpu", {}).get("per_process")
        if v is None:
            return "-"
        return f"{v:.0f}%" + (f" ({'/'.join(f'{p:.0f}' for p in per)})" if per else "")

    rows = [("answers/s", [num(r, "rate") for r in runs])]
    rows += [(f"latency {k} (ms)", [lat(r, k) for r in runs])
             for k in ("p50", "p90", "p99", "p99.9", "max")]
    rows += [(name, [num(r, key) for r in runs])
             for name, key in (("sent", "sent"), ("answered", "answered"), ("lost", "lost"))]
    rows += [("server CPU (% of a core)", [num(r, "server_cpu_percent", "{:.0f}%")
                                           for r in runs]),
             ("server CPU per answer (us)", [num(r, "server_cpu_us_per_answer", "{:.2f}")
                                             for r in runs]),
             ("loadgen CPU (% of a core)", [cpu(r) for r in runs])]
    return rows


def render(header: list[str], rows: list[tuple[str, list[str]]]) -> list[str]:
    w = max(len(r[0]) for r in rows)
    lines = [f"{'':{w}}" + "".join(f"  {h:>14}" for h in header)]
    lines += [f"{a:{w}}" + "".join(f"  {v:>14}" for v in vals) for a, vals in rows]
    return lines


def table(f: dict[str, Any]) -> str:
    e, c = f.get("eir", {}), f.get("echo", {})
    rows = figure_rows([e, c])
    db = e.get("db_after", {})
    rows.append(("observations after the run",
                 [f"{db['observations']:,}" if "observations" in db else "-", "-"]))
    gaps = e.get("clock_gaps", {})
    rows.append(("new grey pairs without a clock",
                 [f"{gaps['without_clock']:,}" if "without_clock" in gaps else "-", "-"]))
    lines = render(["EIR", "echo"], rows)
    if f.get("ratio_eir_echo") is not None:
        lines.append(f"EIR/echo: {f['ratio_eir_echo']:.2f}  "
                     f"(target {f['target_rate']:,} ECR/s: "
                     f"{'met' if f['target_met'] else 'NOT met'})")
    else:
        lines.append(f"target {f['target_rate']:,} ECR/s: "
                     f"{'met' if f['target_met'] else 'NOT met'}")
    if f.get("mix"):
        lines.append("answer mix (EIR)   expected      got")
        lines += [f"  {k:16} {v['expected_pct']:7.2f}% {v['got_pct']:7.2f}%"
                  for k, v in f["mix"].items()]
    for name, r in (("EIR", e), ("echo", c)):
        if r.get("verdict"):
            lines.append(f"{name}: {r['verdict']}")
    return "\n".join(lines)


def add_common_args(p: argparse.ArgumentParser) -> None:
    """Flags both benchmarks share: load shape, checks, cache, outputs."""
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--queries", type=int, default=200_000, help="distinct queries (200,000)")
    p.add_argument("--tac-rows", type=int, default=DEFAULT_TAC_ROWS,
                   help=f"rows of the TAC database ({DEFAULT_TAC_ROWS:,}; at least the TACs "
                        "used)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load per server")
    p.add_argument("--warmup", type=float, default=1.0,
                   help="first seconds of each run left out of rate and latency")
    p.add_argument("--drain", type=float, default=5.0, help="seconds to wait for late answers")
    p.add_argument("--connections", type=int, default=4, help="connections (4)")
    p.add_argument("--in-flight", type=int, default=64, help="requests in flight per connection")
    p.add_argument("--procs", type=int, default=1, help="load generator processes (1)")
    p.add_argument("--tolerance", type=float, default=0.02,
                   help="allowed difference of each answer share from the expected (0.02)")
    p.add_argument("--cache-dir", type=Path,
                   default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                   / "eir-bench")
    p.add_argument("--json-out", type=Path, help="also write the JSON figures here")


def smoke_settings(args: argparse.Namespace) -> None:
    """The CI sizes: 5k queries, 2 s of load on 2 connections x 16 in flight."""
    args.queries, args.duration, args.warmup = 5_000, 2.0, 0.5
    args.connections, args.in_flight, args.drain = 2, 16, 5.0
    args.tac_rows = min(args.tac_rows, 2_000)


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ecr_bench",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--imeis", type=int, default=1_000_000, help="registry size (1,000,000)")
    p.add_argument("--mix", default=DEFAULT_MIX,
                   help=f"query mix ({DEFAULT_MIX}; also roamer=N, clone=N)")
    p.add_argument("--unknown-policy", choices=("reject", "greylist"), default="reject",
                   help="the EIR's policy.unknown_equipment (reject: unknown IMEIs get 5422)")
    p.add_argument("--policy", choices=sorted(POLICIES), default="regime",
                   help="rule order: the full regime (default) or the plain list lookup")
    add_common_args(p)
    p.add_argument("--target-rate", type=int, default=30_000, help="ECR/s to call the target met")
    p.add_argument("--no-echo", action="store_true", help="skip the echo server run")
    p.add_argument("--profile", type=Path, help="run the EIR under cProfile, stats to FILE")
    p.add_argument("--smoke", action="store_true",
                   help="tiny run for CI: 10k IMEIs, 5k queries, 2 s, 2 connections")
    args = p.parse_args(argv)
    if args.smoke:
        args.imeis = 10_000
        smoke_settings(args)
    if args.warmup >= args.duration:
        p.error("--warmup must be shorter than --duration")
    mix = parse_mix(args.mix)
    t_all = time.monotonic()
    out = Outcome()
    order = POLICIES[args.policy]
    try:
        prep = prepare(Sizes.from_total(args.imeis), args.seed, args.queries, mix,
                       args.tac_rows, args.cache_dir)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="eir-bench-") as tmp:
        work = Path(tmp)
        queries = work / "queries.csv"
        expected = write_queries(prep.queries, order, args.unknown_policy, queries)
        try:
            eir = bench_eir(args, prep.db, queries, work, out,
                            policy=policy_toml(order, args.unknown_policy),
                            profile=args.profile,
                            greylisted=greylisted_pairs(prep.queries, order,
                                                        args.unknown_policy))
        except SystemExit as exc:
            print(exc, file=sys.stderr)
            return 2
        mix_report = check_eir(eir, expected, args.tolerance, out)
        echo: dict[str, Any] = {}
        if not args.no_echo:
            echo = bench_echo(args, queries)
            if "error" in echo:
                out.failures.append(f"echo run: {echo['error']}")
            elif echo["lost"]:
                out.failures.append(f"echo run: {echo['lost']} request(s) lost")
    from bench.loadgen import generator_verdict

    for r in (eir, echo):
        if r and "error" not in r:
            r["verdict"] = generator_verdict(r)
            r.pop("hist", None)
    rate_e, rate_c = eir.get("rate"), echo.get("rate")
    n_q = len(prep.queries)
    figures = {
        "settings": settings_of(args),
        "registry": prep.meta,
        "rule_order": list(order),
        "queries": {"count": n_q, "per_category": prep.per_category},
        "expected_mix": {k: round(v, 4) for k, v in expected.items()},
        "mix": mix_report,
        "eir": eir,
        "echo": echo,
        "ratio_eir_echo": round(rate_e / rate_c, 3) if rate_e and rate_c else None,
        "target_rate": args.target_rate,
        "target_met": bool(rate_e and rate_e >= args.target_rate),
        "failures": out.failures,
        "elapsed_s": round(time.monotonic() - t_all, 1),
    }
    if args.profile and args.profile.exists():
        figures["profile"] = str(args.profile)
        print(profile_top(args.profile), file=sys.stderr)
    print(table(figures), file=sys.stderr)
    for f in out.failures:
        print(f"FAIL: {f}", file=sys.stderr)
    text = json.dumps(figures)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    print(text, flush=True)
    return 1 if out.failures else 0


def profile_top(path: Path, n: int = 25) -> str:
    import io
    import pstats

    buf = io.StringIO()
    stats = pstats.Stats(str(path), stream=buf)
    stats.sort_stats("tottime").print_stats(n)
    return buf.getvalue()


if __name__ == "__main__":
    sys.exit(main())
