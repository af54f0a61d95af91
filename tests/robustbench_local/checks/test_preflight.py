"""The preflight catches broken models before any attack runs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustbench_local.checks import NONDETERMINISM_FLAGS, PREFLIGHT_FLAGS, preflight
from robustbench_local.checks.preflight import check_logits
from robustbench_local.evaluate import robustness_curve

EPS = [0.05, 0.1, 0.2, 0.3]


def by_name(flags):
    return {f.name: f for f in flags}


class Softmaxed(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).softmax(dim=1)


class Noisy(nn.Module):
    """Adds fresh noise to the logits on every call (undeclared randomness)."""

    def __init__(self, model, declare=False):
        super().__init__()
        self.model = model
        self.random = declare

    def forward(self, x):
        out = self.model(x)
        return out + torch.randn_like(out)


def test_healthy_model_passes_preflight(digits_model, digits_batch):
    flags = preflight(digits_model, *digits_batch, (0.0, 1.0))
    assert [f.name for f in flags] == list(PREFLIGHT_FLAGS)
    assert all(f.ok for f in flags), [str(f) for f in flags if not f.ok]


def test_probabilities_make_robustness_curve_raise(digits_model, digits_batch):
    f = by_name(preflight(Softmaxed(digits_model), *digits_batch))["logits_not_probabilities"]
    assert not f.ok and f.severity == "error" and "softmax" in f.advice
    with pytest.raises(ValueError, match="probabilities"):
        robustness_curve(Softmaxed(digits_model), digits_batch, ["fgsm"], EPS, progress=False)


def test_inputs_out_of_bounds_is_an_error(digits_model, digits_batch):
    x, y = digits_batch
    f = by_name(preflight(digits_model, (x - 0.5) / 0.25, y))["inputs_in_bounds"]
    assert not f.ok and f.severity == "error" and "Normalize" in f.advice


def test_labels_out_of_range_is_an_error(digits_model, digits_batch):
    x, y = digits_batch
    f = by_name(preflight(digits_model, x, y + 10))["labels_in_range"]
    assert not f.ok and f.severity == "error"


def test_train_mode_dropout_is_flagged(digits_batch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.Dropout(0.5), nn.Linear(64, 10))
    flags = by_name(preflight(model.train(), *digits_batch))
    assert not flags["eval_mode"].ok and flags["eval_mode"].severity == "warning"
    assert "Dropout" in flags["eval_mode"].message
    assert not flags["deterministic"].ok
    assert model.training  # the preflight does not change the mode
    assert {"eval_mode", "deterministic"} <= set(NONDETERMINISM_FLAGS)
    flags = by_name(preflight(model.eval(), *digits_batch))
    assert flags["eval_mode"].ok and flags["deterministic"].ok


def test_nondeterministic_model_is_flagged_unless_declared(digits_model, digits_batch):
    f = by_name(preflight(Noisy(digits_model), *digits_batch))["deterministic"]
    assert not f.ok and f.severity == "warning" and "random = True" in f.advice
    f = by_name(preflight(Noisy(digits_model, declare=True), *digits_batch))["deterministic"]
    assert f.ok and "EOT" in f.message


def test_train_mode_batchnorm_breaks_batch_invariance_and_stats_are_restored(digits_batch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.Linear(32, 10))
    before = model[2].running_mean.clone()
    flags = by_name(preflight(model.train(), *digits_batch))
    assert not flags["batch_size_invariance"].ok
    assert flags["batch_size_invariance"].name in NONDETERMINISM_FLAGS
    assert torch.equal(model[2].running_mean, before)


def test_log_probabilities_pass_and_sigmoid_scores_warn():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]])
    f = check_logits(logits.log_softmax(dim=1))
    assert f.ok and "log-probabilities" in f.message
    f = check_logits(logits.sigmoid())
    assert not f.ok and f.severity == "warning" and "sigmoid" in f.advice
    f = check_logits(torch.zeros(2))
    assert not f.ok and f.severity == "error" and "(2,)" in f.message


def test_preflight_rejects_non_tensors(digits_model):
    with pytest.raises(TypeError, match="tensors"):
        preflight(digits_model, [[0.0]], torch.tensor([0]))
