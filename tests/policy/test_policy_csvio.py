"""eir.policy.csvio: the CSV format, its errors, and export -> import identity."""

from __future__ import annotations

import asyncio
import io
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eir.policy.csvio import COLUMNS, CsvImportError, export_csv, import_csv, parse_csv
from eir.policy.model import ListName
from eir.policy.registry import EntryRow
from eir.policy.sqlite import SqliteRegistry


def clock() -> datetime:
    return datetime(2025, 6, 1, tzinfo=UTC)


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[SqliteRegistry]:
    async with SqliteRegistry(tmp_path / "eir.db", clock=clock) as reg:
        yield reg


def parse(text: str, **kwargs: str) -> list[EntryRow]:
    return list(parse_csv(io.StringIO(text, newline=""), **kwargs))


def error_of(text: str) -> str:
    with pytest.raises(CsvImportError) as err:
        parse(text)
    return str(err.value)


# -- parsing --------------------------------------------------------------------------


def test_minimal_file_and_defaults() -> None:
    rows = parse("imei,list\n352099001761481,black\n49015420323751,grey\n26053179311383,white\n")
    assert [(r.imei, r.list, r.reason, r.line) for r in rows] == [
        ("35209900176148", ListName.BLACK, "unknown", 2),
        ("49015420323751", ListName.GREY, "pending_verification", 3),
        ("26053179311383", ListName.WHITE, "registered", 4),
    ]
    assert all(r.imsi is r.source is r.note is r.since is None for r in rows)


def test_header_is_case_insensitive_and_columns_reorder() -> None:
    rows = parse(
        "Note , SINCE,List,IMEI,imsi,reason,source\r\n"
        "hi,2025-05-25T00:00:00+05:00,Exception,35209900176148,00101,,police\r\n"
    )
    assert rows == [
        EntryRow(
            "35209900176148",
            ListName.EXCEPTION,
            "paired_exception",
            "00101",
            "police",
            "hi",
            "2025-05-24T19:00:00Z",
        )
    ]


def test_default_source_fills_empty_sources() -> None:
    rows = parse(
        "imei,list,source\n35209900176148,black,\n49015420323751,black,police\n",
        default_source="ministry",
    )
    assert [r.source for r in rows] == ["ministry", "police"]


def test_note_line_breaks_are_stored_as_newlines() -> None:
    rows = parse('imei,list,note\n35209900176148,black,"a\rb\r\nc"\n')
    assert rows[0].note == "a\nb\nc"


def test_blank_lines_and_multiline_notes_keep_line_numbers() -> None:
    text = 'imei,list,note\n\n35209900176148,black,"two\nlines"\n\nbad,black,\n'
    rows_before_error = []
    with pytest.raises(CsvImportError) as err:
        for row in parse_csv(io.StringIO(text, newline="")):
            rows_before_error.append(row)
    assert rows_before_error[0].note == "two\nlines" and rows_before_error[0].line == 3
    assert err.value.line == 6


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "line 1: empty file: a header row is required"),
        ("imei\n", "line 1: missing required column(s) list"),
        (
            "imei,list,colour\n",
            "line 1: unknown column(s) 'colour'; allowed: " + ", ".join(COLUMNS),
        ),
        ("imei,list,imei\n", "line 1: column 'imei' appears twice"),
        ("imei,list\n35209900176148\n", "line 2: expected 2 fields, found 1"),
        (
            "imei,list\n3520990017614,black\n",
            "line 2: IMEI '3520990017614' is not 14 or 15 decimal digits",
        ),
        (
            "imei,list\n35209900176148,blue\n",
            "line 2: list 'blue' is not one of white, grey, black, exception",
        ),
        (
            "imei,list,imsi\n35209900176148,white,25001\n",
            "line 2: imsi is only allowed on exception rows, not on white",
        ),
        (
            "imei,list,imsi\n35209900176148,exception,2500\n",
            "line 2: IMSI '2500' is not 5 to 15 decimal digits",
        ),
        (
            "imei,list,since\n35209900176148,white,soon\n",
            "line 2: since: not an ISO 8601 timestamp: 'soon'",
        ),
        (
            "imei,list,reason\n35209900176148,white," + "x" * 65 + "\n",
            "line 2: reason must be printable",
        ),
        (
            "imei,list,note\n35209900176148,white,a\x07b\n",
            "line 2: note contains control characters",
        ),
        ('imei,list\n35209900176148,"black\n', "line 2: bad CSV"),
    ],
)
def test_errors_name_the_line(text: str, expected: str) -> None:
    assert error_of(text).startswith(expected)


async def test_invalid_utf8_names_the_line(registry: SqliteRegistry) -> None:
    data = b"imei,list,note\n35209900176148,black,ok\n49015420323751,black,caf\xe9\n"
    with pytest.raises(CsvImportError, match=r"^line 3: not valid UTF-8"):
        await import_csv(registry, io.BytesIO(data))


async def test_bom_is_accepted(registry: SqliteRegistry) -> None:
    result = await import_csv(
        registry, io.BytesIO(b"\xef\xbb\xbfimei,list\n35209900176148,black\n")
    )
    assert result.rows == 1


# -- export / import ------------------------------------------------------------------------


async def test_export_to_path_is_complete_and_reimports_identically(
    tmp_path: Path, registry: SqliteRegistry
) -> None:
    src = tmp_path / "in.csv"
    src.write_text(
        "imei,list,reason,imsi,source,note\n"
        '352099001761481,black,stolen,,police,"case 1, Almaty"\n'
        "49015420323751,grey,,,ministry,\n"
        "35209900176148,exception,,250011234567890,police,\n"
    )
    await import_csv(registry, src)
    out = tmp_path / "out.csv"
    assert await export_csv(registry, out) == 3
    text = out.read_text()
    assert text.splitlines() == [
        "imei,list,reason,imsi,source,note,since,grace_until,evidence,sv",
        '35209900176148,black,stolen,,police,"case 1, Almaty",2025-06-01T00:00:00Z,,,',
        "49015420323751,grey,pending_verification,,ministry,,2025-06-01T00:00:00Z,,,",
        "35209900176148,exception,paired_exception,250011234567890,police,,"
        "2025-06-01T00:00:00Z,,,",
    ]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    async with SqliteRegistry(tmp_path / "copy.db") as copy:
        await import_csv(copy, out)
        again = tmp_path / "again.csv"
        await export_csv(copy, again)
        assert again.read_text() == text
        assert (await copy.load_snapshot()).digest() == (await registry.load_snapshot()).digest()


async def test_export_progress(registry: SqliteRegistry) -> None:
    await import_csv(
        registry,
        io.BytesIO(("imei,list\n" + "".join(f"{10**13 + i},white\n" for i in range(25))).encode()),
    )
    seen: list[int] = []
    n = await export_csv(registry, io.StringIO(newline=""), progress=seen.append, progress_every=10)
    assert n == 25 and seen == [10, 20, 25]


texts = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp")), max_size=20
)
printable_reason = st.text(
    alphabet=st.characters(
        codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp", "Zs", "Cf", "Co", "Cn")
    ),
    min_size=1,
    max_size=12,
)
entry_rows = st.fixed_dictionaries(
    {
        "imei": st.integers(0, 10**14 - 1).map(lambda n: f"{n:014d}"),
        "list": st.sampled_from(["white", "grey", "black", "exception"]),
        "reason": st.none() | printable_reason,
        "imsi": st.text(alphabet="0123456789", min_size=5, max_size=15),
        "source": st.none() | printable_reason,
        "note": st.none()
        | texts
        | st.sampled_from(['line one\nline two, "quoted"', "cr\ronly", "crlf\r\nnote", " padded "]),
        "since": st.none()
        | st.datetimes(
            min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
        ).map(lambda d: d.isoformat()),
    }
)


def to_csv(rows: list[dict[str, str | None]]) -> bytes:
    import csv

    out = io.StringIO(newline="")
    w = csv.writer(out)
    w.writerow(["imei", "list", "reason", "imsi", "source", "note", "since"])
    seen: set[tuple[str, str | None]] = set()
    for r in rows:
        key = (str(r["imei"]), r["imsi"] if r["list"] == "exception" else None)
        if key in seen:
            continue
        seen.add(key)
        w.writerow(
            [
                r["imei"],
                r["list"],
                r["reason"] or "",
                r["imsi"] if r["list"] == "exception" else "",
                r["source"] or "",
                r["note"] or "",
                r["since"] or "",
            ]
        )
    return out.getvalue().encode()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(entry_rows, max_size=15))
def test_export_import_is_identity(rows: list[dict[str, str | None]]) -> None:
    async def run() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            async with SqliteRegistry(Path(tmp) / "a.db", clock=clock) as a:
                await import_csv(a, io.BytesIO(to_csv(rows)))
                first = io.StringIO(newline="")
                await export_csv(a, first)
                snap_a = await a.load_snapshot()
            async with SqliteRegistry(Path(tmp) / "b.db", clock=clock) as b:
                await import_csv(b, io.BytesIO(first.getvalue().encode()))
                second = io.StringIO(newline="")
                await export_csv(b, second)
                snap_b = await b.load_snapshot()
            assert second.getvalue() == first.getvalue()
            assert snap_a.digest() == snap_b.digest()

    asyncio.run(run())


async def test_export_of_rows_stored_by_other_writers_reimports(
    tmp_path: Path, registry: SqliteRegistry
) -> None:
    # A bare CR in a note stored without going through parse_csv.
    await registry.import_rows([EntryRow("35209900176148", ListName.BLACK, "stolen", note="a\rb")])
    out = tmp_path / "out.csv"
    await export_csv(registry, out)
    async with SqliteRegistry(tmp_path / "copy.db") as copy:
        await import_csv(copy, out)
        assert (await copy.show("35209900176148"))["note"] == "a\nb"
