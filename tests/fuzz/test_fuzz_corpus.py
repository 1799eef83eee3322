"""The kept fuzz corpus and every crasher, replayed through both targets; a short atheris run.

``corpus/TARGET/`` holds the seeds (``seeds.py``) and the inputs the long campaigns kept
because they reached new code; ``crashers/TARGET/`` holds every input that ever broke a
rule, so that a fixed bug stays fixed. Replaying them is plain, deterministic Python
(no atheris). The short run then lets libFuzzer mutate from the corpus for a few
thousand inputs per target in a subprocess: new findings land in a scratch directory and
fail the test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from targets import TARGETS  # noqa: E402

REPO = HERE.parents[1]


def _inputs(kind: str, target: str) -> list[Path]:
    d = HERE / kind / target
    return sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix != ".md") if d.is_dir() else []


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_corpus_replays_clean(target: str) -> None:
    files = _inputs("corpus", target)
    assert len(files) >= 10, f"the {target} corpus is missing (run tests/fuzz/seeds.py)"
    failures = []
    for path in files:
        try:
            TARGETS[target](path.read_bytes())
        except Exception as exc:  # report every failing file, not only the first
            failures.append(f"{path.name}: {type(exc).__name__}: {exc}"[:400])
    assert not failures, "\n".join(failures)


CRASHERS = [(t, p) for t in sorted(TARGETS) for p in _inputs("crashers", t)]


@pytest.mark.parametrize(("target", "path"), CRASHERS,
                         ids=[f"{t}/{p.name}" for t, p in CRASHERS])
def test_crasher_stays_fixed(target: str, path: Path) -> None:
    TARGETS[target](path.read_bytes())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_short_atheris_run_finds_nothing(target: str, tmp_path: Path) -> None:
    import atheris  # noqa: F401  (a test dependency: missing, it must fail here)

    runs = {"decoder": 6000, "peer": 2500}[target]
    new, art = tmp_path / "new", tmp_path / "artifacts"
    new.mkdir()
    art.mkdir()
    proc = subprocess.run(
        [sys.executable, str(HERE / "fuzz.py"), target, f"-runs={runs}", "-seed=1",
         f"-artifact_prefix={art}/", str(new), str(HERE / "corpus" / target)],
        cwd=REPO, capture_output=True, text=True, timeout=110)
    found = sorted(p.name for p in art.iterdir())
    assert proc.returncode == 0 and not found, (found, proc.stderr[-3000:])
    assert f"Done {runs} runs" in proc.stderr, proc.stderr[-2000:]
