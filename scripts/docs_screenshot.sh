#!/usr/bin/env bash
# Screenshots of the documentation site, taken with headless Chromium from one strict build.
#   bash scripts/docs_screenshot.sh [OUT.png [PAGE]]   one page (default: the front page to
#                                                      benchmarks/results/docs_front_page.png; PAGE e.g. methods.html)
#   bash scripts/docs_screenshot.sh --all              the four of benchmarks/results: docs_front_page.png,
#                                                      docs_methods.png, docs_results.png, docs_config_keys.png
#   PY       the interpreter with mkdocs installed (default .venv/bin/python; make docs installs it)
#   WIDTH, HEIGHT  the window size in pixels (default 1280 x 900)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [ "${1:-}" = "--all" ]; then
    shots=("benchmarks/results/docs_front_page.png index.html" "benchmarks/results/docs_methods.png methods.html"
           "benchmarks/results/docs_results.png results.html" "benchmarks/results/docs_config_keys.png reference/config.html")
else
    shots=("${1:-benchmarks/results/docs_front_page.png} ${2:-index.html}")
fi
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
for shot in "${shots[@]}"; do
    read -r OUT PAGE <<<"$shot"
    mkdir -p "$(dirname "$OUT")"
    case "$OUT" in /*) target=$OUT ;; *) target=$PWD/$OUT ;; esac
    rm -rf "$site/.chromium-profile"  # a fresh profile: nothing cached from the previous page
    "$CHROMIUM" --headless --no-sandbox --disable-gpu --no-first-run --hide-scrollbars \
        --user-data-dir="$site/.chromium-profile" --window-size="${WIDTH:-1280},${HEIGHT:-900}" \
        --virtual-time-budget=5000 --screenshot="$target" "http://127.0.0.1:$port/$PAGE" >/dev/null 2>&1
    echo "docs_screenshot: wrote $OUT ($PAGE)"
done
