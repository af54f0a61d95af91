"""The data, the model and one process of the sharded corruption-curve test.

``torchrun ... curve_worker.py JOB`` runs ``corruption_curve`` with the keyword arguments of
``JOB`` (a JSON file ``{"out": <folder>, "kwargs": {...}}``) and writes
``<out>/curve.rank<r>.json``; the process writes its pid to ``<out>/pid.rank<r>`` first, so
the test can SIGKILL exactly the processes it started. The test module imports this file for
:func:`upscaled_digits` and :class:`Brightness`, so both sides evaluate the same thing.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor, nn


def upscaled_digits(size: int = 28, channels: int = 1, n: int = 120) -> tuple[Tensor, Tensor]:
    """scikit-learn's held-out digits upscaled to ``size`` pixels; labels mod 2 (two classes)."""
    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)[1200 : 1200 + n]
    y = torch.tensor(d.target, dtype=torch.long)[1200 : 1200 + n] % 2
    big = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return big.clamp(0, 1).repeat(1, channels, 1, 1).contiguous(), y.contiguous()


class Brightness(nn.Module):
    """Predicts class 1 iff the mean pixel exceeds ``t``: errors a test can recompute."""

    def __init__(self, t: float) -> None:
        super().__init__()
        self.t = nn.Parameter(torch.tensor(float(t)))
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        m = x.flatten(1).mean(1) - self.t
        return torch.stack([-m, m], dim=1) * 100


def median_brightness(x: Tensor) -> float:
    """A threshold halfway between the two middle mean brightnesses (no image sits on it)."""
    means = x.flatten(1).mean(1).sort().values
    k = (means.numel() - 1) // 2
    return float((means[k] + means[min(k + 1, means.numel() - 1)]) / 2)


def main(job_path: str) -> None:
    from robustbench_local import distributed as rdist
    from robustbench_local.corruptions.curve import corruption_curve

    job: dict[str, Any] = json.loads(Path(job_path).read_text())
    out = Path(job["out"])
    rank = int(os.environ.get("RANK", "0"))
    (out / f"pid.rank{rank}").write_text(str(os.getpid()))
    torch.set_num_threads(1)
    data = upscaled_digits()
    curve = corruption_curve(Brightness(median_brightness(data[0])), data, **job["kwargs"])
    world = rdist.world()
    doc = {"world": {"rank": world.rank, "size": world.size}, "curve": curve.to_dict()}
    (out / f"curve.rank{rank}.json").write_text(json.dumps(doc))


if __name__ == "__main__":
    main(sys.argv[1])
