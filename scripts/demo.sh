#!/usr/bin/env bash
# Runs the whole ClearFrame pipeline on the bundled fixtures with local storage, from a fresh
# machine: installs what it needs (idempotently), builds, runs, verifies, and says where the
# report is. The demo catalog holds consented, shared, revoked, deleted, indoor, zoned and one
# corrupt clip: the corrupt one is reported and skipped, so clearframe exits 1 by design.
set -euo pipefail
cd "$(dirname "$0")/.."

eval "export $(scripts/setup.sh)"
cargo build --release --locked --quiet
OUT=${OUT:-out/demo}
set +e
target/release/clearframe run \
  --catalog fixtures/demo-catalog.jsonl --ledger fixtures/demo-ledger.jsonl \
  --as-of 2026-11-01T00:00:00Z --fps 5 --out "$OUT"
status=$?
set -e
[ "$status" -le 1 ] || exit "$status"
target/release/clearframe verify "$OUT"
echo
echo "demo: dataset in $OUT; open $OUT/versions/*/report.html in a browser."
[ "$status" -eq 0 ] || echo "demo: clearframe run exited $status: one demo clip (v-corrupt) is broken on purpose and was skipped."
