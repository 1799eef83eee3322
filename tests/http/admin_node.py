"""A running EIR (`EirApp` in this process) with the admin API on, for the admin API tests.

Imported by tests/http/test_admin_*.py (pytest puts their folder on sys.path).
The registry is seeded through ``eir.policy.csvio`` (as ``eir registry
import`` does), the tokens are made by `add_token` (as ``eir admin token``
does), observations come from the S13 decision path (`Regime.check`) and a
flush. Everything binds 127.0.0.1 port 0.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from eir.admin.auth import add_token
from eir.app import EirApp
from eir.config import from_mapping
from eir.policy.csvio import import_csv
from eir.policy.sqlite import SqliteRegistry

# role -> (token name, networks)
CALLERS = {"ministry": ("alice", ()), "operator": ("op-a", ("40101",)),
           "police": ("pol", ()), "auditor": ("aud", ())}
OP_IMSI = "401010000000001"  # of op-a's network
OTHER_IMSI = "401020000000001"  # of another operator of the same country


def imei(n: int) -> str:
    """The n-th test IMEI (14 digits, a TAC of our own)."""
    return f"353325{n:08d}"


@dataclass
class AdminNode:
    app: EirApp
    url: str
    tokens: dict[str, str]  # role -> token
    tokens_file: Path
    access_log: Path

    def client(self, role: str | None = None, token: str | None = None) -> httpx.AsyncClient:
        tok = token if token is not None else self.tokens[role] if role else None
        headers = {"Authorization": f"Bearer {tok}"} if tok else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30)


@asynccontextmanager
async def admin_node(tmp: Path, csv: str, *, extra: dict[str, dict[str, object]] | None = None
                     ) -> AsyncIterator[AdminNode]:
    db = tmp / "eir.db"
    reg = SqliteRegistry(db)
    await reg.open()
    try:
        await import_csv(reg, io.BytesIO(csv.encode()), actor="seed")
    finally:
        await reg.close()
    tokens_file = tmp / "tokens.toml"
    tokens = {role: add_token(tokens_file, name, role, nets)
              for role, (name, nets) in CALLERS.items()}
    settings: dict[str, dict[str, object]] = {
        "server": {"listen": "127.0.0.1:0"},
        "registry": {"db": str(db), "reload_seconds": 0.2, "integrity_check": "off"},
        "metrics": {"enabled": False},
        "admin": {"enabled": True, "listen": "127.0.0.1:0", "tokens_file": str(tokens_file)},
    }
    for section, values in (extra or {}).items():
        settings.setdefault(section, {}).update(values)
    app = EirApp(from_mapping(settings).validate())
    await app.start()
    try:
        assert app.admin is not None
        yield AdminNode(app, app.admin.url, tokens, tokens_file, Path(f"{db}.access.log"))
    finally:
        await app.stop()
