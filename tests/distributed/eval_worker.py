"""What one process of the sharded-evaluation tests runs (``torchrun ... eval_worker.py JOB``).

``JOB`` is a JSON file: ``{"model": <state dict path>, "out": <folder>, "tasks": [...]}``.
Each task (``curve``, ``seam``, ``gate``, ``benchmark``, ``experiment``, ``collectives``)
evaluates the digits MLP the test saved (``experiment``: the model its config builds) and writes
``<out>/<task name>.rank<r>.json``, so the test can check that every rank returned the same
result and that it equals a single-process run. The process writes its pid to
``<out>/pid.rank<r>`` first, so a test can SIGKILL exactly the processes it started.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn

from attacks.pgd import PGD
from attacks.result import Cost
from robustbench_local import distributed as rdist
from robustbench_local.engine import Batch, BatchOutput, Evaluation, Progress, run_evaluation

DIGITS_TEST = slice(1200, None)


def digits_model(path: str | None = None) -> nn.Module:
    """The architecture of ``tests/conftest.py``'s ``train_digits_mlp`` (weights from ``path``)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    if path is not None:
        model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


def digits_test() -> tuple[Tensor, Tensor]:
    """scikit-learn's digits after the first 1200 (the samples the model did not train on)."""
    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(d.target, dtype=torch.long)
    return x[DIGITS_TEST].contiguous(), y[DIGITS_TEST].contiguous()


class RecordingPGD(PGD):
    """PGD that also records a probe draw of every (eps, sample id) it attacks.

    The probe uses the attack's own random context (seed, sample id, budget scope), so equal
    records mean equal random draws; ``delay`` (seconds per call of ``run``, not part of the
    configuration) makes an evaluation last long enough to be killed in the middle.
    """

    name = "pgd"

    def __init__(self, *args: Any, delay: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._delay = float(delay)
        self._records: dict[str, list[float]] = {}

    def run(self, ctx, x, y, eps):
        probe = ctx.uniform(None, (4,), ("probe",))
        for sid, row in zip(ctx.ids.tolist(), probe.tolist(), strict=True):
            self._records[f"{eps!r}:{sid}"] = row
        if self._delay:
            time.sleep(self._delay)
        return super().run(ctx, x, y, eps)

    @property
    def records(self) -> dict[str, list[float]]:
        return dict(self._records)


def curve_task(model: nn.Module, task: dict[str, Any]) -> dict[str, Any]:
    from robustbench_local.evaluate import robustness_curve

    attack = RecordingPGD(steps=task.get("steps", 10), delay=task.get("delay", 0.0))
    curve = robustness_curve(
        model,
        digits_test(),
        {"pgd": attack},
        task["eps"],
        n_examples=task.get("n_examples"),
        batch_size=task["batch_size"],
        state_dir=task.get("state_dir"),
        progress=False,
    )
    records = rdist.gather_objects(attack.records)
    merged = {k: v for part in records for k, v in part.items()}
    return {"curve": curve.to_dict(), "records": merged}


class TransformAccuracy(Evaluation):
    """A per-sample evaluation that is not an attack: accuracy under fixed input transforms.

    Rows: ``dim`` (inputs scaled by 0.7) and ``noisy`` (Gaussian noise of std 0.3 drawn from
    (seed, sample id), so any batch, rank or resumed call gives each sample the same draw).
    ``delay`` (seconds per batch, not part of the configuration) makes a run long enough to
    be killed in the middle.
    """

    kind = "transform_accuracy"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = float(delay)

    def rows(self) -> list[str]:
        return ["dim", "noisy"]

    def config(self) -> dict[str, Any]:
        return {"dim": 0.7, "noise": 0.3}

    def sample_shapes(self, n: int) -> dict[str, tuple[int, ...]]:
        return {"correct": (2, n), "margin": (n,)}

    def evaluate(self, model: nn.Module, batch: Batch, progress: Progress) -> BatchOutput:
        from attacks.rng import normal

        time.sleep(self.delay)
        out, cost = [], {}
        with torch.no_grad():
            with progress.row("dim"):
                logits = model(batch.x * 0.7)
                out.append(logits.argmax(1) == batch.y)
                cost["dim"] = Cost(0.0, len(batch.y), 0)
            with progress.row("noisy"):
                noise = normal(batch.seed, batch.ids, ("noise",), batch.x.shape[1:])
                noisy = model((batch.x + 0.3 * noise.to(batch.x)).clamp(0, 1))
                out.append(noisy.argmax(1) == batch.y)
                cost["noisy"] = Cost(0.0, len(batch.y), 0)
        top2 = noisy.topk(2, dim=1).values
        return BatchOutput({"correct": torch.stack(out), "margin": top2[:, 0] - top2[:, 1]}, cost)


def seam_task(model: nn.Module, task: dict[str, Any]) -> dict[str, Any]:
    """The engine running :class:`TransformAccuracy` (no attack code involved)."""
    run = run_evaluation(
        TransformAccuracy(task.get("delay", 0.0)),
        model,
        digits_test(),
        n_examples=task.get("n_examples"),
        batch_size=task["batch_size"],
        seed=task.get("seed", 0),
        state_dir=task.get("state_dir"),
        progress=False,
    )
    return {
        "indices": run.indices.tolist(),
        "correct": run.samples["correct"].int().tolist(),
        "margin": run.samples["margin"].tolist(),
        "cost": {k: c.to_dict() for k, c in run.cost.items()},
        "n_resumed": run.n_resumed,
    }


def gate_task(model: nn.Module, task: dict[str, Any]) -> dict[str, Any]:
    from robustbench_local.gates.runner import run_gate
    from robustbench_local.gates.spec import GateSpec

    spec = GateSpec.from_kwargs("digits_gate", task["spec"])
    result = run_gate(spec, model, data=digits_test())
    doc = result.to_dict()
    doc.pop("wall_time", None)
    return {"verdict": result.verdict, "result": doc}


def benchmark_task(model: nn.Module, task: dict[str, Any]) -> dict[str, Any]:
    from robustbench_local.benchmark import benchmark

    card = benchmark(model, **task["kwargs"]).to_dict()
    for volatile in ("created", "cost"):
        card.pop(volatile, None)
    return {"card": card}


def experiment_task(model: nn.Module, task: dict[str, Any]) -> dict[str, Any]:
    """The experiments' evaluation step (``pipeline.evaluate``) on the composed config."""
    from hydra import compose, initialize_config_module

    import experiments  # noqa: F401  (resolvers)
    from experiments import pipeline

    with initialize_config_module(config_module="experiments.conf", version_base="1.3"):
        cfg = compose("config", overrides=task["overrides"])
    data = pipeline.load_data(cfg)
    net = pipeline.build_model(cfg, data, torch.device("cpu"))
    curves = pipeline.evaluate(cfg, net, data, torch.device("cpu"))
    return {"curves": {norm: c.to_dict() for norm, c in curves.items()}}


def collectives_task(model: nn.Module, task: dict[str, Any]) -> dict[str, Any]:
    """gather_rows with uneven lengths, decide_once raising on rank 0, check_same mismatch."""
    here = rdist.world()
    rows = torch.arange(here.rank + 1, dtype=torch.float64).unsqueeze(1) + 10 * here.rank
    out: dict[str, Any] = {"rows": rdist.gather_rows(rows).squeeze(1).tolist()}
    flags = rdist.gather_rows(torch.tensor([here.rank % 2 == 0] * (2 - here.rank)))
    out["bools"] = flags.tolist()
    out["decided"] = rdist.decide_once(lambda: f"rank {rdist.rank()} decided")

    def refuse() -> None:
        raise ValueError("rank 0 refuses")

    for name, call in (
        ("decide_error", lambda: rdist.decide_once(refuse)),
        ("check_same_error", lambda: rdist.check_same("the rank", here.rank)),
    ):
        try:
            call()
            out[name] = None
        except ValueError as err:
            out[name] = str(err)
    rdist.check_same("nothing", 1)
    return out


TASKS = {
    "curve": curve_task,
    "gate": gate_task,
    "benchmark": benchmark_task,
    "collectives": collectives_task,
    "experiment": experiment_task,
    "seam": seam_task,
}


def main(job_path: str) -> None:
    torch.set_num_threads(1)
    job = json.loads(Path(job_path).read_text())
    out = Path(job["out"])
    here = rdist.init_distributed("gloo")
    (out / f"pid.rank{here.rank}").write_text(str(os.getpid()))
    model = digits_model(job["model"])
    for task in job["tasks"]:
        result = TASKS[task["kind"]](model, task)
        result["world"] = {"rank": here.rank, "size": here.size, "backend": here.backend}
        (out / f"{task['name']}.rank{here.rank}.json").write_text(json.dumps(result))
    rdist.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
