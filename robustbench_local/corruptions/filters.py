"""Batched linear filters with the border modes of SciPy, scikit-image and OpenCV.

The reference corruption code filters one image at a time with ``scipy.ndimage``,
``skimage.filters.gaussian`` and ``cv2``; each has its own kernel size rule and border rule.
Here the same filters run on a whole batch ``[n, C, H, W]`` as separable ``conv2d`` calls,
with the border handled by an index table so that any pad width works:

==============  ==========================  ==========================================
mode            SciPy name                  meaning (pad of ``a b c d``)
==============  ==========================  ==========================================
``nearest``     ``nearest``                 ``a a | a b c d | d d`` (OpenCV REPLICATE)
``reflect``     ``reflect``                 ``b a | a b c d | d c`` (half-sample symmetric)
``mirror``      ``mirror``                  ``c b | a b c d | c b`` (OpenCV REFLECT_101)
``constant``    ``constant`` (cval 0)       ``0 0 | a b c d | 0 0``
==============  ==========================  ==========================================

References:
    Virtanen et al., "SciPy 1.0", Nature Methods 2020 (``ndimage.gaussian_filter``: a
    kernel of radius ``int(truncate * sigma + 0.5)``).
    van der Walt et al., "scikit-image: image processing in Python", PeerJ 2014.
    Bradski, "The OpenCV Library", Dr. Dobb's 2000 (``GaussianBlur``, ``filter2D``, ``blur``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

MODES = ("nearest", "reflect", "mirror", "constant")


def pad_index(n: int, before: int, after: int, mode: str, device: torch.device) -> Tensor:
    """Indices into ``range(n)`` of a line padded by ``before``/``after`` samples.

    Any width works; ``constant`` padding has no index and is done by :func:`pad_axis`.
    """
    i = torch.arange(-before, n + after, device=device)
    if mode == "nearest":
        return i.clamp(0, n - 1)
    if mode == "reflect":  # period 2n: 0..n-1 then n-1..0
        j = i % (2 * n)
        return torch.where(j < n, j, 2 * n - 1 - j)
    if mode == "mirror":  # period 2n-2: 0..n-1 then n-2..1
        if n == 1:
            return torch.zeros_like(i)
        j = i % (2 * n - 2)
        return torch.where(j < n, j, 2 * n - 2 - j)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def pad_axis(x: Tensor, before: int, after: int, axis: int, mode: str) -> Tensor:
    """Pad ``x`` ``[n, C, H, W]`` along ``axis`` (-1 or -2) with one of :data:`MODES`."""
    if before == 0 and after == 0:
        return x
    n = x.shape[axis]
    pads = (before, after, 0, 0) if axis == -1 else (0, 0, before, after)
    if mode == "constant":
        return F.pad(x, pads)
    if mode == "nearest":
        return F.pad(x, pads, mode="replicate")
    if mode == "mirror" and max(before, after) < n:
        return F.pad(x, pads, mode="reflect")
    if mode == "reflect" and max(before, after) <= n:
        head = x.narrow(axis, 0, before).flip(axis)
        tail = x.narrow(axis, n - after, after).flip(axis)
        return torch.cat([head, x, tail], dim=axis)
    return x.index_select(axis, pad_index(n, before, after, mode, x.device))


def _shift_sum(padded: Tensor, taps: list[float], axis: int, size: int) -> Tensor:
    """``sum_k taps[k] * padded[..., k : k + size, ...]`` along ``axis`` (a correlation)."""
    out = None
    for k, t in enumerate(taps):
        if t == 0.0:
            continue
        part = padded.narrow(axis, k, size)
        out = part * t if out is None else out.add_(part, alpha=t)
    return out if out is not None else torch.zeros_like(padded.narrow(axis, 0, size))


def _depthwise(padded: Tensor, kernel: Tensor) -> Tensor:
    """Correlate every channel of ``[n, C, H, W]`` with the same 2-D ``kernel`` (no padding)."""
    n, c, h, w = padded.shape
    weight = kernel.to(padded.dtype).view(1, 1, *kernel.shape).expand(n * c, 1, *kernel.shape)
    out = F.conv2d(padded.reshape(1, n * c, h, w), weight, groups=n * c)
    return out.view(n, c, *out.shape[-2:])


def filter_axis(x: Tensor, kernel: Tensor, axis: int, mode: str) -> Tensor:
    """Correlate every channel of ``x`` ``[n, C, H, W]`` with a 1-D ``kernel`` along ``axis``.

    The kernel's centre is its middle sample (an odd length) or, for even lengths, the sample
    just right of the middle, as in SciPy's ``correlate1d``. Kernels of up to 3 taps, and
    float64 images, are sums of shifted slices; longer float32 kernels a depthwise ``conv2d``
    (the faster of the two on the CPU, measured; ``conv2d`` with a single input channel is
    several times slower than both, and depthwise float64 convolutions loop over channels).
    """
    k = kernel.numel()
    before = k // 2
    padded = pad_axis(x, before, k - 1 - before, axis, mode)
    taps = kernel.double().tolist()
    if sum(t != 0.0 for t in taps) <= 3 or x.dtype != torch.float32:
        return _shift_sum(padded, taps, axis, x.shape[axis])
    return _depthwise(padded, kernel.view(-1, 1) if axis == -2 else kernel.view(1, -1))


def gaussian_kernel(sigma: float, truncate: float, device: torch.device) -> Tensor:
    """SciPy's 1-D Gaussian: radius ``int(truncate * sigma + 0.5)``, normalised to sum 1."""
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, device=device, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(
    x: Tensor,
    sigma: float | Sequence[float],
    *,
    mode: str = "nearest",
    truncate: float = 4.0,
) -> Tensor:
    """``scipy.ndimage.gaussian_filter`` over the two image axes of ``[n, C, H, W]``.

    Args:
        x: Images.
        sigma: One standard deviation for both axes or ``(sigma_rows, sigma_cols)``; an axis
            with sigma 0 is left alone (as SciPy does).
        mode: Border mode (:data:`MODES`); scikit-image's ``gaussian`` default is ``nearest``.
        truncate: Kernel radius in standard deviations.

    """
    sigmas = (sigma, sigma) if isinstance(sigma, int | float) else tuple(sigma)
    for axis, s in zip((-2, -1), sigmas, strict=True):
        if s > 1e-15:
            x = filter_axis(x, gaussian_kernel(float(s), truncate, x.device), axis, mode)
    return x


def opencv_gaussian_kernel(size: int, sigma: float, device: torch.device) -> Tensor:
    """OpenCV's ``getGaussianKernel(size, sigma)`` for ``sigma > 0``."""
    t = torch.arange(size, device=device, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-(t**2) / (2 * sigma**2))
    return k / k.sum()


def box_blur(x: Tensor, size: int = 3, mode: str = "mirror") -> Tensor:
    """OpenCV's ``blur(x, (size, size))`` (a normalised box filter, REFLECT_101 borders)."""
    k = torch.full((size,), 1.0 / size, device=x.device, dtype=torch.float64)
    return filter_axis(filter_axis(x, k, -2, mode), k, -1, mode)


def filter2d(x: Tensor, kernel: Tensor, mode: str = "mirror") -> Tensor:
    """Correlate every channel of ``x`` with a 2-D odd-sized ``kernel`` (OpenCV ``filter2D``).

    All-zero outer rows and columns of the kernel are dropped first (the anti-aliased disks
    of defocus blur sit in a 17 x 17 grid but cover a few pixels).
    """
    kh, kw = kernel.shape
    nz = torch.nonzero(kernel)
    reach_r = int((nz[:, 0] - kh // 2).abs().max()) if nz.numel() else 0
    reach_c = int((nz[:, 1] - kw // 2).abs().max()) if nz.numel() else 0
    kernel = kernel[
        kh // 2 - reach_r : kh // 2 + reach_r + 1, kw // 2 - reach_c : kw // 2 + reach_c + 1
    ]
    padded = pad_axis(pad_axis(x, reach_r, reach_r, -2, mode), reach_c, reach_c, -1, mode)
    if x.dtype == torch.float32:
        return _depthwise(padded, kernel)
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    for i, row in enumerate(kernel.double().tolist()):
        band = padded.narrow(-2, i, h)
        for j, t in enumerate(row):
            if t != 0.0:
                out.add_(band.narrow(-1, j, w), alpha=t)
    return out


def sobel(x: Tensor, axis: int, mode: str = "reflect") -> Tensor:
    """``scipy.ndimage.sobel``: a central difference along ``axis`` smoothed across it."""
    diff = torch.tensor([-1.0, 0.0, 1.0], device=x.device, dtype=torch.float64)
    smooth = torch.tensor([1.0, 2.0, 1.0], device=x.device, dtype=torch.float64)
    other = -1 if axis == -2 else -2
    return filter_axis(filter_axis(x, diff, axis, mode), smooth, other, mode)


def next_pow2(n: int) -> int:
    """The smallest power of two ``>= n``."""
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


__all__ = [
    "MODES",
    "box_blur",
    "filter2d",
    "filter_axis",
    "gaussian_blur",
    "gaussian_kernel",
    "next_pow2",
    "opencv_gaussian_kernel",
    "pad_axis",
    "pad_index",
    "sobel",
]
