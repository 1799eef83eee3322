"""The lock check: pyproject.toml's dependencies must be satisfied by the hash-pinned locks.

CI installs only what ``requirements-test.lock`` pins (``pip install --require-hashes``) and
then the project with ``--no-deps``, so a dependency added to pyproject.toml and never
re-locked would simply be missing, or an old version would stay installed below a raised
minimum. This check turns that into one line naming every unsatisfied requirement and the
command that fixes it (``bash tools/lock.sh``).

What is compared, by canonical name (PEP 503) and specifier (PEP 440):
  requirements.lock       [project] dependencies + [build-system] requires
  requirements-test.lock  the same + [project.optional-dependencies] test
Every pin must be exact (``==``) and carry at least one ``--hash``; a package in both locks
must have the same version in both. Markers are not evaluated: the locks are universal
(every platform's pins are listed, with their markers), so every requirement must be there.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

RELOCK = "bash tools/lock.sh"
# "name==version", an optional "; marker", an optional line continuation (uv's output format).
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+?)(?:\s*;\s*(.*?))?\s*(\\)?\s*$")
_HASH = re.compile(r"^\s*--hash=sha256:[0-9a-f]{64}\s*\\?\s*$")


@dataclass(frozen=True)
class Pin:
    name: str
    version: Version
    hashes: int


class LockError(Exception):
    """A lock file that cannot be read as a hash-pinned requirements file."""


def read_lock(path: Path) -> dict[str, Pin]:
    """The pins of a lock file written by tools/lock.sh, by canonical name."""
    pins: dict[str, Pin] = {}
    current: tuple[str, Version] | None = None
    hashes = 0

    def close() -> None:
        if current is not None:
            pins[current[0]] = Pin(current[0], current[1], hashes)

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise LockError(f"{path}: cannot be read ({exc.strerror})") from exc
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if _HASH.match(line):
            if current is None:
                raise LockError(f"{path}:{number}: a hash before any pin")
            hashes += 1
            continue
        match = _PIN.match(stripped)
        if match is None:
            raise LockError(f"{path}:{number}: not an exact pin (name==version): {stripped}")
        close()
        try:
            current = (canonicalize_name(match.group(1)), Version(match.group(2)))
        except InvalidVersion as exc:
            raise LockError(f"{path}:{number}: {exc}") from exc
        hashes = 0
    close()
    return pins


def _requirements(pyproject: dict[str, object], *, test: bool) -> list[Requirement]:
    project = pyproject.get("project")
    build = pyproject.get("build-system")
    texts: list[str] = []
    if isinstance(build, dict):
        texts += build.get("requires", [])
    if isinstance(project, dict):
        texts += project.get("dependencies", [])
        if test:
            texts += project.get("optional-dependencies", {}).get("test", [])
    try:
        return [Requirement(text) for text in texts]
    except InvalidRequirement as exc:
        raise LockError(f"pyproject.toml: {exc}") from exc


def unsatisfied(requirements: list[Requirement], pins: dict[str, Pin]) -> list[str]:
    """Each requirement the pins do not satisfy, as 'requirement (why)'."""
    problems = []
    for req in requirements:
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            problems.append(f"{req} (not locked)")
        elif not req.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{req} (locked {pin.version})")
    return problems


def check(root: Path) -> list[str]:
    """Every problem found, one short phrase each; empty when the locks are current."""
    try:
        pyproject = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        return [f"pyproject.toml cannot be read: {exc}"]
    problems: list[str] = []
    locks: dict[str, dict[str, Pin]] = {}
    for name, test in (("requirements.lock", False), ("requirements-test.lock", True)):
        try:
            pins = read_lock(root / name)
        except LockError as exc:
            problems.append(str(exc))
            continue
        locks[name] = pins
        bad = unsatisfied(_requirements(pyproject, test=test), pins)
        if bad:
            problems.append(f"{name} does not satisfy pyproject.toml: {', '.join(bad)}")
        unhashed = sorted(pin.name for pin in pins.values() if pin.hashes == 0)
        if unhashed:
            problems.append(f"{name} pins without a hash: {', '.join(unhashed)}")
    if len(locks) == 2:
        runtime, full = locks["requirements.lock"], locks["requirements-test.lock"]
        differ = sorted(
            f"{name} {pin.version} vs {full[name].version}"
            for name, pin in runtime.items()
            if name in full and full[name].version != pin.version
        )
        if differ:
            problems.append(f"the two locks disagree: {', '.join(differ)}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.check_lock",
        description="Check that the lock files satisfy pyproject.toml's dependencies.",
    )
    parser.add_argument("--root", type=Path, default=Path("."), help="repository root")
    args = parser.parse_args(argv)
    try:
        problems = check(args.root)
    except LockError as exc:
        problems = [str(exc)]
    if problems:
        # One line: what is wrong and the command that fixes it.
        print(f"lock: {'; '.join(problems)}; re-lock with: {RELOCK}", file=sys.stderr)
        return 1
    pins = read_lock(args.root / "requirements-test.lock")
    print(f"lock: pyproject.toml is satisfied by the locks ({len(pins)} packages, all hashed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
