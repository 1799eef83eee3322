"""eir.policy.lifecycle: legalise, report, recovered, exception pairs; each one audited change.

Real SQLite files under tmp_path and a controllable clock. A refused action
must leave everything as it was: entries, pairs, the audit trail and the
version a running server polls.
"""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from eir.policy.audit import AuditRecord
from eir.policy.csvio import CsvImportError, export_csv, import_csv
from eir.policy.engine import DecisionConfig, decide
from eir.policy.lifecycle import (
    LifecycleError,
    add_exception,
    legalise,
    recovered,
    remove_exception,
    report,
)
from eir.policy.model import Decision, Status, to_epoch
from eir.policy.sqlite import SqliteRegistry

GREY = "49015420323751"  # grey, ministry, with grace_until, evidence and a note
ILLEGAL = "35209900176148"  # black illegal_import
STOLEN = "35693803564380"  # black stolen (police)
WHITE = "26053179311383"  # white registered
COUNTERFEIT = "86001203456789"  # black counterfeit
FRESH = "35000011112222"  # on no list
IMSI = "401011234567890"
IMSI2 = "401019876543210"

SEED = (
    "imei,list,reason,source,note,since,grace_until,evidence",
    f"{GREY},grey,,ministry,first notice,2025-05-30T10:00:00Z,2025-07-01T00:00:00Z,notice 7",
    f"{ILLEGAL},black,illegal_import,ministry,,2025-05-01T00:00:00Z,,customs 3",
    f"{STOLEN},black,stolen,police,,2025-04-01T00:00:00Z,,case 12",
    f"{WHITE},white,registered,operator,,2025-01-01T00:00:00Z,,",
    f"{COUNTERFEIT},black,counterfeit,ministry,,2025-03-01T00:00:00Z,,",
)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def reg(tmp_path: Path, clock: Clock) -> AsyncIterator[SqliteRegistry]:
    async with SqliteRegistry(tmp_path / "eir.db", clock=clock) as r:
        await import_csv(r, csv_bytes(*SEED))
        clock.advance(3600)
        yield r


def csv_bytes(*lines: str) -> io.BytesIO:
    return io.BytesIO(("\n".join(lines) + "\n").encode())


async def records(reg: SqliteRegistry) -> list[AuditRecord]:
    return [r async for r in reg.audit_records()]


def raw_entry(reg: SqliteRegistry, imei: str) -> dict[str, Any] | None:
    """Every column of the stored list entry (seq included), read beside the registry."""
    with closing(sqlite3.connect(reg.path)) as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM list_entry WHERE imei = ?", (imei,)).fetchone()
    return None if row is None else dict(row)


def raw_pairs(reg: SqliteRegistry, imei: str) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(reg.path)) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM exception_pair WHERE imei = ? ORDER BY imsi", (imei,))
        return [dict(r) for r in rows.fetchall()]


@dataclass(frozen=True)
class State:
    export: str
    audit: list[AuditRecord]
    version: int


async def state(reg: SqliteRegistry) -> State:
    out = io.StringIO(newline="")
    await export_csv(reg, out)
    return State(out.getvalue(), await records(reg), await reg.current_version())


async def decision(reg: SqliteRegistry, imei: str, imsi: str | None = None,
                   at: str = "2025-06-02T00:00:00Z") -> Decision:
    snap = await reg.load_snapshot()
    return decide(snap.facts(imei, imsi, now=to_epoch(at)), DecisionConfig())


def summary(rec: AuditRecord) -> Any:
    assert rec.summary is not None
    return json.loads(rec.summary)


# -- legalise --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("imei", "before"),
    [
        (GREY, {"list": "grey", "reason": "pending_verification", "source": "ministry"}),
        (FRESH, None),
        (ILLEGAL, {"list": "black", "reason": "illegal_import", "source": "ministry"}),
    ],
    ids=["listed-grey", "implicit-grey", "illegal-import"],
)
async def test_legalise_moves_the_device_to_white(
    reg: SqliteRegistry, clock: Clock, imei: str, before: dict[str, str] | None
) -> None:
    old = raw_entry(reg, imei)
    version = await reg.current_version()
    n_records = len(await records(reg))
    # A 15-digit IMEI is accepted; the 15th digit is ignored (POLICY.md rule 1).
    seq = await legalise(reg, imei + "7", evidence="  receipt 42  ", actor="clerk1",
                         note="bought abroad")
    assert seq == version + 1 == await reg.current_version()
    entry = raw_entry(reg, imei)
    assert entry is not None
    assert (entry["list"], entry["reason"], entry["source"], entry["evidence"], entry["note"],
            entry["since"], entry["grace_until"], entry["seq"]) == (
        "white", "legalised", "legalisation", "receipt 42", "bought abroad",
        "2025-06-01T13:00:00Z", None, seq)
    # The replaced entry is kept, whole.
    prev = json.loads(entry["prev"]) if entry["prev"] else None
    if old is None:
        assert prev is None
    else:
        assert prev == {k: old[k] for k in ("list", "reason", "source", "since", "note",
                                            "grace_until", "evidence", "prev")}
    d = await decision(reg, imei)
    assert (d.status, d.reason) == (Status.WHITELISTED, "legalised")
    recs = await records(reg)
    assert len(recs) == n_records + 1
    rec = recs[-1]
    assert (rec.seq, rec.kind, rec.count, rec.actor, rec.target, rec.evidence, rec.at) == (
        seq, "legalise", 1, "clerk1", imei, "receipt 42", "2025-06-01T13:00:00Z")
    assert summary(rec) == {
        "before": before,
        "after": {"list": "white", "reason": "legalised", "source": "legalisation"},
    }


@pytest.mark.parametrize(
    ("imei", "evidence", "message"),
    [
        (STOLEN, "receipt 1", rf"{STOLEN} is black for 'stolen': only grey or illegal-import"),
        (COUNTERFEIT, "receipt 1", "black for 'counterfeit'"),
        (WHITE, "receipt 1", rf"{WHITE} is already white \(registered\)"),
        (GREY, None, "an evidence reference is required"),
        (GREY, "", "an evidence reference is required"),
        (GREY, "   ", "an evidence reference is required"),
        (GREY, "x" * 129, "at most 128 characters"),
        (GREY, "receipt\x001", "printable"),
        ("4901542032375", "receipt 1", "'4901542032375' is not an IMEI"),
        ("49015420323751x", "receipt 1", "is not an IMEI"),
    ],
)
async def test_legalise_refusals_change_nothing(
    reg: SqliteRegistry, imei: str, evidence: str | None, message: str
) -> None:
    before = await state(reg)
    with pytest.raises(LifecycleError, match=message):
        await legalise(reg, imei, evidence=evidence, actor="clerk1")
    assert await state(reg) == before


async def test_legalise_twice_is_refused(reg: SqliteRegistry) -> None:
    await legalise(reg, GREY, evidence="receipt 1", actor="clerk1")
    before = await state(reg)
    with pytest.raises(LifecycleError, match="already white"):
        await legalise(reg, GREY, evidence="receipt 2", actor="clerk1")
    assert await state(reg) == before


async def test_legalise_with_imsi_registers_the_owners_pair(reg: SqliteRegistry) -> None:
    seq = await legalise(reg, FRESH, evidence="travel record 9", actor="clerk1", imsi=IMSI)
    pairs = raw_pairs(reg, FRESH)
    assert [(p["imsi"], p["reason"], p["source"], p["evidence"], p["seq"]) for p in pairs] == [
        (IMSI, "legalised", "legalisation", "travel record 9", seq)]
    rec = (await records(reg))[-1]
    assert rec.count == 2
    assert summary(rec)["pair"] == IMSI
    snap = await reg.load_snapshot()
    assert snap.lookup(FRESH, IMSI)[1] is True
    assert snap.lookup(FRESH, IMSI2)[1] is False


async def test_legalise_with_a_bad_imsi_changes_nothing(reg: SqliteRegistry) -> None:
    before = await state(reg)
    with pytest.raises(LifecycleError, match="IMSI '4010' is not 5 to 15 decimal digits"):
        await legalise(reg, GREY, evidence="receipt 1", actor="clerk1", imsi="4010")
    assert await state(reg) == before


async def test_legalise_with_imsi_over_the_cap_changes_nothing(tmp_path: Path,
                                                               clock: Clock) -> None:
    async with SqliteRegistry(tmp_path / "cap.db", clock=clock, exception_cap=2) as reg:
        await import_csv(reg, csv_bytes(*SEED))
        for imsi in ("4010100001", "4010100002"):
            await add_exception(reg, GREY, imsi, evidence="case 1", actor="op")
        before = await state(reg)
        with pytest.raises(LifecycleError, match=r"already has 2 exception pairs, the cap "
                                                 r"\(policy.exception_cap = 2\)"):
            await legalise(reg, GREY, evidence="receipt 1", actor="clerk1", imsi=IMSI)
        # The white entry written before the pair was refused is rolled back too.
        assert await state(reg) == before
        grey = raw_entry(reg, GREY)
        assert grey is not None and grey["list"] == "grey"
        # The owner's pair already registered is not a new one: allowed at the cap.
        await legalise(reg, GREY, evidence="receipt 1", actor="clerk1", imsi="4010100001")
        assert [p["reason"] for p in raw_pairs(reg, GREY)] == ["legalised", "paired_exception"]


# -- report and recovered --------------------------------------------------------------------


@pytest.mark.parametrize("imei", [GREY, WHITE, ILLEGAL, COUNTERFEIT, FRESH])
async def test_report_then_recovered_restores_the_entry_exactly(
    reg: SqliteRegistry, clock: Clock, imei: str
) -> None:
    old = raw_entry(reg, imei)
    seq = await report(reg, imei, reason="stolen", evidence="case 77", actor="officer",
                       note="reported at desk 3")
    entry = raw_entry(reg, imei)
    assert entry is not None
    assert (entry["list"], entry["reason"], entry["source"], entry["evidence"], entry["note"],
            entry["seq"]) == ("black", "stolen", "police", "case 77", "reported at desk 3", seq)
    d = await decision(reg, imei, IMSI)
    assert (d.status, d.reason) == (Status.BLACKLISTED, "stolen")
    clock.advance(86_400)
    seq2 = await recovered(reg, imei, evidence="case 77 closed", actor="officer")
    assert seq2 == seq + 1 == await reg.current_version()
    after = raw_entry(reg, imei)
    if old is None:
        assert after is None  # there was no entry: none is left
    else:
        assert after is not None
        assert {k: v for k, v in after.items() if k != "seq"} == \
            {k: v for k, v in old.items() if k != "seq"}
        assert after["seq"] == seq2  # restamped, so a reload sees the change
    rec = (await records(reg))[-1]
    assert (rec.kind, rec.actor, rec.target, rec.evidence, rec.count) == (
        "recovered", "officer", imei, "case 77 closed", 1)
    restored = None if old is None else {k: old[k] for k in ("list", "reason", "source")}
    assert summary(rec) == {
        "before": {"list": "black", "reason": "stolen", "source": "police"},
        "after": restored,
    }


async def test_report_after_legalise_then_recovered_restores_the_legalisation(
    reg: SqliteRegistry,
) -> None:
    await legalise(reg, GREY, evidence="receipt 1", actor="clerk1")
    legalised = raw_entry(reg, GREY)
    await report(reg, GREY, reason="lost", evidence="case 5", actor="officer")
    assert (await decision(reg, GREY)).reason == "lost"
    await recovered(reg, GREY, evidence="found", actor="officer")
    assert legalised is not None
    back = raw_entry(reg, GREY)
    assert back is not None
    assert {k: v for k, v in back.items() if k != "seq"} == \
        {k: v for k, v in legalised.items() if k != "seq"}
    # ... and that legalisation still remembers the grey entry it replaced.
    assert json.loads(back["prev"])["list"] == "grey"


async def test_report_record(reg: SqliteRegistry) -> None:
    seq = await report(reg, GREY, reason="lost", evidence="case 9", actor="officer",
                       source="operator")
    rec = (await records(reg))[-1]
    assert (rec.seq, rec.kind, rec.actor, rec.target, rec.evidence, rec.count) == (
        seq, "report-lost", "officer", GREY, "case 9", 1)
    assert summary(rec) == {
        "before": {"list": "grey", "reason": "pending_verification", "source": "ministry"},
        "after": {"list": "black", "reason": "lost", "source": "operator"},
    }


@pytest.mark.parametrize(("first", "second"), [("stolen", "stolen"), ("stolen", "lost"),
                                               ("lost", "stolen")])
async def test_report_twice_is_refused(reg: SqliteRegistry, first: str, second: str) -> None:
    await report(reg, GREY, reason=first, evidence="case 1", actor="officer")
    before = await state(reg)
    with pytest.raises(LifecycleError, match=f"{GREY} is already reported {first}"):
        await report(reg, GREY, reason=second, evidence="case 2", actor="officer")
    assert await state(reg) == before


async def test_an_imported_stolen_entry_cannot_be_reported_again(reg: SqliteRegistry) -> None:
    before = await state(reg)
    with pytest.raises(LifecycleError, match="already reported stolen"):
        await report(reg, STOLEN, reason="stolen", evidence="case 2", actor="officer")
    assert await state(reg) == before


@pytest.mark.parametrize(
    ("imei", "reason", "evidence", "message"),
    [
        (GREY, "counterfeit", "case 1", r"reason must be one of \['lost', 'stolen'\]"),
        (GREY, "stolen", None, "evidence reference is required"),
        ("123", "stolen", "case 1", "is not an IMEI"),
    ],
)
async def test_report_refusals_change_nothing(
    reg: SqliteRegistry, imei: str, reason: str, evidence: str | None, message: str
) -> None:
    before = await state(reg)
    with pytest.raises(LifecycleError, match=message):
        await report(reg, imei, reason=reason, evidence=evidence, actor="officer")
    assert await state(reg) == before


@pytest.mark.parametrize(
    ("imei", "message"),
    [
        (FRESH, f"{FRESH} is not reported stolen or lost: it is on no list"),
        (GREY, r"it is grey \(pending_verification\)"),
        (COUNTERFEIT, r"it is black \(counterfeit\)"),
    ],
)
async def test_recovered_needs_a_report(reg: SqliteRegistry, imei: str, message: str) -> None:
    before = await state(reg)
    with pytest.raises(LifecycleError, match=message):
        await recovered(reg, imei, evidence="found", actor="officer")
    assert await state(reg) == before


async def test_recovered_of_an_imported_stolen_entry_deletes_it(reg: SqliteRegistry) -> None:
    # An imported police entry replaced nothing, so nothing comes back.
    await recovered(reg, STOLEN, evidence="found", actor="officer")
    assert raw_entry(reg, STOLEN) is None
    d = await decision(reg, STOLEN, IMSI)
    assert (d.status, d.reason) == (Status.GREYLISTED, "pending_verification")


async def test_recovered_without_evidence_changes_nothing(reg: SqliteRegistry) -> None:
    before = await state(reg)
    with pytest.raises(LifecycleError, match="evidence"):
        await recovered(reg, STOLEN, evidence=None, actor="officer")
    assert await state(reg) == before


# -- exception pairs -------------------------------------------------------------------------


async def test_exception_pair_lifts_the_block_for_its_imsi_only(reg: SqliteRegistry) -> None:
    seq = await add_exception(reg, STOLEN, IMSI, evidence="court order 4", actor="op1")
    assert [(p["imsi"], p["reason"], p["source"], p["evidence"], p["seq"])
            for p in raw_pairs(reg, STOLEN)] == [
        (IMSI, "paired_exception", "operator", "court order 4", seq)]
    rec = (await records(reg))[-1]
    assert (rec.kind, rec.actor, rec.target, rec.evidence, rec.count) == (
        "exception-add", "op1", STOLEN, "court order 4", 1)
    assert summary(rec) == {"imsi": IMSI}
    ok = await decision(reg, STOLEN, IMSI)
    other = await decision(reg, STOLEN, IMSI2)
    assert (ok.status, ok.reason) == (Status.WHITELISTED, "paired_exception")
    assert (other.status, other.reason) == (Status.BLACKLISTED, "stolen")

    seq2 = await remove_exception(reg, STOLEN, IMSI, actor="op1", evidence="order lifted")
    assert raw_pairs(reg, STOLEN) == []
    rec = (await records(reg))[-1]
    assert (rec.seq, rec.kind, rec.actor, rec.target, rec.evidence, rec.count) == (
        seq2, "exception-remove", "op1", STOLEN, "order lifted", 1)
    assert (await decision(reg, STOLEN, IMSI)).reason == "stolen"


async def test_exception_cap_default_is_ten(reg: SqliteRegistry) -> None:
    assert reg.exception_cap == 10
    imsis = [f"40101{i:010d}" for i in range(11)]
    for imsi in imsis[:10]:
        await add_exception(reg, STOLEN, imsi, evidence="case 1", actor="op1")
    before = await state(reg)
    with pytest.raises(LifecycleError, match=r"already has 10 exception pairs, the cap "
                                             r"\(policy.exception_cap = 10\)"):
        await add_exception(reg, STOLEN, imsis[10], evidence="case 1", actor="op1")
    assert await state(reg) == before
    # Updating a pair already there is not a new pair.
    await add_exception(reg, STOLEN, imsis[0], evidence="case 2", actor="op2", source="police")
    assert len(raw_pairs(reg, STOLEN)) == 10
    assert raw_pairs(reg, STOLEN)[0]["source"] == "police"
    # The cap is per IMEI.
    await add_exception(reg, GREY, imsis[10], evidence="case 1", actor="op1")


async def test_exception_cap_is_configurable(tmp_path: Path, clock: Clock) -> None:
    async with SqliteRegistry(tmp_path / "cap.db", clock=clock, exception_cap=1) as reg:
        await add_exception(reg, STOLEN, IMSI, evidence="case 1", actor="op1")
        with pytest.raises(LifecycleError, match=r"exception_cap = 1\)"):
            await add_exception(reg, STOLEN, IMSI2, evidence="case 1", actor="op1")


async def test_exception_cap_applies_to_csv_imports(reg: SqliteRegistry) -> None:
    header = "imei,list,imsi"
    eleven = [f"{STOLEN},exception,40101{i:010d}" for i in range(11)]
    before = await state(reg)
    with pytest.raises(CsvImportError, match=rf"IMEI {STOLEN} would have 11 exception pairs, "
                                             r"more than the cap of 10"):
        await import_csv(reg, csv_bytes(header, *eleven))
    assert await state(reg) == before
    # Ten in the file are fine; a re-import of the same pairs does not count twice.
    await import_csv(reg, csv_bytes(header, *eleven[:10]))
    await import_csv(reg, csv_bytes(header, *eleven[:10]))
    assert len(raw_pairs(reg, STOLEN)) == 10
    # Pairs added one by one and pairs in a file count together.
    await add_exception(reg, GREY, IMSI, evidence="case 1", actor="op1")
    nine = [f"{GREY},exception,40102{i:010d}" for i in range(9)]
    await import_csv(reg, csv_bytes(header, *nine))
    before = await state(reg)
    with pytest.raises(CsvImportError, match=f"IMEI {GREY} would have 11 exception pairs"):
        await import_csv(reg, csv_bytes(header, f"{GREY},exception,401039999999999"))
    assert await state(reg) == before


@pytest.mark.parametrize(
    ("imei", "imsi", "evidence", "message"),
    [
        (STOLEN, "4010", "case 1", "IMSI '4010' is not 5 to 15 decimal digits"),
        (STOLEN, "40101abc", "case 1", "is not 5 to 15 decimal digits"),
        (STOLEN, IMSI, None, "evidence reference is required"),
        ("3569380356438", IMSI, "case 1", "is not an IMEI"),
    ],
)
async def test_add_exception_refusals_change_nothing(
    reg: SqliteRegistry, imei: str, imsi: str, evidence: str | None, message: str
) -> None:
    before = await state(reg)
    with pytest.raises(LifecycleError, match=message):
        await add_exception(reg, imei, imsi, evidence=evidence, actor="op1")
    assert await state(reg) == before


@pytest.mark.parametrize(
    ("imei", "imsi", "message"),
    [
        (STOLEN, IMSI, rf"no exception pair {STOLEN}/{IMSI}"),
        (STOLEN, "4010", "is not 5 to 15 decimal digits"),
        ("x", IMSI, "is not an IMEI"),
    ],
)
async def test_remove_exception_refusals_change_nothing(
    reg: SqliteRegistry, imei: str, imsi: str, message: str
) -> None:
    await add_exception(reg, STOLEN, IMSI2, evidence="case 1", actor="op1")
    before = await state(reg)
    with pytest.raises(LifecycleError, match=message):
        await remove_exception(reg, imei, imsi, actor="op1")
    assert await state(reg) == before


# -- the audit trail and the version ---------------------------------------------------------


async def test_each_action_is_one_audit_record_and_one_version(reg: SqliteRegistry,
                                                               clock: Clock) -> None:
    start = await reg.current_version()
    snap0 = await reg.load_snapshot()
    actions: list[tuple[str, Callable[[], Awaitable[int]]]] = [
        ("legalise", lambda: legalise(reg, GREY, evidence="r1", actor="a1", imsi=IMSI)),
        ("report-stolen", lambda: report(reg, WHITE, reason="stolen", evidence="c1",
                                         actor="a2")),
        ("recovered", lambda: recovered(reg, WHITE, evidence="c1 closed", actor="a3")),
        ("exception-add", lambda: add_exception(reg, STOLEN, IMSI2, evidence="o1", actor="a4")),
        ("exception-remove", lambda: remove_exception(reg, STOLEN, IMSI2, actor="a5")),
    ]
    for i, (kind, action) in enumerate(actions, start=1):
        clock.advance(60)
        seq = await action()
        assert seq == start + i == await reg.current_version()
        recs = await records(reg)
        assert len(recs) == start + i
        assert (recs[-1].seq, recs[-1].kind, recs[-1].actor) == (seq, kind, f"a{i}")
    snap = await reg.load_snapshot()
    assert snap.version == start + len(actions) > snap0.version
    assert (await reg.verify_audit()).ok


async def test_history_of_one_imei(reg: SqliteRegistry) -> None:
    first = await reg.history(ILLEGAL)
    assert [(h["seq"], h["action"]) for h in first] == [(1, "import")]
    assert first[0]["summary"]["rows"] == {"black": 3, "grey": 1, "white": 1}
    await legalise(reg, ILLEGAL, evidence="receipt 5", actor="clerk1")
    await report(reg, ILLEGAL, reason="stolen", evidence="case 6", actor="officer")
    await recovered(reg, ILLEGAL, evidence="case 6 closed", actor="officer")
    await add_exception(reg, GREY, IMSI, evidence="o1", actor="op1")  # another IMEI
    hist = await reg.history(ILLEGAL)
    assert [(h["action"], h["actor"], h["evidence"]) for h in hist] == [
        ("legalise", "clerk1", "receipt 5"),
        ("report-stolen", "officer", "case 6"),
        ("recovered", "officer", "case 6 closed"),
    ]
    assert [h["seq"] for h in hist] == sorted(h["seq"] for h in hist)
    assert hist[0]["summary"]["before"]["reason"] == "illegal_import"
    assert all(h["at"].endswith("Z") for h in hist)
    assert await reg.history(ILLEGAL, limit=1) == hist[-1:]
    # An IMEI on no list shows the import that wrote its pair.
    assert await reg.history(FRESH) == []
    await import_csv(reg, csv_bytes("imei,list,imsi", f"{FRESH},exception,{IMSI}"),
                     actor="loader")
    assert [(h["action"], h["actor"]) for h in await reg.history(FRESH)] == [
        ("import", "loader")]
