"""Threat models: the norm, the budget and the input bounds, and the per-norm vector operations.

All operations work on a batch ``delta`` of shape ``[N, ...]`` and accept ``eps`` as a float or
a per-sample tensor of shape ``[N]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import torch
from torch import Tensor

from attacks.validation import check_bounds, check_number

_TINY = 1e-12


class Norm(str, Enum):
    """The supported perturbation norms."""

    LINF = "linf"
    L2 = "l2"

    @classmethod
    def parse(cls, value: str | Norm) -> Norm:
        """Parse ``"linf"``/``"inf"``/``"l2"`` (any case) into a ``Norm``.

        Raises:
            ValueError: For an unknown norm, listing the known ones.

        """
        if isinstance(value, Norm):
            return value
        key = str(value).lower().replace("_", "")
        aliases = {"linf": cls.LINF, "inf": cls.LINF, "l2": cls.L2, "2": cls.L2}
        if key not in aliases:
            raise ValueError(f"Unknown norm {value!r}; use one of: linf, l2.")
        return aliases[key]


@dataclass(frozen=True)
class ThreatModel:
    """A perturbation set: ``{x' : ||x' - x||_norm <= eps, lo <= x' <= hi}``.

    Args:
        norm: ``linf`` or ``l2``.
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
    if Norm.parse(norm) is Norm.LINF:
        return flat.abs().amax(dim=1)
    return flat.norm(p=2, dim=1)


def project(delta: Tensor, norm: Norm, eps: float | Tensor) -> Tensor:
    """Project ``delta`` onto the ``eps``-ball of ``norm`` (per sample)."""
    e = _per_sample(eps, delta)
    if Norm.parse(norm) is Norm.LINF:
        return (
            torch.maximum(torch.minimum(delta, e), -e)
            if isinstance(e, Tensor)
            else delta.clamp(-e, e)
        )
    n = norm_of(delta, Norm.L2).view(-1, *([1] * (delta.dim() - 1)))
    factor = torch.clamp(e / (n + _TINY), max=1.0)
    return delta * factor


def normalize_gradient(grad: Tensor, norm: Norm) -> Tensor:
    """Steepest-ascent direction of unit ``norm``: sign for linf, ``g / ||g||_2`` for l2."""
    if Norm.parse(norm) is Norm.LINF:
        return grad.sign()
    n = norm_of(grad, Norm.L2).view(-1, *([1] * (grad.dim() - 1)))
    return grad / (n + _TINY)


def random_start(x: Tensor, norm: Norm, eps: float | Tensor, draws: Draws) -> Tensor:
    """A random perturbation drawn uniformly from the ``eps``-ball (linf: per coordinate).

    For l2 the direction is Gaussian and the radius ``eps * u^(1/d)``, which is uniform in
    the ball. Returns ``delta`` (not ``x + delta``); clip it with :func:`clip_to_bounds`.

    Args:
        x: ``[n, ...]`` the points the perturbations start from.
        norm: ``linf`` or ``l2``.
        eps: The radius, a float or per-sample ``[n]``.
        draws: The rows' random numbers (``ctx.stream(rows, key)`` in an attack); each row's
            start depends on its own draws only.

    """
    e = _per_sample(eps, x)
    shape = tuple(x.shape[1:])
    if Norm.parse(norm) is Norm.LINF:
        u = draws.uniform(shape).to(device=x.device, dtype=x.dtype)
        return (2 * u - 1) * e
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
    """Map ``x_adv`` into the feasible set: first the box, then the ball.

    Because ``x`` lies in the box and both sets are convex, projecting onto the ball after the
    box keeps the point inside the box: the result is in both.
    """
    delta = clip_to_bounds(x, x_adv - x, bounds)
    delta = project(delta, norm, eps)
    lo, hi = bounds
    return (x + delta).clamp(lo, hi)
