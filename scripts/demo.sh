#!/usr/bin/env bash
# Runs ClearFrame on the bundled fixtures with local storage, from a fresh machine: installs what
# it needs (idempotently), builds, runs, and says where the output is.
set -euo pipefail
cd "$(dirname "$0")/.."

eval "export $(scripts/setup.sh)"
cargo build --release --locked --quiet
OUT=${OUT:-out/demo}
rm -rf "$OUT"
set +e
target/release/clearframe select \
  --catalog fixtures/demo-catalog.jsonl --ledger fixtures/demo-ledger.jsonl \
  --as-of 2026-11-01T00:00:00Z --out "$OUT"
status=$?
set -e
echo
echo "demo: output in $OUT (selection.jsonl, select.json); clearframe exited $status"
exit $status
