"""MNIST-C's drawn corruptions: inverted stripes, a dotted line and a zigzag.

The reference draws on the 28 x 28 grid: a line is the set of pixels within a *vertical*
distance ``width = 2.3`` of the segment, with intensity ``1 + log(1 - d / width)`` (clipped
at 0), restricted to the columns the segment spans; it is added to the image and the sum
clipped at 1. Here the same construction runs for a batch, one random line per sample, and
on other sizes the 28-pixel geometry (end points, zigzag pitch, line width, dash length,
stripe width) is scaled by ``W / 28``.

References:
    Mu & Gilmer, "MNIST-C: A Robustness Benchmark for Computer Vision", ICML Workshop 2019.
    https://arxiv.org/abs/1906.02337
"""

from __future__ import annotations

import torch
from torch import Tensor

from attacks.rng import Stream

REFERENCE_SIZE = 28
LINE_WIDTH = 2.3


def line_profile(centre: Tensor, valid: Tensor, h: int, width: float) -> Tensor:
    """``[n, H, W]`` intensities of a line through row ``centre[n, 1, W]``.

    A pixel at vertical distance ``d`` gets ``1 + log(1 - d / width)`` (at least 0), in the
    columns where ``valid``.
    """
    rr = torch.arange(h, device=centre.device, dtype=centre.dtype).view(1, h, 1)
    d = (rr - centre).abs_().clamp_(max=width - 1e-10).mul_(-1.0 / width)
    return torch.log1p_(d).add_(1).clamp_(0, 1).mul_(valid)


def _segment_rows(c0: Tensor, r0: Tensor, c1: Tensor, r1: Tensor, w: int) -> tuple[Tensor, Tensor]:
    """Row of each segment ``[n, S]`` at every column ``[n, S, W]``, and where it is drawn.

    A segment is drawn in the columns ``floor(c0)`` to ``ceil(c1) - 1``, a vertical one never.
    """
    cc = torch.arange(w, device=c0.device, dtype=c0.dtype).view(1, 1, w)
    c0, r0, c1, r1 = (t.unsqueeze(-1) for t in (c0, r0, c1, r1))
    run = c1 - c0
    vertical = run == 0
    slope = (r1 - r0) / torch.where(vertical, torch.ones_like(run), run)
    rows = slope * (cc - c0) + r0
    inside = (cc >= torch.floor(c0)) & (cc < torch.ceil(c1)) & ~vertical
    return rows, inside


def stripe(x: Tensor, width: int) -> Tensor:
    """Invert the ``width`` leftmost and rightmost columns."""
    out = x.clone()
    w = x.shape[-1]
    out[..., :width] = 1 - x[..., :width]
    out[..., w - width :] = 1 - x[..., w - width :]
    return out


def dotted_line(x: Tensor, width_factor: float, draws: Stream) -> Tensor:
    """Add a dashed line from the left to the right border between random rows."""
    n, _, h, w = x.shape
    k = w / REFERENCE_SIZE
    ends = draws.randint(0, h - 1, (2,), part="rows").to(x.dtype)
    zero = x.new_zeros(n, 1)
    rows, inside = _segment_rows(zero, ends[:, :1], zero + (w - 1), ends[:, 1:], w)
    dash = max(1, round(2 * k))
    on = (torch.arange(w, device=x.device) // dash) % 2 == 1
    line = line_profile(rows, (inside & on).to(x.dtype), h, LINE_WIDTH * k * width_factor)
    return x + line.unsqueeze(1)


def _zigzag_points(r0: Tensor, r1: Tensor, k: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample zigzag vertices ``[n, P]`` (columns, rows) and valid segment masks ``[n, P-1]``.

    The reference builds the zigzag along the x axis (pitch ``a = 2``, amplitude ``b = 2``,
    length ``d``), closes it with the point ``(d, r_last / (2 (d - max_c)))``, rotates it by
    the angle of ``(c0, r0) -> (c1, r1)`` and moves it to ``(c0, r0)``.
    """
    a = b = 2.0 * k
    c0, c1 = 2.0 * k, 25.0 * k
    theta = torch.atan((r1 - r0) / (c1 - c0))
    d = (c1 - c0) / torch.cos(theta)
    zigs = torch.floor((d - a) / (2 * a)).long() + 1  # [n]
    top = int(zigs.max())
    i = torch.arange(top, device=r0.device, dtype=r0.dtype).view(1, -1)
    zc = ((2 * i + 1) * a).expand(r0.shape[0], -1)
    zr = b * (1 - 2 * (i.long() % 2)).to(r0.dtype).expand(r0.shape[0], -1)
    max_c = 2 * a * torch.floor(d / (2 * a))
    last_r = b * (1 - 2 * ((zigs - 1) % 2)).to(r0.dtype)
    tail = (d != max_c).long()
    end_c, end_r = d, last_r / (2 * (d - max_c)).clamp_min(1e-12)
    pc = torch.cat([torch.zeros_like(d).view(-1, 1), zc, torch.zeros_like(d).view(-1, 1)], 1)
    pr = torch.cat([torch.zeros_like(d).view(-1, 1), zr, torch.zeros_like(d).view(-1, 1)], 1)
    slot = (zigs + 1).view(-1, 1)
    pc = pc.scatter(1, slot, end_c.view(-1, 1))
    pr = pr.scatter(1, slot, end_r.view(-1, 1))
    seg = torch.arange(1, top + 2, device=r0.device).view(1, -1)
    valid = seg <= (zigs + tail).view(-1, 1)
    cos, sin = torch.cos(theta).view(-1, 1), torch.sin(theta).view(-1, 1)
    cols = cos * pc - sin * pr + c0
    rows = sin * pc + cos * pr + r0.view(-1, 1)
    return cols, rows, valid


def zigzag(x: Tensor, width_factor: float, draws: Stream) -> Tensor:
    """Add a zigzag line at a random height and slope (clipping after every segment)."""
    n, _, h, w = x.shape
    k = w / REFERENCE_SIZE
    r0 = draws.randint(0, h - 1, (1,), part="r0").view(n).to(x.dtype)
    rise = draws.randint(-5, 5, (1,), part="rise").view(n).to(x.dtype)
    cols, rows, valid = _zigzag_points(r0, r0 + rise * k, k)
    seg_rows, inside = _segment_rows(cols[:, :-1], rows[:, :-1], cols[:, 1:], rows[:, 1:], w)
    inside &= valid.unsqueeze(-1)
    # The reference adds the segments one by one, clipping at 1 after each; with non-negative
    # lines that is min(x + sum, 1). A column is covered by one segment, or two where they
    # meet: draw the first, second, ... segment of every column as one image each.
    rank = torch.cumsum(inside.to(torch.int64), dim=1)
    width = LINE_WIDTH * k * width_factor
    total = torch.zeros(n, h, w, device=x.device, dtype=x.dtype)
    for layer in range(1, int(rank.max()) + 1 if rank.numel() else 1):
        pick = inside & (rank == layer)
        centre = (seg_rows * pick).sum(dim=1, keepdim=True)
        total += line_profile(centre, pick.any(dim=1, keepdim=True).to(x.dtype), h, width)
    return (x + total.unsqueeze(1)).clamp(0, 1)


__all__ = ["LINE_WIDTH", "dotted_line", "line_profile", "stripe", "zigzag"]
