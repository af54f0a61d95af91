"""The MNIST-C suite: the benchmark's 15 corruptions with the reference code's parameter tables.

Severity ``None`` means each corruption's benchmark setting, the default level of the
reference function (``shot_noise(x, severity=5)`` and so on), which is the one level MNIST-C
was published with. Four corruptions have a single setting in the reference; their five
levels are defined here around it, level 3 being the reference's:

* ``stripe``: the width of each inverted band, ``W / 8, 3W / 16, W / 4, 5W / 16, 3W / 8``
  (the reference inverts ``W / 4`` = 7 columns on each side);
* ``dotted_line`` and ``zigzag``: the line's width (the distance at which its intensity falls
  to 0), ``0.5, 0.75, 1, 1.5, 2`` times the reference's 2.3 pixels;
* ``canny_edges``: the edge detector's smoothing, ``sigma = 0.5, 0.75, 1, 1.25, 1.5`` (the
  reference's 1); the edge map moves off the strokes as sigma grows, and the mean change grows
  with it (0.137 to 0.181 on MNIST test digits, measured with scikit-image).

Reference quirks kept: glass blur smooths vertically only, along axis 0 (the reference passes
``multichannel=True`` for a 2-D image, so scikit-image took the columns for channels) and
visits each position with probability 1/2.

References:
    Mu & Gilmer, "MNIST-C: A Robustness Benchmark for Computer Vision", ICML Workshop 2019.
    https://arxiv.org/abs/1906.02337 (code: github.com/google-research/mnist-c,
    ``corruptions.py``)
"""

from __future__ import annotations

import torch
from torch import Tensor

import robustbench_local.corruptions.blur as blur
import robustbench_local.corruptions.color as color
import robustbench_local.corruptions.edges as edges
import robustbench_local.corruptions.lines as lines
import robustbench_local.corruptions.noise as noise
import robustbench_local.corruptions.weather as weather
from attacks.rng import Stream
from robustbench_local.corruptions.geometry import skimage_affine, warp_grouped
from robustbench_local.corruptions.registry import corruption

SUITE = "mnist_c"
WIDTH_FACTORS = (0.5, 0.75, 1.0, 1.5, 2.0)
STRIPE_FRACTIONS = (1 / 8, 3 / 16, 1 / 4, 5 / 16, 3 / 8)


def _coin(draws: Stream, n: int, part: str = "sign") -> Tensor:
    """0 or 1 per sample with equal odds (``[n]`` int64)."""
    return (draws.uniform((1,), part=part).view(n) >= 0.5).long()


def _centred_warp(
    x: Tensor, scale: Tensor, rotation: Tensor, shear: Tensor, group: Tensor
) -> Tensor:
    """Warp image ``i`` by the ``group[i]``-th centred scikit-image affine map."""
    h, w = x.shape[-2:]
    m = skimage_affine(scale, rotation, shear, ((w - 1) / 2, (h - 1) / 2))
    return warp_grouped(x, m.to(x.device), group.to(x.device))


_SIGNS = torch.tensor([-1.0, 1.0], dtype=torch.float64)


@corruption(SUITE, "shot_noise", (60, 25, 12, 5, 3), default=5)
def shot_noise(x: Tensor, p: float, draws: Stream) -> Tensor:
    """Poisson noise with ``p`` photons at full intensity."""
    return noise.shot_noise(x, p, draws)


@corruption(SUITE, "impulse_noise", (0.03, 0.06, 0.09, 0.17, 0.27), default=4)
def impulse_noise(x: Tensor, p: float, draws: Stream) -> Tensor:
    """Salt and pepper noise on a fraction ``p`` of the pixels."""
    return noise.impulse_noise(x, p, draws)


@corruption(
    SUITE,
    "glass_blur",
    ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
    default=1,
    note="exact up to float rounding (the reference's vertical-only blur and coin flips kept)",
)
def glass_blur(x: Tensor, p: tuple, draws: Stream) -> Tensor:
    """Blur ``sigma``, shuffle pixels within ``delta`` for ``iterations`` passes, blur again."""
    sigma, delta, iterations = p
    return blur.glass_blur(
        x, sigma, delta, iterations, draws, swap=True, coin=True, sigma_axes=(True, False)
    )


@corruption(
    SUITE,
    "motion_blur",
    ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
    default=1,
    note="ImageMagick's kernel reimplemented; no 8-bit rounding of the result",
)
def motion_blur(x: Tensor, p: tuple, draws: Stream) -> Tensor:
    """ImageMagick's motion blur ``(radius, sigma)`` along an angle in [-45, 45] degrees."""
    angle = -45 + 90 * draws.uniform((1,), part="angle").view(x.shape[0]).to(x.device)
    return blur.motion_blur(x, p[0], p[1], angle)


@corruption(SUITE, "shear", (0.2, 0.4, 0.6, 0.8, 1.0), default=2)
def shear(x: Tensor, p: float, draws: Stream) -> Tensor:
    """Shear by ``p`` radians (scikit-image's convention) either way, about the centre."""
    s = p * _SIGNS
    return _centred_warp(x, torch.ones_like(s), torch.zeros_like(s), s, _coin(draws, x.shape[0]))


@corruption(SUITE, "scale", (1 / 0.9, 1 / 0.8, 1 / 0.7, 1 / 0.6, 1 / 0.5), default=3)
def scale(x: Tensor, p: float, draws: Stream) -> Tensor:
    """Shrink the image by ``1 / p`` about the centre (no randomness)."""
    s = torch.full((1,), p, dtype=torch.float64)
    group = torch.zeros(x.shape[0], dtype=torch.long)
    return _centred_warp(x, s, torch.zeros_like(s), torch.zeros_like(s), group)


@corruption(SUITE, "rotate", (0.2, 0.4, 0.6, 0.8, 1.0), default=2)
def rotate(x: Tensor, p: float, draws: Stream) -> Tensor:
    """Rotate by ``p`` radians either way about the centre."""
    r = p * _SIGNS
    return _centred_warp(x, torch.ones_like(r), r, torch.zeros_like(r), _coin(draws, x.shape[0]))


@corruption(SUITE, "brightness", (0.1, 0.2, 0.3, 0.4, 0.5), default=5)
def brightness(x: Tensor, p: float, draws: Stream) -> Tensor:
    """Add ``p`` to the HSV value (for gray images: to every pixel)."""
    return color.brightness(x, p)


@corruption(SUITE, "translate", (1, 2, 3, 4, 5), default=3)
def translate(x: Tensor, p: int, draws: Stream) -> Tensor:
    """Move by ``p`` pixels (on 28 pixels) along both axes, each direction at random."""
    n, _, h, w = x.shape
    group = 2 * _coin(draws, n, "sign_x") + _coin(draws, n, "sign_y")  # (x sign, y sign)
    dx = p * (w / lines.REFERENCE_SIZE) * _SIGNS.repeat_interleave(2)
    dy = p * (h / lines.REFERENCE_SIZE) * _SIGNS.repeat(2)
    m = torch.zeros(4, 2, 3, dtype=torch.float64)
    m[:, 0, 0] = m[:, 1, 1] = 1.0
    m[:, 0, 2], m[:, 1, 2] = dx, dy
    return warp_grouped(x, m.to(x.device), group.to(x.device))


@corruption(
    SUITE,
    "stripe",
    STRIPE_FRACTIONS,
    note="one setting in the reference (level 3); levels 1, 2, 4, 5 vary the band width",
)
def stripe(x: Tensor, p: float, draws: Stream) -> Tensor:
    """Invert a band of ``round(p * W)`` columns on each side."""
    return lines.stripe(x, int(p * x.shape[-1] + 0.5))


@corruption(
    SUITE,
    "fog",
    ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)),
    default=5,
    note="the 256-pixel fractal's finest levels computed near the crop only; rescaled by the "
    "range of its coarse lattice (see plasma.py)",
)
def fog(x: Tensor, p: tuple, draws: Stream) -> Tensor:
    """Plasma fog of strength ``p[0]`` and roughness decay ``p[1]`` (a 256-pixel map)."""
    return weather.fog(x, p[0], p[1], 256, draws)


@corruption(
    SUITE,
    "spatter",
    (
        (0.65, 0.3, 4, 0.69, 0.6, 0),
        (0.65, 0.3, 3, 0.68, 0.6, 0),
        (0.65, 0.3, 2, 0.68, 0.5, 0),
        (0.65, 0.3, 1, 0.65, 1.5, 1),
        (0.67, 0.4, 1, 0.65, 1.5, 1),
    ),
    default=4,
)
def spatter(x: Tensor, p: tuple, draws: Stream) -> Tensor:
    """Gray mud spatter (the reference's MNIST version paints every level with mud)."""
    return weather.mud(x, p, (63.0,), draws)


@corruption(
    SUITE,
    "dotted_line",
    WIDTH_FACTORS,
    note="one setting in the reference (level 3); levels 1, 2, 4, 5 vary the line width",
)
def dotted_line(x: Tensor, p: float, draws: Stream) -> Tensor:
    """A dashed line across the image (width ``p`` times the reference's)."""
    return lines.dotted_line(x, p, draws)


@corruption(
    SUITE,
    "zigzag",
    WIDTH_FACTORS,
    note="one setting in the reference (level 3); levels 1, 2, 4, 5 vary the line width",
)
def zigzag(x: Tensor, p: float, draws: Stream) -> Tensor:
    """A zigzag line across the image (width ``p`` times the reference's)."""
    return lines.zigzag(x, p, draws)


@corruption(
    SUITE,
    "canny_edges",
    (0.5, 0.75, 1.0, 1.25, 1.5),
    note="one setting in the reference (level 3, sigma 1); the levels vary the smoothing",
)
def canny_edges(x: Tensor, p: float, draws: Stream) -> Tensor:
    """The image replaced by its Canny edge map (smoothing ``sigma = p``)."""
    return edges.canny(x, p)


__all__ = ["SUITE"]
