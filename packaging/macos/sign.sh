#!/usr/bin/env bash
# Sign qhybrid.app (hardened runtime, JIT entitlements), then notarize and staple the .dmg.
#
#   bash packaging/macos/sign.sh app dist/qhybrid.app     # before make_dmg.sh
#   bash packaging/macos/sign.sh dmg dist/qhybrid-*.dmg   # after it
#
# Driven by the environment (the release workflow's secrets); without them it says so and
# does nothing, so unsigned builds still work:
#   MACOS_CERTIFICATE_P12 (base64), MACOS_CERTIFICATE_PASSWORD, MACOS_SIGN_IDENTITY
#   APPLE_ID, APPLE_TEAM_ID, APPLE_APP_PASSWORD (notarization)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

if [ "$#" -ne 2 ]; then
  echo "usage: $0 app|dmg PATH" >&2
  exit 2
fi
what=$1
path=$2

if [ -z "${MACOS_SIGN_IDENTITY:-}" ] || [ -z "${MACOS_CERTIFICATE_P12:-}" ]; then
  echo "sign.sh: MACOS_SIGN_IDENTITY/MACOS_CERTIFICATE_P12 not set: $path stays unsigned"
  exit 0
fi

import_certificate() {
  local keychain=$RUNNER_TEMP/qhybrid-signing.keychain-db
  local password
  password=$(openssl rand -hex 16)
  security create-keychain -p "$password" "$keychain"
  security set-keychain-settings -lut 3600 "$keychain"
  security unlock-keychain -p "$password" "$keychain"
  printf '%s' "$MACOS_CERTIFICATE_P12" | base64 --decode > "$RUNNER_TEMP/cert.p12"
  security import "$RUNNER_TEMP/cert.p12" -k "$keychain" -P "$MACOS_CERTIFICATE_PASSWORD" \
    -T /usr/bin/codesign
  rm -f "$RUNNER_TEMP/cert.p12"
  security set-key-partition-list -S apple-tool:,apple: -s -k "$password" "$keychain"
  security list-keychains -d user -s "$keychain"
}

case $what in
  app)
    import_certificate
    # Inside out: every library and executable, then the bundle, all with the entitlements.
    find "$path/Contents" -type f \( -name '*.so' -o -name '*.dylib' -o -perm -u+x \) -print0 |
      xargs -0 codesign --force --timestamp --options runtime \
        --entitlements "$here/entitlements.plist" --sign "$MACOS_SIGN_IDENTITY"
    codesign --force --timestamp --options runtime \
      --entitlements "$here/entitlements.plist" --sign "$MACOS_SIGN_IDENTITY" "$path"
    codesign --verify --deep --strict --verbose=2 "$path"
    ;;
  dmg)
    codesign --force --timestamp --sign "$MACOS_SIGN_IDENTITY" "$path"
    if [ -z "${APPLE_ID:-}" ] || [ -z "${APPLE_TEAM_ID:-}" ] || [ -z "${APPLE_APP_PASSWORD:-}" ]; then
      echo "sign.sh: APPLE_ID/APPLE_TEAM_ID/APPLE_APP_PASSWORD not set: $path signed, not notarized"
      exit 0
    fi
    xcrun notarytool submit "$path" --apple-id "$APPLE_ID" --team-id "$APPLE_TEAM_ID" \
      --password "$APPLE_APP_PASSWORD" --wait
    xcrun stapler staple "$path"
    ;;
  *)
    echo "sign.sh: unknown step '$what' (app or dmg)" >&2
    exit 2
    ;;
esac
