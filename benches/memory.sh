#!/usr/bin/env bash
# Peak memory of `clearframe run` against clip length (not a timed test): bikes.mp4 (640x272,
# 25 fps) looped to 250 and to 2,500 frames, every frame processed (`--fps 25`), each run under
# GNU time; prints frames, wall seconds, peak RSS and the ratio. A bounded pipeline's peak does
# not follow the clip's length (2,250 more frames held would be 1.2 GB more).
#
#   benches/memory.sh            (uses a release build)
set -euo pipefail
cd "$(dirname "$0")/.."
eval "export $(scripts/setup.sh)"
cargo build --release --locked --quiet
BIN=$PWD/target/release/clearframe
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
mkdir -p "$T/media"
export CLEARFRAME_AUDIT_LOG="$T/audit"
printf '%s\n' '{"event_id":"g-1","type":"consent.granted","owner_id":"acct-1","at":"2026-01-01T00:00:00Z","scope":["ml_training"],"devices":["*"],"placements":["outdoor"],"document":{"uri":"consent-docs/acct-1.txt","blake3":"11cf89380cb0190f2ec9705aea3fc2f44f2f9982d53584cae92341e2373b88c8"}}' >"$T/ledger.jsonl"
printf '%-7s %8s %12s\n' frames wall_s peak_MiB
declare -A peak
for n in 250 2500; do
  ffmpeg -v error -y -stream_loop -1 -i fixtures/media/bikes.mp4 -frames:v "$n" -an \
    -c:v libx264 -preset ultrafast -pix_fmt yuv420p "$T/media/b$n.mp4"
  printf '{"video_id":"b%s","uri":"media/b%s.mp4","owner_id":"acct-1","device_id":"dev-1","placement":"outdoor","captured_at":"2026-06-01T00:00:00Z"}\n' "$n" "$n" >"$T/catalog-$n.jsonl"
  /usr/bin/time -f "%e %M" -o "$T/time" "$BIN" run --as-of 2026-11-01T00:00:00Z --fps 25 \
    --catalog "$T/catalog-$n.jsonl" --ledger "$T/ledger.jsonl" --out "$T/out-$n" >"$T/log" 2>&1 ||
    { echo "memory: run on $n frames failed:" >&2; tail -5 "$T/log" >&2; exit 1; }
  read -r wall kib <"$T/time"
  peak[$n]=$kib
  printf '%-7s %8.1f %12.1f\n' "$n" "$wall" "$(awk -v k="$kib" 'BEGIN { print k / 1024 }')"
done
awk -v a="${peak[250]}" -v b="${peak[2500]}" 'BEGIN { printf "peak RSS, 2,500 / 250 frames: %.3f\n", b / a }'
