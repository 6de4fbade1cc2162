#!/usr/bin/env bash
# Start path of a RunPod pod: models onto the volume if missing, a check, then the three workers.
# Each worker announces its proxy URL to the backend once ready (RUNPOD_POD_ID is set by RunPod).
set -euo pipefail
export MODELS_DIR=${MODELS_DIR:-/models}
cd "$(dirname "$0")/.."
if [ ! -f "$MODELS_DIR/.fetched" ]; then
  ourvidz-worker fetch-models --dest "$MODELS_DIR" ${SDXL_CHECKPOINT_URL:+--sdxl "$SDXL_CHECKPOINT_URL"} \
    ${SDXL_CHECKPOINT_SHA256:+--sdxl-sha256 "$SDXL_CHECKPOINT_SHA256"}
  if [ -n "${SDXL_CHECKPOINT_URL:-}" ]; then
    ln -sf "$MODELS_DIR/sdxl/$(basename "${SDXL_CHECKPOINT_URL%%\?*}")" "$MODELS_DIR/sdxl/model.safetensors"
  fi
  touch "$MODELS_DIR/.fetched"
fi
# A fine-tune given by URL runs as a single file; otherwise the SDXL base folder.
if [ -n "${SDXL_CHECKPOINT_URL:-}" ]; then export SDXL_MODEL="$MODELS_DIR/sdxl/model.safetensors"
else export SDXL_MODEL="$MODELS_DIR/sdxl-base-1.0"; fi
ourvidz-worker doctor --pod configs/pod.toml || echo "doctor found problems (above); starting anyway" >&2
exec supervisord -c configs/supervisord.conf
