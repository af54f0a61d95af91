"""Digital corruptions: JPEG compression (a real codec), pixelation and elastic warps.

JPEG goes through Pillow's encoder and decoder, one image at a time (the only per-image loop
of the package): images are rounded to 8 bits, saved at the given quality with Pillow's
defaults (4:2:0 chroma subsampling for color), and read back.

Pixelation is Pillow's ``resize(..., BOX)`` down and up again, written as two resampling
matrices per axis: Pillow's box filter, sampled at input pixel centres, gives an output pixel
the plain mean of the input pixels whose centres fall in its footprint (a nearest neighbour
when enlarging); each pass rounds to 8 bits as Pillow's 8-bit images do.

The elastic transform is the CIFAR-10-C one: a random affine map of three points (OpenCV's
``getAffineTransform``/``warpAffine``, REFLECT_101 borders), then a smooth random
displacement field (uniform noise blurred by a Gaussian, scipy's ``map_coordinates`` with
'reflect' borders).

References:
    Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
    Perturbations", ICLR 2019. https://arxiv.org/abs/1903.12261
    Simard, Steinkraus & Platt, "Best Practices for Convolutional Neural Networks Applied to
    Visual Document Analysis", ICDAR 2003 (elastic distortions).
    Wallace, "The JPEG Still Picture Compression Standard", CACM 1991.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from attacks.rng import Stream
from robustbench_local.corruptions.filters import gaussian_blur
from robustbench_local.corruptions.geometry import (
    invert_affine,
    pixel_grid,
    sample,
    solve_affine,
    warp_affine,
)


def to_uint8(x: Tensor) -> Tensor:
    """Round images in [0, 1] to 8-bit levels (still float, 0-255)."""
    return torch.round(x.clamp(0, 1) * 255)


def _jpeg_one(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode one ``[H, W]`` or ``[H, W, 3]`` uint8 image."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded)


def jpeg(x: Tensor, quality: int) -> Tensor:
    """Every image through a JPEG encode/decode at ``quality`` (Pillow)."""
    n, c, h, w = x.shape
    arrays = to_uint8(x).to(device="cpu", dtype=torch.uint8).permute(0, 2, 3, 1).numpy()
    arrays = arrays[..., 0] if c == 1 else arrays
    out = np.stack([_jpeg_one(np.ascontiguousarray(a), quality) for a in arrays])
    back = torch.from_numpy(out).to(device=x.device, dtype=x.dtype) / 255
    return back.view(n, h, w, c).permute(0, 3, 1, 2).contiguous()


def box_matrix(size_in: int, size_out: int, device: torch.device) -> Tensor:
    """``[out, in]`` weights of Pillow's BOX resampling along one axis."""
    scale = size_in / size_out
    support = 0.5 * max(scale, 1.0)
    centre = (torch.arange(size_out, device=device, dtype=torch.float64) + 0.5) * scale
    src = torch.arange(size_in, device=device, dtype=torch.float64) + 0.5
    lo = torch.floor(centre - support + 0.5).clamp_min(0).view(-1, 1)
    hi = torch.floor(centre + support + 0.5).clamp_max(size_in).view(-1, 1)
    idx = torch.arange(size_in, device=device, dtype=torch.float64).view(1, -1)
    t = (src.view(1, -1) - centre.view(-1, 1)) / max(scale, 1.0)
    weights = ((t > -0.5) & (t <= 0.5) & (idx >= lo) & (idx < hi)).double()
    return weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)


_PRECISION = 2**22
"""Pillow's fixed-point scale for 8-bit resampling coefficients (``PRECISION_BITS = 22``)."""


def _fixed_point(weights: Tensor) -> Tensor:
    """Coefficients rounded to Pillow's fixed point (still scaled by :data:`_PRECISION`)."""
    return torch.floor(weights * _PRECISION + 0.5)


def _resize_box(q: Tensor, h_out: int, w_out: int) -> Tensor:
    """Pillow's BOX resize of 0-255 images: a horizontal pass, then a vertical one.

    Each pass rounds half up in fixed point, as Pillow's 8-bit images do.
    """
    h, w = q.shape[-2:]
    half = _PRECISION // 2
    if w_out != w:
        m = _fixed_point(box_matrix(w, w_out, q.device)).to(q.dtype)
        q = torch.floor((q @ m.T + half) / _PRECISION).clamp(0, 255)
    if h_out != h:
        m = _fixed_point(box_matrix(h, h_out, q.device)).to(q.dtype)
        q = torch.floor((m @ q + half) / _PRECISION).clamp(0, 255)
    return q


def pixelate(x: Tensor, factor: float) -> Tensor:
    """Shrink to ``int(size * factor)`` pixels and enlarge back, both with Pillow's BOX."""
    h, w = x.shape[-2:]
    q = to_uint8(x).double()
    small = _resize_box(q, int(h * factor), int(w * factor))
    return (_resize_box(small, h, w) / 255).to(x.dtype)


def _random_affine(x: Tensor, shift: float, draws: Stream) -> Tensor:
    """Warp by the affine map moving three reference points by up to ``shift`` pixels."""
    n, _, h, w = x.shape
    cx, cy = float(w // 2), float(h // 2)
    half = float(min(h, w) // 3)
    src = torch.tensor(
        [[cx + half, cy + half], [cx + half, cy - half], [cx - half, cy - half]],
        device=x.device,
        dtype=torch.float64,
    ).expand(n, 3, 2)
    jitter = (2 * draws.uniform((3, 2), part="affine").to(x.device).double() - 1) * shift
    forward = solve_affine(src, src + jitter)
    return warp_affine(x, invert_affine(forward), border="mirror")


def elastic(x: Tensor, alpha: float, sigma: float, shift: float, draws: Stream) -> Tensor:
    """CIFAR-10-C's elastic transform.

    Args:
        x: Images.
        alpha: Amplitude of the displacement field (pixels).
        sigma: Its smoothness, a Gaussian's standard deviation (pixels).
        shift: Largest move of the affine map's three points (pixels).
        draws: The random stream.

    """
    h, w = x.shape[-2:]
    x = _random_affine(x, shift, draws)
    noise = 2 * draws.uniform((2, h, w), part="field").to(x.dtype) - 1
    field = gaussian_blur(noise, sigma, mode="reflect", truncate=3.0) * alpha
    cols, rows = pixel_grid(h, w, x)
    return sample(x, cols + field[:, 0], rows + field[:, 1], border="reflect")


__all__ = ["box_matrix", "elastic", "jpeg", "pixelate", "to_uint8"]
