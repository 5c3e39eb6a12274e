"""scripts/gpu_check.sh, the learner's CUDA checks without Ray or vLLM, run here on the CPU as a GPU machine runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_passes_on_the_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--cpu"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    checks = json.loads((tmp_path / "report.json").read_text())["checks"]
    assert len(checks) == 25 and all(passed for _, passed, _ in checks)
    assert "FAIL" not in done.stdout and done.stdout.count("PASS") == 25
    assert "memory peak per phase" in done.stdout
