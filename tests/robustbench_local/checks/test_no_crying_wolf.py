"""No crying wolf: honest MNIST models, where strong attacks agree, raise no masking warning."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Subset

import defenses
import robustbench_local as rbl
from robustbench_local.benchmark import standard_suite
from robustbench_local.checks import GRADIENT_MASKING_FLAGS

N = 200
# name -> (epochs, training images, eps grid). fgsm_at is the mnist_fast_at recipe (its MNIST
# defaults: FGSM-RS at eps 0.3, alpha 0.375, cyclic Adam), shortened to 4 epochs on 20k images:
# such a short run is robust (and the strong suite agrees with FGSM/PGD) up to eps 0.2; at 0.3
# APGD beats the curve's PGD by ~20 points and apgd_vs_pgd rightly fires, so the grid stops at 0.2.
SETUPS = {
    "standard": (1, 12000, [0.1, 0.2, 0.3]),
    "fgsm_at": (4, 20000, [0.1, 0.15, 0.2]),
}


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    return rbl.load_dataset("mnist", mnist_dir)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SETUPS))
def test_honest_models_raise_no_masking_warning(name, mnist):
    train, test = mnist
    epochs, n_train, eps = SETUPS[name]
    torch.manual_seed(0)
    d = defenses.create(name, progress=False, seed=0, epochs=epochs)
    model = d.fit(rbl.create_model("mnist_small_cnn"), Subset(train, list(range(n_train))))
    # a reduced reference keeps the test short; the strong suite below is the precondition check
    quick = standard_suite("linf", n_target_classes=3, square_queries=500)
    curve = rbl.robustness_curve(
        model, test, ["fgsm", "pgd"], eps, n_examples=N, progress=False, reference=quick
    )
    x, y = (t[curve.indices] for t in test.tensors)
    strong = standard_suite("linf", steps=50)(model, x, y, eps=eps[-1], ids=curve.indices)
    # Precondition: the strong suite agrees with the chosen attacks (else a warning is right).
    assert float(curve.worst_case()[-1]) <= float(strong.robust_accuracy) + 0.05
    fired = [str(f) for f in curve.health if f.name in GRADIENT_MASKING_FLAGS and not f.ok]
    assert not fired, fired
    if name == "fgsm_at":  # really robust, not a model where every attack trivially agrees at 0
        assert float(strong.robust_accuracy) > 0.7
