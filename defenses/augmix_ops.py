"""AugMix's augmentation operations, batched in PyTorch for small gray and color images.

The nine operations of AugMix (autocontrast, equalize, posterize, rotate, solarize, shear_x,
shear_y, translate_x, translate_y) act on a batch ``[n, C, H, W]`` of images in [0, 1] on the
device of the batch, each sample with its own strength. They follow the PIL operations of the
authors' ``augmentations.py`` and its level scale: a level in ``[0.1, severity]`` (out of 10)
is turned into an operation's parameter as there (``int(level * max / 10)`` for integer
parameters); translations move by up to a third of the image side (the reference's
``IMAGE_SIZE / 3``), so they work for 28 and 32 pixel images alike. Geometric operations
resample bilinearly and fill with black, as PIL does. Channels are treated independently
(autocontrast and equalize per channel, like PIL on each band), so gray and color images are
both handled.

The operations that overlap with the test corruptions (color, contrast, brightness,
sharpness) are left out, as in the paper's default setting: augmentations must not be the
corruptions they are evaluated on.

References:
    Hendrycks, Mu, Cubuk, Zoph, Gilmer & Lakshminarayanan, "AugMix: A Simple Data Processing
    Method to Improve Robustness and Uncertainty", ICLR 2020. https://arxiv.org/abs/1912.02781
    Cubuk, Zoph, Mane, Vasudevan & Le, "AutoAugment: Learning Augmentation Policies from
    Data", CVPR 2019 (the operations and their level scale).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

LEVEL_MAX = 10.0
"""The level scale of the operations (AutoAugment's ``PARAMETER_MAX``)."""
LEVEL_MIN = 0.1
"""The smallest level drawn (the reference's ``sample_level``)."""
_GRAY_LEVELS = 255

Op = Callable[[Tensor, Tensor, Tensor], Tensor]
"""An operation ``op(x [n, C, H, W], level [n], sign [n]) -> [n, C, H, W]``."""


def _view(v: Tensor) -> Tensor:
    """A per-sample ``[n]`` tensor as ``[n, 1, 1, 1]`` for broadcasting over images."""
    return v.view(-1, 1, 1, 1)


def _int_parameter(level: Tensor, maxval: float) -> Tensor:
    """``floor(level * maxval / 10)`` per sample (the reference's ``int_parameter``)."""
    return torch.floor(level * maxval / LEVEL_MAX)


def _float_parameter(level: Tensor, maxval: float) -> Tensor:
    """``level * maxval / 10`` per sample (the reference's ``float_parameter``)."""
    return level * maxval / LEVEL_MAX


def _quantize(x: Tensor) -> Tensor:
    """The 8-bit gray levels of ``x`` in [0, 1] as int64 in ``[0, 255]``."""
    return (x * _GRAY_LEVELS).round().clamp(0, _GRAY_LEVELS).to(torch.int64)


def _dequantize(q: Tensor, like: Tensor) -> Tensor:
    """Gray levels back to ``like``'s dtype in [0, 1]."""
    return q.to(like.dtype) / _GRAY_LEVELS


# --------------------------------------------------------------------------- color operations


def autocontrast(x: Tensor, level: Tensor, sign: Tensor) -> Tensor:
    """Stretch each channel to the full range [0, 1] (constant channels are left alone)."""
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    span = hi - lo
    stretched = (x - lo) / span.clamp_min(torch.finfo(x.dtype).tiny)
    return torch.where(span > 0, stretched, x)


def equalize(x: Tensor, level: Tensor, sign: Tensor) -> Tensor:
    """Histogram-equalise each channel over its 256 gray levels (as PIL's ``equalize``).

    The lookup maps a level to the count of pixels below it divided by a step: the pixel count
    without the brightest occupied level, over 255. A channel whose step is 0 (almost one
    level) is left as it is.
    """
    n, c, h, w = x.shape
    q = _quantize(x).view(n * c, h * w)
    hist = torch.zeros(n * c, _GRAY_LEVELS + 1, dtype=torch.int64, device=x.device)
    hist.scatter_add_(1, q, torch.ones_like(q))
    top = hist.gather(1, q.amax(dim=1, keepdim=True))
    step = (h * w - top) // _GRAY_LEVELS
    below = hist.cumsum(dim=1) - hist
    lut = ((step // 2 + below) // step.clamp_min(1)).clamp_max(_GRAY_LEVELS)
    out = torch.where(step > 0, lut.gather(1, q), q)
    return _dequantize(out.view(n, c, h, w), x)


def posterize(x: Tensor, level: Tensor, sign: Tensor) -> Tensor:
    """Keep ``4 - int(level * 4 / 10)`` bits of each 8-bit gray level."""
    bits = 4 - _int_parameter(level, 4).to(torch.int64)
    unit = _view(2 ** (8 - bits))
    return _dequantize(_quantize(x) // unit * unit, x)


def solarize(x: Tensor, level: Tensor, sign: Tensor) -> Tensor:
    """Invert the gray levels at or above ``256 - int(level * 256 / 10)``."""
    threshold = _view(256 - _int_parameter(level, 256)).to(x.dtype)
    return torch.where(x * _GRAY_LEVELS >= threshold, 1.0 - x, x)


# --------------------------------------------------------------------------- geometric operations


def affine(x: Tensor, matrix: Tensor) -> Tensor:
    """Resample ``x`` through per-sample affine maps, bilinear, black outside (PIL's ``AFFINE``).

    Args:
        x: ``[n, C, H, W]`` images.
        matrix: ``[n, 2, 3]``: maps an output pixel position ``(u, v, 1)`` to the input position
            it reads, in pixel units with the origin at the image's top-left corner (pixel
            centres at ``i + 0.5``).

    Returns:
        The resampled ``[n, C, H, W]`` images.
    """
    h, w = x.shape[2], x.shape[3]
    ys = torch.arange(h, device=x.device, dtype=x.dtype) + 0.5
    xs = torch.arange(w, device=x.device, dtype=x.dtype) + 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1)  # [h, w, 3]
    src = torch.einsum("nij,hwj->nhwi", matrix.to(x.dtype), points)
    scale = torch.tensor([2.0 / w, 2.0 / h], device=x.device, dtype=x.dtype)
    grid = src * scale - 1.0
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _matrix(a: Tensor, b: Tensor, c: Tensor, d: Tensor, e: Tensor, f: Tensor) -> Tensor:
    """``[n, 2, 3]`` from the six per-sample coefficients (PIL's ``(a, b, c, d, e, f)``)."""
    return torch.stack([torch.stack([a, b, c], -1), torch.stack([d, e, f], -1)], dim=1)


def rotate(x: Tensor, level: Tensor, sign: Tensor) -> Tensor:
    """Rotate about the centre by ``int(level * 30 / 10)`` degrees (counter-clockwise for +1)."""
    theta = sign * _int_parameter(level, 30) * (math.pi / 180)
    cos, sin = torch.cos(theta), torch.sin(theta)
    cx, cy = x.shape[3] / 2, x.shape[2] / 2
    shift_x, shift_y = cx - cos * cx + sin * cy, cy - sin * cx - cos * cy
    return affine(x, _matrix(cos, -sin, shift_x, sin, cos, shift_y))


def shear_x(x: Tensor, level: Tensor, sign: Tensor) -> Tensor:
    """Shear along x by ``sign * level * 0.3 / 10`` (about the top-left corner, as PIL)."""
    zero, one = torch.zeros_like(level), torch.ones_like(level)
    return affine(x, _matrix(one, sign * _float_parameter(level, 0.3), zero, zero, one, zero))


def shear_y(x: Tensor, level: Tensor, sign: Tensor) -> Tensor:
    """Shear along y by ``sign * level * 0.3 / 10`` (about the top-left corner, as PIL)."""
    zero, one = torch.zeros_like(level), torch.ones_like(level)
    return affine(x, _matrix(one, zero, zero, sign * _float_parameter(level, 0.3), one, zero))


def translate_x(x: Tensor, level: Tensor, sign: Tensor) -> Tensor:
    """Shift along x by ``int(level * (W / 3) / 10)`` whole pixels, direction ``sign``."""
    zero, one = torch.zeros_like(level), torch.ones_like(level)
    shift = sign * _int_parameter(level, x.shape[3] / 3)
    return affine(x, _matrix(one, zero, shift, zero, one, zero))


def translate_y(x: Tensor, level: Tensor, sign: Tensor) -> Tensor:
    """Shift along y by ``int(level * (H / 3) / 10)`` whole pixels, direction ``sign``."""
    zero, one = torch.zeros_like(level), torch.ones_like(level)
    shift = sign * _int_parameter(level, x.shape[2] / 3)
    return affine(x, _matrix(one, zero, zero, zero, one, shift))


OPERATIONS: dict[str, Op] = {
    "autocontrast": autocontrast,
    "equalize": equalize,
    "posterize": posterize,
    "rotate": rotate,
    "solarize": solarize,
    "shear_x": shear_x,
    "shear_y": shear_y,
    "translate_x": translate_x,
    "translate_y": translate_y,
}
"""The AugMix operations in the reference's order (``augmentations.augmentations``)."""


def apply_operations(x: Tensor, op: Tensor, level: Tensor, sign: Tensor) -> Tensor:
    """Apply operation ``op[i]`` (an index into :data:`OPERATIONS`) to sample ``i``.

    Each operation runs once, on the samples that chose it; a sample whose index is outside
    ``[0, len(OPERATIONS))`` (e.g. -1) is left unchanged.

    Args:
        x: ``[n, C, H, W]`` images in [0, 1].
        op: ``[n]`` int64 operation indices.
        level: ``[n]`` levels in ``[0.1, 10]``.
        sign: ``[n]`` directions (+1 or -1) of the signed operations.

    Returns:
        The augmented images (a new tensor).
    """
    out = x.clone()
    for k, fn in enumerate(OPERATIONS.values()):
        rows = (op == k).nonzero().squeeze(1)
        if rows.numel():
            out[rows] = fn(x[rows], level[rows], sign[rows])
    return out


__all__ = [
    "LEVEL_MAX",
    "LEVEL_MIN",
    "OPERATIONS",
    "Op",
    "affine",
    "apply_operations",
    "autocontrast",
    "equalize",
    "posterize",
    "rotate",
    "shear_x",
    "shear_y",
    "solarize",
    "translate_x",
    "translate_y",
]
