#!/usr/bin/env bash
# The wheels a lent GPU machine needs to run scripts/bench-gpu.sh: it has Python 3.12 with torch,
# Triton, numpy, safetensors, tokenizers, accelerate and httpx, but not this project's other
# dependencies, and no network. Downloads them (about 30 MB) into DIR for `WHEELS=DIR`:
#   bash scripts/lease-wheels.sh .whl   # then carry .whl (and a copy of ../shared/model-configs)
# torchao is for FP8 and is built per torch release: 0.18 matches the lease's torch 2.11.
# sageattention is WAN_ATTENTION=sage; fakeredis (with lupa) stands in for Redis in the chat bench.
set -euo pipefail
DIR=${1:?usage: scripts/lease-wheels.sh DIR}
mkdir -p "$DIR"
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$DIR" \
  diffusers==0.42.1 transformers==5.24.0 pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 \
  annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 python-dotenv structlog==26.1.0 \
  redis==8.1.0 ftfy wcwidth compel==2.5.1 fastapi==0.165.0 starlette==1.10.0 annotated-doc==0.0.7 \
  opentelemetry-api uvicorn==0.54.0 importlib-metadata prometheus-client torchao==0.18.0 \
  sageattention==1.0.6 fakeredis lupa
du -sh "$DIR"
