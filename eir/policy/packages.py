"""Signed list packages: how a publisher (the ministry) ships a list and operators take it in.

Owns the package file format, the publisher's Ed25519 key files, building
full and delta packages from the publisher's registry, verifying a package
against trusted public keys, and applying it to an operator's registry with
the version recorded (POLICY.md "Who uses it": the ministry checks that each
operator enforces the national lists, and list-version lag; DESIGN.md
section 5: Ed25519 signatures via `cryptography`). Rows are the
`eir.policy.csvio` format; storage is the registry's audited ``import_rows``.

Package format ``eir-list-package/1``: one UTF-8 text file, lines end in "\\n"::

    line 1   the manifest, one line of JSON:
             {"format": "eir-list-package/1", "publisher": "ministry-kz",
              "source": "ministry", "kind": "full" | "delta", "version": 43,
              "base_version": 42 | null, "created": "2025-06-01T12:00:00Z",
              "rows": 1234, "body_sha256": "<64 hex>", "key_id": "<16 hex>"}
    line 2   the base64 Ed25519 signature over the exact bytes of line 1
             (without its "\\n")
    line 3-  the body: CSV with a header row; a full package has the export
             columns (csvio.EXPORT_COLUMNS), a delta adds ``op`` (add,
             update, remove)

- The manifest holds the body's SHA-256, so one signature covers the file.
- ``key_id`` is the first 16 hex digits of the SHA-256 of the raw 32-byte
  public key. It only picks which trusted key to verify with.
- ``base_version`` is set exactly on deltas: the version they apply to.
- ``rows`` counts the body's data rows; ``created`` is UTC.
- Every row's ``source`` is the manifest's ``source``, and rows are in the
  registry's export order (entries by IMEI, then ranges by (first, last,
  sv), then exception pairs by (IMEI, IMSI)), strictly increasing. So a
  repeated row cannot hide in a package, and a delta is a merge of two
  sorted streams rather than a dictionary of a list of millions.

Applying (operator side), in this order; a failure at any step changes nothing:

1. verify: format, trusted key, signature, body hash, row count, rows;
2. versions: a full package must be newer than the version of its source
   recorded in the registry (older or equal is refused, as a replay,
   unless forced); a delta's ``base_version`` must equal that version;
3. one audited transaction (``import_rows``) writes the rows and records
   the version, the package's SHA-256 and the publisher. A full package
   replaces its source's entries and never touches another source's entry
   (a police 'stolen' entry stays); a delta's rows skip entries owned by
   another source too. The body is hashed again while it is imported, so
   a file changed after step 1 rolls the transaction back.

Publisher workflow: for each release N, build the full package N and the
delta N-1 -> N; a delta is built against the full package of the previous
version (`build_delta` refuses a delta as its base), which holds the whole
list as it was.

Private keys are written unencrypted (mode 0600); protecting them further
(an HSM, a passphrase) is the publisher's deployment, not this module.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from eir.policy.csvio import (
    COLUMNS,
    EXPORT_COLUMNS,
    MAX_SOURCE_LEN,
    CsvImportError,
    format_row,
    parse_csv,
)
from eir.policy.model import ListName, parse_timestamp, utc_timestamp
from eir.policy.registry import EntryRow, ImportResult, RowError
from eir.policy.sqlite import ListVersion, SqliteRegistry

__all__ = [
    "FORMAT",
    "Applied",
    "Manifest",
    "Package",
    "PackageError",
    "apply_package",
    "apply_verified",
    "build_delta",
    "build_full",
    "generate_keys",
    "key_id",
    "load_private_key",
    "load_public_key",
    "verify_package",
]

FORMAT: Final = "eir-list-package/1"
KINDS: Final = ("full", "delta")

# The manifest and the signature are short lines; a bound keeps a wrong
# file (a multi-gigabyte CSV without newlines) from being read whole.
_MAX_HEAD_LINE: Final = 64 * 1024
_WRITE_BATCH: Final = 5_000
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_HEX16: Final = re.compile(r"[0-9a-f]{16}")

_RowKey = tuple[int, str, str, str]


class PackageError(ValueError):
    """A package (or a key) is unacceptable; ``str(e)`` names the problem in one line."""


# -- keys ----------------------------------------------------------------------------


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of the SHA-256 of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keys(prefix: str | os.PathLike[str]) -> tuple[Path, Path, str]:
    """Write ``PREFIX.private.pem`` (mode 0600) and ``PREFIX.public.pem``, and a key id.

    Existing files are never overwritten: replacing a publisher's key by
    mistake would orphan every operator's trust in it.
    """
    private_path = Path(f"{os.fspath(prefix)}.private.pem")
    public_path = Path(f"{os.fspath(prefix)}.public.pem")
    for path in (private_path, public_path):
        if path.exists():
            raise PackageError(f"{path} exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    _write_new(private_path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()), 0o600)
    _write_new(public_path, key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)
    return private_path, public_path, key_id(key.public_key())


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # The mode is given at creation, so the private key is never readable by
    # others, not even for an instant; fchmod undoes a umask that would
    # also strip the owner's bits.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise PackageError(f"{path} exists; refusing to overwrite it") from None
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), mode)
        out.write(data)


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """An Ed25519 private key from an unencrypted PEM (PKCS#8) file."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise PackageError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise PackageError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file or a file holding its 64 hex digits."""
    data = Path(path).read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm):
            raise PackageError(f"{path}: not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise PackageError(f"{path}: not an Ed25519 public key")
        return key
    text = data.decode("ascii", "replace").strip()
    if not _HEX64.fullmatch(text.lower()):
        raise PackageError(f"{path}: neither a PEM public key nor 64 hex digits")
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))


# -- manifest ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Manifest:
    """Line 1 of a package (see the module docstring), validated."""

    publisher: str
    source: str
    kind: str
    version: int
    base_version: int | None
    created: str
    rows: int
    body_sha256: str
    key_id: str

    def to_line(self) -> bytes:
        # ASCII-only JSON: escaped, so no newline or odd byte can split line 1.
        return json.dumps({"format": FORMAT, **asdict(self)}, separators=(",", ":"),
                          ensure_ascii=True).encode("ascii")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        names = {f.name for f in fields(cls)}
        missing = sorted(names - data.keys())
        unknown = sorted(data.keys() - names - {"format"})
        if missing or unknown:
            what = [f"missing {', '.join(missing)}"] if missing else []
            what += [f"unknown {', '.join(unknown)}"] if unknown else []
            raise PackageError(f"bad manifest: {'; '.join(what)}")
        manifest = cls(**{name: data[name] for name in names})
        problem = manifest.problem()
        if problem is not None:
            raise PackageError(f"bad manifest: {problem}")
        return manifest

    def problem(self) -> str | None:
        """What is wrong with these fields, or None."""
        checks: tuple[tuple[bool, str], ...] = (
            (_is_name(self.publisher), "publisher must be printable text of 1 to 64 characters"),
            (_is_name(self.source), "source must be printable text of 1 to 64 characters"),
            (self.kind in KINDS, "kind must be full or delta"),
            (_is_int(self.version) and self.version >= 1, "version must be an integer >= 1"),
            (_base_ok(self), "base_version must be null on a full package and, on a delta, "
                             "an integer >= 1 below version"),
            (_is_timestamp(self.created), "created must be an ISO 8601 UTC timestamp"),
            (_is_int(self.rows) and self.rows >= 0, "rows must be an integer >= 0"),
            (isinstance(self.body_sha256, str) and bool(_HEX64.fullmatch(self.body_sha256)),
             "body_sha256 must be 64 lowercase hex digits"),
            (isinstance(self.key_id, str) and bool(_HEX16.fullmatch(self.key_id)),
             "key_id must be 16 lowercase hex digits"),
        )
        return next((message for ok, message in checks if not ok), None)

    def describe(self) -> str:
        """``ministry full version 43`` or ``ministry delta 42->43``."""
        if self.kind == "delta":
            return f"{self.source} delta {self.base_version}->{self.version}"
        return f"{self.source} full version {self.version}"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not 1


def _is_name(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_SOURCE_LEN and value.isprintable()


def _is_timestamp(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parse_timestamp(value)
    except ValueError:
        return False
    return True


def _base_ok(m: Manifest) -> bool:
    if m.kind != "delta":
        return m.base_version is None
    return (_is_int(m.base_version) and _is_int(m.version) and m.base_version is not None
            and 1 <= m.base_version < m.version)


# -- verification ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Package:
    """A verified package: its manifest, its first two lines and the SHA-256 of the file."""

    path: Path
    manifest: Manifest
    head: bytes
    sha256: str


def verify_package(
    path: str | os.PathLike[str], trusted: Ed25519PublicKey | Sequence[Ed25519PublicKey]
) -> Package:
    """Check a package completely; raise `PackageError` naming the first problem.

    ``trusted`` is the publisher's public key, or several (a key being
    rotated out and its successor); the manifest's ``key_id`` picks one.
    """
    path = Path(path)
    keys = [trusted] if isinstance(trusted, Ed25519PublicKey) else list(trusted)
    head, manifest = _read_head(path, keys)
    body = _Body(path, manifest, head)
    for _ in body.rows():
        pass
    assert body.file_sha256 is not None  # set when rows() ran to its end
    return Package(path, manifest, head, body.file_sha256)


def _read_head(path: Path, trusted: Sequence[Ed25519PublicKey]) -> tuple[bytes, Manifest]:
    with open(path, "rb") as stream:
        line1 = stream.readline(_MAX_HEAD_LINE)
        line2 = stream.readline(_MAX_HEAD_LINE)
    if not (line1.endswith(b"\n") and line2.endswith(b"\n")):
        raise PackageError("not an eir list package: no manifest and signature lines")
    manifest_bytes = line1[:-1]
    try:
        data = json.loads(manifest_bytes)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both are
        raise PackageError("not an eir list package: line 1 is not a JSON manifest") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise PackageError(f"not an eir list package: format {found!r}, expected {FORMAT!r}")
    # The signature is checked before the fields mean anything: a changed
    # manifest then reads as what it is, a broken signature.
    _check_signature(manifest_bytes, line2[:-1], data.get("key_id"), trusted)
    return line1 + line2, Manifest.from_dict(data)


def _check_signature(
    signed: bytes, signature_line: bytes, kid: object, trusted: Sequence[Ed25519PublicKey]
) -> None:
    by_id = {key_id(k): k for k in trusted}
    key = by_id.get(kid) if isinstance(kid, str) else None
    if key is None:
        shown = kid if isinstance(kid, str) and _HEX16.fullmatch(kid) else repr(kid)
        raise PackageError(f"signed with key {shown}, which is not trusted "
                           f"(trusted: {', '.join(by_id) or 'none'})")
    try:
        signature = base64.b64decode(signature_line, validate=True)
    except (binascii.Error, ValueError):
        raise PackageError("line 2 is not a base64 signature") from None
    try:
        key.verify(signature, signed)
    except InvalidSignature:
        raise PackageError(f"signature does not verify with key {kid}") from None


class _HashingLines:
    """Decoded lines of a package body, hashing exactly the bytes handed to the parser."""

    def __init__(self, stream: IO[bytes], head: bytes) -> None:
        self._stream = stream
        self.body = hashlib.sha256()
        self.file = hashlib.sha256(head)
        self.line = 0

    def __iter__(self) -> Iterator[str]:
        for raw in self._stream:
            self.line += 1
            self._take(raw)
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise CsvImportError(self.line, f"not valid UTF-8 ({exc.reason})") from None

    def drain(self) -> None:
        """Hash the rest of the file, unparsed (after a bad row)."""
        while chunk := self._stream.read(1 << 16):
            self._take(chunk)

    def _take(self, data: bytes) -> None:
        self.body.update(data)
        self.file.update(data)


class _Body:
    """The rows of one package's body, checked as they are read.

    `rows` yields rows before the end of the body is hashed; it raises
    `PackageError` at the end when the hash or the row count is wrong, so a
    consumer writing inside a transaction (``import_rows``) rolls back.
    """

    def __init__(self, path: Path, manifest: Manifest, head: bytes) -> None:
        self._path = path
        self._manifest = manifest
        self._head = head
        self.file_sha256: str | None = None

    def rows(self) -> Iterator[EntryRow]:
        m = self._manifest
        with open(self._path, "rb") as stream:
            stream.seek(len(self._head))
            lines = _HashingLines(stream, self._head)
            count = 0
            last: _RowKey | None = None
            problem: PackageError | None = None
            try:
                for row in parse_csv(lines):
                    problem = _row_problem(row, m, last)
                    if problem is not None:
                        break
                    last = _row_key(row)
                    count += 1
                    yield row
            except CsvImportError as exc:
                problem = PackageError(f"{_at_line(exc.line)}{exc.message}")
            lines.drain()
        # A changed body explains any other problem in it: report that first.
        if lines.body.hexdigest() != m.body_sha256:
            raise PackageError("body was changed: sha256 mismatch")
        if problem is not None:
            raise problem
        if count != m.rows:
            raise PackageError(f"manifest says {m.rows} rows, body has {count}")
        self.file_sha256 = lines.file.hexdigest()


def _at_line(body_line: int) -> str:
    # The body starts on line 3 of the file; people open the file, not the body.
    return f"line {body_line + 2}: " if body_line > 0 else ""


def _row_problem(row: EntryRow, m: Manifest, last: _RowKey | None) -> PackageError | None:
    where = _at_line(row.line)
    if row.source != m.source:
        return PackageError(f"{where}row source {row.source!r} is not the package's "
                            f"source {m.source!r}")
    if m.kind == "full" and row.op is not None:
        return PackageError(f"{where}a full package's rows carry no op")
    if last is not None and _row_key(row) <= last:
        return PackageError(f"{where}rows are not in key order (or a row is repeated)")
    return None


def _row_key(row: EntryRow) -> _RowKey:
    """The registry's export order: entries, then ranges, then exception pairs."""
    if row.list is ListName.EXCEPTION:
        return (2, row.imei, row.imsi or "", "")
    if row.is_range:
        return (1, row.imei, row.hi or row.imei, row.sv or "")
    return (0, row.imei, "", "")


# -- building --------------------------------------------------------------------------


async def build_full(
    registry: SqliteRegistry,
    *,
    source: str,
    version: int,
    key: Ed25519PrivateKey,
    out: str | os.PathLike[str],
    publisher: str | None = None,
    now: datetime | None = None,
) -> Manifest:
    """Write the full package ``version`` of ``source``: all of that source's rows."""
    draft = _draft(source, "full", version, None, key, publisher, now)
    rows = _ordered(registry.export_rows(source=source))
    return await _write_package(Path(out), draft, rows, key)


async def build_delta(
    registry: SqliteRegistry,
    *,
    source: str,
    version: int,
    key: Ed25519PrivateKey,
    base: str | os.PathLike[str],
    out: str | os.PathLike[str],
    publisher: str | None = None,
    trusted: Sequence[Ed25519PublicKey] = (),
    now: datetime | None = None,
) -> Manifest:
    """Write the delta from the full package ``base`` to the registry's rows of ``source``.

    Rows added get op add, rows changed op update, rows gone op remove. The
    publisher defaults to the base's. ``base`` is verified with the signing
    key's public key (and ``trusted``, for a base signed by a key since
    rotated out).
    """
    base = Path(base)
    try:
        # The body is checked as the delta is built (one pass, not two); a
        # bad body stops the build before anything is published.
        head, pm = _read_head(base, [key.public_key(), *trusted])
    except PackageError as exc:
        raise PackageError(f"base {base}: {exc}") from None
    if pm.kind != "full":
        raise PackageError(f"base {base} is a delta ({pm.describe()}); a delta is built "
                           "against the full package of the previous version")
    if pm.source != source:
        raise PackageError(f"base {base} is a package of {pm.source!r}, not {source!r}")
    if _is_int(version) and version <= pm.version:
        raise PackageError(f"version {version} must be greater than the base's {pm.version}")
    draft = _draft(source, "delta", version, pm.version, key,
                   publisher if publisher is not None else pm.publisher, now)
    rows = _diff(_base_rows(_Body(base, pm, head), base),
                 _ordered(registry.export_rows(source=source)))
    return await _write_package(Path(out), draft, rows, key)


def _base_rows(body: _Body, base: Path) -> Iterator[EntryRow]:
    try:
        yield from body.rows()
    except PackageError as exc:
        raise PackageError(f"base {base}: {exc}") from None


def _draft(
    source: str,
    kind: str,
    version: int,
    base_version: int | None,
    key: Ed25519PrivateKey,
    publisher: str | None,
    now: datetime | None,
) -> Manifest:
    # Checked before any work, with placeholders for what the body decides.
    draft = Manifest(publisher if publisher is not None else source, source, kind, version,
                     base_version, utc_timestamp(now or datetime.now(UTC)), 0, "0" * 64,
                     key_id(key.public_key()))
    problem = draft.problem()
    if problem is not None:
        raise PackageError(problem)
    return draft


async def _ordered(rows: AsyncIterator[EntryRow]) -> AsyncIterator[EntryRow]:
    # Deltas and verification rely on the export order; a backend that
    # ever streams differently must fail here, not publish a wrong delta.
    last: _RowKey | None = None
    async for row in rows:
        key = _row_key(row)
        if last is not None and key <= last:
            raise PackageError(f"the registry exported {row.imei} out of key order")
        last = key
        yield row


async def _diff(old: Iterator[EntryRow], new: AsyncIterator[EntryRow]) -> AsyncIterator[EntryRow]:
    """Merge two sorted streams into add / update / remove rows."""
    o = next(old, None)
    n = await anext(new, None)
    while o is not None or n is not None:
        if n is None or (o is not None and _row_key(o) < _row_key(n)):
            assert o is not None
            yield replace(o, op="remove")
            o = next(old, None)
        elif o is None or _row_key(n) < _row_key(o):
            yield replace(n, op="add")
            n = await anext(new, None)
        else:
            if n != o:  # `line` is not compared; `op` is None on both sides
                yield replace(n, op="update")
            o = next(old, None)
            n = await anext(new, None)


class _BodyWriter:
    """Writes CSV rows in csvio's format to a binary file, hashing what it writes."""

    def __init__(self, out: IO[bytes], columns: Sequence[str]) -> None:
        self._out = out
        self._buf = io.StringIO()
        self._csv = csv.writer(self._buf, lineterminator="\n")
        self._with_op = "op" in columns
        self.sha256 = hashlib.sha256()
        self.rows = 0
        self._csv.writerow(columns)

    def write(self, row: EntryRow) -> None:
        self._csv.writerow(format_row(row, with_op=self._with_op))
        self.rows += 1
        if self.rows % _WRITE_BATCH == 0:
            self.flush()

    def flush(self) -> None:
        data = self._buf.getvalue().encode("utf-8")
        self.sha256.update(data)
        self._out.write(data)
        self._buf.seek(0)
        self._buf.truncate()


async def _write_package(
    out: Path, draft: Manifest, rows: AsyncIterator[EntryRow], key: Ed25519PrivateKey
) -> Manifest:
    if out.exists():
        raise PackageError(f"{out} exists; a published package is never overwritten")
    columns = EXPORT_COLUMNS if draft.kind == "full" else COLUMNS
    # The body goes to a scratch file first: its hash belongs in line 1.
    with tempfile.TemporaryFile(dir=out.parent) as body:
        writer = _BodyWriter(body, columns)
        async for row in rows:
            writer.write(row)
        writer.flush()
        manifest = replace(draft, rows=writer.rows, body_sha256=writer.sha256.hexdigest())
        line = manifest.to_line()
        head = line + b"\n" + base64.b64encode(key.sign(line)) + b"\n"
        body.seek(0)
        _publish(out, head, body)
    return manifest


def _publish(out: Path, head: bytes, body: IO[bytes]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(head)
            shutil.copyfileobj(body, f)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), 0o644)  # a package is public; mkstemp made it 0600
        # link() fails if ``out`` appeared meanwhile: readers only ever see a
        # whole package, and a published one is never replaced.
        os.link(tmp, out)
    except FileExistsError:
        raise PackageError(f"{out} exists; a published package is never overwritten") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


# -- applying --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Applied:
    """What applying a package did.

    ``previous`` is the source's version before (None: none recorded);
    ``skipped`` counts rows left out because another source owns the entry.
    """

    package: Package
    result: ImportResult
    previous: int | None
    skipped: int


async def apply_package(
    registry: SqliteRegistry,
    path: str | os.PathLike[str],
    trusted: Ed25519PublicKey | Sequence[Ed25519PublicKey],
    *,
    actor: str | None = None,
    force: bool = False,
) -> Applied:
    """Verify a package, then apply it (see the module docstring); all or nothing."""
    return await apply_verified(registry, verify_package(path, trusted), actor=actor, force=force)


async def apply_verified(
    registry: SqliteRegistry, package: Package, *, actor: str | None = None, force: bool = False
) -> Applied:
    """Apply a package `verify_package` returned; its body is checked again as it is read.

    ``force`` applies a full package that is not newer than the recorded
    version (a deliberate rollback); it never lets a delta skip a version.
    """
    m = package.manifest
    # Checked before the write transaction (import_rows takes no precondition):
    # two applies racing on one source could both pass it.
    recorded = (await registry.list_versions()).get(m.source)
    previous = int(recorded["version"]) if recorded is not None else None
    _check_version(m, previous, force)
    rows = _Body(package.path, m, package.head).rows()
    # A full list replaces its source's entries; a delta touches only the
    # entries it names. Neither writes or removes another source's entry.
    full = m.kind == "full"
    try:
        result = await registry.import_rows(
            rows, kind=f"package-{m.kind}", actor=actor,
            replace_source=m.source if full else None, scope_source=None if full else m.source,
            summary={"package_sha256": package.sha256, "publisher": m.publisher,
                     "key_id": m.key_id},
            list_version=_list_version(package))
    except RowError as exc:  # found by the database: a duplicate, the exception-pair cap
        raise PackageError(f"{_at_line(exc.line)}{exc.message}; nothing was applied") from exc
    return Applied(package, result, previous, result.skipped)


def _list_version(package: Package) -> ListVersion:
    m = package.manifest
    return ListVersion(m.source, m.version, m.kind, package.sha256, m.publisher)


def _check_version(m: Manifest, previous: int | None, force: bool) -> None:
    if m.kind == "full":
        if previous is None or m.version > previous or force:
            return
        if m.version == previous:
            raise PackageError(f"{m.source} version {previous} is already applied")
        raise PackageError(f"{m.describe()} is older than the applied version {previous} "
                           "(a replay?); --force applies it anyway")
    if previous != m.base_version:
        at = f"registry is at {previous}" if previous is not None else "registry has none"
        raise PackageError(f"delta {m.base_version}->{m.version} needs version "
                           f"{m.base_version} applied, {at}")
