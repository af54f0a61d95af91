"""Projected gradient descent (PGD), linf and l2, with random start, restarts and early stop."""

from __future__ import annotations

import torch
from torch import Tensor

from attacks.base import Attack, AttackContext, register_attack
from attacks.losses import get_loss
from attacks.threat import Norm, normalize_gradient, project_and_clip, random_start
from attacks.validation import check_number, check_positive_int


@register_attack("pgd")
class PGD(Attack):
    r"""PGD: iterated gradient steps projected onto the eps-ball and the input box.

    Paper: Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks",
    ICLR 2018. https://arxiv.org/abs/1706.06083

    Threat model: linf or l2, fixed budget ``eps``.

    Args:
        norm: ``"linf"`` (default) or ``"l2"``.
        steps: Number of gradient steps (default 40, the paper's MNIST setting).
        step_size: Absolute step size; overrides ``rel_step_size`` when given (the paper uses
            0.01 for eps 0.3 on MNIST).
        rel_step_size: Step size as a fraction of eps (default ``2.5 / steps``, the rule of
            Madry et al.'s ``robustness`` library, so the iterate can cross the ball).
        random_start: Start from a uniform point in the ball (default True, as in the paper).
        restarts: Independent random restarts; each sample keeps its best result.
        loss: ``"ce"`` (cross-entropy, default) or ``"cw"`` (Carlini-Wagner margin).
        early_stop: Stop attacking a sample once it is misclassified (default True). It only
            saves time for evaluation; adversarial training passes False to get full-strength
            examples.
        **kwargs: ``bounds``, ``targeted``, ``seed``, ``eval_mode`` (see :class:`Attack`).

    Shape:
        - x: ``[N, ...]`` in bounds; y: ``[N]``; result x_adv: like x (``[K, N, ...]`` for K eps).

    Example:
        >>> atk = attacks.create("pgd", norm="linf", steps=40, step_size=0.01)
        >>> res = atk(model, x, y, eps=0.3)
        >>> res.robust_accuracy

    """

    def __init__(
        self,
        norm: str | Norm = Norm.LINF,
        *,
        steps: int = 40,
        step_size: float | None = None,
        rel_step_size: float | None = None,
        random_start: bool = True,
        restarts: int = 1,
        loss: str = "ce",
        early_stop: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(norm, **kwargs)
        for key, val in (("step_size", step_size), ("rel_step_size", rel_step_size)):
            if val is not None:
                check_number(key, val, low_open=True)
        get_loss(loss)
        self.steps = check_positive_int("steps", steps)
        self.step_size = step_size
        self.rel_step_size = rel_step_size
        self.random_start = bool(random_start)
        self.restarts = check_positive_int("restarts", restarts)
        self.loss = loss
        self.early_stop = bool(early_stop)

    def alpha(self, eps: float) -> float:
        """The absolute step size used at budget ``eps``."""
        if self.step_size is not None:
            return float(self.step_size)
        rel = self.rel_step_size if self.rel_step_size is not None else 2.5 / self.steps
        return rel * eps

    def run(self, ctx: AttackContext, x: Tensor, y: Tensor, eps: float | None) -> Tensor:
        """Run ``restarts`` PGD runs; later restarts attack only samples still robust."""
        eps = float(eps or 0.0)
        best = x.clone()
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device, dtype=x.dtype)
        done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(self.restarts):
            idx = (~done).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            x_adv, loss, hit = self._single_run(ctx, x[idx], y[idx], eps)
            better = hit | (loss > best_loss[idx])
            best[idx] = torch.where(better.view(-1, *[1] * (x.dim() - 1)), x_adv, best[idx])
            best_loss[idx] = torch.where(better, loss, best_loss[idx])
            done[idx] = hit
        return best

    def _single_run(
        self, ctx: AttackContext, x: Tensor, y: Tensor, eps: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One PGD run. Returns the final iterates, their losses and a success mask."""
        loss_fn = get_loss(self.loss)
        alpha = self.alpha(eps)
        x_adv = x.clone()
        if self.random_start:
            x_adv = project_and_clip(
                x, x + random_start(x, self.norm, eps, ctx.generator), self.norm, eps, ctx.bounds
            )
        n = x.shape[0]
        loss = torch.full((n,), float("-inf"), device=x.device, dtype=x.dtype)
        hit = torch.zeros(n, dtype=torch.bool, device=x.device)
        # Compact state of the samples still attacked: iterate, label, origin, linf box.
        active = torch.arange(n, device=x.device)
        xa, ya, xo = x_adv.clone(), y, x
        box = self._linf_box(x, eps, ctx.bounds)
        for _ in range(self.steps):
            step_loss, grad, logits = ctx.loss_and_grad(
                xa, lambda z, ya=ya: loss_fn(z, ya, ctx.targeted)
            )
            loss[active] = step_loss
            if self.early_stop:
                fooled = ctx.success(logits, ya)
                if bool(fooled.any()):
                    x_adv[active[fooled]] = xa[fooled]
                    hit[active[fooled]] = True
                    keep = ~fooled
                    active, xa, ya, xo, grad = (t[keep] for t in (active, xa, ya, xo, grad))
                    box = None if box is None else (box[0][keep], box[1][keep])
                    if active.numel() == 0:
                        break
            xa = self._step(xa, grad, alpha, xo, box, eps, ctx.bounds)
        x_adv[active] = xa
        return x_adv, loss, hit

    def _linf_box(
        self, x: Tensor, eps: float, bounds: tuple[float, float]
    ) -> tuple[Tensor, Tensor] | None:
        """For linf, the ball and the input box intersect in a box: its corners (else None)."""
        if self.norm is not Norm.LINF:
            return None
        return (x - eps).clamp(min=bounds[0]), (x + eps).clamp(max=bounds[1])

    def _step(
        self,
        xa: Tensor,
        grad: Tensor,
        alpha: float,
        xo: Tensor,
        box: tuple[Tensor, Tensor] | None,
        eps: float,
        bounds: tuple[float, float],
    ) -> Tensor:
        """One ascent step mapped back into the feasible set (linf: 3 in-place ops)."""
        if box is not None:
            return xa.add_(grad.sign_(), alpha=alpha).clamp_(min=box[0], max=box[1])
        return project_and_clip(
            xo, xa + alpha * normalize_gradient(grad, self.norm), self.norm, eps, bounds
        )
