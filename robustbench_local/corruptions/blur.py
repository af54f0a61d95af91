"""Blurs: glass (local pixel shuffling), defocus (a disk), motion (ImageMagick's) and zoom.

Glass blur follows the reference loop exactly, swap for swap: positions are visited from the
bottom right to the top left, each exchanging its pixel with a random neighbour. The loop
over positions cannot be vectorised (a swap can move a pixel an earlier swap moved), but it
runs once for the whole batch on an index permutation ``[n, H * W]``, and the images are
gathered through the final permutation. Two reference quirks are kept: the MNIST-C loop
visits a position with probability 1/2, and the CIFAR-10-C loop, written on ``[H, W, 3]``
arrays, *copies* the neighbour into the pixel instead of swapping (NumPy's tuple assignment
of two views), which is what its published images contain.

Motion blur reproduces ImageMagick's ``MotionBlurImage(radius, sigma, angle)`` (the
reference calls it through Wand): a one-sided Gaussian of ``2 * ceil(radius) + 1`` taps,
tap ``i`` reading the pixel ``(ceil(i sin(a) - 0.5), ceil(i cos(a) - 0.5))`` away (rows,
columns), edge pixels repeated past the border. This was checked against ImageMagick's
impulse response; the reference's 8-bit PNG round trip is not reproduced (values stay float).

References:
    Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
    Perturbations", ICLR 2019. https://arxiv.org/abs/1903.12261
    Mu & Gilmer, "MNIST-C: A Robustness Benchmark for Computer Vision", ICML Workshop 2019.
    https://arxiv.org/abs/1906.02337
    ImageMagick Studio, ``MagickCore/effect.c`` (``MotionBlurImage``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attacks.rng import Stream
from robustbench_local.corruptions.filters import (
    filter2d,
    gaussian_blur,
    opencv_gaussian_kernel,
)
from robustbench_local.corruptions.geometry import clipped_zoom

# ----------------------------------------------------------------------------- glass blur


def _glass_targets(
    h: int, w: int, delta: int, iterations: int, coin: bool, draws: Stream
) -> tuple[list[int], Tensor]:
    """Flat positions visited and their per-sample partners ``[iterations, P, n]``.

    One uniform per (pass, position) decides the offsets ``dx, dy`` in ``[-delta, delta)``
    and, with ``coin``, whether the position is visited at all (probability 1/2).
    """
    rows = range(h - delta, delta, -1)
    cols = range(w - delta, delta, -1)
    pos = [r * w + c for r in rows for c in cols]
    shifts = [dy * w + dx for dy in range(-delta, delta) for dx in range(-delta, delta)]
    if coin:
        shifts += [0] * len(shifts)  # tails: the position is not visited
    table = torch.tensor(shifts, device=draws.ids.device)
    u = draws.uniform((iterations, len(pos)), part="glass")
    code = (u * len(shifts)).long().clamp_max_(len(shifts) - 1)
    base = torch.tensor(pos, device=table.device).view(1, 1, -1)
    return pos, (base + table[code]).permute(1, 2, 0).contiguous()


def glass_permutation(
    n: int, h: int, w: int, delta: int, iterations: int, *, swap: bool, coin: bool, draws: Stream
) -> Tensor:
    """``[n, H * W]``: the source pixel of every output pixel after the reference's shuffle.

    The permutation is kept position-major (``[H * W, n]``, flattened) so that each step
    reads and writes one contiguous row and ``n`` scattered entries.
    """
    pos, target = _glass_targets(h, w, delta, iterations, coin, draws)
    device = target.device
    lanes = torch.arange(n, device=device)
    flat = torch.arange(h * w, device=device, dtype=torch.int32).repeat_interleave(n)
    where = target * n + lanes  # flat index of each sample's partner
    for it in range(iterations):
        for k, a in enumerate(pos):
            row = flat[a * n : (a + 1) * n]
            partner = flat[where[it, k]]
            if swap:
                flat.index_copy_(0, where[it, k], row.clone())
            row.copy_(partner)
    return flat.view(h * w, n).T


def glass_blur(
    x: Tensor,
    sigma: float,
    delta: int,
    iterations: int,
    draws: Stream,
    *,
    swap: bool,
    coin: bool,
    sigma_axes: tuple[bool, bool] = (True, True),
) -> Tensor:
    """Blur, quantise to 8 bits (truncating, as ``np.uint8`` does), shuffle, blur again."""
    sig = tuple(sigma if on else 0.0 for on in sigma_axes)
    y = gaussian_blur(x, sig)
    y = torch.floor(y * 255) / 255
    n, c, h, w = y.shape
    perm = glass_permutation(n, h, w, delta, iterations, swap=swap, coin=coin, draws=draws)
    y = y.reshape(n, c, h * w).gather(2, perm.long().unsqueeze(1).expand(n, c, h * w))
    return gaussian_blur(y.view(n, c, h, w), sig)


# --------------------------------------------------------------------------- defocus blur


def disk_kernel(radius: float, alias_blur: float, device: torch.device) -> Tensor:
    """The reference's anti-aliased disk kernel.

    A binary disk, normalised, then a small Gaussian (3x3 up to radius 8 on a 17x17 grid,
    else 5x5 on a ``2 radius + 1`` grid), with REFLECT_101 borders.
    """
    if radius <= 8:
        half, ksize = 8, 3
    else:
        half, ksize = int(radius), 5
    t = torch.arange(-half, half + 1, device=device, dtype=torch.float64)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    disk = (xx**2 + yy**2 <= radius**2).double()
    disk = disk / disk.sum()
    g = opencv_gaussian_kernel(ksize, alias_blur, device)
    return filter2d(disk.view(1, 1, *disk.shape), torch.outer(g, g))[0, 0]


def defocus_blur(x: Tensor, radius: float, alias_blur: float) -> Tensor:
    """Correlate with :func:`disk_kernel` (OpenCV ``filter2D``, REFLECT_101 borders)."""
    return filter2d(x, disk_kernel(radius, alias_blur, x.device), "mirror")


# ---------------------------------------------------------------------------- motion blur


TAIL_MASS = 1e-4
"""Motion-blur taps are dropped from the far end while their total weight stays below this
(1/40 of an 8-bit gray level, which the reference's 8-bit output cannot show)."""


def motion_kernel(radius: float, sigma: float, device: torch.device) -> Tensor:
    """ImageMagick's one-sided motion kernel: ``2 ceil(radius) + 1`` Gaussian taps, sum 1.

    Less the negligible tail (see :data:`TAIL_MASS`).
    """
    width = 2 * math.ceil(radius) + 1
    i = torch.arange(width, device=device, dtype=torch.float64)
    k = torch.exp(-(i**2) / (2 * max(sigma, 1e-12) ** 2))
    k = k / k.sum()
    tail = torch.flip(torch.cumsum(torch.flip(k, (0,)), 0), (0,))  # weight of taps i..end
    keep = max(1, int((tail >= TAIL_MASS).sum()))
    k = k[:keep]
    return k / k.sum()


def motion_blur(x: Tensor, radius: float, sigma: float, angle_deg: Tensor) -> Tensor:
    """Blur every image along its own angle ``angle_deg`` ``[n]`` (degrees, ImageMagick's).

    Each tap is a per-sample integer shift, done as a row gather then a column gather with
    clamped (edge-repeating) indices that are broadcast views, not materialised tensors.
    """
    n, c, h, w = x.shape
    kernel = motion_kernel(radius, sigma, x.device).tolist()
    a = torch.deg2rad(angle_deg.to(torch.float64)).view(n, 1)
    i = torch.arange(len(kernel), device=x.device, dtype=torch.float64).view(1, -1)
    dr = torch.ceil(i * torch.sin(a) - 0.5).long()  # [n, taps]
    dc = torch.ceil(i * torch.cos(a) - 0.5).long()
    rows = torch.arange(h, device=x.device).view(1, h)
    cols = torch.arange(w, device=x.device).view(1, w)
    out = x * kernel[0]  # tap 0 reads the pixel itself
    for t, weight in enumerate(kernel[1:], start=1):
        ridx = (rows + dr[:, t : t + 1]).clamp_(0, h - 1).view(n, 1, h, 1)
        cidx = (cols + dc[:, t : t + 1]).clamp_(0, w - 1).view(n, 1, 1, w)
        shifted = x.gather(2, ridx.expand(n, c, h, w)).gather(3, cidx.expand(n, c, h, w))
        out.add_(shifted, alpha=weight)
    return out


# ------------------------------------------------------------------------------ zoom blur


def zoom_blur(x: Tensor, factors: tuple[float, ...]) -> Tensor:
    """Average of the image and its centre zooms by each of ``factors``."""
    out = x.clone()
    for f in factors:
        out += clipped_zoom(x, f)
    return out / (len(factors) + 1)


__all__ = [
    "defocus_blur",
    "disk_kernel",
    "glass_blur",
    "glass_permutation",
    "motion_blur",
    "motion_kernel",
    "zoom_blur",
]
