"""tools.audit: the vulnerability scan of the lock fails on a known advisory, and says so.

The public advisory services are out of reach from CI's network (PyPI's per-release JSON API
and OSV both), so the failing path is exercised against an OSV-protocol server on 127.0.0.1
that holds one real advisory, PYSEC-2018-28 (CVE-2018-18074, requests before 2.20.0, from the
PyPA advisory database) and answers queries as OSV does: the advisory for an affected
version, nothing otherwise. pip-audit, its lock parsing and the scan's verdicts are the real
ones; only the advisory database is a local copy.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest
from packaging.markers import Marker
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]

# PYSEC-2018-28 as the PyPA advisory database publishes it (references and the GIT range left
# out: pip-audit reads the id, aliases, summary or details, and the ECOSYSTEM range).
PYSEC_2018_28 = {
    "id": "PYSEC-2018-28",
    "details": "The Requests package before 2.20.0 for Python sends an HTTP Authorization"
    " header to an http URI upon receiving a same-hostname https-to-http redirect, which"
    " makes it easier for remote attackers to discover credentials by sniffing the network.",
    "aliases": ["CVE-2018-18074"],
    "affected": [
        {
            "package": {"name": "requests", "ecosystem": "PyPI", "purl": "pkg:pypi/requests"},
            "ranges": [
                {"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "2.20.0"}]}
            ],
        }
    ],
    "published": "2018-10-09T17:29:00Z",
    "modified": "2021-06-16T00:03:24.800813Z",
}
# The wheels' sha256 on PyPI: the scan requires a hash on every pin, as the locks have.
REQUESTS_2_19_0 = "421cfc8d9dde7d6aff68196420afd86b88c65d77d8da9cf83f4ecad785d7b9d6"
REQUESTS_2_20_0 = "a84b8c9ab6239b578f22d1c21d51b696dcfe004032bb80ea832398d6909d7279"


class _OsvServer(ThreadingHTTPServer):
    queries: list[dict[str, Any]]


class _OsvHandler(BaseHTTPRequestHandler):
    """POST /v1/query as OSV answers it, from a database of one advisory."""

    def do_POST(self) -> None:
        query = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cast(_OsvServer, self.server).queries.append(query)
        package, version = query["package"]["name"], Version(query["version"])
        affected = package == "requests" and version < Version("2.20.0")
        body = json.dumps({"vulns": [PYSEC_2018_28]} if affected else {}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def osv() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    server = _OsvServer(("127.0.0.1", 0), _OsvHandler)
    server.queries = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/query", server.queries
    finally:
        server.shutdown()
        server.server_close()


def scan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.audit", "--service", "osv", "--timeout", "5",
         "--total-timeout", "60", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=90, check=False,
        env={**os.environ, "NO_PROXY": "127.0.0.1"},  # the local server, never a proxy
    )  # fmt: skip


def lock(tmp_path: Path, version: str, digest: str) -> Path:
    path = tmp_path / "requirements.lock"
    path.write_text(f"requests=={version} \\\n    --hash=sha256:{digest}\n")
    return path


def test_a_known_vulnerability_fails_the_scan(
    tmp_path: Path, osv: tuple[str, list[dict[str, Any]]]
) -> None:
    url, queries = osv
    done = scan("--osv-url", url, "--lock", str(lock(tmp_path, "2.19.0", REQUESTS_2_19_0)),
                "--ignore", str(tmp_path / "none.toml"))  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    first, detail = done.stderr.splitlines()[:2]
    assert first.startswith("vulnerability scan: FAILED: 1 known vulnerability")
    assert "requests 2.19.0: PYSEC-2018-28 (CVE-2018-18074), fixed in 2.20.0" in detail
    assert queries == [{"package": {"name": "requests", "ecosystem": "PyPI"}, "version": "2.19.0"}]


def test_an_accepted_finding_passes_with_its_reason_and_a_stale_one_is_noted(
    tmp_path: Path, osv: tuple[str, list[dict[str, Any]]]
) -> None:
    url, _ = osv
    ignore = tmp_path / "audit-ignore.toml"
    ignore.write_text(
        '[[accept]]\nid = "CVE-2018-18074"\npackage = "Requests"\n'
        'reason = "never follows a redirect to http"\n'
    )
    vulnerable = lock(tmp_path, "2.19.0", REQUESTS_2_19_0)
    done = scan("--osv-url", url, "--lock", str(vulnerable), "--ignore", str(ignore))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 locked packages audited: no known vulnerabilities (1 accepted" in done.stdout
    assert "accepted: requests 2.19.0: PYSEC-2018-28" in done.stdout
    assert "never follows a redirect to http" in done.stdout

    fixed = lock(tmp_path, "2.20.0", REQUESTS_2_20_0)
    done = scan("--osv-url", url, "--lock", str(fixed), "--ignore", str(ignore))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no known vulnerabilities" in done.stdout
    assert "accepts CVE-2018-18074 for requests, which no longer applies" in done.stdout


def test_an_ignore_entry_without_a_reason_is_an_error(
    tmp_path: Path, osv: tuple[str, list[dict[str, Any]]]
) -> None:
    url, _ = osv
    ignore = tmp_path / "audit-ignore.toml"
    ignore.write_text('[[accept]]\nid = "PYSEC-2018-28"\npackage = "requests"\n')
    done = scan("--osv-url", url, "--lock", str(lock(tmp_path, "2.19.0", REQUESTS_2_19_0)),
                "--ignore", str(ignore))  # fmt: skip
    assert done.returncode == 1
    assert "vulnerability scan: ERROR:" in done.stderr
    assert "accept entry 1 has no reason" in done.stderr


def test_an_unreachable_service_fails_closed_unless_told_to_warn(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/v1/query"
    vulnerable = str(lock(tmp_path, "2.19.0", REQUESTS_2_19_0))
    done = scan("--osv-url", closed, "--lock", vulnerable, "--unreachable", "fail")
    assert done.returncode == 1
    assert done.stderr.startswith("vulnerability scan: FAILED: not run: the osv service could")
    done = scan("--osv-url", closed, "--lock", vulnerable, "--unreachable", "warn")
    assert done.returncode == 0
    assert done.stdout.startswith("vulnerability scan: NOT RUN (passing, --unreachable warn)")


def test_the_project_lock_is_scanned_whole(osv: tuple[str, list[dict[str, Any]]]) -> None:
    """Every package of requirements-test.lock (this platform's) is asked about, by version."""
    url, queries = osv
    done = scan("--osv-url", url)
    assert done.returncode == 0, done.stdout + done.stderr
    asked = {q["package"]["name"]: q["version"] for q in queries}
    pins = {}
    for line in (ROOT / "requirements-test.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            pin, _, marker = line.rstrip(" \\").partition(";")
            if not marker or Marker(marker).evaluate():  # as pip-audit does
                name, version = pin.strip().split("==")
                pins[name] = version
    assert asked == pins
    assert f"{len(pins)} locked packages audited: no known vulnerabilities" in done.stdout
