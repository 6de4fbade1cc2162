#!/usr/bin/env bash
# Make this checkout runnable on a fresh machine: a Redis server on 127.0.0.1:6379, a virtual
# environment in .venv with torch (kept if one is already there) and the project at the versions
# CI ran (constraints.txt). Idempotent: a second run only checks. It never touches system Python.
# TORCH_INDEX_URL: where torch comes from on a machine with no GPU (see README, Two commands).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

redis_answers() {
  (exec 3<>/dev/tcp/127.0.0.1/6379 && printf 'PING\r\n' >&3 && IFS= read -r -t 2 reply <&3 && [[ $reply == +PONG* ]]) 2>/dev/null
}

if ! redis_answers; then
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "bootstrap: installing redis-server (Debian package)"
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
    else sudo apt-get update -qq && sudo apt-get install -y -qq redis-server >/dev/null; fi
  fi
  echo "bootstrap: starting redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 1 50); do redis_answers && break; sleep 0.1; done
  redis_answers || { echo "bootstrap: redis-server did not start" >&2; exit 1; }
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# A local wheel directory (as on the CI machines) is preferred when present.
[ -d /opt/wheels ] && PIP+=(--find-links /opt/wheels)
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  # Pinned: an unpinned torch on a machine without one pulls several GB of CUDA packages. On a
  # machine with no GPU, TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu takes PyTorch's
  # CPU-only build from its own index; empty, pip's configured index decides.
  echo "bootstrap: installing torch==${TORCH_VERSION:-2.13.0}${TORCH_INDEX_URL:+ from $TORCH_INDEX_URL}"
  "${PIP[@]}" "torch==${TORCH_VERSION:-2.13.0}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi
# The project and its dependencies at the versions CI ran (constraints.txt); skipped when nothing
# it depends on changed since the last install, so a second run is a quick check.
stamp=.venv/.ourvidz-installed
wanted=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ] || ! .venv/bin/python -c "import workers, shared" >/dev/null 2>&1; then
  echo "bootstrap: installing ourvidz-workers into .venv"
  "${PIP[@]}" -c constraints.txt -e ".[test]"
  echo "$wanted" > "$stamp"
fi
