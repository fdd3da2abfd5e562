#!/usr/bin/env bash
# Times `clearframe run` (the whole pipeline: select, decode, redact, verify, detect, emit) against
# `clearframe anonymize` (decode, face detection, masking, H.264 encode) on the same clip at the
# same face settings, alternating, several runs, medians; prints frames/s of both and the ratio,
# and run's per-stage time shares. Release build.
#   usage: benches/run_vs_anonymize.sh [RUNS] [FACE_MODEL]   (defaults: 3, clean)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
MODEL=${2:-clean}
eval "export $(scripts/setup.sh)"
cargo build --release --locked --quiet
BIN=target/release/clearframe
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
mkdir -p "$W/media"
cp fixtures/media/bikes.mp4 "$W/media/"
FRAMES=$(ffprobe -v error -count_frames -select_streams v:0 -show_entries stream=nb_read_frames -of csv=p=0 "$W/media/bikes.mp4")
echo '{"video_id":"bench","uri":"media/bikes.mp4","owner_id":"a","device_id":"d","placement":"outdoor","captured_at":"2026-10-01T00:00:00Z"}' > "$W/catalog.jsonl"
echo '{"event_id":"g","type":"consent.granted","owner_id":"a","at":"2026-01-01T00:00:00Z","scope":["ml_training"],"devices":["*"],"document":{"uri":"d","blake3":"'"$(printf '0%.0s' $(seq 64))"'"}}' > "$W/ledger.jsonl"
printf '[faces]\nmodel = "%s"\n' "$MODEL" > "$W/config.toml"
anon_flags=(--model "$MODEL"); [ "$MODEL" = fast ] && anon_flags=(--fast)

t_run=(); t_anon=()
secs() { local s=$(date +%s.%N) rc=0; "$@" >/dev/null 2>&1 || rc=$?; [ "$rc" -le 1 ] || { echo "failed: $*" >&2; exit 1; }; awk -v a="$s" -v b="$(date +%s.%N)" 'BEGIN {print b - a}'; }
div() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
for i in $(seq "$RUNS"); do
  a() { t_anon+=("$(secs "$BIN" anonymize "$W/media/bikes.mp4" -o "$W/anon.mp4" "${anon_flags[@]}")"); }
  r() { rm -rf "$W/ds"; t_run+=("$(secs "$BIN" run --catalog "$W/catalog.jsonl" --ledger "$W/ledger.jsonl" --as-of 2026-11-01T00:00:00Z --config "$W/config.toml" --out "$W/ds")"); }
  if [ $((i % 2)) -eq 1 ]; then a; r; else r; a; fi
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
mr=$(median "${t_run[@]}"); ma=$(median "${t_anon[@]}")
echo "clip: bikes.mp4 ($FRAMES frames), face model: $MODEL, runs: $RUNS"
echo "anonymize: median ${ma}s  $(div "$FRAMES" "$ma") frames/s"
echo "run:       median ${mr}s  $(div "$FRAMES" "$mr") frames/s (plus verifier, object detection, JPEG, annotations)"
echo "run per frame vs anonymize per frame: $(div "$mr" "$ma")x the time"
rm -rf "$W/ds"; "$BIN" run --catalog "$W/catalog.jsonl" --ledger "$W/ledger.jsonl" --as-of 2026-11-01T00:00:00Z --config "$W/config.toml" --out "$W/ds" 2>/dev/null | grep -E "frames/s|shares"
