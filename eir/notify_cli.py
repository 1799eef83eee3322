"""``eir notify list | ack | retry``: the notification outbox as a person or a sender sees it.

Owns the command line of the outbox (POLICY.md "a notification outbox:
warnings to grey owners ... each sent once"): listing warnings (all, only
those still to send, or only those given up on, optionally of one IMEI;
text or JSON) with their delivery state (attempts, last error, failed),
marking them sent, and sending failed ones again. The running server
produces the warnings (`eir.policy.notify.produce_due`) and, with a
``[webhook]`` URL, delivers them itself (`eir.webhook`); without one a
sender script delivers them and acks them here. Errors are one line
``eir: ...`` on stderr with exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from eir.policy import notify
from eir.policy.model import normalize_imei
from eir.policy.sqlite import SqliteRegistry

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    """Add ``notify`` with its subcommands to an argparse subparsers object."""
    p = sub.add_parser(
        "notify", help="list and acknowledge warnings to owners of grey devices",
        description="The outbox of warnings to owners of grey devices (POLICY.md: days 0, 20, "
                    "27 and at expiry),\nfor an SMS gateway: list what is pending, then "
                    "acknowledge what was sent.",
        epilog="examples:\n  eir notify list --db eir.db --pending --json\n"
               "  eir notify ack --db eir.db 17 18 19")
    nsub = p.add_subparsers(dest="notify_command", required=True, metavar="COMMAND")
    ls = nsub.add_parser("list", help="list outbox warnings (oldest first)")
    ls.add_argument("--db", default=None, help="registry SQLite file (default ./eir.db)")
    which = ls.add_mutually_exclusive_group()
    which.add_argument("--pending", action="store_true",
                       help="only warnings still to send (not sent, not failed)")
    which.add_argument("--failed", action="store_true",
                       help="only warnings given up on (eir notify retry sends them again)")
    ls.add_argument("--imei", help="only warnings about this IMEI (14 or 15 digits)")
    ls.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
    ls.add_argument("--json", action="store_true", help="JSON, with the full messages")
    ack = nsub.add_parser("ack", help="mark warnings sent")
    ack.add_argument("--db", required=True, help="registry SQLite file")
    ack.add_argument("ids", metavar="ID", type=int, nargs="+", help="outbox row id")
    retry = nsub.add_parser("retry", help="send failed warnings again (the webhook's next "
                            "round takes them, as new)")
    retry.add_argument("--db", required=True, help="registry SQLite file")
    what = retry.add_mutually_exclusive_group(required=True)
    what.add_argument("--all-failed", action="store_true", help="every failed warning")
    what.add_argument("ids", metavar="ID", type=int, nargs="*", default=[],
                      help="outbox row id")


def _fail(message: str) -> int:
    print(f"eir: {message}", file=sys.stderr)
    return 1


def _default_db() -> str:
    from eir.config import Config

    return Config().registry.db


def run(args: argparse.Namespace) -> int:
    """Run ``eir notify ...``; returns the exit status."""
    db = args.db or _default_db()
    if not Path(db).is_file():
        return _fail(f"{db}: no such registry")
    if args.notify_command == "list":
        if args.imei is not None and normalize_imei(args.imei) is None:
            return _fail(f"{args.imei!r} is not an IMEI (14 or 15 decimal digits)")
        if args.limit < 1:
            return _fail("--limit must be at least 1")
        return asyncio.run(_list(db, args.pending, args.failed, args.imei, args.limit,
                                 args.json))
    if args.notify_command == "retry":
        return asyncio.run(_retry(db, None if args.all_failed else list(args.ids)))
    return asyncio.run(_ack(db, list(args.ids)))


def _state(row: dict[str, Any]) -> str:
    """sent_at, ``failed <when>``, ``retrying`` (tried, not delivered yet) or ``pending``."""
    if row["sent_at"]:
        return str(row["sent_at"])
    if row["failed_at"]:
        return f"failed {row['failed_at']}"
    return "retrying" if row["attempts"] else "pending"


async def _list(db: str, pending: bool, failed: bool, imei: str | None, limit: int,
                as_json: bool) -> int:
    async with SqliteRegistry(db) as registry:
        rows = await notify.list_outbox(registry, pending_only=pending, failed_only=failed,
                                        imei=imei, limit=limit)
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    print("\t".join(("id", "imei", "imsi", "kind", "due_at", "deadline", "sent_at",
                     "attempts", "last_error", "message")))
    for r in rows:
        error = " ".join((r["last_error"] or "-").split())  # one line, no tabs
        print("\t".join((str(r["id"]), r["imei"], r["imsi"] or "-", r["kind"], r["due_at"],
                         r["deadline"], _state(r), str(r["attempts"]), error, r["message"])))
    return 0


async def _retry(db: str, ids: list[int] | None) -> int:
    async with SqliteRegistry(db) as registry:
        if ids is not None:
            if not ids:
                return _fail("name the warnings to send again (ID ...) or --all-failed")
            missing = sorted(set(ids) - await notify.outbox_ids(registry, ids))
            if missing:
                return _fail("no outbox warning with id " + ", ".join(map(str, missing)) +
                             "; nothing was changed")
        n = await notify.requeue_failed(registry, ids)
    print(f"eir: {n} failed warning(s) queued to send again", file=sys.stderr)
    return 0


async def _ack(db: str, ids: list[int]) -> int:
    async with SqliteRegistry(db) as registry:
        missing = sorted(set(ids) - await notify.outbox_ids(registry, ids))
        if missing:
            return _fail("no outbox warning with id " + ", ".join(map(str, missing)) +
                         "; nothing was marked")
        n = await notify.mark_sent(registry, ids)
    already = len(set(ids)) - n
    note = f" ({already} already marked)" if already else ""
    print(f"eir: marked {n} warning(s) sent{note}", file=sys.stderr)
    return 0
