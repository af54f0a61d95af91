"""The plasma fractal (diamond-square) behind the fog corruption, batched.

The reference grows a periodic ``S x S`` height map (``S`` a power of two: 256 in MNIST-C,
32 in CIFAR-10-C) by diamond-square steps: each new point is the mean of its four neighbours
(wrapping around) plus a uniform draw in ``[-w^2, w^2]``, with ``w`` starting at 100 and
divided by ``decay`` after each step; the map is then rescaled to [0, 1] by its own minimum
and maximum and cropped to the image.

When the map is no larger than the image needs, it is computed exactly. MNIST-C crops 28 x 28
pixels out of a 256 x 256 map, and computing 65,536 points to keep 784 is what makes its fog
slow; here the coarse levels (points 8 pixels apart, ``S / 32`` in general) are computed on the
whole torus, the finer levels only on a block around the crop (two coarse cells before it,
enough after it; each finer step drops the block's border points, whose neighbours it does
not have), and the rescaling uses the minimum and maximum of the coarse lattice. The crop is
the same random field as the reference's; only the rescaling differs, by the share of the
range that the finer levels add (about 1-3% of it).

References:
    Fournier, Fussell & Carpenter, "Computer Rendering of Stochastic Models", CACM 1982
    (the diamond-square / midpoint displacement algorithm).
    Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
    Perturbations", ICLR 2019 (``plasma_fractal`` of the fog corruption).
"""

from __future__ import annotations

import torch
from torch import Tensor

from attacks.rng import Stream
from robustbench_local.corruptions.filters import next_pow2

START_WIBBLE = 100.0
COARSE_POINTS = 32
"""Points per side of the coarse lattice computed on the whole torus for large maps."""


def _noise(draws: Stream, size: int, wibble: float, part: tuple, like: Tensor) -> Tensor:
    u = draws.uniform((size, size), part=part).to(device=like.device, dtype=like.dtype)
    return wibble * wibble * (2 * u - 1)


def refine(a: Tensor, wibble: float, draws: Stream, part: tuple) -> Tensor:
    """One diamond-square step: ``[n, k, k]`` corner lattice to ``[n, 2k, 2k]`` (periodic)."""
    k = a.shape[-1]
    down = torch.roll(a, -1, dims=1)
    centre = (a + down + torch.roll(a, -1, dims=2) + torch.roll(down, -1, dims=2)) / 4
    centre = centre + _noise(draws, k, wibble, (*part, "centre"), a)
    top = (centre + torch.roll(centre, 1, dims=1) + a + torch.roll(a, -1, dims=2)) / 4
    top = top + _noise(draws, k, wibble, (*part, "top"), a)
    left = (centre + torch.roll(centre, 1, dims=2) + a + down) / 4
    left = left + _noise(draws, k, wibble, (*part, "left"), a)
    out = a.new_empty(a.shape[0], 2 * k, 2 * k)
    out[:, 0::2, 0::2] = a
    out[:, 0::2, 1::2] = top
    out[:, 1::2, 0::2] = left
    out[:, 1::2, 1::2] = centre
    return out


def refine_open(a: Tensor, wibble: float, draws: Stream, part: tuple) -> Tensor:
    """One diamond-square step on a non-periodic ``[n, k, k]`` lattice.

    Returns the ``[n, 2(k - 2), 2(k - 2)]`` lattice of half the spacing that the step fully
    determines, starting at input point 1: the border points, whose neighbours lie outside
    the block, are dropped instead of wrapping around.
    """
    n, k = a.shape[0], a.shape[-1]
    centre = (a[:, :-1, :-1] + a[:, 1:, :-1] + a[:, :-1, 1:] + a[:, 1:, 1:]) / 4
    centre = centre + _noise(draws, k - 1, wibble, (*part, "centre"), a)
    inner, cc = a[:, 1:-1, 1:-1], centre[:, 1:, 1:]
    top = (cc + centre[:, :-1, 1:] + inner + a[:, 1:-1, 2:]) / 4
    top = top + _noise(draws, k - 2, wibble, (*part, "top"), a)
    left = (cc + centre[:, 1:, :-1] + inner + a[:, 2:, 1:-1]) / 4
    left = left + _noise(draws, k - 2, wibble, (*part, "left"), a)
    m = 2 * (k - 2)
    even = torch.stack((inner, top), dim=-1).view(n, k - 2, m)
    odd = torch.stack((left, cc), dim=-1).view(n, k - 2, m)
    return torch.stack((even, odd), dim=2).view(n, m, m)


def _grow(
    a: Tensor, steps: int, wibble: float, decay: float, draws: Stream, tag: str
) -> tuple[Tensor, float]:
    """``steps`` periodic diamond-square steps; returns the lattice and the next wibble."""
    for level in range(steps):
        a = refine(a, wibble, draws, (tag, level))
        wibble /= decay
    return a, wibble


def _rescale(m: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    return (m - lo.view(-1, 1, 1)) / (hi - lo).clamp_min(1e-12).view(-1, 1, 1)


def _window_cells(size: int, levels: int) -> int:
    """Coarse points per side of a block whose refinement covers ``size`` pixels from -2."""
    k = 3
    while True:
        m = k
        for _ in range(levels):
            m = 2 * (m - 2)
        if m >= size + 2:
            return k
        k += 1


def plasma(
    n: int, mapsize: int, decay: float, h: int, w: int, draws: Stream, like: Tensor
) -> Tensor:
    """``[n, h, w]`` crops in [0, 1] of the reference's ``plasma_fractal(mapsize, decay)``.

    ``like`` gives the device and dtype.
    """
    size = max(mapsize, next_pow2(max(h, w)))
    start = like.new_zeros(n, 1, 1)
    levels = size.bit_length() - 1
    if size <= next_pow2(max(h, w)) or size <= COARSE_POINTS:
        full, _ = _grow(start, levels, START_WIBBLE, decay, draws, "full")
        flat = full.reshape(n, -1)
        return _rescale(full, flat.amin(1), flat.amax(1))[:, :h, :w]
    coarse_levels = COARSE_POINTS.bit_length() - 1
    coarse, wibble = _grow(start, coarse_levels, START_WIBBLE, decay, draws, "coarse")
    fine_levels = levels - coarse_levels
    cells = _window_cells(max(h, w), fine_levels)
    idx = torch.arange(-2, cells - 2, device=like.device) % COARSE_POINTS
    block = coarse[:, idx][:, :, idx]  # starts 2 coarse cells before pixel 0
    for level in range(fine_levels):
        block = refine_open(block, wibble, draws, ("fine", level))
        wibble /= decay
    flat = coarse.reshape(n, -1)
    return _rescale(block[:, 2 : 2 + h, 2 : 2 + w], flat.amin(1), flat.amax(1))


__all__ = ["plasma", "refine", "refine_open"]
