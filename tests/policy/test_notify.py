"""eir.policy.notify and eir notify: grace clocks, warnings produced once, the outbox.

Real SQLite files under tmp_path; the re-decision is a fake the tests
control (grey for 30 days from the clock's start, then black grace_expired,
unless a test says otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from eir import notify_cli
from eir.policy import notify
from eir.policy.model import Decision, Status, from_epoch
from eir.policy.regime import ClockStart
from eir.policy.sqlite import SqliteRegistry

DAY = 86_400
T0 = 1_748_779_200  # 2025-06-01T12:00:00Z
GRACE = 30 * DAY
IMEI = "35209900176148"
IMEI2 = "49015420323751"
IMSI = "250011234567890"
OFFSETS = (0.0, 20.0, 27.0)


class FakeDecide:
    """decide_at: grey until start + 30 days, then black grace_expired; overridable per IMEI."""

    def __init__(self, start: int = T0) -> None:
        self.start = start
        self.deadline: dict[str, int] = {}
        self.fixed: dict[str, Decision] = {}
        self.calls: list[tuple[str, str | None, int]] = []

    def __call__(self, imei14: str, imsi: str | None, at: int) -> Decision:
        self.calls.append((imei14, imsi, at))
        if imei14 in self.fixed:
            return self.fixed[imei14]
        deadline = self.deadline.get(imei14, self.start + GRACE)
        if at < deadline:
            return Decision(Status.GREYLISTED, "pending_verification", None, None, "unknown",
                            deadline)
        return Decision(Status.BLACKLISTED, "grace_expired", None, None, "unknown", deadline)


def start(imei: str = IMEI, imsi: str = IMSI, at: int = T0,
          reason: str = "pending_verification") -> ClockStart:
    return (imei, imsi, reason, at, at + GRACE)


@pytest.fixture
async def reg(tmp_path: Path) -> AsyncIterator[SqliteRegistry]:
    async with SqliteRegistry(tmp_path / "eir.db") as r:
        yield r


async def clocks(reg: SqliteRegistry) -> list[dict[str, Any]]:
    cols = ("imei", "imsi", "reason", "started", "deadline", "next_step", "next_due", "closed")
    async with reg.read() as conn, conn.execute(
        f"SELECT {', '.join(cols)} FROM grace_clock ORDER BY imei, imsi"
    ) as cur:
        return [dict(zip(cols, r, strict=True)) for r in await cur.fetchall()]


async def kinds(reg: SqliteRegistry, imei: str = IMEI) -> list[str]:
    return [r["kind"] for r in await notify.list_outbox(reg, imei=imei)]


async def produce(reg: SqliteRegistry, day: float, decide: FakeDecide,
                  offsets: tuple[float, ...] = OFFSETS, at_expiry: bool = True) -> int:
    return await notify.produce_due(reg, T0 + round(day * DAY), decide, offsets, at_expiry)


# -- the schedule ------------------------------------------------------------------------


def test_offset_kinds_have_no_trailing_zero() -> None:
    assert [notify.offset_kind(d) for d in (0.0, 20.0, 27, 0.5)] == [
        "day0", "day20", "day27", "day0.5"]


def test_schedule_orders_offsets_and_expiry() -> None:
    assert notify.schedule(T0, T0 + GRACE, (27.0, 0.0, 20.0, 20.0), True) == [
        ("day0", T0), ("day20", T0 + 20 * DAY), ("day27", T0 + 27 * DAY),
        ("expiry", T0 + GRACE)]
    # an offset on the deadline comes before the expiry warning; after it, after
    assert [k for k, _ in notify.schedule(T0, T0 + GRACE, (40, 30), True)] == [
        "day30", "expiry", "day40"]
    assert notify.schedule(T0, T0 + GRACE, (), False) == []


# -- starting clocks ---------------------------------------------------------------------


async def test_clock_starts_once(reg: SqliteRegistry) -> None:
    assert await notify.start_clocks(reg, [start()], OFFSETS, True) == 1
    # a later start of the same pair never resets the clock
    assert await notify.start_clocks(reg, [start(at=T0 + 5 * DAY)], OFFSETS, True) == 0
    assert await notify.start_clocks(reg, [], OFFSETS, True) == 0
    [c] = await clocks(reg)
    assert c == {"imei": int(IMEI), "imsi": IMSI, "reason": "pending_verification",
                 "started": T0, "deadline": T0 + GRACE, "next_step": 0, "next_due": T0,
                 "closed": None}


async def test_clock_per_pair_and_earliest_in_a_batch_wins(reg: SqliteRegistry) -> None:
    n = await notify.start_clocks(
        reg, [start(at=T0 + DAY), start(at=T0), start(imsi=""), start(IMEI2)], OFFSETS, True)
    assert n == 3
    got = {(c["imei"], c["imsi"]): c["started"] for c in await clocks(reg)}
    assert got == {(int(IMEI), IMSI): T0, (int(IMEI), ""): T0, (int(IMEI2), IMSI): T0}


async def test_first_due_follows_the_configuration(reg: SqliteRegistry) -> None:
    await notify.start_clocks(reg, [start()], (5.0, 2.0), True)
    await notify.start_clocks(reg, [start(IMEI2)], (), True)
    await notify.start_clocks(reg, [start(imsi="")], (), False)
    due = {(c["imei"], c["imsi"]): c["next_due"] for c in await clocks(reg)}
    assert due == {(int(IMEI), IMSI): T0 + 2 * DAY, (int(IMEI2), IMSI): T0 + GRACE,
                   (int(IMEI), ""): None}


@pytest.mark.parametrize("offsets,at_expiry", [
    ((40.0, 30.0), True), ((40.0,), True), ((40.0,), False), ((0.5, 20.0), True), ((), True)])
async def test_first_due_is_the_schedules_first_step(
        reg: SqliteRegistry, offsets: tuple[float, ...], at_expiry: bool) -> None:
    await notify.start_clocks(reg, [start()], offsets, at_expiry)
    [c] = await clocks(reg)
    steps = notify.schedule(T0, T0 + GRACE, offsets, at_expiry)
    assert c["next_due"] == (steps[0][1] if steps else None)


# -- producing warnings --------------------------------------------------------------------


async def test_warnings_exactly_when_due_and_once(reg: SqliteRegistry) -> None:
    decide = FakeDecide()
    await notify.start_clocks(reg, [start()], OFFSETS, True)
    expected = {0: ["day0"], 19: [], 20: ["day20"], 27: ["day27"], 29: [], 30: ["expiry"],
                31: []}
    seen: list[str] = []
    for day, new in expected.items():
        assert await produce(reg, day, decide) == len(new), day
        assert await produce(reg, day, decide) == 0, day  # twice at the same time
        seen += new
        assert await kinds(reg) == seen
    assert seen == ["day0", "day20", "day27", "expiry"]
    [c] = await clocks(reg)
    assert c["next_due"] is None and c["next_step"] == 4 and c["closed"] is None
    # re-decided only when a clock was due (the repeated calls were free)
    assert [at for _, _, at in decide.calls] == [T0 + d * DAY for d in (0, 20, 27, 30)]
    assert decide.calls[0][:2] == (IMEI, IMSI)


async def test_rows_carry_times_and_a_readable_message(reg: SqliteRegistry) -> None:
    decide = FakeDecide()
    await notify.start_clocks(reg, [start()], OFFSETS, True)
    await produce(reg, 20, decide)
    await produce(reg, 30.5, decide)
    rows = await notify.list_outbox(reg)
    day0, day20, day27, expiry = rows
    assert day27["kind"] == "day27" and "ended at" in day27["message"]  # caught up late
    assert day20["imei"] == IMEI and day20["imsi"] == IMSI
    assert day20["due_at"] == from_epoch(T0 + 20 * DAY) == "2025-06-21T12:00:00Z"
    assert day20["deadline"] == "2025-07-01T12:00:00Z"
    assert day20["created"] == from_epoch(T0 + 20 * DAY)
    assert day20["sent_at"] is None
    msg = day20["message"]
    assert IMEI in msg and "2025-07-01T12:00:00Z UTC" in msg and "10 days left" in msg
    assert "legalise" in msg and "purchase data" in msg
    # day0 was caught up at day 20, so it says what is true then
    assert "10 days left" in day0["message"]
    assert expiry["due_at"] == "2025-07-01T12:00:00Z"
    assert expiry["created"] == from_epoch(T0 + 30 * DAY + DAY // 2)
    assert "ended at 2025-07-01T12:00:00Z" in expiry["message"]
    assert "can no longer make calls" in expiry["message"]
    assert "legalise" in expiry["message"]


async def test_days_left_round_up_and_singular() -> None:
    grey = Decision(Status.GREYLISTED, "pending_verification", deadline=T0 + GRACE)
    assert "(1 day left)" in notify.message_for(IMEI, "day27", grey, T0 + GRACE, T0 + 29 * DAY)
    assert "(3 days left)" in notify.message_for(IMEI, "day27", grey, T0 + GRACE,
                                                  T0 + 27 * DAY + 60)
    clone = Decision(Status.GREYLISTED, "clone_suspected", deadline=T0 + GRACE)
    assert "clone" in notify.message_for(IMEI, "day0", clone, T0 + GRACE, T0)
    other = Decision(Status.GREYLISTED, "illegal_import", deadline=T0 + GRACE)
    assert "reason: illegal_import" in notify.message_for(IMEI, "day0", other, T0 + GRACE, T0)


async def test_catch_up_produces_each_missed_warning_once(reg: SqliteRegistry) -> None:
    decide = FakeDecide()
    await notify.start_clocks(reg, [start()], OFFSETS, True)
    assert await produce(reg, 0, decide) == 1
    # down from day 1 to day 28: day20 and day27 both missed
    assert await produce(reg, 28, decide) == 2
    assert await kinds(reg) == ["day0", "day20", "day27"]
    assert (await clocks(reg))[0]["next_due"] == T0 + GRACE
    assert await produce(reg, 28, decide) == 0
    assert await produce(reg, 45, decide) == 1
    assert await kinds(reg) == ["day0", "day20", "day27", "expiry"]


async def test_catch_up_over_everything_at_once(reg: SqliteRegistry) -> None:
    decide = FakeDecide()
    await notify.start_clocks(reg, [start()], OFFSETS, True)
    assert await produce(reg, 40, decide) == 4
    assert await produce(reg, 40, decide) == 0
    assert await produce(reg, 41, decide) == 0
    assert await kinds(reg) == ["day0", "day20", "day27", "expiry"]


async def test_never_twice_even_if_the_clock_is_rewound(reg: SqliteRegistry) -> None:
    # a crash between the outbox insert and the clock update, or a replayed run
    decide = FakeDecide()
    await notify.start_clocks(reg, [start()], OFFSETS, True)
    assert await produce(reg, 27, decide) == 3
    async with reg.raw_transaction() as conn:
        await conn.execute("UPDATE grace_clock SET next_step = 0, next_due = started")
    assert await produce(reg, 27, decide) == 0
    assert await kinds(reg) == ["day0", "day20", "day27"]


async def test_concurrent_runs_produce_each_warning_once(tmp_path: Path) -> None:
    decide = FakeDecide()
    async with SqliteRegistry(tmp_path / "eir.db") as a, \
            SqliteRegistry(tmp_path / "eir.db") as b:
        await notify.start_clocks(a, [start(), start(IMEI2), start(imsi="")], OFFSETS, True)
        made = await asyncio.gather(
            notify.produce_due(a, T0 + 31 * DAY, decide, OFFSETS, True),
            notify.produce_due(b, T0 + 31 * DAY, decide, OFFSETS, True),
            notify.produce_due(a, T0 + 31 * DAY, decide, OFFSETS, True),
        )
        assert sum(made) == 12
        rows = await notify.list_outbox(a)
    assert len(rows) == len({(r["imei"], r["imsi"], r["kind"]) for r in rows}) == 12


async def test_legalised_device_closes_the_clock(reg: SqliteRegistry) -> None:
    decide = FakeDecide()
    await notify.start_clocks(reg, [start(), start(IMEI2)], OFFSETS, True)
    assert await produce(reg, 0, decide) == 2
    decide.fixed[IMEI] = Decision(Status.WHITELISTED, "legalised", "white")
    assert await produce(reg, 20, decide) == 1  # IMEI2 only
    c = {c["imei"]: c for c in await clocks(reg)}
    assert c[int(IMEI)]["closed"] == "legalised" and c[int(IMEI)]["next_due"] is None
    assert c[int(IMEI2)]["closed"] is None
    for day in (27, 30, 45):
        await produce(reg, day, decide)
    assert await kinds(reg) == ["day0"]
    assert await kinds(reg, IMEI2) == ["day0", "day20", "day27", "expiry"]
    # a closed clock is not reopened by a new start of the pair
    del decide.fixed[IMEI]
    assert await notify.start_clocks(reg, [start(at=T0 + 40 * DAY)], OFFSETS, True) == 0
    assert await produce(reg, 80, decide) == 0
    assert await kinds(reg) == ["day0"]


async def test_stolen_device_closes_the_clock_without_expiry(reg: SqliteRegistry) -> None:
    decide = FakeDecide()
    await notify.start_clocks(reg, [start()], OFFSETS, True)
    await produce(reg, 0, decide)
    decide.fixed[IMEI] = Decision(Status.BLACKLISTED, "stolen", "black")
    assert await produce(reg, 31, decide) == 0
    [c] = await clocks(reg)
    assert c["closed"] == "stolen" and c["next_due"] is None
    assert await kinds(reg) == ["day0"]


async def test_expiry_only_when_the_grace_really_ran_out(reg: SqliteRegistry) -> None:
    decide = FakeDecide()
    await notify.start_clocks(reg, [start()], (), True)
    # the ministry extended the grace: still grey at the old deadline
    decide.deadline[IMEI] = T0 + 40 * DAY
    assert await produce(reg, 30, decide, ()) == 0
    [c] = await clocks(reg)
    assert c["deadline"] == T0 + 40 * DAY and c["next_due"] == T0 + 40 * DAY
    assert c["closed"] is None
    assert await produce(reg, 39, decide, ()) == 0
    assert await produce(reg, 40, decide, ()) == 1
    [row] = await notify.list_outbox(reg)
    assert row["kind"] == "expiry" and row["deadline"] == from_epoch(T0 + 40 * DAY)


async def test_expiry_waits_for_a_black_grace_expired_decision(reg: SqliteRegistry) -> None:
    decide = FakeDecide()
    await notify.start_clocks(reg, [start()], (), True)
    # grey past its deadline (an inconsistent answer): nothing, retried later, no spin
    decide.fixed[IMEI] = Decision(Status.GREYLISTED, "pending_verification",
                                  deadline=T0 + GRACE)
    assert await produce(reg, 31, decide, ()) == 0
    [c] = await clocks(reg)
    assert c["closed"] is None and T0 + 31 * DAY < c["next_due"] <= T0 + 31 * DAY + 60
    assert len(decide.calls) == 1
    decide.fixed[IMEI] = Decision(Status.BLACKLISTED, "clone_suspected", deadline=T0 + GRACE)
    assert await produce(reg, 31, decide, ()) == 0  # not due again yet
    assert await produce(reg, 32, decide, ()) == 1
    [row] = await notify.list_outbox(reg)
    assert row["kind"] == "expiry" and "ended at" in row["message"]
    assert "clone" in row["message"]


async def test_no_expiry_warning_when_not_configured(reg: SqliteRegistry) -> None:
    decide = FakeDecide()
    await notify.start_clocks(reg, [start()], OFFSETS, False)
    assert await produce(reg, 45, decide, at_expiry=False) == 3
    assert await kinds(reg) == ["day0", "day20", "day27"]
    [c] = await clocks(reg)
    assert c["next_due"] is None and c["closed"] is None


async def test_custom_offsets(reg: SqliteRegistry) -> None:
    decide = FakeDecide()
    offsets = (1.0, 0.5, 14.0)
    await notify.start_clocks(reg, [start()], offsets, True)
    assert (await clocks(reg))[0]["next_due"] == T0 + DAY // 2
    assert await produce(reg, 0.25, decide, offsets) == 0
    assert await produce(reg, 0.5, decide, offsets) == 1
    assert await produce(reg, 13, decide, offsets) == 1
    assert await produce(reg, 14, decide, offsets) == 1
    assert await produce(reg, 30, decide, offsets) == 1
    assert await kinds(reg) == ["day0.5", "day1", "day14", "expiry"]


async def test_offsets_after_the_deadline_still_remind(reg: SqliteRegistry) -> None:
    # a blocked device can still be legalised, so a late reminder is kept
    decide = FakeDecide()
    offsets = (0.0, 35.0)
    await notify.start_clocks(reg, [start()], offsets, True)
    assert await produce(reg, 30, decide, offsets) == 2
    assert await produce(reg, 35, decide, offsets) == 1
    assert await kinds(reg) == ["day0", "expiry", "day35"]


async def test_a_failing_decision_is_retried_later(reg: SqliteRegistry) -> None:
    def broken(imei14: str, imsi: str | None, at: int) -> Decision:
        raise RuntimeError("snapshot gone")

    await notify.start_clocks(reg, [start()], OFFSETS, True)
    assert await notify.produce_due(reg, T0, broken, OFFSETS, True) == 0
    [c] = await clocks(reg)
    assert c["next_due"] > T0 and c["closed"] is None
    assert await produce(reg, 1, FakeDecide()) == 1


async def test_limit_bounds_a_call_oldest_first(reg: SqliteRegistry) -> None:
    decide = FakeDecide()
    imeis = [f"{35209900000000 + i:014d}" for i in range(5)]
    await notify.start_clocks(reg, [start(m, at=T0 + i) for i, m in enumerate(imeis)], (0.0,),
                              False)
    assert await notify.produce_due(reg, T0 + DAY, decide, (0.0,), False, limit=2) == 2
    assert {r["imei"] for r in await notify.list_outbox(reg)} == set(imeis[:2])
    assert await notify.produce_due(reg, T0 + DAY, decide, (0.0,), False) == 3


async def test_without_imsi_the_decision_gets_none(reg: SqliteRegistry) -> None:
    decide = FakeDecide()
    await notify.start_clocks(reg, [start(imsi="")], OFFSETS, True)
    assert await produce(reg, 0, decide) == 1
    assert decide.calls == [(IMEI, None, T0)]
    [row] = await notify.list_outbox(reg)
    assert row["imsi"] == ""


# -- reads and acknowledgements ------------------------------------------------------------


async def test_mark_sent_and_pending(reg: SqliteRegistry) -> None:
    decide = FakeDecide()
    await notify.start_clocks(reg, [start(), start(IMEI2)], OFFSETS, True)
    await produce(reg, 20, decide)
    rows = await notify.list_outbox(reg)
    assert len(rows) == 4
    ids = [r["id"] for r in rows if r["imei"] == IMEI]
    assert await notify.mark_sent(reg, ids, now=T0 + 21 * DAY) == 2
    assert await notify.mark_sent(reg, [ids[0], 9999], now=T0 + 22 * DAY) == 0
    assert await notify.mark_sent(reg, []) == 0
    pending = await notify.list_outbox(reg, pending_only=True)
    assert {r["imei"] for r in pending} == {IMEI2}
    sent = await notify.list_outbox(reg, imei=IMEI + "7")  # a 15th digit is ignored
    assert [r["sent_at"] for r in sent] == [from_epoch(T0 + 21 * DAY)] * 2
    assert await notify.list_outbox(reg, pending_only=True, imei=IMEI) == []
    assert len(await notify.list_outbox(reg, limit=3)) == 3
    assert await notify.outbox_ids(reg, [*ids, 9999]) == set(ids)
    with pytest.raises(ValueError, match="not an IMEI"):
        await notify.list_outbox(reg, imei="123")
    # acknowledging is not a list change: the registry version is unchanged
    assert await reg.current_version() == 0


async def test_pending_deadline(reg: SqliteRegistry) -> None:
    decide = FakeDecide()
    await notify.start_clocks(reg, [start(), start(imsi="")], OFFSETS, True)
    await produce(reg, 0, decide)
    decide.fixed[IMEI] = Decision(Status.WHITELISTED, "legalised")
    assert await notify.pending_deadline(reg, IMEI2) == []
    got = await notify.pending_deadline(reg, IMEI, offsets_days=OFFSETS)
    assert [g["imsi"] for g in got] == ["", IMSI]
    assert got[1] == {
        "imsi": IMSI, "reason": "pending_verification", "started": from_epoch(T0),
        "deadline": from_epoch(T0 + GRACE), "next_warning_at": from_epoch(T0 + 20 * DAY),
        "warnings": [{"kind": "day0", "due_at": from_epoch(T0), "sent_at": None}],
        "next_warning": "day20"}
    assert "next_warning" not in (await notify.pending_deadline(reg, IMEI))[0]
    await produce(reg, 20, decide)  # legalised: both clocks close
    assert await notify.pending_deadline(reg, IMEI) == []
    with pytest.raises(ValueError):
        await notify.pending_deadline(reg, "x")


# -- eir notify ------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="eir")
    sub = p.add_subparsers(dest="command", required=True)
    notify_cli.add_parser(sub)
    return p.parse_args(["notify", *argv])


def seed(db: Path) -> None:
    async def go() -> None:
        async with SqliteRegistry(db) as reg:
            await notify.start_clocks(reg, [start(), start(IMEI2)], OFFSETS, True)
            await produce(reg, 20, FakeDecide())

    asyncio.run(go())


def test_cli_list_and_ack(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "eir.db"
    seed(db)
    assert notify_cli.run(parse("list", "--db", str(db), "--json")) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 4 and {r["kind"] for r in rows} == {"day0", "day20"}
    ids = [str(r["id"]) for r in rows if r["imei"] == IMEI]
    assert notify_cli.run(parse("ack", "--db", str(db), *ids)) == 0
    assert "marked 2 warning(s) sent" in capsys.readouterr().err
    assert notify_cli.run(parse("ack", "--db", str(db), ids[0])) == 0
    assert "1 already marked" in capsys.readouterr().err
    assert notify_cli.run(parse("list", "--db", str(db), "--pending")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("id\timei\timsi\tkind")
    assert len(lines) == 3 and all(IMEI2 in line and "pending" in line for line in lines[1:])
    assert notify_cli.run(parse("list", "--db", str(db), "--imei", IMEI, "--json")) == 0
    assert all(r["sent_at"] for r in json.loads(capsys.readouterr().out))


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "eir.db"
    seed(db)
    assert notify_cli.run(parse("ack", "--db", str(db), "1", "999")) == 1
    err = capsys.readouterr().err
    assert err == "eir: no outbox warning with id 999; nothing was marked\n"
    assert notify_cli.run(parse("list", "--db", str(db), "--pending", "--json")) == 0
    assert len(json.loads(capsys.readouterr().out)) == 4  # id 1 was not marked
    assert notify_cli.run(parse("list", "--db", str(tmp_path / "nope.db"))) == 1
    assert capsys.readouterr().err == f"eir: {tmp_path / 'nope.db'}: no such registry\n"
    assert notify_cli.run(parse("list", "--db", str(db), "--imei", "12ab")) == 1
    assert "not an IMEI" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse("ack", "1")  # --db is required to acknowledge
