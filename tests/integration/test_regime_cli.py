"""The regime's command line, as an operator or the ministry runs it.

``eir decide`` (read-only decisions with their rule and facts), ``eir registry show``,
the lifecycle actions, TAC and history imports, the audit trail, ``eir stats``,
``eir registry prune`` and ``eir policy preview``. Most commands run in-process
through `eir.cli.main` (fast); a few go through a real ``eir`` process
(`testbed.eirproc.run_cli`) to hold the README's lines end to end. Every SQLite
file lives under tmp_path; counts are read back with plain ``sqlite3``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

import pytest

from eir.cli import main
from eir.policy import notify
from eir.policy.model import Decision, Status, from_epoch, to_epoch
from eir.policy.sqlite import SqliteRegistry
from testbed.eirproc import run_cli

DAY = 86_400

WHITE = "49015420323751"
STOLEN = "35332510123456"
ILLEGAL = "35209900176148"
GREY = "86768803654321"  # grey since 2026-01-01: grace until 2026-01-31
UNKNOWN = "11111111111111"
OWNER = "401011234567890"  # the stolen phone's owner's SIM (exception pair)
HOME = "401029999999999"
ROAMER = "250011234567890"

REGISTRY = f"""imei,list,reason,imsi,source,since,evidence
{WHITE},white,registered,,ministry,2025-01-01T00:00:00Z,
{STOLEN},black,stolen,,police,2026-01-01T00:00:00Z,case 1
{ILLEGAL},black,illegal_import,,ministry,2026-01-01T00:00:00Z,customs 9
{GREY},grey,pending_verification,,operator,2026-01-01T00:00:00Z,
{STOLEN},exception,owner_recovered,{OWNER},police,,
"""

ONE_LINE_DONE = re.compile(r"^eir: (\S+) (\d{14}): done \(audit record (\d+)\)")


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def line(self) -> str:
        """The one line on standard error."""
        lines = self.err.strip().splitlines()
        assert len(lines) == 1, self.err
        return lines[0]


class Eir:
    """``eir ...`` in-process against one registry file."""

    def __init__(self, tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.tmp = tmp
        self.db = tmp / "eir.db"
        self.capsys = capsys

    def __call__(self, *args: str, db: bool = True) -> Run:
        code = main([*args, "--db", str(self.db)] if db else list(args))
        cap = self.capsys.readouterr()
        return Run(code, cap.out, cap.err)

    def ok(self, *args: str, db: bool = True) -> Run:
        run = self(*args, db=db)
        assert run.code == 0, run.err
        return run

    def refused(self, *args: str, db: bool = True) -> str:
        """The command fails with exit 1 and one line on standard error; returns it."""
        run = self(*args, db=db)
        assert run.code == 1, (run.code, run.out, run.err)
        assert run.out == ""
        return run.line()

    def decide(self, imei: str, *args: str) -> dict[str, Any]:
        out: dict[str, Any] = self.ok("decide", imei, *args).json()
        return out

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return path

    def count(self, table: str) -> int:
        with closing(sqlite3.connect(self.db)) as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        with closing(sqlite3.connect(self.db)) as conn:
            return list(conn.execute(sql).fetchall())

    def audit(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in
                self.ok("audit", "log", "--limit", "100000").out.splitlines()]

    def verify(self) -> int:
        """`eir audit verify` says intact; returns its record count."""
        line = self.ok("audit", "verify").out.strip()
        m = re.fullmatch(r"eir: audit trail intact: (\d+) record\(s\), head [0-9a-f]{64}", line)
        assert m is not None, line
        return int(m.group(1))


@pytest.fixture
def eir(tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> Eir:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EIR_ACTOR", "tester")
    return Eir(tmp_path, capsys)


@pytest.fixture
def listed(eir: Eir) -> Eir:
    """A registry with the REGISTRY entries imported."""
    eir.ok("registry", "import", "--quiet", str(eir.file("list.csv", REGISTRY)))
    return eir


def observations(*rows: tuple[str, str, str, str, str]) -> str:
    lines = ["imei,imsi,operator,first_seen,last_seen", *(",".join(r) for r in rows)]
    return "\n".join(lines) + "\n"


def stamp(t: float) -> str:
    return from_epoch(t)


# -- the README's demo lines, through a real process --------------------------------------------


def test_readme_demo_lines_hold(tmp_path: Path) -> None:
    db = str(tmp_path / "eir-demo.db")
    with as_file(files("eir") / "data" / "demo-registry.csv") as demo:
        res = run_cli("registry", "import", "--db", db, str(demo))
    assert res.returncode == 0, res.stderr

    def decide(*args: str) -> dict[str, Any]:
        res = run_cli("decide", *args, "--db", db)
        assert res.returncode == 0, res.stderr
        out: dict[str, Any] = json.loads(res.stdout)
        return out

    stolen = decide("35332510123456")
    assert (stolen["status"], stolen["reason"], stolen["rule"]) == (
        "BLACKLISTED", "stolen", "black")
    owner = decide("35332510123456", "--imsi", "401011234567890")
    assert (owner["status"], owner["reason"], owner["rule"]) == (
        "WHITELISTED", "paired_exception", "paired_exception")
    assert owner["facts"]["paired_exception"] is True
    grey = decide("86768803654321")
    assert (grey["status"], grey["reason"], grey["rule"]) == (
        "GREYLISTED", "pending_verification", "grey")
    assert grey["deadline"] is not None
    with closing(sqlite3.connect(db)) as conn:  # decide observed nothing
        assert conn.execute("SELECT COUNT(*) FROM observation").fetchone() == (0,)


# -- eir decide ------------------------------------------------------------------------------


def test_decide_listed_devices(listed: Eir) -> None:
    at = "2026-01-10T00:00:00Z"
    white = listed.decide(WHITE, "--at", at)
    assert {k: white[k] for k in ("status", "reason", "rule", "list", "deadline")} == {
        "status": "WHITELISTED", "reason": "registered", "rule": "white", "list": "white",
        "deadline": None}
    assert white["imei"] == WHITE and white["at"] == at
    assert white["facts"]["entry"] == {"list": "white", "reason": "registered",
                                       "since": "2025-01-01T00:00:00Z"}

    stolen = listed.decide(STOLEN + "7", "--at", at)  # a 15th digit is ignored
    assert (stolen["status"], stolen["reason"], stolen["rule"]) == (
        "BLACKLISTED", "stolen", "black")
    owner = listed.decide(STOLEN, "--imsi", OWNER, "--at", at)
    assert (owner["status"], owner["rule"]) == ("WHITELISTED", "paired_exception")
    assert owner["imsi"] == OWNER and owner["facts"]["paired_exception"] is True
    other = listed.decide(STOLEN, "--imsi", HOME, "--at", at)
    assert (other["status"], other["facts"]["paired_exception"]) == ("BLACKLISTED", False)
    # a roamer is exempt from registration, never from the black list
    roaming_thief = listed.decide(STOLEN, "--imsi", ROAMER, "--at", at)
    assert (roaming_thief["status"], roaming_thief["rule"]) == ("BLACKLISTED", "black")
    assert roaming_thief["facts"]["roamer"] is True


def test_decide_unknown_device_starts_grace_at_the_check(listed: Eir) -> None:
    at = "2026-03-01T12:00:00Z"
    d = listed.decide(UNKNOWN, "--at", at)
    assert (d["status"], d["reason"], d["rule"], d["list"]) == (
        "GREYLISTED", "pending_verification", "unknown", None)
    assert d["deadline"] == "2026-03-31T12:00:00Z"  # at + 30 days
    assert d["detail"] == "30 day(s) of grace left"
    assert d["facts"]["entry"] is None
    assert d["facts"]["first_home_sighting"] == at
    assert d["facts"]["roamer"] is False and d["facts"]["tac_known"] is None
    with_imsi = listed.decide(UNKNOWN, "--imsi", HOME, "--at", at)
    assert with_imsi["deadline"] == d["deadline"] and with_imsi["facts"]["imsis_seen"] == 1


def test_decide_roamer(listed: Eir) -> None:
    d = listed.decide(UNKNOWN, "--imsi", ROAMER, "--at", "2026-03-01T00:00:00Z")
    assert (d["status"], d["reason"], d["rule"], d["deadline"]) == (
        "WHITELISTED", "roaming_exempt", "roaming", None)
    assert d["imsi"] == ROAMER and d["facts"]["roamer"] is True
    assert d["facts"]["first_home_sighting"] is None  # a roamer starts no clock


@pytest.mark.parametrize(("at", "status", "reason", "detail"), [
    ("2026-01-01T00:00:00Z", "GREYLISTED", "pending_verification", "30 day(s) of grace left"),
    ("2026-01-30T23:59:59Z", "GREYLISTED", "pending_verification", "1 day(s) of grace left"),
    ("2026-01-31T00:00:00Z", "BLACKLISTED", "grace_expired", "grace period over"),
    ("2026-06-01T00:00:00+05:00", "BLACKLISTED", "grace_expired", "grace period over"),
])
def test_decide_grey_entry_before_and_after_its_grace(listed: Eir, at: str, status: str,
                                                      reason: str, detail: str) -> None:
    d = listed.decide(GREY, "--at", at)
    assert (d["status"], d["reason"], d["rule"], d["list"], d["detail"]) == (
        status, reason, "grey", "grey", detail)
    assert d["deadline"] == "2026-01-31T00:00:00Z"  # since + 30 days, black from that instant
    assert d["at"] == from_epoch(to_epoch(at))


def test_decide_observes_and_writes_nothing(listed: Eir) -> None:
    before = (listed.count("change_log"), listed.count("list_entry"))
    for imei, extra in ((UNKNOWN, ()), (UNKNOWN, ("--imsi", HOME)), (GREY, ("--imsi", ROAMER)),
                        (WHITE, ("--sv", "01")), (STOLEN, ("--imsi", OWNER))):
        listed.decide(imei, *extra)
    assert listed.count("observation") == 0
    assert listed.count("operator") == 0
    assert (listed.count("change_log"), listed.count("list_entry")) == before
    # the same question twice: the first dry run did not start a clock for the second
    a = listed.decide(UNKNOWN, "--at", "2026-05-01T00:00:00Z")
    b = listed.decide(UNKNOWN, "--at", "2026-07-01T00:00:00Z")
    assert (a["status"], b["status"]) == ("GREYLISTED", "GREYLISTED")
    assert b["deadline"] == "2026-07-31T00:00:00Z"


@pytest.mark.parametrize("imei", ["12345", "1234567890123456", "3533251012345a",
                                  "00000000000000", "000000000000000"])
def test_decide_malformed_imei_is_blacklisted(listed: Eir, imei: str) -> None:
    d = listed.decide(imei)
    assert (d["status"], d["reason"], d["rule"]) == ("BLACKLISTED", "malformed", "malformed")
    assert d["imei"] == imei


def test_decide_bad_arguments_are_one_line(eir: Eir, listed: Eir) -> None:
    line = listed.refused("decide", UNKNOWN, "--imsi", "40101x")
    assert line.startswith("eir: ") and "--imsi" in line and "40101x" in line
    assert "--imsi" in listed.refused("decide", UNKNOWN, "--imsi", "1234")
    line = listed.refused("decide", UNKNOWN, "--at", "next tuesday")
    assert "--at" in line and "next tuesday" in line
    missing = eir.tmp / "nope.db"
    line = eir.refused("decide", UNKNOWN, "--db", str(missing), db=False)
    assert "no such registry" in line and str(missing) in line
    assert not missing.exists()  # a read-only question creates no registry
    bad = listed.file("bad.toml", "[policy]\ngrace_days = -1\n")
    line = listed.refused("decide", UNKNOWN, "--config", str(bad))
    assert line.startswith("eir: config:") and "grace_days" in line


def test_decide_follows_the_config(listed: Eir) -> None:
    at = "2026-03-01T00:00:00Z"
    short = listed.file("short.toml", "[policy]\ngrace_days = 10\n")
    d = listed.decide(UNKNOWN, "--at", at, "--config", str(short))
    assert d["deadline"] == "2026-03-11T00:00:00Z"
    grey = listed.decide(GREY, "--at", "2026-01-15T00:00:00Z", "--config", str(short))
    assert (grey["status"], grey["reason"]) == ("BLACKLISTED", "grace_expired")

    reject = listed.file("reject.toml", '[policy]\nunknown_equipment = "reject"\n')
    d = listed.decide(UNKNOWN, "--at", at, "--config", str(reject))
    assert (d["status"], d["reason"], d["rule"]) == ("UNKNOWN", "unknown", "unknown")

    no_black = listed.file("order.toml",
                           '[policy]\nrule_order = ["malformed", "white", "unknown"]\n')
    d = listed.decide(STOLEN, "--at", at, "--config", str(no_black))
    assert (d["status"], d["rule"]) == ("GREYLISTED", "unknown")

    kz_ru = listed.file("home.toml", '[policy]\nhome_mccs = ["401", "250"]\n')
    d = listed.decide(UNKNOWN, "--imsi", ROAMER, "--at", at, "--config", str(kz_ru))
    assert (d["status"], d["rule"]) == ("GREYLISTED", "unknown")


def test_decide_runs_on_the_test_clock(listed: Eir) -> None:
    clock = listed.file("clock.toml",
                        '[clock]\ntest_mode = true\nstart = "2030-01-01T00:00:00Z"\n')
    d = listed.decide(UNKNOWN, "--config", str(clock))
    assert 0 <= to_epoch(d["at"]) - to_epoch("2030-01-01T00:00:00Z") <= 5
    unguarded = listed.file("unguarded.toml", '[clock]\nstart = "2030-01-01T00:00:00Z"\n')
    line = listed.refused("decide", UNKNOWN, "--config", str(unguarded))
    assert "clock.test_mode" in line


def test_decide_with_a_tac_database(listed: Eir) -> None:
    tacs = listed.file("tac.csv", "tac,brand,model,class\n11111111,Acme,Tracker,M2M\n"
                                  "35332510,Acme,Phone,smartphone\n")
    res = listed.ok("registry", "import-tac", str(tacs))
    assert "imported 2 TACs" in res.line()
    m2m = listed.decide(UNKNOWN, "--at", "2026-03-01T00:00:00Z")
    assert (m2m["status"], m2m["reason"], m2m["rule"]) == (
        "WHITELISTED", "exempt_class", "exempt_class")
    assert m2m["facts"]["tac_known"] is True and m2m["facts"]["device_class"] == "m2m"
    missing = listed.decide("99999999000001")
    assert (missing["status"], missing["reason"]) == ("BLACKLISTED", "unknown_tac")
    assert missing["facts"]["tac_known"] is False
    # listed entries come first (rules 2-3), and roamers skip the TAC rules
    assert listed.decide(STOLEN)["reason"] == "stolen"
    assert listed.decide("99999999000001", "--imsi", ROAMER)["reason"] == "roaming_exempt"


def test_decide_ranges_and_software_versions(listed: Eir) -> None:
    ranges = listed.file("ranges.csv", """imei,list,reason,sv,since
77777777,black,counterfeit,,2026-01-01T00:00:00Z
77777777000000-77777777499999,grey,pending_verification,,2026-01-01T00:00:00Z
77777777000001,white,registered,05,2026-01-01T00:00:00Z
""")
    listed.ok("registry", "import", "--quiet", str(ranges))
    at = ("--at", "2026-01-05T00:00:00Z")
    assert listed.decide("77777777900000", *at)["reason"] == "counterfeit"  # the TAC
    grey = listed.decide("77777777000002", *at)  # the narrower range wins
    assert (grey["status"], grey["deadline"]) == ("GREYLISTED", "2026-01-31T00:00:00Z")
    assert listed.decide("77777777000001", "--sv", "05", *at)["reason"] == "registered"
    assert listed.decide("77777777000001", "--sv", "06", *at)["status"] == "GREYLISTED"


@pytest.mark.parametrize("at", ["9999-12-31T23:59:59Z", "0001-01-01T00:00:00+05:00"])
def test_decide_at_out_of_range_is_one_line(listed: Eir, at: str) -> None:
    assert "--at" in listed.refused("decide", UNKNOWN, "--at", at)


def test_decide_uses_imported_history(listed: Eir) -> None:
    history = observations(
        (UNKNOWN, HOME, "op-a", "2025-01-01T00:00:00Z", "2026-02-01T00:00:00Z"),
        ("22222222222222", HOME, "op-a", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"),
        ("33333333333333", ROAMER, "op-b", "2025-01-01T00:00:00Z", "2026-01-02T00:00:00Z"),
    )
    listed.ok("registry", "import-observations", str(listed.file("obs.csv", history)))
    at = "2026-03-01T00:00:00Z"
    old = listed.decide(UNKNOWN, "--at", at)
    assert (old["status"], old["reason"], old["rule"]) == (
        "WHITELISTED", "grandfathered", "grandfathered")
    assert old["facts"]["first_home_sighting"] == "2025-01-01T00:00:00Z"
    new = listed.decide("22222222222222", "--at", at)
    assert (new["status"], new["reason"], new["deadline"]) == (
        "BLACKLISTED", "grace_expired", "2026-01-31T00:00:00Z")
    # sightings in roaming grandfather nothing: the clock starts at the home check
    roamed = listed.decide("33333333333333", "--imsi", HOME, "--at", at)
    assert (roamed["status"], roamed["deadline"]) == ("GREYLISTED", "2026-03-31T00:00:00Z")
    assert listed.count("observation") == 3


# -- eir registry show -------------------------------------------------------------------------


def test_show_entry_decision_observations_history(listed: Eir) -> None:
    history = observations(
        (GREY, HOME, "op-a", "2026-01-02T00:00:00Z", "2026-01-05T00:00:00Z"),
        (GREY, HOME, "op-b", "2026-01-01T00:00:00Z", "2026-01-03T00:00:00Z"),
    )
    listed.ok("registry", "import-observations", str(listed.file("obs.csv", history)))
    listed.ok("registry", "legalise", GREY, "--evidence", "receipt 42", "--imsi", OWNER)
    shown = listed.ok("registry", "show", GREY).json()
    assert {"imei", "list", "reason", "source", "since", "pairs", "decision_now",
            "observations", "history", "pending_deadlines", "notifications"} <= set(shown)
    assert (shown["imei"], shown["list"], shown["reason"], shown["source"]) == (
        GREY, "white", "legalised", "legalisation")
    assert [p["imsi"] for p in shown["pairs"]] == [OWNER]
    now = shown["decision_now"]
    assert (now["status"], now["reason"], now["rule"], now["deadline"]) == (
        "WHITELISTED", "legalised", "white", None)
    assert abs(to_epoch(now["at"]) - time.time()) < 60
    assert shown["observations"] == [
        {"imsi": HOME, "operator": "op-b", "first_seen": "2026-01-01T00:00:00Z",
         "last_seen": "2026-01-03T00:00:00Z"},
        {"imsi": HOME, "operator": "op-a", "first_seen": "2026-01-02T00:00:00Z",
         "last_seen": "2026-01-05T00:00:00Z"},
    ]
    [legalise] = [h for h in shown["history"] if h["action"] == "legalise"]
    assert (legalise["actor"], legalise["evidence"]) == ("tester", "receipt 42")
    assert legalise["summary"]["before"] == {"list": "grey", "reason": "pending_verification",
                                             "source": "operator"}
    assert legalise["summary"]["after"]["list"] == "white"
    assert legalise["summary"]["pair"] == OWNER
    assert shown["pending_deadlines"] == [] and shown["notifications"] == []


def test_show_history_lists_lifecycle_actions_in_order(listed: Eir) -> None:
    listed.ok("registry", "report-stolen", WHITE, "--evidence", "case 7")
    listed.ok("registry", "recovered", WHITE, "--evidence", "found")
    listed.ok("registry", "exception-add", WHITE, HOME, "--evidence", "owner")
    shown = listed.ok("registry", "show", WHITE).json()
    actions = [(h["action"], h["evidence"]) for h in shown["history"]]
    assert actions[-3:] == [("report-stolen", "case 7"), ("recovered", "found"),
                            ("exception-add", "owner")]
    seqs = [h["seq"] for h in shown["history"]]
    assert seqs == sorted(seqs)
    assert (shown["list"], shown["reason"]) == ("white", "registered")  # restored


def test_show_unknown_and_bad_imei(listed: Eir) -> None:
    shown = listed.ok("registry", "show", UNKNOWN).json()
    assert shown["list"] is None and shown["pairs"] == [] and shown["history"] == []
    assert (shown["decision_now"]["status"], shown["decision_now"]["rule"]) == (
        "GREYLISTED", "unknown")
    assert listed.count("observation") == 0  # show decides read-only too
    assert "not an IMEI" in listed.refused("registry", "show", "12ab")


async def _grace_clock(db: Path, imei: str, imsi: str, start: int, deadline: int) -> None:
    reg = SqliteRegistry(db)
    await reg.open()
    try:
        offsets, at_expiry = (0.0, 20.0, 27.0), True
        await notify.start_clocks(reg, [(imei, imsi, "pending_verification", start, deadline)],
                                  offsets, at_expiry)

        def decide_at(imei14: str, imsi: str | None, at: int) -> Decision:
            return Decision(Status.GREYLISTED, "pending_verification", None, None, "unknown",
                            deadline)

        await notify.produce_due(reg, int(time.time()), decide_at, offsets, at_expiry)
    finally:
        await reg.close()


@pytest.fixture
def warned(listed: Eir) -> tuple[Eir, int, int]:
    """UNKNOWN first seen 21 days ago with HOME: its clock and two warnings (days 0, 20)."""
    start = int(time.time()) - 21 * DAY
    deadline = start + 30 * DAY
    seen = observations((UNKNOWN, HOME, "op-a", stamp(start), stamp(start + DAY)))
    listed.ok("registry", "import-observations", str(listed.file("obs.csv", seen)))
    asyncio.run(_grace_clock(listed.db, UNKNOWN, HOME, start, deadline))
    return listed, start, deadline


def test_show_pending_deadlines_and_notifications(warned: tuple[Eir, int, int]) -> None:
    eir, start, deadline = warned
    shown = eir.ok("registry", "show", UNKNOWN).json()
    [clock] = shown["pending_deadlines"]
    assert (clock["imsi"], clock["reason"]) == (HOME, "pending_verification")
    assert (clock["started"], clock["deadline"]) == (stamp(start), stamp(deadline))
    assert clock["next_warning_at"] == stamp(start + 27 * DAY)
    assert [w["kind"] for w in clock["warnings"]] == ["day0", "day20"]
    assert [(n["kind"], n["imsi"], n["sent_at"]) for n in shown["notifications"]] == [
        ("day0", HOME, None), ("day20", HOME, None)]
    assert all(UNKNOWN in n["message"] for n in shown["notifications"])
    # the decision now agrees with the clock: grey until the same deadline
    assert (shown["decision_now"]["status"], shown["decision_now"]["deadline"]) == (
        "GREYLISTED", stamp(deadline))


def test_show_names_the_next_warning(warned: tuple[Eir, int, int]) -> None:
    eir, _start, _deadline = warned
    [clock] = eir.ok("registry", "show", UNKNOWN).json()["pending_deadlines"]
    assert clock.get("next_warning") == "day27"


# -- lifecycle actions ----------------------------------------------------------------------


def done(run: Run, action: str, imei: str) -> int:
    """The success line names the action, the IMEI and the audit record; returns its seq."""
    m = ONE_LINE_DONE.match(run.line())
    assert m is not None, run.err
    assert (m.group(1), m.group(2)) == (action, imei)
    assert run.out == ""
    return int(m.group(3))


def test_lifecycle_actions_are_audited(listed: Eir) -> None:
    seq = done(listed.ok("registry", "legalise", GREY, "--evidence", "receipt 1"),
               "legalise", GREY)
    assert listed.decide(GREY)["reason"] == "legalised"
    seq2 = done(listed.ok("registry", "legalise", ILLEGAL, "--evidence", "customs ok",
                          "--actor", "clerk 9"), "legalise", ILLEGAL)
    assert listed.decide(ILLEGAL)["status"] == "WHITELISTED"
    seq3 = done(listed.ok("registry", "report-stolen", WHITE, "--evidence", "case 2"),
                "report-stolen", WHITE)
    assert listed.decide(WHITE)["reason"] == "stolen"
    seq4 = done(listed.ok("registry", "recovered", WHITE, "--evidence", "returned"),
                "recovered", WHITE)
    assert listed.decide(WHITE)["reason"] == "registered"
    seq5 = done(listed.ok("registry", "report-lost", UNKNOWN, "--evidence", "case 3"),
                "report-lost", UNKNOWN)
    assert listed.decide(UNKNOWN)["reason"] == "lost"
    seq6 = done(listed.ok("registry", "exception-add", STOLEN, HOME, "--evidence", "owner 2"),
                "exception-add", STOLEN)
    assert listed.decide(STOLEN, "--imsi", HOME)["status"] == "WHITELISTED"
    seq7 = done(listed.ok("registry", "exception-remove", STOLEN, HOME), "exception-remove",
                STOLEN)
    assert listed.decide(STOLEN, "--imsi", HOME)["status"] == "BLACKLISTED"

    records = listed.audit()
    assert [r["seq"] for r in records[-7:]] == [seq, seq2, seq3, seq4, seq5, seq6, seq7]
    assert [(r["action"], r["target"], r["actor"], r["evidence"]) for r in records[-7:]] == [
        ("legalise", GREY, "tester", "receipt 1"),
        ("legalise", ILLEGAL, "clerk 9", "customs ok"),
        ("report-stolen", WHITE, "tester", "case 2"),
        ("recovered", WHITE, "tester", "returned"),
        ("report-lost", UNKNOWN, "tester", "case 3"),
        ("exception-add", STOLEN, "tester", "owner 2"),
        ("exception-remove", STOLEN, "tester", None),
    ]
    assert listed.verify() == len(records) == seq7


REFUSALS = [
    (("legalise", STOLEN, "--evidence", "receipt"), "legalise", "stolen"),
    (("legalise", WHITE, "--evidence", "receipt"), "legalise", "already white"),
    (("legalise", GREY, "--evidence", "  "), "legalise", "evidence"),
    (("legalise", GREY, "--evidence", "x" * 129), "legalise", "evidence"),
    (("legalise", GREY, "--evidence", "r", "--imsi", "12"), "legalise", "IMSI"),
    (("legalise", "12ab", "--evidence", "r"), "legalise", "not an IMEI"),
    (("report-stolen", STOLEN, "--evidence", "case"), "report-stolen", "already reported"),
    (("recovered", WHITE, "--evidence", "found"), "recovered", "not reported stolen"),
    (("recovered", UNKNOWN, "--evidence", "found"), "recovered", "on no list"),
    (("exception-add", STOLEN, "4010", "--evidence", "e"), "exception-add", "IMSI"),
    (("exception-remove", STOLEN, HOME), "exception-remove", "no exception pair"),
]


@pytest.mark.parametrize(("args", "action", "why"), REFUSALS)
def test_refused_lifecycle_action_changes_nothing(listed: Eir, args: tuple[str, ...],
                                                  action: str, why: str) -> None:
    records = listed.verify()
    before = listed.rows("SELECT * FROM list_entry ORDER BY imei")
    pairs = listed.rows("SELECT * FROM exception_pair ORDER BY imei, imsi")
    line = listed.refused("registry", *args)
    assert line.startswith(f"eir: {action}: ") and line.endswith("; nothing changed"), line
    assert why in line, line
    assert listed.verify() == records
    assert listed.rows("SELECT * FROM list_entry ORDER BY imei") == before
    assert listed.rows("SELECT * FROM exception_pair ORDER BY imei, imsi") == pairs


def test_exception_cap_comes_from_the_config(listed: Eir) -> None:
    cap = listed.file("cap.toml", "[policy]\nexception_cap = 1\n")
    records = listed.verify()
    line = listed.refused("registry", "exception-add", STOLEN, HOME, "--evidence", "e",
                          "--config", str(cap))
    assert line.startswith("eir: exception-add: ") and "cap" in line, line
    assert listed.verify() == records
    listed.ok("registry", "exception-add", STOLEN, HOME, "--evidence", "e")  # default cap 10


def test_lifecycle_needs_an_existing_registry_and_evidence(eir: Eir) -> None:
    line = eir.refused("registry", "legalise", GREY, "--evidence", "r")
    assert "no such registry" in line
    assert not eir.db.exists()
    with pytest.raises(SystemExit) as exit_:  # argparse: --evidence is required (usage, 2)
        main(["registry", "report-stolen", STOLEN, "--db", str(eir.db)])
    assert exit_.value.code == 2


def test_refused_action_through_a_real_process(tmp_path: Path) -> None:
    db = str(tmp_path / "eir.db")
    csv = tmp_path / "list.csv"
    csv.write_text(REGISTRY)
    assert run_cli("registry", "import", "--quiet", "--db", db, str(csv)).returncode == 0
    res = run_cli("registry", "legalise", STOLEN, "--evidence", "receipt", "--db", db)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.strip().splitlines() == [
        f"eir: legalise: {STOLEN} is black for 'stolen': only grey or illegal-import devices "
        "can be legalised; nothing changed"]
    res = run_cli("audit", "verify", "--db", db)
    assert res.returncode == 0 and "intact: 1 record(s)" in res.stdout, res.stdout + res.stderr


# -- full lists and list versions --------------------------------------------------------------


def test_full_list_keeps_a_police_report(listed: Eir) -> None:
    listed.ok("registry", "report-stolen", WHITE, "--evidence", "case 5")
    ministry = listed.file("ministry.csv", "imei,list,reason,source\n"
                                           f"{WHITE},white,registered,ministry\n"
                                           f"{UNKNOWN},white,registered,ministry\n")
    res = listed.ok("registry", "import", "--quiet", "--full", "ministry", "--list-version", "7",
                    str(ministry))
    assert "1 skipped" in res.line()
    d = listed.decide(WHITE)
    assert (d["status"], d["reason"]) == ("BLACKLISTED", "stolen")
    assert listed.decide(UNKNOWN)["reason"] == "registered"
    assert listed.decide(ILLEGAL)["status"] == "GREYLISTED"  # ministry's own entry: removed
    assert listed.rows("SELECT source, version, kind FROM list_version") == [
        ("ministry", 7, "full")]
    last = listed.audit()[-1]
    assert last["action"] == "import-full" and last["actor"] == "tester"
    assert last["summary"]["list_version"] == {"source": "ministry", "version": 7,
                                               "kind": "full"}
    assert last["summary"]["skipped"] == 1
    # the police report can still be lifted, and restores what it replaced
    listed.ok("registry", "recovered", WHITE, "--evidence", "found")
    assert listed.decide(WHITE)["reason"] == "registered"
    listed.verify()


def test_full_list_counts_only_rows_written(listed: Eir) -> None:
    listed.ok("registry", "report-stolen", WHITE, "--evidence", "case 5")
    ministry = listed.file("ministry.csv", "imei,list,reason,source\n"
                                           f"{WHITE},white,registered,ministry\n"
                                           f"{UNKNOWN},white,registered,ministry\n")
    res = listed.ok("registry", "import", "--quiet", "--full", "ministry", str(ministry))
    assert "imported 1 rows" in res.line() and "white 1," in res.line(), res.line()
    last = listed.audit()[-1]
    assert last["summary"]["rows"] == {"white": 1} and last["count"] == 2  # 1 written, 1 removed


def test_list_version_needs_full(listed: Eir) -> None:
    records = listed.verify()
    line = listed.refused("registry", "import", "--list-version", "7",
                          str(listed.file("m.csv", f"imei,list\n{UNKNOWN},white\n")))
    assert "--list-version" in line and "--full" in line and "--delta" in line
    assert listed.verify() == records and listed.decide(UNKNOWN)["rule"] == "unknown"


def test_a_delta_brings_its_list_version(listed: Eir) -> None:
    delta = listed.file("d.csv", f"imei,list,reason,source\n{UNKNOWN},white,registered,ministry\n")
    listed.ok("registry", "import", "--quiet", "--delta", "ministry", "--list-version", "8",
              str(delta))
    assert listed.decide(UNKNOWN)["reason"] == "registered"
    assert listed.rows("SELECT source, version, kind FROM list_version") == [
        ("ministry", 8, "delta")]
    assert listed.audit()[-1]["summary"]["list_version"] == {
        "source": "ministry", "version": 8, "kind": "delta"}
    records = listed.verify()
    line = listed.refused("registry", "import", "--full", "ministry", "--delta", "ministry",
                          str(delta))
    assert "exclude each other" in line and listed.verify() == records


# -- TAC and history imports ---------------------------------------------------------------------

TACS = "tac,brand,model,class\n35332510,Acme,One,smartphone\n86768803,Acme,Two,m2m\n"
HISTORY = observations((UNKNOWN, HOME, "op-a", "2025-01-01T00:00:00Z", "2025-02-01T00:00:00Z"),
                       (UNKNOWN, "", "op-b", "2025-03-01T00:00:00+05:00", ""))


def test_imports_succeed_and_are_audited(listed: Eir) -> None:
    res = listed.ok("registry", "import-tac", str(listed.file("tac.csv", TACS)))
    assert re.match(r"^eir: imported 2 TACs from .*tac\.csv in [\d.]+ s$", res.line())
    res = listed.ok("registry", "import-observations", str(listed.file("obs.csv", HISTORY)))
    assert re.match(r"^eir: imported 2 observations from .*obs\.csv$", res.line())
    assert listed.rows("SELECT tac, brand, model, class FROM tac ORDER BY tac") == [
        (35332510, "Acme", "One", "smartphone"), (86768803, "Acme", "Two", "m2m")]
    assert listed.rows("SELECT imsi, first_seen, last_seen FROM observation ORDER BY imsi") == [
        ("", to_epoch("2025-02-28T19:00:00Z"), to_epoch("2025-02-28T19:00:00Z")),
        (HOME, to_epoch("2025-01-01T00:00:00Z"), to_epoch("2025-02-01T00:00:00Z"))]
    tac, obs = listed.audit()[-2:]
    assert (tac["action"], tac["count"], obs["action"], obs["count"]) == (
        "import-tac", 2, "import-observations", 2)
    assert tac["summary"]["file_sha256"] == hashlib.sha256(TACS.encode()).hexdigest()
    assert obs["summary"]["file_sha256"] == hashlib.sha256(HISTORY.encode()).hexdigest()
    # a replayed history changes nothing: the earliest sighting wins
    listed.ok("registry", "import-observations", str(listed.file("obs.csv", HISTORY)))
    assert listed.count("observation") == 2
    listed.verify()


def test_imports_into_a_new_registry(eir: Eir) -> None:
    eir.ok("registry", "import-tac", str(eir.file("tac.csv", TACS)))
    eir.ok("registry", "import-observations", str(eir.file("obs.csv", HISTORY)))
    assert eir.verify() == 2


def test_imports_record_who_ran_them(listed: Eir) -> None:
    listed.ok("registry", "import-tac", str(listed.file("tac.csv", TACS)))
    listed.ok("registry", "import-observations", str(listed.file("obs.csv", HISTORY)))
    assert [r["actor"] for r in listed.audit()[-2:]] == ["tester", "tester"]


BAD_TACS = [
    ("tac,brand,model,class\n35332510,A,B,phone\n3533251,A,B,phone\n", 3, "3533251"),
    ("tac,brand,model,class\n35332510,A,B,phone\n35332510,A,C,phone\n", 3, "twice"),
    ("tac,brand,model,class\n35332510,A,B,\n", 2, "class"),
    ("tac,brand,model,class\n35332510,A,B\n", 2, "fields"),
    ("tac,maker,class\n35332510,A,phone\n", 1, "maker"),
    ("brand,model\nA,B\n", 1, "missing"),
    ("", 1, "empty"),
]


@pytest.mark.parametrize(("text", "line", "what"), BAD_TACS)
def test_bad_tac_file_imports_nothing(listed: Eir, text: str, line: int, what: str) -> None:
    listed.ok("registry", "import-tac", str(listed.file("good.csv", TACS)))
    records, tacs = listed.verify(), listed.rows("SELECT * FROM tac ORDER BY tac")
    path = listed.file("bad.csv", text)
    msg = listed.refused("registry", "import-tac", str(path))
    assert msg.startswith(f"eir: {path}: line {line}: ") and what in msg, msg
    assert msg.endswith("; nothing was imported"), msg
    assert listed.verify() == records
    assert listed.rows("SELECT * FROM tac ORDER BY tac") == tacs


BAD_HISTORY = [
    ((UNKNOWN, HOME, "op-a", "2025-01-01", "2025-01-02"), ("1234", HOME, "op-a", "2025-01-01", ""),
     3, "'1234'"),
    ((UNKNOWN, HOME, "op-a", "2025-01-01", ""), (UNKNOWN, "40101x", "op-a", "2025-01-01", ""),
     3, "IMSI"),
    ((UNKNOWN, HOME, "op-a", "2025-01-01", ""), (UNKNOWN, HOME, "", "2025-01-01", ""),
     3, "operator"),
    ((UNKNOWN, HOME, "op-a", "2025-01-01", ""), (UNKNOWN, HOME, "op-a", "soon", ""),
     3, "soon"),
    ((UNKNOWN, HOME, "op-a", "2025-01-05", "2025-01-01"), (UNKNOWN, HOME, "op-a", "2025-01-01",
                                                           ""), 2, "before first_seen"),
]


@pytest.mark.parametrize(("good", "bad", "line", "what"), BAD_HISTORY)
def test_bad_history_file_imports_nothing(listed: Eir, good: tuple[str, str, str, str, str],
                                          bad: tuple[str, str, str, str, str], line: int,
                                          what: str) -> None:
    records = listed.verify()
    path = listed.file("bad.csv", observations(good, bad))
    msg = listed.refused("registry", "import-observations", str(path))
    assert msg.startswith(f"eir: {path}: line {line}: ") and what in msg, msg
    assert msg.endswith("; nothing was imported"), msg
    assert listed.verify() == records
    assert listed.count("observation") == 0 and listed.count("operator") == 0


@pytest.mark.parametrize("command", ["import-tac", "import-observations"])
def test_import_file_problems_are_one_line(listed: Eir, command: str) -> None:
    records = listed.verify()
    latin1 = listed.file("latin1.csv", "tac,brand,model,class\n35332510,Soci\xe9t\xe9,X,phone\n"
                         .encode("latin-1"))
    msg = listed.refused("registry", command, str(latin1))
    assert msg.startswith(f"eir: {latin1}: not valid UTF-8") and "nothing was imported" in msg
    msg = listed.refused("registry", command, str(listed.tmp / "missing.csv"))
    assert "missing.csv: no such file" in msg
    assert listed.verify() == records


def test_bad_history_through_a_real_process(tmp_path: Path) -> None:
    db = str(tmp_path / "eir.db")
    good = tmp_path / "good.csv"
    good.write_text(HISTORY)
    assert run_cli("registry", "import-observations", "--db", db, str(good)).returncode == 0
    bad = tmp_path / "bad.csv"
    bad.write_text(HISTORY + f"{UNKNOWN},{HOME},op-c,2025-13-01T00:00:00Z,\n")
    res = run_cli("registry", "import-observations", "--db", db, str(bad))
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        f"eir: {bad}: line 4: not an ISO 8601 timestamp: '2025-13-01T00:00:00Z'; "
        "nothing was imported"]
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM change_log").fetchone() == (1,)
        assert conn.execute("SELECT COUNT(*) FROM operator").fetchone() == (2,)


# -- the audit trail -----------------------------------------------------------------------------


def test_audit_log_prints_json_lines(listed: Eir) -> None:
    listed.ok("registry", "legalise", GREY, "--evidence", "receipt 1")
    listed.ok("registry", "report-stolen", WHITE, "--evidence", "case 2")
    lines = listed.ok("audit", "log").out.splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert set(records[0]) == {"seq", "at", "action", "actor", "target", "evidence", "count",
                               "summary", "hash"}
    assert records[0]["action"] == "import" and records[0]["count"] == 5
    assert all(re.fullmatch(r"[0-9a-f]{64}", r["hash"]) for r in records)
    assert [r["seq"] for r in listed.audit()[-2:]] == [2, 3]
    two = [json.loads(line) for line in listed.ok("audit", "log", "--limit", "2").out.splitlines()]
    assert [r["seq"] for r in two] == [2, 3]
    head = records[-1]["hash"]
    assert "intact: 3 record(s)" in listed.ok("audit", "verify", "--expect-head", head).out
    line = listed.refused("audit", "verify", "--expect-head", "0" * 64)
    assert head in line and "0" * 64 in line


def test_audit_log_limit_zero_prints_nothing(listed: Eir) -> None:
    listed.ok("registry", "legalise", GREY, "--evidence", "receipt 1")
    assert listed.ok("audit", "log", "--limit", "0").out == ""


def test_audit_commands_need_a_registry(eir: Eir) -> None:
    assert "no such registry" in eir.refused("audit", "verify")
    assert "no such registry" in eir.refused("audit", "log")
    assert not eir.db.exists()


# -- stats and prune -----------------------------------------------------------------------------


def test_stats(listed: Eir) -> None:
    res = listed.ok("stats")
    assert res.out == "" and res.line() == "eir: no decisions counted yet"
    with closing(sqlite3.connect(listed.db)) as conn, conn:
        conn.executemany(
            "INSERT INTO decision_count (day, operator, status, reason, count)"
            " VALUES (?, ?, ?, ?, ?)",
            [("2026-11-20", "op-a", "GREYLISTED", "pending_verification", 1234),
             ("2026-11-20", "op-a", "WHITELISTED", "registered", 50000),
             ("2026-11-21", "op-b", "BLACKLISTED", "stolen", 7)])
    out = listed.ok("stats").out.splitlines()
    assert out[0].split() == ["day", "operator", "status", "reason", "count"]
    assert [line.split() for line in out[1:]] == [
        ["2026-11-20", "op-a", "WHITELISTED", "registered", "50,000"],
        ["2026-11-20", "op-a", "GREYLISTED", "pending_verification", "1,234"],
        ["2026-11-21", "op-b", "BLACKLISTED", "stolen", "7"]]
    day = listed.ok("stats", "--day", "2026-11-21").out.splitlines()
    assert len(day) == 2 and day[1].split()[1] == "op-b"
    assert listed.ok("stats", "--day", "2020-01-01").line() == "eir: no decisions counted yet"


def test_prune_drops_observations_older_than_the_retention(listed: Eir) -> None:
    now = time.time()
    history = observations(
        (UNKNOWN, HOME, "op-a", stamp(now - 400 * DAY), stamp(now - 181 * DAY)),
        (UNKNOWN, ROAMER, "op-a", stamp(now - 400 * DAY), stamp(now - 179 * DAY)),
        (GREY, HOME, "op-b", stamp(now - 10 * DAY), stamp(now - DAY)),
    )
    listed.ok("registry", "import-observations", str(listed.file("obs.csv", history)))
    records = listed.verify()
    longer = listed.file("long.toml", "[observations]\nretention_days = 365\n")
    res = listed.ok("registry", "prune", "--config", str(longer))
    assert res.line().startswith("eir: pruned 0 observations not seen since ")
    res = listed.ok("registry", "prune")
    m = re.fullmatch(r"eir: pruned 1 observations not seen since (\S+)", res.line())
    assert m is not None, res.err
    assert abs(to_epoch(m.group(1)) - (now - 180 * DAY)) < 60
    assert listed.rows("SELECT imsi FROM observation ORDER BY imsi") == [(ROAMER,), (HOME,)]
    assert listed.ok("registry", "prune").line().startswith("eir: pruned 0 ")
    assert listed.verify() == records  # pruning is housekeeping, not a list change


# -- eir policy preview ----------------------------------------------------------------------------

AT = "2026-11-21T00:00:00Z"
# Default cut-off 2025-05-24T19:00Z, grace 30 days; decided at AT.
PREVIEW_HISTORY = observations(
    # op-a: grandfathered, grey (until 12-10), a roamer seen long ago
    ("10000000000001", "401010000000001", "op-a", "2025-01-01T00:00:00Z", "2026-11-20T00:00:00Z"),
    ("10000000000002", "401010000000002", "op-a", "2026-11-10T00:00:00Z", "2026-11-20T00:00:00Z"),
    ("10000000000006", "250010000000006", "op-a", "2025-03-01T00:00:00Z", "2026-11-20T00:00:00Z"),
    # op-b: grace expired (10-31), a roamer seen lately, grey (until 12-15)
    ("10000000000003", "401020000000003", "op-b", "2026-10-01T00:00:00Z", "2026-11-20T00:00:00Z"),
    ("10000000000004", "250010000000004", "op-b", "2026-11-10T00:00:00Z", "2026-11-20T00:00:00Z"),
    ("10000000000005", "401020000000005", "op-b", "2026-11-15T00:00:00Z", "2026-11-20T00:00:00Z"),
    # seen by op-a first (11-01), then by op-b: counted once, for op-b; grey until 12-01
    ("10000000000007", "401010000000007", "op-a", "2026-11-01T00:00:00Z", "2026-11-05T00:00:00Z"),
    ("10000000000007", "401010000000007", "op-b", "2026-11-06T00:00:00Z", "2026-11-20T00:00:00Z"),
)

PREVIEWS: list[tuple[str, dict[str, dict[str, int]]]] = [
    ("[policy]\n", {"op-a": {}, "op-b": {}}),
    # grace 8 days: 11-10 + 8 and 11-01 + 8 are over; 11-15 + 8 is not
    ("[policy]\ngrace_days = 8\n", {"op-a": {"GREYLISTED->BLACKLISTED": 1},
                                    "op-b": {"GREYLISTED->BLACKLISTED": 1}}),
    # grace 60 days: 10-01 + 60 = 11-30 is not over yet
    ("[policy]\ngrace_days = 60\n", {"op-a": {}, "op-b": {"BLACKLISTED->GREYLISTED": 1}}),
    # a later cut-off grandfathers everything first seen before 11-12 (Astana)
    ('[policy]\ncutoff = "2026-11-12T00:00:00+05:00"\n',
     {"op-a": {"GREYLISTED->WHITELISTED": 1},
      "op-b": {"BLACKLISTED->WHITELISTED": 1, "GREYLISTED->WHITELISTED": 1}}),
    # Russian SIMs become home SIMs: the recent one must register, the old one is grandfathered
    ('[policy]\nhome_mccs = ["401", "250"]\n',
     {"op-a": {}, "op-b": {"WHITELISTED->GREYLISTED": 1}}),
    ('[policy]\nunknown_equipment = "reject"\n',
     {"op-a": {"GREYLISTED->UNKNOWN": 1},
      "op-b": {"BLACKLISTED->UNKNOWN": 1, "GREYLISTED->UNKNOWN": 2}}),
]


@pytest.fixture
def observed(listed: Eir) -> Eir:
    listed.ok("registry", "import-observations",
              str(listed.file("history.csv", PREVIEW_HISTORY)))
    return listed


def fingerprint(db: Path) -> tuple[int, int, str]:
    st = db.stat()
    return st.st_mtime_ns, st.st_size, hashlib.sha256(db.read_bytes()).hexdigest()


@pytest.mark.parametrize(("toml", "expected"), PREVIEWS)
def test_policy_preview_counts_changes_per_operator(
        observed: Eir, toml: str, expected: dict[str, dict[str, int]]) -> None:
    new = observed.file("new.toml", toml)
    counts = (observed.count("change_log"), observed.count("observation"))
    before = fingerprint(observed.db)
    out = observed.ok("policy", "preview", "--with", str(new), "--at", AT).json()
    assert fingerprint(observed.db) == before
    assert (observed.count("change_log"), observed.count("observation")) == counts
    assert out["at"] == AT and out["devices_checked"] == 7
    assert set(out["by_operator"]) == {"op-a", "op-b"}
    for op, transitions in expected.items():
        got = out["by_operator"][op]
        assert got["devices"] == {"op-a": 3, "op-b": 4}[op]
        assert got["transitions"] == transitions, (op, got)
        assert got["would_change"] == sum(transitions.values())


def test_policy_preview_uses_the_current_config_as_the_baseline(observed: Eir) -> None:
    old = observed.file("old.toml", "[policy]\ngrace_days = 8\n")
    new = observed.file("new.toml", "[policy]\n")
    out = observed.ok("policy", "preview", "--config", str(old), "--with", str(new),
                      "--at", AT).json()
    assert out["by_operator"]["op-a"]["transitions"] == {"BLACKLISTED->GREYLISTED": 1}
    assert out["by_operator"]["op-b"]["transitions"] == {"BLACKLISTED->GREYLISTED": 1}


def test_policy_preview_sees_list_entries(observed: Eir) -> None:
    # 10000000000003 legalised: no longer black under today's rules, nor under grace 60
    observed.ok("registry", "legalise", "10000000000003", "--evidence", "receipt")
    new = observed.file("new.toml", "[policy]\ngrace_days = 60\n")
    out = observed.ok("policy", "preview", "--with", str(new), "--at", AT).json()
    assert out["by_operator"]["op-b"]["would_change"] == 0


def test_policy_preview_errors(observed: Eir, eir: Eir) -> None:
    bad = observed.file("bad.toml", "[policy]\ngrace_days = -5\n")
    line = observed.refused("policy", "preview", "--with", str(bad), "--at", AT)
    assert line.startswith(f"eir: --with {bad}:") and "grace_days" in line
    line = observed.refused("policy", "preview", "--with", str(observed.tmp / "none.toml"))
    assert "none.toml" in line
    good = observed.file("good.toml", "[policy]\n")
    assert "--at" in observed.refused("policy", "preview", "--with", str(good), "--at", "x")
    line = eir.refused("policy", "preview", "--with", str(good), "--db",
                       str(eir.tmp / "nope.db"), db=False)
    assert "no such registry" in line


def test_policy_preview_error_names_the_new_file(observed: Eir) -> None:
    bad = observed.file("new-rules.toml", "[policy]\ngrace_days = -5\n")
    line = observed.refused("policy", "preview", "--with", str(bad), "--at", AT)
    assert "new-rules.toml" in line


def test_policy_preview_of_an_empty_registry(listed: Eir) -> None:
    new = listed.file("new.toml", "[policy]\ngrace_days = 1\n")
    out = listed.ok("policy", "preview", "--with", str(new), "--at", AT).json()
    assert out["devices_checked"] == 0 and out["by_operator"] == {}


def test_registry_snapshot_writes_the_file_a_start_reads(listed: Eir) -> None:
    res = listed.ok("registry", "snapshot")
    assert "eir: snapshot of version" in res.line()
    path = Path(f"{listed.db}.snapshot")
    assert path.stat().st_size > 0
