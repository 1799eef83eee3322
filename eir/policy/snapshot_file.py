"""The snapshot as a file beside the registry, so a start does not re-read ten million rows.

Owns the sidecar file ``<registry>.snapshot``: a `Snapshot` written as its
raw arrays, and read back with ``array.frombytes`` (a second for what the
SQLite scan takes 15-25 s to rebuild). It is a cache, never a source: it
is used only when its key equals the registry's at the moment of the load,
and any doubt (another key, a bad checksum, a truncated file, another
format or byte order) means a full load from the registry, which then
writes a fresh file.

The key is the registry's last change: its change-log sequence number and
that row's hash in the audit chain (every write to the lists, pairs,
ranges, TACs and list versions is one sealed change-log row, and the hash
covers every earlier row), so a registry rebuilt from scratch to the same
sequence number does not match either; plus the schema version and
`BUILDER`, the version of the code that builds a snapshot from the rows,
so an upgrade that reads the rows differently does not take an old file.
An edit made outside the EIR (an SQL shell) changes no key: delete the
file then, or run ``eir registry snapshot``, which always rebuilds it.

Layout: ``MAGIC``, an 8-byte little-endian header length, the header as
JSON (key, byte order, the small tables, the length and type code of each
array, the SHA-256 of the body), the header's own SHA-256, then the
arrays' bytes in header order.
Written to a temporary name and renamed, so readers (other workers) see
the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
from array import array
from pathlib import Path
from typing import BinaryIO, Final

from eir.policy.model import ListEntry, ListName
from eir.policy.ranges import RangeEntry, RangeTable
from eir.policy.registry import Snapshot
from eir.policy.tac import TacTable

__all__ = ["BUILDER", "FORMAT", "load", "path_for", "save"]

log = logging.getLogger("eir.policy")

MAGIC: Final = b"EIR-SNAPSHOT\n"
FORMAT: Final = 1
BUILDER: Final = 1  # bump when SqliteRegistry._read_snapshot builds snapshots differently
_ARRAYS: Final = ("imeis", "kinds", "since", "grace_keys", "grace_values", "tacs", "tac_kinds")


def path_for(db: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(db)}.snapshot")


def _arrays(snap: Snapshot) -> dict[str, array[int]]:
    p = snap.parts()
    tacs, tac_kinds, _ = snap.tac.parts()
    grace = sorted(p.grace_until.items())
    return {"imeis": p.imeis, "kinds": p.kinds, "since": p.since,
            "grace_keys": array("q", (k for k, _ in grace)),
            "grace_values": array("q", (v for _, v in grace)),
            "tacs": tacs, "tac_kinds": tac_kinds}


def save(snap: Snapshot, path: str | os.PathLike[str], key: str) -> None:
    """Write ``snap`` under ``key`` (atomically: a temporary file renamed over ``path``).

    The file gets the registry file's permissions (whoever may read the
    registry may read its snapshot), and temporary files left by a killed
    writer are removed first.
    """
    p = snap.parts()
    arrays = _arrays(snap)
    body = hashlib.sha256()
    for a in arrays.values():
        body.update(memoryview(a).cast("B"))
    header = {
        "format": FORMAT, "key": key, "byteorder": sys.byteorder, "version": snap.version,
        "kind_table": [[k.list.value, k.reason] for k in p.kind_table],
        "exceptions": sorted(p.exceptions),
        "ranges": [[r.lo, r.hi, r.sv, r.entry.list.value, r.entry.reason, r.since,
                    r.grace_until] for r in (snap.ranges.entries if snap.ranges else ())],
        "tac_classes": list(snap.tac.parts()[2]),
        "list_versions": snap.list_versions,
        "arrays": [[name, a.typecode, len(a)] for name, a in arrays.items()],
        "sha256": body.hexdigest(),
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    target = Path(path)
    _remove_orphans(target)
    fd, tmp = tempfile.mkstemp(prefix=f"{target.name}.{os.getpid()}.", suffix=".tmp",
                               dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            db = Path(str(target)[: -len(".snapshot")])
            with contextlib.suppress(OSError):
                os.fchmod(f.fileno(), db.stat().st_mode & 0o777)
            f.write(MAGIC)
            f.write(len(head).to_bytes(8, "little"))
            f.write(head)
            f.write(hashlib.sha256(head).digest())
            for a in arrays.values():
                f.write(memoryview(a).cast("B"))
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _remove_orphans(target: Path) -> None:
    """Temporary files of writers that are gone (killed mid-write): 157 MB each."""
    for leftover in target.parent.glob(f"{target.name}.*.tmp"):
        pid = leftover.name[len(target.name) + 1:].split(".", 1)[0]
        if pid.isdigit() and _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            leftover.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def load(path: str | os.PathLike[str], key: str) -> Snapshot | None:
    """The snapshot in ``path`` if it was saved under ``key`` and is whole; else None.

    The header is read and its key compared first, so a stale file costs a
    few bytes of reading; the arrays are read straight into place.
    """
    try:
        with open(path, "rb") as f:
            return _read(f, key)
    except FileNotFoundError:
        return None
    except Exception as exc:  # anything wrong with the file means a full read, never a crash
        log.warning("snapshot file %s not used: %s", path, exc)
        return None


def _read(f: BinaryIO, key: str) -> Snapshot | None:
    if f.read(len(MAGIC)) != MAGIC:
        raise ValueError("not a snapshot file")
    n = int.from_bytes(f.read(8), "little")
    if not 0 < n < 1 << 30:
        raise ValueError("bad header length")
    head = f.read(n)
    if f.read(32) != hashlib.sha256(head).digest():
        raise ValueError("header checksum mismatch")
    header = json.loads(head)
    if not isinstance(header, dict):
        raise ValueError("header is not an object")
    if header.get("format") != FORMAT or header.get("byteorder") != sys.byteorder:
        raise ValueError(f"format {header.get('format')}/{header.get('byteorder')}")
    if header.get("key") != key:
        return None  # the registry changed since: the usual case after an import
    body = hashlib.sha256()
    arrays: dict[str, array[int]] = {}
    for name, typecode, count in header["arrays"]:
        a = array(typecode)
        try:
            a.fromfile(f, count)
        except EOFError:
            raise ValueError("truncated") from None
        body.update(memoryview(a).cast("B"))
        arrays[name] = a
    if f.read(1) or set(arrays) != set(_ARRAYS):
        raise ValueError("unexpected arrays")
    if body.hexdigest() != header["sha256"]:
        raise ValueError("checksum mismatch")
    kind_table = tuple(ListEntry(ListName(lst), reason) for lst, reason in header["kind_table"])
    ranges = RangeTable(
        RangeEntry(lo, hi, sv, ListEntry(ListName(lst), reason), since, grace)
        for lo, hi, sv, lst, reason, since, grace in header["ranges"])
    return Snapshot.from_arrays(
        arrays["imeis"], arrays["kinds"], kind_table, frozenset(header["exceptions"]),
        int(header["version"]), since=arrays["since"],
        grace_until=dict(zip(arrays["grace_keys"], arrays["grace_values"], strict=True)),
        ranges=ranges,
        tac=TacTable(arrays["tacs"], arrays["tac_kinds"], tuple(header["tac_classes"])),
        list_versions={str(k): int(v) for k, v in header["list_versions"].items()})
