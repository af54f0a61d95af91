"""``attack.perturb``: adversarial training's inner maximisation through the sealed interface."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attacks
from attacks.threat import Norm, norm_of


@pytest.fixture
def untrained(digits):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).train()


@pytest.mark.parametrize("name", ["pgd", "fgsm", "apgd_ce", "trades_kl"])
def test_perturb_attacks_every_sample(untrained, digits_batch, name):
    x, y = digits_batch
    kw = {"fgsm": {"random_start": True}, "pgd": {"steps": 5, "early_stop": False}}
    attack = attacks.create(name, **kw.get(name, {}))
    with torch.no_grad():
        wrong = untrained(x).argmax(1) != y
    assert wrong.float().mean() > 0.5  # untrained: the sealed call would skip these
    x_adv = attack.perturb(untrained, x, y, 0.2)
    moved = norm_of(x_adv - x, Norm.LINF)
    assert bool((moved > 0).all())
    assert float(moved.max()) <= 0.2 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert untrained.training and all(p.requires_grad for p in untrained.parameters())
    assert all(p.grad is None for p in untrained.parameters())


def test_perturb_is_fresh_per_call_and_follows_manual_seed(untrained, digits_batch):
    x, y = digits_batch
    attack = attacks.create("pgd", steps=3, early_stop=False)
    torch.manual_seed(1)
    a, b = attack.perturb(untrained, x, y, 0.1), attack.perturb(untrained, x, y, 0.1)
    assert not torch.allclose(a, b)  # a new random start every training step
    torch.manual_seed(1)
    assert torch.equal(attack.perturb(untrained, x, y, 0.1), a)


def test_wide_attack_bounds_are_clipped_into_the_data_bounds(untrained, digits_batch):
    """Wong et al.'s unclipped start: the attack explores outside [0, 1], the result does not."""
    x, y = digits_batch
    wide = attacks.create("fgsm", random_start=True, rel_step_size=1.25, bounds=(-0.3, 1.3))
    torch.manual_seed(0)
    x_wide = wide.perturb(untrained, x, y, 0.3, bounds=(0.0, 1.0))
    assert x_wide.min() >= 0 and x_wide.max() <= 1
    assert float(norm_of(x_wide - x, Norm.LINF).max()) <= 0.3 + 1e-6
    torch.manual_seed(0)
    unclipped = wide.perturb(untrained, x, y, 0.3)  # default: the attack's own (wide) bounds
    assert float(unclipped.min()) < 0  # the start really left the box
    assert torch.equal(unclipped.clamp(0, 1), x_wide)


def test_trades_kl_raises_the_kl_divergence(digits_model, digits_batch):
    x, y = digits_batch
    kl = attacks.create("trades_kl", steps=10, step_size=0.02)
    x_adv = kl.perturb(digits_model, x, y, 0.1)
    noise = (x + 0.1 * torch.sign(torch.randn_like(x))).clamp(0, 1)

    @torch.no_grad()
    def div(z: torch.Tensor) -> float:
        log_q = F.log_softmax(digits_model(z), 1)
        return float(F.kl_div(log_q, F.softmax(digits_model(x), 1), reduction="batchmean"))

    assert div(x_adv) > 5 * div(noise)
    with pytest.raises(ValueError, match="untargeted"):
        attacks.create("trades_kl", targeted=True)


@pytest.mark.parametrize(
    ("eps", "bounds", "exc", "match"),
    [
        ([0.1, 0.2], None, TypeError, "one budget"),
        (-0.1, None, ValueError, ">= 0"),
        ("0.1", None, TypeError, "one budget"),
        (0.1, (1.0, 0.0), ValueError, "lo < hi"),
        (0.1, (0.0, 0.5), ValueError, "outside the bounds"),
    ],
)
def test_perturb_bad_input(untrained, digits_batch, eps, bounds, exc, match):
    x, y = digits_batch
    with pytest.raises(exc, match=match):
        attacks.create("pgd", steps=1).perturb(untrained, x, y, eps, bounds)
