"""The ``eir`` command: serve S13, and import, export and inspect the registry.

Owns argument parsing, logging set-up and the one-line errors a person
sees. Flags override the TOML config file field by field (``eir.config``
is the one schema). Exit codes: 0 success, 1 a failed operation (bad file,
bad config), 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sqlite3
import sys
import time
from collections.abc import Callable
from importlib.resources import as_file
from pathlib import Path
from typing import Any

from eir import __version__
from eir.config import Config, ConfigError, load


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) +
               f".{int(record.msecs):03d}Z", "level": record.levelname.lower(),
               "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eir", description="Equipment Identity Register (S13).")
    p.add_argument("--version", action="version", version=f"eir {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="answer S13 ME-Identity-Check requests")
    s.add_argument("--config", help="TOML config file")
    s.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:3868)")
    s.add_argument("--db", help="registry SQLite file (default ./eir.db)")
    s.add_argument("--origin-host", help="our Origin-Host (default eir.localdomain)")
    s.add_argument("--origin-realm", help="our Origin-Realm (default localdomain)")
    s.add_argument("--log-level", help="debug, info, warning, error")

    d = sub.add_parser("demo", help="import the demo registry into --db and serve it")
    d.add_argument("--db", default="./eir-demo.db", help="registry file (default ./eir-demo.db)")
    d.add_argument("--config", help="TOML config file")
    d.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:3868)")
    d.add_argument("--origin-host")
    d.add_argument("--origin-realm")
    d.add_argument("--log-level")

    c = sub.add_parser("check", help="send one ME-Identity-Check to an EIR and print the answer")
    c.add_argument("imei")
    c.add_argument("--target", default="127.0.0.1:3868", help="EIR HOST:PORT")
    c.add_argument("--imsi", help="User-Name (IMSI)")
    c.add_argument("--sv", default="00", help="Software-Version (default 00)")
    c.add_argument("--origin-host", default="mme.localdomain")
    c.add_argument("--origin-realm", default="localdomain")
    c.add_argument("--destination-realm", default="localdomain")

    r = sub.add_parser("registry", help="manage the device registry")
    rsub = r.add_subparsers(dest="registry_command", required=True)
    ri = rsub.add_parser("import", help="import a CSV file (one transaction)")
    ri.add_argument("--db", default=None)
    ri.add_argument("--quiet", action="store_true", help="no progress bar")
    ri.add_argument("file")
    re_ = rsub.add_parser("export", help="export the registry as CSV")
    re_.add_argument("--db", default=None)
    re_.add_argument("file", nargs="?", help="output file (default: standard output)")
    rs = rsub.add_parser("show", help="show one IMEI as JSON")
    rs.add_argument("--db", default=None)
    rs.add_argument("imei")
    return p


def _config(args: argparse.Namespace) -> Config:
    overrides: dict[str, dict[str, Any]] = {
        "server": {k: v for k, v in {
            "listen": getattr(args, "listen", None),
            "origin_host": getattr(args, "origin_host", None),
            "origin_realm": getattr(args, "origin_realm", None)}.items() if v},
        "registry": {"db": args.db} if getattr(args, "db", None) else {},
        "log": {"level": args.log_level} if getattr(args, "log_level", None) else {},
    }
    return load(getattr(args, "config", None), overrides)


def _serve(args: argparse.Namespace) -> int:
    cfg = _config(args)
    setup_logging(cfg.log.level, cfg.log.format)
    from eir.app import serve

    if cfg.server.uvloop:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            logging.getLogger("eir").info("uvloop not installed: using the asyncio event loop")
    asyncio.run(serve(cfg))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from importlib.resources import files

    from eir import registry_cli

    demo = files("eir") / "data" / "demo-registry.csv"
    with as_file(demo) as path:
        asyncio.run(registry_cli.import_file(args.db, path, progress=False))
    print(f"eir: demo registry imported into {args.db}; serving it (Ctrl-C stops)",
          file=sys.stderr)
    return _serve(args)


def _check(args: argparse.Namespace) -> int:
    from eir.config import parse_listen
    from eir.probe import check

    host, port = parse_listen(args.target)
    result = asyncio.run(check(host, port, args.imei, sv=args.sv or None, imsi=args.imsi,
                               origin_host=args.origin_host, origin_realm=args.origin_realm,
                               dest_realm=args.destination_realm))
    print(json.dumps(result, indent=2))
    return 0


def _registry(args: argparse.Namespace) -> int:
    from eir import registry_cli

    db = args.db or Config().registry.db
    actions: dict[str, Callable[[], Any]] = {
        "import": lambda: registry_cli.import_file(db, Path(args.file), progress=not args.quiet),
        "export": lambda: registry_cli.export_file(db, Path(args.file) if args.file else None),
        "show": lambda: registry_cli.show(db, args.imei),
    }
    return int(asyncio.run(actions[args.registry_command]()) or 0)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "demo":
            return _demo(args)
        if args.command == "check":
            return _check(args)
        return _registry(args)
    except ConfigError as exc:
        print(f"eir: config: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `eir registry export | head`: the reader left, nothing to say
        sys.stderr.close()
        return 0
    except sqlite3.Error as exc:
        print(f"eir: registry database: {exc}", file=sys.stderr)
        return 1
    except (OSError, TimeoutError) as exc:
        print(f"eir: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
