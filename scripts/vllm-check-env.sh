#!/usr/bin/env bash
# A folder from which the real vLLM package imports on a machine with no GPU, so the chat worker's
# vLLM adapter is tested against vLLM's own classes (SamplingParams, AsyncEngineArgs, AsyncLLM,
# RequestOutput) rather than a stand-in: tests/test_vllm_adapter.py runs with it, .ci/run builds it.
# The project's .venv never gets vllm (it pins its own CUDA build of torch): this is vLLM's Python
# sources from the wheel (no compiled kernels) plus the pure-Python modules its imports need,
# installed without their dependencies. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VLLM_VERSION=${VLLM_VERSION:-0.33.0}
dest=.cache/vllm-check-$VLLM_VERSION
[ -f "$dest/ready" ] && exit 0
PY=${PYTHON:-.venv/bin/python}
rm -rf "$dest" && mkdir -p "$dest"
wheel=$(mktemp -d)
trap 'rm -rf "$wheel"' EXIT
echo "vllm-check-env: vllm==$VLLM_VERSION sources into $dest"
quiet() { "$@" 2>&1 | { grep -v '^WARNING: Location' || true; }; }  # this machine's pip mirror notes
quiet "$PY" -m pip download --quiet --disable-pip-version-check --no-deps "vllm==$VLLM_VERSION" -d "$wheel"
"$PY" - "$wheel"/vllm-*.whl "$dest/src" <<'PYTHON'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    wheel.extractall(sys.argv[2], [n for n in wheel.namelist() if not n.endswith(".so")])
PYTHON
# What `import vllm.v1.engine.async_llm` needs beyond the project's own packages (found by trying).
quiet "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --target "$dest/deps" \
  msgspec cbor2 pyzmq aiohttp multidict yarl propcache aiohappyeyeballs aiosignal frozenlist openai-harmony \
  cloudpickle pybase64 cachetools uvloop py-cpuinfo xgrammar apache-tvm-ffi partial-json-parser llguidance \
  blake3
touch "$dest/ready"
