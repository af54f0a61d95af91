"""Health checks: preflight catches broken models, masking checks catch broken evaluations."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import attacks
import defenses
from robustbench_local.checks import (
    GRADIENT_MASKING_FLAGS,
    NONDETERMINISM_FLAGS,
    PREFLIGHT_FLAGS,
    Flag,
    masking_checks,
    preflight,
)
from robustbench_local.evaluate import Curve, robustness_curve

EPS = [0.05, 0.1, 0.2, 0.3]


def by_name(flags):
    return {f.name: f for f in flags}


def curve_of(model, batch, names=("fgsm", "pgd"), **kw):
    kw.setdefault("progress", False)
    return robustness_curve(model, batch, list(names), EPS, **kw)


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


class Scaled(nn.Module):
    """Logits times 1e4: the softmax saturates and the cross-entropy gradient vanishes."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x) * 1e4


# ------------------------------------------------------------------------------ preflight


def test_healthy_model_passes_preflight(digits_model, digits_batch):
    flags = preflight(digits_model, *digits_batch, (0.0, 1.0))
    assert [f.name for f in flags] == list(PREFLIGHT_FLAGS)
    assert all(f.ok for f in flags), [str(f) for f in flags if not f.ok]


def test_probabilities_make_robustness_curve_raise(digits_model, digits_batch):
    f = by_name(preflight(Softmaxed(digits_model), *digits_batch))["logits_not_probabilities"]
    assert not f.ok and f.severity == "error" and "softmax" in f.advice
    with pytest.raises(ValueError, match="probabilities"):
        curve_of(Softmaxed(digits_model), digits_batch)


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


def test_flag_round_trips_and_validates():
    f = Flag("monotone", False, "warning", "m", "a", {"x": 1})
    assert Flag.from_dict(json.loads(json.dumps(f.to_dict()))) == f
    assert "WARNING" in str(f)
    with pytest.raises(ValueError, match="severity"):
        Flag("monotone", False, "fatal", "m")


# ------------------------------------------------------------------------------ masking checks


def test_undefended_model_passes_every_masking_check(digits_model, digits_batch):
    c = curve_of(digits_model, digits_batch)
    flags = by_name(c.health)
    assert set(GRADIENT_MASKING_FLAGS) <= set(flags)
    bad = [str(f) for f in c.health if not f.ok]
    assert not bad, bad
    assert flags["near_chance_at_large_eps"].details["accuracy"] <= 0.1
    assert all(isinstance(h.to_dict(), dict) for h in c.health)
    json.dumps(c.to_dict())


def test_non_differentiable_denoiser_flags_gradient_masking(digits_model, digits_batch):
    guarded = defenses.create("bit_depth", bits=2).wrap(digits_model)
    c = curve_of(guarded, digits_batch, names=("pgd",), n_examples=100)
    f = by_name(c.health)["gradients_nonzero"]
    assert not f.ok and f.severity == "warning"
    assert f.details["zero"] > 0.9 and f.details["adaptive_zero"] < 0.1
    assert "+adaptive" in f.advice


def test_saturated_softmax_flags_zero_gradients_and_suggests_cw(digits_model, digits_batch):
    c = curve_of(Scaled(digits_model), digits_batch, names=("pgd",), n_examples=100)
    f = by_name(c.health)["gradients_nonzero"]
    assert not f.ok and "loss='cw'" in f.advice


def test_badly_tuned_pgd_is_caught_by_apgd_and_fgsm(digits_model, digits_batch):
    if "apgd_ce" not in attacks.names():
        pytest.skip("apgd_ce not registered yet")
    weak = attacks.create("pgd", steps=2, step_size=0.002, random_start=False)
    c = robustness_curve(
        digits_model, digits_batch, {"pgd": weak}, EPS, n_examples=100, progress=False
    )
    flags = by_name(c.health)
    assert not flags["apgd_vs_pgd"].ok, flags["apgd_vs_pgd"]
    assert flags["apgd_vs_pgd"].details["gap"] > 0.3
    assert not flags["iterative_beats_single_step"].ok  # FGSM (step eps) beats this PGD too


def fake_curve(fgsm, pgd, clean):
    """A curve on 10 samples whose per-eps accuracies are given (as survivor counts)."""

    def rows(counts):
        return torch.stack([torch.arange(10) < k for k in counts])

    return Curve(
        eps=torch.tensor(EPS[: len(fgsm)], dtype=torch.float64),
        attacks=["fgsm", "pgd"],
        robust={"fgsm": rows(fgsm), "pgd": rows(pgd)},
        clean_correct=torch.arange(10) < clean,
        indices=torch.arange(10),
    )


def test_fgsm_beating_pgd_and_non_monotone_curves_are_flagged(digits_model, digits_batch):
    x, y = digits_batch
    amap = {"fgsm": attacks.create("fgsm"), "pgd": attacks.create("pgd")}
    curve = fake_curve(fgsm=[5, 2, 1], pgd=[8, 9, 6], clean=9)
    flags = by_name(
        masking_checks(curve, digits_model, x[:10], y[:10], amap, skip=["more_steps_stable"])
    )
    assert not flags["iterative_beats_single_step"].ok
    assert not flags["monotone"].ok and "pgd" in flags["monotone"].details["attacks"]
    good = fake_curve(fgsm=[8, 6, 2], pgd=[7, 4, 0], clean=9)
    flags = by_name(masking_checks(good, digits_model, x[:10], y[:10], amap, skip=["apgd_vs_pgd"]))
    assert flags["iterative_beats_single_step"].ok and flags["monotone"].ok


def test_masking_checks_reject_unknown_names(digits_model, digits_batch):
    curve = fake_curve(fgsm=[5], pgd=[4], clean=9)
    with pytest.raises(ValueError, match="unknown checks"):
        masking_checks(curve, digits_model, *digits_batch, skip=["monotonic"])
