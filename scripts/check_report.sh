#!/usr/bin/env bash
# Renders a dataset's report.html in headless Chromium (Debian `chromium`, installed with apt-get
# when missing) and checks that it rendered: a PNG screenshot is written and is not blank.
#   usage: scripts/check_report.sh DATASET_DIR [SCREENSHOT.png]
# The page must need nothing from the network: Chromium runs with networking features off and a
# throw-away profile. Exits non-zero, saying why, when the page cannot be rendered.
set -euo pipefail

dir=${1:?usage: check_report.sh DATASET_DIR [SCREENSHOT.png]}
dir=$(cd "$dir" && pwd)
version=$(sed -n 's/^  "version": "\([0-9a-f]\{16\}\)",$/\1/p' "$dir/dataset.json")
[ -n "$version" ] || { printf 'check_report: no version in %s/dataset.json\n' "$dir" >&2; exit 1; }
report=$dir/versions/$version/report.html
out=${2:-$dir/../report.png}
log() { printf 'check_report: %s\n' "$*" >&2; }

[ -f "$report" ] || { log "no report at $report"; exit 1; }

if ! command -v chromium >/dev/null 2>&1; then
  log "installing chromium (apt)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
rm -f "$out"
timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
  --disable-component-update --disable-sync --no-first-run --user-data-dir="$profile" \
  --hide-scrollbars --window-size=1280,2400 --virtual-time-budget=5000 \
  --screenshot="$out" "file://$report" >"$profile/chromium.log" 2>&1 || {
  log "chromium failed:"; cat "$profile/chromium.log" >&2; exit 1; }

[ -s "$out" ] || { log "chromium wrote no screenshot"; cat "$profile/chromium.log" >&2; exit 1; }
# A blank page compresses to almost nothing; a rendered report with frames does not.
size=$(stat -c %s "$out")
if [ "$size" -lt 20000 ]; then
  log "screenshot $out is only $size bytes: the page looks blank"; exit 1
fi
log "rendered $report -> $out ($size bytes)"
echo "$out"
