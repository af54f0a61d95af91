"""What every attack returns: :class:`AttackResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


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


__all__ = ["AttackResult"]
