#!/usr/bin/env bash
# A screenshot of the documentation site's front page, taken with headless Chromium.
#   bash scripts/docs_screenshot.sh [OUT.png]      (default benchmarks/results/docs_front_page.png)
#   PY       the interpreter with mkdocs installed (default .venv/bin/python; make docs installs it)
#   WIDTH, HEIGHT  the window size in pixels (default 1280 x 900)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-benchmarks/results/docs_front_page.png}
CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}
if [ -z "$CHROMIUM" ]; then
    echo "docs_screenshot: no Chromium found; install it (apt install chromium) or set CHROMIUM=/path/to/it" >&2
    exit 1
fi
site=$(mktemp -d)
trap 'rm -rf "$site"; [ -n "${server:-}" ] && kill "$server" 2>/dev/null || true' EXIT
NO_MKDOCS_2_WARNING=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m mkdocs build --strict --quiet --site-dir "$site"
# served over HTTP, as a reader would see it (the site's scripts do not all run from file://)
port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$PY" -m http.server "$port" --bind 127.0.0.1 --directory "$site" >/dev/null 2>&1 &
server=$!
for _ in $(seq 50); do
    "$PY" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/')" 2>/dev/null && break
    sleep 0.1
done
mkdir -p "$(dirname "$OUT")"
case "$OUT" in /*) target=$OUT ;; *) target=$PWD/$OUT ;; esac
"$CHROMIUM" --headless --no-sandbox --disable-gpu --no-first-run --hide-scrollbars \
    --user-data-dir="$site/.chromium-profile" --window-size="${WIDTH:-1280},${HEIGHT:-900}" \
    --virtual-time-budget=5000 --screenshot="$target" "http://127.0.0.1:$port/" >/dev/null 2>&1
echo "docs_screenshot: wrote $OUT"
