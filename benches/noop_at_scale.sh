#!/usr/bin/env bash
# What a no-op nightly rebuild costs at catalog scale (not a timed test): a full build of N
# catalog clips (default 10000) with a work folder, then the same rebuild with nothing changed,
# timed side by side. To keep the full build to minutes, the clips are one-second cuts of the
# three real fixture clips, each shared by many catalog lines (every line is its own clip to
# ClearFrame: its own id, owner, work-folder records and frames), sampled at 1 frame/s.
#
#   benches/noop_at_scale.sh [N]        (uses a release build)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
eval "export $(scripts/setup.sh)"
cargo build --release --locked --quiet
BIN=$PWD/target/release/clearframe
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
mkdir -p "$T/cat/clips"
srcs=(fixtures/media/bikes.mp4 fixtures/media/bigbuckbunny.mp4 fixtures/media/carphone_pristine.mp4)
for k in 0 1 2; do
  ffmpeg -v error -nostdin -i "${srcs[$k]}" -t 1 -an -c:v libx264 -preset ultrafast -y "$T/cat/clips/s$k.mp4"
done
awk -v n="$N" 'BEGIN {
  for (i = 0; i < n; i++)
    printf "{\"video_id\":\"c%05d\",\"uri\":\"clips/s%d.mp4\",\"owner_id\":\"acct-b%d\",\"device_id\":\"dev-%d\",\"placement\":\"outdoor\",\"captured_at\":\"2026-10-01T12:00:00Z\"}\n", i, i % 3, i % 10, i
}' >"$T/cat/catalog.jsonl"
doc='"document":{"uri":"consent-docs/acct-1.txt","blake3":"11cf89380cb0190f2ec9705aea3fc2f44f2f9982d53584cae92341e2373b88c8"}'
for o in 0 1 2 3 4 5 6 7 8 9; do
  printf '{"event_id":"g-%d","type":"consent.granted","owner_id":"acct-b%d","at":"2026-01-05T10:00:00Z","scope":["ml_training"],"devices":["*"],"placements":["outdoor"],%s}\n' \
    "$o" "$o" "$doc"
done >"$T/ledger.jsonl"

args=(--catalog "$T/cat/catalog.jsonl" --ledger "$T/ledger.jsonl" --as-of 2026-11-01T00:00:00Z --fps 1 --work "$T/w" --out "$T/d")
secs() { date +%s.%N; }
t0=$(secs)
"$BIN" run "${args[@]}" >"$T/full.log" 2>&1 || { cat "$T/full.log"; exit 1; }
t1=$(secs)
"$BIN" run "${args[@]}" >"$T/noop.log" 2>&1 || { cat "$T/noop.log"; exit 1; }
t2=$(secs)
grep -q "models not loaded" "$T/noop.log" || { echo "noop_at_scale: the no-op loaded models" >&2; exit 1; }
grep -q "nothing written" "$T/noop.log" || { echo "noop_at_scale: the no-op wrote the dataset" >&2; exit 1; }
grep -h "^work folder\|^dataset" "$T/full.log" "$T/noop.log"
awk -v n="$N" -v a="$t0" -v b="$t1" -v c="$t2" 'BEGIN {
  printf "no-op rebuild over %d clips, seconds:\n", n
  printf "  full, --work   %8.2f\n", b - a
  printf "  no-op rebuild  %8.2f  (%.2f%% of the full build)\n", c - b, 100 * (c - b) / (b - a)
}'
