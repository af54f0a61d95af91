"""Threat models: the norm, the budget and the input bounds, and the per-norm vector operations.

All operations work on a batch ``delta`` of shape ``[N, ...]`` and accept ``eps`` as a float or
a per-sample tensor of shape ``[N]``. Three norms: linf, l2 and l1. For l1 the projection onto
the ball is Duchi et al.'s sorting algorithm, and :func:`project_and_clip` computes the exact
Euclidean projection onto the intersection of the l1 ball and the input box, as l1-APGD does
(Croce & Hein, ICCV 2021), also by sorting.

References:
    Duchi, Shalev-Shwartz, Singer & Chandra, "Efficient Projections onto the l1-Ball for
    Learning in High Dimensions", ICML 2008.
    Croce & Hein, "Mind the Box: l1-APGD for Sparse Adversarial Attacks on Image
    Classifiers", ICML 2021.
    Barthe, Guedon, Mendelson & Naor, "A probabilistic approach to the geometry of the
    l_p^n-ball", Annals of Probability 2005 (uniform sampling in the l1 ball).

"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import torch
from torch import Tensor

from attacks.rows import row_index, take_rows
from attacks.validation import check_bounds, check_number

_TINY = 1e-12


class Norm(str, Enum):
    """The supported perturbation norms."""

    LINF = "linf"
    L2 = "l2"
    L1 = "l1"

    @classmethod
    def parse(cls, value: str | Norm) -> Norm:
        """Parse ``"linf"``/``"inf"``/``"l2"``/``"2"``/``"l1"``/``"1"`` (any case) into a ``Norm``.

        Raises:
            ValueError: For an unknown norm, listing the known ones.

        """
        if isinstance(value, Norm):
            return value
        key = str(value).lower().replace("_", "")
        aliases = {
            "linf": cls.LINF,
            "inf": cls.LINF,
            "l2": cls.L2,
            "2": cls.L2,
            "l1": cls.L1,
            "1": cls.L1,
        }
        if key not in aliases:
            raise ValueError(f"Unknown norm {value!r}; use one of: linf, l2, l1.")
        return aliases[key]

    @property
    def dual(self) -> Norm:
        """The dual norm: ``<g, v> <= ||g||_dual * ||v||`` (linf <-> l1, l2 <-> l2)."""
        return {Norm.LINF: Norm.L1, Norm.L2: Norm.L2, Norm.L1: Norm.LINF}[self]


def require_norm(attack: str, norm: str | Norm, supported: Collection[Norm]) -> Norm:
    """Parse ``norm`` and refuse it with a clear message if ``attack`` does not support it.

    Raises:
        ValueError: ``norm`` is unknown or not in ``supported`` (the message lists them and
            names the attacks of this package that do support it).

    """
    parsed = Norm.parse(norm)
    if parsed not in supported:
        names = ", ".join(n.value for n in Norm if n in supported)
        hint = {
            Norm.L1: "fmn supports l1",
            Norm.L2: "ddn, fmn, alma and cw_l2 minimise l2",
            Norm.LINF: "fmn minimises linf; pgd and apgd_ce attack it",
        }[parsed]
        raise ValueError(f"{attack} supports norm {names}, got norm={norm!r}; {hint}")
    return parsed


@dataclass(frozen=True)
class ThreatModel:
    """A perturbation set: ``{x' : ||x' - x||_norm <= eps, lo <= x' <= hi}``.

    Args:
        norm: ``linf``, ``l2`` or ``l1``.
        eps: The budget in input units (0.3 on MNIST for linf, 8/255 on CIFAR-10).
        bounds: The valid input range ``(lo, hi)``.

    """

    norm: Norm = Norm.LINF
    eps: float = 0.0
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", Norm.parse(self.norm))
        object.__setattr__(self, "bounds", check_bounds(self.bounds))
        object.__setattr__(self, "eps", check_number("eps", self.eps))


class Draws(Protocol):
    """Per-sample random draws of ``[n, *shape]``, e.g. :class:`attacks.rng.Stream`."""

    def uniform(self, shape: tuple[int, ...], part: object = 0) -> Tensor:
        """Uniforms in (0, 1)."""
        ...

    def normal(self, shape: tuple[int, ...], part: object = 0) -> Tensor:
        """Standard normals."""
        ...


def _per_sample(eps: float | Tensor, ref: Tensor) -> float | Tensor:
    """Reshape a per-sample eps tensor ``[N]`` so it broadcasts against ``ref`` ``[N, ...]``."""
    if isinstance(eps, Tensor):
        return eps.to(ref).view(-1, *([1] * (ref.dim() - 1)))
    return eps


def norm_of(delta: Tensor, norm: Norm) -> Tensor:
    """Per-sample norm of ``delta``: a tensor of shape ``[N]``."""
    flat = delta.flatten(1)
    norm = Norm.parse(norm)
    if norm is Norm.LINF:
        return flat.abs().amax(dim=1)
    if norm is Norm.L1:
        return flat.abs().sum(dim=1)
    return flat.norm(p=2, dim=1)


def project(delta: Tensor, norm: Norm, eps: float | Tensor) -> Tensor:
    """Project ``delta`` onto the ``eps``-ball of ``norm`` (per sample, Euclidean projection)."""
    norm = Norm.parse(norm)
    e = _per_sample(eps, delta)
    if norm is Norm.LINF:
        return (
            torch.maximum(torch.minimum(delta, e), -e)
            if isinstance(e, Tensor)
            else delta.clamp(-e, e)
        )
    if norm is Norm.L1:
        return project_l1(delta, eps)
    return delta * _l2_shrink(delta, e)


def _l2_shrink(delta: Tensor, e: float | Tensor) -> Tensor:
    """Per-sample factor ``min(1, e / ||delta||_2)`` that brings ``delta`` into the l2 ball."""
    n = norm_of(delta, Norm.L2).view(-1, *([1] * (delta.dim() - 1)))
    return torch.clamp(e / (n + _TINY), max=1.0)


def _eps_column(eps: float | Tensor, ref: Tensor) -> Tensor:
    """``eps`` as a ``[N, 1]`` column of the dtype and device of ``ref`` ``[N, d]``."""
    if isinstance(eps, Tensor):
        return eps.to(ref).reshape(-1, 1).expand(ref.shape[0], 1)
    return torch.full((ref.shape[0], 1), float(eps), dtype=ref.dtype, device=ref.device)


def project_l1(delta: Tensor, eps: float | Tensor) -> Tensor:
    """Euclidean projection of each row of ``delta`` onto the l1 ball of radius ``eps``.

    The projection soft-thresholds: ``sign(v) max(|v| - lam, 0)`` with ``lam >= 0`` where the
    l1 norm equals ``eps`` (Duchi et al. 2008); rows already inside the ball are unchanged.
    ``lam`` is found by :func:`l1_threshold` rather than by Duchi et al.'s sort, which costs
    more than the model's forward and backward passes on small images.

    References:
        Duchi, Shalev-Shwartz, Singer & Chandra, "Efficient Projections onto the l1-Ball for
        Learning in High Dimensions", ICML 2008.

    """
    flat = delta.flatten(1)
    return _soft_threshold(flat, torch.full_like(flat, math.inf), eps).view_as(delta)


def project_l1_box(delta: Tensor, eps: float | Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """Exact Euclidean projection of ``delta`` onto ``{||d||_1 <= eps, lower <= d <= upper}``.

    ``lower <= 0 <= upper`` elementwise (the box ``[lo - x, hi - x]`` of a clean ``x``). The
    solution is ``d_i = sign(z_i) min(max(|z_i| - lam, 0), b_i)``, with ``b_i`` the room in the
    box in the direction of ``z_i`` and ``lam >= 0`` the smallest value whose l1 norm is at
    most ``eps`` (the KKT conditions of the problem, as in Croce & Hein's l1-APGD, which finds
    ``lam`` by sorting the ``2d`` kinks of the norm; :func:`l1_threshold` finds it faster).

    References:
        Croce & Hein, "Mind the Box: l1-APGD for Sparse Adversarial Attacks on Image
        Classifiers", ICML 2021.

    """
    z = delta.flatten(1)
    b = torch.where(z >= 0, upper.flatten(1), -lower.flatten(1)).clamp(min=0)
    return _soft_threshold(z, b, eps).view_as(delta)


def _soft_threshold(z: Tensor, b: Tensor, eps: float | Tensor) -> Tensor:
    """``sign(z) min(max(|z| - lam, 0), b)`` with the threshold of :func:`l1_threshold`."""
    e = _eps_column(eps, z)
    a = z.abs()
    lam = l1_threshold(a, b, e)
    out = z.sign() * (a - lam).clamp_(min=0).minimum(b)
    n = out.abs().sum(dim=1, keepdim=True)  # rounding may leave a few ulps outside the ball
    return torch.where(n > e, out * (e / n.clamp(min=_TINY)), out)


def l1_threshold(a: Tensor, b: Tensor, e: Tensor, max_iter: int = 100) -> Tensor:
    """``[n, 1]`` the ``lam >= 0`` with ``sum_i min(max(a_i - lam, 0), b_i) = e`` (else 0).

    The left side ``g(lam)`` is piecewise linear and non-increasing, with slope minus the
    number of coordinates strictly between their two kinks ``a_i - b_i`` and ``a_i``. Newton
    steps on ``g`` are exact as soon as that set is the final one; safeguarded by a bracket
    ``g(lo) > e >= g(hi)`` (a bisection step whenever Newton leaves it), they converge in a
    handful of elementwise passes over the rows, where sorting all ``2d`` kinks costs several
    times a small model's forward and backward pass on a CPU. Rows with ``g(0) <= e`` get 0.

    Args:
        a: ``[n, d]`` magnitudes ``|z|``.
        b: ``[n, d]`` non-negative caps (``inf`` for the plain l1 ball).
        e: ``[n, 1]`` radii.
        max_iter: A bound on the iterations (bisection alone reaches float precision in 64).

    """
    tol = 16 * torch.finfo(a.dtype).eps * e.clamp(min=1)
    out = torch.zeros_like(e)
    lam, rows = out.clone(), torch.arange(a.shape[0], device=a.device)
    lo, hi = torch.zeros_like(e), a.amax(dim=1, keepdim=True)
    for _ in range(max_iter):
        t = a - lam
        g = t.clamp(min=0).minimum(b).sum(dim=1, keepdim=True)
        done = (((g - e).abs() <= tol) | ((lam == 0) & (g <= e))).squeeze(1)
        if bool(done.any()):  # a row that is done stays so: iterate the others only
            out[rows[done]] = lam[done]
            keep = row_index(~done)
            if keep.numel() == 0:
                return out
            rows, a, b, t, g, e, tol, lam, lo, hi = (
                take_rows(v, keep) for v in (rows, a, b, t, g, e, tol, lam, lo, hi)
            )
        over = g > e
        lo, hi = torch.where(over, lam, lo), torch.where(over, hi, lam)
        slope = ((t > 0) & (t < b)).sum(dim=1, keepdim=True).to(a.dtype)
        newton = lam + (g - e) / slope.clamp(min=1)
        inside = (slope > 0) & (newton > lo) & (newton < hi)
        nxt = torch.where(inside, newton, (lo + hi) / 2)
        if bool((nxt == lam).all()):
            break
        lam = nxt
    out[rows] = lam
    return out


def dual_norm_of(grad: Tensor, norm: Norm) -> Tensor:
    """Per-sample dual norm of ``grad`` (l1 for linf, l2 for l2, linf for l1): ``[N]``."""
    return norm_of(grad, Norm.parse(norm).dual)


def normalize_gradient(grad: Tensor, norm: Norm) -> Tensor:
    """Steepest-ascent direction of unit ``norm``: ``argmax_{||v|| <= 1} <grad, v>``.

    linf: ``sign(g)``; l2: ``g / ||g||_2``; l1: ``sign(g_i) e_i`` on the coordinate ``i`` of
    the largest ``|g_i|`` (the first one on ties), a vertex of the l1 ball. A zero gradient
    gives a zero direction.
    """
    norm = Norm.parse(norm)
    if norm is Norm.LINF:
        return grad.sign()
    if norm is Norm.L1:
        flat = grad.flatten(1)
        top = flat.abs().argmax(dim=1, keepdim=True)
        out = torch.zeros_like(flat).scatter_(1, top, flat.gather(1, top).sign())
        return out.view_as(grad)
    n = norm_of(grad, Norm.L2).view(-1, *([1] * (grad.dim() - 1)))
    return grad / (n + _TINY)


def random_start(x: Tensor, norm: Norm, eps: float | Tensor, draws: Draws) -> Tensor:
    """A random perturbation drawn uniformly from the ``eps``-ball (linf: per coordinate).

    For l2 the direction is Gaussian and the radius ``eps * u^(1/d)``, which is uniform in
    the ball. For l1 the direction is ``L / ||L||_1`` with ``L`` i.i.d. Laplace, with the same
    radius: uniform in the l1 ball (Barthe et al. 2005). Returns ``delta`` (not
    ``x + delta``); clip it with :func:`clip_to_bounds`.

    Args:
        x: ``[n, ...]`` the points the perturbations start from.
        norm: ``linf``, ``l2`` or ``l1``.
        eps: The radius, a float or per-sample ``[n]``.
        draws: The rows' random numbers (``ctx.stream(rows, key)`` in an attack); each row's
            start depends on its own draws only.

    """
    norm = Norm.parse(norm)
    e = _per_sample(eps, x)
    shape = tuple(x.shape[1:])
    if norm is Norm.LINF:
        u = draws.uniform(shape).to(device=x.device, dtype=x.dtype)
        return (2 * u - 1) * e
    if norm is Norm.L1:
        v = draws.uniform(shape, "laplace").to(device=x.device, dtype=x.dtype) - 0.5
        lap = -v.sign() * torch.log1p(-2 * v.abs())  # inverse CDF of the Laplace law
        direction = lap / norm_of(lap, Norm.L1).clamp(min=_TINY).view(-1, *([1] * len(shape)))
    else:
        g = draws.normal(shape).to(device=x.device, dtype=x.dtype)
        direction = normalize_gradient(g, Norm.L2)
    u = draws.uniform(()).to(device=x.device, dtype=x.dtype)
    radius = u.pow(1.0 / x[0].numel()).view(-1, *([1] * (x.dim() - 1)))
    return direction * radius * e


def clip_to_bounds(x: Tensor, delta: Tensor, bounds: tuple[float, float]) -> Tensor:
    """Return the ``delta`` that keeps ``x + delta`` inside ``bounds``."""
    lo, hi = bounds
    return (x + delta).clamp(lo, hi) - x


def project_and_clip(
    x: Tensor, x_adv: Tensor, norm: Norm, eps: float | Tensor, bounds: tuple[float, float]
) -> Tensor:
    """Map ``x_adv`` into the feasible set (the ``eps``-ball around ``x`` and the box).

    l2: first the box, then the ball; because ``x`` lies in the box and both sets are convex,
    projecting onto the ball after the box keeps the point inside the box: the result is in
    both. linf: both sets are products of intervals, so clamping to the ball and then to the
    box is the exact Euclidean projection onto the intersection. l1: the exact projection onto
    the intersection is computed directly (:func:`project_l1_box`), which spends the whole
    budget inside the box.
    """
    norm = Norm.parse(norm)
    if norm is Norm.L1:
        lo, hi = bounds
        delta = project_l1_box(x_adv - x, eps, lo - x, hi - x)
        return (x + delta).clamp(lo, hi)
    if norm is Norm.LINF:  # coordinatewise: the order of ball and box does not matter
        return (x + project(x_adv - x, norm, eps)).clamp_(*bounds)
    delta = clip_to_bounds(x, x_adv - x, bounds)
    delta = project(delta, norm, eps)
    lo, hi = bounds
    return (x + delta).clamp(lo, hi)


def project_delta_(
    x: Tensor, delta: Tensor, norm: Norm, eps: float | Tensor, bounds: tuple[float, float]
) -> Tensor:
    """In place on ``delta``: the perturbation of :func:`project_and_clip` (``x + delta``).

    The same sets and order as :func:`project_and_clip` without new full-size tensors for
    linf and l2 (an attack that projects at every step saves their allocations); l1 computes
    the exact projection and copies it back. Returns ``delta``.
    """
    norm = Norm.parse(norm)
    e = _per_sample(eps, delta)
    lo, hi = bounds
    if norm is Norm.LINF:
        clamped = delta.clamp_(min=-e, max=e) if isinstance(e, Tensor) else delta.clamp_(-e, e)
        return clamped.add_(x).clamp_(lo, hi).sub_(x)
    if norm is Norm.L2:
        delta.add_(x).clamp_(lo, hi).sub_(x)
        return delta.mul_(_l2_shrink(delta, e))
    return delta.copy_(project_and_clip(x, x + delta, norm, eps, bounds).sub_(x))
