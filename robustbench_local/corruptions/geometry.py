"""Batched resampling: affine warps, per-pixel displacements and the references' clipped zoom.

Every warp here maps an *output* pixel ``(col, row)`` to the *input* position it reads
(scikit-image's ``warp(x, inverse_map=...)`` convention) and samples bilinearly with
``F.grid_sample``. Pixel ``i`` sits at coordinate ``i``; the border rule picks how
``grid_sample`` is called:

==============  ======================================  ===================================
border          reference                               grid_sample
==============  ======================================  ===================================
``zeros``       skimage ``warp`` (constant 0)           zeros, align_corners=True
``mirror``      cv2 ``warpAffine`` BORDER_REFLECT_101   reflection, align_corners=True
``reflect``     scipy ``map_coordinates`` 'reflect'     reflection, align_corners=False
==============  ======================================  ===================================

References:
    van der Walt et al., "scikit-image: image processing in Python", PeerJ 2014
    (``AffineTransform``, ``warp``).
    Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
    Perturbations", ICLR 2019 (``clipped_zoom`` of the CIFAR-10-C code).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

_BORDERS = {
    "zeros": ("zeros", True),
    "mirror": ("reflection", True),
    "reflect": ("reflection", False),
}


def pixel_grid(h: int, w: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """``(cols, rows)`` coordinate maps ``[H, W]`` of an image (float, on ``like``'s device)."""
    rows = torch.arange(h, device=like.device, dtype=like.dtype)
    cols = torch.arange(w, device=like.device, dtype=like.dtype)
    r, c = torch.meshgrid(rows, cols, indexing="ij")
    return c, r


def sample(x: Tensor, cols: Tensor, rows: Tensor, border: str = "zeros") -> Tensor:
    """Bilinear samples of ``x`` ``[n, C, H, W]`` at pixel positions ``cols``/``rows``.

    ``cols`` and ``rows`` are ``[n, H', W']`` (or broadcastable to it) input coordinates.
    """
    padding, align = _BORDERS[border]
    h, w = x.shape[-2:]
    if align:
        gx = 2 * cols / max(w - 1, 1) - 1
        gy = 2 * rows / max(h - 1, 1) - 1
    else:
        gx = (2 * cols + 1) / w - 1
        gy = (2 * rows + 1) / h - 1
    gx, gy = torch.broadcast_tensors(gx, gy)
    grid = torch.stack((gx, gy), dim=-1).to(x.dtype)
    if grid.shape[0] != x.shape[0]:
        grid = grid.expand(x.shape[0], *grid.shape[1:])
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=align)


def _bilinear_taps(src_c: Tensor, src_r: Tensor, h: int, w: int) -> list[tuple[Tensor, Tensor]]:
    """Flat indices and weights of the four bilinear neighbours of each sample position.

    Neighbours outside the image get index ``h * w`` (a zero appended by the caller) and
    contribute nothing, as in ``grid_sample``'s zero padding.
    """
    c0, r0 = torch.floor(src_c), torch.floor(src_r)
    fc, fr = src_c - c0, src_r - r0
    taps = []
    for dr, dc, wt in (
        (0, 0, (1 - fr) * (1 - fc)),
        (0, 1, (1 - fr) * fc),
        (1, 0, fr * (1 - fc)),
        (1, 1, fr * fc),
    ):
        r, c = r0.long() + dr, c0.long() + dc
        inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        taps.append((torch.where(inside, r * w + c, h * w).flatten(), wt.flatten()))
    return taps


def _shared_taps(matrix: Tensor, h: int, w: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """``[H * W, 4]`` neighbour indices and weights of one warp for all images."""
    c, r = pixel_grid(h, w, like)
    m = matrix.to(like.dtype)
    src_c = m[0, 0] * c + m[0, 1] * r + m[0, 2]
    src_r = m[1, 0] * c + m[1, 1] * r + m[1, 2]
    taps = _bilinear_taps(src_c, src_r, h, w)
    idx = torch.stack([t[0] for t in taps], dim=1)
    return idx, torch.stack([t[1] for t in taps], dim=1).to(like.dtype)


def _integer_shifts(matrices: Tensor) -> bool:
    """Whether every map is a translation by whole pixels."""
    eye = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=matrices.dtype, device=matrices.device)
    shift = matrices[:, :, 2]
    return bool((matrices[:, :, :2] == eye).all() and (shift == shift.round()).all())


def _shift(x: Tensor, shift: Tensor) -> Tensor:
    """Image ``i`` read at ``(col + shift[i, 0], row + shift[i, 1])``, zeros outside.

    One slice copy per distinct shift (MNIST-C's translation has four), which is a few times
    faster than gathering every pixel through index tensors.
    """
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    keys = shift[:, 0] * (2 * h + 1) + shift[:, 1]
    for key in keys.unique().tolist():
        sel = (keys == key).nonzero().flatten()
        dx, dy = (int(v) for v in shift[sel[0]])
        r0, r1, c0, c1 = max(0, -dy), min(h, h - dy), max(0, -dx), min(w, w - dx)
        if r0 < r1 and c0 < c1:
            out[sel, :, r0:r1, c0:c1] = x[sel, :, r0 + dy : r1 + dy, c0 + dx : c1 + dx]
    return out


def warp_grouped(x: Tensor, matrices: Tensor, group: Tensor) -> Tensor:
    """Warp image ``i`` by ``matrices[group[i]]`` (``[G, 2, 3]``, few distinct maps; zero borders).

    MNIST-C's shear, rotation, scale and translation take one to four maps per severity. The
    images are laid out pixel-major (``[H * W, n * C]``, plus a zero row for taps outside the
    image), and each map is one ``embedding_bag``: a fused gather of the four neighbours'
    rows weighted by the map's bilinear weights, computed once for all its images. This is
    several times faster than ``grid_sample``'s per-sample grid, with the same result. The
    result is a transposed view; the caller's copy makes it contiguous.
    """
    n, ch, h, w = x.shape
    if _integer_shifts(matrices):
        return _shift(x, matrices[group, :, 2].round().long())
    cols = x.new_empty(h * w + 1, n * ch)
    cols[h * w].zero_()
    cols[: h * w] = x.reshape(n * ch, h * w).T
    if matrices.shape[0] == 1:
        idx, wt = _shared_taps(matrices[0], h, w, x)
        out = F.embedding_bag(idx, cols, per_sample_weights=wt, mode="sum")
    else:
        lanes = group.repeat_interleave(ch).view(1, -1)
        out = None
        for g in range(matrices.shape[0]):
            idx, wt = _shared_taps(matrices[g], h, w, x)
            part = F.embedding_bag(idx, cols, per_sample_weights=wt, mode="sum")
            out = part if out is None else torch.where(lanes == g, part, out)
    return out.T.unflatten(0, (n, ch)).unflatten(2, (h, w))


def warp_affine(x: Tensor, matrix: Tensor, border: str = "zeros") -> Tensor:
    """Warp ``x`` by per-sample ``[n, 2, 3]`` maps of output ``(col, row, 1)`` to input."""
    h, w = x.shape[-2:]
    c, r = pixel_grid(h, w, x)
    m = matrix.to(x.dtype).view(-1, 2, 3, 1, 1)
    src_c = m[:, 0, 0] * c + m[:, 0, 1] * r + m[:, 0, 2]
    src_r = m[:, 1, 0] * c + m[:, 1, 1] * r + m[:, 1, 2]
    return sample(x, src_c, src_r, border)


def skimage_affine(
    scale: Tensor, rotation: Tensor, shear: Tensor, center: tuple[float, float]
) -> Tensor:
    """scikit-image's ``AffineTransform(scale, rotation, shear)`` keeping ``center`` fixed.

    Args:
        scale: ``[n]`` (the same factor on both axes).
        rotation: ``[n]`` radians.
        shear: ``[n]`` radians (scikit-image's convention: ``-sin(rotation + shear)``).
        center: ``(col, row)`` of the fixed point, e.g. ``(13.5, 13.5)`` on 28 pixels.

    Returns:
        ``[n, 2, 3]`` matrices (the inverse map of a warp).

    """
    a1 = scale * torch.cos(rotation)
    a2 = -scale * torch.sin(rotation + shear)
    b1 = scale * torch.sin(rotation)
    b2 = scale * torch.cos(rotation + shear)
    cx, cy = center
    a3 = cx - a1 * cx - a2 * cy
    b3 = cy - b1 * cx - b2 * cy
    return torch.stack((torch.stack((a1, a2, a3), -1), torch.stack((b1, b2, b3), -1)), -2)


def _zoom_coords(n: int, factor: float, like: Tensor) -> Tensor:
    """Input coordinates of the ``n`` output samples of ``clipped_zoom`` along one axis.

    The reference crops the central ``ceil(n / factor)`` samples, resizes them with
    ``scipy.ndimage.zoom(order=1)`` to ``round(crop * factor)`` samples (end points aligned)
    and trims the result back to ``n`` samples, centred.
    """
    crop = math.ceil(n / factor)
    top = (n - crop) // 2
    out = round(crop * factor)
    trim = (out - n) // 2
    step = (crop - 1) / (out - 1) if out > 1 else 0.0
    j = torch.arange(n, device=like.device, dtype=torch.float64)
    return (top + (j + trim) * step).to(like.dtype)


def clipped_zoom(x: Tensor, factor: float) -> Tensor:
    """Zoom into the centre of every image by ``factor >= 1``, keeping the size (bilinear)."""
    h, w = x.shape[-2:]
    rows = _zoom_coords(h, factor, x).view(1, h, 1)
    cols = _zoom_coords(w, factor, x).view(1, 1, w)
    return sample(x, cols, rows, "zeros")


def solve_affine(src: Tensor, dst: Tensor) -> Tensor:
    """``[n, 2, 3]`` affine maps taking three points ``src`` ``[n, 3, 2]`` to ``dst``.

    OpenCV's ``getAffineTransform``.
    """
    ones = torch.ones(*src.shape[:-1], 1, device=src.device, dtype=src.dtype)
    a = torch.cat((src, ones), dim=-1)  # [n, 3, 3]
    return torch.linalg.solve(a, dst).transpose(-1, -2)


def invert_affine(m: Tensor) -> Tensor:
    """Inverse of ``[n, 2, 3]`` affine maps."""
    lin = m[..., :2]
    inv = torch.linalg.inv(lin)
    shift = -(inv @ m[..., 2:])
    return torch.cat((inv, shift), dim=-1)


__all__ = [
    "clipped_zoom",
    "invert_affine",
    "pixel_grid",
    "sample",
    "skimage_affine",
    "solve_affine",
    "warp_affine",
    "warp_grouped",
]
