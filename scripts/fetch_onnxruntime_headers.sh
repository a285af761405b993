#!/usr/bin/env bash
# Fetch onnxruntime's C/C++ API headers (the wheel ships none) into a cache directory.
#   bash scripts/fetch_onnxruntime_headers.sh [CACHE_DIR]   (default: .cache/onnxruntime-headers)
# Prints the include directory (the one holding onnxruntime_cxx_api.h) on its last line.
#
# Debian 13 ("trixie") packages the headers as libonnxruntime-dev. On Debian 12 the package
# is downloaded through a private apt configuration that reuses the URIs of the system's
# own Debian source with Suites: trixie, so the system's apt setup is never changed.
# ZAPOPT_ORT_INCLUDE_DIR=/path/to/include skips the download (any onnxruntime >= 1.16 headers).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${1:-$ROOT/.cache/onnxruntime-headers}
fail() { echo "fetch_onnxruntime_headers: $*" >&2; exit 1; }
find_include() { find "$1" -name onnxruntime_cxx_api.h -printf '%h\n' 2>/dev/null | head -n1; }

if [ -n "${ZAPOPT_ORT_INCLUDE_DIR:-}" ]; then
  [ -f "$ZAPOPT_ORT_INCLUDE_DIR/onnxruntime_cxx_api.h" ] \
    || fail "ZAPOPT_ORT_INCLUDE_DIR=$ZAPOPT_ORT_INCLUDE_DIR has no onnxruntime_cxx_api.h"
  echo "$ZAPOPT_ORT_INCLUDE_DIR"; exit 0
fi
if [ -d "$CACHE/root" ]; then
  inc=$(find_include "$CACHE/root")
  if [ -n "$inc" ]; then echo "$inc"; exit 0; fi
fi
command -v apt-get >/dev/null && command -v dpkg >/dev/null \
  || fail "apt-get/dpkg not found: install onnxruntime's headers yourself and set ZAPOPT_ORT_INCLUDE_DIR to their directory"

mkdir -p "$CACHE"
APT="$CACHE/apt"
rm -rf "$APT" "$CACHE/root"
mkdir -p "$APT/etc" "$APT/lists/partial" "$APT/cache/archives/partial"
APT_OPTS=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$APT/etc"
          -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache" -o Debug::NoLocking=1)
# The system's own Debian mirror (first URIs line of a deb822 source naming a Debian suite).
uri=""
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  if grep -qiE '^Suites:.*\b(bookworm|trixie|sid|stable|testing)\b' "$f"; then
    uri=$(grep -m1 -iE '^URIs:' "$f" | sed -E 's/^URIs:[[:space:]]*//; s/[[:space:]].*$//')
    [ -n "$uri" ] && break
  fi
done
if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
  uri=$(grep -m1 -E '^deb[[:space:]]' /etc/apt/sources.list | awk '{print $2}')
fi
[ -n "$uri" ] || fail "no Debian source found in /etc/apt to copy the mirror address from; set ZAPOPT_ORT_INCLUDE_DIR"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$keyring" ] || fail "$keyring is missing (package debian-archive-keyring); set ZAPOPT_ORT_INCLUDE_DIR"
cat > "$APT/etc/trixie.sources" <<SRC
Types: deb
URIs: $uri
Suites: trixie
Components: main
Signed-By: $keyring
SRC
apt-get "${APT_OPTS[@]}" update -qq >"$APT/update.log" 2>&1 \
  || fail "apt-get update of the private trixie source failed (network?); see $APT/update.log"
( cd "$APT/cache/archives" && apt-get "${APT_OPTS[@]}" download libonnxruntime-dev >"$APT/download.log" 2>&1 ) \
  || fail "apt-get download libonnxruntime-dev failed; see $APT/download.log"
deb=$(ls "$APT"/cache/archives/libonnxruntime-dev_*.deb 2>/dev/null | head -n1)
[ -n "$deb" ] || fail "libonnxruntime-dev .deb not found after download"
mkdir -p "$CACHE/root"
dpkg -x "$deb" "$CACHE/root"
rm -rf "$APT/lists" "$APT/cache"
inc=$(find_include "$CACHE/root")
[ -n "$inc" ] || fail "libonnxruntime-dev unpacked but has no onnxruntime_cxx_api.h"
echo "$inc"
