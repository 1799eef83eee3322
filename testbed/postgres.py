"""A throwaway PostgreSQL server on 127.0.0.1, for tests and testbed scenarios.

Debian's ``postgresql`` package (server binaries under /usr/lib/postgresql/N/bin) is all it
needs. The cluster lives in a fresh directory under /tmp; ``initdb`` makes it with trust
authentication for local connections only, and ``pg_ctl`` starts it listening on 127.0.0.1 and a
Unix socket in that directory. PostgreSQL refuses to run as root, so when we are root every
server command runs as the ``postgres`` user (``runuser``), and the directory is handed to it.

``fast=True`` turns off fsync, full-page writes and synchronous commit: for unit tests that
create and drop many databases, never for figures or failure drills.

``EIR_TEST_PG_URL`` (a ``postgresql://`` URL of a server you run) makes the tests use that
server instead of starting one; each test then makes and drops its own database there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType

APT_HINT = "apt-get install -y postgresql"
DATABASE = "eir"
_RUN_AS = "postgres"  # the Debian package's system user


class PgError(RuntimeError):
    """The cluster could not be made, started or stopped; the message carries the log tail."""


def bindir() -> Path | None:
    """Where initdb and pg_ctl are: PATH first, then the newest /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                      else 0)
    return versions[-1].parent if versions else None


def unavailable_reason() -> str | None:
    """None when a server can be started here, else why not (with the install hint)."""
    if bindir() is None:
        return f"PostgreSQL server binaries not found ({APT_HINT})"
    if os.geteuid() == 0:
        try:
            import pwd
            pwd.getpwnam(_RUN_AS)
        except KeyError:
            return f"running as root and there is no {_RUN_AS!r} user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root and runuser (util-linux) is missing"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    """One PostgreSQL server with one database, ``eir``, reachable at `url`."""

    def __init__(self, root: Path | None = None, *, port: int | None = None, fast: bool = False,
                 settings: Mapping[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.fast = fast
        self.settings = dict(settings or {})
        self._made_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="eir-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        bins = bindir()
        if bins is None:
            raise PgError(f"PostgreSQL server binaries not found ({APT_HINT})")
        self.bin = bins

    # -- URLs -----------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.url_for(DATABASE)

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    # -- life cycle -----------------------------------------------------------

    def _cmd(self, *args: str) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", _RUN_AS, "--", *args]
        return list(args)

    def _run(self, what: str, *args: str, timeout: float = 60.0) -> str:
        try:
            r = subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=timeout,
                               check=False)
        except subprocess.TimeoutExpired:
            raise PgError(f"{what}: no result within {timeout:.0f} s{self._tail()}") from None
        if r.returncode != 0:
            raise PgError(f"{what} failed (exit {r.returncode}): "
                          f"{(r.stderr or r.stdout).strip()[-800:]}{self._tail()}")
        return r.stdout

    def _tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()[-15:]
        except OSError:
            return ""
        return "\n  postgres.log: " + "\n  ".join(lines) if lines else ""

    def init(self) -> None:
        """Make the cluster (once) and write its settings."""
        if (self.data / "PG_VERSION").exists():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, _RUN_AS, _RUN_AS)
        os.chmod(self.root, 0o700)
        self._run("initdb", str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync")
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "max_connections": "200",
            "shared_buffers": "'256MB'",
            "log_min_messages": "warning",
            "log_line_prefix": "'%m [%p] '",
            # a restarted server must not wait for a client that vanished mid-transaction
            "idle_in_transaction_session_timeout": "'60s'",
        }
        if self.fast:
            conf |= {"fsync": "off", "full_page_writes": "off", "synchronous_commit": "off"}
        conf |= {k: (v if v.replace(".", "").isdigit() else f"'{v}'")
                 for k, v in self.settings.items()}
        with (self.data / "postgresql.conf").open("a") as f:
            f.write("\n# eir testbed\n")
            for k, v in conf.items():
                f.write(f"{k} = {v}\n")

    def start(self, timeout: float = 60.0) -> None:
        """Start the server (making it first if need be) and the ``eir`` database."""
        self.init()
        if os.geteuid() == 0 and self.log.exists():
            shutil.chown(self.log, _RUN_AS, _RUN_AS)
        self._run("pg_ctl start", str(self.bin / "pg_ctl"), "-D", str(self.data), "-l",
                  str(self.log), "-w", "-t", str(int(timeout)), "start", timeout=timeout + 10)
        if not self.database_exists(DATABASE):
            self.psql(f'CREATE DATABASE "{DATABASE}"', database="postgres")

    def stop(self, mode: str = "fast", timeout: float = 60.0) -> None:
        """Stop the server (``fast``: roll back open transactions; ``immediate``: no shutdown
        checkpoint, as after a crash)."""
        if not self.running():
            return
        self._run("pg_ctl stop", str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode,
                  "-w", "-t", str(int(timeout)), "stop", timeout=timeout + 10)

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def kill(self) -> None:
        """SIGKILL the postmaster (its children notice and exit); `start` recovers."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while self._alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)

    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    @staticmethod
    def _alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def running(self) -> bool:
        pid = self.pid()
        return pid is not None and self._alive(pid)

    def close(self) -> None:
        """Stop the server and remove the directory this object made."""
        try:
            self.stop("immediate")
        finally:
            if self._made_root:
                shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- SQL ------------------------------------------------------------------

    def psql(self, sql: str, *, database: str = DATABASE) -> str:
        """Run SQL through psql over TCP; return its unaligned, tuples-only output."""
        psql = self.bin / "psql"
        args = [str(psql if psql.exists() else "psql"), "-X", "-q", "-A", "-t", "-v",
                "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                "-d", database, "-c", sql]
        try:
            r = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
        except subprocess.TimeoutExpired:
            raise PgError(f"psql: no result within 120 s: {sql[:80]}") from None
        if r.returncode != 0:
            raise PgError(f"psql {sql[:80]!r}: {r.stderr.strip()[-500:]}")
        return r.stdout.strip()

    def database_exists(self, name: str) -> bool:
        return self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'",
                         database="postgres") == "1"

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.psql(f'CREATE DATABASE "{name}"', database="postgres")
        return self.url_for(name)


def drop_database(admin_url: str, url: str) -> None:
    """Drop the database of ``url`` through a server reached at ``admin_url`` (any database)."""
    name = url.rsplit("/", 1)[1].split("?", 1)[0]
    import psycopg  # a test-time helper; the server side has its own connections

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def scratch_database(cluster: PgCluster | None, external_url: str | None = None,
                     prefix: str = "t") -> Iterator[str]:
    """A new database on ``cluster`` (or on the server of ``external_url``), dropped after."""
    if cluster is not None:
        url = cluster.create_database(prefix)
        admin = cluster.url_for("postgres")
    else:
        assert external_url is not None
        import psycopg

        base = external_url.rsplit("/", 1)[0]
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(external_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url, admin = f"{base}/{name}", external_url
    try:
        yield url
    finally:
        drop_database(admin, url)
