#!/usr/bin/env bash
# The full-size GPU report inside a fixed time budget (a lent GPU's lease): SDXL, then WAN, each a
# `bench all` run with its own deadline, so that a run cut short still leaves the rows it measured
# (bench-reports/h200-2026-11-26 came from this script).
#   OUT=DIR [MODEL_CONFIGS=DIR] [WHEELS=DIR] [SDXL_DEADLINE=330] [WAN_DEADLINE=575] bash scripts/bench-gpu.sh
# WHEELS: a folder of wheels to install first (a machine with torch but without this project's
# dependencies and no network). SDXL_VARIANTS / WAN_VARIANTS pick variants (see bench all --help).
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
# The defaults are what a next lease should measure first (the 2026-11-26 run used
# SDXL_VARIANTS=worker,vae-bf16,cudnn,compile-regional and WAN_VARIANTS=worker,cache,vae-bf16,batched-guidance,compile).
# The compiled UNet blocks go first: SDXL's batch-1 goal hangs on them, and their compile is the
# one step that may not fit what is left of the deadline.
run sdxl "${SDXL_DEADLINE:-330}" --only sdxl --variants "${SDXL_VARIANTS:-compile-regional,defaults,cache,fp8,compile}"
run wan "${WAN_DEADLINE:-575}" --only wan --variants "${WAN_VARIANTS:-defaults,fp8,cache}"
echo "total $(( $(date +%s) - start )) s"
