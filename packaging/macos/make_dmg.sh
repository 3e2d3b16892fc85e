#!/usr/bin/env bash
# Put qhybrid.app into a compressed .dmg with a link to /Applications (drag to install).
#
#   bash packaging/macos/make_dmg.sh dist/qhybrid.app dist/qhybrid-VERSION-macos-ARCH.dmg
#
# Called by packaging/build.py --target dmg; needs macOS (hdiutil).
set -euo pipefail

if [ "$#" -ne 2 ]; then
  echo "usage: $0 APP DMG" >&2
  exit 2
fi
app=$1
dmg=$2
if [ ! -d "$app/Contents/MacOS" ]; then
  echo "make_dmg.sh: $app is not an .app bundle" >&2
  exit 2
fi
command -v hdiutil >/dev/null || { echo "make_dmg.sh: hdiutil not found (macOS only)" >&2; exit 2; }

staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
cp -R "$app" "$staging/"
ln -s /Applications "$staging/Applications"
rm -f "$dmg"
hdiutil create -volname qhybrid -srcfolder "$staging" -fs HFS+ -format UDZO -ov "$dmg"
echo "$dmg"
