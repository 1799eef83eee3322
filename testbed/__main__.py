"""``python -m testbed run SCENARIO`` / ``python -m testbed list``: see testbed/scenarios.py.

Exit status: 0 when the scenario's pass condition holds (or it was skipped because this
machine cannot run it: the last line says ``skipped: ...``), 1 when it does not, 2 on a
setup error or a bad argument (one line on stderr naming it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from .scenarios import SCENARIOS, SETUP, SetupError, run

USAGE_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (exit 2), without the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: {message} (see --help)\n")


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return n


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m testbed",
                description="Run named end-to-end scenarios: a population, our EIR (or a "
                            "third-party one) seeded from it, and the simulator, as processes.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("list", help="list the scenarios, one line each")
    r = sub.add_parser("run", help="run one scenario and print its report")
    r.add_argument("scenario", help="a name from `python -m testbed list`")
    r.add_argument("--out", type=Path,
                   help="directory for report.json, report.html and the logs "
                        "(default ./testbed-out/SCENARIO)")
    r.add_argument("--size", type=_positive, help="handsets in the population")
    r.add_argument("--count", type=_positive, help="requests to send")
    r.add_argument("--keep", action="store_true",
                   help="keep the population, registry and configs (OUT/work) after a pass; "
                        "they are always kept after a failure")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if a.command == "list":
        width = max(map(len, SCENARIOS))
        for sc in SCENARIOS.values():
            print(f"{sc.name:<{width}}  {sc.summary}")
        return 0
    if a.scenario not in SCENARIOS:
        print(f"python -m testbed: unknown scenario {a.scenario!r}; known: "
              f"{', '.join(SCENARIOS)}", file=sys.stderr)
        return USAGE_ERROR
    try:
        outcome = run(a.scenario, out=a.out, size=a.size, count=a.count, keep=a.keep)
    except SetupError as exc:
        print(f"python -m testbed: setup error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("python -m testbed: interrupted", file=sys.stderr)
        return 130
    if outcome.status == SETUP:
        print(f"python -m testbed: setup error: {outcome.message}", file=sys.stderr)
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
