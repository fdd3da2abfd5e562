#!/usr/bin/env bash
# A longer fuzzing run of the consent gate than the test suite's (tests/fuzz.rs): mutated
# ledgers and catalogs against an independent oracle of the README's rules.
#   scripts/fuzz.sh [CASES]      (default 200000 per property)
set -euo pipefail
cd "$(dirname "$0")/.."
eval "export $(scripts/setup.sh)"
export CLEARFRAME_FUZZ_CASES=${1:-200000}
start=$(date +%s)
cargo test --locked --test tests -- fuzz:: --nocapture
echo "fuzz: $CLEARFRAME_FUZZ_CASES cases per property in $(( $(date +%s) - start )) s"
