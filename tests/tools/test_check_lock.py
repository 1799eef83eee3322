"""tools.check_lock: a dependency added to pyproject.toml and not re-locked fails CI in one line."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FILES = ("pyproject.toml", "requirements.lock", "requirements-test.lock")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A copy of the repository's pyproject and locks, to break one at a time."""
    for name in FILES:
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.check_lock", "--root", str(root)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_the_repository_locks_satisfy_pyproject() -> None:
    done = check(ROOT)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(
        r"lock: pyproject.toml is satisfied by the locks \(\d+ packages, all hashed\)\n",
        done.stdout,
    )


def test_a_new_dependency_not_relocked_is_one_line_naming_it(repo: Path) -> None:
    edit(repo / "pyproject.toml", '"pytest>=8",', '"pytest>=8",\n    "not-a-locked-package>=2.3",')
    done = check(repo)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1  # one line
    assert done.stderr.startswith(
        "lock: requirements-test.lock does not satisfy pyproject.toml: not-a-locked-package>=2.3 "
        "(not locked)"
    )
    assert done.stderr.endswith("; re-lock with: bash tools/lock.sh\n")
    assert "requirements.lock does not" not in done.stderr  # a test tool: runtime lock is fine


def test_a_raised_minimum_and_a_runtime_dependency_are_checked_in_both_locks(repo: Path) -> None:
    edit(repo / "pyproject.toml", '"rich>=13",', '"rich>=99",')
    done = check(repo)
    assert done.returncode == 1
    assert "requirements.lock does not satisfy pyproject.toml: rich>=99 (locked " in done.stderr
    assert "requirements-test.lock does not satisfy pyproject.toml: rich>=99" in done.stderr


def test_a_pin_without_a_hash_or_locks_that_disagree_fail(repo: Path) -> None:
    lock = repo / "requirements.lock"
    text = lock.read_text()
    pin = re.search(r"^aiosqlite==(\S+) \\\n(    --hash=\S+\s*\\?\n)+", text, re.M)
    assert pin is not None
    lock.write_text(text.replace(pin.group(0), "aiosqlite==0.20.0\n"))
    done = check(repo)
    assert done.returncode == 1
    assert "requirements.lock pins without a hash: aiosqlite" in done.stderr
    assert f"the two locks disagree: aiosqlite 0.20.0 vs {pin.group(1)}" in done.stderr
