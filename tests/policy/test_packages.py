"""eir.policy.packages: keys, signed full and delta packages, verification, applying them.

A publisher registry (the ministry's) and an operator registry are real
SQLite files under tmp_path. Packages that the builder would never make
(rows of another source, a wrong row count) are written here by `craft`,
from the format in the module docstring, so the verifier is not checked
against itself.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from eir.policy import packages as pk
from eir.policy.csvio import export_csv, parse_csv
from eir.policy.model import ListName
from eir.policy.registry import EntryRow
from eir.policy.sqlite import SqliteRegistry

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
HEADER = "imei,list,reason,imsi,source,note,since,grace_until,evidence,sv\n"
MINISTRY = (
    HEADER
    + "49015420323751,white,registered,,ministry,,2025-05-01T00:00:00Z,,,\n"
    + '35332510123456,black,counterfeit,,ministry,"two\nlines",2025-05-02T00:00:00Z,,case-1,\n'
    + "86768803654321,grey,pending_verification,,ministry,,2025-05-03T00:00:00Z,"
      "2025-06-30T00:00:00Z,,\n"
    + "35332511,black,counterfeit,,ministry,,2025-05-04T00:00:00Z,,,\n"
    + "35332512000000-35332512000099,black,illegal_import,,ministry,,2025-05-04T00:00:00Z,,,07\n"
    + "35332510123456,exception,owner_recovered,401011234567890,ministry,,"
      "2025-05-05T00:00:00Z,,,\n"
)
POLICE = HEADER + "11111111111111,black,stolen,,police,,2025-05-06T00:00:00Z,,case-9,\n"


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def _open(path: Path, clock: Clock) -> SqliteRegistry:
    reg = SqliteRegistry(path, clock=clock)
    await reg.open()
    return reg


@pytest.fixture
async def publisher(tmp_path: Path, clock: Clock) -> AsyncIterator[SqliteRegistry]:
    reg = await _open(tmp_path / "ministry.db", clock)
    await load(reg, MINISTRY)
    await load(reg, POLICE)  # another source in the same file: never in a ministry package
    yield reg
    await reg.close()


@pytest.fixture
async def operator(tmp_path: Path, clock: Clock) -> AsyncIterator[SqliteRegistry]:
    reg = await _open(tmp_path / "operator.db", clock)
    yield reg
    await reg.close()


@pytest.fixture
def key(tmp_path: Path) -> Ed25519PrivateKey:
    private, _, _ = pk.generate_keys(tmp_path / "ministry")
    return pk.load_private_key(private)


@pytest.fixture
def trusted(key: Ed25519PrivateKey) -> Ed25519PublicKey:
    return key.public_key()


async def load(reg: SqliteRegistry, text: str, **options: Any) -> None:
    await reg.import_rows(parse_csv(text.splitlines(keepends=True)), **options)


async def rows_of(reg: SqliteRegistry, source: str | None = None) -> list[EntryRow]:
    return [row async for row in reg.export_rows(source=source)]


async def state(reg: SqliteRegistry) -> tuple[list[EntryRow], dict[str, Any], int]:
    return await rows_of(reg), await reg.list_versions(), await reg.current_version()


async def full(reg: SqliteRegistry, key: Ed25519PrivateKey, path: Path, version: int) -> Path:
    await pk.build_full(reg, source="ministry", version=version, key=key, out=path,
                        publisher="ministry-kz", now=NOW)
    return path


def craft(path: Path, key: Ed25519PrivateKey, body: str, **manifest: Any) -> Path:
    """A package written straight from the documented format, whatever its content."""
    fields = {"format": "eir-list-package/1", "publisher": "ministry-kz", "source": "ministry",
              "kind": "full", "version": 1, "base_version": None,
              "created": "2025-06-01T12:00:00Z", "rows": body.count("\n") - 1,
              "body_sha256": hashlib.sha256(body.encode()).hexdigest(),
              "key_id": pk.key_id(key.public_key())}
    fields.update(manifest)
    line = json.dumps(fields).encode()
    path.write_bytes(line + b"\n" + base64.b64encode(key.sign(line)) + b"\n" + body.encode())
    return path


def body_of(path: Path) -> str:
    return path.read_bytes().split(b"\n", 2)[2].decode()


# -- keys --


def test_keygen_writes_a_private_key_only_the_owner_reads(tmp_path: Path) -> None:
    private, public, kid = pk.generate_keys(tmp_path / "k")
    assert (private.name, public.name) == ("k.private.pem", "k.public.pem")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key = pk.load_private_key(private)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    assert kid == pk.key_id(pk.load_public_key(public)) == hashlib.sha256(raw).hexdigest()[:16]
    (tmp_path / "k.hex").write_text(raw.hex() + "\n")  # the raw hex form loads too
    assert pk.key_id(pk.load_public_key(tmp_path / "k.hex")) == kid
    with pytest.raises(pk.PackageError, match="exists; refusing to overwrite"):
        pk.generate_keys(tmp_path / "k")
    assert pk.load_private_key(private).public_key() == key.public_key()  # untouched


def test_key_files_of_the_wrong_kind_are_refused(tmp_path: Path) -> None:
    _, public, _ = pk.generate_keys(tmp_path / "k")
    with pytest.raises(pk.PackageError, match="not an unencrypted PEM private key"):
        pk.load_private_key(public)
    (tmp_path / "junk").write_text("hello\n")
    with pytest.raises(pk.PackageError, match="neither a PEM public key nor 64 hex digits"):
        pk.load_public_key(tmp_path / "junk")


# -- full packages --


async def test_full_round_trip_into_a_second_registry(
    tmp_path: Path, publisher: SqliteRegistry, operator: SqliteRegistry,
    key: Ed25519PrivateKey, trusted: Ed25519PublicKey, clock: Clock,
) -> None:
    path = await full(publisher, key, tmp_path / "v1.pkg", 1)
    package = pk.verify_package(path, trusted)
    m = package.manifest
    assert (m.source, m.kind, m.version, m.base_version, m.rows) == ("ministry", "full", 1,
                                                                     None, 6)
    assert (m.publisher, m.created, m.key_id) == ("ministry-kz", "2025-06-01T12:00:00Z",
                                                  pk.key_id(trusted))
    assert package.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()

    clock.now = datetime(2025, 6, 2, 8, 30, tzinfo=UTC)
    applied = await pk.apply_package(operator, path, trusted, actor="noc-1")
    assert applied.previous is None and applied.result.rows == 6
    assert await rows_of(operator) == await rows_of(publisher, "ministry")
    assert (await operator.list_versions())["ministry"] == {
        "version": 1, "kind": "full", "applied_at": "2025-06-02T08:30:00Z",
        "sha256": package.sha256, "publisher": "ministry-kz", "seq": applied.result.version}
    (change,) = await operator.changes()
    assert change["kind"] == "package-full"
    assert change["summary"]["package_sha256"] == package.sha256
    assert change["summary"]["key_id"] == m.key_id
    assert change["summary"]["publisher"] == "ministry-kz"


async def test_full_body_is_the_csv_export_format(
    tmp_path: Path, publisher: SqliteRegistry, key: Ed25519PrivateKey, clock: Clock,
) -> None:
    path = await full(publisher, key, tmp_path / "v1.pkg", 1)
    only_ministry = await _open(tmp_path / "copy.db", clock)
    try:
        await load(only_ministry, MINISTRY)
        out = io.StringIO(newline="")
        await export_csv(only_ministry, out)
    finally:
        await only_ministry.close()
    assert body_of(path) == out.getvalue()


async def test_build_refuses_to_overwrite_a_package(
    tmp_path: Path, publisher: SqliteRegistry, key: Ed25519PrivateKey,
) -> None:
    path = await full(publisher, key, tmp_path / "v1.pkg", 1)
    before = path.read_bytes()
    with pytest.raises(pk.PackageError, match="exists; a published package is never"):
        await full(publisher, key, path, 2)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


async def test_replayed_older_full_is_refused_unless_forced(
    tmp_path: Path, publisher: SqliteRegistry, operator: SqliteRegistry,
    key: Ed25519PrivateKey, trusted: Ed25519PublicKey,
) -> None:
    v1 = await full(publisher, key, tmp_path / "v1.pkg", 1)
    await publisher.import_rows([EntryRow("49015420323751", ListName.BLACK, "counterfeit",
                                          source="ministry")])
    v2 = await full(publisher, key, tmp_path / "v2.pkg", 2)
    await pk.apply_package(operator, v2, trusted)
    before = await state(operator)
    with pytest.raises(pk.PackageError,
                       match=r"ministry full version 1 is older than the applied version 2"):
        await pk.apply_package(operator, v1, trusted)
    with pytest.raises(pk.PackageError, match="ministry version 2 is already applied"):
        await pk.apply_package(operator, v2, trusted)
    assert await state(operator) == before
    await pk.apply_package(operator, v1, trusted, force=True)  # a deliberate rollback
    assert (await operator.list_versions())["ministry"]["version"] == 1
    assert (await operator.show("49015420323751"))["list"] == "white"


async def test_full_list_never_erases_another_sources_entry(
    tmp_path: Path, publisher: SqliteRegistry, operator: SqliteRegistry,
    key: Ed25519PrivateKey, trusted: Ed25519PublicKey,
) -> None:
    # The operator holds a police 'stolen' entry on an IMEI the ministry lists as white.
    await load(operator, HEADER + "49015420323751,black,stolen,,police,,,,case-7,\n")
    applied = await pk.apply_package(operator, await full(publisher, key, tmp_path / "v1.pkg", 1),
                                     trusted)
    assert applied.skipped == 1
    entry = await operator.show("49015420323751")
    assert (entry["list"], entry["reason"], entry["source"]) == ("black", "stolen", "police")
    # The ministry drops that IMEI and another one: only its own entry goes.
    await publisher.import_rows([EntryRow("49015420323751", ListName.WHITE, "registered",
                                          source="ministry", op="remove"),
                                 EntryRow("86768803654321", ListName.GREY, "x",
                                          source="ministry", op="remove")])
    await pk.apply_package(operator, await full(publisher, key, tmp_path / "v2.pkg", 2), trusted)
    assert (await operator.show("49015420323751"))["source"] == "police"
    assert (await operator.show("86768803654321"))["list"] is None


# -- deltas --


async def change_ministry_list(reg: SqliteRegistry) -> None:
    """Add, update and remove entries, a range and a pair of the ministry's list."""
    await load(reg, HEADER
               + "49015420323751,black,counterfeit,,ministry,,2025-05-10T00:00:00Z,,,\n"
               + "99000000000001,white,registered,,ministry,,2025-05-10T00:00:00Z,,,\n"
               + "35332513,grey,pending_verification,,ministry,,2025-05-10T00:00:00Z,,,\n"
               + "99000000000001,exception,paired,250011234567890,ministry,,"
                 "2025-05-10T00:00:00Z,,,\n")
    await reg.import_rows([
        EntryRow("86768803654321", ListName.GREY, "x", source="ministry", op="remove"),
        EntryRow("35332511000000", ListName.BLACK, "x", source="ministry",
                 hi="35332511999999", op="remove"),
        EntryRow("35332510123456", ListName.EXCEPTION, "x", imsi="401011234567890",
                 source="ministry", op="remove"),
    ])


async def test_delta_build_and_apply(
    tmp_path: Path, publisher: SqliteRegistry, operator: SqliteRegistry,
    key: Ed25519PrivateKey, trusted: Ed25519PublicKey,
) -> None:
    v1 = await full(publisher, key, tmp_path / "v1.pkg", 1)
    await pk.apply_package(operator, v1, trusted)
    await change_ministry_list(publisher)
    d = tmp_path / "d2.pkg"
    m = await pk.build_delta(publisher, source="ministry", version=2, key=key, base=v1, out=d,
                             now=NOW)
    assert (m.kind, m.version, m.base_version, m.rows) == ("delta", 2, 1, 7)
    ops = {(line.split(",")[0], line.rsplit(",", 1)[1])
           for line in body_of(d).splitlines()[1:]}
    assert ops == {
        ("49015420323751", "update"), ("99000000000001", "add"), ("35332513", "add"),
        ("99000000000001", "add"), ("86768803654321", "remove"), ("35332511", "remove"),
        ("35332510123456", "remove"),
    }
    applied = await pk.apply_package(operator, d, trusted)
    assert applied.previous == 1
    assert await rows_of(operator) == await rows_of(publisher, "ministry")
    recorded = (await operator.list_versions())["ministry"]
    assert (recorded["version"], recorded["kind"]) == (2, "delta")
    assert recorded["sha256"] == hashlib.sha256(d.read_bytes()).hexdigest()
    assert (await operator.changes())[-1]["kind"] == "package-delta"


async def test_delta_without_changes_still_moves_the_version(
    tmp_path: Path, publisher: SqliteRegistry, operator: SqliteRegistry,
    key: Ed25519PrivateKey, trusted: Ed25519PublicKey,
) -> None:
    v1 = await full(publisher, key, tmp_path / "v1.pkg", 1)
    await pk.apply_package(operator, v1, trusted)
    d = tmp_path / "d2.pkg"
    m = await pk.build_delta(publisher, source="ministry", version=2, key=key, base=v1, out=d)
    assert m.rows == 0
    await pk.apply_package(operator, d, trusted)
    assert (await operator.list_versions())["ministry"]["version"] == 2


async def test_delta_on_the_wrong_base_is_refused(
    tmp_path: Path, publisher: SqliteRegistry, operator: SqliteRegistry,
    key: Ed25519PrivateKey, trusted: Ed25519PublicKey,
) -> None:
    v1 = await full(publisher, key, tmp_path / "v1.pkg", 1)
    v2 = await full(publisher, key, tmp_path / "v2.pkg", 2)
    await change_ministry_list(publisher)
    d = tmp_path / "d3.pkg"
    await pk.build_delta(publisher, source="ministry", version=3, key=key, base=v2, out=d)
    before = await state(operator)
    with pytest.raises(pk.PackageError, match="delta 2->3 needs version 2 applied, registry "
                                              "has none"):
        await pk.apply_package(operator, d, trusted)
    await pk.apply_package(operator, v1, trusted)
    before = await state(operator)
    with pytest.raises(pk.PackageError, match=r"^delta 2->3 needs version 2 applied, registry "
                                              r"is at 1$"):
        await pk.apply_package(operator, d, trusted)
    assert await state(operator) == before


async def test_delta_is_built_against_a_full_package_of_an_older_version(
    tmp_path: Path, publisher: SqliteRegistry, key: Ed25519PrivateKey,
) -> None:
    v1 = await full(publisher, key, tmp_path / "v1.pkg", 1)
    d2 = tmp_path / "d2.pkg"
    await pk.build_delta(publisher, source="ministry", version=2, key=key, base=v1, out=d2)
    with pytest.raises(pk.PackageError, match=r"is a delta .*built against the full package"):
        await pk.build_delta(publisher, source="ministry", version=3, key=key, base=d2,
                             out=tmp_path / "d3.pkg")
    with pytest.raises(pk.PackageError, match="version 1 must be greater than the base's 1"):
        await pk.build_delta(publisher, source="ministry", version=1, key=key, base=v1,
                             out=tmp_path / "x.pkg")
    with pytest.raises(pk.PackageError, match="is a package of 'ministry', not 'police'"):
        await pk.build_delta(publisher, source="police", version=2, key=key, base=v1,
                             out=tmp_path / "y.pkg")
    other = Ed25519PrivateKey.generate()
    with pytest.raises(pk.PackageError, match=r"^base .*v1.pkg: signed with key"):
        await pk.build_delta(publisher, source="ministry", version=2, key=other, base=v1,
                             out=tmp_path / "z.pkg")
    # After a key rotation the old public key vouches for the base.
    await pk.build_delta(publisher, source="ministry", version=2, key=other, base=v1,
                         out=tmp_path / "z.pkg", trusted=[key.public_key()])
    assert not (tmp_path / "d3.pkg").exists() and not (tmp_path / "x.pkg").exists()


async def test_delta_is_not_built_on_a_changed_base(
    tmp_path: Path, publisher: SqliteRegistry, key: Ed25519PrivateKey,
) -> None:
    v1 = await full(publisher, key, tmp_path / "v1.pkg", 1)
    v1.write_bytes(v1.read_bytes().replace(b",white,", b",black,"))
    await change_ministry_list(publisher)
    with pytest.raises(pk.PackageError, match=r"^base .*v1.pkg: body was changed"):
        await pk.build_delta(publisher, source="ministry", version=2, key=key, base=v1,
                             out=tmp_path / "d2.pkg")
    assert not (tmp_path / "d2.pkg").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no scraps


async def test_delta_leaves_another_sources_entries_alone(
    tmp_path: Path, publisher: SqliteRegistry, operator: SqliteRegistry,
    key: Ed25519PrivateKey, trusted: Ed25519PublicKey,
) -> None:
    v1 = await full(publisher, key, tmp_path / "v1.pkg", 1)
    await pk.apply_package(operator, v1, trusted)
    # Since v1 the police reported two ministry-listed IMEIs stolen on this operator.
    await load(operator, HEADER + "49015420323751,black,stolen,,police,,,,case-7,\n"
                                + "86768803654321,black,stolen,,police,,,,case-8,\n")
    await change_ministry_list(publisher)  # updates the first, removes the second
    d = tmp_path / "d2.pkg"
    await pk.build_delta(publisher, source="ministry", version=2, key=key, base=v1, out=d)
    applied = await pk.apply_package(operator, d, trusted)
    assert applied.skipped == 2  # the update, and the removal of another source's entry
    for imei in ("49015420323751", "86768803654321"):
        assert (await operator.show(imei))["reason"] == "stolen"
    assert (await operator.changes())[-1]["summary"]["skipped"] == 2


# -- verification failures --


async def test_tampered_body_is_refused_and_nothing_changes(
    tmp_path: Path, publisher: SqliteRegistry, operator: SqliteRegistry,
    key: Ed25519PrivateKey, trusted: Ed25519PublicKey,
) -> None:
    await pk.apply_package(operator, await full(publisher, key, tmp_path / "v1.pkg", 1), trusted)
    v2 = await full(publisher, key, tmp_path / "v2.pkg", 2)
    v2.write_bytes(v2.read_bytes().replace(b"49015420323751,white", b"49015420323751,black"))
    before = await state(operator)
    with pytest.raises(pk.PackageError, match=r"^body was changed: sha256 mismatch$"):
        await pk.apply_package(operator, v2, trusted)
    assert await state(operator) == before


async def test_body_changed_after_verification_rolls_back(
    tmp_path: Path, publisher: SqliteRegistry, operator: SqliteRegistry,
    key: Ed25519PrivateKey, trusted: Ed25519PublicKey,
) -> None:
    path = await full(publisher, key, tmp_path / "v1.pkg", 1)
    package = pk.verify_package(path, trusted)
    path.write_bytes(path.read_bytes().replace(b",white,", b",black,"))  # same length
    before = await state(operator)
    with pytest.raises(pk.PackageError, match="body was changed"):
        await pk.apply_verified(operator, package)
    assert await state(operator) == before


async def test_changed_manifest_or_signature_does_not_verify(
    tmp_path: Path, publisher: SqliteRegistry, key: Ed25519PrivateKey,
    trusted: Ed25519PublicKey,
) -> None:
    path = await full(publisher, key, tmp_path / "v1.pkg", 1)
    data = path.read_bytes()
    kid = pk.key_id(trusted)
    (tmp_path / "m.pkg").write_bytes(data.replace(b'"version":1', b'"version":9', 1))
    with pytest.raises(pk.PackageError, match=f"^signature does not verify with key {kid}$"):
        pk.verify_package(tmp_path / "m.pkg", trusted)
    line1, _, body = data.split(b"\n", 2)
    other_sig = base64.b64encode(Ed25519PrivateKey.generate().sign(line1))
    (tmp_path / "s.pkg").write_bytes(line1 + b"\n" + other_sig + b"\n" + body)
    with pytest.raises(pk.PackageError, match="signature does not verify"):
        pk.verify_package(tmp_path / "s.pkg", trusted)
    (tmp_path / "b.pkg").write_bytes(line1 + b"\n!!\n" + body)
    with pytest.raises(pk.PackageError, match="line 2 is not a base64 signature"):
        pk.verify_package(tmp_path / "b.pkg", trusted)


async def test_wrong_key_is_refused(
    tmp_path: Path, publisher: SqliteRegistry, operator: SqliteRegistry,
    key: Ed25519PrivateKey,
) -> None:
    path = await full(publisher, key, tmp_path / "v1.pkg", 1)
    stranger = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(pk.PackageError, match=f"^signed with key {pk.key_id(key.public_key())},"
                                              f" which is not trusted \\(trusted: "
                                              f"{pk.key_id(stranger)}\\)$"):
        await pk.apply_package(operator, path, stranger)
    assert await operator.list_versions() == {}
    # Several trusted keys: the key id picks the right one.
    assert pk.verify_package(path, [stranger, key.public_key()]).manifest.version == 1


def test_files_that_are_not_packages(tmp_path: Path, trusted: Ed25519PublicKey) -> None:
    (tmp_path / "a.csv").write_text(MINISTRY)
    with pytest.raises(pk.PackageError,
                       match=r"^not an eir list package: line 1 is not a JSON manifest$"):
        pk.verify_package(tmp_path / "a.csv", trusted)
    (tmp_path / "b").write_text('{"format": "other/1"}\nsig\n')
    with pytest.raises(pk.PackageError, match="format 'other/1', expected"):
        pk.verify_package(tmp_path / "b", trusted)
    (tmp_path / "c").write_text("")
    with pytest.raises(pk.PackageError, match="no manifest and signature lines"):
        pk.verify_package(tmp_path / "c", trusted)


def test_signed_but_inconsistent_packages_are_refused(
    tmp_path: Path, key: Ed25519PrivateKey, trusted: Ed25519PublicKey
) -> None:
    good = "imei,list,reason,imsi,source,note,since,grace_until,evidence,sv\n" \
           "49015420323751,white,registered,,ministry,,,,,\n" \
           "49015420323752,white,registered,,ministry,,,,,\n"
    assert pk.verify_package(craft(tmp_path / "ok", key, good), trusted).manifest.rows == 2
    cases: dict[str, tuple[str, dict[str, Any], str]] = {
        "rows": (good, {"rows": 3}, "^manifest says 3 rows, body has 2$"),
        "source": (good.replace("2,white,registered,,ministry", "2,white,registered,,police"),
                   {}, "^line 5: row source 'police' is not the package's source 'ministry'$"),
        "order": (good.replace("3751,", "3753,"), {}, "^line 5: rows are not in key order"),
        "op": (good.replace(",sv\n", ",sv,op\n").replace(",,\n", ",,,add\n"), {},
               "^line 4: a full package's rows carry no op$"),
        "csv": (good.replace("registered,,ministry,,,,,\n", "registered\n", 1), {},
                "^line 4: expected 10 fields, found 3$"),
        "base": (good, {"base_version": 1}, "^bad manifest: base_version must be null"),
        "field": (good, {"extra": 1}, "^bad manifest: unknown extra$"),
        "version": (good, {"version": True}, "^bad manifest: version must be an integer"),
    }
    for name, (body, manifest, message) in cases.items():
        with pytest.raises(pk.PackageError, match=message):
            pk.verify_package(craft(tmp_path / name, key, body, **manifest), trusted)


async def test_built_package_is_world_readable(
    tmp_path: Path, publisher: SqliteRegistry, key: Ed25519PrivateKey,
) -> None:
    path = await full(publisher, key, tmp_path / "v1.pkg", 1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
