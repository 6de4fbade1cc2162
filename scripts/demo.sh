#!/usr/bin/env bash
# The fleet's main job on the embedded defaults, no GPU and no cloud account: a `sim` worker
# serves an SDXL image job and a WAN video job pushed exactly as the backend pushes them, and
# the outputs land in ./outputs with the callbacks in ./outputs/callbacks.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
. .venv/bin/activate
started=$(mktemp)  # the closing list shows this run's files only
trap 'rm -f "$started"' EXIT
export LOG_LEVEL=${LOG_LEVEL:-WARNING}

port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ourvidz-worker run sim --device cpu --gpu-seconds 0.5 --health-port "$port" &
worker=$!
trap 'kill -TERM $worker 2>/dev/null || true; rm -f "$started"' EXIT

echo "== submitting an SDXL job (3 images) and a WAN video job, and waiting for their results"
ourvidz-worker submit sdxl_image_fast "a lighthouse at dawn, oil painting" --num-images 3 --seed 42 --wait --timeout 120
ourvidz-worker submit video_fast "waves rolling onto a beach" --seed 7 --wait --timeout 120
echo "== health: $(python -c "import urllib.request as u; print(u.urlopen('http://127.0.0.1:$port/health').read().decode())")"

kill -TERM $worker && wait $worker
trap 'rm -f "$started"' EXIT
echo "== files this run wrote under ./outputs"
find outputs -type f -newer "$started" | sort
