"""The regime's list format: grace_until, evidence, sv, op, TAC and FIRST-LAST ranges.

Parsing (eir.policy.csvio), and what the SQLite registry does with such rows:
full lists of one source (``replace_source``), deltas (``scope_source``),
list versions, range rows through export and import, per-source export.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from eir.policy.csvio import (
    COLUMNS,
    EXPORT_COLUMNS,
    CsvImportError,
    export_csv,
    format_row,
    import_csv,
    parse_csv,
)
from eir.policy.model import ListName
from eir.policy.registry import EntryRow
from eir.policy.sqlite import ListVersion, SqliteRegistry

A = "35209900176148"
B = "49015420323751"
C = "26053179311383"
D = "86001203456789"
IMSI = "401011234567890"


def clock() -> datetime:
    return datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
async def reg(tmp_path: Path) -> AsyncIterator[SqliteRegistry]:
    async with SqliteRegistry(tmp_path / "eir.db", clock=clock) as r:
        yield r


def parse(*lines: str, default_source: str | None = None) -> list[EntryRow]:
    text = "\n".join(lines) + "\n"
    return list(parse_csv(io.StringIO(text, newline=""), default_source=default_source))


def csv_bytes(*lines: str) -> io.BytesIO:
    return io.BytesIO(("\n".join(lines) + "\n").encode())


async def dump(reg: SqliteRegistry) -> list[str]:
    out = io.StringIO(newline="")
    await export_csv(reg, out)
    return out.getvalue().splitlines()[1:]


async def rows_of(reg: SqliteRegistry, source: str | None = None) -> list[EntryRow]:
    return [r async for r in reg.export_rows(source)]


# -- parsing the new columns -----------------------------------------------------------------


def test_columns() -> None:
    assert COLUMNS[-4:] == ("grace_until", "evidence", "sv", "op")
    assert COLUMNS[:-1] == EXPORT_COLUMNS  # export writes state, not operations


def test_tac_and_first_last_ranges() -> None:
    rows = parse("imei,list,reason,sv",
                 "35209900,black,counterfeit,",
                 "352099001761480 - 352099001761499,grey,,07",
                 f"{A}-{A},white,,",
                 f"{A},black,stolen,03")
    assert [(r.imei, r.hi, r.sv, r.is_range) for r in rows] == [
        ("35209900000000", "35209900999999", None, True),
        ("35209900176148", "35209900176149", "07", True),
        (A, A, None, True),
        (A, None, "03", True),  # one IMEI restricted to one software version
    ]
    plain = parse("imei,list", f"{A},white")[0]
    assert (plain.hi, plain.sv, plain.is_range) == (None, None, False)


def test_grace_until_evidence_and_op() -> None:
    rows = parse("imei,list,grace_until,evidence,op",
                 f"{A},grey,2025-07-01T05:00:00+05:00,notice 7,",
                 f"{B},black,,case 12/2025 (Almaty),ADD",
                 f"{C},white,,,update",
                 f"{D},grey,,,remove")
    assert [(r.grace_until, r.evidence, r.op) for r in rows] == [
        ("2025-07-01T00:00:00Z", "notice 7", None),
        (None, "case 12/2025 (Almaty)", "add"),
        (None, None, "update"),
        (None, None, "remove"),
    ]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("3520990,black,,,,", "IMEI '3520990' is not 14 or 15 decimal digits "
                              "(nor an 8-digit TAC or a range)"),
        ("3520990x,black,,,,", "is not 14 or 15 decimal digits"),
        (f"{A}-123,black,,,,", f"range '{A}-123': both ends must be 14 or 15 digit IMEIs"),
        (f"-{A},black,,,,", "both ends must be"),
        (f"{B}-{A},black,,,,", f"range '{B}-{A}': the last IMEI is before the first"),
        (f"{A},black,,,7,", "sv '7' is not two decimal digits"),
        (f"{A},black,,,0a,", "sv '0a' is not two decimal digits"),
        (f"{A},black,,,123,", "sv '123' is not two decimal digits"),
        (f"{A},black,,,,delete", "op 'delete' is not one of add, update, remove"),
        (f"{A},white,2025-07-01,,,", "grace_until is only allowed on grey rows"),
        (f"{A},black,2025-07-01,,,", "grace_until is only allowed on grey rows"),
        (f"{A},grey,July,,,", "grace_until: not an ISO 8601 timestamp: 'July'"),
        (f"{A},black,,{'x' * 129},,", "evidence must be printable text of at most 128"),
        (f"{A},black,,a\tb,,", "evidence must be printable"),
        ("35209900,exception,,,,", "an exception pair names one IMEI, not a range or an sv"),
        (f"{A}-{B},exception,,,,", "not a range or an sv"),
        (f"{A},exception,,,01,", "not a range or an sv"),
    ],
)
def test_errors_name_the_line(row: str, message: str) -> None:
    imsi = IMSI if ",exception," in row else ""
    with pytest.raises(CsvImportError) as err:
        parse("imei,list,grace_until,evidence,sv,op,imsi", f"{A},white,,,,,", f"{row},{imsi}")
    assert err.value.line == 3
    assert message in err.value.message, err.value.message


def test_evidence_of_128_characters_is_fine() -> None:
    assert parse("imei,list,evidence", f"{A},black,{'x' * 128}")[0].evidence == "x" * 128


def test_format_row() -> None:
    tac = EntryRow("35209900000000", ListName.BLACK, "counterfeit", hi="35209900999999")
    part = EntryRow("35209900000000", ListName.BLACK, "counterfeit", hi="35209900999998")
    other_tac = EntryRow("35209900000000", ListName.BLACK, "x", hi="35209901999999")
    with_sv = EntryRow(A, ListName.GREY, "pending_verification", source="ministry",
                       since="2025-06-01T00:00:00Z", grace_until="2025-07-01T00:00:00Z",
                       evidence="n 1", sv="07", op="remove")
    assert format_row(tac)[0] == "35209900"
    assert format_row(part)[0] == "35209900000000-35209900999998"
    assert format_row(other_tac)[0] == "35209900000000-35209901999999"
    assert format_row(with_sv) == [A, "grey", "pending_verification", "", "ministry", "",
                                   "2025-06-01T00:00:00Z", "2025-07-01T00:00:00Z", "n 1", "07"]
    assert format_row(with_sv, with_op=True)[-1] == "remove"
    assert format_row(tac, with_op=True)[-1] == ""
    assert len(format_row(tac)) == len(EXPORT_COLUMNS)


# -- ranges through the registry -------------------------------------------------------------

RANGES = (
    "imei,list,reason,source,since,grace_until,evidence,sv,imsi",
    "35209900,black,counterfeit,ministry,2025-05-01T00:00:00Z,,order 1,,",
    "49015420,grey,,ministry,,2025-08-01T00:00:00Z,,05,",
    "352099001761400-352099001761499,white,registered,operator,,,,,",
    f"{A},black,stolen,police,,,case 2,03,",
    f"{A},grey,,ministry,,2025-07-01T00:00:00Z,notice 3,,",
    f"{C},exception,,police,,,order 4,,{IMSI}",
)


async def test_ranges_round_trip_through_export_and_import(tmp_path: Path,
                                                           reg: SqliteRegistry) -> None:
    result = await import_csv(reg, csv_bytes(*RANGES))
    assert result.rows == 6
    assert result.by_list == {"black": 2, "grey": 2, "white": 1, "exception": 1}
    exported = await dump(reg)
    assert exported == [
        f"{A},grey,pending_verification,,ministry,,2025-06-01T12:00:00Z,2025-07-01T00:00:00Z,"
        "notice 3,",
        "35209900,black,counterfeit,,ministry,,2025-05-01T00:00:00Z,,order 1,",
        "35209900176140-35209900176149,white,registered,,operator,,2025-06-01T12:00:00Z,,,",
        f"{A},black,stolen,,police,,2025-06-01T12:00:00Z,,case 2,03",
        "49015420,grey,pending_verification,,ministry,,2025-06-01T12:00:00Z,"
        "2025-08-01T00:00:00Z,,05",
        f"{C},exception,paired_exception,{IMSI},police,,2025-06-01T12:00:00Z,,order 4,",
    ]
    out = tmp_path / "out.csv"
    await export_csv(reg, out)
    async with SqliteRegistry(tmp_path / "copy.db", clock=clock) as copy:
        await import_csv(copy, out)
        assert await dump(copy) == exported
        assert (await copy.load_snapshot()).digest() == (await reg.load_snapshot()).digest()


async def test_a_one_imei_range_round_trips(tmp_path: Path, reg: SqliteRegistry) -> None:
    await import_csv(reg, csv_bytes("imei,list,reason", f"{A}-{A},black,counterfeit",
                                    f"{A},white,registered"))
    out = tmp_path / "out.csv"
    await export_csv(reg, out)
    async with SqliteRegistry(tmp_path / "copy.db", clock=clock) as copy:
        await import_csv(copy, out)
        assert (await copy.load_snapshot()).digest() == (await reg.load_snapshot()).digest()


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("35209900,black", "35209900,grey"),
        ("35209900,black", "35209900000000-35209900999999,black"),  # the same TAC spelled out
        (f"{A}-{B},black", f"{A}-{B},white"),
        (f"{A},black,07", f"{A},grey,07"),
        (f"{A}-{B},black,01", f"{A}-{B},black,01"),
    ],
)
async def test_a_range_twice_in_one_file_is_rejected_with_its_line(
    reg: SqliteRegistry, first: str, second: str
) -> None:
    def pad(row: str) -> str:
        return row if row.count(",") == 2 else row + ","

    with pytest.raises(CsvImportError) as err:
        await import_csv(reg, csv_bytes("imei,list,sv", pad(first), f"{C},white,",
                                        pad(second)))
    assert err.value.line == 4
    assert "appears twice in this file (first at line 2)" in err.value.message
    assert await rows_of(reg) == []


async def test_the_same_range_with_another_sv_is_another_entry(reg: SqliteRegistry) -> None:
    result = await import_csv(reg, csv_bytes("imei,list,sv", "35209900,black,",
                                             "35209900,grey,01", "35209900,white,02"))
    assert result.rows == 3
    assert [(r.imei, r.hi, r.sv, r.list) for r in await rows_of(reg)] == [
        ("35209900000000", "35209900999999", None, ListName.BLACK),
        ("35209900000000", "35209900999999", "01", ListName.GREY),
        ("35209900000000", "35209900999999", "02", ListName.WHITE),
    ]


async def test_a_range_repeated_in_a_later_chunk_names_its_own_line(tmp_path: Path) -> None:
    async with SqliteRegistry(tmp_path / "eir.db", clock=clock, chunk_size=2) as reg:
        with pytest.raises(CsvImportError) as err:
            await import_csv(reg, csv_bytes("imei,list", "35209900,black", "49015420,grey",
                                            "35209800,black", "35209900,grey"))
        assert err.value.line == 5


# -- full lists of one source ----------------------------------------------------------------

SEEDED = (
    "imei,list,reason,source,imsi",
    f"{A},black,counterfeit,ministry,",
    f"{B},grey,,ministry,",
    f"{C},black,stolen,police,",
    "35209900,black,counterfeit,ministry,",
    f"{A},exception,,ministry,{IMSI}",
    f"{C},exception,,police,{IMSI}",
)


async def test_full_list_replaces_only_its_own_sources_entries(reg: SqliteRegistry) -> None:
    await import_csv(reg, csv_bytes(*SEEDED))
    result = await import_csv(
        reg,
        csv_bytes("imei,list,reason", f"{A},grey,audit", f"{C},white,registered",
                  f"{D},black,illegal_import", "86001203,grey,"),
        default_source="ministry", replace_source="ministry", kind="import-full", actor="feed",
        list_version=ListVersion("ministry", 41, "full", "ab" * 32, "Ministry of Digital"))
    # C belongs to the police: skipped, not overwritten. B, the ministry's TAC and its pair
    # are not in the new list: removed.
    assert (result.rows, result.removed, result.skipped) == (3, 3, 1)
    got = {(r.imei, r.hi, r.imsi): (r.list.value, r.reason, r.source) for r in await rows_of(reg)}
    assert got == {
        (A, None, None): ("grey", "audit", "ministry"),
        (C, None, None): ("black", "stolen", "police"),
        (D, None, None): ("black", "illegal_import", "ministry"),
        ("86001203000000", "86001203999999", None): ("grey", "pending_verification",
                                                     "ministry"),
        (C, None, IMSI): ("exception", "paired_exception", "police"),
    }
    rec = [r async for r in reg.audit_records()][-1]
    assert (rec.kind, rec.actor, rec.count) == ("import-full", "feed", 6)
    summary = json.loads(rec.summary or "")
    assert (summary["replace_source"], summary["removed"], summary["skipped"]) == (
        "ministry", 3, 1)
    assert summary["list_version"] == {"source": "ministry", "version": 41, "kind": "full"}
    versions = await reg.list_versions()
    assert versions == {"ministry": {"version": 41, "kind": "full",
                                     "applied_at": "2025-06-01T12:00:00Z",
                                     "sha256": "ab" * 32, "publisher": "Ministry of Digital",
                                     "seq": rec.seq}}
    snap = await reg.load_snapshot()
    assert snap.list_versions == {"ministry": 41}
    assert (await reg.point_snapshot(A)).list_versions == {"ministry": 41}


@pytest.mark.parametrize("option", ["replace_source", "scope_source"])
async def test_skipped_rows_are_not_counted_as_written(reg: SqliteRegistry, option: str) -> None:
    await import_csv(reg, csv_bytes(*SEEDED))
    result = await import_csv(reg, csv_bytes("imei,list,source", f"{A},grey,ministry",
                                             f"{C},white,ministry"),
                              **{option: "ministry"})  # type: ignore[arg-type]
    assert (result.rows, result.skipped) == (1, 1)
    assert result.by_list == {"grey": 1}
    summary = json.loads([r async for r in reg.audit_records()][-1].summary or "")
    assert summary["rows"] == {"grey": 1}


async def test_an_empty_full_list_with_a_version_empties_the_source(
    reg: SqliteRegistry,
) -> None:
    await import_csv(reg, csv_bytes(*SEEDED))
    result = await import_csv(reg, csv_bytes("imei,list"), replace_source="ministry",
                              list_version=ListVersion("ministry", 2))
    assert (result.rows, result.removed) == (0, 4)
    assert {r.source for r in await rows_of(reg)} == {"police"}
    assert (await reg.list_versions())["ministry"]["version"] == 2
    # Without any row or removal, a version alone is still recorded.
    version = await reg.current_version()
    await import_csv(reg, csv_bytes("imei,list"), replace_source="ministry",
                     list_version=ListVersion("ministry", 3))
    assert await reg.current_version() == version + 1
    assert (await reg.load_snapshot()).list_versions == {"ministry": 3}


async def test_list_versions_of_several_sources(reg: SqliteRegistry) -> None:
    assert await reg.list_versions() == {}
    await import_csv(reg, csv_bytes("imei,list,source", f"{A},black,ministry"),
                     replace_source="ministry", list_version=ListVersion("ministry", 1))
    await import_csv(reg, csv_bytes("imei,list,source", f"{B},black,police"),
                     replace_source="police", list_version=ListVersion("police", 7, "delta"))
    versions = await reg.list_versions()
    assert {s: (v["version"], v["kind"]) for s, v in versions.items()} == {
        "ministry": (1, "full"), "police": (7, "delta")}
    assert list(versions) == ["ministry", "police"]


async def test_replace_and_scope_together_are_refused(reg: SqliteRegistry) -> None:
    with pytest.raises(ValueError, match="not both"):
        await reg.import_rows([], replace_source="a", scope_source="a")


async def test_export_of_one_source(reg: SqliteRegistry) -> None:
    await import_csv(reg, csv_bytes(*SEEDED))
    assert [(r.imei, r.hi, r.imsi) for r in await rows_of(reg, "ministry")] == [
        (A, None, None), (B, None, None), ("35209900000000", "35209900999999", None),
        (A, None, IMSI)]
    assert [(r.imei, r.imsi) for r in await rows_of(reg, "police")] == [(C, None), (C, IMSI)]
    assert await rows_of(reg, "nobody") == []
    assert len(await rows_of(reg)) == 6


# -- deltas ----------------------------------------------------------------------------------

DELTA = (
    "imei,list,reason,source,imsi,sv,op",
    f"{A},black,stolen,ministry,,,update",  # update own entry
    f"{D},grey,,ministry,,,add",  # new entry
    f"{B},grey,,ministry,,,remove",  # remove own entry
    f"{C},white,,ministry,,,add",  # police's entry: skipped
    "35209900,black,,ministry,,,remove",  # remove own range
    f"{A},exception,,ministry,{IMSI},,remove",  # remove own pair
    "11111111111111,grey,,ministry,,,remove",  # absent: not an error
    "49015420,black,,ministry,,01,",  # new SV range, op empty = add
)


async def test_delta_adds_updates_and_removes_within_its_source(reg: SqliteRegistry) -> None:
    await import_csv(reg, csv_bytes(*SEEDED))
    result = await import_csv(reg, csv_bytes(*DELTA), scope_source="ministry",
                              kind="import-delta",
                              list_version=ListVersion("ministry", 42, "delta"))
    assert (result.rows, result.removed, result.skipped) == (3, 3, 1)
    got = {(r.imei, r.hi, r.sv, r.imsi): (r.list.value, r.reason, r.source)
           for r in await rows_of(reg)}
    assert got == {
        (A, None, None, None): ("black", "stolen", "ministry"),
        (C, None, None, None): ("black", "stolen", "police"),
        (D, None, None, None): ("grey", "pending_verification", "ministry"),
        ("49015420000000", "49015420999999", "01", None): ("black", "unknown", "ministry"),
        (C, None, None, IMSI): ("exception", "paired_exception", "police"),
    }
    summary = json.loads([r async for r in reg.audit_records()][-1].summary or "")
    assert (summary["scope_source"], summary["removed"], summary["skipped"]) == (
        "ministry", 3, 1)
    assert (await reg.list_versions())["ministry"]["kind"] == "delta"


async def test_a_delta_applied_twice_changes_nothing(reg: SqliteRegistry) -> None:
    await import_csv(reg, csv_bytes(*SEEDED))
    await import_csv(reg, csv_bytes(*DELTA), scope_source="ministry")
    once = await dump(reg)
    again = await import_csv(reg, csv_bytes(*DELTA), scope_source="ministry")
    assert again.removed == 0
    assert await dump(reg) == once


async def test_a_delta_never_removes_another_sources_entry(reg: SqliteRegistry) -> None:
    await import_csv(reg, csv_bytes(*SEEDED))
    before = await dump(reg)
    result = await import_csv(reg, csv_bytes("imei,list,imsi,op", f"{C},black,,remove",
                                             f"{C},exception,{IMSI},remove"),
                              scope_source="ministry")
    assert result.removed == 0
    assert await dump(reg) == before


async def test_a_delta_without_scope_removes_whatever_it_names(reg: SqliteRegistry) -> None:
    await import_csv(reg, csv_bytes(*SEEDED))
    result = await import_csv(reg, csv_bytes("imei,list,op", f"{C},black,remove"))
    assert result.removed == 1
    assert C not in {r.imei for r in await rows_of(reg) if r.list is not ListName.EXCEPTION}


async def test_a_delta_counts_a_foreign_removal_as_skipped(reg: SqliteRegistry) -> None:
    await import_csv(reg, csv_bytes(*SEEDED))
    result = await import_csv(reg, csv_bytes("imei,list,op", f"{C},black,remove"),
                              scope_source="ministry")
    assert result.skipped == 1


@pytest.mark.parametrize("chunk_size", [
    1,
    10_000,
])
async def test_remove_then_add_in_one_delta_follows_the_file(tmp_path: Path,
                                                             chunk_size: int) -> None:
    async with SqliteRegistry(tmp_path / "eir.db", clock=clock, chunk_size=chunk_size) as reg:
        await import_csv(reg, csv_bytes("imei,list,source", f"{A},black,ministry"))
        await import_csv(reg, csv_bytes("imei,list,source,op", f"{A},black,ministry,remove",
                                        f"{A},grey,ministry,add"), scope_source="ministry")
        assert (await reg.show(A))["list"] == "grey"
