"""The vulnerability scan: every package the lock pins, checked against published advisories.

It runs pip-audit on ``requirements-test.lock`` (every runtime and test package, transitive,
hash-pinned: exactly what CI installs; ``requirements.lock`` is a subset of it). Nothing is
resolved or installed (``--disable-pip``: the lock is complete and hashed). The advisories come
from pip-audit's default service, PyPI's JSON API, which serves the PyPA advisory database
(OSV format) per release; ``--service osv`` asks OSV instead.

Outcomes, each one line first, then one line per finding or problem:

* **clean**: every pinned package was audited and no advisory is open -> exit 0.
* **findings**: an advisory against a pinned version that ``audit-ignore.toml`` does not
  accept -> exit 1. Accepted ones are listed, with their reason, and do not fail.
* **not run**: the service could not be reached, did not finish within ``--total-timeout``,
  or did not answer for every package (pip-audit "skips" those) -> exit 1 with
  ``--unreachable fail`` (the default: a security check that cannot look has not passed),
  exit 0 with a loud ``NOT RUN`` line under ``--unreachable warn``. Findings among the packages
  that were audited fail either way.
* **error**: anything else (an unreadable lock or ignore file, a pip-audit failure that is
  not a network one) -> exit 1 whatever ``--unreachable`` says.

``EIR_AUDIT_UNREACHABLE`` (fail | warn) sets the default of ``--unreachable``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# pip-audit's own messages and the requests/urllib3 exceptions that mean "the network did not
# let us ask", as opposed to a broken lock or a pip-audit bug.
_NETWORK = re.compile(
    r"ConnectionError|NameResolutionError|Max retries exceeded|ConnectTimeout|ReadTimeout"
    r"|Read timed out|Connection refused|Temporary failure in name resolution"
    r"|network may be blocking|Could not connect"
)


class AuditError(Exception):
    """The scan could not be set up or its output could not be read."""


@dataclass(frozen=True)
class Accepted:
    """One entry of the ignore file: an advisory accepted for one package, and why."""

    id: str
    package: str
    reason: str


@dataclass(frozen=True)
class Finding:
    package: str
    version: str
    id: str
    aliases: tuple[str, ...]
    fix_versions: tuple[str, ...]
    description: str

    def line(self) -> str:
        ids = self.id + (f" ({', '.join(self.aliases)})" if self.aliases else "")
        fixed = f"fixed in {', '.join(self.fix_versions)}" if self.fix_versions else "no fix yet"
        text = self.description if len(self.description) <= 100 else self.description[:97] + "..."
        return f"{self.package} {self.version}: {ids}, {fixed}: {text}"


@dataclass
class Report:
    """What one scan found: the packages audited, the findings, what could not be audited."""

    audited: int = 0
    findings: list[Finding] = field(default_factory=list)
    accepted: list[tuple[Finding, Accepted]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "name: pip-audit's reason"
    unreachable: str = ""  # why the service could not be asked at all
    unused: list[Accepted] = field(default_factory=list)


def read_ignore(path: Path) -> list[Accepted]:
    """The accepted advisories; every entry must name its id, package and reason."""
    if not path.exists():
        return []
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise AuditError(f"{path}: cannot be read: {exc}") from exc
    entries = data.get("accept", [])
    if not isinstance(entries, list):
        raise AuditError(f"{path}: 'accept' must be a list of tables ([[accept]])")
    accepted = []
    for number, entry in enumerate(entries, 1):
        missing = [
            key
            for key in ("id", "package", "reason")
            if not isinstance(entry.get(key), str) or not entry[key].strip()
        ]
        if missing:
            raise AuditError(f"{path}: accept entry {number} has no {', '.join(missing)}")
        accepted.append(Accepted(entry["id"], _canonical(entry["package"]), entry["reason"]))
    return accepted


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def classify(output: dict[str, Any], accepted: list[Accepted]) -> Report:
    """Sort pip-audit's JSON output into findings, accepted findings and skipped packages."""
    report = Report()
    used: set[Accepted] = set()
    for dep in output.get("dependencies", []):
        name = _canonical(str(dep["name"]))
        if "skip_reason" in dep:
            report.skipped.append(f"{name}: {dep['skip_reason']}")
            continue
        report.audited += 1
        for vuln in dep.get("vulns", []):
            finding = Finding(
                package=name,
                version=str(dep["version"]),
                id=str(vuln["id"]),
                aliases=tuple(str(a) for a in vuln.get("aliases", [])),
                fix_versions=tuple(str(v) for v in vuln.get("fix_versions", [])),
                description=str(vuln.get("description", "")).strip(),
            )
            ids = {finding.id, *finding.aliases}
            match = next((a for a in accepted if a.package == name and a.id in ids), None)
            if match is None:
                report.findings.append(finding)
            else:
                report.accepted.append((finding, match))
                used.add(match)
    report.unused = [a for a in accepted if a not in used]
    return report


def run_pip_audit(
    lock: Path, *, service: str, osv_url: str | None, timeout: int, total_timeout: float
) -> dict[str, Any] | str:
    """pip-audit's JSON output, or why the service could not be asked (a network failure)."""
    with tempfile.TemporaryDirectory(prefix="eir-audit-") as tmp:
        out = Path(tmp) / "audit.json"
        command = [
            sys.executable, "-m", "pip_audit",
            "-r", str(lock), "--require-hashes", "--disable-pip",
            "--vulnerability-service", service,
            "--format", "json", "--output", str(out), "--aliases", "on", "--desc", "on",
            "--progress-spinner", "off", "--timeout", str(timeout),
        ]  # fmt: skip
        if osv_url is not None:
            command += ["--osv-url", osv_url]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=total_timeout, check=False
            )
        except subprocess.TimeoutExpired:
            return f"pip-audit did not finish within {total_timeout:g} s"
        if out.exists() and out.stat().st_size > 0:
            try:
                parsed: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise AuditError(f"pip-audit's output is not JSON: {exc}") from exc
            return parsed
        lines = done.stderr.strip().splitlines()
        tail = lines[-1].strip() if lines else "no message"
        if done.returncode != 0 and _NETWORK.search(done.stderr):
            return f"the {service} service could not be reached ({tail})"
        raise AuditError(f"pip-audit failed (exit {done.returncode}): {tail}")


def audit(
    lock: Path,
    ignore: Path,
    *,
    service: str = "pypi",
    osv_url: str | None = None,
    timeout: int = 10,
    total_timeout: float = 120.0,
) -> Report:
    """Scan the lock and sort what came back (see the module docstring)."""
    if not lock.exists():
        raise AuditError(f"{lock}: no such lock file")
    accepted = read_ignore(ignore)
    result = run_pip_audit(
        lock, service=service, osv_url=osv_url, timeout=timeout, total_timeout=total_timeout
    )
    if isinstance(result, str):
        return Report(unreachable=result)
    return classify(result, accepted)


def render(report: Report, *, unreachable: str, ignore: Path) -> tuple[int, list[str]]:
    """The exit status and the lines to print, the verdict first."""
    lines: list[str] = []
    not_audited = report.unreachable
    if report.skipped and not report.audited:
        not_audited = (
            f"the service answered for none of the {len(report.skipped)} packages"
            f" (first: {report.skipped[0]})"
        )
    elif report.skipped:
        not_audited = (
            f"{len(report.skipped)} of {report.audited + len(report.skipped)} packages could"
            f" not be audited ({'; '.join(report.skipped)})"
        )
    if report.findings:
        lines.append(
            f"vulnerability scan: FAILED: {len(report.findings)} known"
            f" vulnerabilit{'y' if len(report.findings) == 1 else 'ies'} in the locked packages"
            f" (upgrade and re-lock: bash tools/lock.sh --upgrade-package NAME; or accept one,"
            f" with its reason, in {ignore})"
        )
        lines += [f"  {finding.line()}" for finding in report.findings]
        status = 1
    elif not_audited:
        if unreachable == "warn":
            lines.append(
                f"vulnerability scan: NOT RUN (passing, --unreachable warn): {not_audited}"
            )
            status = 0
        else:
            lines.append(f"vulnerability scan: FAILED: not run: {not_audited}")
            status = 1
    else:
        lines.append(
            f"vulnerability scan: {report.audited} locked packages audited:"
            " no known vulnerabilities"
            + (f" ({len(report.accepted)} accepted in {ignore})" if report.accepted else "")
        )
        status = 0
    if report.findings and not_audited:
        lines.append(f"  and not audited: {not_audited}")
    for finding, why in report.accepted:
        lines.append(f"  accepted: {finding.line()} -- {why.reason}")
    if not not_audited:
        for entry in report.unused:
            lines.append(
                f"  note: {ignore} accepts {entry.id} for {entry.package}, which no longer"
                " applies: remove the entry"
            )
    return status, lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.audit",
        description="Scan the locked dependencies for known vulnerabilities (pip-audit).",
    )
    parser.add_argument("--lock", type=Path, default=Path("requirements-test.lock"))
    parser.add_argument("--ignore", type=Path, default=Path("audit-ignore.toml"))
    parser.add_argument(
        "--unreachable",
        choices=("fail", "warn"),
        default=os.environ.get("EIR_AUDIT_UNREACHABLE", "fail"),
        help="when the advisory service cannot be asked (default: fail, or $EIR_AUDIT_UNREACHABLE)",
    )
    parser.add_argument("--service", choices=("pypi", "osv"), default="pypi")
    parser.add_argument("--osv-url", default=None, help="another OSV API (--service osv)")
    parser.add_argument("--timeout", type=int, default=10, help="seconds per request")
    parser.add_argument(
        "--total-timeout", type=float, default=120.0, help="seconds for the whole scan"
    )
    args = parser.parse_args(argv)
    try:
        report = audit(
            args.lock,
            args.ignore,
            service=args.service,
            osv_url=args.osv_url,
            timeout=args.timeout,
            total_timeout=args.total_timeout,
        )
    except AuditError as exc:
        print(f"vulnerability scan: ERROR: {exc}", file=sys.stderr)
        return 1
    status, lines = render(report, unreachable=args.unreachable, ignore=args.ignore)
    print("\n".join(lines), file=sys.stderr if status else sys.stdout)
    return status


if __name__ == "__main__":
    sys.exit(main())
