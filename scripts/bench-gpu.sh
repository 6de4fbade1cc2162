#!/usr/bin/env bash
# The full-size GPU report inside a fixed time budget (a lent GPU's lease): SDXL, then WAN, then chat,
# each a `bench all` run that must end by its deadline (seconds from the script's start), so that a
# run cut short still leaves the rows it measured. bench-reports/h200-*/ came from this script.
#   OUT=DIR [MODEL_CONFIGS=DIR] [WHEELS=DIR] [SDXL_DEADLINE=220] [WAN_DEADLINE=450] [CHAT_DEADLINE=540] \
#     bash scripts/bench-gpu.sh
# WHEELS: a folder of wheels to install first (a machine with torch but without this project's
# dependencies and no network). SDXL_VARIANTS / WAN_VARIANTS pick variants (see bench all --help),
# in the order they run: what decides a goal first. A deadline of 0 skips that bench.
# DEVICE=cpu BENCH_ARGS=--tiny runs the same steps on the tiny models (tests/test_bench_all.py).
set -u
cd "$(dirname "$0")/.."
start=$(date +%s)
OUT=${OUT:-bench-gpu}
mkdir -p "$OUT"
if [ -n "${WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 LOG_LEVEL=${LOG_LEVEL:-WARNING} TOKENIZERS_PARALLELISM=false
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
: > "$OUT/machine.txt"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.max.sm,power.limit --format=csv | tee "$OUT/machine.txt"
fi
"$PYTHON" -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'cudnn', torch.backends.cudnn.version())" | tee -a "$OUT/machine.txt"

# The chat bench serves through the fleet's runtime, which needs a Redis. A lease's machine has no
# redis-server: then fakeredis's TCP server (a carried wheel) stands in on a port of its own.
redis_pid=
if [ "${CHAT_DEADLINE:-540}" -gt 0 ] && [ -z "${REDIS_URL:-}" ] && ! command -v redis-server >/dev/null \
   && "$PYTHON" -c "import fakeredis" 2>/dev/null; then
  "$PYTHON" -c "from fakeredis import TcpFakeServer; TcpFakeServer(('127.0.0.1', 6399), server_type='redis').serve_forever()" &
  redis_pid=$!
  export REDIS_URL=redis://127.0.0.1:6399/0
  echo "redis: fakeredis on 127.0.0.1:6399"
fi
trap '[ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null' EXIT

run() {  # NAME DEADLINE_S ARGS...
  local name=$1 left=$(( $2 - ($(date +%s) - start) )); shift 2
  echo "== $name: $left s left"
  [ "$left" -gt 30 ] || return 0
  # shellcheck disable=SC2086  # BENCH_ARGS: words, split on purpose
  timeout -s INT "$left" "$PYTHON" -m workers.cli bench all --device "$DEVICE" --out "$OUT/$name" \
    ${MODEL_CONFIGS:+--model-configs "$MODEL_CONFIGS"} ${BENCH_ARGS:-} "$@" > "$OUT/$name.log" 2>&1
  echo "rc=$? after $(( $(date +%s) - start )) s"
  grep '^|' "$OUT/$name/report.md" 2>/dev/null
}
# Each bench measures its stock baseline first, then the variants in the order given; the first
# exact variant is the reference the others' pixels are compared with. The defaults are what the
# next lease should measure first (the 2026-12-04 run, bench-reports/h200-2026-12-04/, used
# SDXL_VARIANTS=defaults,graphs,compile-regional-graphs and
# WAN_VARIANTS=defaults,graphs,attention-cudnn,attention-sage,attention-flash):
# - SDXL: the eager worker with its bf16 VAE (the reference), the shipped defaults (CUDA graphs: their
#   pixels against eager, which that run could not check), the compiled blocks with graphs, FP8.
#   TORCH_LOGS writes each graph break and recompile to sdxl.log, the INFO log each warm-up shape.
# - WAN: the shipped defaults (a clip and an image), the attention kernel that run did not reach,
#   FP8.
# - chat: 7B with CUDA graphs, against transformers.generate and against the same decoder eager.
LOG_LEVEL=${SDXL_LOG_LEVEL:-INFO} TORCH_LOGS=${SDXL_TORCH_LOGS-recompiles,graph_breaks} \
  run sdxl "${SDXL_DEADLINE:-220}" --only sdxl --variants "${SDXL_VARIANTS:-vae-bf16,defaults,compile-regional-graphs,fp8}"
run wan "${WAN_DEADLINE:-450}" --only wan --variants "${WAN_VARIANTS:-defaults,attention-flash,fp8}"
run chat "${CHAT_DEADLINE:-540}" --only chat
echo "total $(( $(date +%s) - start )) s"
