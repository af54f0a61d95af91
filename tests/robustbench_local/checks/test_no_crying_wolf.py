"""No crying wolf: honest MNIST models, where strong attacks agree, raise no masking warning."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Subset

import defenses
import robustbench_local as rbl
from robustbench_local.benchmark import standard_suite
from robustbench_local.checks import GRADIENT_MASKING_FLAGS

EPS = [0.1, 0.2, 0.3]
N = 200


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    return rbl.load_dataset("mnist", mnist_dir)


def _train(name: str, train) -> torch.nn.Module:
    torch.manual_seed(0)
    model = rbl.create_model("mnist_small_cnn")
    kwargs = {"epochs": 1} if name == "standard" else {"epochs": 3}  # fgsm_at: MNIST defaults
    d = defenses.create(name, progress=False, seed=0, **kwargs)
    return d.fit(model, Subset(train, list(range(12000))))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["standard", "fgsm_at"])
def test_honest_models_raise_no_masking_warning(name, mnist):
    train, test = mnist
    model = _train(name, train)
    curve = rbl.robustness_curve(model, test, ["fgsm", "pgd"], EPS, n_examples=N, progress=False)
    x, y = (t[curve.indices] for t in test.tensors)
    strong = standard_suite("linf", steps=50)(model, x, y, eps=EPS[-1], ids=curve.indices)
    # Precondition: the strong suite agrees with the chosen attacks (else a warning is right).
    assert float(curve.worst_case()[-1]) <= float(strong.robust_accuracy) + 0.05
    fired = [str(f) for f in curve.health if f.name in GRADIENT_MASKING_FLAGS and not f.ok]
    assert not fired, fired
    assert float(curve.worst_case()[-1]) > (0.5 if name == "fgsm_at" else -1)  # really robust
