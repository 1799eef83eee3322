"""Observations at country scale: 100 million (IMEI, IMSI, operator) pairs on disk.

Usage (from the repository root)::

    .venv/bin/python -m bench.observations_bench                    # 100,000,000 pairs
    .venv/bin/python -m bench.observations_bench --pairs 10000000   # the trend, quickly
    .venv/bin/python -m bench.observations_bench --smoke            # ~50k pairs (CI)

The issue asks for observations "persisted behind the hot path in batches
... and sized for a country (100 million pairs on disk, a bounded hot set in
memory)". This measures the real store (`SqliteRegistry` +
`SqliteObservations`, migration 0002's ``observation`` table) and the real
hot set (`SightingCache`), in-process:

1. **Fill**: a fresh registry, then ``--pairs`` rows written through
   `SqliteObservations.write_sightings` in batches of ``--batch`` rows (the
   size of a server flush), in random key order as sightings arrive. Keys:
   IMEIs over ``--tacs`` TACs (14-digit ints), 1.23 rows per IMEI (15% of
   IMEIs with 2 IMSIs, 3% with 3-4, one in 5,000 a clone with 30-100), 3
   operators, first/last seen over the 180 days before 2026-11-22. A
   progress line every 5 s; the write rate per ``--segment`` rows, to show
   whether it degrades as the B-tree grows; file size and bytes per pair.
2. **At the final size**: `read_sightings` latency (the hot set's miss on
   the S13 path) for existing and absent IMEIs, with the file dropped from
   the OS page cache (``posix_fadvise``: cold), the same IMEIs again (warm),
   and with the whole file in the page cache (new IMEIs); the same reads
   while a flush is being written; re-upserting present rows (steady state:
   last_seen updates); `SightingCache.observe` over a stream where 90% of
   checks hit recent IMEIs and 10% miss (one miss in five a new device),
   with flushes every second as the server does; `prune` of ~1/6 of the rows
   (last_seen older than a cut), each batch timed.

A table goes to stderr, the figures as one JSON object to stdout (and to
``--json-out``). Other busy processes on the machine are reported per
phase (``others_cpu``: their CPU over the phase, in cores), and
``--wait-quiet S`` waits up to S s before each phase for them to go.
The database goes in ``--dir`` (a new directory, deleted at the end unless
``--keep``). ``--save-fill DIR`` keeps a copy of the filled database, and
``--from-fill DIR`` starts from such a copy instead of filling (to measure
code changes on the same data). Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import random
import resource
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import eir
from eir.policy.observations import ObservationRow, SightingCache
from eir.policy.sqlite import SqliteRegistry
from eir.policy.sqlite_regime import SqliteObservations

NOW = 1_795_305_600  # 2026-11-22T00:00:00Z: the bench's "now"
DAY = 86_400
DAYS = 180  # first/last seen spread over this many days before NOW
# Origin-Realms of the three operators and their shares (of 20) of the rows.
OPERATORS = (("epc.mnc001.mcc401.3gppnetwork.org", "01", 9),
             ("epc.mnc002.mcc401.3gppnetwork.org", "02", 7),
             ("epc.mnc077.mcc401.3gppnetwork.org", "77", 4))
_OP_OF = [op for op in OPERATORS for _ in range(op[2])]
PHASES = ("reads", "flush", "reupsert", "flush_sizes", "observe", "prune")
PRUNE_SHARE = 1 / 6  # of the rows, last seen before the prune cut
MASK = (1 << 64) - 1


def log(msg: str) -> None:
    print(f"observations_bench: {msg}", file=sys.stderr, flush=True)


def mix(x: int) -> int:
    """splitmix64's finaliser: a cheap deterministic hash of an int."""
    x = (x + 0x9E3779B97F4A7C15) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


class Population:
    """Devices numbered 0, 1, 2, ...: device ``i``'s IMEI and its rows, computed, not stored.

    IMEI ``i`` is TAC * 10^6 + serial, with (TAC, serial) = an affine permutation
    of ``i`` over ``tacs`` x 10^6 serials: consecutive devices land far apart in
    the key space (a flush batch is spread over the whole B-tree, as real
    sightings are), distinct devices never share an IMEI, and a device
    numbered past the last one written is an IMEI that is certainly absent.
    """

    def __init__(self, seed: int, tacs: int) -> None:
        rng = random.Random(seed)
        self.tacs = sorted(rng.sample(range(10_000_000, 100_000_000), tacs))
        self.space = tacs * 1_000_000
        a = int(self.space * 0.6180339887) | 1
        while math.gcd(a, self.space) != 1:
            a += 2
        self._a = a
        self._b = rng.randrange(self.space)
        self._salt = mix(seed)

    def imei(self, i: int) -> int:
        x = (i * self._a + self._b) % self.space
        return self.tacs[x // 1_000_000] * 1_000_000 + x % 1_000_000

    def rows(self, i: int) -> list[ObservationRow]:
        """Device ``i``'s rows: (imei, imsi, operator, first_seen, last_seen)."""
        imei = self.imei(i)
        h = mix(i ^ self._salt)
        cls = h % 100_000
        if cls < 20:  # one IMEI in 5,000: a clone, 30-100 IMSIs
            n = 30 + (h >> 20) % 71
        elif cls < 15_020:
            n = 2
        elif cls < 17_520:
            n = 3
        elif cls < 18_020:
            n = 4
        else:
            n = 1
        out: list[ObservationRow] = []
        for k in range(n):
            hk = h if k == 0 else mix(h + k)
            name, mnc, _ = _OP_OF[(hk >> 17) % 20]
            imsi = f"401{mnc}{(hk >> 22) % 10_000_000_000:010d}"
            t = mix(hk)
            first = NOW - t % (DAYS * DAY)
            if (t >> 32) % 100 < 60:  # active: seen within the last day
                last = max(first, NOW - (t >> 40) % DAY)
            else:
                last = first + (t >> 40) % (NOW - first + 1)
            out.append((imei, imsi, name, first, last))
        return out


# -- measuring helpers -------------------------------------------------------------------------


def pct(ns: list[int]) -> dict[str, float]:
    """Percentiles of durations in ns, in microseconds."""
    if not ns:
        return {}
    s = sorted(ns)

    def at(q: float) -> float:
        return round(s[min(len(s) - 1, int(q * len(s)))] / 1000, 1)

    return {"n": len(s), "mean": round(sum(s) / len(s) / 1000, 1), "p50": at(0.50),
            "p90": at(0.90), "p99": at(0.99), "p99.9": at(0.999), "max": round(s[-1] / 1000, 1)}


def cpu_ticks() -> dict[int, tuple[str, int]]:
    """utime+stime of every other process, by pid (with its command line)."""
    me = os.getpid()
    out: dict[int, tuple[str, int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        out[int(d)] = (cmd[:120], int(fields[11]) + int(fields[12]))
    return out


def busy_others(sample_s: float = 2.0) -> list[str]:
    """Other processes that used at least a fifth of a core over ``sample_s`` seconds."""
    before = cpu_ticks()
    time.sleep(sample_s)
    after = cpu_ticks()
    hz = os.sysconf("SC_CLK_TCK")
    busy = []
    for pid, (cmd, ticks) in after.items():
        cores = (ticks - before.get(pid, (cmd, ticks))[1]) / hz / sample_s
        if cores >= 0.2:
            busy.append(f"{pid} ({cores:.1f} cores) {cmd[:100]}")
    return busy


gc_pauses: list[float] = []  # durations of full (generation 2) collections in this phase
gc_any_max = [0.0]  # the longest collection of any generation in this phase
_gc_start = [0.0]


def _gc_callback(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_start[0] = time.perf_counter()
        return
    took = time.perf_counter() - _gc_start[0]
    gc_any_max[0] = max(gc_any_max[0], took)
    if info.get("generation") == 2:
        gc_pauses.append(took)


gc.callbacks.append(_gc_callback)


class Phase:
    """One timed phase: wall time, this process's CPU, and the other processes' CPU."""

    def __init__(self, name: str, figures: dict[str, Any], wait_quiet: float) -> None:
        self.name = name
        self.figures = figures
        self.wait_quiet = wait_quiet

    def __enter__(self) -> Phase:
        others = busy_others() if self.wait_quiet > 0 else []
        if others:
            log(f"{self.name}: waiting up to {self.wait_quiet:.0f} s for: " + "; ".join(others))
            deadline = time.monotonic() + self.wait_quiet
            while others and time.monotonic() < deadline:
                time.sleep(8)
                others = busy_others()
            if others:
                log(f"{self.name}: still busy, measuring anyway: " + "; ".join(others))
        self.busy_at_start = others
        gc_pauses.clear()
        gc_any_max[0] = 0.0
        self.before = cpu_ticks()
        self.t0 = time.perf_counter()
        self.cpu0 = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.t0
        after = cpu_ticks()
        hz = os.sysconf("SC_CLK_TCK")
        busy: dict[str, float] = {}
        for pid, (cmd, ticks) in after.items():
            d = ticks - self.before.get(pid, (cmd, 0))[1]
            if d > 0:
                busy[cmd] = busy.get(cmd, 0.0) + d / hz
        top = sorted(busy.items(), key=lambda kv: -kv[1])[:3]
        self.figures.setdefault("phases", {})[self.name] = {
            "wall_s": round(wall, 2),
            "own_cpu_cores": round((time.process_time() - self.cpu0) / wall, 2) if wall else None,
            "others_cpu_cores": round(sum(busy.values()) / wall, 2) if wall else None,
            "others_top": [[c[:80], round(s / wall, 2)] for c, s in top] if wall else [],
            "busy_at_start": self.busy_at_start,
            "gc_full_collections": len(gc_pauses),
            "gc_full_max_s": round(max(gc_pauses), 3) if gc_pauses else None,
            "gc_full_total_s": round(sum(gc_pauses), 3),
            "gc_any_max_s": round(gc_any_max[0], 3),
            "loadavg_end": Path("/proc/loadavg").read_text().split()[:3],
        }


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def db_files(db: Path) -> list[Path]:
    return [db, Path(f"{db}-wal")]


def drop_page_cache(db: Path) -> None:
    """Ask the kernel to drop the database file from the page cache (this file only)."""
    for p in db_files(db):
        if p.exists():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def read_through(db: Path, limit_s: float) -> float:
    """Read the file once (into the page cache); bytes/s."""
    t0 = time.perf_counter()
    n = 0
    with db.open("rb", buffering=0) as f:
        while time.perf_counter() - t0 < limit_s:
            chunk = f.read(8 << 20)
            if not chunk:
                break
            n += len(chunk)
    return n / max(time.perf_counter() - t0, 1e-9)


def checkpoint(db: Path) -> list[int]:
    """PRAGMA wal_checkpoint(TRUNCATE) from a connection of its own."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout=60000")
        return list(conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone())
    finally:
        conn.close()


def btree_shape(db: Path) -> dict[str, Any]:
    """Depth of the observation B-tree (walked from the root down its right edge) and pages.

    Reads the file directly, so call it after a TRUNCATE checkpoint.
    """
    conn = sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True)
    try:
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        page_count = int(conn.execute("PRAGMA page_count").fetchone()[0])
        freelist = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        root = int(conn.execute("SELECT rootpage FROM sqlite_schema WHERE name = 'observation'")
                   .fetchone()[0])
    finally:
        conn.close()
    depth = 0
    root_cells = None
    with db.open("rb") as f:
        page = root
        for _ in range(16):
            f.seek((page - 1) * page_size)
            data = f.read(page_size)
            off = 100 if page == 1 else 0
            kind = data[off]
            depth += 1
            if root_cells is None:
                root_cells = int.from_bytes(data[off + 3:off + 5], "big")
            if kind in (0x02, 0x05):  # interior (index or table): follow the right-most child
                page = int.from_bytes(data[off + 8:off + 12], "big")
                continue
            break
    return {"page_size": page_size, "pages": page_count, "free_pages": freelist,
            "depth": depth, "root_cells": root_cells}


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def time_transactions(reg: SqliteRegistry, durations: list[float]) -> Callable[[], None]:
    """Record the duration of each `raw_transaction` (prune makes one per batch)."""
    orig = reg.raw_transaction

    @asynccontextmanager
    async def timed() -> AsyncIterator[Any]:
        t = time.perf_counter()
        async with orig() as conn:
            yield conn
        durations.append(time.perf_counter() - t)

    reg.raw_transaction = timed  # type: ignore[method-assign]

    def restore() -> None:
        reg.raw_transaction = orig  # type: ignore[method-assign]

    return restore


# -- the phases -------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, db: Path, figures: dict[str, Any]) -> None:
        self.args = args
        self.db = db
        self.f = figures
        self.pop = Population(args.seed, args.tacs)
        self.rng = random.Random(args.seed + 1)
        self.n_imeis = 0  # devices 0 .. n_imeis-1 are in the store
        self.rows = 0
        self.last_hist = [0] * (DAYS + 2)  # rows by whole days between last_seen and NOW

    def phase(self, name: str) -> Phase:
        return Phase(name, self.f, self.args.wait_quiet)

    async def fill(self, obs: SqliteObservations) -> None:
        """Write ``--pairs`` rows in batches; the write rate per segment and overall.

        A batch is generated, then written: generation (pure Python) does not run
        while `write_sightings` does, so the rate is that of the store alone, not
        slowed by the GIL (`reads_during_flush` and `observe` show that case).
        """
        a = self.args
        pairs, batch = a.pairs, a.batch
        t0 = time.perf_counter()
        deadline = t0 + a.time_limit
        segments: list[dict[str, Any]] = []
        seg_t, seg_rows, seg_write = t0, 0, 0.0
        write_total = gen_total = 0.0
        next_log = t0 + 5
        last_log_t, last_log_rows = t0, 0
        hist = self.last_hist
        rows_of = self.pop.rows
        i = done = 0
        while done < pairs and time.perf_counter() < deadline:
            tg = time.perf_counter()
            buf: list[ObservationRow] = []
            while len(buf) < batch:
                buf.extend(rows_of(i))
                i += 1
            del buf[min(batch, pairs - done):]
            for r in buf:
                hist[(NOW - r[4]) // DAY] += 1
            gen_total += time.perf_counter() - tg
            t = time.perf_counter()
            await obs.write_sightings(buf)
            now = time.perf_counter()
            write_total += now - t
            seg_write += now - t
            done += len(buf)
            seg_rows += len(buf)
            self.n_imeis = i
            if seg_rows >= a.segment or done >= pairs or now >= deadline:
                segments.append({
                    "rows_end": done, "rows": seg_rows,
                    "wall_s": round(now - seg_t, 2),
                    "write_s": round(seg_write, 2),
                    "rows_per_s": round(seg_rows / seg_write) if seg_write else None,
                    "wall_rows_per_s": round(seg_rows / (now - seg_t)),
                    "db_bytes": file_size(self.db),
                    "wal_bytes": file_size(Path(f"{self.db}-wal")),
                })
                log(f"segment to {done:,}: {segments[-1]['rows_per_s']:,} rows/s "
                    f"(write time), {segments[-1]['wall_rows_per_s']:,} rows/s wall")
                seg_t, seg_rows, seg_write = now, 0, 0.0
            if now >= next_log:
                rate = (done - last_log_rows) / (now - last_log_t)
                eta = (pairs - done) / (done / (now - t0))
                log(f"fill: {done:,}/{pairs:,} rows  {rate:,.0f} rows/s (last "
                    f"{now - last_log_t:.0f} s), {done / (now - t0):,.0f} overall  "
                    f"elapsed {now - t0:,.0f} s  eta {eta:,.0f} s  "
                    f"db {file_size(self.db) / 1e9:.2f} GB")
                next_log = now + 5
                last_log_t, last_log_rows = now, done
        wall = time.perf_counter() - t0
        self.rows = done
        self.f["fill"] = {
            "pairs_asked": pairs, "rows": done, "imeis": self.n_imeis,
            "rows_per_imei": round(done / max(self.n_imeis, 1), 3),
            "batch": batch, "completed": done >= pairs,
            "wall_s": round(wall, 1), "write_s": round(write_total, 1),
            "generate_s": round(gen_total, 1),
            "rows_per_s": round(done / write_total) if write_total else None,
            "wall_rows_per_s": round(done / wall) if wall else None,
            "segments": segments,
        }

    def sizes(self, key: str) -> None:
        wal = file_size(Path(f"{self.db}-wal"))
        t = time.perf_counter()
        cp = checkpoint(self.db)
        took = time.perf_counter() - t
        shape = btree_shape(self.db)
        self.f[key] = {"db_bytes": file_size(self.db), "wal_bytes_before_checkpoint": wal,
                       "checkpoint": cp, "checkpoint_s": round(took, 2),
                       "bytes_per_pair": round(file_size(self.db) / max(self.rows, 1), 1),
                       **shape}

    def existing(self, n: int) -> list[int]:
        return [self.pop.imei(self.rng.randrange(self.n_imeis)) for _ in range(n)]

    def absent(self, n: int) -> list[int]:
        lo = self.n_imeis + 1
        return [self.pop.imei(self.rng.randrange(lo, 2 * lo)) for _ in range(n)]

    def reads(self, obs: SqliteObservations, imeis: list[int]) -> dict[str, float]:
        lat: list[int] = []
        found = 0
        deadline = time.perf_counter() + self.args.phase_limit
        clock = time.perf_counter_ns
        read = obs.read_sightings
        for imei in imeis:
            t = clock()
            got = read(imei)
            lat.append(clock() - t)
            found += bool(got)
            if time.perf_counter() > deadline:
                break
        out = pct(lat)
        out["found"] = found
        return out

    async def read_phase(self, reg: SqliteRegistry) -> None:
        a = self.args
        res: dict[str, Any] = {}
        ex, ab = self.existing(a.reads), self.absent(a.reads)
        ex2, ab2 = self.existing(a.reads), self.absent(a.reads)
        with self.phase("reads"):
            drop_page_cache(self.db)
            obs = SqliteObservations(reg)  # a fresh reader connection: SQLite's cache empty
            res["existing_cold"] = self.reads(obs, ex)
            res["existing_again"] = self.reads(obs, ex)
            drop_page_cache(self.db)
            res["absent_cold"] = self.reads(obs, ab)
            res["absent_again"] = self.reads(obs, ab)
            res["read_through_MB_per_s"] = round(read_through(self.db, a.phase_limit) / 1e6)
            res["existing_file_cached"] = self.reads(obs, ex2)
            res["absent_file_cached"] = self.reads(obs, ab2)
            obs.close()
        self.f["read_sightings_us"] = res

    def present_batch(self, n: int, last: int) -> list[ObservationRow]:
        rows: list[ObservationRow] = []
        while len(rows) < n:
            for imei, imsi, op, first, _ in self.pop.rows(self.rng.randrange(self.n_imeis)):
                rows.append((imei, imsi, op, first, last))
        return rows[:n]

    async def reads_during_flush(self, reg: SqliteRegistry, obs: SqliteObservations) -> None:
        """Miss reads on the event loop while a flush batch is written (the server's case)."""
        rows = self.present_batch(self.args.batch, NOW + 600)
        reader = SqliteObservations(reg)
        lat: list[int] = []
        clock = time.perf_counter_ns
        with self.phase("reads_during_flush"):
            t0 = time.perf_counter()
            task = asyncio.create_task(obs.write_sightings(rows))
            await asyncio.sleep(0)
            n = 0
            while not task.done() and n < 10_000_000 and time.perf_counter() - t0 < \
                    self.args.phase_limit:
                for imei in self.existing(100):
                    t = clock()
                    reader.read_sightings(imei)
                    lat.append(clock() - t)
                n += 100
                await asyncio.sleep(0)
            await task
            took = time.perf_counter() - t0
        reader.close()
        self.f["reads_during_flush"] = {"flush_rows": len(rows), "flush_s": round(took, 2),
                                        "read_us": pct(lat)}

    async def reupsert(self, obs: SqliteObservations) -> None:
        res = []
        with self.phase("reupsert"):
            t_end = time.perf_counter() + self.args.phase_limit
            for k in range(self.args.reupsert_batches):
                rows = self.present_batch(self.args.batch, NOW + 3600 * (k + 1))
                t = time.perf_counter()
                await obs.write_sightings(rows)
                took = time.perf_counter() - t
                res.append({"rows": len(rows), "s": round(took, 3),
                            "rows_per_s": round(len(rows) / took)})
                if time.perf_counter() > t_end:
                    break
        rates = sorted(r["rows_per_s"] for r in res)
        self.f["reupsert"] = {"batches": res, "median_rows_per_s": rates[len(rates) // 2]}

    async def observe_phase(self, obs: SqliteObservations) -> None:
        """`SightingCache.observe` with a bounded hot set, flushed every second.

        Twice: with the server's default ``ttl`` (a cached history is re-read after
        30 s, so that several workers converge) and with no TTL (one worker: only
        the hot set's bound causes misses). Each time a fresh cache is filled with
        ``hot`` IMEIs (all misses), then the 90/10 stream is run through it.
        """
        a = self.args
        hot = max(1, min(a.hot, self.n_imeis // 2))
        res: dict[str, Any] = {"hot_imeis": hot}

        def checks(indices: Iterable[int]) -> list[tuple[int, str, str]]:
            out = []
            for i in indices:
                imei, imsi, op, _, _ = self.pop.rows(i)[0]
                out.append((imei, imsi, op))
            return out

        # the stream: 90% recent IMEIs (a ring of the last `hot` devices seen), 10% misses:
        # 4 in 5 a device in the store but not in the hot set, 1 in 5 a new device
        ring = list(range(hot))
        ptr = 0
        stream_idx: list[int] = []
        rng = self.rng
        fresh = self.n_imeis + 1
        for _ in range(a.observes):
            if rng.random() < 0.9:
                stream_idx.append(ring[rng.randrange(hot)])
            else:
                if rng.random() < 0.8:
                    j = rng.randrange(hot, self.n_imeis)
                else:
                    j = fresh
                    fresh += 1
                stream_idx.append(j)
                ring[ptr] = j
                ptr = (ptr + 1) % hot
        fill_stream = checks(range(hot))
        stream = checks(stream_idx)
        del stream_idx, ring

        for n, (label, ttl) in enumerate((("ttl_30s", 30.0), ("no_ttl", math.inf))):
            now = NOW + 7200 * (n + 1)  # each pair's first check in a run queues an update
            gc.collect()
            out: dict[str, Any] = {"ttl_s": ttl if ttl < math.inf else None,
                                   "rss_mb_before": rss_mb()}
            cache = SightingCache(obs, lambda imsi: imsi is None or imsi[:3] == "401",
                                  max_imeis=hot, ttl=ttl)
            flushes: list[float] = []
            with self.phase(f"observe_fill_{label}"):
                out["fill_hot_set"] = await self.observe_run(cache, fill_stream, now, flushes)
            out["rss_mb_hot_set_full"] = rss_mb()
            with self.phase(f"observe_stream_{label}"):
                out["stream_90_10"] = await self.observe_run(cache, stream, now, flushes)
            t = time.perf_counter()
            out["rows_flushed"] = sum(r["rows_flushed"] for r in
                                      (out["fill_hot_set"], out["stream_90_10"]))
            out["rows_flushed"] += await cache.flush()
            flushes.append(time.perf_counter() - t)
            out["hot_set_len"] = len(cache)
            out["flushes"] = len(flushes)
            out["flush_s_max"] = round(max(flushes), 2)
            out["flush_s_mean"] = round(sum(flushes) / len(flushes), 2)
            res[label] = out
            del cache
        self.f["observe"] = res

    async def observe_run(self, cache: SightingCache, items: list[tuple[int, str, str]],
                          now: int, flushes: list[float]) -> dict[str, Any]:
        """Checks through ``cache.observe``, a flush started every second (as the server)."""

        async def timed_flush() -> int:
            t = time.perf_counter()
            n = await cache.flush()
            flushes.append(time.perf_counter() - t)
            return n

        lat: list[int] = []
        clock = time.perf_counter_ns
        observe = cache.observe
        flush_task: asyncio.Task[int] | None = None
        flushed = 0
        next_flush = time.monotonic() + 1.0
        misses0 = cache.misses
        t0 = time.perf_counter()
        deadline = t0 + self.args.phase_limit
        for start in range(0, len(items), 1000):
            for imei, imsi, op in items[start:start + 1000]:
                t = clock()
                observe(imei, imsi, op, now)
                lat.append(clock() - t)
            mono = time.monotonic()
            if flush_task is not None and flush_task.done():
                flushed += flush_task.result()
                flush_task = None
            if flush_task is None and (mono >= next_flush or cache.pending >= cache.max_pending):
                flush_task = asyncio.create_task(timed_flush())
                next_flush = mono + 1.0
            await asyncio.sleep(0)
            if time.perf_counter() > deadline:
                break
        wall = time.perf_counter() - t0
        if flush_task is not None:
            flushed += await flush_task
        misses = cache.misses - misses0
        return {"checks": len(lat), "wall_s": round(wall, 2),
                "checks_per_s": round(len(lat) / wall) if wall else None,
                "misses": misses, "miss_share": round(misses / max(len(lat), 1), 4),
                "rows_flushed": flushed, "observe_us": pct(lat)}

    async def flush_sizes(self, obs: SqliteObservations) -> None:
        """Batches of new rows of several sizes at the final size: seconds per flush."""
        res = []
        nxt = 3 * (self.n_imeis + 1)  # devices far past any other the bench uses
        with self.phase("flush_sizes"):
            t_end = time.perf_counter() + self.args.phase_limit
            for size in self.args.flush_sizes:
                for _ in range(2):
                    rows: list[ObservationRow] = []
                    while len(rows) < size:
                        rows.extend(self.pop.rows(nxt))
                        nxt += 1
                    del rows[size:]
                    t = time.perf_counter()
                    await obs.write_sightings(rows)
                    took = time.perf_counter() - t
                    res.append({"rows": size, "s": round(took, 3),
                                "rows_per_s": round(size / took)})
                if time.perf_counter() > t_end:
                    break
        self.f["flush_sizes"] = res

    async def prune_phase(self, reg: SqliteRegistry, obs: SqliteObservations) -> None:
        """Two prunes: one with nothing to delete (what the hourly prune mostly is: every
        row is looked at), then one deleting ~1/6 of the rows. Each transaction is timed:
        the longest is how long the flushes wait for the write lock."""
        # the cut: whole days back from NOW, so that about 1/6 of the rows are older
        hist, total = self.last_hist, sum(self.last_hist)
        older, days = 0, len(hist)
        while days > 1 and older + hist[days - 1] <= total * PRUNE_SHARE:
            days -= 1
            older += hist[days]
        idle = await self.timed_prune(reg, obs, "prune_nothing", NOW - (DAYS + 2) * DAY)
        res = await self.timed_prune(reg, obs, "prune", NOW - days * DAY)
        res.update({"cut_days": days, "expected_rows": older})
        self.f["prune_nothing"] = idle
        self.f["prune"] = res

    async def timed_prune(self, reg: SqliteRegistry, obs: SqliteObservations, name: str,
                          before: int) -> dict[str, Any]:
        durations: list[float] = []
        restore = time_transactions(reg, durations)
        res: dict[str, Any] = {}
        with self.phase(name):
            t0 = time.perf_counter()
            try:
                res["deleted"] = await asyncio.wait_for(obs.prune(before),
                                                        self.args.prune_limit)
                res["completed"] = True
            except TimeoutError:
                res["deleted"] = None
                res["completed"] = False
            res["s"] = round(time.perf_counter() - t0, 2)
        restore()
        res["transactions"] = len(durations)
        if durations:
            k = max(1, len(durations) // 10)
            res["transaction_s_max"] = round(max(durations), 3)
            res["transaction_s_first"] = round(sum(durations[:k]) / k, 3)
            res["transaction_s_last"] = round(sum(durations[-k:]) / k, 3)
            res["transaction_s_by_tenth"] = [
                round(sum(durations[j:j + k]) / len(durations[j:j + k]), 3)
                for j in range(0, len(durations), k)][:12]
        if res["completed"] and res["s"]:
            res["rows_per_s"] = round(res["deleted"] / res["s"])
        return res


# -- reporting --------------------------------------------------------------------------------


def _us(d: dict[str, Any] | None) -> str:
    if not d:
        return "-"
    return f"{d['p50']:.0f} / {d['p99']:.0f} / {d['max']:.0f}"


def table(f: dict[str, Any]) -> str:
    out: list[str] = []
    fill = f.get("fill", {})
    size = f.get("size_after_fill", {})
    out.append(f"fill: {fill.get('rows', 0):,} rows ({fill.get('imeis', 0):,} IMEIs, "
               f"batches of {fill.get('batch', 0):,}) in {fill.get('wall_s', 0):,} s: "
               f"{fill.get('rows_per_s') or 0:,} rows/s by write time, "
               f"{fill.get('wall_rows_per_s') or 0:,} wall")
    out.append(f"  {'rows at end':>14}  {'rows/s':>10}  {'wall rows/s':>11}  {'db GB':>7}")
    for s in fill.get("segments", []):
        out.append(f"  {s['rows_end']:>14,}  {s['rows_per_s'] or 0:>10,}  "
                   f"{s['wall_rows_per_s']:>11,}  {s['db_bytes'] / 1e9:>7.2f}")
    if size:
        out.append(f"file: {size['db_bytes'] / 1e9:.2f} GB, {size['bytes_per_pair']} bytes/pair, "
                   f"B-tree depth {size['depth']}, {size['pages']:,} pages of "
                   f"{size['page_size']}")
    r = f.get("read_sightings_us", {})
    if r:
        out.append("read_sightings (us, p50 / p99 / max):")
        for k in ("existing_cold", "existing_again", "absent_cold", "absent_again",
                  "existing_file_cached", "absent_file_cached"):
            out.append(f"  {k:<22} {_us(r.get(k))}")
    d = f.get("reads_during_flush")
    if d:
        out.append(f"  {'during a flush':<22} {_us(d['read_us'])}  "
                   f"(flush of {d['flush_rows']:,} rows took {d['flush_s']} s)")
    u = f.get("reupsert")
    if u:
        out.append(f"re-upsert of present rows: {u['median_rows_per_s']:,} rows/s (median of "
                   f"{len(u['batches'])} batches)")
    o: dict[str, Any] = f.get("observe") or {}
    for label in ("ttl_30s", "no_ttl"):
        v = o.get(label)
        if not v:
            continue
        for k in ("fill_hot_set", "stream_90_10"):
            s = v[k]
            out.append(f"observe {label} {k}: {s['checks']:,} checks, {s['checks_per_s']:,}/s, "
                       f"misses {s['miss_share']:.1%}, us p50/p99/max {_us(s['observe_us'])}")
        out.append(f"  hot set {v['hot_set_len']:,} IMEIs, RSS {v['rss_mb_before']} -> "
                   f"{v['rss_mb_hot_set_full']} MB when full; {v['rows_flushed']:,} rows in "
                   f"{v['flushes']} flushes (max {v['flush_s_max']} s)")
    fs = f.get("flush_sizes")
    if fs:
        out.append("flush of new rows: " + ", ".join(
            f"{r['rows']:,} in {r['s']} s" for r in fs))
    for key in ("prune_nothing", "prune"):
        p = f.get(key)
        if not p:
            continue
        what = (f"{p['deleted']:,} rows in {p['s']} s" if p["completed"] else
                f"NOT finished in {p['s']} s")
        cut = f" (last seen > {p['cut_days']} days)" if "cut_days" in p else " (nothing to delete)"
        out.append(f"{key}{cut}: {what}, {p['transactions']} transactions, s first "
                   f"{p.get('transaction_s_first')}, last {p.get('transaction_s_last')}, "
                   f"max {p.get('transaction_s_max')}")
    fin = f.get("size_after_prune")
    if fin:
        out.append(f"file after prune: {fin['db_bytes'] / 1e9:.2f} GB "
                   f"({fin['free_pages']:,} free pages)")
    gcs = {k: v["gc_full_max_s"] for k, v in f.get("phases", {}).items()
           if v.get("gc_full_max_s")}
    if gcs:
        out.append("longest full GC (s): " + ", ".join(f"{k} {v}" for k, v in gcs.items()))
    busy = {k: v["others_cpu_cores"] for k, v in f.get("phases", {}).items()
            if (v["others_cpu_cores"] or 0) >= 0.2}
    if busy:
        out.append("other processes busy during (cores): "
                   + ", ".join(f"{k} {v}" for k, v in busy.items()))
    return "\n".join(out)


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.observations_bench",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--pairs", type=int, default=100_000_000, help="rows to write")
    p.add_argument("--batch", type=int, default=50_000, help="rows per write_sightings call")
    p.add_argument("--segment", type=int, default=0,
                   help="report the write rate per this many rows (default pairs/10)")
    p.add_argument("--tacs", type=int, default=3000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--reads", type=int, default=20_000, help="point reads per measurement")
    p.add_argument("--reupsert-batches", type=int, default=5)
    p.add_argument("--flush-sizes", type=lambda v: [int(x) for x in v.split(",")],
                   default=[5_000, 20_000, 50_000, 100_000],
                   help="batch sizes of the new-row flush measurement")
    p.add_argument("--hot", type=int, default=1_000_000, help="SightingCache max_imeis")
    p.add_argument("--observes", type=int, default=2_000_000, help="checks in the 90/10 stream")
    p.add_argument("--time-limit", type=float, default=3 * 3600,
                   help="stop filling after this many seconds (then measure at that size)")
    p.add_argument("--phase-limit", type=float, default=600,
                   help="time limit of each measurement after the fill")
    p.add_argument("--prune-limit", type=float, default=1800, help="time limit of the prune")
    p.add_argument("--wait-quiet", type=float, default=0,
                   help="before each phase wait up to this many s for other benchmarks to end")
    p.add_argument("--dir", type=Path, help="new directory for the database (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the database directory")
    p.add_argument("--save-fill", type=Path, help="copy the filled database to this directory")
    p.add_argument("--from-fill", type=Path, help="start from a --save-fill copy, no fill")
    p.add_argument("--phases", type=lambda v: set(v.split(",")) - {"none"}, default=set(PHASES),
                   help=f"measurements after the fill, or none (default all: {','.join(PHASES)})")
    p.add_argument("--json-out", type=Path)
    p.add_argument("--smoke", action="store_true", help="~50k pairs, small measurements")
    a = p.parse_args(argv)
    if a.smoke:
        a.pairs, a.batch, a.reads, a.hot, a.observes = 50_000, 10_000, 2_000, 10_000, 30_000
        a.reupsert_batches, a.tacs, a.flush_sizes = 2, 50, [1_000, 5_000]
    if a.phases - set(PHASES):
        p.error(f"--phases: unknown {', '.join(sorted(a.phases - set(PHASES)))}")
    if a.segment <= 0:
        a.segment = max(a.batch, a.pairs // 10)
    for name in ("pairs", "batch", "reads", "hot", "observes", "reupsert_batches", "tacs"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive")
    return a


async def run(args: argparse.Namespace, work: Path, figures: dict[str, Any]) -> None:
    db = work / "eir.db"
    bench = Bench(args, db, figures)
    if args.from_fill:
        meta = json.loads((args.from_fill / "meta.json").read_text())
        if meta["seed"] != args.seed or meta["tacs"] != args.tacs:
            raise SystemExit("--from-fill: the copy was made with another --seed/--tacs")
        t = time.perf_counter()
        shutil.copyfile(args.from_fill / "eir.db", db)
        log(f"copied {args.from_fill / 'eir.db'} in {time.perf_counter() - t:.0f} s")
        bench.n_imeis, bench.rows = meta["imeis"], meta["rows"]
        bench.last_hist = meta["last_hist"]
        figures["fill"] = meta["fill"]
    reg = SqliteRegistry(db)
    await reg.open()
    obs = SqliteObservations(reg)
    try:
        if not args.from_fill:
            with bench.phase("fill"):
                await bench.fill(obs)
        bench.sizes("size_after_fill")
        if args.save_fill and not args.from_fill:
            args.save_fill.mkdir(parents=True, exist_ok=False)
            shutil.copyfile(db, args.save_fill / "eir.db")
            (args.save_fill / "meta.json").write_text(json.dumps({
                "seed": args.seed, "tacs": args.tacs, "imeis": bench.n_imeis, "rows": bench.rows,
                "last_hist": bench.last_hist, "fill": figures["fill"]}))
        log(f"at {bench.rows:,} rows: {figures['size_after_fill']['db_bytes'] / 1e9:.2f} GB")
        ph = args.phases
        if "reads" in ph:
            log("read_sightings: cold, again, file cached")
            await bench.read_phase(reg)
        if "flush" in ph:
            log("reads during a flush")
            await bench.reads_during_flush(reg, obs)
        if "reupsert" in ph:
            log("re-upserting present rows")
            await bench.reupsert(obs)
        if "flush_sizes" in ph:
            log("flushes of new rows, by size")
            await bench.flush_sizes(obs)
        if "observe" in ph:
            log("SightingCache.observe")
            await bench.observe_phase(obs)
        if "prune" in ph:
            log("prune")
            await bench.prune_phase(reg, obs)
        bench.sizes("size_after_prune")
    finally:
        obs.close()
        await reg.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = args.dir
    if base is not None:
        base.mkdir(parents=True, exist_ok=False)
        work = base
    else:
        work = Path(tempfile.mkdtemp(prefix="obsbench-"))
    need = 75 * args.pairs * (2 if args.save_fill else 1)  # bytes, with room for the WAL
    free = shutil.disk_usage(work).free
    figures: dict[str, Any] = {
        "bench": "observations", "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "argv": sys.argv[1:], "eir": str(Path(eir.__file__).parent),
        "sqlite": sqlite3.sqlite_version, "python": sys.version.split()[0],
        "cpus": os.cpu_count(), "disk_free_bytes": free,
    }
    status = 0
    try:
        if free < need and not args.from_fill:
            log(f"not enough disk in {work}: {free / 1e9:.1f} GB free, ~{need / 1e9:.1f} GB needed")
            return 2
        asyncio.run(run(args, work, figures))
    except Exception as exc:  # report what we have, then fail
        figures["error"] = f"{type(exc).__name__}: {exc}"
        log(f"failed: {figures['error']}")
        status = 2
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(table(figures), file=sys.stderr, flush=True)
    text = json.dumps(figures, sort_keys=True)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    print(text, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
