"""Contract tests over every registered corruption, oracles for the building blocks, bad input.

Gray images are scikit-learn's digits upsampled to 28 (and more) pixels; color images are
crops of the two photographs scikit-learn ships. Both are real images, offline.
"""

from __future__ import annotations

import colorsys
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits, load_sample_images

import robustbench_local as rbl
from attacks.rng import Stream
from robustbench_local.corruptions import CORRUPTIONS, api, corrupt, corruption_info
from robustbench_local.corruptions.blur import glass_permutation, motion_blur
from robustbench_local.corruptions.color import saturate
from robustbench_local.corruptions.digital import pixelate
from robustbench_local.corruptions.noise import poisson

ENTRIES = [
    (CORRUPTIONS.metadata(k)["suite"], CORRUPTIONS.metadata(k)["corruption"])
    for k in CORRUPTIONS.names()
]
IDS = [f"{s}/{n}" for s, n in ENTRIES]
DETERMINISTIC = {
    ("mnist_c", "scale"),
    ("mnist_c", "brightness"),
    ("mnist_c", "stripe"),
    ("mnist_c", "canny_edges"),
    ("cifar10_c", "defocus_blur"),
    ("cifar10_c", "zoom_blur"),
    ("cifar10_c", "brightness"),
    ("cifar10_c", "contrast"),
    ("cifar10_c", "pixelate"),
    ("cifar10_c", "jpeg_compression"),
    ("cifar10_c", "gaussian_blur"),
    ("cifar10_c", "saturate"),
}
# Severity pairs (s, s + 1) whose mean change goes *down* (or stays level) in the reference
# code itself, measured by benchmarks/corruptions.py on 500 images: e.g. CIFAR-10-C's elastic
# transform changes images less at every level, saturate desaturates at 1-2 and saturates at
# 3-5, spatter is water at 1-3 and mud at 4-5. Every other pair must not go down (by more than
# 5%, the noise of a few dozen images).
REFERENCE_DECREASES = {
    ("mnist_c", "spatter"): {3},
    ("mnist_c", "fog"): {3},
    ("mnist_c", "motion_blur"): {4},
    ("cifar10_c", "glass_blur"): {2, 4},
    ("cifar10_c", "motion_blur"): {3},
    ("cifar10_c", "frost"): {3},
    ("cifar10_c", "elastic_transform"): {1, 2, 3, 4},
    ("cifar10_c", "spatter"): {3},
    ("cifar10_c", "saturate"): {2},
}


def _gray(n: int, size: int | tuple[int, int] = 28) -> torch.Tensor:
    digits = torch.tensor(load_digits().images[:n], dtype=torch.float32).unsqueeze(1) / 16
    return F.interpolate(digits, size=size, mode="bilinear", align_corners=False).clamp(0, 1)


def _color(n: int, size: int | tuple[int, int] = 32) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    photos = [
        torch.from_numpy(np.asarray(p, dtype=np.float32) / 255) for p in load_sample_images().images
    ]
    gen = torch.Generator().manual_seed(0)
    crops = []
    for i in range(n):
        small = F.avg_pool2d(photos[i % 2].permute(2, 0, 1).unsqueeze(0), 4)[0]
        r = int(torch.randint(0, small.shape[1] - h, (1,), generator=gen))
        c = int(torch.randint(0, small.shape[2] - w, (1,), generator=gen))
        crops.append(small[:, r : r + h, c : c + w])
    return torch.stack(crops)


@pytest.fixture(scope="module")
def images() -> dict[str, torch.Tensor]:
    return {"mnist_c": _gray(48), "cifar10_c": _color(48)}


def _images(images, suite: str, n: int) -> torch.Tensor:
    return images[suite][:n].clone()


# ---------------------------------------------------------------------------- the registry


def test_suites_have_the_papers_corruptions_in_order():
    assert rbl.corruption_names("mnist_c") == [
        "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "shear", "scale", "rotate",
        "brightness", "translate", "stripe", "fog", "spatter", "dotted_line", "zigzag",
        "canny_edges",
    ]  # fmt: skip
    cifar = rbl.corruption_names("cifar10_c")
    assert len(cifar) == 19 and cifar[0] == "gaussian_noise" and cifar[14] == "jpeg_compression"
    held_out = [n for n in cifar if corruption_info(n, "cifar10_c")["held_out"]]
    assert held_out == ["speckle_noise", "gaussian_blur", "spatter", "saturate"]
    assert "shot_noise" in rbl.corruption_names() and "stripe" in rbl.corruption_names()


def test_benchmark_settings_follow_the_reference_defaults():
    defaults = {
        n: corruption_info(n, "mnist_c")["default"] for n in rbl.corruption_names("mnist_c")
    }
    assert defaults["shot_noise"] == 5 and defaults["impulse_noise"] == 4
    assert defaults["glass_blur"] == 1 and defaults["shear"] == 2 and defaults["scale"] == 3
    assert defaults["fog"] == 5 and defaults["spatter"] == 4 and defaults["stripe"] == 3
    assert corruption_info("shot_noise", "mnist_c")["params"] == (60, 25, 12, 5, 3)
    assert corruption_info("shot_noise", "cifar10_c")["params"] == (500, 250, 100, 75, 50)


@pytest.mark.parametrize("name", ["shot_noise", "glass_blur", "scale"])
def test_severity_none_is_the_benchmark_setting(images, name):
    x = _images(images, "mnist_c", 4)
    level = corruption_info(name, "mnist_c")["default"]
    assert torch.equal(corrupt(x, name), corrupt(x, name, level))


# ------------------------------------------------------------------- contract, every entry


@pytest.mark.parametrize(("suite", "name"), ENTRIES, ids=IDS)
def test_keeps_shape_dtype_device_and_range(images, suite, name):
    x = _images(images, suite, 4)
    for severity in (1, 2, 3, 4, 5):
        y = corrupt(x, name, severity, suite=suite)
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
        assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1
    y64 = corrupt(x.double(), name, 3, suite=suite)
    assert y64.dtype == torch.float64 and y64.min() >= 0 and y64.max() <= 1


@pytest.mark.parametrize(("suite", "name"), ENTRIES, ids=IDS)
def test_other_image_sizes(suite, name):
    make = _gray if suite == "mnist_c" else _color
    for size in (28, 32, (36, 44)):
        x = make(3, size)
        y = corrupt(x, name, 3, suite=suite)
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
        assert (y - x).abs().amax() > 1e-3


@pytest.mark.parametrize(("suite", "name"), ENTRIES, ids=IDS)
def test_mean_change_grows_with_severity(images, suite, name):
    x = images[suite]
    change = [float((corrupt(x, name, s, suite=suite) - x).abs().mean()) for s in range(1, 6)]
    assert min(change) > 0
    decreases = REFERENCE_DECREASES.get((suite, name), set())
    for s in range(1, 5):
        if s not in decreases:
            assert change[s] >= 0.95 * change[s - 1], (s, change)


@pytest.mark.parametrize(("suite", "name"), ENTRIES, ids=IDS)
def test_changes_most_images_at_severity_1(images, suite, name):
    x = _images(images, suite, 16)
    y = corrupt(x, name, 1, suite=suite)
    changed = (y - x).abs().flatten(1).amax(1) > 1e-3
    assert changed.float().mean() > 0.5


@pytest.mark.parametrize(("suite", "name"), ENTRIES, ids=IDS)
def test_deterministic_per_seed_and_id(images, suite, name):
    x = _images(images, suite, 4)
    ids = torch.tensor([3, 9, 27, 81])
    a = corrupt(x, name, 3, suite=suite, seed=5, ids=ids)
    assert torch.equal(a, corrupt(x, name, 3, suite=suite, seed=5, ids=ids))
    other_seed = corrupt(x, name, 3, suite=suite, seed=6, ids=ids)
    assert torch.equal(a, other_seed) == ((suite, name) in DETERMINISTIC)


@pytest.mark.parametrize(("suite", "name"), ENTRIES, ids=IDS)
def test_batch_and_position_invariant(images, suite, name):
    x = _images(images, suite, 5)
    ids = torch.arange(100, 105)
    batch = corrupt(x, name, 4, suite=suite, ids=ids)
    flipped = corrupt(x.flip(0), name, 4, suite=suite, ids=ids.flip(0)).flip(0)
    torch.testing.assert_close(flipped, batch, atol=1e-5, rtol=0)
    for i in (0, 4):
        alone = corrupt(x[i : i + 1], name, 4, suite=suite, ids=ids[i : i + 1])
        torch.testing.assert_close(alone, batch[i : i + 1], atol=1e-5, rtol=0)


def test_chunked_batches_equal_whole_ones(images, monkeypatch):
    x = _images(images, "mnist_c", 10)
    whole = {n: corrupt(x, n, 3) for n in ("shot_noise", "glass_blur", "fog", "shear")}
    monkeypatch.setattr(api, "CPU_CHUNK_VALUES", 3 * 28 * 28)  # chunks of 3 images
    monkeypatch.setattr(api, "MIN_CHUNK_IMAGES", 1)
    for name, expected in whole.items():
        torch.testing.assert_close(corrupt(x, name, 3), expected, atol=1e-5, rtol=0)


def test_top_level_exports():
    x = _gray(2)
    assert torch.equal(rbl.corrupt(x, "stripe"), corrupt(x, "stripe"))
    assert rbl.corruption_names("mnist_c") == api.corruption_names("mnist_c")


# ------------------------------------------------------------------------------ oracles


def test_gray_brightness_adds_and_clips():
    x = _gray(4)
    torch.testing.assert_close(corrupt(x, "brightness", 2), (x + 0.2).clamp(0, 1))


def test_stripe_inverts_a_quarter_on_each_side_at_the_reference_level():
    x = _gray(2)
    y = corrupt(x, "stripe", 3)
    torch.testing.assert_close(y[..., :7], 1 - x[..., :7])
    torch.testing.assert_close(y[..., 21:], 1 - x[..., 21:])
    torch.testing.assert_close(y[..., 7:21], x[..., 7:21])


def test_saturate_matches_colorsys():
    x = torch.rand(2, 3, 4, 5, dtype=torch.float64)
    x[0, :, 0, 0] = 0.4  # a gray pixel: hue 0, so it turns reddish
    for factor, shift in ((0.3, 0.0), (2.5, 0.2)):
        got = saturate(x, factor, shift)
        pixels = x.permute(0, 2, 3, 1).reshape(-1, 3).tolist()
        want = []
        for r, g, b in pixels:
            h, s, v = colorsys.rgb_to_hsv(r, g, b)
            want.append(colorsys.hsv_to_rgb(h, min(max(s * factor + shift, 0), 1), v))
        want_t = torch.tensor(want, dtype=torch.float64).view(2, 4, 5, 3).permute(0, 3, 1, 2)
        torch.testing.assert_close(got, want_t)


def test_pixelate_matches_pillow_box_resize():
    x = _color(6)
    for factor in (0.95, 0.75, 0.65):
        got = (pixelate(x, factor) * 255).round().to(torch.uint8)
        for img, out in zip(x, got, strict=True):
            arr = (img * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            small = Image.fromarray(arr).resize((int(32 * factor),) * 2, Image.BOX)
            want = np.asarray(small.resize((32, 32), Image.BOX))
            assert np.array_equal(out.permute(1, 2, 0).numpy(), want)


def test_jpeg_goes_through_the_codec():
    x = _color(2)
    y = corrupt(x, "jpeg_compression", 5, suite="cifar10_c")
    arr = (x[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="JPEG", quality=40)
    want = np.asarray(Image.open(buffer))
    assert np.array_equal((y[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy(), want)


def test_motion_blur_matches_imagemagicks_impulse_response():
    # ImageMagick 6 (through Wand), radius 5, sigma 2, on a single white pixel at (14, 14):
    # the 8-bit values along the trail, measured for angles 0 and 30 degrees.
    measured = {
        0.0: {(0, 0): 84, (0, -1): 74, (0, -2): 51, (0, -3): 27, (0, -4): 11, (0, -5): 3},
        30.0: {(0, 0): 84, (0, -1): 74, (-1, -2): 51, (-1, -3): 27, (-2, -3): 11, (-2, -4): 3},
    }
    x = torch.zeros(2, 1, 28, 28, dtype=torch.float64)
    x[:, :, 14, 14] = 1.0
    y = motion_blur(x, 5, 2, torch.tensor(list(measured)))
    for i, response in enumerate(measured.values()):
        for (dr, dc), level in response.items():
            assert abs(float(y[i, 0, 14 + dr, 14 + dc]) * 255 - level) < 1.0
        assert float(y[i].sum()) == pytest.approx(1.0)


def test_glass_shuffle_is_a_permutation_when_it_swaps():
    draws = Stream(0, torch.arange(3), ("test",))
    perm = glass_permutation(3, 28, 28, 2, 2, swap=True, coin=True, draws=draws)
    assert torch.equal(perm.sort(dim=1).values, torch.arange(28 * 28).repeat(3, 1).int())
    assert (perm != torch.arange(28 * 28)).any(dim=1).all()


@pytest.mark.parametrize("lam", [0.5, 3.0, 30.0, 200.0])
def test_poisson_counts_have_the_right_mean_and_variance(lam):
    n = 20000
    draws = Stream(1, torch.arange(4), ("poisson",))
    k = poisson(torch.full((4, n), lam), draws)
    assert torch.equal(k, k.round()) and k.min() >= 0
    assert float(k.mean()) == pytest.approx(lam, rel=0.02, abs=0.02)
    assert float(k.var()) == pytest.approx(lam, rel=0.05, abs=0.05)


# ----------------------------------------------------------------------------- bad input


def test_unknown_corruption_lists_the_known_and_the_closest():
    x = _gray(1)
    with pytest.raises(ValueError, match=r"Did you mean 'shot_noise'.*Known mnist_c corruptions"):
        corrupt(x, "shot_nosie")
    with pytest.raises(ValueError, match="exists in suite 'cifar10_c'"):
        corrupt(x, "jpeg_compression")


@pytest.mark.parametrize("severity", [0, 6, -1, 2.5, True, "3"])
def test_severity_outside_1_to_5(severity):
    with pytest.raises(ValueError, match="severity must be an integer from 1 to 5"):
        corrupt(_gray(1), "shot_noise", severity)


def test_images_too_small():
    with pytest.raises(ValueError, match="at least 28x28 pixels, got 20x20"):
        corrupt(torch.rand(2, 1, 20, 20), "glass_blur")


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.rand(2, 1, 28, 28) * 255, "divide 0-255 images by 255"),
        (torch.rand(2, 1, 28, 28) - 0.5, "outside|values in"),
        (torch.full((2, 1, 28, 28), float("nan")), "NaN"),
        (torch.rand(1, 28, 28), r"\[N, C, H, W\]"),
        (torch.zeros(2, 1, 28, 28, dtype=torch.uint8), "float tensor"),
        (np.zeros((2, 1, 28, 28), dtype=np.float32), "torch.Tensor"),
    ],
)
def test_bad_images(x, match):
    with pytest.raises(ValueError, match=match):
        corrupt(x, "shot_noise")


def test_suite_that_does_not_fit_the_channels():
    with pytest.raises(ValueError, match=r"suite .mnist_c. corrupts 1-channel images.*cifar10_c"):
        corrupt(_color(1), "shot_noise", suite="mnist_c")
    with pytest.raises(ValueError, match="suite 'cifar10_c' corrupts 3-channel images"):
        corrupt(_gray(1), "shot_noise", suite="cifar10_c")
    with pytest.raises(ValueError, match="no corruption suite for 2-channel images"):
        corrupt(torch.rand(1, 2, 28, 28), "shot_noise")
    with pytest.raises(ValueError, match="suite='imagenet_c'"):
        corrupt(_gray(1), "shot_noise", suite="imagenet_c")


def test_bad_seed():
    with pytest.raises(ValueError, match="seed must be an integer"):
        corrupt(_gray(1), "shot_noise", seed=1.5)


def test_fits():
    assert api.fits("fog", "mnist_c", _gray(1)) and not api.fits("fog", "mnist_c", _color(1))
    assert not api.fits("fog", "mnist_c", torch.rand(1, 1, 20, 20))
    assert api.suite_for_channels(3) == "cifar10_c"
