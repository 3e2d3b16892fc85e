#!/usr/bin/env bash
# Sign Windows executables with signtool (Git Bash on the windows runner).
#
#   bash packaging/windows/sign.sh FILE.exe...
#
# Driven by the environment (the release workflow's secrets); without them it says so and
# does nothing: WINDOWS_CERTIFICATE_PFX (base64), WINDOWS_CERTIFICATE_PASSWORD.
set -euo pipefail

if [ "$#" -eq 0 ]; then
  echo "usage: $0 FILE..." >&2
  exit 2
fi
if [ -z "${WINDOWS_CERTIFICATE_PFX:-}" ]; then
  echo "sign.sh: WINDOWS_CERTIFICATE_PFX not set: $* stay unsigned"
  exit 0
fi
signtool=$(command -v signtool.exe || true)
if [ -z "$signtool" ]; then
  # The newest Windows SDK's x64 signtool.
  signtool=$(find "/c/Program Files (x86)/Windows Kits/10/bin" -path '*x64/signtool.exe' | sort | tail -n 1)
fi
[ -n "$signtool" ] || { echo "sign.sh: signtool.exe not found" >&2; exit 2; }
pfx=${RUNNER_TEMP:-/tmp}/qhybrid-signing.pfx
printf '%s' "$WINDOWS_CERTIFICATE_PFX" | base64 --decode > "$pfx"
trap 'rm -f "$pfx"' EXIT
"$signtool" sign /f "$pfx" /p "$WINDOWS_CERTIFICATE_PASSWORD" /fd SHA256 \
  /tr http://timestamp.digicert.com /td SHA256 "$@"
