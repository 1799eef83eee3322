"""``python -m bench all [...]``: the whole performance suite (``bench.suite``).

The single benchmarks keep their own entry points (``python -m bench.ecr_bench``,
``python -m bench.regime_bench``, ``python -m bench.loadgen``, ...).
"""

from __future__ import annotations

import sys

USAGE = """usage: python -m bench all [--smoke] [--out DIR] [--sizes N,N,...] [...]
       python -m bench all --help

The single benchmarks run on their own: python -m bench.ecr_bench, bench.regime_bench,
bench.regime_path, bench.registry_bench, bench.observations_bench, bench.sim_bench,
bench.loadgen, bench.echo_server."""


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("all", "suite"):
        from bench import suite

        return suite.main(args[1:])
    print(USAGE, file=sys.stderr)
    return 0 if args and args[0] in ("-h", "--help") else 2


if __name__ == "__main__":
    sys.exit(main())
