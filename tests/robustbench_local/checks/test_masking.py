"""Masking checks catch broken evaluations: masked gradients, weak or badly tuned attacks."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import attacks
import defenses
from robustbench_local.checks import GRADIENT_MASKING_FLAGS, Flag, masking_checks
from robustbench_local.evaluate import Curve, robustness_curve

EPS = [0.05, 0.1, 0.2, 0.3]


def by_name(flags):
    return {f.name: f for f in flags}


def curve_of(model, batch, names=("fgsm", "pgd"), **kw):
    kw.setdefault("progress", False)
    return robustness_curve(model, batch, list(names), EPS, **kw)


class Scaled(nn.Module):
    """Logits times 1e4: the softmax saturates and the cross-entropy gradient vanishes."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x) * 1e4


def test_undefended_model_passes_every_masking_check(digits_model, digits_batch):
    c = curve_of(digits_model, digits_batch)
    flags = by_name(c.health)
    assert set(GRADIENT_MASKING_FLAGS) <= set(flags)
    bad = [str(f) for f in c.health if not f.ok]
    assert not bad, bad
    assert [f.name for f in c.health][-len(GRADIENT_MASKING_FLAGS) :] == list(
        GRADIENT_MASKING_FLAGS
    )
    assert flags["near_chance_at_large_eps"].details["accuracy"] <= 0.1
    assert [Flag.from_dict(json.loads(json.dumps(h.to_dict()))) for h in c.health] == c.health


def test_declared_denoiser_attacked_with_bpda_is_not_flagged(digits_model, digits_batch):
    """bit_depth declares its zero gradients; the '+adaptive' (BPDA) runs have real ones."""
    guarded = defenses.create("bit_depth", bits=1).wrap(digits_model)
    c = curve_of(guarded, digits_batch, names=("pgd",), n_examples=100)
    f = by_name(c.health)["gradients_nonzero"]
    assert f.ok, f
    assert f.details["judged_on"] == "adaptive" and f.details["zero"] < 0.1
    assert f.details["naive_zero"] > 0.9 and "declared" in f.message
    # ...and BPDA is what breaks it: the naive PGD is blind, the adaptive one is not.
    assert c.accuracy("pgd")[-1] > c.accuracy("pgd+adaptive")[-1] + 0.3


def test_declared_denoiser_without_adaptive_runs_is_flagged(digits_model, digits_batch):
    guarded = defenses.create("bit_depth", bits=2).wrap(digits_model)
    c = curve_of(guarded, digits_batch, names=("pgd",), n_examples=100, adaptive=False)
    f = by_name(c.health)["gradients_nonzero"]
    assert not f.ok and f.severity == "warning" and f.details["judged_on"] == "model"
    assert f.details["zero"] > 0.9 and "adaptive='auto'" in f.advice


class Rounded(nn.Module):
    """Rounds its input inside forward, declaring nothing (a hidden non-differentiable step)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 3) / 3)


class Noisy(nn.Module):
    """Gaussian input noise at inference, declaring nothing."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x + 0.2 * torch.randn_like(x))


def test_undeclared_rounding_is_flagged_with_straight_through_advice(digits_model, digits_batch):
    c = curve_of(Rounded(digits_model), digits_batch, names=("pgd",), n_examples=100)
    f = by_name(c.health)["gradients_nonzero"]
    assert not f.ok and f.details["hidden_ops"] == ["round"] and f.details["zero"] > 0.9
    assert "straight_through_model" in f.advice


def test_undeclared_noise_is_flagged(digits_model, digits_batch):
    torch.manual_seed(0)
    c = curve_of(Noisy(digits_model), digits_batch, names=("pgd",), n_examples=100)
    flags = by_name(c.health)
    assert not flags["deterministic"].ok
    assert flags["gradients_nonzero"].details["random"]


def test_saturated_softmax_flags_zero_gradients_and_suggests_cw(digits_model, digits_batch):
    c = curve_of(Scaled(digits_model), digits_batch, names=("pgd",), n_examples=100)
    f = by_name(c.health)["gradients_nonzero"]
    assert not f.ok and "loss='cw'" in f.advice


def test_badly_tuned_pgd_is_caught_by_apgd_and_fgsm(digits_model, digits_batch):
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
