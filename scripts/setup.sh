#!/usr/bin/env bash
# Idempotent set-up for ClearFrame on a fresh Debian machine: installs what the pipeline and its
# tests need and nothing else. Safe to run again; each step is skipped when already done.
#   - ffmpeg (Debian package): decoding and encoding
#   - libonnxruntime.so (from the pinned PyPI `onnxruntime` wheel): loaded by `ort` at run time
# The library lands in $CLEARFRAME_CACHE (default ~/.cache/clearframe), outside the repository.
set -euo pipefail

ORT_VERSION=1.32.0
CACHE=${CLEARFRAME_CACHE:-$HOME/.cache/clearframe}
ORT_DIR=$CACHE/onnxruntime-$ORT_VERSION
ORT_LIB=$ORT_DIR/libonnxruntime.so.$ORT_VERSION

log() { printf 'setup: %s\n' "$*" >&2; }

if ! command -v ffmpeg >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; then
  log "installing ffmpeg (apt)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ffmpeg >/dev/null
fi

if [ ! -s "$ORT_LIB" ]; then
  log "fetching onnxruntime==$ORT_VERSION wheel (PyPI) for libonnxruntime.so"
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.11 --platform manylinux_2_28_x86_64 \
    "onnxruntime==$ORT_VERSION" -d "$tmp"
  mkdir -p "$ORT_DIR"
  python3 - "$tmp" "$ORT_DIR" "$ORT_VERSION" <<'PY'
import glob, sys, zipfile, os
tmp, out, ver = sys.argv[1:]
whl = glob.glob(os.path.join(tmp, "onnxruntime-*.whl"))[0]
name = f"onnxruntime/capi/libonnxruntime.so.{ver}"
with zipfile.ZipFile(whl) as z, open(os.path.join(out, f"libonnxruntime.so.{ver}.part"), "wb") as f:
    f.write(z.read(name))
os.replace(os.path.join(out, f"libonnxruntime.so.{ver}.part"), os.path.join(out, f"libonnxruntime.so.{ver}"))
PY
fi

# Tell the caller where the library is; the binary also finds it here by itself.
echo "ORT_DYLIB_PATH=$ORT_LIB"
