#!/usr/bin/env bash
# What a nightly rebuild costs, measured side by side in one run (not a timed test): over N clips
# (default 200) cut from the real fixture clips, it times
#   1. a plain `clearframe run` (no work folder),
#   2. a full build with a work folder (`run --work W`),
#   3. a no-op rebuild (nothing changed),
#   4. a rebuild where 1% of the clips changed (re-encoded: new bytes),
#   5. a consent-only change (one owner revokes: clips dropped, no vision work),
# checks that every build gives the plain run's dataset, and prints the ratios.
#
#   benches/rebuild.sh [N]        (uses a release build; FPS=2 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200}
FPS=${FPS:-2}
eval "export $(scripts/setup.sh)"
cargo build --release --locked --quiet
BIN=$PWD/target/release/clearframe
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
mkdir -p "$T/cat/clips"

# N one-second clips at successive offsets of three real clips, each its own bytes; owners
# acct-b0..acct-b9 (the last one revokes in step 5).
srcs=(fixtures/media/bikes.mp4 fixtures/media/bigbuckbunny.mp4 fixtures/media/carphone_pristine.mp4)
secs_of=()
for src in "${srcs[@]}"; do # whole seconds a one-second cut can start at
  d=$(ffprobe -v error -show_entries format=duration -of csv=p=0 "$src")
  secs_of+=("$(awk -v d="$d" 'BEGIN { n = int(d) - 1; print (n < 1 ? 1 : n) }')")
done
: >"$T/cat/catalog.jsonl"
for i in $(seq 0 $((N - 1))); do
  src=${srcs[$((i % 3))]}
  off=$(((i / 3) % ${secs_of[$((i % 3))]}))
  ffmpeg -v error -nostdin -ss "$off" -i "$src" -t 1 -an -c:v libx264 -preset ultrafast \
    -crf $((18 + (i / 24) % 10)) -y "$T/cat/clips/c$i.mp4"
  printf '{"video_id":"c%05d","uri":"clips/c%d.mp4","owner_id":"acct-b%d","device_id":"dev-%d","placement":"outdoor","captured_at":"2026-10-01T12:00:00Z"}\n' \
    "$i" "$i" $((i % 10)) "$i" >>"$T/cat/catalog.jsonl"
done
doc='"document":{"uri":"consent-docs/acct-1.txt","blake3":"11cf89380cb0190f2ec9705aea3fc2f44f2f9982d53584cae92341e2373b88c8"}'
: >"$T/ledger.jsonl"
for o in 0 1 2 3 4 5 6 7 8 9; do
  printf '{"event_id":"g-%d","type":"consent.granted","owner_id":"acct-b%d","at":"2026-01-05T10:00:00Z","scope":["ml_training"],"devices":["*"],"placements":["outdoor"],%s}\n' \
    "$o" "$o" "$doc" >>"$T/ledger.jsonl"
done
cp "$T/ledger.jsonl" "$T/revoked.jsonl"
echo '{"event_id":"r-9","type":"consent.revoked","owner_id":"acct-b9","at":"2026-10-30T00:00:00Z","grant_id":"g-9"}' >>"$T/revoked.jsonl"

args=(--catalog "$T/cat/catalog.jsonl" --as-of 2026-11-01T00:00:00Z --fps "$FPS")
secs() { date +%s.%N; }
timed() { # name, command...
  local name=$1
  shift
  local t0 t1
  t0=$(secs)
  "$@" >"$T/$name.log" 2>&1 || { local rc=$?; [ "$rc" -le 1 ] || { cat "$T/$name.log"; exit "$rc"; }; }
  t1=$(secs)
  awk -v a="$t0" -v b="$t1" -v n="$name" 'BEGIN { printf "%s %.3f\n", n, b - a }' >>"$T/times"
}
# The same dataset version: the same frames, the same version files but the change log against
# the previous version (changes.json, removed.jsonl: they name the version folder and are listed
# in dataset.json), and the same root.
version() { sed -n 's/^  "version": "\([0-9a-f]\{16\}\)",$/\1/p' "$1/dataset.json"; }
same() {
  diff -r "$1/frames" "$2/frames" >/dev/null \
    && diff -r -x changes.json -x removed.jsonl "$1/versions/$(version "$1")" "$2/versions/$(version "$2")" >/dev/null \
    && [ "$(grep '"merkle_root"' "$1/dataset.json")" = "$(grep '"merkle_root"' "$2/dataset.json")" ] \
    || { echo "rebuild: $2 differs from $1" >&2; exit 1; }
}

: >"$T/times"
timed plain "$BIN" run "${args[@]}" --ledger "$T/ledger.jsonl" --out "$T/plain"
timed full "$BIN" run "${args[@]}" --ledger "$T/ledger.jsonl" --work "$T/w" --out "$T/d"
same "$T/plain" "$T/d"
timed noop "$BIN" run "${args[@]}" --ledger "$T/ledger.jsonl" --work "$T/w" --out "$T/d"
same "$T/plain" "$T/d"
grep -q "models not loaded" "$T/noop.log" || { echo "rebuild: the no-op loaded models" >&2; exit 1; }
changed=$(((N + 99) / 100))
for i in $(seq 0 $((changed - 1))); do
  ffmpeg -v error -nostdin -i "$T/cat/clips/c$i.mp4" -an -c:v libx264 -preset ultrafast -crf 30 \
    -y "$T/cat/clips/tmp.mp4"
  mv "$T/cat/clips/tmp.mp4" "$T/cat/clips/c$i.mp4"
done
timed changed "$BIN" run "${args[@]}" --ledger "$T/ledger.jsonl" --work "$T/w" --out "$T/d"
timed plain2 "$BIN" run "${args[@]}" --ledger "$T/ledger.jsonl" --out "$T/plain2"
same "$T/plain2" "$T/d"
timed consent "$BIN" run "${args[@]}" --ledger "$T/revoked.jsonl" --work "$T/w" --out "$T/d"
grep -q "models not loaded" "$T/consent.log" || { echo "rebuild: a consent change loaded models" >&2; exit 1; }

grep -h "^work folder" "$T/full.log" "$T/noop.log" "$T/changed.log" "$T/consent.log"
awk -v n="$N" -v c="$changed" '
  { t[$1] = $2 }
  END {
    printf "rebuild over %d clips (%d changed in the 1%% step), seconds:\n", n, c
    printf "  plain run          %8.2f\n", t["plain"]
    printf "  full, --work       %8.2f  (%.2fx the plain run)\n", t["full"], t["full"] / t["plain"]
    printf "  no-op rebuild      %8.2f  (%.2f%% of the full build)\n", t["noop"], 100 * t["noop"] / t["full"]
    printf "  1%% changed         %8.2f  (%.1f%% of the full build)\n", t["changed"], 100 * t["changed"] / t["full"]
    printf "  consent change     %8.2f  (%.1f%% of the full build)\n", t["consent"], 100 * t["consent"] / t["full"]
  }' "$T/times"
