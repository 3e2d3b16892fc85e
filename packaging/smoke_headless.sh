#!/usr/bin/env bash
# The release workflow's smoke test on every OS: the frozen app runs the demo headless with
# the same trace hash as the source checkout, and leaves no qhybrid shared memory behind.
#
#   bash packaging/smoke_headless.sh PYTHON FROZEN_EXECUTABLE
#
# e.g. `.venv/bin/python dist/qhybrid/qhybrid` (Linux), `python dist/qhybrid.app/Contents/MacOS/qhybrid`
# (macOS), `python dist/qhybrid/qhybrid.exe` (Windows, Git Bash).
set -euo pipefail

if [ "$#" -ne 2 ]; then
  echo "usage: $0 PYTHON FROZEN_EXECUTABLE" >&2
  exit 2
fi
python=$1
frozen=$2
[ -x "$frozen" ] || { echo "smoke_headless.sh: $frozen is not an executable" >&2; exit 2; }

trace_hash() {
  "$python" -c 'import json, sys; print(json.load(sys.stdin)["trace_hash"])'
}
expected=$("$python" -m qhybrid --headless --json | trace_hash)
got=$(cd "${TMPDIR:-/tmp}" && "$frozen" --headless --json | trace_hash)
echo "source checkout: $expected"
echo "frozen app:      $got"
if [ "$got" != "$expected" ]; then
  echo "smoke_headless.sh: the frozen app's trace hash differs from the source checkout's" >&2
  exit 1
fi
if [ -d /dev/shm ] && find /dev/shm -maxdepth 1 -name 'qh_*' | grep -q .; then
  echo "smoke_headless.sh: qhybrid shared-memory segments left in /dev/shm" >&2
  exit 1
fi
"$frozen" --version
