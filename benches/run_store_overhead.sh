#!/usr/bin/env bash
# The pipeline's store overhead: the same `clearframe run` (release build) on the demo catalog
# with the dataset written to a local folder, to S3 (a local `s3s-fs` on loopback), and with
# catalog, ledger and clips read from that S3 too; alternating the order, RUNS runs each (default
# 3). Prints each run's wall time, the medians and the ratios to the local run.
#
#   benches/run_store_overhead.sh
#   RUNS=5 FPS=8 benches/run_store_overhead.sh
#
# s3s-fs comes from scripts/install-s3s.sh ($CLEARFRAME_S3S_BIN, else
# ${CLEARFRAME_CACHE:-~/.cache/clearframe}/bin/s3s-fs). Only 127.0.0.1 is used. The machine is
# shared: compare figures only within one run of this script.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3}
FPS=${FPS:-4}
AS_OF=2026-11-01T00:00:00Z
CACHE=${CLEARFRAME_CACHE:-$HOME/.cache/clearframe}
S3S=${CLEARFRAME_S3S_BIN:-$CACHE/bin/s3s-fs}
CF=$ROOT/target/release/clearframe
WORK=$(mktemp -d)
S3S_PID=
cleanup() {
  if [ -n "$S3S_PID" ]; then kill "$S3S_PID" 2>/dev/null || true; wait "$S3S_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

if [ ! -x "$S3S" ]; then "$ROOT/scripts/install-s3s.sh" >&2; fi
if [ ! -x "$CF" ] || [ -n "${REBUILD:-}" ]; then
  (cd "$ROOT" && cargo build --release --bin clearframe)
fi

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export AWS_ACCESS_KEY_ID=clearframe-bench AWS_SECRET_ACCESS_KEY=clearframe-bench-secret AWS_REGION=us-east-1
unset AWS_PROFILE AWS_SESSION_TOKEN AWS_ENDPOINT_URL
BUCKET=bench
mkdir -p "$WORK/s3/$BUCKET/input"
# The inputs are placed straight into the server's data folder (s3s-fs serves files as objects).
cp "$ROOT/fixtures/demo-catalog.jsonl" "$ROOT/fixtures/demo-ledger.jsonl" "$WORK/s3/$BUCKET/input/"
cp -r "$ROOT/fixtures/media" "$ROOT/fixtures/bad" "$WORK/s3/$BUCKET/input/"
"$S3S" --host 127.0.0.1 --port "$PORT" --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" \
  "$WORK/s3" >"$WORK/s3s.log" 2>&1 &
S3S_PID=$!
for _ in $(seq 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
  sleep 0.1
done

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
# one MODE N: one run; appends its wall seconds to $WORK/MODE.times
one() {
  local mode=$1 n=$2 in out
  case $mode in
    local) in=$ROOT/fixtures; out=$WORK/local-$n ;;
    s3-out) in=$ROOT/fixtures; out=s3://$BUCKET/out-$n ;;
    s3-all) in=s3://$BUCKET/input; out=s3://$BUCKET/all-$n ;;
  esac
  local start end rc=0
  start=$(date +%s.%N)
  "$CF" run --as-of "$AS_OF" --fps "$FPS" --s3-endpoint "http://127.0.0.1:$PORT" \
    --catalog "$in/demo-catalog.jsonl" --ledger "$in/demo-ledger.jsonl" --out "$out" >"$WORK/$mode-$n.log" 2>&1 || rc=$?
  end=$(date +%s.%N)
  # The demo has a corrupt clip by design: exit 1 is the expected outcome.
  if [ "$rc" != 1 ]; then echo "bench: $mode run $n exited $rc:" >&2; tail -5 "$WORK/$mode-$n.log" >&2; exit 1; fi
  local t; t=$(echo "$end - $start" | bc -l)
  echo "$t" >>"$WORK/$mode.times"
  printf '%-7s run %d: %6.2f s  %s\n' "$mode" "$n" "$t" "$(grep -o 'dataset [0-9a-f]\{12\}' "$WORK/$mode-$n.log")"
}

MODES=(local s3-out s3-all)
for n in $(seq 1 "$RUNS"); do
  # Rotate which mode goes first.
  for i in 0 1 2; do one "${MODES[$(((i + n - 1) % 3))]}" "$n"; done
done
# The S3 datasets must be the local one, byte for byte.
diff -r "$WORK/local-1" "$WORK/s3/$BUCKET/out-1" >/dev/null && diff -r "$WORK/local-1" "$WORK/s3/$BUCKET/all-1" >/dev/null \
  || { echo "bench: the S3 datasets differ from the local one" >&2; exit 1; }
local_m=$(median <"$WORK/local.times")
echo "frames per run: $(grep -o '[0-9]* frames from' "$WORK/local-1.log" | cut -d' ' -f1); runs per mode: $RUNS"
for mode in "${MODES[@]}"; do
  m=$(median <"$WORK/$mode.times")
  printf 'median %-7s %6.2f s   ratio to local %.3f\n' "$mode" "$m" "$(echo "$m / $local_m" | bc -l)"
done
