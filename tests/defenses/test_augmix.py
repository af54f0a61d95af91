"""AugMix: the batched operations (against PIL), the mixing, the JS loss and training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import defenses
from defenses import augmix_ops as ops
from defenses.augmix import augment_and_mix, augment_chain, jensen_shannon

SHAPES = [(1, 28), (3, 32)]  # MNIST-sized gray, CIFAR-sized color
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
COMMON = {"epochs": 3, "batch_size": 64, "lr": 1e-2, "progress": False}


def images(channels: int, size: int, n: int = 6, seed: int = 0) -> torch.Tensor:
    """Random 8-bit images with a black band (so geometric ops and equalize have work)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, channels, size, size), generator=g).float() / 255
    x[..., : size // 4] = 0
    return x


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("channels", "size"), SHAPES)
@pytest.mark.parametrize("name", list(ops.OPERATIONS))
def test_operations_keep_shape_dtype_device_and_range(name, channels, size, device):
    x = images(channels, size).to(device)
    level = torch.tensor([0.1, 1.0, 3.0, 5.0, 8.0, 10.0], device=device)
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0], device=device)
    out = ops.OPERATIONS[name](x, level, sign)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    if name not in ("autocontrast", "translate_x", "translate_y"):  # these may be identities
        assert not torch.equal(out, x), f"{name} changed nothing"


def _pil_reference(name: str, img: np.ndarray, level: float):
    """The reference operation (the authors' PIL code) at ``level`` with sign +1."""
    image_mod = pytest.importorskip("PIL.Image")
    image_ops = pytest.importorskip("PIL.ImageOps")
    pil = image_mod.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
    size, bilinear = img.shape[0], image_mod.BILINEAR
    shear, shift = level * 0.3 / 10, int(level * size / 3 / 10)
    affine = {
        "shear_x": (1, shear, 0, 0, 1, 0),
        "shear_y": (1, 0, 0, shear, 1, 0),
        "translate_x": (1, 0, shift, 0, 1, 0),
        "translate_y": (1, 0, 0, 0, 1, shift),
    }
    if name in affine:
        out = pil.transform((size, size), image_mod.AFFINE, affine[name], resample=bilinear)
    elif name == "rotate":
        out = pil.rotate(int(level * 30 / 10), resample=bilinear)
    elif name == "posterize":
        out = image_ops.posterize(pil, 4 - int(level * 4 / 10))
    elif name == "solarize":
        out = image_ops.solarize(pil, 256 - int(level * 256 / 10))
    else:
        out = getattr(image_ops, name)(pil)
    arr = np.asarray(out, dtype=np.float32)
    return torch.from_numpy(arr.reshape(size, size, -1)).permute(2, 0, 1) / 255


@pytest.mark.parametrize(("channels", "size"), SHAPES)
@pytest.mark.parametrize("name", list(ops.OPERATIONS))
def test_operations_match_the_reference_pil_code(name, channels, size):
    level = 6.0
    x = (images(channels, size, n=1) * 160 + 40).round() / 255  # levels 40..200: autocontrast
    x[0, :, 2:10, 8:20] = 0.5  # a flat patch
    img = (x[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    ref = _pil_reference(name, img, level)
    out = ops.OPERATIONS[name](x, torch.tensor([level]), torch.tensor([1.0]))[0]
    diff = (out - ref).abs()
    if name in ("rotate", "shear_x", "shear_y"):  # bilinear: PIL differs at the borders only
        assert float(diff.mean()) < 0.02, float(diff.mean())
        changed = float((ref - x[0]).abs().mean())
        assert float(diff.mean()) < 0.1 * changed
    else:  # the 8-bit operations are exact (autocontrast up to PIL's truncation)
        assert float(diff.max()) <= 1 / 255 + 1e-6, float(diff.max())


def test_apply_operations_gives_each_sample_its_own_operation():
    x = images(1, 28, n=4)
    op = torch.tensor([-1, 4, 4, 2])  # none, solarize, solarize, posterize
    level = torch.tensor([5.0, 5.0, 9.0, 9.0])
    out = ops.apply_operations(x, op, level, torch.ones(4))
    assert torch.equal(out[0], x[0])
    for i in (1, 2):
        assert torch.equal(out[i], ops.solarize(x[i : i + 1], level[i : i + 1], None)[0])
    assert torch.equal(out[3], ops.posterize(x[3:], level[3:], None)[0])


@pytest.mark.parametrize(("channels", "size"), SHAPES)
def test_augment_and_mix_keeps_the_contract_and_is_seeded(channels, size):
    x = images(channels, size, n=32)
    torch.manual_seed(3)
    a = augment_and_mix(x)
    torch.manual_seed(3)
    b = augment_and_mix(x)
    c = augment_and_mix(x)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b) and not torch.equal(a, c)
    changed = (a - x).abs().flatten(1).mean(1) > 1e-3
    assert float(changed.float().mean()) > 0.8
    torch.manual_seed(0)
    chain = augment_chain(x, depth=2)
    torch.manual_seed(0)
    assert torch.equal(chain, augment_chain(x, depth=2))


def test_augment_and_mix_in_double_precision_and_bad_input():
    x = images(1, 28, n=4).double()
    assert augment_and_mix(x, width=1, depth=1).dtype == torch.float64
    with pytest.raises(ValueError, match="outside the bounds"):
        augment_and_mix(x * 2)
    with pytest.raises(ValueError, match=r"images \[N, C, H, W\]"):
        augment_and_mix(x.flatten(1))
    for kwargs, msg in [
        ({"width": 0}, "width must be a positive integer"),
        ({"depth": 0}, "depth must be -1"),
        ({"depth": -2}, "depth must be -1"),
        ({"severity": 11}, "severity must be in"),
        ({"alpha": 0.0}, "alpha must be > 0"),
    ]:
        with pytest.raises(ValueError, match=msg):
            augment_and_mix(x, **kwargs)


def test_jensen_shannon_is_zero_for_identical_distributions_and_bounded():
    torch.manual_seed(0)
    logits = torch.randn(16, 10)
    assert float(jensen_shannon(logits, logits.clone(), logits + 5.0)) == pytest.approx(0, abs=1e-6)
    a, b = torch.randn(16, 10) * 5, torch.randn(16, 10) * 5
    js = float(jensen_shannon(logits, a, b))
    assert 0.0 < js <= math.log(3)
    far = torch.full((4, 3), -30.0)
    one_hot = [far.clone().index_fill_(1, torch.tensor([k]), 30.0) for k in range(3)]
    assert float(jensen_shannon(*one_hot)) == pytest.approx(math.log(3), rel=1e-3)
    with pytest.raises(ValueError, match="two or more"):
        jensen_shannon(logits)


def test_registered_as_a_training_defense_with_the_paper_defaults():
    d = defenses.create("augmix")
    assert defenses.kinds("augmix") == ("training",)
    assert (d.width, d.depth, d.severity, d.alpha, d.js_weight, d.jsd) == (3, -1, 3, 1, 12, True)
    with pytest.raises(ValueError, match=r"images in \[0, 1\]"):
        defenses.create("augmix", bounds=(-1.0, 1.0))
    with pytest.raises(ValueError, match="width"):
        defenses.create("augmix", width=0)


@pytest.mark.parametrize("jsd", [True, False])
def test_short_fit_lowers_the_loss_and_is_deterministic(digits_sets, make_mlp, weights_equal, jsd):
    train, _, (x_test, y_test) = digits_sets
    small = torch.utils.data.Subset(train, range(640))
    history = []
    d = defenses.create("augmix", jsd=jsd, seed=1, **COMMON)
    model = d.fit(make_mlp(), small, callbacks=[lambda e, m: history.append(m)])
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    assert float((model(x_test).argmax(1) == y_test).float().mean()) > 0.75
    again = defenses.create("augmix", jsd=jsd, seed=1, **COMMON).fit(make_mlp(), small)
    assert weights_equal(model, again)
