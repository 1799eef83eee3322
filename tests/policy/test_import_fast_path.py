"""The import's fast paths agree with the full ones.

csvio parses plain list rows with a per-header fast path, import_batches
cuts rows into batches in a thread, and the SQLite writer upserts a chunk
without explicit since values as one JSON statement. Each must accept,
refuse and store exactly what the general path does.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eir.policy import import_batches
from eir.policy.csvio import CsvImportError, _parse_record, _record_parser, parse_csv
from eir.policy.model import ListName
from eir.policy.registry import EntryRow, RowError
from eir.policy.sqlite import SqliteRegistry

HEADER = ["imei", "list", "reason", "source", "note", "imsi", "since", "sv", "op"]
INDEX = {name: i for i, name in enumerate(HEADER)}

_imeis = st.one_of(
    st.from_regex(r"\A[0-9]{14,15}\Z"),
    st.sampled_from(["", " 35209900176148", "3520990017614", "35209900176148-35209900176149",
                     "35209900", "٣٥٢٠٩٩٠٠١٧٦١٤٨", "35209900176148\t"]),
)
_texts = st.one_of(st.sampled_from(["", "stolen", " stolen ", "x" * 64, "x" * 65, "a\tb",
                                    "ministry", "\x07"]),
                   st.text(max_size=70))
_lists = st.sampled_from(["white", "grey", "black", "exception", "White", " grey", "blue", ""])


def _outcome(parse: object, record: list[str]) -> EntryRow | str:
    try:
        return parse(record, 7)  # type: ignore[operator, no-any-return]
    except CsvImportError as exc:
        return str(exc)


@settings(max_examples=3000, deadline=None)
@given(imei=_imeis, lst=_lists, reason=_texts, source=_texts,
       extra=st.sampled_from(["", " ", "x"]), default=st.sampled_from([None, "operator", "x" * 65]))
def test_fast_parser_matches_the_full_one(imei: str, lst: str, reason: str, source: str,
                                          extra: str, default: str | None) -> None:
    record = [imei, lst, reason, source, extra, "", "", "", ""]
    fast = _record_parser(INDEX, default)
    assert _outcome(fast, record) == _outcome(
        lambda r, line: _parse_record(r, line, INDEX, default), record)


def test_fast_parser_without_optional_columns() -> None:
    rows = list(parse_csv(["imei,list\n", "352099001761481,black\n", "35209900176148 ,white\n"]))
    assert rows == [EntryRow("35209900176148", ListName.BLACK, "unknown", line=2),
                    EntryRow("35209900176148", ListName.WHITE, "registered", line=3)]


def _row(i: int, lst: ListName = ListName.WHITE, **kw: object) -> EntryRow:
    return EntryRow(f"{10**13 + i}", lst, "r", line=i + 2, **kw)  # type: ignore[arg-type]


def test_batches_keep_file_order_between_upserts_and_removals() -> None:
    rows = [_row(0), _row(1), _row(2, op="remove"), _row(3, op="remove"), _row(4),
            _row(5, ListName.EXCEPTION, imsi="401011234567890")]
    got = list(import_batches.batches(rows, 9, "now", size=100))
    assert [(b.entry_lines, b.pair_lines, [r.line for r in b.removals]) for b in got] == [
        ([2, 3], [], []), ([], [], [4, 5]), ([6], [7], [])]
    assert got[0].entries[0] == (f"{10**13}", "white", "r", None, None, None, None, None, 2)
    assert json.loads(got[0].entries_json) == [list(e) for e in got[0].entries]
    assert got[1].entries_json == ""


def test_batches_carry_the_error_after_the_rows_before_it() -> None:
    def rows() -> Iterator[EntryRow]:
        yield _row(0)
        yield _row(1)
        raise RowError(4, "bad")

    got = list(import_batches.batches(rows(), 1, "now", size=1))
    assert [b.entry_lines for b in got] == [[2], [3], []]
    assert got[-1].error is not None and got[-1].error.line == 4
    shaped = list(import_batches.batches([_row(0, imsi="401011234567890")], 1, "now", 10))
    assert shaped[0].error is not None and "only allowed on exception" in str(shaped[0].error)


async def test_prefetch_runs_the_rows_in_another_thread_and_closes_them_early() -> None:
    threads: set[str] = set()
    closed = threading.Event()

    def rows() -> Iterator[EntryRow]:
        try:
            for i in range(1000):
                threads.add(threading.current_thread().name)
                yield _row(i)
        finally:
            closed.set()

    seen = 0
    with pytest.raises(RuntimeError, match="writer failed"):
        async with import_batches.prefetched_batches(rows(), 1, "now", 10) as batches:
            async for b in batches:
                seen += len(b)
                if seen >= 30:
                    raise RuntimeError("writer failed")
    assert closed.is_set()
    assert threads and threading.current_thread().name not in threads


async def test_dated_and_undated_merges_store_the_same(tmp_path: Path) -> None:
    """A stage with an explicit since takes a second merge statement; both store alike."""
    plain = [EntryRow(f"{10**13 + i}", ListName.GREY, "pending", source="ministry",
                      note="n\u00e9", evidence="case 1", line=i + 2) for i in range(50)]
    dated = [*plain[:-1], EntryRow(plain[-1].imei, ListName.GREY, "pending", source="ministry",
                                   note="n\u00e9", evidence="case 1",
                                   since="2026-01-01T00:00:00Z", line=51)]
    stored = []
    for n, rows in enumerate((plain, dated)):
        async with SqliteRegistry(tmp_path / f"r{n}.db", chunk_size=1000) as reg:
            result = await reg.import_rows(rows)
            assert result.rows == 50
            stored.append([r for r in [row async for row in reg.export_rows()]])
    for a, b in zip(*stored, strict=True):
        assert (a.imei, a.list, a.reason, a.source, a.note, a.evidence) == (
            b.imei, b.list, b.reason, b.source, b.note, b.evidence)
    assert stored[1][-1].since == "2026-01-01T00:00:00Z"


async def test_the_merge_finds_a_duplicate_with_its_lines(tmp_path: Path) -> None:
    rows = [_row(i) for i in range(20)] + [EntryRow(f"{10**13 + 3}", ListName.BLACK, "x",
                                                    line=40)]
    async with SqliteRegistry(tmp_path / "r.db", chunk_size=1000) as reg:
        with pytest.raises(RowError) as err:
            await reg.import_rows(rows)
        assert err.value.line == 40 and "first at line 5" in str(err.value)
        assert [r async for r in reg.export_rows()] == []


def test_event_loop_stays_free_during_the_parse() -> None:
    """Rows are produced off the loop: a ticker keeps running during a slow iterator."""

    async def main() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        def rows() -> Iterator[EntryRow]:
            for i in range(3):
                threading.Event().wait(0.05)  # a slow source, outside the loop
                yield _row(i)

        task = asyncio.create_task(ticker())
        async with import_batches.prefetched_batches(rows(), 1, "now", 1) as batches:
            async for _ in batches:
                pass
        task.cancel()
        return ticks

    assert asyncio.run(main()) >= 10
