"""``benchmarks/gpu.py``: exit 0 with a message without CUDA; no MLflow, Hydra or ART imported."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu.py"

# Runs the code given after it with imports of these packages (and tqdm, optionally) refused.
BLOCKER = """
import runpy
import sys
BLOCKED = set(sys.argv[1].split(","))
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Refuse())
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
FORBIDDEN = "mlflow,hydra,omegaconf,art,sklearn,matplotlib"


def _run(code_file: Path, blocked: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", BLOCKER, blocked, str(code_file), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a CPU-only machine")
def test_without_cuda_it_says_so_and_exits_0():
    proc = _run(SCRIPT, FORBIDDEN)
    assert proc.returncode == 0, proc.stderr
    assert f"torch {torch.__version__}" in proc.stdout
    assert "no CUDA device here" in proc.stdout and "nothing to measure" in proc.stdout


@pytest.mark.slow
@pytest.mark.distributed
def test_what_it_imports_pulls_in_no_mlflow_hydra_or_art(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(REPO / 'benchmarks')!r})\n"
        "import gpu\n"
        "gpu._stand_in_tqdm()\n"
        "import attacks, defenses, robustbench_local as rbl\n"
        "from robustbench_local import benchmark, evaluate, models, distributed, state\n"
        "from defenses import Trainer\n"
        "import tqdm.auto\n"
        "kind = 'real' if hasattr(tqdm.auto, '__file__') else 'stand-in'\n"
        "print(kind, gpu.imported_forbidden())\n"
    )
    proc = _run(probe, FORBIDDEN + ",tqdm")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("stand-in []"), proc.stdout


def _gpu_module():
    spec = importlib.util.spec_from_file_location("gpu_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_cpu_cuda_agreement_path_on_cpu():
    gpu = _gpu_module()
    lines, ok = gpu.agreement(torch.device("cpu"))
    assert ok and "max gap 0.0 points, 100.0% same per-sample -> OK" in lines[0]
    model, x, y = gpu.small_task()
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    assert acc > 0.9  # a model with a curve worth comparing
