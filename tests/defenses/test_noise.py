"""Gaussian-noise augmentation (Cohen et al. 2019): recipe, unclipped noise, training, errors."""

from __future__ import annotations

import pytest
import torch

import defenses
from defenses.noise import GaussianAugmentation

FAST = {"epochs": 20, "batch_size": 128, "optimizer": "adam", "lr": 1e-2, "schedule": "constant"}


def noisy_accuracy(model, x, y, sigma, draws=8) -> float:
    """Accuracy of the base model on ``x + N(0, sigma^2)`` (unclipped), averaged over draws."""
    torch.manual_seed(123)
    with torch.no_grad():
        hits = [(model(x + sigma * torch.randn_like(x)).argmax(1) == y) for _ in range(draws)]
    return float(torch.stack(hits).float().mean())


def test_registered_with_the_mnist_recipe():
    assert defenses.kinds("gaussian_augmentation") == ("training",)
    d = defenses.create("gaussian_augmentation")
    assert isinstance(d, GaussianAugmentation) and d.sigma == 0.25 and d.clip_noise is False
    t = d.trainer
    assert (t.epochs, t.batch_size, t.optimizer, t.lr) == (90, 256, "sgd", 0.01)
    assert (t.momentum, t.weight_decay, t.schedule) == (0.9, 1e-4, "piecewise")
    assert t.milestones == [30, 60] and t.gamma == 0.1
    assert defenses.create("gaussian_augmentation", epochs=30).trainer.milestones == [10, 20]
    assert defenses.create("gaussian_augmentation", milestones=[5]).trainer.milestones == [5]


def test_noise_is_not_clipped_and_has_the_right_scale():
    x = torch.full((200, 1, 28, 28), 0.5)
    torch.manual_seed(0)
    noisy = defenses.create("gaussian_augmentation", sigma=0.5).augment(x)
    assert noisy.min() < 0 and noisy.max() > 1  # as Cohen et al.: no clipping
    assert float((noisy - x).std()) == pytest.approx(0.5, rel=0.01)
    assert float((noisy - x).mean()) == pytest.approx(0.0, abs=0.005)
    clipped = defenses.create("gaussian_augmentation", sigma=0.5, clip=True).augment(x)
    assert clipped.min() == 0 and clipped.max() == 1
    fresh = defenses.create("gaussian_augmentation", sigma=0.5).augment(x)
    assert not torch.equal(fresh, noisy)  # a fresh draw per batch
    # the plain regulariser keeps clipping (the same mechanism, one home)
    assert defenses.create("standard", gaussian_noise=0.5).augment(x).max() <= 1


def test_training_on_noise_makes_the_model_right_under_noise(digits_sets, make_mlp):
    train, _, (xt, yt) = digits_sets
    sigma = 0.5
    kw = {**FAST, "progress": False}
    noisy = defenses.create("gaussian_augmentation", sigma=sigma, **kw).fit(make_mlp(), train)
    plain = defenses.create("standard", **kw).fit(make_mlp(), train)  # the same recipe, no noise
    acc_noisy, acc_plain = (
        noisy_accuracy(noisy, xt, yt, sigma),
        noisy_accuracy(plain, xt, yt, sigma),
    )
    assert acc_noisy > acc_plain + 0.05
    assert float((noisy(xt).argmax(1) == yt).float().mean()) > 0.8  # still right on clean inputs


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sigma": 0.0}, ValueError, "sigma must be > 0"),
        ({"sigma": -0.25}, ValueError, "sigma must be > 0"),
        ({"gaussian_noise": 0.1}, ValueError, "sets the noise with sigma="),
        ({"clip": "no"}, TypeError, "clip must be True or False"),
        ({"epochs": 0}, ValueError, "epochs must be a positive integer"),
    ],
)
def test_bad_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        defenses.create("gaussian_augmentation", **kwargs)
