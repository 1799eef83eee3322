"""``eir package keygen | build | verify | apply | status``: signed list packages by hand.

Owns what a person sees of list packages: the ministry makes a key pair and
builds full and delta packages from its registry; an operator verifies and
applies them to its own and checks which version of each list it is at.
Results are one line on stderr (``eir: ...``); a failure is one line
``eir: package FILE: problem`` with exit status 1, and has changed nothing.
The work is `eir.policy.packages`; `add_parser` and `run` are wired into
`eir.cli`.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from eir.policy import packages as pk
from eir.policy.sqlite import SqliteRegistry

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``package`` with its subcommands to an argparse subparsers object."""
    p = sub.add_parser(
        "package", help="signed list packages: build, verify, apply",
        description="Signed list packages: a publisher (the ministry) builds and signs full "
                    "or delta lists;\nan operator verifies one against the publisher's key "
                    "and applies it in one audited\ntransaction, in version order.",
        epilog="examples:\n  eir package keygen --out ministry\n"
               "  eir package build --db ministry.db --source ministry --version 8 "
               "--key ministry.private.pem --out v8.pkg\n"
               "  eir package apply v8.pkg --db eir.db --trust ministry.public.pem")
    psub = p.add_subparsers(dest="package_command", required=True, metavar="COMMAND")

    kg = psub.add_parser("keygen", help="make a publisher's Ed25519 key pair")
    kg.add_argument("--out", required=True, metavar="PREFIX",
                    help="writes PREFIX.private.pem (mode 0600) and PREFIX.public.pem")

    b = psub.add_parser("build", help="build a full package, or a delta with --base")
    b.add_argument("--db", required=True, help="the publisher's registry")
    b.add_argument("--source", required=True, help="whose list: the rows of this source")
    b.add_argument("--version", required=True, type=int, help="the package's version (>= 1)")
    b.add_argument("--key", required=True, metavar="PRIVATE.pem", help="the signing key")
    b.add_argument("--base", metavar="PREVIOUS.pkg",
                   help="the full package of the previous version: build a delta from it")
    b.add_argument("--publisher", help="publisher named in the manifest (default: the source)")
    b.add_argument("--trust", action="append", default=[], metavar="PUBLIC",
                   help="another key the base may be signed with (after a key rotation)")
    b.add_argument("--out", required=True, metavar="FILE", help="the package to write")

    v = psub.add_parser("verify", help="check a package's signature, hash and rows")
    v.add_argument("file", help="the package file")
    v.add_argument("--trust", action="append", required=True, metavar="PUBLIC",
                   help="the publisher's public key (PEM or hex); may be repeated")

    a = psub.add_parser("apply", help="verify a package and apply it (one transaction)")
    a.add_argument("file", help="the package file")
    a.add_argument("--db", required=True, help="the operator's registry")
    a.add_argument("--trust", action="append", required=True, metavar="PUBLIC",
                   help="the publisher's public key (PEM or hex); may be repeated")
    a.add_argument("--actor", help="who applies it, for the audit trail (default: login name)")
    a.add_argument("--force", action="store_true",
                   help="apply a full package that is not newer than the applied version")

    s = psub.add_parser("status", help="the list version applied per source, and when")
    s.add_argument("--db", required=True, help="the operator's registry")


def run(args: argparse.Namespace) -> int:
    """Run ``eir package ...``; returns the exit status."""
    commands: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
        "keygen": (_keygen, "out"),
        "build": (_build, "out"),
        "verify": (_verify, "file"),
        "apply": (_apply, "file"),
        "status": (_status, "db"),
    }
    command, subject_arg = commands[args.package_command]
    subject = getattr(args, subject_arg)
    try:
        return command(args)
    except pk.PackageError as exc:
        return _fail(subject, str(exc))
    except sqlite3.Error as exc:
        return _fail(subject, f"registry database: {exc}")
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(subject, f"{where}{exc.strerror or exc}")


def _fail(subject: str, problem: str) -> int:
    print(f"eir: package {subject}: {problem}", file=sys.stderr)
    return 1


def _say(message: str) -> None:
    print(f"eir: {message}", file=sys.stderr)


def _keygen(args: argparse.Namespace) -> int:
    private, public, kid = pk.generate_keys(args.out)
    _say(f"wrote {private} (keep it secret) and {public} (give it to operators); key id {kid}")
    return 0


def _build(args: argparse.Namespace) -> int:
    if not Path(args.db).is_file():
        # Opening would create an empty registry, and a full package of it
        # would erase the list on every operator that applies it.
        raise pk.PackageError(f"{args.db}: no such registry")
    key = pk.load_private_key(args.key)
    trusted = [pk.load_public_key(t) for t in args.trust]
    manifest = asyncio.run(_build_async(args, key, trusted))
    _say(f"built {args.out}: {manifest.describe()}, {manifest.rows:,} rows, "
         f"signed with key {manifest.key_id}")
    return 0


async def _build_async(
    args: argparse.Namespace, key: Ed25519PrivateKey, trusted: list[Ed25519PublicKey]
) -> pk.Manifest:
    async with SqliteRegistry(args.db) as registry:
        if args.base is None:
            return await pk.build_full(registry, source=args.source, version=args.version,
                                       key=key, out=args.out, publisher=args.publisher)
        return await pk.build_delta(registry, source=args.source, version=args.version, key=key,
                                    base=args.base, out=args.out, publisher=args.publisher,
                                    trusted=trusted)


def _verify(args: argparse.Namespace) -> int:
    package = pk.verify_package(args.file, [pk.load_public_key(t) for t in args.trust])
    m = package.manifest
    _say(f"{args.file}: good package: {m.describe()} by {m.publisher}, {m.rows:,} rows, "
         f"created {m.created}, key {m.key_id}")
    return 0


def _apply(args: argparse.Namespace) -> int:
    trusted = [pk.load_public_key(t) for t in args.trust]
    applied = asyncio.run(_apply_async(args, trusted))
    m, r = applied.package.manifest, applied.result
    was = f"was {applied.previous}" if applied.previous is not None else "none before"
    skipped = (f", {applied.skipped:,} skipped (entries of another source)"
               if applied.skipped else "")
    _say(f"applied {args.file} to {args.db}: {m.describe()} ({was}): {r.rows:,} rows written, "
         f"{r.removed:,} removed{skipped}; registry version {r.version}")
    return 0


async def _apply_async(
    args: argparse.Namespace, trusted: list[Ed25519PublicKey]
) -> pk.Applied:
    async with SqliteRegistry(args.db) as registry:
        return await pk.apply_package(registry, args.file, trusted,
                                      actor=args.actor or _login(), force=args.force)


def _login() -> str | None:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no USER variable and no passwd entry (some containers)
        return None


def _status(args: argparse.Namespace) -> int:
    if not Path(args.db).is_file():
        raise pk.PackageError(f"{args.db}: no such registry")
    versions = asyncio.run(_versions(args.db))
    if not versions:
        _say(f"{args.db}: no list package applied")
        return 0
    for source, v in versions.items():
        print(f"{source}\tversion {v['version']}\t{v['kind']}\tapplied {v['applied_at']}"
              f"\tpublisher {v['publisher'] or '-'}\tsha256 {v['sha256'] or '-'}")
    return 0


async def _versions(db: str) -> dict[str, dict[str, object]]:
    async with SqliteRegistry(db) as registry:
        return await registry.list_versions()
