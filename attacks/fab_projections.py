"""Minimal-norm projections onto a hyperplane intersected with the input box (FAB's inner step).

For a batch of points ``t`` ``[n, D]`` inside the box ``[lo, hi]^D`` and hyperplanes
``w . z = b`` (``w`` ``[n, D]``, ``b`` ``[n]``), :func:`project_to_hyperplane` returns the
smallest perturbation ``d`` (in the linf or l2 norm) with ``w . (t + d) = b`` and ``t + d`` in
the box. Where the box does not reach the hyperplane, ``d`` moves every coordinate as far as the
box allows towards it (the box point of least violation, reached with the smallest norm).

One solver serves both norms. With ``c = |w . t - b|`` and ``w`` oriented so the plane lies in
the direction of decreasing ``w . z``, coordinate ``i`` can move by at most ``room_i`` (to
``lo`` where ``w_i > 0``, to ``hi`` where ``w_i < 0``). The optimal perturbation is
``d_i = -sign(w_i) * s_i * min(mu, room_i / s_i)`` for one scalar ``mu >= 0`` per point, with
``s_i = 1`` for linf (every coordinate moves by ``mu`` until it hits the box) and
``s_i = |w_i|`` for l2 (the KKT conditions: ``d = clip(-mu w)``). The progress
``P(mu) = sum_i |w_i| s_i min(mu, q_i)``, ``q_i = room_i / s_i``, is piecewise linear and
non-decreasing in ``mu``; sorting the breakpoints ``q_i`` and one cumulative sum give the
``mu`` with ``P(mu) = c`` exactly, for the whole batch at once, in ``O(D log D)`` per point.

References:
    Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive boundary
    attack", ICML 2020 (the projection step of FAB). https://arxiv.org/abs/1907.02044

"""

from __future__ import annotations

import torch
from torch import Tensor

from attacks.threat import Norm

_TINY = 1e-12


def project_to_hyperplane(
    t: Tensor, w: Tensor, b: Tensor, norm: Norm, bounds: tuple[float, float]
) -> Tensor:
    """The minimal-norm ``d`` with ``w . (t + d) = b`` and ``t + d`` inside ``bounds``.

    Args:
        t: ``[n, D]`` points inside the box.
        w: ``[n, D]`` hyperplane normals (a zero normal gives ``d = 0``).
        b: ``[n]`` hyperplane offsets.
        norm: ``linf`` or ``l2``: the norm of ``d`` that is minimised.
        bounds: The box ``(lo, hi)``.

    Returns:
        ``[n, D]`` perturbations; where the box cannot reach the hyperplane, the move to the
        box point closest to it (in ``w . z``).

    """
    lo, hi = bounds
    gap = (w * t).sum(1) - b  # we need w . d = -gap
    w = torch.where(gap.unsqueeze(1) < 0, -w, w)  # now w . d = -|gap|: decrease w . z
    gap = gap.abs()
    down = w > 0  # these coordinates move towards lo, the others towards hi
    room = torch.where(down, t - lo, hi - t).clamp_(min=0)
    size = w.abs()
    if Norm.parse(norm) is Norm.LINF:  # s_i = 1: progress |w_i| per unit, breakpoint room_i
        weight, limit = size, room.masked_fill_(size == 0, 0)
    else:  # s_i = |w_i|: progress w_i**2 per unit, breakpoint room_i / |w_i|
        weight, limit = size * size, (room / size).masked_fill_(size == 0, 0)
    move = torch.minimum(_solve_mu(weight, limit, gap).unsqueeze(1), limit)
    if Norm.parse(norm) is Norm.L2:
        move = move * size
    return torch.where(down, -move, move)  # zero where w_i = 0 (its limit is 0)


def _solve_mu(weight: Tensor, limit: Tensor, target: Tensor) -> Tensor:
    """Smallest ``mu >= 0`` with ``sum_i weight_i * min(mu, limit_i) = target`` (per row).

    Where even ``mu = max(limit)`` falls short, returns ``max(limit)``.
    """
    q, order = limit.sort(dim=1)
    a = weight.gather(1, order)
    cum_a = a.cumsum(1)  # weight of the coordinates saturated up to (and including) k
    cum_aq = (a * q).cumsum(1)  # progress they contribute once saturated
    total = cum_a[:, -1:]
    at_break = cum_aq + q * (total - cum_a)  # progress P(q_k), non-decreasing in k
    count = (at_break < target.unsqueeze(1)).sum(1, keepdim=True)  # saturated at the optimum
    k = (count - 1).clamp(min=0)
    done_a = torch.where(count > 0, cum_a.gather(1, k), 0)
    done_aq = torch.where(count > 0, cum_aq.gather(1, k), 0)
    free = (total - done_a).clamp(min=_TINY)
    mu = ((target.unsqueeze(1) - done_aq) / free).clamp(min=0)
    infeasible = count >= q.shape[1]
    return torch.where(infeasible, q[:, -1:], mu).squeeze(1)


__all__ = ["project_to_hyperplane"]
