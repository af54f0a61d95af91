"""The gradient probe finds masked gradients without the user's help and cries no wolf."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import defenses
from attacks.losses import cw_margin
from robustbench_local.checks import GradientReport, gradient_probe


class Scaled(nn.Module):
    """Logits times ``scale``: same predictions, saturated softmax."""

    def __init__(self, model, scale=1e4):
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x):
        return self.model(x) * self.scale


class Rounded(nn.Module):
    """``round(4 x) / 4`` inside its own forward; declares nothing."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 4) / 4)


class Noisy(nn.Module):
    """Gaussian input noise at inference; declares nothing."""

    def __init__(self, model, sigma=0.2):
        super().__init__()
        self.model, self.sigma = model, sigma

    def forward(self, x):
        return self.model(x + self.sigma * torch.randn_like(x))


class Sqrt(nn.Module):
    """``sqrt(x)`` in front: the gradient is inf wherever a pixel is exactly 0."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.sqrt(x))


def test_undefended_model_is_not_masked(digits_model, digits_batch):
    report = gradient_probe(digits_model, *digits_batch)
    assert report == GradientReport(
        zero=0.0, saturated=0.0, nonfinite=0.0, hidden_ops=[], random=False, n=report.n
    )
    assert not report.masked and report.reasons == []
    assert report.n == int(
        (digits_model(digits_batch[0][:100]).argmax(1) == digits_batch[1][:100]).sum()
    )
    assert json.loads(json.dumps(report.to_dict()))["masked"] is False


def test_saturated_softmax_is_told_apart_from_zero_gradients(digits_model, digits_batch):
    x, y = digits_batch
    report = gradient_probe(Scaled(digits_model), x, y)
    # Known fact: in float32, exp(-t) < 2**-149 for t > 104, so the softmax is exactly one-hot
    # (and the CE gradient exactly zero) once the scaled margin exceeds ~104; below ~87 it is not.
    with torch.no_grad():
        logits = digits_model(x[:100])
        keep = logits.argmax(1) == y[:100]
        margin = -cw_margin(logits[keep], y[:100][keep]) * 1e4
    assert float((margin > 110).float().mean()) <= report.saturated
    assert report.saturated <= float((margin > 80).float().mean())
    assert report.saturated > 0.9 and report.zero == report.saturated
    assert report.reasons == ["saturated"] and report.masked


def test_hidden_rounding_is_zero_gradients_and_a_hidden_op(digits_model, digits_batch):
    report = gradient_probe(Rounded(digits_model), *digits_batch)
    assert report.zero == 1.0 and report.saturated == 0.0
    assert report.hidden_ops == ["round"]
    assert report.reasons == ["zero", "hidden_ops"] and report.masked


def test_randomness_is_found_declared_or_not(digits_model, digits_batch):
    x, y = digits_batch
    torch.manual_seed(0)
    undeclared = gradient_probe(Noisy(digits_model), x, y)
    assert undeclared.random and undeclared.reasons == ["random"] and undeclared.max_diff > 0.01
    declared = gradient_probe(defenses.create("random_noise").wrap(digits_model), x, y)
    assert declared.random and declared.zero == 0.0


def test_nonfinite_gradients_are_counted(digits_model, digits_batch):
    x, y = digits_batch
    report = gradient_probe(Sqrt(digits_model), x, y, max_samples=20)
    assert report.nonfinite == 1.0 and "nonfinite" in report.reasons  # every digit has a 0 pixel
    assert report.n <= 20


def test_probe_leaves_the_model_as_it_came_and_checks_input(digits_model, digits_batch):
    x, y = digits_batch
    model = Rounded(copy.deepcopy(digits_model)).train()  # never touch the shared fixture
    flags = [p.requires_grad for p in model.parameters()]
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    gradient_probe(model, x, y, max_samples=10)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    for p, g in zip(model.parameters(), grads, strict=True):  # no weight gradient accumulated
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    with pytest.raises(ValueError, match="max_samples"):
        gradient_probe(model, x, y, max_samples=0)
    with pytest.raises(ValueError, match="matching"):
        gradient_probe(model, x, y[:5])
    with pytest.raises(TypeError, match="float"):
        gradient_probe(model, (x * 16).long(), y)
