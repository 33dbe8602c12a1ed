#!/usr/bin/env bash
# Download the published PIPs++ reference model into ./reference_model/model-000200000.pth.
# REFERENCE_MODEL_URL overrides the address (a mirror, or a local file:// copy).
# On any failure (offline, HTTP error, bad archive) it exits non-zero and leaves no partial file behind.
set -euo pipefail
cd "$(dirname "$0")"

URL="${REFERENCE_MODEL_URL:-https://www.dropbox.com/scl/fi/czdlt2zc2ji2b7zd0pvoe/reference_model.tar.gz?rlkey=56ebq4g5dk01kyq8kuismev14}"
OUT=reference_model
CKPT="$OUT/model-000200000.pth"

if [ -s "$CKPT" ]; then
  echo "$CKPT is already there"
  exit 0
fi

tmp=$(mktemp -d ./.reference_model.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

fail() { echo "get_reference_model.sh: $*" >&2; exit 1; }

echo "downloading the reference model ..."
if command -v curl >/dev/null 2>&1; then
  curl -fsSL --retry 2 --connect-timeout 20 -o "$tmp/reference_model.tar.gz" "$URL" \
    || fail "download failed (offline or HTTP error): $URL"
elif command -v wget >/dev/null 2>&1; then
  wget -q --tries=3 --timeout=20 -O "$tmp/reference_model.tar.gz" "$URL" \
    || fail "download failed (offline or HTTP error): $URL"
else
  fail "neither curl nor wget is installed"
fi

tar -xzf "$tmp/reference_model.tar.gz" -C "$tmp" || fail "the downloaded file is not a valid .tar.gz archive"
found=$(find "$tmp" -name 'model-000200000.pth' -type f | head -n 1)
[ -n "$found" ] && [ -s "$found" ] || fail "the archive holds no model-000200000.pth"

mkdir -p "$OUT"
mv "$found" "$CKPT.partial"
mv "$CKPT.partial" "$CKPT"
echo "saved $CKPT"
