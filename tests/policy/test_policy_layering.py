"""DESIGN.md section 3: eir.policy never imports Diameter code; the engine no backend."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import eir.policy

POLICY_DIR = Path(eir.policy.__file__).parent


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names.add(node.module)
    return names


def test_policy_never_imports_diameter_or_s13() -> None:
    for path in POLICY_DIR.rglob("*.py"):
        for name in imported_modules(path):
            assert not name.startswith(("eir.diameter", "eir.s13")), f"{path.name} imports {name}"


def test_engine_and_model_import_no_storage_backend() -> None:
    for module in ("engine.py", "model.py", "registry.py"):
        names = imported_modules(POLICY_DIR / module)
        assert not any(n.startswith(("eir.policy.sqlite", "aiosqlite", "sqlite3")) for n in names)


def test_hot_path_modules_load_without_aiosqlite() -> None:
    code = (
        "import sys, eir.policy.engine, eir.policy.registry; "
        "sys.exit('aiosqlite' in sys.modules or 'sqlite3' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
