"""Benchmark of the registry layer: CSV import, snapshot load, lookups, export.

Not a test (pytest does not collect ``bench_*``); figures vary with the
machine, so they are printed, never asserted. Run::

    .venv/bin/python bench/registry_bench.py --rows 1000000

It writes a seeded CSV of ``--rows`` IMEIs (about 80% white, 15% grey, 5%
black, plus 1,000 exception pairs) into a temporary directory, imports it
into a fresh SQLite file, loads the snapshot, times single lookups and
`facts`+`decide` from Python, and exports the file again.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path

from eir.policy.csvio import export_csv, import_csv
from eir.policy.engine import DecisionConfig, decide
from eir.policy.model import luhn_check_digit
from eir.policy.sqlite import SqliteRegistry


def write_csv(path: Path, rows: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    imeis = sorted({f"{rnd.randrange(10**13, 10**14):014d}" for _ in range(rows)})
    while len(imeis) < rows:  # collisions are rare; top up
        imeis = sorted(set(imeis) | {f"{rnd.randrange(10**13, 10**14):014d}"})
    rnd.shuffle(imeis)
    with path.open("w", encoding="utf-8") as f:
        f.write("imei,list,reason,imsi,source,note\n")
        for imei in imeis:
            x = rnd.random()
            if x < 0.80:
                f.write(f"{imei}{luhn_check_digit(imei)},white,registered,,ministry,\n")
            elif x < 0.95:
                f.write(f"{imei},grey,pending_verification,,ministry,\n")
            else:
                f.write(f"{imei},black,stolen,,police,case {rnd.randrange(10**6)}\n")
        for imei in imeis[:1000]:
            f.write(f"{imei},exception,,25001{rnd.randrange(10**10):010d},police,\n")
    return imeis


async def run(rows: int, probes: int, seed: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "lists.csv"
        t = time.perf_counter()
        imeis = write_csv(csv_path, rows, seed)
        print(f"generate csv: {time.perf_counter() - t:.2f} s ({csv_path.stat().st_size:,} bytes)")

        async with SqliteRegistry(Path(tmp) / "eir.db") as reg:
            t = time.perf_counter()
            result = await import_csv(reg, csv_path)
            print(f"import {result.rows:,} rows: {time.perf_counter() - t:.2f} s")

            t = time.perf_counter()
            snap = await reg.load_snapshot()
            print(f"load_snapshot: {time.perf_counter() - t:.2f} s  {snap!r}")

            t = time.perf_counter()
            digest = snap.digest()
            print(f"digest: {time.perf_counter() - t:.3f} s  {digest[:16]}...")

            rnd = random.Random(seed + 1)
            hits = [imeis[rnd.randrange(len(imeis))] for _ in range(probes)]
            misses = [f"{rnd.randrange(10**13, 10**14):014d}" for _ in range(probes)]
            lookup = snap.lookup
            for name, batch in (("hit", hits), ("miss", misses)):
                best = float("inf")
                for _ in range(3):
                    t = time.perf_counter()
                    for imei in batch:
                        lookup(imei, "250011234567890")
                    best = min(best, time.perf_counter() - t)
                print(f"Snapshot.lookup ({name}): {best / len(batch) * 1e6:.2f} us")

            cfg = DecisionConfig()
            facts = snap.facts
            raw = [i + "0" for i in hits]
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                for imei in raw:
                    decide(facts(imei, "250011234567890", "01"), cfg)
                best = min(best, time.perf_counter() - t)
            print(f"facts + decide: {best / len(raw) * 1e6:.2f} us")

            t = time.perf_counter()
            n = await export_csv(reg, Path(tmp) / "export.csv")
            print(f"export {n:,} rows: {time.perf_counter() - t:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--probes", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(run(args.rows, args.probes, args.seed))


if __name__ == "__main__":
    main()
