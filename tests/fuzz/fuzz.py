"""Coverage-guided fuzzing of the two targets in ``targets.py`` with atheris (libFuzzer).

Usage, from the repository root (extra arguments go to libFuzzer)::

    .venv/bin/python tests/fuzz/fuzz.py decoder                       # until stopped
    .venv/bin/python tests/fuzz/fuzz.py peer -max_total_time=600      # 10 minutes
    .venv/bin/python tests/fuzz/fuzz.py peer -runs=2000               # what CI runs

With no corpus directory given, new inputs go to a scratch directory under /tmp and the
kept corpus ``tests/fuzz/corpus/TARGET`` is read as the seeds (libFuzzer writes to the
first directory only). A failure is written as ``crash-<sha1>`` to ``-artifact_prefix``
(default ``tests/fuzz/crashers/TARGET/``), where ``test_fuzz_corpus.py`` replays it
forever after. To keep what a campaign found, minimise it into the kept corpus::

    .venv/bin/python tests/fuzz/fuzz.py decoder -merge=1 tests/fuzz/corpus/decoder /tmp/new

Only the ``eir`` package is instrumented for coverage: the oracles in ``targets.py``
are not what should be explored.
"""

from __future__ import annotations

import logging
import shlex
import sys
import tempfile
from pathlib import Path

import atheris

HERE = Path(__file__).resolve().parent
# this tree's eir, not whichever one the environment has installed
sys.path[:0] = [str(HERE), str(HERE.parents[1])]

with atheris.instrument_imports(include=["eir"]):
    import targets

    # the S13 handler logs origin mismatches as warnings: not what a fuzz run wants to print
    # (set here, in the fuzzing process, never on import: pytest imports targets too)
    logging.getLogger("eir").setLevel(logging.CRITICAL)

DEFAULT_MAX_LEN = 8192  # deep enough for ~1,000 nested AVP headers; 64 KB would be slow


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in targets.TARGETS:
        print(f"usage: {argv[0]} {{{','.join(targets.TARGETS)}}} [libFuzzer args] [dirs]",
              file=sys.stderr)
        return 2
    name = argv[1]
    target = targets.TARGETS[name]
    args = argv[2:]
    flags = [a for a in args if a.startswith("-")]
    dirs = [a for a in args if not a.startswith("-")]
    if not dirs:
        dirs = [tempfile.mkdtemp(prefix=f"eir-fuzz-{name}-"), str(HERE / "corpus" / name)]
    if not any(f.startswith("-max_len=") for f in flags):
        flags.append(f"-max_len={DEFAULT_MAX_LEN}")
    if not any(f.startswith("-artifact_prefix=") for f in flags):
        crashers = HERE / "crashers" / name
        crashers.mkdir(parents=True, exist_ok=True)
        flags.append(f"-artifact_prefix={crashers}/")

    def one_input(data: bytes) -> None:
        target(data)

    # libFuzzer runs argv[0] again for -merge and -fork: a script that restarts this one
    # for the same target, with this interpreter
    again = Path(tempfile.mkdtemp(prefix="eir-fuzz-")) / f"fuzz-{name}"
    again.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} "
                     f"{shlex.quote(str(Path(__file__).resolve()))} {name} \"$@\"\n")
    again.chmod(0o755)
    atheris.Setup([str(again), *flags, *dirs], one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
