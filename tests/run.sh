#!/usr/bin/env bash
# Install everything from nothing, then run the whole check: lint, types, layer rules, tests.
# Usage: bash tests/run.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

# Third-party peers, the capture checker and the browser the tests drive (Debian packages).
need=()
command -v freeDiameterd >/dev/null 2>&1 || need+=(freediameter freediameter-extensions)
[ -f /usr/include/freeDiameter/extension.h ] || need+=(libfreediameter-dev)
command -v tshark >/dev/null 2>&1 || need+=(tshark)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
# Prometheus: promtool checks the alert rules, and a real server scrapes the EIR in a test
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# h2load: an independent HTTP/2 load generator for the N5g-eir benchmark (bench.n5g_bench)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
# headless browser: the simulator's HTML reports are rendered and screenshotted in a test,
# and the public IMEI check's page is driven by Playwright (screenshots: build/artifacts/public)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# PostgreSQL: the registry contract tests, the change-log follower and the cluster testbed start
# throwaway servers of their own (testbed/postgres.py); nothing is installed as a service
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
# systemd-analyze verifies the unit file ops/systemd/eir.service (nothing is started)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# ... and a font with Cyrillic and Kazakh letters for the public check's screenshots
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "== installing Debian packages: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "== not root: cannot install ${need[*]}; the interop tests will fail" >&2
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=(.venv/bin/pip install -q --disable-pip-version-check)
# The lock decides every version: every package pinned, every file's sha256 checked; then the
# project itself, with no dependency resolution and its build backend from the lock too.
echo "== installing the locked dependencies (requirements-test.lock, hash-checked)"
"${pip[@]}" --require-hashes -r requirements-test.lock
echo "== lock";          .venv/bin/python -m tools.check_lock
echo "== installing the project"
# (setuptools says at length, on every editable install, what an editable install is)
PYTHONWARNINGS='ignore:Editable installation' "${pip[@]}" --no-deps --no-build-isolation -e .
# Known vulnerabilities in the locked versions fail the run (accepted ones: audit-ignore.toml).
# When the advisory service cannot be asked (this CI's network reaches PyPI's package index
# but not its per-release JSON API, nor OSV), the scan prints NOT RUN and CI goes on;
# EIR_AUDIT_UNREACHABLE=fail makes that a failure, as `python -m tools.audit` alone does.
echo "== vulnerability scan"
.venv/bin/python -m tools.audit --unreachable "${EIR_AUDIT_UNREACHABLE:-warn}"

echo "== ruff";          .venv/bin/ruff check eir simulator testbed bench tools tests
echo "== mypy";          .venv/bin/mypy
echo "== layer rules";   .venv/bin/lint-imports
echo "== pytest";        .venv/bin/pytest "$@"
