#!/usr/bin/env bash
# A run report as a browser shows it: a PNG screenshot from headless Chromium (Debian: apt-get install -y chromium).
#   scripts/report_screenshot.sh runs/demo/report.html docs/figures/report-demo.png [WIDTH,HEIGHT]
set -euo pipefail
html=$(realpath "$1")
out=$(realpath -m "$2")
size=${3:-1200,2000}
browser=$(command -v chromium || command -v chromium-browser)
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
# --no-sandbox: root (CI, containers) cannot use Chromium's sandbox; the page is a local file with no script
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$profile" \
  --window-size="$size" --screenshot="$out" "file://$html" >/dev/null 2>&1
test -s "$out"
echo "$out"
