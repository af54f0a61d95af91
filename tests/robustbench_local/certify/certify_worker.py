"""What one process of the sharded-certification test runs (``torchrun ... certify_worker.py JOB``).

``JOB`` is a JSON file ``{"model": <state dict>, "out": <folder>, "tasks": [...]}``; each task
certifies the digits MLP with ``rbl.certify`` and writes ``<out>/<name>.rank<r>.json`` (the
curve's dict). The process writes its pid to ``<out>/pid.rank<r>`` first, so the test can
SIGKILL exactly the processes it started.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn

import robustbench_local as rbl
from robustbench_local import distributed as rdist


def digits_model(path: str) -> nn.Module:
    """The tests' digits MLP with the weights saved at ``path``."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


def digits_test() -> tuple[Tensor, Tensor]:
    """scikit-learn's digits after the first 1200 (not trained on)."""
    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    return x[1200:].contiguous(), torch.tensor(d.target[1200:], dtype=torch.long)


def run_task(model: nn.Module, task: dict) -> dict:
    """One ``rbl.certify`` call of the task's settings; the curve as a dict."""
    curve = rbl.certify(
        model, digits_test(), task["method"], task["eps"], n_examples=task["n_examples"],
        batch_size=task["batch_size"], seed=task.get("seed", 0), progress=False,
        state_dir=task.get("state_dir"), **task.get("kwargs", {}),
    )  # fmt: skip
    return curve.to_dict()


def main(job_path: str) -> None:
    torch.set_num_threads(1)
    job = json.loads(Path(job_path).read_text())
    out = Path(job["out"])
    here = rdist.init_distributed("gloo")
    (out / f"pid.rank{here.rank}").write_text(str(os.getpid()))
    model = digits_model(job["model"])
    for task in job["tasks"]:
        result = {"curve": run_task(model, task), "rank": here.rank, "size": here.size}
        (out / f"{task['name']}.rank{here.rank}.json").write_text(json.dumps(result))
    rdist.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
