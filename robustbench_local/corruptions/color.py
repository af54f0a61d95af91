"""Color corruptions in HSV space: brightness, saturation; and contrast.

The reference converts with scikit-image's ``rgb2hsv``/``hsv2rgb``, changes one HSV channel
and converts back. Changing V or S with the hue kept has a closed form that skips the round
trip: with ``v = max(r, g, b)`` and ``s = (v - min) / v``, every channel is
``v (1 - s g(h))`` for a function ``g`` of the hue alone, so

* a new value ``v'`` gives ``rgb * v' / v`` (a black pixel, hue 0 and saturation 0, becomes
  gray ``v'``);
* a new saturation ``s'`` gives ``v - (s' / s)(v - rgb)``; a gray pixel (``s = 0``, hue 0 by
  scikit-image's convention) becomes ``(v, v (1 - s'), v (1 - s'))``, reddish, as in the
  reference.

References:
    Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
    Perturbations", ICLR 2019. https://arxiv.org/abs/1903.12261
    Smith, "Color Gamut Transform Pairs", SIGGRAPH 1978 (HSV).
"""

from __future__ import annotations

import torch
from torch import Tensor


def brightness(x: Tensor, shift: float) -> Tensor:
    """Add ``shift`` to the HSV value of every pixel (clipped at 1), hue and saturation kept."""
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + shift).clamp(0, 1)
    scaled = x * (v_new / v.clamp_min(1e-12))
    return torch.where(v > 0, scaled, v_new.expand_as(x))


def saturate(x: Tensor, factor: float, shift: float) -> Tensor:
    """Set the HSV saturation ``s`` to ``clip(s * factor + shift, 0, 1)``, hue and value kept."""
    v = x.amax(dim=1, keepdim=True)
    delta = v - x.amin(dim=1, keepdim=True)
    s = torch.where(v > 0, delta / v.clamp_min(1e-12), torch.zeros_like(v))
    s_new = (s * factor + shift).clamp(0, 1)
    colored = v - (s_new / s.clamp_min(1e-12)) * (v - x)
    low = v * (1 - s_new)
    gray = torch.cat([v, low.expand(-1, x.shape[1] - 1, -1, -1)], dim=1)
    return torch.where(delta > 0, colored, gray)


def contrast(x: Tensor, factor: float) -> Tensor:
    """Scale every channel's deviation from its own mean by ``factor``."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean) * factor + mean


def rgb_to_gray(x: Tensor) -> Tensor:
    """ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` ``[n, 1, H, W]`` (OpenCV's)."""
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


__all__ = ["brightness", "contrast", "rgb_to_gray", "saturate"]
