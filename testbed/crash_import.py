"""kill -9 during a list import: the registry is exactly as before or exactly as after.

Usage (from the repository root)::

    .venv/bin/python -m testbed.crash_import                      # 200,000 rows, 7 kills
    .venv/bin/python -m testbed.crash_import --rows 10000000 --kills 5

A base registry (a tenth of ``--rows`` entries) is built with the real CLI
and its export hashed; a file of ``--rows`` rows (half of them changing base
entries, half new ones) is imported once in full on a copy, timed, and the
result's export hashed. Then, for each kill, a fresh copy of the base gets
the same import, and SIGKILL lands at a fraction of the full import's time
(spread from 5% to 110%, so the last kills fall around the commit or
just after it). After
each kill the export's hash must be the base's or the full import's, and
``eir registry check`` must find the file intact. Exit status 1 if any
outcome is neither. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from testbed.eirproc import eir_command, run_cli

__all__ = ["main"]


def _write_files(work: Path, rows: int, seed: int) -> tuple[Path, Path]:
    rnd = random.Random(seed)
    base_n = max(rows // 10, 1)
    imeis = rnd.sample(range(10**13, 10**14), base_n + rows)
    base, big = work / "base.csv", work / "big.csv"
    with base.open("w") as f:
        f.write("imei,list,reason,source\n")
        for imei in imeis[:base_n]:
            f.write(f"{imei},white,registered,ministry\n")
    changed = rnd.sample(imeis[:base_n], min(base_n, rows // 2))
    new = imeis[base_n:base_n + rows - len(changed)]
    body = [f"{i},black,stolen,police\n" for i in changed] + \
        [f"{i},grey,pending_verification,operator\n" for i in new]
    rnd.shuffle(body)
    with big.open("w") as f:
        f.write("imei,list,reason,source\n")
        f.writelines(body)
    return base, big


def _export_hashes(db: Path) -> tuple[str, str]:
    """(hash of the export, hash of the export without its since column).

    Rows the import writes without a since are dated by the import's own
    clock, so two runs of the same import differ there and nowhere else.
    """
    res = run_cli("registry", "export", "--db", str(db), timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(f"export of {db} failed: {res.stderr.strip()}")
    rows = list(csv.reader(io.StringIO(res.stdout)))
    col = rows[0].index("since")
    undated = hashlib.sha256()
    for r in rows:
        undated.update("\x1f".join(r[:col] + r[col + 1:]).encode() + b"\n")
    return hashlib.sha256(res.stdout.encode()).hexdigest(), undated.hexdigest()


def _copy_db(src: Path, dest: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        s, d = Path(f"{src}{suffix}"), Path(f"{dest}{suffix}")
        d.unlink(missing_ok=True)
        if s.exists():
            shutil.copyfile(s, d)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed.crash_import",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=200_000, help="rows of the killed import")
    p.add_argument("--kills", type=int, default=7, help="imports killed (each on a fresh copy)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--work", type=Path, help="working directory (default: a temporary one)")
    p.add_argument("--json-out", type=Path)
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="eir-crash-"))
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    base_csv, big_csv = _write_files(work, args.rows, args.seed)
    base_db, db = work / "base.db", work / "eir.db"
    res = run_cli("registry", "import", "--quiet", "--db", str(base_db), str(base_csv),
                  timeout=3600)
    if res.returncode != 0:
        print(f"crash_import: base import failed: {res.stderr.strip()}", file=sys.stderr)
        return 1
    before, _ = _export_hashes(base_db)
    _copy_db(base_db, db)
    t0 = time.monotonic()
    res = run_cli("registry", "import", "--quiet", "--db", str(db), str(big_csv), timeout=3600)
    full = time.monotonic() - t0
    if res.returncode != 0:
        print(f"crash_import: full import failed: {res.stderr.strip()}", file=sys.stderr)
        return 1
    _, after = _export_hashes(db)
    print(f"crash_import: {args.rows:,} rows imported in {full:.1f} s (process start "
          "included); killing the same import at points spread over that time",
          file=sys.stderr)
    trials = []
    for k in range(args.kills):
        fraction = 0.05 + 1.05 * k / max(args.kills - 1, 1)
        _copy_db(base_db, db)
        proc = subprocess.Popen([*eir_command(), "registry", "import", "--quiet", "--db",
                                 str(db), str(big_csv)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(full * fraction)
        finished = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        got, got_undated = _export_hashes(db)
        check = run_cli("registry", "check", "--db", str(db), timeout=3600)
        state = "before" if got == before else "after" if got_undated == after else "NEITHER"
        trials.append({"at_fraction": round(fraction, 3), "at_s": round(full * fraction, 2),
                       "finished_first": finished, "state": state,
                       "intact": check.returncode == 0})
        print(f"crash_import: kill {k + 1}/{args.kills} at {full * fraction:.1f} s "
              f"({fraction:.0%}): registry {state}, file "
              f"{'intact' if check.returncode == 0 else 'DAMAGED: ' + check.stderr.strip()}"
              f"{' (the import had already finished)' if finished else ''}", file=sys.stderr)
    bad = [t for t in trials if t["state"] == "NEITHER" or not t["intact"]]
    result = {"rows": args.rows, "full_import_s": round(full, 2), "kills": len(trials),
              "before": sum(t["state"] == "before" for t in trials),
              "after": sum(t["state"] == "after" for t in trials),
              "neither": sum(t["state"] == "NEITHER" for t in trials),
              "damaged": sum(not t["intact"] for t in trials), "trials": trials,
              "seconds": round(time.monotonic() - t_start, 1)}
    print(json.dumps(result))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"crash_import: {len(trials)} kills: {result['before']} before, {result['after']} "
          f"after, {result['neither']} neither, {result['damaged']} damaged "
          f"({'OK' if not bad else 'FAILED'})", file=sys.stderr)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
