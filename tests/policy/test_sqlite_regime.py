"""eir.policy.sqlite_regime: observations, decision counts, history and TAC imports.

Real SQLite files under tmp_path. Times are UTC epoch seconds.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from eir.policy.audit import AuditRecord
from eir.policy.engine import DecisionConfig, decide
from eir.policy.model import Status, to_epoch
from eir.policy.observations import ObservationRow, SightingCache
from eir.policy.registry import RowError
from eir.policy.sqlite import SqliteRegistry
from eir.policy.sqlite_regime import (
    SqliteObservations,
    import_tac_csv,
    parse_observation_csv,
    parse_tac_csv,
)

T0 = 1_748_779_200  # 2025-06-01T12:00:00Z
DAY = 86_400
IMEI_A = 35209900176148
IMEI_B = 49015420323751
HOME_1 = "401011111111111"
HOME_2 = "401012222222222"


def clock() -> datetime:
    return datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
async def reg(tmp_path: Path) -> AsyncIterator[SqliteRegistry]:
    async with SqliteRegistry(tmp_path / "eir.db", clock=clock) as r:
        yield r


@pytest.fixture
async def obs(reg: SqliteRegistry) -> AsyncIterator[SqliteObservations]:
    o = SqliteObservations(reg)
    yield o
    o.close()


async def all_rows(reg: SqliteRegistry) -> list[tuple[int, str, str, int, int]]:
    async with reg.read() as conn, conn.execute(
        "SELECT o.imei, o.imsi, p.name, o.first_seen, o.last_seen FROM observation AS o"
        " JOIN operator AS p ON p.id = o.operator ORDER BY o.imei, o.imsi, p.name"
    ) as cur:
        return [(int(i), str(s), str(o), int(f), int(la))
                for i, s, o, f, la in await cur.fetchall()]


async def records(reg: SqliteRegistry) -> list[AuditRecord]:
    return [r async for r in reg.audit_records()]


def lines(*rows: str) -> list[str]:
    return [r + "\n" for r in rows]


# -- writes and reads ------------------------------------------------------------------------


async def test_write_sightings_is_idempotent(reg: SqliteRegistry,
                                             obs: SqliteObservations) -> None:
    batch: list[ObservationRow] = [
        (IMEI_A, HOME_1, "op-1", T0, T0 + 60),
        (IMEI_A, "", "op-1", T0 + 5, T0 + 5),
        (IMEI_B, HOME_2, "op-2", T0 + 10, T0 + 3600),
    ]
    await obs.write_sightings(batch)
    first = await all_rows(reg)
    await obs.write_sightings(batch)
    await obs.write_sightings(list(reversed(batch)))
    assert await all_rows(reg) == first == [
        (IMEI_A, "", "op-1", T0 + 5, T0 + 5),
        (IMEI_A, HOME_1, "op-1", T0, T0 + 60),
        (IMEI_B, HOME_2, "op-2", T0 + 10, T0 + 3600),
    ]
    # Sightings are not list changes: no audit record, no new version.
    assert await reg.current_version() == 0
    assert await records(reg) == []


async def test_earliest_first_and_latest_last_win(reg: SqliteRegistry,
                                                 obs: SqliteObservations) -> None:
    await obs.write_sightings([(IMEI_A, HOME_1, "op-1", T0 + 100, T0 + 200)])
    await obs.write_sightings([(IMEI_A, HOME_1, "op-1", T0 + 50, T0 + 150)])  # earlier replay
    await obs.write_sightings([(IMEI_A, HOME_1, "op-1", T0 + 120, T0 + 400)])  # later one
    # Two rows of one pair in one batch merge the same way.
    await obs.write_sightings([(IMEI_A, HOME_1, "op-2", T0 + 300, T0 + 300),
                               (IMEI_A, HOME_1, "op-2", T0 + 20, T0 + 30)])
    assert await all_rows(reg) == [
        (IMEI_A, HOME_1, "op-1", T0 + 50, T0 + 400),
        (IMEI_A, HOME_1, "op-2", T0 + 20, T0 + 300),
    ]
    # The synchronous read merges operators: earliest first, latest last.
    assert obs.read_sightings(IMEI_A) == [(HOME_1, T0 + 20, T0 + 400)]


async def test_read_sightings_per_imsi_and_fresh_after_writes(obs: SqliteObservations) -> None:
    assert obs.read_sightings(IMEI_A) == []  # the sync reader opens on an empty table
    await obs.write_sightings([(IMEI_A, HOME_1, "op-1", T0, T0 + 10),
                               (IMEI_A, HOME_2, "op-2", T0 + 5, T0 + 6),
                               (IMEI_A, "", "op-2", T0 + 7, T0 + 8),
                               (IMEI_B, HOME_1, "op-1", T0, T0)])
    assert sorted(obs.read_sightings(IMEI_A)) == [
        ("", T0 + 7, T0 + 8), (HOME_1, T0, T0 + 10), (HOME_2, T0 + 5, T0 + 6)]
    # The same sync connection sees rows committed after it was opened.
    await obs.write_sightings([(IMEI_A, HOME_1, "op-3", T0 - 100, T0 + 999)])
    assert (HOME_1, T0 - 100, T0 + 999) in obs.read_sightings(IMEI_A)
    obs.close()
    obs.close()  # twice is harmless
    assert len(obs.read_sightings(IMEI_B)) == 1  # and it reopens


async def test_sighting_cache_over_sqlite_finds_flushed_rows(reg: SqliteRegistry) -> None:
    cfg = DecisionConfig()
    mine, theirs = SqliteObservations(reg), SqliteObservations(reg)
    cache = SightingCache(mine, cfg.is_home)
    cache.observe(IMEI_A, HOME_1, "op-1", T0)
    assert await cache.flush() == 1
    seen = SightingCache(theirs, cfg.is_home).peek(IMEI_A)  # another worker
    assert (seen.first_home, seen.first_imsi) == (T0, HOME_1)
    mine.close()
    theirs.close()


async def test_prune_deletes_only_rows_last_seen_before_the_cut(
    reg: SqliteRegistry, obs: SqliteObservations
) -> None:
    cut = T0 + 1000
    await obs.write_sightings([
        (IMEI_A, HOME_1, "op-1", T0, cut - 1),  # goes
        (IMEI_A, HOME_2, "op-1", T0, cut),  # stays: last seen at the cut
        (IMEI_B, HOME_1, "op-1", T0 - 5 * DAY, T0 - 4 * DAY),  # goes
        (IMEI_B, HOME_1, "op-2", T0 - 5 * DAY, cut + 1),  # stays: another operator
        (IMEI_B, "", "op-2", T0, T0 + 1),  # goes
    ])
    assert await obs.prune(cut, batch=1) == 3  # several batches
    assert await all_rows(reg) == [
        (IMEI_A, HOME_2, "op-1", T0, cut),
        (IMEI_B, HOME_1, "op-2", T0 - 5 * DAY, cut + 1),
    ]
    assert await obs.prune(cut) == 0
    assert await reg.current_version() == 0


async def test_history_counts_and_observed_imeis(obs: SqliteObservations) -> None:
    await obs.write_sightings([(IMEI_A, HOME_1, "op-2", T0 + 60, T0 + 120),
                               (IMEI_A, "", "op-1", T0, T0 + 3600),
                               (IMEI_B, HOME_2, "op-1", T0, T0)])
    assert await obs.history(str(IMEI_A)) == [
        {"imsi": None, "operator": "op-1", "first_seen": "2025-06-01T12:00:00Z",
         "last_seen": "2025-06-01T13:00:00Z"},
        {"imsi": HOME_1, "operator": "op-2", "first_seen": "2025-06-01T12:01:00Z",
         "last_seen": "2025-06-01T12:02:00Z"},
    ]
    assert await obs.history("11111111111111") == []
    assert sorted(await obs.observed_imeis()) == [(IMEI_A, "op-1"), (IMEI_B, "op-1")]


async def test_write_counts_add_up_per_day(obs: SqliteObservations) -> None:
    counts: Counter[tuple[str, int | None, str]] = Counter({
        ("op-1", 2, "pending_verification"): 5,
        ("op-1", 0, "registered"): 2,
        ("op-2", None, "unknown"): 1,
    })
    await obs.write_counts(counts, T0)
    await obs.write_counts(Counter({("op-1", 2, "pending_verification"): 3}), T0 + 3600)
    await obs.write_counts(Counter({("op-1", 1, "stolen"): 4}), T0 + DAY)
    await obs.write_counts(Counter(), T0)  # nothing to add
    assert await obs.counts("2025-06-01") == [
        {"day": "2025-06-01", "operator": "op-1", "status": "GREYLISTED",
         "reason": "pending_verification", "count": 8},
        {"day": "2025-06-01", "operator": "op-1", "status": "WHITELISTED",
         "reason": "registered", "count": 2},
        {"day": "2025-06-01", "operator": "op-2", "status": "UNKNOWN", "reason": "unknown",
         "count": 1},
    ]
    assert [(c["day"], c["status"], c["count"]) for c in await obs.counts()][-1] == (
        "2025-06-02", "BLACKLISTED", 4)


async def test_a_rolled_back_import_does_not_leave_stale_operator_ids(
    obs: SqliteObservations,
) -> None:
    def stop(_n: int) -> None:
        raise KeyboardInterrupt  # e.g. Ctrl-C in the progress display, after a chunk

    with pytest.raises(KeyboardInterrupt):
        await obs.import_history([(IMEI_A, HOME_1, "op-A", T0, T0)], on_chunk=stop)
    await obs.write_sightings([(IMEI_B, HOME_2, "op-B", T0, T0)])
    await obs.write_sightings([(IMEI_A, HOME_1, "op-A", T0 + 1, T0 + 1)])
    assert [h["operator"] for h in await obs.history(str(IMEI_A))] == ["op-A"]


# -- history import --------------------------------------------------------------------------


async def test_import_history_is_one_audited_change(reg: SqliteRegistry,
                                                    obs: SqliteObservations) -> None:
    text = lines(
        "IMEI,imsi,operator,first_seen,last_seen",
        f"{IMEI_A}3,{HOME_1},op-1,2025-01-01T00:00:00Z,2025-02-01T00:00:00+05:00",
        f"{IMEI_A},,op-1,2025-01-05,",
        "",
        f"{IMEI_B},{HOME_2},op-2,2024-12-31T23:00:00Z,2025-01-01T00:00:00Z",
    )
    done: list[int] = []
    n = await obs.import_history(parse_observation_csv(text), actor="ops",
                                 summary={"file": "hist.csv"}, on_chunk=done.append)
    assert n == 3 and done == [3]
    assert sorted(obs.read_sightings(IMEI_A)) == [
        ("", to_epoch("2025-01-05T00:00:00Z"), to_epoch("2025-01-05T00:00:00Z")),
        (HOME_1, to_epoch("2025-01-01T00:00:00Z"), to_epoch("2025-01-31T19:00:00Z")),
    ]
    recs = await records(reg)
    assert [(r.kind, r.count, r.actor) for r in recs] == [("import-observations", 3, "ops")]
    assert json.loads(recs[0].summary or "") == {"observations": 3, "file": "hist.csv"}
    assert await reg.current_version() == recs[0].seq
    # A replay of the same history changes no observation.
    before = await all_rows(reg)
    await obs.import_history(parse_observation_csv(text))
    assert await all_rows(reg) == before


async def test_imported_history_grandfathers_a_device(reg: SqliteRegistry,
                                                     obs: SqliteObservations) -> None:
    await obs.import_history(parse_observation_csv(lines(
        "imei,imsi,operator,first_seen", f"{IMEI_A},{HOME_1},op-1,2025-03-01T00:00:00Z")))
    cfg = DecisionConfig()
    seen = SightingCache(obs, cfg.is_home).peek(IMEI_A)
    snap = await reg.load_snapshot()
    d = decide(snap.facts(str(IMEI_A), HOME_1, now=T0, sightings=seen), cfg)
    assert (d.status, d.reason) == (Status.WHITELISTED, "grandfathered")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ([], 1, "empty file: a header row is required"),
        (["imei,imsi,operator,first_seen,colour"], 1, "unknown column(s) 'colour'"),
        (["imei,operator"], 1, "missing required column(s) first_seen"),
        (["imei,operator,first_seen", f"{IMEI_A},op,2025-01-01", "123,op,2025-01-01"], 3,
         "IMEI '123' is not 14 or 15 decimal digits"),
        (["imei,imsi,operator,first_seen", f"{IMEI_A},4010,op,2025-01-01"], 2,
         "IMSI '4010' is not 5 to 15 decimal digits"),
        (["imei,imsi,operator,first_seen", f"{IMEI_A},40101abcd,op,2025-01-01"], 2,
         "IMSI '40101abcd'"),
        (["imei,operator,first_seen", f"{IMEI_A},,2025-01-01"], 2,
         "operator must be printable text of 1 to 128 characters"),
        (["imei,operator,first_seen", f"{IMEI_A},op,yesterday"], 2,
         "not an ISO 8601 timestamp: 'yesterday'"),
        (["imei,operator,first_seen,last_seen", f"{IMEI_A},op,2025-01-02,2025-01-01"], 2,
         "last_seen is before first_seen"),
        (["imei,operator,first_seen", f"{IMEI_A},op"], 2, "expected 3 fields, found 2"),
        (["imei,operator,first_seen", f'{IMEI_A},"op,2025-01-01'], 2, "bad CSV"),
    ],
)
def test_observation_csv_errors_name_the_line(text: list[str], line: int, message: str) -> None:
    with pytest.raises(RowError) as err:
        list(parse_observation_csv(lines(*text)))
    assert err.value.line == line
    assert message in err.value.message, err.value.message


async def test_a_bad_history_row_imports_nothing(reg: SqliteRegistry,
                                                 obs: SqliteObservations) -> None:
    text = lines("imei,operator,first_seen", f"{IMEI_A},op,2025-01-01", "bad,op,2025-01-01")
    with pytest.raises(RowError, match="line 3"):
        await obs.import_history(parse_observation_csv(text))
    assert await all_rows(reg) == []
    assert await records(reg) == []


# -- the TAC database ------------------------------------------------------------------------


def test_parse_tac_csv() -> None:
    rows = list(parse_tac_csv(lines("\ufeffTAC, Brand ,model,CLASS",
                                    "35209900,Acme,A 1,Smartphone",
                                    "",
                                    "00000001,,,M2M")))
    assert rows == [(35209900, "Acme", "A 1", "smartphone"), (1, None, None, "m2m")]
    assert list(parse_tac_csv(lines("tac,class", "12345678,feature"))) == [
        (12345678, None, None, "feature")]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ([], 1, "empty file"),
        (["tac,brand,model,class,colour"], 1, "unknown column(s) 'colour'"),
        (["tac,brand"], 1, "missing required column(s) class"),
        (["tac,class", "3520990,phone"], 2, "TAC '3520990' is not 8 decimal digits"),
        (["tac,class", "35209900,phone", "3520990x,phone"], 3, "is not 8 decimal digits"),
        (["tac,class", "352099001,phone"], 2, "is not 8 decimal digits"),
        (["tac,class", "35209900,phone", "49015420,phone", "35209900,m2m"], 4,
         "TAC 35209900 appears twice in this file"),
        (["tac,class", "35209900,"], 2, "class must be printable text of 1 to 64 characters"),
        (["tac,class", "35209900," + "x" * 65], 2, "class must be printable"),
        (["tac,class", "35209900"], 2, "expected 2 fields, found 1"),
    ],
)
def test_tac_csv_errors_name_the_line(text: list[str], line: int, message: str) -> None:
    with pytest.raises(RowError) as err:
        list(parse_tac_csv(lines(*text)))
    assert err.value.line == line
    assert message in err.value.message, err.value.message


async def test_import_tac_is_one_audited_change_and_reaches_the_snapshot(
    reg: SqliteRegistry, obs: SqliteObservations
) -> None:
    assert not (await reg.load_snapshot()).tac.loaded
    done: list[int] = []
    n = await import_tac_csv(obs, io.BytesIO(
        b"\xef\xbb\xbftac,brand,model,class\n35209900,Acme,A1,smartphone\n49015420,,,M2M\n"),
        actor="tacs", on_chunk=done.append)
    assert n == 2 and done == [2]
    recs = await records(reg)
    assert [(r.kind, r.count, r.actor) for r in recs] == [("import-tac", 2, "tacs")]
    assert set(json.loads(recs[0].summary or "")) == {"tacs", "file_sha256"}
    snap = await reg.load_snapshot()
    assert snap.version == recs[0].seq
    assert (len(snap.tac), snap.tac.lookup(35209900), snap.tac.lookup(49015420),
            snap.tac.lookup(11111111)) == (2, "smartphone", "m2m", None)
    # A later import replaces a TAC's row and adds others; one more record.
    await obs.import_tac(parse_tac_csv(lines("tac,class", "35209900,m2m", "11111111,feature")))
    snap = await reg.load_snapshot()
    assert (len(snap.tac), snap.tac.lookup(35209900), snap.tac.lookup(11111111)) == (
        3, "m2m", "feature")
    assert [r.kind for r in await records(reg)] == ["import-tac", "import-tac"]
    async with reg.read() as conn, conn.execute(
        "SELECT tac, brand, model, class FROM tac ORDER BY tac"
    ) as cur:
        assert [tuple(r) for r in await cur.fetchall()] == [
            # A row replaces the TAC's row: brand and model not given are cleared.
            (11111111, None, None, "feature"), (35209900, None, None, "m2m"),
            (49015420, None, None, "m2m")]


async def test_import_tac_csv_from_a_path(tmp_path: Path, obs: SqliteObservations) -> None:
    path = tmp_path / "tac.csv"
    path.write_bytes(b"tac,class\n35209900,smartphone\n")
    assert await import_tac_csv(obs, path) == 1


async def test_a_bad_tac_file_imports_nothing(reg: SqliteRegistry,
                                              obs: SqliteObservations) -> None:
    with pytest.raises(RowError, match="line 3: TAC 35209900 appears twice"):
        await import_tac_csv(obs, io.BytesIO(b"tac,class\n35209900,a\n35209900,b\n"))
    assert not (await reg.load_snapshot()).tac.loaded
    assert await records(reg) == []
    assert await obs.import_tac([]) == 0
    assert await reg.current_version() == 0


async def test_tac_database_feeds_the_decision(reg: SqliteRegistry,
                                              obs: SqliteObservations) -> None:
    await obs.import_tac(parse_tac_csv(lines("tac,class", "35209900,m2m", "49015420,phone")))
    snap = await reg.load_snapshot()
    cfg = DecisionConfig()
    by_imei = {imei: decide(snap.facts(imei, HOME_1, now=T0), cfg)
               for imei in ("35209900176148", "49015420323751", "11111111111111")}
    assert {k: (d.status, d.reason) for k, d in by_imei.items()} == {
        "35209900176148": (Status.WHITELISTED, "exempt_class"),
        "49015420323751": (Status.GREYLISTED, "pending_verification"),
        "11111111111111": (Status.BLACKLISTED, "unknown_tac"),
    }
