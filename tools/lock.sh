#!/usr/bin/env bash
# Regenerate the hash-pinned lock files from pyproject.toml. Run it after any change to
# pyproject's dependencies (CI's lock check names the package that is missing):
#
#   requirements.lock        runtime: [project] dependencies + the build backend
#   requirements-test.lock   runtime + the [test] extra (CI installs exactly this)
#
# Every package is pinned, transitive ones included, with the sha256 of every file PyPI has
# for that version (all platforms, so one lock serves every machine); markers are kept
# (--universal). The build backend (setuptools, from [build-system] requires) is in both, so
# `pip install --no-deps --no-build-isolation -e .` builds the project with locked code only.
#
# Usage:
#   bash tools/lock.sh                          keep every pin pyproject still allows
#   bash tools/lock.sh --upgrade                newest allowed release of everything
#   bash tools/lock.sh --upgrade-package NAME   newest allowed release of NAME (repeatable)
# Needs PyPI. The tool (uv, itself hash-pinned in tools/lock-tool.txt) is installed into
# build/lock-tool on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

tool=build/lock-tool
if ! cmp -s tools/lock-tool.txt "$tool/lock-tool.txt" 2>/dev/null; then
  rm -rf "$tool"
  python3 -m venv "$tool"
  "$tool/bin/pip" install -q --disable-pip-version-check --require-hashes -r tools/lock-tool.txt
  cp tools/lock-tool.txt "$tool/lock-tool.txt"
fi

# The build backend is locked too: its requirement is read from pyproject, not repeated here.
build_in=$(mktemp --suffix=.in)
trap 'rm -f "$build_in"' EXIT
python3 -c 'import tomllib, sys
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))' \
  >"$build_in"

# --native-tls: trust the system's certificate store (as pip does), not only uv's own roots.
common=(--quiet --native-tls --generate-hashes --universal --python-version 3.11
        --custom-compile-command "bash tools/lock.sh")
# The test lock first; the runtime lock is then held to its versions, so the two never differ
# on a package they share.
"$tool/bin/uv" pip compile "${common[@]}" "$@" --extra test \
  pyproject.toml "$build_in" -o requirements-test.lock
"$tool/bin/uv" pip compile "${common[@]}" "$@" -c requirements-test.lock \
  pyproject.toml "$build_in" -o requirements.lock
# The temporary file's name is not part of the lock: say where the build requirement came from.
sed -i "s|#   -r $build_in|#   pyproject.toml [build-system] requires|" \
  requirements.lock requirements-test.lock

echo "locked: $(grep -c '^[a-zA-Z0-9].*==' requirements.lock) runtime packages," \
  "$(grep -c '^[a-zA-Z0-9].*==' requirements-test.lock) with the test tools"
