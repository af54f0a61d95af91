"""Weather corruptions: fog, snow, frost and spatter.

* **Fog** adds a plasma fractal (:mod:`.plasma`) and rescales by ``max / (max + strength)``.
* **Snow** follows the reference step by step (normal flakes, zoomed, thresholded, 8-bit,
  motion-blurred along a random angle in [-135, -45] degrees, added with their 180-degree
  rotation over a brightened, desaturated image); ImageMagick's motion blur is the one of
  :mod:`.blur`.
* **Frost** is procedural. The reference blends the image with a crop of one of five frost
  photographs shipped with its code (``x c0 + frost c1``); instead of the photographs, a
  fractal texture (octaves of smoothed noise with sharp "crystal" ridges) is drawn per sample
  and given the per-channel mean and spread that crops of the photographs have (measured on
  the reference's ``frost1``-``frost5`` after its 0.2x resize, one profile per photograph,
  picked at random like the photograph). It matches the photographs' statistics, not their
  exact patterns.
* **Spatter** is mud (MNIST-C, and CIFAR-10-C severities 4-5: thresholded smooth noise, blurred
  into a mask, painted brown) or water (CIFAR-10-C severities 1-3: the liquid layer's edges,
  a distance transform, histogram equalisation and an emboss filter, added in pale
  turquoise), with OpenCV's filters replaced by the batched ones of :mod:`.edges`.

References:
    Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
    Perturbations", ICLR 2019. https://arxiv.org/abs/1903.12261
    Mu & Gilmer, "MNIST-C: A Robustness Benchmark for Computer Vision", ICML Workshop 2019.
    https://arxiv.org/abs/1906.02337
"""

from __future__ import annotations

import torch
from torch import Tensor

from attacks.rng import Stream
from robustbench_local.corruptions.blur import motion_blur
from robustbench_local.corruptions.color import rgb_to_gray
from robustbench_local.corruptions.edges import canny_opencv, chamfer_distance, equalize_hist
from robustbench_local.corruptions.filters import box_blur, filter2d, gaussian_blur
from robustbench_local.corruptions.geometry import clipped_zoom
from robustbench_local.corruptions.noise import normals
from robustbench_local.corruptions.plasma import plasma

# ------------------------------------------------------------------------------------ fog


def fog(x: Tensor, strength: float, decay: float, mapsize: int, draws: Stream) -> Tensor:
    """``(x + strength * fractal) * max / (max + strength)`` with ``max`` per image."""
    n, _, h, w = x.shape
    field = plasma(n, mapsize, decay, h, w, draws, x.new_zeros(()))
    top = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + strength * field.unsqueeze(1).to(x.dtype)) * top / (top + strength)


# ----------------------------------------------------------------------------------- snow


def snow(x: Tensor, p: tuple[float, ...], draws: Stream) -> Tensor:
    """CIFAR-10-C snow with parameters ``(loc, scale, zoom, threshold, radius, sigma, mix)``."""
    loc, scale, zoom, threshold, radius, sigma, mix = p
    n, _, h, w = x.shape
    flakes = loc + scale * normals(draws, (1, h, w), "flakes").to(x.dtype)
    flakes = clipped_zoom(flakes, zoom)
    flakes = torch.where(flakes < threshold, 0.0, flakes)
    flakes = torch.floor(flakes.clamp(0, 1) * 255) / 255
    angle = -135 + 90 * draws.uniform((1,), part="angle").view(n)
    flakes = motion_blur(flakes, radius, sigma, angle)
    bright = torch.maximum(x, rgb_to_gray(x) * 1.5 + 0.5)
    x = mix * x + (1 - mix) * bright
    return x + flakes + torch.flip(flakes, dims=(-2, -1))


# ---------------------------------------------------------------------------------- frost

FROST_PROFILES = (  # per photograph: (mean R, G, B), (spread R, G, B) of 32-pixel crops
    ((0.309, 0.583, 0.646), (0.084, 0.052, 0.049)),
    ((0.777, 0.795, 0.831), (0.070, 0.072, 0.074)),
    ((0.777, 0.795, 0.831), (0.070, 0.072, 0.074)),
    ((0.565, 0.623, 0.673), (0.101, 0.102, 0.106)),
    ((0.404, 0.448, 0.494), (0.136, 0.135, 0.132)),
)
"""Statistics measured on crops of the reference's frost photographs (see the module doc)."""


def _standardise(t: Tensor) -> Tensor:
    mean = t.mean(dim=(-2, -1), keepdim=True)
    std = t.std(dim=(-2, -1), keepdim=True).clamp_min(1e-6)
    return (t - mean) / std


def frost_texture(n: int, h: int, w: int, draws: Stream, like: Tensor) -> Tensor:
    """``[n, 1, H, W]`` zero-mean unit-spread ice texture: fractal noise with sharp ridges."""
    total = torch.zeros(n, 1, h, w, device=like.device, dtype=like.dtype)
    for octave, sigma in enumerate((4.0, 2.0, 1.0, 0.5)):
        z = normals(draws, (1, h, w), ("frost", octave)).to(like.dtype)
        smooth = _standardise(gaussian_blur(z, sigma, mode="reflect"))
        ridges = 1 - 2 * smooth.abs()  # thin bright lines where the smooth noise crosses 0
        total = total + (0.5**octave) * (smooth + ridges)
    return _standardise(total)


def frost(x: Tensor, image_weight: float, frost_weight: float, draws: Stream) -> Tensor:
    """``x * image_weight + frost * frost_weight`` with a procedural frost texture."""
    n, c, h, w = x.shape
    profiles = torch.tensor(FROST_PROFILES, device=x.device, dtype=x.dtype)  # [5, 2, 3]
    pick = draws.randint(0, len(FROST_PROFILES), (1,), part="profile").view(n)
    stats = profiles[pick]  # [n, 2, 3]
    mean = stats[:, 0, :c].view(n, c, 1, 1)
    spread = stats[:, 1, :c].view(n, c, 1, 1)
    texture = (mean + spread * frost_texture(n, h, w, draws, x)).clamp(0, 1)
    return x * image_weight + texture * frost_weight


# -------------------------------------------------------------------------------- spatter


def _liquid(
    x: Tensor, loc: float, scale: float, sigma: float, threshold: float, draws: Stream
) -> Tensor:
    """The reference's liquid layer: smoothed normal noise, zero below ``threshold``."""
    h, w = x.shape[-2:]
    layer = loc + scale * normals(draws, (1, h, w), "liquid").to(x.dtype)
    layer = gaussian_blur(layer, sigma)
    return torch.where(layer < threshold, 0.0, layer)


def mud(x: Tensor, p: tuple[float, ...], color: tuple[float, ...], draws: Stream) -> Tensor:
    """Mud spatter: ``p = (loc, scale, sigma, threshold, mask_sigma, _)``, ``color`` 0-255."""
    loc, scale, sigma, threshold, mask_sigma = p[:5]
    layer = _liquid(x, loc, scale, sigma, threshold, draws)
    mask = gaussian_blur((layer > threshold).to(x.dtype), mask_sigma)
    mask = torch.where(mask < 0.8, 0.0, mask)
    paint = torch.tensor(color, device=x.device, dtype=x.dtype)[: x.shape[1]] / 255
    return x * (1 - mask) + paint.view(1, -1, 1, 1) * mask


def _water_mask(layer: Tensor) -> Tensor:
    """The reference's water mask in [0, 1]: edges -> distance -> equalise -> emboss -> blur."""
    q = torch.floor(layer * 255).clamp(0, 255)
    edges = canny_opencv(q, 50, 150)
    dist = chamfer_distance(edges, 20.0)
    dist = torch.floor(box_blur(dist))
    dist = equalize_hist(dist.long()).double()
    emboss = torch.tensor([[-2.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [0.0, 1.0, 2.0]])
    dist = filter2d(dist, emboss.to(dist.device)).round().clamp(0, 255)
    dist = box_blur(dist).round()
    m = q.double() * dist
    return m / m.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)


def water(x: Tensor, p: tuple[float, ...], draws: Stream) -> Tensor:
    """Water spatter: ``p = (loc, scale, sigma, threshold, strength, _)`` (CIFAR-10-C 1-3)."""
    loc, scale, sigma, threshold, strength = p[:5]
    layer = _liquid(x, loc, scale, sigma, threshold, draws)
    m = _water_mask(layer).to(x.dtype) * strength
    paint = torch.tensor((175.0, 238.0, 238.0), device=x.device, dtype=x.dtype)[: x.shape[1]]
    return x + m * paint.view(1, -1, 1, 1) / 255


__all__ = ["FROST_PROFILES", "fog", "frost", "frost_texture", "mud", "snow", "water"]
