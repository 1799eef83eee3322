"""The ``eir`` command: serve S13, and import, export and inspect the registry.

Owns argument parsing, logging set-up and the one-line errors a person
sees. Flags override the TOML config file field by field (``eir.config``
is the one schema). Exit codes: 0 success, 1 a failed operation (bad file,
bad config), 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import signal
import sqlite3
import ssl
import sys
import time
from collections.abc import Callable
from importlib.resources import as_file
from pathlib import Path
from typing import Any, NoReturn

from eir import __version__, notify_cli, package_cli
from eir import regime_cli as rc
from eir.admin import cli as admin_cli
from eir.config import Config, ConfigError, load
from eir.logkey import LogKeyError
from eir.policy.sqlite_backup import StoreError

# what every LogRecord has; anything else on a record came from ``extra=``
_RECORD_KEYS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, pid (and worker), msg, then the fields
    the call passed with ``extra=`` (a decision's imei, status and reason; a peer's name
    and address; ...), then exc with the traceback."""

    def __init__(self, extra: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.extra = {"pid": os.getpid(), **(extra or {})}

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) +
               f".{int(record.msecs):03d}Z", "level": record.levelname.lower(),
               "logger": record.name, **self.extra, "msg": record.getMessage()}
        for key, value in record.__dict__.items():
            if key not in _RECORD_KEYS and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str, fmt: str, worker: int | None = None,
                  loggers: dict[str, str] | None = None) -> None:
    """Log lines to stderr; a worker's lines carry its index and pid (``eir serve --workers``);
    ``loggers``: levels of single loggers (``log.loggers``)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter(None if worker is None else {"worker": worker}))
    else:
        tag = "" if worker is None else f" [worker {worker} pid {os.getpid()}]"
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)s %(name)s{tag}: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiosqlite's debug lines carry every statement's parameters: IMEIs and IMSIs in
    # clear, past the pseudonyms of log.imei / log.imsi (and a line per query)
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
    for name, lvl in (loggers or {}).items():
        logging.getLogger(name).setLevel(lvl)


class _SubParsers(argparse._SubParsersAction):  # type: ignore[type-arg]
    """Subcommands described by their help line (as a sentence) unless they say more."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        text = kwargs.get("help")
        if text and not kwargs.get("description"):
            kwargs["description"] = text[0].upper() + text[1:] + "."
        parser: argparse.ArgumentParser = super().add_parser(name, **kwargs)
        return parser


class _Parser(argparse.ArgumentParser):
    """argparse with a bad argument reported in one line (exit 2, no usage block), help
    laid out as written (descriptions and examples), and described subcommands."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _SubParsers)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


_DB = "registry SQLite file (default ./eir.db)"
_CONFIG = "the EIR's TOML config file: its registry.db and [policy] apply (default: built-in)"
_ACTOR = "who does it, for the audit trail (default $EIR_ACTOR or the login name)"
_IMEI = "14 or 15 digits (the first 14 are matched)"


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _parser() -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = _Parser(
        prog="eir", description="Equipment Identity Register: a Diameter S13 server answering "
        "ME-Identity-Check\nfrom a national device registry, and the tools that manage the "
        "registry.\n`eir COMMAND --help` explains each command.",
        epilog=_examples("eir demo", "eir serve --config /etc/eir/eir.toml",
                                 "eir check 35332510123456 --imsi 401011234567890",
                                 "eir registry import --db /var/lib/eir/eir.db lists.csv",
                                 "eir status"))
    p.add_argument("--version", action="version", version=f"eir {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser(
        "serve", help="answer S13 ME-Identity-Check requests",
        description="Serve S13 (TS 29.272) on --listen until SIGTERM or Ctrl-C; logs one "
                    "line \"EIR ready: ...\" when\nit answers. SIGHUP reads the config file "
                    "again and applies the live settings (docs/config.md);\nSIGUSR2 with "
                    "--workers N (N >= 2) replaces the workers one at a time. Flags override "
                    "the\nconfig file's keys.",
        epilog=_examples("eir serve --db ./eir.db",
                         "eir serve --config /etc/eir/eir.toml --workers 2",
                         "kill -HUP $(pidof -s eir)      # apply new live settings"))
    s.add_argument("--config", metavar="FILE", help="TOML config file (docs/config.md)")
    s.add_argument("--listen", metavar="HOST:PORT", help="server.listen (default 127.0.0.1:3868)")
    s.add_argument("--db", help="registry.db: the registry SQLite file (default ./eir.db)")
    s.add_argument("--origin-host", help="server.origin_host (default eir.localdomain)")
    s.add_argument("--origin-realm", help="server.origin_realm (default localdomain)")
    s.add_argument("--log-level", help="log.level: debug, info, warning, error")
    s.add_argument("--workers", type=int, metavar="N",
                   help="server.workers: N processes sharing the listen address (default 1)")
    s.add_argument("--metrics-listen", metavar="HOST:PORT",
                   help="metrics.listen: where GET /metrics answers (default 127.0.0.1:9464; "
                        "port 0: any free port, logged)")
    # internal: one worker of `eir serve --workers N`; its settings arrive on stdin
    s.add_argument("--worker", type=int, metavar="INDEX", help=argparse.SUPPRESS)

    d = sub.add_parser("demo", help="import the demo registry into --db and serve it",
                       description="Import a small demo registry (a stolen phone, its owner's "
                                   "exception pair, a grey import, ...)\ninto --db, then serve "
                                   "it as `eir serve` would.",
                       epilog=_examples("eir demo", "eir check 35332510123456   "
                                        "# in another terminal: BLACKLISTED"))
    d.add_argument("--db", default="./eir-demo.db", help="registry file (default ./eir-demo.db)")
    d.add_argument("--config", metavar="FILE", help="TOML config file (docs/config.md)")
    d.add_argument("--listen", metavar="HOST:PORT", help="HOST:PORT (default 127.0.0.1:3868)")
    d.add_argument("--origin-host", help="our Origin-Host (default eir.localdomain)")
    d.add_argument("--origin-realm", help="our Origin-Realm (default localdomain)")
    d.add_argument("--log-level", help="debug, info, warning, error")
    d.add_argument("--workers", type=int, metavar="N",
                   help="N processes sharing the listen address (default 1)")

    c = sub.add_parser(
        "check", help="send one ME-Identity-Check to an EIR and print the answer",
        description="Connect to an EIR as an MME (CER/CEA), send one ECR, print the answer "
                    "as JSON (Result-Code,\nEquipment-Status, ...), then DPR. Works against "
                    "any S13 EIR.",
        epilog=_examples("eir check 35332510123456",
                         "eir check 35332510123456 --imsi 401011234567890 --target "
                         "10.0.0.5:3868",
                         "eir check 35332510123456 --target 127.0.0.1:5658 --tls --tls-ca "
                         "ca.crt --tls-cert mme.crt --tls-key mme.key"))
    c.add_argument("imei", help=f"the IMEI to check: {_IMEI}")
    c.add_argument("--target", default="127.0.0.1:3868", metavar="HOST:PORT",
                   help="the EIR (default 127.0.0.1:3868)")
    c.add_argument("--imsi", help="User-Name (IMSI)")
    c.add_argument("--sv", default="00", help="Software-Version (default 00)")
    c.add_argument("--origin-host", default="mme.localdomain",
                   help="our Origin-Host as the MME (default mme.localdomain)")
    c.add_argument("--origin-realm", default="localdomain",
                   help="our Origin-Realm; the EIR takes it as the operator (default "
                        "localdomain)")
    c.add_argument("--destination-realm", default="localdomain",
                   help="Destination-Realm of the ECR (default localdomain)")
    ct = c.add_argument_group("TLS (RFC 6733 2.1: the EIR's TLS port, 5658 by default)")
    ct.add_argument("--tls", action="store_true", help="TLS from the start, then the CER")
    ct.add_argument("--tls-ca", metavar="FILE",
                    help="CAs to verify the EIR's certificate (default: the system's)")
    ct.add_argument("--tls-cert", metavar="FILE", help="our client certificate (PEM)")
    ct.add_argument("--tls-key", metavar="FILE", help="its private key (PEM)")
    ct.add_argument("--tls-server-name", metavar="NAME",
                    help="the name the EIR's certificate must carry (default: the target host)")
    ct.add_argument("--tls-no-verify", action="store_true",
                    help="do not verify the EIR's certificate (labs only)")

    r = sub.add_parser(
        "registry", help="manage the device registry",
        description="Import, export and change the device registry (an SQLite file). Every "
                    "change is one audited\ntransaction; a running server picks it up within "
                    "registry.reload_seconds (1 s).",
        epilog=_examples("eir registry import --db eir.db lists.csv",
                         "eir registry import --db eir.db --full ministry --list-version 7 "
                         "ministry.csv",
                         "eir registry report-stolen --db eir.db 35332510123456 --evidence "
                         "case-2291", "eir registry backup --db eir.db /backup/eir-today.db"))
    rsub = r.add_subparsers(dest="registry_command", required=True, metavar="COMMAND")
    ri = rsub.add_parser(
        "import", help="import a list CSV (one audited transaction)",
        description="Import a list CSV (README \"Registry CSV format\": imei,list,reason,...) "
                    "in one audited\ntransaction: the first bad row rejects the whole file "
                    "with its line number and nothing\nchanges. A row for a stored IMEI "
                    "replaces it; nothing is deleted but by --full or `remove` rows.",
        epilog=_examples("eir registry import --db eir.db lists.csv",
                         "eir registry import --db eir.db --full ministry --list-version 7 "
                         "ministry.csv",
                         "eir registry import --db eir.db --delta ministry --list-version 8 "
                         "delta.csv"))
    ri.add_argument("--db", default=None, help=_DB)
    ri.add_argument("--quiet", action="store_true", help="no progress bar")
    ri.add_argument("--full", metavar="SOURCE",
                    help="a full list of SOURCE: replaces that source's entries only")
    ri.add_argument("--delta", metavar="SOURCE",
                    help="a delta of SOURCE's list (add / remove / update rows); with "
                         "--list-version, the version it brings that list to")
    ri.add_argument("--list-version", type=int, help="the publisher's list version")
    ri.add_argument("--actor", default=_user(), help=_ACTOR)
    ri.add_argument("file", help="the list CSV")
    rt = rsub.add_parser("import-tac", help="import the TAC database (tac,brand,model,class)")
    rt.add_argument("--db", default=None, help=_DB)
    rt.add_argument("--actor", default=_user(), help=_ACTOR)
    rt.add_argument("file", help="CSV with the columns tac,brand,model,class")
    ro = rsub.add_parser("import-observations",
                         help="import first/last-seen history (imei,imsi,operator,first_seen,"
                              "last_seen)")
    ro.add_argument("--db", default=None, help=_DB)
    ro.add_argument("--actor", default=_user(), help=_ACTOR)
    ro.add_argument("file", help="CSV with the columns imei,imsi,operator,first_seen,last_seen")
    re_ = rsub.add_parser("export", help="export the registry as CSV",
                          epilog=_examples("eir registry export --db eir.db lists.csv",
                                           "eir registry export --db eir.db | head"))
    re_.add_argument("--db", default=None, help=_DB)
    re_.add_argument("file", nargs="?", help="output file (default: standard output)")
    rs = rsub.add_parser("show", help="one IMEI: entry, decision now, history, deadlines")
    rs.add_argument("--db", default=None, help=_DB)
    rs.add_argument("--config", metavar="FILE", help=_CONFIG)
    rs.add_argument("imei", help=_IMEI)
    for name, help_ in (("legalise", "grey or illegal import -> white, with evidence"),
                        ("report-stolen", "block a stolen device (black, source police)"),
                        ("report-lost", "block a lost device (black, source police)"),
                        ("recovered", "lift a stolen/lost block")):
        la = rsub.add_parser(name, help=help_)
        la.add_argument("--db", default=None, help=_DB)
        la.add_argument("--config", metavar="FILE", help=_CONFIG)
        la.add_argument("--evidence", required=True, help="receipt, case number, ...")
        la.add_argument("--actor", default=_user(), help=_ACTOR)
        if name == "legalise":
            la.add_argument("--imsi", help="also register the owner's (IMEI, IMSI) pair")
        la.add_argument("imei", help=_IMEI)
    for name, help_ in (("exception-add", "allow an (IMEI, IMSI) pair despite a block"),
                        ("exception-remove", "remove an exception pair")):
        le = rsub.add_parser(name, help=help_)
        le.add_argument("--db", default=None, help=_DB)
        le.add_argument("--config", metavar="FILE", help=_CONFIG)
        le.add_argument("--evidence", required=name == "exception-add",
                        help="receipt, case number, ..." + (" (required)"
                                                            if name == "exception-add" else ""))
        le.add_argument("--actor", default=_user(), help=_ACTOR)
        le.add_argument("imei", help=_IMEI)
        le.add_argument("imsi", help="the subscriber's IMSI (5 to 15 digits)")
    rp = rsub.add_parser("prune", help="delete observations older than the retention")
    rp.add_argument("--db", default=None, help=_DB)
    rp.add_argument("--config", metavar="FILE",
                    help=_CONFIG.replace("[policy]", "observations.retention_days"))
    rk = rsub.add_parser("check", help="check the registry file (quick_check; --full: "
                         "integrity_check)")
    rk.add_argument("--db", help=_DB)
    rk.add_argument("--full", action="store_true", help="also check every index (slow)")
    rb = rsub.add_parser("backup", help="copy the live registry to a new file, servers running")
    rb.add_argument("--db", help=_DB)
    rb.add_argument("dest", help="the backup file to create (never overwritten)")
    rr = rsub.add_parser("restore", help="replace the live registry with a backup (audited; "
                         "servers reload it)")
    rr.add_argument("--db", help=_DB)
    rr.add_argument("--actor", default=_user(), help=_ACTOR)
    rr.add_argument("source", help="a file written by eir registry backup")
    rs = rsub.add_parser("snapshot", help="write DB.snapshot now, for a fast next start")
    rs.add_argument("--db", default=None, help=_DB)
    rs.add_argument("--config", metavar="FILE", help=_CONFIG)

    dd = sub.add_parser("decide", help="the decision for one check and the rule behind it "
                                       "(read-only: observes nothing)",
                        epilog=_examples("eir decide 35332510123456 --imsi 401011234567890",
                                         "eir decide 86768803654321 --at "
                                         "2026-12-31T00:00:00+05:00"))
    dd.add_argument("imei", help=_IMEI)
    dd.add_argument("--imsi", help="the subscriber's IMSI (User-Name)")
    dd.add_argument("--sv", help="Software-Version (two digits)")
    dd.add_argument("--at", help="ISO 8601 time (default now)")
    dd.add_argument("--db", default=None, help=_DB)
    dd.add_argument("--config", metavar="FILE", help=_CONFIG)

    pol = sub.add_parser("policy", help="policy tools")
    psub = pol.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")
    pp = psub.add_parser("preview", help="devices per operator whose status would change "
                                         "under a new config (read-only)",
                         epilog=_examples("eir policy preview --config eir.toml --with "
                                          "new.toml"))
    pp.add_argument("--with", dest="new", required=True, metavar="NEW.toml",
                    help="the config file whose [policy] is previewed")
    pp.add_argument("--at", help="ISO 8601 time (default now)")
    pp.add_argument("--db", default=None, help=_DB)
    pp.add_argument("--config", metavar="FILE", help=_CONFIG.replace("apply", "are compared"))

    au = sub.add_parser("audit", help="the hash-chained audit trail")
    asub = au.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    av = asub.add_parser("verify", help="check every link of the chain")
    av.add_argument("--db", default=None, help=_DB)
    av.add_argument("--expect-head", metavar="HASH", help="the head hash recorded earlier")
    al = asub.add_parser("log", help="print the latest audit records as JSON lines")
    al.add_argument("--db", default=None, help=_DB)
    al.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")

    su = sub.add_parser("status", help="peers, rates and list version of a running EIR "
                        "(from its metrics endpoint)",
                        epilog=_examples("eir status", "eir status --config /etc/eir/eir.toml",
                                         "eir status --metrics http://10.0.0.5:9464/metrics"))
    su.add_argument("--metrics", metavar="URL",
                    help="the EIR's metrics URL (default: from --config's metrics.listen, "
                         "else http://127.0.0.1:9464/metrics)")
    su.add_argument("--config", metavar="FILE", help="TOML config file of the EIR")
    su.add_argument("--interval", type=float, default=1.0,
                    help="seconds between the two scrapes the rates come from (default 1)")

    st = sub.add_parser("stats", help="decisions counted per day, operator and reason")
    st.add_argument("--db", default=None, help=_DB)
    st.add_argument("--day", help="YYYY-MM-DD (default: every day)")

    notify_cli.add_parser(sub)
    package_cli.add_parser(sub)
    admin_cli.add_parser(sub)
    return p


def _config(args: argparse.Namespace) -> Config:
    overrides: dict[str, dict[str, Any]] = {
        "server": {k: v for k, v in {
            "listen": getattr(args, "listen", None),
            "origin_host": getattr(args, "origin_host", None),
            "origin_realm": getattr(args, "origin_realm", None)}.items() if v},
        "registry": {"db": args.db} if getattr(args, "db", None) else {},
        "log": {"level": args.log_level} if getattr(args, "log_level", None) else {},
        "metrics": ({"listen": args.metrics_listen}
                    if getattr(args, "metrics_listen", None) else {}),
    }
    if getattr(args, "workers", None) is not None:  # 0 is a value to refuse, not "unset"
        overrides["server"]["workers"] = args.workers
    return load(getattr(args, "config", None), overrides)


def _install_uvloop(cfg: Config) -> None:
    if cfg.server.uvloop:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            logging.getLogger("eir").info("uvloop not installed: using the asyncio event loop")


def _serve(args: argparse.Namespace) -> int:
    if getattr(args, "worker", None) is not None:
        return _worker(args.worker)
    cfg = _config(args)
    setup_logging(cfg.log.level, cfg.log.format, loggers=cfg.log.logger_levels())
    if cfg.server.workers > 1:
        from eir.workers import supervise

        # the supervisor itself needs no uvloop
        return supervise(cfg, reload=lambda: _config(args))
    from eir.app import serve

    _install_uvloop(cfg)
    asyncio.run(serve(cfg, reload=lambda: _config(args)))
    return 0


def _worker(index: int) -> int:
    """One worker of ``eir serve --workers N`` (started by the supervisor, eir.workers)."""
    # A SIGHUP or SIGUSR2 meant for the supervisor may reach the whole process group (a
    # closed terminal, `systemctl kill`): their default action would end this worker
    # before its event loop handles them
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    os.environ.pop("NOTIFY_SOCKET", None)  # the supervisor speaks to systemd for the node
    from eir.app import Role
    from eir.workers import read_handshake, run_worker

    hello = read_handshake()
    if not 0 <= index < hello.count:
        raise ConfigError(f"worker: index {index} is not below the worker count {hello.count}")
    # stdout is the supervisor's channel ("ready PORT"); a stray print goes to the log
    control = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    cfg = hello.config
    setup_logging(cfg.log.level, cfg.log.format, worker=index, loggers=cfg.log.logger_levels())
    _install_uvloop(cfg)
    asyncio.run(run_worker(cfg, Role(index, hello.count, hello.origin_state_id,
                                     hello.listen_fds), control, hello.rest))
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
    context = None
    if args.tls or args.tls_ca or args.tls_cert or args.tls_no_verify:
        from eir.diameter.tls import client_context

        try:
            context = client_context(ca_file=args.tls_ca, cert_file=args.tls_cert,
                                     key_file=args.tls_key,
                                     verify_server=not args.tls_no_verify)
        except (ValueError, ssl.SSLError, OSError) as exc:
            raise rc.CliError(f"check: TLS settings: {exc}") from None
    result = asyncio.run(check(host, port, args.imei, sv=args.sv or None, imsi=args.imsi,
                               origin_host=args.origin_host, origin_realm=args.origin_realm,
                               dest_realm=args.destination_realm, tls=context,
                               server_hostname=args.tls_server_name))
    print(json.dumps(result, indent=2))
    return 0


def _user() -> str:
    return os.environ.get("EIR_ACTOR") or getpass.getuser()


def _import_options(args: argparse.Namespace) -> dict[str, Any]:
    from eir.policy.sqlite import import_options

    try:
        return import_options(args.actor, full=args.full, delta=args.delta,
                              list_version=args.list_version)
    except ValueError as exc:
        raise rc.CliError(f"registry import (--full, --delta, --list-version): {exc}") from None


def _registry(args: argparse.Namespace) -> int:
    from eir import registry_cli

    db = args.db or Config().registry.db
    cmd = args.registry_command
    lifecycle = {"legalise": "legalise", "report-stolen": "stolen", "report-lost": "lost",
                 "recovered": "recovered", "exception-add": "exception-add",
                 "exception-remove": "exception-remove"}
    if cmd in lifecycle:
        kw: dict[str, Any] = {"actor": args.actor, "evidence": args.evidence}
        if cmd == "legalise":
            kw["imsi"] = args.imsi
        if cmd.startswith("exception"):
            kw["imsi"] = args.imsi
        return asyncio.run(rc.lifecycle_cmd(args.config, args.db, lifecycle[cmd], args.imei,
                                            command=cmd, **kw))
    actions: dict[str, Callable[[], Any]] = {
        "import": lambda: registry_cli.import_file(db, Path(args.file), progress=not args.quiet,
                                                   **_import_options(args)),
        "import-tac": lambda: rc.import_tac_cmd(args.db, Path(args.file), args.actor),
        "import-observations": lambda: rc.import_observations_cmd(args.db, Path(args.file),
                                                                  args.actor),
        "export": lambda: registry_cli.export_file(db, Path(args.file) if args.file else None),
        "show": lambda: rc.show_cmd(args.config, args.db, args.imei),
        "prune": lambda: rc.prune_cmd(args.config, args.db),
        "snapshot": lambda: rc.snapshot_cmd(args.config, args.db),
        "check": lambda: registry_cli.check_file(db, full=args.full),
        "backup": lambda: registry_cli.backup_file(db, Path(args.dest)),
        "restore": lambda: registry_cli.restore_file(db, Path(args.source), args.actor),
    }
    return int(asyncio.run(actions[cmd]()) or 0)


def _other(args: argparse.Namespace) -> int:
    if args.command == "decide":
        return asyncio.run(rc.decide_cmd(args.config, args.db, args.imei, args.imsi, args.sv,
                                         args.at))
    if args.command == "policy":
        return asyncio.run(rc.preview_cmd(args.config, args.db, args.new, args.at))
    if args.command == "audit":
        if args.audit_command == "verify":
            return asyncio.run(rc.audit_verify_cmd(args.db, args.expect_head))
        return asyncio.run(rc.audit_log_cmd(args.db, args.limit))
    if args.command == "stats":
        return asyncio.run(rc.stats_cmd(args.db, args.day))
    if args.command == "notify":
        return notify_cli.run(args)
    if args.command == "admin":
        return admin_cli.run(args)
    return package_cli.run(args)


def _status(args: argparse.Namespace) -> int:
    from eir.metrics import default_url
    from eir.status import StatusError, status

    url = args.metrics or default_url(load(args.config).metrics.listen)
    if not 0 < args.interval <= 60:
        raise rc.CliError("status: --interval must be between 0 and 60 seconds")
    try:
        print(status(url, args.interval))
    except StatusError as exc:
        raise rc.CliError(f"status: {exc}") from None
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "status":
            return _status(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "demo":
            return _demo(args)
        if args.command == "check":
            return _check(args)
        if args.command == "registry":
            return _registry(args)
        return _other(args)
    except ConfigError as exc:
        print(f"eir: config: {exc}", file=sys.stderr)
        return 1
    except rc.CliError as exc:
        print(f"eir: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `eir registry export | head`: the reader left, nothing to say
        sys.stderr.close()
        return 0
    except (sqlite3.Error, StoreError) as exc:
        print(f"eir: registry database: {exc}", file=sys.stderr)
        return 1
    except LogKeyError as exc:
        print(f"eir: {exc}", file=sys.stderr)
        return 1
    except (OSError, TimeoutError) as exc:
        print(f"eir: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
