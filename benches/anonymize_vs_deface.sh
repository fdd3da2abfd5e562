#!/usr/bin/env bash
# Times `clearframe anonymize` (release build) against deface 1.5.0 on the same clips in the same
# run, alternating which goes first, several runs each, and reports medians; then counts the faces
# the verifier (RetinaFace, `clearframe anonymize --count-faces`) still finds in each output and in
# the input, and prints frames/s, the speed ratio, recall (1 - faces left / faces in input) and
# peak memory of both.
#
#   benches/anonymize_vs_deface.sh [CLIP...]        (default: bikes.mp4 and carphone_pristine.mp4)
#   RUNS=5 CF_ARGS="--fast" benches/anonymize_vs_deface.sh
#
# deface is installed once into ~/.cache/clearframe/deface-venv (PyPI: deface==1.5.0,
# onnxruntime==1.32.0) and run as `deface IN -o OUT --ep CPUExecutionProvider` (threshold 0.2,
# full-resolution detection, its defaults). Compare figures only within one run of this script:
# the machine is shared.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3}
CF_ARGS=${CF_ARGS:---fast}
CACHE=${CLEARFRAME_CACHE:-$HOME/.cache/clearframe}
VENV=$CACHE/deface-venv
CF=$ROOT/target/release/clearframe
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

if [ $# -gt 0 ]; then CLIPS=("$@"); else
  CLIPS=("$ROOT/fixtures/media/bikes.mp4" "$ROOT/fixtures/media/carphone_pristine.mp4")
fi

if [ ! -x "$VENV/bin/deface" ]; then
  echo "bench: installing deface 1.5.0 into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q deface==1.5.0 onnxruntime==1.32.0
fi
if [ ! -x "$CF" ] || [ -n "${REBUILD:-}" ]; then
  (cd "$ROOT" && cargo build --release --bin clearframe)
fi

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
# timed NAME CMD...: appends "wall_s peak_kb" to $OUT/NAME.times
timed() {
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$OUT/t" "$@" >"$OUT/$name.log" 2>&1 || { echo "bench: $name failed:" >&2; tail -5 "$OUT/$name.log" >&2; exit 1; }
  cat "$OUT/t" >>"$OUT/$name.times"
}
faces() { "$CF" anonymize --count-faces "$1" 2>/dev/null | sed -E 's/.*"faces":([0-9]+).*/\1/'; }

printf '%-24s %6s | %8s %8s %7s | %8s %8s %7s | %6s | %6s %6s %6s | %7s %7s\n' \
  clip frames deface_s fps MiB cf_s fps MiB ratio in left_d left_c rec_d rec_c
for clip in "${CLIPS[@]}"; do
  name=$(basename "$clip" .mp4)
  frames=$(ffprobe -v error -count_frames -select_streams v:0 -show_entries stream=nb_read_frames -of csv=p=0 "$clip")
  rm -f "$OUT"/*.times
  for run in $(seq 1 "$RUNS"); do
    if [ $((run % 2)) = 1 ]; then order="deface cf"; else order="cf deface"; fi
    for who in $order; do
      if [ "$who" = deface ]; then
        timed deface "$VENV/bin/deface" "$clip" -o "$OUT/$name.deface.mp4" --ep CPUExecutionProvider
      else
        # shellcheck disable=SC2086
        timed cf "$CF" anonymize "$clip" -o "$OUT/$name.cf.mp4" $CF_ARGS
      fi
    done
  done
  d_s=$(cut -d' ' -f1 "$OUT/deface.times" | median); c_s=$(cut -d' ' -f1 "$OUT/cf.times" | median)
  d_kb=$(cut -d' ' -f2 "$OUT/deface.times" | sort -n | tail -1); c_kb=$(cut -d' ' -f2 "$OUT/cf.times" | sort -n | tail -1)
  f_in=$(faces "$clip"); f_d=$(faces "$OUT/$name.deface.mp4"); f_c=$(faces "$OUT/$name.cf.mp4")
  awk -v n="$name" -v fr="$frames" -v ds="$d_s" -v cs="$c_s" -v dk="$d_kb" -v ck="$c_kb" \
      -v fi="$f_in" -v fd="$f_d" -v fc="$f_c" 'BEGIN {
    rd = fi > 0 ? 1 - fd / fi : 1; rc = fi > 0 ? 1 - fc / fi : 1;
    printf "%-24s %6d | %8.2f %8.2f %7.0f | %8.2f %8.2f %7.0f | %5.2fx | %6d %6d %6d | %7.3f %7.3f\n",
      n, fr, ds, fr / ds, dk / 1024, cs, fr / cs, ck / 1024, ds / cs, fi, fd, fc, rd, rc }'
  grep -h "anonymized" "$OUT/cf.log" | sed -E 's/^.*INFO /  clearframe (last run): /' | tail -1
done
echo "runs per clip: $RUNS (medians of wall time; MiB = peak RSS); clearframe args: $CF_ARGS"
echo "in/left: faces RetinaFace finds in the input / in deface's (d) and clearframe's (c) output"
