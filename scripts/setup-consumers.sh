#!/usr/bin/env bash
# Idempotent set-up of the "real consumers" the annotation tests load the dataset with:
# a Python venv under ${CLEARFRAME_CACHE:-$HOME/.cache/clearframe}/consumers-venv holding pinned
# PyPI releases of
#   - pycocotools      (the COCO API: COCO(), loadRes, COCOeval)
#   - datumaro         (the library behind CVAT's import/export: coco and cvat formats)
#   - label-studio-sdk (Label Studio's own LabelInterface: validates tasks against a config)
# Checked to install from wheels on CPython 3.11 (x86_64 Linux). Safe to run again: the venv is
# rebuilt only when the pins change. Prints the venv's python on stdout.
set -euo pipefail

PINS=(pycocotools==2.0.11 datumaro==1.13.12 label-studio-sdk==2.1.2)
CACHE=${CLEARFRAME_CACHE:-$HOME/.cache/clearframe}
VENV=$CACHE/consumers-venv
STAMP=$VENV/.clearframe-pins
PYTHON=${PYTHON:-python3}

log() { printf 'setup-consumers: %s\n' "$*" >&2; }

want="${PINS[*]}"
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "$VENV/bin/python"
  exit 0
fi

if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  log "installing python3-venv (apt)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
fi

log "creating $VENV with ${PINS[*]}"
# The stamp is written last: an interrupted run leaves no stamp and is redone next time.
rm -rf "$VENV"
mkdir -p "$CACHE"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --prefer-binary "${PINS[@]}"
# Import once so a broken wheel fails here, not in a test.
"$VENV/bin/python" -c 'import pycocotools.coco, datumaro, label_studio_sdk.label_interface'
echo "$want" > "$STAMP"
echo "$VENV/bin/python"
