"""Input denoisers: the model contract, declared flags, and adaptive attacks (BPDA/EOT)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attacks
import defenses
from attacks.adaptive import BPDA, EOT, adaptive_model, needs_adaptive
from defenses.denoising import (
    JPEG,
    PREPROCESSORS,
    BitDepth,
    GaussianBlur,
    MedianFilter,
    Preprocessed,
    TVSmoothing,
)

INPUT_DEFENSES = sorted(PREPROCESSORS)
EXPECTED_FLAGS = {  # name: (differentiable, random)
    "bit_depth": (False, False),
    "median_filter": (False, False),
    "jpeg": (False, False),
    "gaussian_blur": (True, False),
    "tv_smoothing": (True, False),
    "random_noise": (True, True),
}


def test_every_preprocessor_is_registered_with_declared_flags():
    assert set(INPUT_DEFENSES) == set(EXPECTED_FLAGS)
    assert set(INPUT_DEFENSES) | {"denoising_autoencoder"} <= set(defenses.names())
    for name, (diff, rand) in EXPECTED_FLAGS.items():
        d = defenses.create(name)
        assert (d.differentiable, d.random) == (diff, rand), name


@pytest.mark.parametrize("name", INPUT_DEFENSES)
@pytest.mark.parametrize("shape", [(5, 1, 8, 8), (3, 3, 13, 10)])
def test_preprocessor_keeps_shape_and_range(name, shape):
    torch.manual_seed(0)
    x = torch.rand(shape)
    out = defenses.create(name).preprocessor(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("name", INPUT_DEFENSES)
def test_wrapped_model_obeys_contract_and_protocol(name, digits_model, digits_batch):
    x, y = digits_batch
    wrapped = defenses.create(name).wrap(digits_model)
    assert isinstance(wrapped, Preprocessed) and not wrapped.training
    assert wrapped.classifier is digits_model
    assert isinstance(wrapped.surrogate, nn.Module)
    assert needs_adaptive(wrapped) == (
        name in ("bit_depth", "median_filter", "jpeg", "random_noise")
    )
    logits = wrapped(x)
    assert logits.shape == (x.shape[0], 10)
    assert float((logits.argmax(1) == y).float().mean()) > 0.5
    res = attacks.create("pgd", steps=5)(adaptive_model(wrapped, eot_samples=2), x, y, eps=0.1)
    assert res.x_adv.min() >= 0 and (res.x_adv - x).abs().max() <= 0.1 + 1e-6
    if name != "random_noise":
        assert torch.equal(wrapped(x), wrapped(x))


def test_bit_depth_values():
    x = torch.tensor([0.0, 0.2, 0.49, 0.51, 1.0]).view(1, 1, 1, 5)
    assert BitDepth(1)(x).flatten().tolist() == [0, 0, 0, 1, 1]
    levels = BitDepth(2)(torch.rand(1, 1, 8, 8)).unique()
    assert torch.allclose(levels * 3, (levels * 3).round())


def test_median_filter_removes_salt_noise_and_matches_reference():
    x = torch.zeros(1, 1, 6, 6)
    x[0, 0, 2, 3] = 1.0
    assert MedianFilter(3)(x).abs().max() == 0
    img = torch.rand(2, 2, 7, 7)
    padded = nn.functional.pad(img, (1, 1, 1, 1), mode="replicate")
    ref = (
        torch.stack([padded[..., i : i + 7, j : j + 7] for i in range(3) for j in range(3)], dim=-1)
        .median(dim=-1)
        .values
    )
    assert torch.equal(MedianFilter(3)(img), ref)


def test_gaussian_blur_keeps_constants_and_smooths():
    const = torch.full((1, 3, 9, 9), 0.3)
    assert torch.allclose(GaussianBlur(1.0)(const), const, atol=1e-6)
    noisy = torch.rand(1, 1, 16, 16)
    assert GaussianBlur(1.0)(noisy).var() < noisy.var() / 2


def test_jpeg_quality_orders_the_error_and_is_nearly_idempotent():
    torch.manual_seed(0)
    smooth = GaussianBlur(1.5)(torch.rand(2, 3, 16, 16))
    errors = [float((JPEG(q)(smooth) - smooth).abs().mean()) for q in (100, 75, 30, 5)]
    assert errors[0] < 0.01 and errors == sorted(errors) and errors[-1] > 3 * errors[0]
    once = JPEG(30)(smooth)
    assert (JPEG(30)(once) - once).abs().mean() < errors[2] / 2
    flat = torch.full((1, 1, 8, 8), 128 / 255)  # an 8-bit level: a flat block survives exactly
    assert torch.allclose(JPEG(50)(flat), flat)


def test_tv_smoothing_reduces_total_variation():
    def tv(z):
        return (z[..., 1:, :] - z[..., :-1, :]).abs().sum() + (z[..., 1:] - z[..., :-1]).abs().sum()

    torch.manual_seed(0)
    x = (GaussianBlur(2.0)(torch.rand(1, 1, 16, 16)) + 0.2 * torch.randn(1, 1, 16, 16)).clamp(0, 1)
    out = TVSmoothing(weight=0.2)(x)
    assert tv(out) < 0.6 * tv(x)
    assert (out - x).abs().mean() < 0.2
    x.requires_grad_(True)
    TVSmoothing()(x).sum().backward()  # declared differentiable: gradients flow
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize(("name", "kw"), [("bit_depth", {"bits": 2}), ("jpeg", {"quality": 50})])
def test_bpda_breaks_what_naive_pgd_cannot(digits_model, digits_batch, name, kw):
    """Naive PGD sees zero gradients through rounding; BPDA's straight-through pass does not."""
    x, y = digits_batch
    wrapped = defenses.create(name, **kw).wrap(digits_model)
    pgd = attacks.create("pgd", steps=40)
    clean = float((wrapped(x).argmax(1) == y).float().mean())
    naive = float(pgd(wrapped, x, y, eps=0.2).robust_accuracy)
    adaptive = float(pgd(BPDA(wrapped), x, y, eps=0.2).robust_accuracy)
    assert clean > 0.9
    assert naive > 0.8  # looks robust ...
    assert adaptive < 0.2  # ... but is not
    assert isinstance(adaptive_model(wrapped), BPDA)


def test_random_defense_gets_eot(digits_model, digits_batch):
    x, y = digits_batch
    wrapped = defenses.create("random_noise", sigma=0.2).wrap(digits_model)
    assert not torch.equal(wrapped(x), wrapped(x))
    adaptive = adaptive_model(wrapped, eot_samples=4)
    assert isinstance(adaptive, EOT)
    pgd = attacks.create("pgd", steps=20)
    torch.manual_seed(0)
    res = pgd(adaptive, x, y, eps=0.2)
    assert float(res.robust_accuracy) < 0.8


def test_denoising_autoencoder_fit_then_wrap(digits_sets, digits_model, digits_batch):
    train, val, _ = digits_sets
    x, y = digits_batch
    d = defenses.create(
        "denoising_autoencoder",
        eps=0.1,
        attack_steps=3,
        epochs=3,
        width=16,
        lr=3e-3,
        progress=False,
    )
    with pytest.raises(RuntimeError, match=r"call \.fit"):
        d.wrap(digits_model)
    history = []
    returned = d.fit(digits_model, train, val, callbacks=[lambda e, m: history.append(m)])
    assert returned is digits_model and not digits_model.training
    assert all(p.requires_grad for p in digits_model.parameters())  # classifier restored
    assert history[-1]["val_recon_mse"] < history[0]["val_recon_mse"]
    assert history[-1]["val_acc_denoised"] > 0.85
    wrapped = d.wrap(digits_model)
    assert wrapped.differentiable and not wrapped.random and not needs_adaptive(wrapped)
    noisy = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    with torch.no_grad():
        assert (d.autoencoder(noisy) - x).pow(2).mean() < (noisy - x).pow(2).mean()
        assert float((wrapped(x).argmax(1) == y).float().mean()) > 0.85
    noise_only = defenses.create("denoising_autoencoder", epochs=1, width=8, progress=False)
    assert noise_only.fit(None, train) is None
    guided = defenses.create(
        "denoising_autoencoder", logit_weight=0.1, attack_steps=2, epochs=1, progress=False
    )
    guided.fit(digits_model, train, callbacks=[lambda e, m: history.append(m)])
    assert torch.isfinite(torch.tensor(history[-1]["train_loss"]))


@pytest.mark.parametrize(
    ("name", "kw", "match"),
    [
        ("bit_depth", {"bits": 0}, "bits must be a positive integer"),
        ("bit_depth", {"bits": 32}, "between 1 and 16"),
        ("median_filter", {"size": 1}, "size must be >= 2"),
        ("gaussian_blur", {"sigma": 0}, "sigma must be > 0"),
        ("gaussian_blur", {"size": 4}, "odd"),
        ("jpeg", {"quality": 0}, "quality must be a positive integer"),
        ("jpeg", {"quality": 101}, "between 1 and 100"),
        ("tv_smoothing", {"steps": 0}, "steps must be a positive integer"),
        ("random_noise", {"sigma": -0.1}, "sigma must be > 0"),
        ("denoising_autoencoder", {"noise_std": -1}, "noise_std must be >= 0"),
    ],
)
def test_bad_settings(name, kw, match):
    with pytest.raises(ValueError, match=match):
        defenses.create(name, **kw)


def test_bad_wrap_and_input():
    with pytest.raises(TypeError, match=r"nn\.Module"):
        defenses.create("jpeg").wrap(lambda x: x)
    with pytest.raises(ValueError, match=r"images \[N, C, H, W\]"):
        MedianFilter(2)(torch.rand(4, 64))
