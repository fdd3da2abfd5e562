#!/usr/bin/env bash
# Idempotent install of the S3-compatible test server used by `tests/storage.rs` and the storage
# bench: s3s-fs 0.14.1 (newer versions need a newer rustc), built once with `cargo install` and
# cached outside the repository in $CLEARFRAME_CACHE/bin (default ~/.cache/clearframe/bin).
# Prints the binary's path on stdout. Takes about 1.5-3 minutes the first time, nothing after.
set -euo pipefail

S3S_VERSION=0.14.1
CACHE=${CLEARFRAME_CACHE:-$HOME/.cache/clearframe}
BIN=$CACHE/bin/s3s-fs

log() { printf 'install-s3s: %s\n' "$*" >&2; }

if [ ! -x "$BIN" ]; then
  log "building s3s-fs@$S3S_VERSION into $CACHE (cargo install, a couple of minutes)"
  mkdir -p "$CACHE"
  # A private target dir keeps this build from locking or bloating the project's target/.
  CARGO_TARGET_DIR="$CACHE/s3s-build" \
    cargo install "s3s-fs@$S3S_VERSION" --features binary --locked --root "$CACHE" --quiet
  rm -rf "$CACHE/s3s-build"
fi

"$BIN" --help >/dev/null 2>&1 || { log "$BIN exists but does not run"; exit 1; }
echo "$BIN"
