"""``eir admin token``: make a bearer token for the admin API.

Owns what a person runs to let a caller in: a random token is printed once
on standard output (nothing keeps it), and its SHA-256 with the caller's
name, role and networks is appended to the token file
(`eir.admin.auth.add_token`), which a running node reads again within a
second. Errors are one line naming the problem; the file is unchanged then.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from eir.admin.auth import Role, TokenError, add_token
from eir.config import load


def add_parser(sub: Any) -> None:
    ad = sub.add_parser("admin", help="the admin HTTP API")
    asub = ad.add_subparsers(dest="admin_command", required=True)
    t = asub.add_parser("token", help="make a bearer token (printed once) and add its hash "
                                      "to the token file")
    t.add_argument("--name", required=True,
                   help="who uses it: the identity in the audit trail (api:NAME)")
    t.add_argument("--role", required=True, choices=[r.value for r in Role],
                   help="what the token may do: ministry (everything), operator (its own "
                        "networks), police (stolen/recovered), auditor (read only)")
    t.add_argument("--networks", default="", metavar="MCCMNC,...",
                   help="operator only: its MCC+MNC codes, e.g. 40101,40102")
    t.add_argument("--tokens-file", metavar="FILE",
                   help="the token file (.toml or .json; default: --config's "
                        "admin.tokens_file)")
    t.add_argument("--config", help="TOML config file of the EIR")


def run(args: argparse.Namespace) -> int:
    path = args.tokens_file or load(args.config).admin.tokens_file
    if not path:
        print("eir: admin token: no token file: give --tokens-file, or --config with "
              "admin.tokens_file", file=sys.stderr)
        return 1
    try:
        token = add_token(path, args.name, args.role, args.networks.split(","))
    except (TokenError, OSError, ValueError) as exc:
        print(f"eir: admin token: {exc}; nothing was added", file=sys.stderr)
        return 1
    print(token)
    print(f"eir: token for {args.name} ({args.role}) added to {path}; it is shown only once",
          file=sys.stderr)
    return 0
