"""The certifier interface: what every certification method implements and returns per batch.

A certifier proves, per sample, that a classifier keeps its (correct) class in a whole ball
(bound methods: IBP, CROWN, MILP) or that a smoothed classifier does (randomized smoothing).
Each method registers in :data:`CERTIFIERS` and implements :meth:`Certifier.certify_batch`;
:func:`robustbench_local.certify.certify` runs it over a data set on the evaluation engine
(:mod:`robustbench_local.engine`: fixed sample ids, sharding, resume, progress, cost).

Contract of a :class:`CertifiedBatch` (the registry's contract tests check it for every
method): certified implies correctly classified; certified at ``eps_k`` implies certified at
every smaller eps of the grid; the result depends on (seed, sample id) only, never on the batch
or rank.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from attacks.registry import Registry
from attacks.result import Cost
from attacks.validation import parse_eps
from robustbench_local.health import Flag


@dataclass(frozen=True)
class CertifiedBatch:
    """What a certifier returns for one batch of ``n`` samples and a grid of ``K`` radii.

    Attributes:
        certified: ``bool [K, n]``: certified at each eps of the grid (nested: certified at
            ``eps_k`` implies certified at every smaller eps; implies ``correct``).
        correct: ``bool [n]``: the certified classifier's clean prediction is right (for
            smoothing: the smoothed classifier predicts the label, not abstaining).
        radius: ``float [n]``: smoothing: the certified l2 radius (0 when abstaining or
            wrong); bound methods: the largest eps of the grid certified (0 if none).
        cost: Wall time and passes (forward passes, or noise samples for smoothing).
        extra: Further per-sample tensors (last dimension ``n``), e.g. MILP outcomes.
    """

    certified: Tensor
    correct: Tensor
    radius: Tensor
    cost: Cost = field(default_factory=Cost)
    extra: Mapping[str, Tensor] = field(default_factory=dict)


class Certifier(ABC):
    """Base of the certification methods.

    Subclasses set :attr:`name`, :attr:`norms` (the norms they certify; the first is the
    default) and implement :meth:`certify_batch` and :meth:`settings`.
    """

    name: ClassVar[str] = "certifier"
    norms: ClassVar[tuple[str, ...]] = ("linf",)
    certifies: ClassVar[str] = "the model"
    """What is certified: ``"the model"``, or ``"the smoothed classifier"`` for smoothing."""

    def __init__(self, norm: str | None = None, bounds: tuple[float, float] = (0.0, 1.0)) -> None:
        self.norm = self.norms[0] if norm is None else str(norm)
        if self.norm not in self.norms:
            raise ValueError(
                f"{self.name} certifies {', '.join(self.norms)} balls, not {norm!r}; pass "
                f"norm={self.norms[0]!r} or choose a method that certifies {norm}"
            )
        self.bounds = (float(bounds[0]), float(bounds[1]))

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """The method's own settings (JSON-able), e.g. ``{"sigma": 0.25, "n": 100000}``."""

    def config(self) -> dict[str, Any]:
        """Name, norm, bounds and settings: what the per-sample results depend on."""
        return {
            "method": self.name,
            "norm": self.norm,
            "bounds": list(self.bounds),
            **self.settings(),
        }

    def health(self, extra: Mapping[str, Tensor], certified: Tensor) -> list[Flag]:
        """Flags about the whole run from the gathered per-sample ``extra`` (default none)."""
        return []

    @abstractmethod
    def certify_batch(
        self, model: nn.Module, x: Tensor, y: Tensor, ids: Tensor, eps: Sequence[float], seed: int
    ) -> CertifiedBatch:
        """Certify the samples ``(x, y)`` (dataset ids ``ids``) at every eps of the grid."""


def check_eps_grid(eps: Any) -> list[float]:
    """The radius grid as a list of floats: non-negative and strictly increasing.

    Raises:
        TypeError: Non-numeric eps.
        ValueError: Negative, NaN or infinite values, an empty grid, or one not increasing.
    """
    grid = list(parse_eps(eps) or [])
    if any(b <= a for a, b in itertools.pairwise(grid)):
        raise ValueError(f"the eps grid must be strictly increasing, got {grid}; sort it")
    return grid


def nested(proven: Tensor) -> Tensor:
    """Certified at ``eps_k`` when proven at some ``eps_j >= eps_k`` (``bool [K, n]``).

    Sound because the balls are nested: a proof that no point of the ball of radius
    ``eps_j`` changes the class covers every smaller ball around the same input. It makes the
    certified matrix nested whatever the method's bounds do (CROWN's relaxation is not
    monotone in eps, so a larger ball can occasionally be proven where a smaller one was not).
    """
    if proven.shape[0] == 0:
        return proven.bool()
    flipped = proven.bool().flip(0).to(torch.uint8).cummax(dim=0).values
    return flipped.flip(0).bool()


def grid_radius(certified: Tensor, eps: Sequence[float]) -> Tensor:
    """``float [n]``: the largest eps of the grid certified per sample (0 where none)."""
    grid = torch.tensor([0.0, *eps], dtype=torch.float32)
    count = nested(certified).sum(dim=0).cpu()
    return grid[count]


CERTIFIERS: Registry[Certifier] = Registry("certification method")
"""Certification methods by name (``ibp``, ``crown``, ``milp``, ``smoothing``)."""


def register_certifier(name: str, **metadata: Any) -> Callable[[type], type]:
    """Class decorator registering a :class:`Certifier` under ``name``."""
    return CERTIFIERS.register(name, **metadata)  # type: ignore[return-value]


def create_certifier(name: str, **kwargs: Any) -> Certifier:
    """Build a registered certifier, e.g. ``create_certifier("smoothing", sigma=0.25)``.

    Raises:
        ValueError: Unknown name (the known ones are listed) or bad settings.
    """
    return CERTIFIERS.create(name, **kwargs)


__all__ = [
    "CERTIFIERS",
    "CertifiedBatch",
    "Certifier",
    "check_eps_grid",
    "create_certifier",
    "grid_radius",
    "nested",
    "register_certifier",
]
