#!/usr/bin/env bash
# `clearframe run` end to end (select, decode, faces, verifier, object detection, JPEG, COCO /
# Label Studio / CVAT annotations, manifest) against deface 1.5.0 on the face-evaluation clips
# (benches/face_clips.sh), alternating, RUNS times each; prints per clip and pooled frames/s of
# both and the ratio. Every frame is sampled (no --fps), as deface processes every frame.
#
#   benches/run_vs_deface.sh                  RUNS=5 CONFIG=my.toml benches/run_vs_deface.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3}
CACHE=${CLEARFRAME_CACHE:-$HOME/.cache/clearframe}
CLIPS=$CACHE/face-eval-clips
CF=$ROOT/target/release/clearframe
PY=$("$ROOT/scripts/setup-consumers.sh" deface)
DEFACE=$(dirname "$PY")/deface
eval "export $("$ROOT/scripts/setup.sh")"
[ -x "$CF" ] && [ -z "${REBUILD:-}" ] || (cd "$ROOT" && cargo build --release --bin clearframe)
"$ROOT/benches/face_clips.sh" "$CLIPS"
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
zero=$(printf '0%.0s' $(seq 64))
echo '{"event_id":"g","type":"consent.granted","owner_id":"a","at":"2026-01-01T00:00:00Z","scope":["ml_training"],"devices":["*"],"document":{"uri":"d","blake3":"'"$zero"'"}}' > "$W/ledger.jsonl"
cfg=(); [ -n "${CONFIG:-}" ] && cfg=(--config "$CONFIG")
secs() { local s rc=0; s=$(date +%s.%N); "$@" >"$W/last.log" 2>&1 || rc=$?; [ "$rc" -le 1 ] || { echo "failed ($rc): $*" >&2; exit 1; }; awk -v a="$s" -v b="$(date +%s.%N)" 'BEGIN {print b - a}'; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
printf '%-10s %6s | %10s %8s | %6s | %7s %8s\n' clip frames deface_fps run_fps ratio emitted withheld
tf=0; td=0; tr=0
for clip in "$CLIPS"/*.mp4; do
  name=$(basename "$clip" .mp4)
  frames=$(ffprobe -v error -count_frames -select_streams v:0 -show_entries stream=nb_read_frames -of csv=p=0 "$clip")
  mkdir -p "$W/media"; cp "$clip" "$W/media/$name.mp4"
  echo '{"video_id":"'"$name"'","uri":"media/'"$name"'.mp4","owner_id":"a","device_id":"d","placement":"outdoor","captured_at":"2026-10-01T00:00:00Z"}' > "$W/catalog.jsonl"
  d=(); r=()
  for i in $(seq "$RUNS"); do
    dd() { d+=("$(secs "$DEFACE" "$clip" -o "$W/d.mp4" --ep CPUExecutionProvider)"); }
    rr() { rm -rf "$W/ds"; r+=("$(secs "$CF" run --catalog "$W/catalog.jsonl" --ledger "$W/ledger.jsonl" --as-of 2026-11-01T00:00:00Z "${cfg[@]}" --out "$W/ds")"); cp "$W/last.log" "$W/run.log"; }
    if [ $((i % 2)) -eq 1 ]; then dd; rr; else rr; dd; fi
  done
  md=$(median "${d[@]}"); mr=$(median "${r[@]}")
  # What the run did with the clip (its summary line): frames emitted and withheld.
  summary=$(grep -E '^dataset .* frames, ' "$W/run.log" || { echo "run did not finish:" >&2; tail -5 "$W/run.log" >&2; exit 1; })
  done_frames=$(sed -E 's/.*: ([0-9]+) frames, .*/\1/' <<<"$summary")
  withheld=$(sed -E 's/.* ([0-9]+) withheld by the verifier.*/\1/' <<<"$summary")
  tf=$((tf + frames)); td=$(awk -v a="$td" -v b="$md" 'BEGIN {print a + b}'); tr=$(awk -v a="$tr" -v b="$mr" 'BEGIN {print a + b}')
  awk -v n="$name" -v f="$frames" -v d="$md" -v r="$mr" -v e="$done_frames" -v w="${withheld:-0}" \
    'BEGIN {printf "%-10s %6d | %10.2f %8.2f | %5.2fx | %7d %8d\n", n, f, f / d, f / r, d / r, e, w}'
done
awk -v f="$tf" -v d="$td" -v r="$tr" 'BEGIN {printf "%-10s %6d | %10.2f %8.2f | %5.2fx\n", "pooled", f, f / d, f / r, d / r}'
echo "runs per tool and clip: $RUNS (median wall time); run config: ${CONFIG:-defaults}"
