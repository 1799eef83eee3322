"""CSV import and export of list entries and exception pairs.

Owns the provisioning file format (POLICY.md "What the registry must
keep": list entries and exceptions) and its validation. Storage is reached
only through the `eir.policy.registry.Registry` protocol.

Format (UTF-8, optional BOM, comma-separated, header row required; column
order is free, names are case-insensitive)::

    imei,list,reason,imsi,source,note,since,grace_until,evidence,sv,op

- ``imei`` (required): 14 or 15 decimal digits; stored as the first 14
  (POLICY.md rule 1: a 15th digit is ignored, never checked). It may also
  name a range (POLICY.md "Entries may cover ranges"): an 8-digit TAC
  (all its serials) or ``FIRST-LAST``, two IMEIs (inclusive).
- ``sv``: two digits; the entry applies only to that software version
  (TS 29.272 6.2.1.3 lets a list match on the SV). Empty: any version.
- ``grace_until``: ISO 8601; an explicit end of a grey entry's grace
  (default: since + the configured grace).
- ``evidence``: a reference (case number, receipt, travel record), up to
  128 printable characters.
- ``op``: for delta lists, ``add`` or ``update`` (both store the row) or
  ``remove`` (deletes the entry or pair; one that is not there is not an
  error, so a delta applied twice changes nothing). Empty means ``add``.
- ``list`` (required): ``white``, ``grey``, ``black`` or ``exception``.
- ``imsi``: required on ``exception`` rows and forbidden on the others;
  5 to 15 decimal digits (TS 23.003 section 2.2).
- ``reason``: any printable text up to 64 characters; empty means the
  list's default (white ``registered``, grey ``pending_verification``,
  black ``unknown``, exception ``paired_exception``).
- ``source`` (who asked: ministry, operator, police...): printable text up
  to 64 characters; an empty ``source`` takes the importer's default source.
- ``note``: free text, may span lines when quoted; line breaks are stored
  as ``\n`` and other control characters are refused.
- ``since``: ISO 8601 timestamp, stored as UTC ``YYYY-MM-DDTHH:MM:SSZ``
  (no offset means UTC). Empty means "now", except that an entry re-imported
  onto the list it is already on keeps its old ``since``.

Semantics, chosen and fixed here:

- The whole file is one transaction: the first bad row rejects the file with
  ``CsvImportError`` ("line N: problem") and nothing stored changes.
- A row for an IMEI already stored **replaces** its entry (upsert), and a
  pair already stored replaces that pair; entries and pairs not in the file
  are left alone (an import adds and updates, it never deletes).
- The same IMEI twice in one file (or the same exception pair twice) is
  **rejected** with the line of the second occurrence: it is almost always
  a merge mistake, and "last one wins" would hide it.
- Export writes every column, ``since`` included, so export then import
  reproduces the stored content exactly.

Files are streamed: memory use does not grow with the file, and a
``progress(rows_done, bytes_done, bytes_total)`` callback reports as chunks
are written (``bytes_total`` is None when the size is unknown).
"""

from __future__ import annotations

import csv
import hashlib
import io
import operator
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Final

from eir.policy.model import ListName, normalize_imei, normalize_imsi, parse_timestamp
from eir.policy.registry import EntryRow, ImportResult, Registry, RowError

__all__ = [
    "COLUMNS",
    "DEFAULT_REASONS",
    "REQUIRED_COLUMNS",
    "CsvImportError",
    "Progress",
    "export_csv",
    "format_row",
    "import_csv",
    "parse_csv",
]

COLUMNS: Final[tuple[str, ...]] = (
    "imei", "list", "reason", "imsi", "source", "note", "since", "grace_until", "evidence", "sv",
    "op",
)
EXPORT_COLUMNS: Final[tuple[str, ...]] = COLUMNS[:-1]
REQUIRED_COLUMNS: Final[frozenset[str]] = frozenset({"imei", "list"})

DEFAULT_REASONS: Final[dict[ListName, str]] = {
    ListName.WHITE: "registered",
    ListName.GREY: "pending_verification",
    ListName.BLACK: "unknown",
    ListName.EXCEPTION: "paired_exception",
}

MAX_REASON_LEN: Final = 64
MAX_SOURCE_LEN: Final = 64
MAX_EVIDENCE_LEN: Final = 128
_OPS: Final = {"": None, "add": "add", "update": "update", "remove": "remove"}

Progress = Callable[[int, int, int | None], None]
"""progress(rows_done, bytes_done, bytes_total or None)."""

_LISTS: Final[dict[str, ListName]] = {name.value: name for name in ListName}
# Control characters other than tab, CR and LF have no business in a note
# and would corrupt logs and terminals that display it.
_BAD_NOTE_CHARS: Final[frozenset[str]] = frozenset(
    chr(c) for c in (*range(0x20), 0x7F) if chr(c) not in "\t\r\n"
)


class CsvImportError(RowError):
    """The file was rejected; ``str(e)`` is ``"line N: problem"``."""


class _ByteCounter:
    """Yields decoded lines of a binary file, counting bytes for progress.

    It counts lines too because a line that fails to decode never reaches
    the csv reader, whose line_num would then be one short.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.bytes_done = 0
        self.line = 0
        self.sha256 = hashlib.sha256()  # the audit record names the file by its hash

    def __iter__(self) -> Iterator[str]:
        for raw in self._stream:
            self.line += 1
            self.bytes_done += len(raw)
            self.sha256.update(raw)
            try:
                # utf-8-sig on the first line drops a BOM that Excel adds.
                yield raw.decode("utf-8-sig" if self.line == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise CsvImportError(self.line, f"not valid UTF-8 ({exc.reason})") from None


def parse_csv(lines: Iterable[str], *, default_source: str | None = None) -> Iterator[EntryRow]:
    """Validate and yield the rows of a CSV text; raise `CsvImportError` on the first bad one.

    ``lines`` is any iterable of text lines with their line endings (an open
    text file with ``newline=""``, or a list of strings).
    """
    reader = csv.reader(lines, strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise CsvImportError(reader.line_num, f"bad CSV: {exc}") from None
    if header is None:
        raise CsvImportError(1, "empty file: a header row is required")
    names = [h.strip().lower() for h in header]
    index = _check_header(names)
    width = len(names)
    parse_record = _record_parser(index, default_source)
    end_line = reader.line_num
    while True:
        start_line = end_line + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise CsvImportError(reader.line_num, f"bad CSV: {exc}") from None
        end_line = reader.line_num
        if not record or (len(record) == 1 and not record[0].strip()):
            continue  # blank lines are harmless; trailing ones are common
        if len(record) != width:
            raise CsvImportError(start_line, f"expected {width} fields, found {len(record)}")
        yield parse_record(record, start_line)


def _check_header(names: list[str]) -> dict[str, int]:
    unknown = [n for n in names if n not in COLUMNS]
    if unknown:
        raise CsvImportError(
            1, f"unknown column(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(COLUMNS)}"
        )
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise CsvImportError(1, f"column {n!r} appears twice")
        seen.add(n)
    missing = sorted(REQUIRED_COLUMNS - seen)
    if missing:
        raise CsvImportError(1, f"missing required column(s) {', '.join(missing)}")
    return {n: i for i, n in enumerate(names)}


def _field(record: list[str], index: dict[str, int], name: str) -> str:
    i = index.get(name)
    return record[i].strip() if i is not None else ""


def _parse_imei_field(raw: str, line: int) -> tuple[str, str | None]:
    """(first IMEI, last IMEI or None) of an IMEI, a TAC or a FIRST-LAST range."""
    if len(raw) == 8 and raw.isascii() and raw.isdigit():
        return raw + "000000", raw + "999999"  # TS 23.003 6.2: TAC + 6-digit serial
    if "-" in raw:
        lo_raw, _, hi_raw = raw.partition("-")
        lo, hi = normalize_imei(lo_raw.strip()), normalize_imei(hi_raw.strip())
        if lo is None or hi is None:
            raise CsvImportError(line, f"range {raw!r}: both ends must be 14 or 15 digit IMEIs")
        if hi < lo:
            raise CsvImportError(line, f"range {raw!r}: the last IMEI is before the first")
        return lo, hi
    imei = normalize_imei(raw)
    if imei is None:
        raise CsvImportError(
            line, f"IMEI {raw!r} is not 14 or 15 decimal digits (nor an 8-digit TAC or a range)"
        )
    return imei, None


def _timestamp(record: list[str], index: dict[str, int], name: str, line: int) -> str | None:
    raw = _field(record, index, name)
    if not raw:
        return None
    try:
        return parse_timestamp(raw)
    except ValueError as exc:
        raise CsvImportError(line, f"{name}: {exc}") from None


def _text(value: str, name: str, limit: int, line: int) -> str:
    if len(value) > limit or not value.isprintable():
        raise CsvImportError(line, f"{name} must be printable text of at most {limit} characters")
    return value


_PLAIN_LISTS: Final[dict[str, ListName]] = {
    name.value: name for name in (ListName.WHITE, ListName.GREY, ListName.BLACK)
}
# Columns that, when filled, need the full parser: the fast path below
# handles the row of a bulk list (IMEI, list, reason, source) and nothing else.
_FULL_PATH_COLUMNS: Final = ("imsi", "note", "since", "grace_until", "evidence", "sv", "op")


def _record_parser(
    index: dict[str, int], default_source: str | None
) -> Callable[[list[str], int], EntryRow]:
    """The record parser for one header: a fast path for plain list rows.

    A registry of ten million rows spends most of its import parsing, and
    almost every row is an IMEI on the white, grey or black list with a
    reason and a source. Such rows are checked here with the column positions
    bound once; any other row (and any row the fast path doubts) goes to
    `_parse_record`, which owns every rule and every error message, so both
    paths accept and refuse exactly the same rows.
    """

    def full(record: list[str], line: int) -> EntryRow:
        return _parse_record(record, line, index, default_source)

    if default_source is not None and (len(default_source) > MAX_SOURCE_LEN
                                       or not default_source.isprintable()):
        return full  # every row will fail on it: let the full parser say so
    i_imei, i_list = index["imei"], index["list"]
    i_reason, i_source = index.get("reason"), index.get("source")
    others = [index[n] for n in _FULL_PATH_COLUMNS if n in index]
    # itemgetter of one index returns the value, not a tuple: repeat it.
    filled: Callable[[list[str]], tuple[str, ...]] | None = (
        operator.itemgetter(*others, others[0]) if others else None
    )
    lists, reasons = _PLAIN_LISTS, DEFAULT_REASONS

    def fast(record: list[str], line: int) -> EntryRow:
        imei = record[i_imei]
        lst = lists.get(record[i_list])
        if (lst is None or not (len(imei) == 14 or len(imei) == 15) or not imei.isascii()
                or not imei.isdigit() or (filled is not None and any(filled(record)))):
            return full(record, line)
        reason = record[i_reason].strip() if i_reason is not None else ""
        if not reason:
            reason = reasons[lst]
        elif len(reason) > MAX_REASON_LEN or not reason.isprintable():
            return full(record, line)
        source: str | None = record[i_source].strip() if i_source is not None else ""
        if not source:
            source = default_source
        elif len(source) > MAX_SOURCE_LEN or not source.isprintable():
            return full(record, line)
        return EntryRow(imei[:14], lst, reason, None, source, None, None, None, None, None, None,
                        None, line)

    return fast


def _parse_record(
    record: list[str], line: int, index: dict[str, int], default_source: str | None
) -> EntryRow:
    raw_imei = record[index["imei"]].strip()
    imei, hi = _parse_imei_field(raw_imei, line)
    raw_list = record[index["list"]].strip().lower()
    lst = _LISTS.get(raw_list)
    if lst is None:
        raise CsvImportError(
            line, f"list {record[index['list']].strip()!r} is not one of white, grey, black, "
            "exception"
        )
    raw_op = _field(record, index, "op").lower()
    if raw_op not in _OPS:
        raise CsvImportError(line, f"op {raw_op!r} is not one of add, update, remove")
    sv = _field(record, index, "sv") or None
    if sv is not None and not (len(sv) == 2 and sv.isascii() and sv.isdigit()):
        raise CsvImportError(line, f"sv {sv!r} is not two decimal digits")
    raw_imsi = _field(record, index, "imsi")
    imsi: str | None = None
    if lst is ListName.EXCEPTION:
        if not raw_imsi:
            raise CsvImportError(line, "an exception row needs an imsi")
        imsi = normalize_imsi(raw_imsi)
        if imsi is None:
            raise CsvImportError(line, f"IMSI {raw_imsi!r} is not 5 to 15 decimal digits")
        if hi is not None or sv is not None:
            raise CsvImportError(line, "an exception pair names one IMEI, not a range or an sv")
    elif raw_imsi:
        raise CsvImportError(line, f"imsi is only allowed on exception rows, not on {lst.value}")
    reason = _field(record, index, "reason")
    reason = _text(reason, "reason", MAX_REASON_LEN, line) if reason else DEFAULT_REASONS[lst]
    source = _field(record, index, "source") or default_source
    if source is not None:
        _text(source, "source", MAX_SOURCE_LEN, line)
    evidence = _field(record, index, "evidence") or None
    if evidence is not None:
        _text(evidence, "evidence", MAX_EVIDENCE_LEN, line)
    note = _field(record, index, "note") or None
    if note is not None:
        if not _BAD_NOTE_CHARS.isdisjoint(note):
            raise CsvImportError(line, "note contains control characters")
        note = _unix_newlines(note)
    since = _timestamp(record, index, "since", line)
    grace_until = _timestamp(record, index, "grace_until", line)
    if grace_until is not None and lst is not ListName.GREY:
        raise CsvImportError(line, "grace_until is only allowed on grey rows")
    return EntryRow(imei, lst, reason, imsi, source, note, since, grace_until, evidence,
                    hi, sv, _OPS[raw_op], line=line)


async def import_csv(
    registry: Registry,
    source_file: str | os.PathLike[str] | IO[bytes],
    *,
    default_source: str | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> ImportResult:
    """Import one CSV file into ``registry`` as a single transaction.

    ``source_file`` is a path or a binary stream (e.g. ``sys.stdin.buffer``).
    Raises `CsvImportError` naming the first bad line; nothing is stored then.
    ``options`` go to `Registry.import_rows` (kind, actor, replace_source,
    list_version); the file's SHA-256 goes into the audit record.
    """
    if isinstance(source_file, str | os.PathLike):
        with open(source_file, "rb") as stream:
            return await _import_stream(registry, stream, default_source, progress, options)
    return await _import_stream(registry, source_file, default_source, progress, options)


async def _import_stream(
    registry: Registry,
    stream: IO[bytes],
    default_source: str | None,
    progress: Progress | None,
    options: dict[str, Any],
) -> ImportResult:
    total = _size_of(stream)
    counter = _ByteCounter(stream)
    summary: dict[str, Any] = dict(options.pop("summary", None) or {})

    def rows_then_hash() -> Iterator[EntryRow]:
        yield from parse_csv(counter, default_source=default_source)
        # Reached before the audit record is sealed: the record names the file.
        summary["file_sha256"] = counter.sha256.hexdigest()

    rows = rows_then_hash()
    if options or summary is not None:
        options["summary"] = summary

    def on_chunk(rows_done: int) -> None:
        if progress is not None:
            progress(rows_done, counter.bytes_done, total)

    try:
        result = await registry.import_rows(rows, on_chunk=on_chunk, **options)
    except CsvImportError:
        raise
    except RowError as exc:
        # Duplicates are found by the backend; present them like any other bad row.
        raise CsvImportError(exc.line, exc.message) from exc
    if progress is not None:
        progress(result.rows, counter.bytes_done, total)
    return result


def _unix_newlines(text: str) -> str:
    # csv.writer with a "\n" terminator leaves a lone "\r" unquoted, which
    # the reader then takes for a line break: store and write notes with
    # "\n" only so that every exported file imports back.
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _size_of(stream: IO[bytes]) -> int | None:
    try:
        st = os.fstat(stream.fileno())
    except (OSError, AttributeError, io.UnsupportedOperation):
        return None
    # Pipes and sockets report a size that means nothing for progress.
    return st.st_size if stat.S_ISREG(st.st_mode) else None


async def export_csv(
    registry: Registry,
    dest: str | os.PathLike[str] | IO[str],
    *,
    progress: Callable[[int], None] | None = None,
    progress_every: int = 10_000,
) -> int:
    """Write every entry and pair to ``dest``; return the number of rows.

    A path is written to a temporary file in the same directory and renamed
    into place at the end, so a reader never sees half an export. A text
    stream must have been opened with ``newline=""``.
    """
    if isinstance(dest, str | os.PathLike):
        target = Path(dest)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
                n = await _export_stream(registry, out, progress, progress_every)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return n
    return await _export_stream(registry, dest, progress, progress_every)


def format_row(row: EntryRow, *, with_op: bool = False) -> list[str]:
    """One row's fields as export writes them: `EXPORT_COLUMNS`, then ``op`` if ``with_op``."""
    imei = row.imei
    if row.hi is not None:
        tac = imei[:8]
        whole_tac = imei == tac + "000000" and row.hi == tac + "999999"
        imei = tac if whole_tac else f"{imei}-{row.hi}"
    fields = [imei, row.list.value, row.reason, row.imsi or "", row.source or "",
              _unix_newlines(row.note) if row.note else "", row.since or "",
              row.grace_until or "", row.evidence or "", row.sv or ""]
    if with_op:
        fields.append(row.op or "")
    return fields


async def _export_stream(
    registry: Registry,
    out: IO[str],
    progress: Callable[[int], None] | None,
    progress_every: int,
) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    n = 0
    async for row in registry.export_rows():
        writer.writerow(format_row(row))
        n += 1
        if progress is not None and n % progress_every == 0:
            progress(n)
    if progress is not None:
        progress(n)
    return n
