"""The national regime end to end: the real server over loopback, driven through 40 days.

The EIR runs as a process (``eir serve``) with a test clock at one simulated
day per real second, anchored a few seconds in the future so this test
knows exactly which simulated instant each ECR lands on. Lists, TACs and
history are provisioned with the CLI; decisions come back as S13 answers.
Each row of the scenario table names the simulated day it is checked on,
the device, the IMSI and the expected Equipment-Status; the margins around
each day are at least half a simulated day (half a real second).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from eir.diameter import messages as m
from eir.diameter.client import DiameterClient
from eir.diameter.codec import Message
from eir.diameter.constants import AvpCode, Vendor
from eir.diameter.dictionary import default_dictionary
from eir.probe import ecr
from testbed.eirproc import EirProcess, run_cli

DAY = 1.0  # real seconds per simulated day
START = "2026-01-01T00:00:00+00:00"
MME_HOST, MME_REALM = "mme1.epc.mnc001.mcc401.3gppnetwork.org", "epc.mnc001.mcc401.3gppnetwork.org"

WHITE = "35209900176148"  # registered
STOLEN = "35332510123456"  # police report; its owner's pair is an exception
OWNER = "401011111111111"
FRESH = "35420017000001"  # never seen before day 0
LEGAL = "35420017000002"  # first seen day 0, legalised on day 10
OLD = "35420017000003"  # first seen in 2025, before the cut-off
ROAMER_DEVICE = "35420017000004"
UNKNOWN_TAC = "99999999000001"
CLONED = "35420017000005"  # white, its IMEI copied into 59 other phones
M2M = "86000001000001"
CLONE_OWNER = "401019000000000"
CLONES = [f"4010190000{i:05d}" for i in range(1, 60)]
HOME = "401017000000001"


def status_of(answer: Message) -> str:
    es = answer.find(AvpCode.EQUIPMENT_STATUS, Vendor.TGPP)
    if es is None:
        return "UNKNOWN"
    return {0: "WHITELISTED", 1: "BLACKLISTED", 2: "GREYLISTED"}[es.as_u32()]


@pytest.fixture
def provisioned(tmp_path: Path) -> tuple[Path, Path]:
    db = tmp_path / "eir.db"
    lists = tmp_path / "lists.csv"
    lists.write_text(
        "imei,list,reason,imsi,source,evidence\n"
        f"{WHITE},white,registered,,ministry,\n"
        f"{CLONED},white,registered,,ministry,\n"
        f"{STOLEN},black,stolen,,police,case 17/2026\n"
        f"{STOLEN},exception,,{OWNER},police,owner verified\n")
    tacs = tmp_path / "tac.csv"
    tacs.write_text("tac,brand,model,class\n35209900,Acme,A1,smartphone\n"
                    "35332510,Acme,A2,smartphone\n35420017,Bolt,B1,smartphone\n"
                    "86000001,Modul,M1,M2M\n")
    history = tmp_path / "history.csv"
    history.write_text("imei,imsi,operator,first_seen,last_seen\n"
                       f"{OLD},{HOME},{MME_REALM},2025-03-01T10:00:00Z,2025-12-30T10:00:00Z\n")
    for args in (("registry", "import", "--quiet", "--db", str(db), str(lists)),
                 ("registry", "import-tac", "--db", str(db), str(tacs)),
                 ("registry", "import-observations", "--db", str(db), str(history))):
        done = run_cli(*args)
        assert done.returncode == 0, done.stderr
    return db, tmp_path


class Sim:
    """The MME side: one Diameter connection, ECRs sent at chosen simulated days."""

    def __init__(self, client: DiameterClient, anchor: float) -> None:
        self.client = client
        self.anchor = anchor
        self.n = 0

    async def at_day(self, day: float) -> None:
        delay = self.anchor + day * DAY - time.time()
        assert delay > -0.3 * DAY, f"scenario fell behind: day {day} was {-delay:.2f} s ago"
        if delay > 0:
            await asyncio.sleep(delay)

    async def check(self, imei: str, imsi: str | None) -> str:
        self.n += 1
        req = ecr(MME_HOST, MME_REALM, "test.local", imei, "01", imsi, session=self.n)
        return status_of(await self.client.request(req, 5.0))


@pytest.fixture
async def running(provisioned: tuple[Path, Path]) -> AsyncIterator[tuple[Sim, Path, Path]]:
    db, tmp = provisioned
    anchor = time.time() + 6.0  # after the server's start-up
    cfg = tmp / "eir.toml"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(anchor)) + f"{anchor % 1:.6f}"[1:]
    cfg.write_text(f"""
[registry]
reload_seconds = 0.2
[observations]
flush_seconds = 0.2
[notifications]
interval_seconds = 0.3
[clock]
test_mode = true
start = "{START}"
speed = {86400 / DAY}
anchor = "{stamp}+00:00"
""")
    with EirProcess(db, config=cfg, origin_realm="test.local") as eir:
        client = DiameterClient(m.Identity(MME_HOST, MME_REALM), default_dictionary())
        await client.connect("127.0.0.1", eir.port, 5.0)
        try:
            yield Sim(client, anchor), db, cfg
        finally:
            await client.close()
        assert "Traceback" not in eir.log(), eir.log()


async def test_scenario_table_through_40_days(running: tuple[Sim, Path, Path]) -> None:
    sim, db, cfg = running
    await sim.at_day(0.2)
    assert await sim.check(FRESH, HOME) == "GREYLISTED"  # unknown, seen first today
    assert await sim.check(LEGAL, "401017000000002") == "GREYLISTED"
    assert await sim.check(WHITE, HOME) == "WHITELISTED"
    assert await sim.check(OLD, HOME) == "WHITELISTED"  # grandfathered: seen in 2025
    assert await sim.check(ROAMER_DEVICE, "250011234567890") == "WHITELISTED"  # roamer
    assert await sim.check(STOLEN, "401015555555555") == "BLACKLISTED"  # thief's SIM
    assert await sim.check(STOLEN, OWNER) == "WHITELISTED"  # paired owner
    assert await sim.check(STOLEN, "250011234567890") == "BLACKLISTED"  # roamers too
    assert await sim.check(UNKNOWN_TAC, HOME) == "BLACKLISTED"
    assert await sim.check(M2M, HOME) == "WHITELISTED"  # exempt class
    # the clone cluster: the owner first, then 59 copies of the IMEI
    assert await sim.check(CLONED, CLONE_OWNER) == "WHITELISTED"
    for imsi in CLONES:
        await sim.check(CLONED, imsi)
    assert await sim.check(CLONED, CLONE_OWNER) == "WHITELISTED"
    assert {await sim.check(CLONED, imsi) for imsi in CLONES} == {"GREYLISTED"}

    await sim.at_day(10.2)
    done = run_cli("registry", "legalise", "--db", str(db), "--evidence", "receipt 42",
                   "--actor", "test", LEGAL)
    assert done.returncode == 0, done.stderr
    await sim.at_day(11.4)  # one reload period (0.2 s) later, with margin
    assert await sim.check(LEGAL, "401017000000002") == "WHITELISTED"

    await sim.at_day(29.4)
    assert await sim.check(FRESH, HOME) == "GREYLISTED"  # day 29: grace not over
    # the cluster keeps attaching (the clone window counts IMSIs seen in the last 30 days)
    assert {await sim.check(CLONED, imsi) for imsi in CLONES} == {"GREYLISTED"}
    await sim.at_day(31.4)
    assert await sim.check(FRESH, HOME) == "BLACKLISTED"  # day 31: grace over
    assert {await sim.check(CLONED, imsi) for imsi in CLONES} == {"BLACKLISTED"}
    assert await sim.check(CLONED, CLONE_OWNER) == "WHITELISTED"
    assert await sim.check(LEGAL, "401017000000002") == "WHITELISTED"
    assert await sim.check(STOLEN, OWNER) == "WHITELISTED"

    await sim.at_day(32.5)  # let the notifier run once more
    con = sqlite3.connect(db)
    try:
        kinds = {(imei, imsi): sorted(k for (k,) in con.execute(
            "SELECT kind FROM outbox WHERE imei = ? AND imsi = ?", (imei, imsi)))
            for imei, imsi in ((FRESH, HOME), (LEGAL, "401017000000002"),
                               (CLONED, CLONES[0]), (WHITE, HOME))}
    finally:
        con.close()
    assert kinds[(FRESH, HOME)] == ["day0", "day20", "day27", "expiry"]
    assert kinds[(LEGAL, "401017000000002")] == ["day0"]  # legalised before day 20
    assert kinds[(CLONED, CLONES[0])] == ["day0", "day20", "day27", "expiry"]
    assert kinds[(WHITE, HOME)] == []

    # The decisions were counted per reason, and the dry run agrees and observes nothing.
    stats = run_cli("stats", "--db", str(db))
    assert stats.returncode == 0 and "clone_suspected" in stats.stdout, stats.stderr
    dry = run_cli("decide", "--db", str(db), "--config", str(cfg), FRESH, "--imsi", HOME,
                  "--at", "2026-01-15T00:00:00Z")
    assert dry.returncode == 0, dry.stderr
    out = json.loads(dry.stdout)
    assert (out["status"], out["reason"], out["rule"]) == (
        "GREYLISTED", "pending_verification", "unknown")


def test_tampering_with_one_audit_record_is_detected(provisioned: tuple[Path, Path]) -> None:
    db, _ = provisioned
    for args in (("registry", "report-stolen", "--evidence", "case 1", WHITE),
                 ("registry", "recovered", "--evidence", "returned", WHITE),
                 ("registry", "legalise", "--evidence", "receipt 7", FRESH)):
        done = run_cli(*args, "--db", str(db))
        assert done.returncode == 0, done.stderr
    ok = run_cli("audit", "verify", "--db", str(db))
    assert ok.returncode == 0 and "intact: 6 record(s)" in ok.stdout, ok.stdout + ok.stderr
    head = ok.stdout.split("head ")[1].strip()
    assert run_cli("audit", "verify", "--db", str(db), "--expect-head", head).returncode == 0
    con = sqlite3.connect(db)
    try:
        con.execute("DROP TRIGGER change_log_no_update")  # what an intruder would do
        con.execute("UPDATE change_log SET evidence = 'forged' WHERE kind = 'report-stolen'")
        con.commit()
    finally:
        con.close()
    bad = run_cli("audit", "verify", "--db", str(db))
    assert bad.returncode == 1
    assert "BROKEN" in bad.stderr and "record 4" in bad.stderr, bad.stderr
