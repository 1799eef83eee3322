#!/usr/bin/env sh
# freeDiameter as an independent S13 peer, by hand (loopback only). Thin wrapper around
# "python -m testbed.fdpeer"; see testbed/README.md.
#
#   testbed/freediameter/fdpeer.sh client 127.0.0.1:3868 eir.test.local count=20000 concur=200 imei_vary=1
#   testbed/freediameter/fdpeer.sh server 13870
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
py=${PYTHON:-}
if [ -z "$py" ]; then
  if [ -x "$root/.venv/bin/python" ]; then py="$root/.venv/bin/python"; else py=python3; fi
fi
cd "$root"
exec "$py" -m testbed.fdpeer "$@"
