"""Straight-through gradients for rounding hidden in a model's own forward, declared or not."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import attacks
import defenses
from attacks.adaptive import BPDA, EOT, adaptive_model
from attacks.straight_through import (
    StraightThrough,
    find_rounding_ops,
    straight_through_model,
)


def _quantize(x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensors are deprecated in recent torch
        return torch.quantize_per_tensor(x, 0.125, 0, torch.quint8).dequantize()


# name -> (the hidden step f, the names find_rounding_ops reports). Every f is a rounding of the
# identity (f(x) ~ x), so a straight-through backward must give d f / dx = identity.
HIDDEN = {
    "round": (lambda x: torch.round(x * 4) / 4, ["round"]),
    "method_round": (lambda x: (x * 4).round() / 4, ["round"]),
    "floor": (lambda x: torch.floor(x * 8) / 8, ["floor"]),
    "ceil": (lambda x: (x * 8).ceil() / 8, ["ceil"]),
    "trunc": (lambda x: torch.trunc(x * 8) / 8, ["trunc"]),
    "floordiv": (lambda x: (x // 0.25) * 0.25, ["floor_divide"]),
    "div_floor": (lambda x: torch.div(x, 0.25, rounding_mode="floor") * 0.25, ["div"]),
    "threshold_float": (lambda x: (x > 0.5).float(), ["gt"]),
    "threshold_to": (lambda x: (x >= 0.5).to(x.dtype), ["ge"]),
    "threshold_mul": (lambda x: (0.5 < x) * 1.0, ["gt"]),  # noqa: SIM300 (reflected)
    "threshold_where": (lambda x: torch.where(x > 0.5, 1.0, 0.0), ["gt"]),
    "byte_cast": (lambda x: (x * 255).to(torch.uint8).float() / 255, ["int_cast"]),
    "quantize": (_quantize, ["quantize_per_tensor"]),
    "sign": (lambda x: torch.sign(2 * x - 1) / 2 + 0.5, ["sign"]),
}


class Hidden(nn.Module):
    """A classifier with a rounding-like step in its own forward (declares nothing)."""

    def __init__(self, net: nn.Module, step) -> None:
        super().__init__()
        self.net, self.step = net, step

    def forward(self, x):
        return self.net(self.step(x))


@pytest.mark.parametrize("case", sorted(HIDDEN))
def test_hidden_step_is_found_and_gets_identity_gradient(case, digits_model, digits_batch):
    step, names = HIDDEN[case]
    x, y = digits_batch
    x = x[:32]
    model = Hidden(digits_model, step)
    assert find_rounding_ops(model, x) == names
    xg = x.clone().requires_grad_(True)
    try:
        (naive,) = torch.autograd.grad(model(xg).sum(), xg, allow_unused=True)
    except RuntimeError:  # torch has no derivative for floor_divide
        naive = None
    assert naive is None or not naive.any()  # the gradient torch gives is zero or absent
    xs = x.clone().requires_grad_(True)
    out = StraightThrough(model)(xs)
    assert torch.equal(out, model(x))  # forward values bitwise
    loss = nn.functional.cross_entropy(out, y[:32], reduction="sum")
    (g,) = torch.autograd.grad(loss, xs)
    # Independent: the classifier's gradient at the rounded input (the identity surrogate).
    v = step(x).detach().requires_grad_(True)
    (expected,) = torch.autograd.grad(
        nn.functional.cross_entropy(digits_model(v), y[:32], reduction="sum"), v
    )
    torch.testing.assert_close(g, expected)
    assert g.abs().sum() > 0


def test_models_without_rounding_are_untouched(digits_model, digits_batch):
    x, _ = digits_batch
    gate = Hidden(digits_model, lambda t: torch.where(t > 0.5, t, 0.1 * t))  # a gate, not a step
    weights = Hidden(digits_model, lambda t: t * torch.round(torch.full_like(t[0], 1.4)))
    for model in (digits_model, gate, weights):
        assert find_rounding_ops(model, x) == []
        xa = x.clone().requires_grad_(True)
        xb = x.clone().requires_grad_(True)
        (ga,) = torch.autograd.grad(model(xa).logsumexp(1).sum(), xa)
        (gb,) = torch.autograd.grad(StraightThrough(model)(xb).logsumexp(1).sum(), xb)
        assert torch.equal(ga, gb)


def test_swap_is_scoped_to_the_wrapper_and_off_without_grad(digits_model, digits_batch):
    x, _ = digits_batch
    model = Hidden(digits_model, HIDDEN["round"][0])
    ste = StraightThrough(model)
    with torch.no_grad():
        assert torch.equal(ste(x), model(x))
    ste(x.clone().requires_grad_(True))
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.round(xg * 4).sum(), xg)  # outside: torch's own gradient
    assert not g.any()


def test_straight_through_attack_equals_bpda_on_the_declared_twin(digits_model, digits_batch):
    """Undeclared round(3x)/3 with STE == the declared bit_depth(2) defense attacked with BPDA."""
    x, y = digits_batch
    declared = defenses.create("bit_depth", bits=2).wrap(digits_model)
    hidden = Hidden(digits_model, lambda t: torch.round(t * 3) / 3)
    assert torch.equal(hidden(x), declared(x))
    pgd = attacks.create("pgd", steps=10, seed=3)
    naive = pgd(hidden, x, y, eps=0.2)
    ste = pgd(StraightThrough(hidden), x, y, eps=0.2)
    bpda = pgd(BPDA(declared), x, y, eps=0.2)
    assert naive.robust_accuracy > ste.robust_accuracy + 0.3  # the naive attack is blind
    assert torch.equal(ste.success, bpda.success)
    torch.testing.assert_close(ste.x_adv, bpda.x_adv)


def test_straight_through_model_adds_eot_when_random(digits_model):
    hidden = Hidden(digits_model, HIDDEN["round"][0])
    assert isinstance(straight_through_model(hidden), StraightThrough)
    forced = straight_through_model(hidden, eot_samples=3, random=True)
    assert isinstance(forced, EOT) and forced.samples == 3
    assert isinstance(forced.model, StraightThrough)
    noisy = defenses.create("random_noise").wrap(digits_model)
    wrapped = straight_through_model(noisy)
    assert isinstance(wrapped, EOT) and not wrapped.random and wrapped.differentiable
    assert StraightThrough(noisy).random and StraightThrough(noisy).differentiable
    with pytest.raises(ValueError, match="EOT samples"):
        straight_through_model(hidden, eot_samples=0)


class DeclaredOnly(Hidden):
    """Declares differentiable=False but exposes no preprocessor/classifier/surrogate."""

    differentiable = False


def test_adaptive_model_keeps_declared_bpda_and_falls_back_to_ste(digits_model, digits_batch):
    x, _ = digits_batch
    declared = defenses.create("bit_depth", bits=2).wrap(digits_model)
    assert isinstance(adaptive_model(declared), BPDA)
    bare = DeclaredOnly(digits_model, HIDDEN["round"][0])
    wrapped = adaptive_model(bare)
    assert isinstance(wrapped, StraightThrough) and wrapped.model is bare
    assert torch.equal(wrapped(x), bare(x))
    assert adaptive_model(digits_model) is digits_model


def test_find_rounding_ops_restores_the_model_and_checks_input(digits_model, digits_batch):
    x, _ = digits_batch
    model = Hidden(copy.deepcopy(digits_model), HIDDEN["round"][0]).train()  # not the fixture
    flags = [p.requires_grad for p in model.parameters()]
    assert find_rounding_ops(model, x) == ["round"]
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    with pytest.raises(TypeError, match="float tensor"):
        find_rounding_ops(model, (x * 255).long())
