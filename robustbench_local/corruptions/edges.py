"""Edge maps and the image operations of the CIFAR-10-C water spatter, batched.

:func:`canny` is scikit-image's ``feature.canny`` (Gaussian smoothing with constant borders
and bleed-over correction, Sobel gradients, non-maximum suppression interpolated between the
two neighbours along the gradient, hysteresis with 8-connectivity, no edges on the outermost
pixels); hysteresis grows the strong edges through the weak ones by repeated 3x3 dilation
until nothing changes, which reaches the same connected components as labelling.
:func:`canny_opencv` is OpenCV's ``Canny`` (3x3 Sobel on the unsmoothed image, L1 magnitude,
non-maximum suppression quantised to four directions). :func:`chamfer_distance` is OpenCV's
``distanceTransform(DIST_L2, 5)`` (a 5x5 chamfer metric, weights 1, 1.4 and 2.1969) reached by
min-plus propagation, truncated at ``limit``. :func:`equalize_hist` is OpenCV's
``equalizeHist``.

References:
    Canny, "A Computational Approach To Edge Detection", IEEE TPAMI 1986.
    Borgefors, "Distance transformations in digital images", CVGIP 1986 (chamfer metrics).
    van der Walt et al., "scikit-image: image processing in Python", PeerJ 2014.
    Bradski, "The OpenCV Library", Dr. Dobb's 2000.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from robustbench_local.corruptions.filters import gaussian_blur, pad_axis, sobel

_TAN_22_5 = math.tan(math.radians(22.5))


def _shift(m: Tensor, dr: int, dc: int) -> Tensor:
    """``m[r + dr, c + dc]`` for ``[n, 1, H, W]`` (zeros past the border)."""
    h, w = m.shape[-2:]
    padded = F.pad(m, (1, 1, 1, 1))
    return padded[..., 1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w]


# The four sectors of the gradient direction: (neighbour 1, neighbour 2) towards +gradient,
# (row, column) offsets; the weight of neighbour 2 is the ratio of the smaller to the larger
# gradient component. The -gradient side uses the opposite offsets.
_SECTORS = (((0, 1), (1, 1)), ((1, 0), (1, 1)), ((1, 0), (1, -1)), ((0, -1), (1, -1)))


def _interp_nms(isob: Tensor, jsob: Tensor, mag: Tensor, candidates: Tensor) -> Tensor:
    """Which ``candidates`` are local maxima of ``mag`` along the gradient (interpolated).

    Only the candidate pixels are examined: their neighbours are gathered from the padded
    magnitude by flat offsets.
    """
    n, _, h, w = mag.shape
    wp = w + 2
    flat = F.pad(mag, (1, 1, 1, 1)).reshape(-1)
    img, row, col = torch.nonzero(candidates.view(n, h, w)).unbind(1)
    where = (img * h + row) * w + col
    centre = (img * (h + 2) + row + 1) * wp + col + 1
    gi, gj = isob.reshape(-1)[where], jsob.reshape(-1)[where]
    ai, aj = gi.abs(), gj.abs()
    steep = ai >= aj
    sector = torch.where((gi >= 0) == (gj >= 0), steep.long(), 3 - steep.long())
    weight = torch.where(steep, aj / ai.clamp_min(1e-300), ai / aj.clamp_min(1e-300))
    table = torch.tensor(
        [[a[0] * wp + a[1], b[0] * wp + b[1]] for a, b in _SECTORS], device=mag.device
    )
    off1, off2 = table[sector, 0], table[sector, 1]
    m = flat[centre]
    plus = flat[centre + off2] * weight + flat[centre + off1] * (1 - weight)
    minus = flat[centre - off2] * weight + flat[centre - off1] * (1 - weight)
    keep = torch.zeros(n * h * w, dtype=torch.bool, device=mag.device)
    keep[where] = (plus <= m) & (minus <= m)
    return keep.view_as(candidates)


def _dilate(m: Tensor) -> Tensor:
    """3x3 binary dilation of ``[n, 1, H, W]`` masks (separable: rows, then columns)."""
    r = m.clone()
    r[..., 1:, :] |= m[..., :-1, :]
    r[..., :-1, :] |= m[..., 1:, :]
    out = r.clone()
    out[..., 1:] |= r[..., :-1]
    out[..., :-1] |= r[..., 1:]
    return out


def hysteresis(strong: Tensor, weak: Tensor) -> Tensor:
    """Pixels of ``weak`` 8-connected (through ``weak``) to a pixel of ``strong``.

    Grows the strong pixels by 3x3 dilation inside ``weak`` until nothing changes, working
    only on the images that still change.
    """
    edges = strong & weak
    active = torch.arange(edges.shape[0], device=edges.device)
    cur, cur_weak = edges, weak
    while active.numel():
        grown = _dilate(cur) & cur_weak
        changed = (grown != cur).flatten(1).any(1)
        edges[active] = grown
        active, cur, cur_weak = active[changed], grown[changed], cur_weak[changed]
    return edges


def canny(x: Tensor, sigma: float, low: float = 0.1, high: float = 0.2) -> Tensor:
    """scikit-image's ``canny(image, sigma)`` for every single-channel image ``[n, 1, H, W]``."""
    xd = x.double()
    bleed = gaussian_blur(torch.ones_like(xd[:1]), sigma, mode="constant")
    smooth = gaussian_blur(xd, sigma, mode="constant") / (bleed + torch.finfo(xd.dtype).eps)
    isob = sobel(smooth, -2)
    jsob = sobel(smooth, -1)
    mag = torch.sqrt(isob * isob + jsob * jsob)
    inner = torch.zeros_like(mag, dtype=torch.bool)
    inner[..., 1:-1, 1:-1] = True
    candidates = _interp_nms(isob, jsob, mag, inner & (mag >= low))
    return hysteresis(candidates & (mag >= high), candidates).to(x.dtype)


def _quantised_nms(dx: Tensor, dy: Tensor, mag: Tensor) -> Tensor:
    """OpenCV's non-maximum suppression over four gradient directions."""
    ax, ay = dx.abs(), dy.abs()
    horizontal = ay < ax * _TAN_22_5
    vertical = ay > ax / _TAN_22_5
    diagonal = ~horizontal & ~vertical
    s = torch.where((dx * dy) < 0, -1, 1)
    h_keep = (mag > _shift(mag, 0, -1)) & (mag >= _shift(mag, 0, 1))
    v_keep = (mag > _shift(mag, -1, 0)) & (mag >= _shift(mag, 1, 0))
    d_pos = (mag > _shift(mag, -1, -1)) & (mag > _shift(mag, 1, 1))
    d_neg = (mag > _shift(mag, -1, 1)) & (mag > _shift(mag, 1, -1))
    d_keep = torch.where(s > 0, d_pos, d_neg)
    return (horizontal & h_keep) | (vertical & v_keep) | (diagonal & d_keep)


def canny_opencv(x: Tensor, low: float, high: float) -> Tensor:
    """OpenCV's ``Canny(image, low, high)`` on 0-255 images ``[n, 1, H, W]`` (bool edges)."""
    xd = x.double()
    dx = sobel(xd, -1, mode="nearest")
    dy = sobel(xd, -2, mode="nearest")
    mag = dx.abs() + dy.abs()
    candidates = (mag > low) & _quantised_nms(dx, dy, mag)
    return hysteresis(candidates & (mag > high), candidates)


def chamfer_distance(zero: Tensor, limit: float) -> Tensor:
    """Distance of every pixel to the nearest ``zero`` pixel (5x5 chamfer), capped at ``limit``."""
    a, b, c = 1.0, 1.4, 2.1969
    steps = [(dr, dc) for dr in range(-2, 3) for dc in range(-2, 3) if (dr, dc) != (0, 0)]
    weights = {1: a, 2: b}
    d = torch.where(zero, 0.0, float(limit)).to(torch.float64)
    h, w = d.shape[-2:]
    for _ in range(int(limit) + 1):
        padded = pad_axis(pad_axis(d, 2, 2, -2, "nearest"), 2, 2, -1, "nearest")
        best = d
        for dr, dc in steps:
            if max(abs(dr), abs(dc)) == 2 and min(abs(dr), abs(dc)) != 1:
                continue  # 5x5 chamfer: only the knight moves of the outer ring
            step = c if max(abs(dr), abs(dc)) == 2 else weights[abs(dr) + abs(dc)]
            best = torch.minimum(best, padded[..., 2 + dr : 2 + dr + h, 2 + dc : 2 + dc + w] + step)
        if torch.equal(best, d):
            break
        d = best
    return d.clamp_max(limit)


def equalize_hist(q: Tensor) -> Tensor:
    """OpenCV's ``equalizeHist`` for every 8-bit image ``[n, 1, H, W]`` (int64 in 0-255)."""
    n = q.shape[0]
    flat = q.reshape(n, -1)
    hist = torch.zeros(n, 256, dtype=torch.int64, device=q.device)
    hist.scatter_add_(1, flat, torch.ones_like(flat))
    total = flat.shape[1]
    first = (hist > 0).to(torch.int64).argmax(dim=1, keepdim=True)
    first_count = hist.gather(1, first)
    cum = hist.cumsum(1) - first_count
    scale = 255.0 / (total - first_count).clamp_min(1).double()
    lut = torch.round(cum.double() * scale).clamp(0, 255).to(torch.int64)
    lut = torch.where(torch.arange(256, device=q.device).view(1, -1) <= first, 0, lut)
    constant = first_count == total
    out = lut.gather(1, flat)
    out = torch.where(constant, flat, out)
    return out.view_as(q)


__all__ = ["canny", "canny_opencv", "chamfer_distance", "equalize_hist", "hysteresis"]
