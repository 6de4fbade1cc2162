"""The vLLM adapter against the real vllm package (its Python sources, imported without CUDA).

vLLM cannot be installed in the project's environment (it pins its own CUDA build of torch), so
scripts/vllm-check-env.sh puts its sources and the light modules its imports need in .cache/,
and tests/vllm_adapter_check.py runs there. `.ci/run` builds that folder, so CI runs this test;
a bare `pytest` without it says how to build it. Running a model needs a GPU: not done here.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECK_ENV = ROOT / ".cache" / f"vllm-check-{os.environ.get('VLLM_VERSION', '0.33.0')}"


@pytest.mark.skipif(not (CHECK_ENV / "ready").exists(), reason="run scripts/vllm-check-env.sh first (.ci/run does)")
def test_the_adapter_builds_real_vllm_objects_and_reads_real_outputs():
    path = os.pathsep.join([str(CHECK_ENV / "src"), str(CHECK_ENV / "deps"), str(ROOT)])
    done = subprocess.run([sys.executable, "-m", "tests.vllm_adapter_check"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": path}, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "vllm adapter matches vllm" in done.stdout
