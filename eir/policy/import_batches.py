"""Import rows cut into write batches, off the event loop.

Owns the step between a stream of `EntryRow` (a parsed CSV file, a list
package) and the storage backend's chunked writes: rows become statement
parameters, grouped per table, in file order, a batch never mixing upserts
with removals (a removal must see the upserts before it, and the other way
round). Pure Python, no I/O beyond pulling the rows.

`prefetched` runs that work in a thread while the caller writes the batch
before: parsing is the import's Python half and the SQLite statements its C
half, which releases the GIL, so the two overlap on two cores.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from eir.policy.model import ListName
from eir.policy.registry import EntryRow, RowError

__all__ = ["Batch", "batches", "encode_entries", "prefetched", "prefetched_batches"]

Params = tuple[Any, ...]


@dataclass(slots=True)
class Batch:
    """One chunk of an import, as statement parameters with their file lines.

    An entry is (imei, list, reason, source, since, note, grace_until,
    evidence, line), the staging table's row (eir/policy/sqlite_stage.py),
    and ``entries_json`` the same rows as the JSON array that stages them,
    encoded here, off the event loop ("" when not encoded). A pair's
    parameters are (imei, imsi, reason, source, since, note, seq, now,
    grace_until, evidence); a range's are an entry's with seq and now as for a
    pair, then (hi, sv). ``error`` is the row error that ended the input after
    these rows: it is raised once they have been checked, so the error
    reported is always the first bad line.
    """

    entries: list[Params] = field(default_factory=list)
    entry_lines: list[int] = field(default_factory=list)
    pairs: list[Params] = field(default_factory=list)
    pair_lines: list[int] = field(default_factory=list)
    ranges: list[Params] = field(default_factory=list)
    range_lines: list[int] = field(default_factory=list)
    removals: list[EntryRow] = field(default_factory=list)
    pair_imeis: set[str] = field(default_factory=set)
    entries_json: str = ""
    error: RowError | None = None

    def __len__(self) -> int:
        return len(self.entries) + len(self.pairs) + len(self.ranges) + len(self.removals)


def shape_problem(row: EntryRow) -> str | None:
    """What makes a row unstorable that a caller other than csvio may get wrong.

    Formats (digits, lengths) are left to the tables' CHECK constraints.
    """
    if row.op not in (None, "add", "update", "remove"):
        return f"unknown op {row.op!r}: add, update or remove"
    if row.list is ListName.EXCEPTION:
        if row.is_range:
            return "an exception pair names one IMEI, not a range or a software version"
        return None if row.imsi else "exception row needs an imsi"
    if row.list not in (ListName.WHITE, ListName.GREY, ListName.BLACK):
        return f"unknown list {row.list!r}"
    if row.imsi is not None:
        return "imsi is only allowed on exception rows"
    return None


def batches(rows: Iterable[EntryRow], seq: int, now: str, size: int) -> Iterator[Batch]:
    """Cut ``rows`` into batches of at most ``size`` rows; the last one may be empty.

    A `RowError` from the rows (or a row of impossible shape) ends the input:
    the batch holding the rows before it carries it.
    """
    exception, white, grey, black = (ListName.EXCEPTION, ListName.WHITE, ListName.GREY,
                                     ListName.BLACK)
    plain = (white, grey, black)
    b = Batch()
    iterator = iter(rows)
    while True:
        try:
            row = next(iterator)
        except StopIteration:
            break
        except RowError as exc:
            b.error = exc
            break
        lst = row.list
        # The common row (a plain list entry, no op) skips the full shape check.
        if lst in plain and row.imsi is None and row.op is None:
            problem = None
        else:
            problem = shape_problem(row)
        if problem is not None:
            b.error = RowError(row.line, problem)
            break
        if row.op == "remove":
            if b.entries or b.pairs or b.ranges:
                yield _encoded(b)  # file order: the upserts before this removal first
                b = Batch()
            b.removals.append(row)
        else:
            if b.removals:
                yield _encoded(b)  # file order: the removals before this upsert first
                b = Batch()
            if lst is exception:
                b.pairs.append((row.imei, row.imsi, row.reason, row.source, row.since, row.note,
                                seq, now, row.grace_until, row.evidence))
                b.pair_lines.append(row.line)
                b.pair_imeis.add(row.imei)
            elif row.hi is not None or row.sv is not None:
                b.ranges.append((row.imei, lst.value, row.reason, row.source, row.since,
                                 row.note, seq, now, row.grace_until, row.evidence,
                                 row.hi or row.imei, row.sv or ""))
                b.range_lines.append(row.line)
            else:
                b.entries.append((row.imei, lst.value, row.reason, row.source, row.since,
                                  row.note, row.grace_until, row.evidence, row.line))
                b.entry_lines.append(row.line)
        if len(b) >= size:
            yield _encoded(b)
            b = Batch()
    yield _encoded(b)


def encode_entries(entries: list[Params]) -> str:
    return json.dumps(entries, ensure_ascii=False, check_circular=False)


def _encoded(b: Batch) -> Batch:
    if b.entries:
        b.entries_json = encode_entries(b.entries)
    return b


async def prefetched(source: Iterator[Batch]) -> AsyncGenerator[Batch, None]:
    """Yield ``source``'s batches, producing the next one in a thread meanwhile.

    The thread is the only one touching ``source`` until the caller has
    stopped iterating (normally or by an exception), so an iterator that is
    not thread-safe is fine: it is only ever used by one thread at a time.
    """
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(1, thread_name_prefix="eir-import-rows") as pool:
        pending = loop.run_in_executor(pool, next, source, None)
        try:
            while (batch := await pending) is not None:
                pending = loop.run_in_executor(pool, next, source, None)
                yield batch
        finally:
            # A caller that stops early (a write failed) leaves the thread
            # mid-batch: let it finish before the iterator is closed.
            await asyncio.wait([pending])
            if not pending.cancelled():
                pending.exception()  # retrieved: the caller's own exception is the one to report
            await loop.run_in_executor(pool, _close, source)


def prefetched_batches(rows: Iterable[EntryRow], seq: int, now: str,
                       size: int) -> aclosing[AsyncGenerator[Batch, None]]:
    """``async with prefetched_batches(...) as b: async for batch in b: ...``.

    The context closes the generator (and with it the thread's iterator) even
    when the loop is left by an exception.
    """
    return aclosing(prefetched(batches(rows, seq, now, size)))


def _close(source: Iterator[Batch]) -> None:
    close = getattr(source, "close", None)
    if close is not None:
        close()
