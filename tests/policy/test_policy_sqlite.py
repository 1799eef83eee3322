"""eir.policy.sqlite: migrations, imports in one transaction, versions, show, snapshots.

Everything runs on real SQLite files under pytest's tmp_path.
"""

from __future__ import annotations

import io
import sqlite3
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from eir.policy.csvio import CsvImportError, export_csv, import_csv
from eir.policy.model import ListEntry, ListName
from eir.policy.registry import EntryRow, RowError, Snapshot
from eir.policy.sqlite import SqliteRegistry, load_migrations, split_sql

IMSI = "250011234567890"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def registry(tmp_path: Path, clock: Clock) -> AsyncIterator[SqliteRegistry]:
    reg = SqliteRegistry(tmp_path / "eir.db", clock=clock, chunk_size=3)
    await reg.open()
    yield reg
    await reg.close()


def csv_bytes(*lines: str) -> io.BytesIO:
    return io.BytesIO(("\n".join(lines) + "\n").encode())


async def dump(reg: SqliteRegistry) -> str:
    out = io.StringIO(newline="")
    await export_csv(reg, out)
    return out.getvalue()


SEED = (
    "imei,list,reason,imsi,source,note",
    "35209900176148,black,stolen,,police,case 1",
    "49015420323751,grey,,,ministry,",
    "260531793113837,white,legalised,,ministry,",
    "35209900176148,exception,,250011234567890,police,owner's new SIM",
)


# -- migrations -------------------------------------------------------------------


def test_migrations_are_numbered_from_one() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].name == "0001_init.sql"


def test_split_sql_keeps_triggers_whole_and_drops_comments() -> None:
    script = """
    -- a comment; with a semicolon
    CREATE TABLE t (x INTEGER);
    CREATE TRIGGER tr AFTER INSERT ON t BEGIN
        UPDATE t SET x = 1;
        SELECT 1;
    END;
    -- trailing comment
    """
    statements = split_sql(script)
    assert len(statements) == 2
    assert statements[1].startswith("CREATE TRIGGER") and statements[1].endswith("END;")
    with pytest.raises(ValueError):
        split_sql("CREATE TABLE t (x")


async def test_open_is_idempotent_and_keeps_data(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "eir.db"
    async with SqliteRegistry(path, clock=clock) as reg:
        assert await reg.schema_version() == len(load_migrations())
        await import_csv(reg, csv_bytes(*SEED))
        before = await dump(reg)
    for _ in range(2):
        async with SqliteRegistry(path, clock=clock) as reg:
            assert await reg.schema_version() == len(load_migrations())
            assert await dump(reg) == before
    with sqlite3.connect(path) as db:
        applied = db.execute("SELECT version FROM schema_version").fetchall()
        assert applied == [(m.version,) for m in load_migrations()]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "eir.db"
    async with SqliteRegistry(path):
        pass
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO schema_version VALUES (999, '0999_future.sql', 'x')")
    reg = SqliteRegistry(path)
    with pytest.raises(RuntimeError, match="newer"):
        await reg.open()
    await reg.close()


def test_in_memory_databases_are_refused() -> None:
    with pytest.raises(ValueError):
        SqliteRegistry(":memory:")


async def test_closed_registry_refuses_work(tmp_path: Path) -> None:
    reg = SqliteRegistry(tmp_path / "eir.db")
    with pytest.raises(RuntimeError, match="not open"):
        await reg.current_version()
    await reg.open()
    await reg.close()
    with pytest.raises(RuntimeError, match="not open"):
        await reg.load_snapshot()


# -- import, version, show ------------------------------------------------------


async def test_import_stores_rows_and_bumps_version(registry: SqliteRegistry) -> None:
    assert await registry.current_version() == 0
    result = await import_csv(registry, csv_bytes(*SEED))
    assert result.rows == 4
    assert result.by_list == {"black": 1, "grey": 1, "white": 1, "exception": 1}
    assert result.version == 1 == await registry.current_version()
    changes = await registry.changes()
    assert changes == [
        {
            "seq": 1,
            "at": "2025-06-01T12:00:00Z",
            "kind": "import",
            "count": 4,
            "summary": {"rows": {"black": 1, "exception": 1, "grey": 1, "white": 1},
                        "file_sha256": changes[0]["summary"]["file_sha256"],
                        "removed": 0, "skipped": 0},
        }
    ]
    await import_csv(registry, csv_bytes("imei,list", "11111111111111,white"))
    assert await registry.current_version() == 2
    assert [c["seq"] for c in await registry.changes(after=1)] == [2]


async def test_empty_import_changes_nothing(registry: SqliteRegistry) -> None:
    await import_csv(registry, csv_bytes(*SEED))
    result = await import_csv(registry, csv_bytes("imei,list"))
    assert (result.rows, result.version) == (0, 1)
    assert await registry.current_version() == 1


async def test_show_known_unknown_and_pairs(registry: SqliteRegistry) -> None:
    await import_csv(registry, csv_bytes(*SEED))
    shown = await registry.show("352099001761481")
    assert shown == {
        "imei": "35209900176148",
        "list": "black",
        "reason": "stolen",
        "source": "police",
        "since": "2025-06-01T12:00:00Z",
        "note": "case 1",
        "pairs": [
            {
                "imsi": IMSI,
                "reason": "paired_exception",
                "source": "police",
                "since": "2025-06-01T12:00:00Z",
                "note": "owner's new SIM",
            }
        ],
    }
    grey = await registry.show("49015420323751")
    assert (grey["list"], grey["reason"], grey["note"]) == ("grey", "pending_verification", None)
    unknown = await registry.show("11111111111111")
    assert unknown == {
        "imei": "11111111111111",
        "list": None,
        "reason": None,
        "source": None,
        "since": None,
        "note": None,
        "pairs": [],
    }
    with pytest.raises(ValueError):
        await registry.show("12345")


async def test_import_replaces_existing_entries(registry: SqliteRegistry, clock: Clock) -> None:
    await import_csv(registry, csv_bytes(*SEED))
    clock.now += timedelta(days=3)
    await import_csv(
        registry,
        csv_bytes(
            "imei,list,reason,note",
            "35209900176148,black,lost,updated",  # same list: keeps its since
            "49015420323751,white,legalised,",  # new list: since is now
        ),
    )
    black = await registry.show("35209900176148")
    assert (black["reason"], black["note"], black["source"]) == ("lost", "updated", None)
    assert black["since"] == "2025-06-01T12:00:00Z"
    legalised = await registry.show("49015420323751")
    assert (legalised["list"], legalised["since"]) == ("white", "2025-06-04T12:00:00Z")
    # Entries not in the file are left alone.
    assert (await registry.show("26053179311383"))["list"] == "white"
    await import_csv(
        registry, csv_bytes("imei,list,since", "35209900176148,black,2024-01-01T00:00:00+05:00")
    )
    assert (await registry.show("35209900176148"))["since"] == "2023-12-31T19:00:00Z"


async def test_bad_row_rejects_whole_file_and_keeps_stored_rows(
    registry: SqliteRegistry,
) -> None:
    await import_csv(registry, csv_bytes(*SEED))
    before, version = await dump(registry), await registry.current_version()
    lines = ["imei,list,reason"]
    lines += [f"{10**13 + i},black,stolen" for i in range(10)]  # spans several chunks
    lines.append("35209900176148,white,oops")  # would replace a stored entry
    lines.append("123,black,stolen")  # line 13
    with pytest.raises(CsvImportError) as err:
        await import_csv(registry, csv_bytes(*lines))
    assert err.value.line == 13
    assert str(err.value).startswith("line 13: IMEI '123'")
    assert await dump(registry) == before
    assert await registry.current_version() == version
    assert await registry.changes(after=version) == []


async def test_exception_row_without_imsi_is_rejected(registry: SqliteRegistry) -> None:
    with pytest.raises(CsvImportError, match=r"^line 3: an exception row needs an imsi$"):
        await import_csv(
            registry,
            csv_bytes("imei,list,imsi", "35209900176148,black,", "35209900176148,exception,"),
        )
    with pytest.raises(CsvImportError, match="line 2: an exception row needs an imsi"):
        await import_csv(registry, csv_bytes("imei,list", "35209900176148,exception"))
    assert (await registry.show("35209900176148"))["list"] is None


@pytest.mark.parametrize(
    ("rows", "line", "fragment"),
    [
        # Same chunk (chunk_size=3 in the fixture).
        (["35209900176148,black", "35209900176148,white"], 3, "first at line 2"),
        # Different chunks.
        (
            [
                "35209900176148,black",
                "11111111111111,white",
                "22222222222222,white",
                "35209900176148,grey",
            ],
            5,
            "35209900176148 appears twice",
        ),
        # 15-digit form of the same IMEI is the same IMEI.
        (["35209900176148,black", "352099001761481,black"], 3, "appears twice"),
    ],
)
async def test_duplicate_imei_in_one_file_is_rejected(
    registry: SqliteRegistry, rows: list[str], line: int, fragment: str
) -> None:
    with pytest.raises(CsvImportError) as err:
        await import_csv(registry, csv_bytes("imei,list", *rows))
    assert err.value.line == line
    assert fragment in str(err.value)
    assert await registry.current_version() == 0


async def test_duplicate_pair_is_rejected_but_entry_plus_pair_is_fine(
    registry: SqliteRegistry,
) -> None:
    ok = await import_csv(
        registry,
        csv_bytes(
            "imei,list,imsi",
            f"35209900176148,exception,{IMSI}",
            "35209900176148,black,",
            "35209900176148,exception,25001",
        ),
    )
    assert ok.rows == 3
    rows = [f"35209900176148,exception,{IMSI}"] + [f"1111111111111{i},white," for i in range(4)]
    rows.append(f"35209900176148,exception,{IMSI}")
    with pytest.raises(CsvImportError) as err:
        await import_csv(registry, csv_bytes("imei,list,imsi", *rows))
    assert err.value.line == 7 and "appears twice" in str(err.value)


async def test_first_error_in_file_order_wins(registry: SqliteRegistry) -> None:
    # The duplicate (line 3) comes before the malformed row (line 4), in the
    # same unflushed chunk: the duplicate must be reported.
    with pytest.raises(CsvImportError) as err:
        await import_csv(
            registry,
            csv_bytes("imei,list", "35209900176148,black", "35209900176148,white", "x,black"),
        )
    assert err.value.line == 3


async def test_import_rows_checks_rows_that_bypass_csv(registry: SqliteRegistry) -> None:
    good = EntryRow("35209900176148", ListName.BLACK, "stolen", line=1)
    with pytest.raises(RowError, match="line 2: rejected by the database"):
        await registry.import_rows([good, EntryRow("1234", ListName.BLACK, "stolen", line=2)])
    with pytest.raises(RowError, match="line 5: exception row needs an imsi"):
        await registry.import_rows([EntryRow("35209900176148", ListName.EXCEPTION, "x", line=5)])
    with pytest.raises(RowError, match="imsi is only allowed"):
        await registry.import_rows([EntryRow("35209900176148", ListName.WHITE, "x", imsi=IMSI)])
    assert await registry.current_version() == 0


async def test_iterator_failure_rolls_back(registry: SqliteRegistry) -> None:
    def rows() -> Iterator[EntryRow]:
        for i in range(10):
            yield EntryRow(f"{10**13 + i}", ListName.WHITE, "registered")
        raise OSError("disk went away")

    with pytest.raises(OSError):
        await registry.import_rows(rows())
    assert await registry.current_version() == 0
    assert len(await registry.load_snapshot()) == 0


async def test_readers_never_see_a_half_done_import(registry: SqliteRegistry) -> None:
    seen: list[int] = []

    def peek(rows_done: int) -> None:
        with sqlite3.connect(registry.path) as db:
            seen.append(db.execute("SELECT COUNT(*) FROM list_entry").fetchone()[0])

    rows = (EntryRow(f"{10**13 + i}", ListName.WHITE, "registered") for i in range(10))
    result = await registry.import_rows(rows, on_chunk=peek)
    assert result.rows == 10
    assert seen and set(seen) == {0}
    assert len(await registry.load_snapshot()) == 10


async def test_progress_callback(tmp_path: Path, registry: SqliteRegistry) -> None:
    path = tmp_path / "in.csv"
    path.write_text("imei,list\n" + "".join(f"{10**13 + i},white\n" for i in range(10)))
    calls: list[tuple[int, int, int | None]] = []
    await import_csv(registry, path, progress=lambda *a: calls.append(a))
    size = path.stat().st_size
    rows_done = [c[0] for c in calls]
    assert rows_done == sorted(rows_done) and rows_done[-1] == 10
    assert len(calls) >= 4  # chunks of 3, plus the final call
    assert all(total == size for _, _, total in calls)
    assert calls[-1][1] == size
    # Streams without a size report None as total.
    stream_calls: list[tuple[int, int, int | None]] = []
    await import_csv(
        registry,
        csv_bytes("imei,list", "11111111111111,grey"),
        progress=lambda *a: stream_calls.append(a),
    )
    assert stream_calls[-1][0] == 1 and stream_calls[-1][2] is None


# -- snapshots --------------------------------------------------------------------


async def test_load_snapshot_matches_content_and_version(registry: SqliteRegistry) -> None:
    empty = await registry.load_snapshot()
    assert (len(empty), empty.version, empty.digest()) == (0, 0, Snapshot.empty().digest())
    await import_csv(registry, csv_bytes(*SEED))
    snap = await registry.load_snapshot()
    assert snap.version == 1 and len(snap) == 3
    assert snap.lookup("35209900176148", IMSI) == (ListEntry(ListName.BLACK, "stolen"), True)
    assert snap.lookup("26053179311383")[0] == ListEntry(ListName.WHITE, "legalised")
    at = int(datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC).timestamp())  # the registry clock
    expected = Snapshot.build(
        [
            ("35209900176148", "black", "stolen", at),
            ("49015420323751", "grey", "pending_verification", at),
            ("26053179311383", "white", "legalised", at),
        ],
        [("35209900176148", IMSI)],
    )
    assert snap.digest() == expected.digest()


async def test_snapshot_of_many_rows(tmp_path: Path, clock: Clock) -> None:
    n = 30_000
    path = tmp_path / "big.csv"
    with path.open("w") as f:
        f.write("imei,list,reason\n")
        for i in range(n):
            lst = ("white", "grey", "black")[i % 3]
            f.write(f"{(i * 7919) % 10**14:014d},{lst},r{i % 5}\n")
    async with SqliteRegistry(tmp_path / "big.db", clock=clock) as reg:
        result = await import_csv(reg, path)
        assert result.rows == n
        snap = await reg.load_snapshot()
    assert len(snap) == n
    assert snap.counts() == {"white": n // 3, "grey": n // 3, "black": n // 3}
    assert len(snap.kind_table) == 15
    assert snap.lookup(f"{(3 * 7919) % 10**14:014d}")[0] == ListEntry(ListName.WHITE, "r3")
