"""Projected gradient descent (PGD), linf and l2, with random start, restarts and early stop."""

from __future__ import annotations

import torch
from torch import Tensor

from attacks.base import AttackContext, FixedBudgetAttack, register_attack
from attacks.losses import get_loss
from attacks.restarts import run_restarts
from attacks.rows import ShrinkingRows, row_index, take_rows
from attacks.threat import Norm, normalize_gradient, project_and_clip, random_start
from attacks.validation import check_bool, check_number, check_positive_int


def step_size_at(
    eps: float, steps: int, step_size: float | None, rel_step_size: float | None
) -> float:
    """The absolute step of an iterative attack at budget ``eps``.

    ``step_size`` if given, else ``rel_step_size * eps``, else ``2.5 * eps / steps`` (the rule of
    Madry et al.'s ``robustness`` library, so the iterate can cross the ball).
    """
    if step_size is not None:
        return float(step_size)
    rel = rel_step_size if rel_step_size is not None else 2.5 / steps
    return rel * eps


def check_step_sizes(
    step_size: float | None, rel_step_size: float | None
) -> tuple[float | None, float | None]:
    """Validate optional absolute and relative step sizes (each ``> 0`` when given)."""
    return (
        None if step_size is None else check_number("step_size", step_size, low_open=True),
        None
        if rel_step_size is None
        else check_number("rel_step_size", rel_step_size, low_open=True),
    )


@register_attack("pgd")
class PGD(FixedBudgetAttack):
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
        get_loss(loss)
        self.steps = check_positive_int("steps", steps)
        self.step_size, self.rel_step_size = check_step_sizes(step_size, rel_step_size)
        self.random_start = check_bool("random_start", random_start)
        self.restarts = check_positive_int("restarts", restarts)
        self.loss = loss
        self.early_stop = check_bool("early_stop", early_stop)

    def alpha(self, eps: float) -> float:
        """The absolute step size used at budget ``eps``."""
        return step_size_at(eps, self.steps, self.step_size, self.rel_step_size)

    def run(self, ctx: AttackContext, x: Tensor, y: Tensor, eps: float) -> Tensor:
        """Run ``restarts`` PGD runs; later restarts attack only samples still robust."""

        def single_run(rows: Tensor, restart: int) -> tuple[Tensor, Tensor, Tensor]:
            return self._single_run(ctx, take_rows(x, rows), y[rows], eps, rows, restart)

        return run_restarts(x, self.restarts, single_run).x

    def _single_run(
        self, ctx: AttackContext, x: Tensor, y: Tensor, eps: float, rows: Tensor, restart: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One PGD run on the rows ``rows`` of ``run``'s input (here ``x``, ``y``).

        Returns the final iterates, their losses and a success mask.
        """
        loss_fn = get_loss(self.loss)
        alpha = self.alpha(eps)
        box = self._linf_box(x, eps, ctx.bounds)
        if not self.random_start:
            x_adv = x.clone()
        else:
            start = random_start(x, self.norm, eps, ctx.stream(rows, ("start", restart))).add_(x)
            x_adv = (  # linf: the start is in the ball, so clamping it to the box projects it
                project_and_clip(x, start, self.norm, eps, ctx.bounds)
                if box is None
                else start.clamp_(min=box[0], max=box[1])
            )
        n = x.shape[0]
        loss = torch.full((n,), float("-inf"), device=x.device, dtype=x.dtype)
        hit = torch.zeros(n, dtype=torch.bool, device=x.device)
        # Compact state of the samples still attacked: iterate, label, and the feasible set
        # (linf: the box where ball and bounds meet; l2: the origin). A sample that is fooled
        # leaves the state at once: its passes would be wasted (measured: the per-sample cost
        # of a pass does not depend on the changing batch size, see benchmarks/attacks.py).
        active, ya = torch.arange(n, device=x.device), y
        xa = ShrinkingRows(x_adv.clone())
        state = [xa] + [ShrinkingRows(t) for t in (box if box is not None else (x,))]
        for _ in range(self.steps):
            step_loss, grad, logits = ctx.loss_and_grad(
                xa.value, lambda z, ya=ya: loss_fn(z, ya, ctx.targeted)
            )
            loss[active] = step_loss
            fooled = ctx.success(logits, ya) if self.early_stop else None
            leaving = fooled is not None and bool(fooled.any())
            if leaving:
                out = fooled.nonzero().squeeze(1)
                x_adv[active[out]] = take_rows(xa.value, out)
                hit[active[out]] = True
            xa.value = self._step(xa.value, grad, alpha, [s.value for s in state[1:]], eps, ctx)
            if leaving:  # the fooled rows leave (their step above is discarded)
                keep = row_index(~fooled)
                active, ya = active[keep], ya[keep]
                for s in state:
                    s.keep(keep)
                if active.numel() == 0:
                    break
        x_adv[active] = xa.value
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
        feasible: list[Tensor],
        eps: float,
        ctx: AttackContext,
    ) -> Tensor:
        """One ascent step mapped back into the feasible set (linf: 3 in-place ops).

        ``feasible`` is ``[lower, upper]`` (the linf box) or ``[origin]`` (l2).
        """
        if self.norm is Norm.LINF:
            return xa.add_(grad.sign_(), alpha=alpha).clamp_(min=feasible[0], max=feasible[1])
        moved = xa + alpha * normalize_gradient(grad, self.norm)
        return project_and_clip(feasible[0], moved, self.norm, eps, ctx.bounds)
