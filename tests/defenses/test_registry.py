"""Contract tests over every registered defense: a new entry is tested for free."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Subset

import defenses

TRAINING = ["distillation", "fgsm_at", "pgd_at", "standard", "trades"]
FAST = {
    "pgd_at": {"steps": 2, "step_size": 0.1},
    "trades": {"steps": 2, "step_size": 0.1},
    "fgsm_at": {"guard_n": 100},
    "denoising_autoencoder": {"attack_steps": 2, "width": 8},
}


def test_names_and_unknown_name_lists_known_ones():
    assert set(TRAINING) <= set(defenses.names())
    assert defenses.names("*_at") == ["fgsm_at", "pgd_at"]
    with pytest.raises(ValueError, match=r"Unknown defense 'pgd-at'.*Known defenses: .*pgd_at"):
        defenses.create("pgd-at")
    with pytest.raises(ValueError, match=r"Known defenses: .*median_filter"):
        defenses.create("median")


@pytest.mark.parametrize("name", defenses.names())
def test_every_defense_builds_with_defaults(name):
    d = defenses.create(name)
    assert hasattr(d, "fit") or hasattr(d, "wrap")


@pytest.mark.parametrize("name", defenses.names())
def test_every_defense_yields_a_model_obeying_the_contract(name, digits_sets, make_mlp):
    train, val, (xt, _) = digits_sets
    d = defenses.create(name, **FAST.get(name, {}))
    model = make_mlp()
    if hasattr(d, "fit"):
        small = Subset(train, list(range(400)))
        out = d.fit(model, small, val)
        if name in TRAINING:
            assert out is model
            model = out
    if hasattr(d, "wrap"):
        model = d.wrap(model)
    assert not model.training
    logits = model(xt[:16])
    assert logits.shape == (16, 10) and torch.isfinite(logits).all()
