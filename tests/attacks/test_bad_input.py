"""Bad input gets a clear error that names the problem and the fix."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import attacks


@pytest.fixture
def pgd():
    return attacks.create("pgd", steps=2)


@pytest.mark.parametrize(
    ("eps", "exc", "match"),
    [
        (-0.1, ValueError, ">= 0"),
        (math.nan, ValueError, "finite"),
        (math.inf, ValueError, "finite"),
        ("0.3", TypeError, "number"),
        (True, TypeError, "number"),
        ([0.1, "a"], TypeError, "numbers"),
        ([], ValueError, "empty"),
        (None, ValueError, "eps is required"),
        (torch.ones(2, 2), ValueError, "0-d or 1-d"),
    ],
)
def test_bad_eps(pgd, digits_model, digits_batch, eps, exc, match):
    x, y = digits_batch
    with pytest.raises(exc, match=match):
        pgd(digits_model, x, y, eps=eps)


def test_x_outside_bounds_says_how_to_fix(pgd, digits_model, digits_batch):
    x, y = digits_batch
    with pytest.raises(ValueError, match="normalisation inside the model"):
        pgd(digits_model, (x - 0.5) / 0.2, y, eps=0.1)


def test_uint8_inputs(pgd, digits_model, digits_batch):
    x, y = digits_batch
    with pytest.raises(TypeError, match="255"):
        pgd(digits_model, (x * 255).to(torch.uint8), y, eps=0.1)


@pytest.mark.parametrize(
    ("labels", "exc", "match"),
    [
        (lambda y: y[:-1], ValueError, "shape"),
        (lambda y: y.float(), TypeError, "integer"),
        (lambda y: y + 10, ValueError, r"\[0, 10\)"),
        (lambda y: y - 100, ValueError, r"\[0, 10\)"),
        (lambda y: y.tolist(), TypeError, "Tensor"),
    ],
)
def test_bad_labels(pgd, digits_model, digits_batch, labels, exc, match):
    x, y = digits_batch
    with pytest.raises(exc, match=match):
        pgd(digits_model, x, labels(y), eps=0.1)


def test_probabilities_are_refused(pgd, digits_model, digits_batch):
    x, y = digits_batch
    model = nn.Sequential(digits_model, nn.Softmax(dim=1))
    with pytest.raises(ValueError, match="probabilities"):
        pgd(model, x, y, eps=0.1)


def test_nan_logits_are_refused(pgd, digits_batch):
    x, y = digits_batch

    class NaNModel(nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 10), float("nan"))

    with pytest.raises(ValueError, match="NaN"):
        pgd(NaNModel(), x, y, eps=0.1)


def test_wrong_output_shape(pgd, digits_batch):
    x, y = digits_batch
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        pgd(nn.Identity(), x, y, eps=0.1)


def test_unknown_attack_lists_known():
    with pytest.raises(ValueError, match=r"Known attacks: .*pgd"):
        attacks.create("pdg")
    with pytest.raises(ValueError, match="Did you mean 'pgd'"):
        attacks.create("pdg")


def test_bad_settings():
    with pytest.raises(ValueError, match="steps"):
        attacks.create("pgd", steps=0)
    with pytest.raises(ValueError, match="norm"):
        attacks.create("pgd", norm="l7")
    with pytest.raises(ValueError, match="loss"):
        attacks.create("pgd", loss="hinge")
    with pytest.raises(ValueError, match="bounds"):
        attacks.create("pgd", bounds=(1, 0))


@pytest.mark.parametrize(
    ("name", "kw", "exc", "match"),
    [
        ("pgd", {"steps": True}, ValueError, "steps must be a positive integer"),
        ("pgd", {"restarts": 1.0}, ValueError, "restarts must be a positive integer"),
        ("pgd", {"step_size": 0}, ValueError, "step_size must be > 0"),
        ("pgd", {"rel_step_size": float("nan")}, ValueError, "rel_step_size"),
        ("pgd", {"rel_step_size": "0.1"}, TypeError, "rel_step_size must be a number"),
        ("pgd", {"random_start": "no"}, TypeError, "random_start must be True or False"),
        ("pgd", {"early_stop": 1}, TypeError, "early_stop must be True or False"),
        ("fgsm", {"rel_step_size": -1.0}, ValueError, "rel_step_size must be > 0"),
        ("pgd", {"seed": -1}, ValueError, "seed must be an integer >= 0"),
        ("pgd", {"seed": 1.5}, ValueError, "seed must be an integer >= 0"),
        ("pgd", {"targeted": "yes"}, TypeError, "targeted must be True or False"),
        ("pgd", {"bounds": (0, float("nan"))}, ValueError, "bounds"),
        ("pgd", {"bounds": (0, 1, 2)}, TypeError, r"pair \(lo, hi\)"),
        ("cw_l2", {"abort_early": None}, TypeError, "abort_early must be True or False"),
        ("apgd_dlr", {"n_target_classes": True}, ValueError, "n_target_classes"),
        ("trades_kl", {"start_std": -1.0}, ValueError, "start_std must be >= 0"),
        ("trades_kl", {"step_size": 0.0}, ValueError, "step_size must be > 0"),
        ("art", {"eps_step_rel": 0}, ValueError, "eps_step_rel must be > 0"),
        ("art", {"eps_key": 3}, TypeError, "eps_key"),
        ("art", {"art_kwargs": [1]}, TypeError, "art_kwargs must be a dict"),
        ("art", {"attack": "NoSuchAttack"}, ValueError, "Unknown ART evasion attack"),
    ],
)
def test_every_setting_is_validated(name, kw, exc, match):
    with pytest.raises(exc, match=match):
        attacks.create(name, **kw)


def test_suite_members_are_checked():
    with pytest.raises(TypeError, match="Attack instances"):
        attacks.AttackSuite([attacks.create("pgd"), "apgd_ce"])
    with pytest.raises(ValueError, match="one norm"):
        attacks.AttackSuite([attacks.create("pgd"), attacks.create("cw_l2")])
    with pytest.raises(ValueError, match="at least one"):
        attacks.AttackSuite([])


def test_targeted_needs_target(digits_model, digits_batch):
    x, y = digits_batch
    with pytest.raises(ValueError, match="target="):
        attacks.create("pgd", targeted=True)(digits_model, x, y, eps=0.1)
    with pytest.raises(ValueError, match="untargeted"):
        attacks.create("pgd")(digits_model, x, y, eps=0.1, target=y)


def test_numpy_booleans_are_booleans():
    import numpy as np

    pgd = attacks.create("pgd", random_start=np.bool_(False), early_stop=np.bool_(True))
    assert pgd.random_start is False and pgd.early_stop is True


@pytest.mark.parametrize(
    ("name", "kw", "match"),
    [
        ("pgd", {"stepz": 3}, r"attack 'pgd' does not take 'stepz' \(did you mean 'steps'\?\)"),
        ("fgsm", {"epz": 0.1}, r"attack 'fgsm' does not take 'epz'.*it accepts: .*rel_step_size"),
        ("apgd_ce", {"n_target_classes": 3}, r"'apgd_ce' does not take.*accepts: .*restarts"),
    ],
)
def test_unknown_keyword_names_the_attack_and_its_keywords(name, kw, match):
    with pytest.raises(TypeError, match=match):
        attacks.create(name, **kw)


def test_label_and_range_mistakes_are_named(pgd, digits_model, digits_batch):
    x, y = digits_batch
    with pytest.raises(ValueError, match=r"one-hot.*y\.argmax\(1\)"):
        pgd(digits_model, x, nn.functional.one_hot(y, 10), eps=0.1)
    with pytest.raises(TypeError, match=r"\.5 that are not whole numbers.*never truncated"):
        pgd(digits_model, x, y.float() + 0.5, eps=0.1)
    with pytest.raises(
        ValueError, match=r"look like 0-255 pixel values\. Divide the inputs by 255"
    ):
        pgd(digits_model, x * 255, y, eps=0.1)
