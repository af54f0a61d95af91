"""What every attack returns: :class:`AttackResult`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

COST_KEYS = ("wall_time", "n_forward", "n_backward")
"""What every evaluation's cost counts: seconds, per-sample forward and backward passes."""


@dataclass(frozen=True)
class Cost:
    """What a piece of evaluation work cost: wall time and per-sample passes.

    The one home of the cost keys (:data:`COST_KEYS`): attack results, curves, certificates,
    corruption curves and the evaluation engine add :class:`Cost` values.

    Attributes:
        wall_time: Seconds.
        n_forward: Per-sample forward passes (a batch of 100 counts 100).
        n_backward: Per-sample backward passes.
    """

    wall_time: float = 0.0
    n_forward: int = 0
    n_backward: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.wall_time + other.wall_time,
            self.n_forward + other.n_forward,
            self.n_backward + other.n_backward,
        )

    @classmethod
    def of(cls, obj: Any) -> Cost:
        """The cost of an :class:`AttackResult`, a :class:`Cost` or a mapping of the keys."""
        if isinstance(obj, Cost):
            return obj
        get = obj.get if isinstance(obj, Mapping) else lambda k, d: getattr(obj, k, d)
        return cls(
            float(get("wall_time", 0.0)), int(get("n_forward", 0)), int(get("n_backward", 0))
        )

    def to_dict(self) -> dict[str, float]:
        """``{"wall_time", "n_forward", "n_backward"}`` (JSON-able, MLflow metric values)."""
        return {
            "wall_time": float(self.wall_time),
            "n_forward": int(self.n_forward),
            "n_backward": int(self.n_backward),
        }


@dataclass
class AttackResult:
    """What an attack returns.

    With a scalar ``eps`` the leading ``[K]`` dimension below is absent.

    Attributes:
        x_adv: ``[K, N, ...]`` adversarial inputs, in bounds and inside each eps-ball.
        success: ``[K, N]`` bool; True where ``x_adv`` fools the model (a sample that is
            misclassified clean counts as a success at every eps).
        norms: ``[K, N]`` perturbation norms of ``x_adv - x``; for minimum-norm attacks ``[N]``,
            the smallest successful perturbation found (``inf`` where none was found).
        eps: ``[K]`` the budgets, in the order given.
        clean_correct: ``[N]`` bool, the model's clean correctness (untargeted) on ``x``.
        n_forward: per-sample forward passes spent (a batch of 100 counts 100).
        n_backward: per-sample backward passes spent.
        wall_time: seconds.
        details: attack-specific extras (e.g. which suite member broke each sample).

    """

    x_adv: Tensor
    success: Tensor
    norms: Tensor
    eps: Tensor
    clean_correct: Tensor
    n_forward: int = 0
    n_backward: int = 0
    wall_time: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def robust_accuracy(self) -> Tensor:
        """Fraction of samples not fooled: a scalar tensor, or ``[K]`` for an eps list."""
        return (~self.success).float().mean(dim=-1)


__all__ = ["COST_KEYS", "AttackResult", "Cost"]
