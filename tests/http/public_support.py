"""Shared set-up of the public IMEI check's tests: a real EIR over a real SQLite registry.

Imported as ``public_support`` after the test module puts ``tests/http`` on sys.path (no
``__init__.py`` files: pytest runs in rootdir mode). The registry holds one IMEI of each
kind the page must explain, and private text (an owner's name, an IMSI, a case number,
an operator) that no public answer may show.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import import_text

from eir.app import EirApp
from eir.config import PublicSection, from_mapping
from eir.http import HttpServer
from eir.policy.model import luhn_check_digit
from eir.public import PublicCheck


def full(imei14: str) -> str:
    """The 15-digit IMEI a person reads off a phone: 14 digits and the Luhn check digit."""
    return imei14 + str(luhn_check_digit(imei14))


def typo(imei15: str) -> str:
    """The same IMEI with a wrong check digit."""
    return imei15[:14] + str((int(imei15[14]) + 1) % 10)


WHITE = full("49015420323751")
GREY = full("86768803654321")  # grey list, grace until GREY_DEADLINE
GREY_DEADLINE = "2026-12-20T09:00:00Z"  # 14:00 in Astana (UTC+5)
EXPIRED = full("86768803654322")  # grey list, grace over
STOLEN = full("35332510123456")
COUNTERFEIT = full("35332510123457")
CLONED = full("35332510123458")
UNKNOWN = full("35209900176149")  # on no list, never seen
SEEN = full("35209900176150")  # on no list, used on a home network (observed below)
ZEROS = "000000000000000"  # valid check digit, a configured invalid pattern

# what a public answer must never show
OWNER = "Aigerim Nurlanovna"
IMSI = "401017766554433"
OTHER_IMSI = "401019988776655"
CASE = "KUI-2026-004217"
OPERATOR = "kcell-core-mme7"
SOURCE = "police-almaty-district-3"
PRIVATE = (OWNER, IMSI, OTHER_IMSI, CASE, OPERATOR, SOURCE, "Nurlanovna", "7766554433",
           "77011234567", "phone_taken_from", "owner_recovered", "counterfeit", "cloned",
           "pending_verification", "grace_expired", "paired_exception", "evidence", "police")

REGISTRY = f"""imei,list,reason,imsi,source,note,since,grace_until,evidence
{WHITE[:14]},white,registered,,ministry,"receipt of {OWNER}",2026-01-10T00:00:00Z,,{CASE}
{GREY[:14]},grey,,,operator,imported by {OWNER},2026-11-20T09:00:00Z,{GREY_DEADLINE},
{EXPIRED[:14]},grey,pending_verification,,operator,,2026-10-01T00:00:00Z,2026-10-31T00:00:00Z,
{STOLEN[:14]},black,stolen,,{SOURCE},"phone_taken_from {OWNER}, +77011234567",2026-11-01,,{CASE}
{STOLEN[:14]},exception,owner_recovered,{IMSI},{SOURCE},{OWNER}'s own SIM,,,{CASE}
{COUNTERFEIT[:14]},black,counterfeit,,ministry,,2026-11-01T00:00:00Z,,
{CLONED[:14]},black,cloned,,ministry,genuine handset of {OWNER},2026-11-01T00:00:00Z,,{CASE}
"""

# the node's clock: a fixed instant, so that deadlines are known
NOW = "2026-12-01T06:00:00Z"


def section(**keys: Any) -> PublicSection:
    """[public] on a free port, a short answer floor (tests want speed), generous limits."""
    base = PublicSection(enabled=True, listen="127.0.0.1:0", answer_floor_ms=5.0,
                         rate_per_minute=6000.0, burst=1000, node_rate_per_second=1000.0,
                         node_burst=1000)
    return replace(base, **keys)


def config(tmp_path: Path, public: dict[str, Any] | None = None) -> Any:
    return from_mapping({
        "server": {"listen": "127.0.0.1:0"},
        "registry": {"db": str(tmp_path / "eir.db")},
        "metrics": {"enabled": False},
        "clock": {"test_mode": True, "start": NOW},
        **({"public": public} if public else {}),
    }).validate()


@dataclass
class Node:
    eir: EirApp
    check: PublicCheck
    http: HttpServer

    @property
    def url(self) -> str:
        return self.http.url


async def make_registry(tmp_path: Path) -> None:
    await import_text(tmp_path / "eir.db", REGISTRY)


async def observe_private_traffic(eir: EirApp) -> None:
    """S13 traffic that puts IMSIs and an operator into the observations, then written."""
    assert eir.regime is not None
    eir.regime.check(STOLEN[:14], IMSI, "01", OPERATOR)
    eir.regime.check(SEEN[:14], OTHER_IMSI, "01", OPERATOR)
    eir.regime.check(WHITE[:14], OTHER_IMSI, "01", OPERATOR)
    await eir.flush()


@asynccontextmanager
async def node(tmp_path: Path, **keys: Any) -> AsyncIterator[Node]:
    """A started EIR over the test registry, and a public check served on its own port."""
    await make_registry(tmp_path)
    eir = EirApp(config(tmp_path))
    await eir.start()
    try:
        await observe_private_traffic(eir)
        check = PublicCheck(section(**keys), lambda: eir.regime)
        http = HttpServer.listen("public", check.section, check)
        await http.start()
        try:
            yield Node(eir, check, http)
        finally:
            await http.stop()
    finally:
        await eir.stop()
