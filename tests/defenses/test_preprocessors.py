"""Input transformations: declared flags, shape and range, and what each one does to images."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import defenses
from defenses.inference import preprocessor_names
from defenses.preprocessors import JPEG, BitDepth, GaussianBlur, MedianFilter, TVSmoothing

INPUT_DEFENSES = preprocessor_names()
EXPECTED_FLAGS = {  # name: (differentiable, random)
    "bit_depth": (False, False),
    "median_filter": (False, False),
    "jpeg": (False, False),
    "gaussian_blur": (True, False),
    "tv_smoothing": (True, False),
    "random_noise": (True, True),
}


def test_every_preprocessor_is_registered_with_declared_flags():
    assert sorted(EXPECTED_FLAGS) == INPUT_DEFENSES
    for name, (diff, rand) in EXPECTED_FLAGS.items():
        d = defenses.create(name)
        cls = defenses.DEFENSES.metadata(name)["preprocessor"]
        assert (d.differentiable, d.random) == (diff, rand) == (cls.differentiable, cls.random)
        assert type(d.preprocessor) is cls


@pytest.mark.parametrize("name", INPUT_DEFENSES)
@pytest.mark.parametrize("shape", [(5, 1, 8, 8), (3, 3, 13, 10)])
def test_preprocessor_keeps_shape_and_range(name, shape):
    torch.manual_seed(0)
    x = torch.rand(shape)
    out = defenses.create(name).preprocessor(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1


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
    ],
)
def test_bad_settings(name, kw, match):
    with pytest.raises(ValueError, match=match):
        defenses.create(name, **kw)


def test_images_only():
    with pytest.raises(ValueError, match=r"images \[N, C, H, W\]"):
        MedianFilter(2)(torch.rand(4, 64))
