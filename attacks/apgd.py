"""Auto-PGD (APGD): step-size-free PGD with momentum; cross-entropy and targeted DLR versions."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from attacks.base import AttackContext, FixedBudgetAttack, register_attack
from attacks.losses import cross_entropy, dlr_targeted
from attacks.restarts import BestOf, SingleRun, run_restarts
from attacks.rng import Key, Stream
from attacks.rows import row_index, take_rows
from attacks.targets import check_target_order, rank_targets, without_default_order
from attacks.threat import Norm, normalize_gradient, project_and_clip, random_start
from attacks.validation import check_number, check_positive_int

logger = logging.getLogger(__name__)

MOMENTUM = 0.75  # alpha in the paper
# loss(logits, rows) -> [len(rows)] loss to maximise; ``rows`` index the input of ``run``.
RowLoss = Callable[[Tensor, Tensor], Tensor]


def checkpoints(steps: int) -> list[int]:
    """Iterations at which APGD may halve its step size.

    ``w_j = ceil(p_j * steps)`` with ``p_0 = 0``, ``p_1 = 0.22`` and
    ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``; returns the distinct ``w_j`` in
    ``(0, steps)``.
    """
    p_prev, p = 0.0, 0.22
    out: list[int] = []
    while p < 1.0:
        w = math.ceil(p * steps - 1e-9)
        if 0 < w < steps and (not out or w > out[-1]):
            out.append(w)
        p_prev, p = p, p + max(p - p_prev - 0.03, 0.06)
    return out


def _row(t: Tensor, ref: Tensor) -> Tensor:
    return t.view(-1, *([1] * (ref.dim() - 1)))


@register_attack("apgd_ce")
class APGD(FixedBudgetAttack):
    r"""APGD-CE: PGD whose step size adapts itself, with momentum, on the cross-entropy loss.

    Paper: Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
    diverse parameter-free attacks", ICML 2020. https://arxiv.org/abs/2003.01690

    Each sample starts at a random point of the ball with step size ``2 eps`` and moves with
    momentum 0.75. At checkpoints ``w_j`` (the paper's schedule, see :func:`checkpoints`) its
    step size is halved and it restarts from its best point if fewer than ``rho`` of the
    steps since the last checkpoint raised the loss, or if neither the step size nor the best
    loss changed since then. Samples stop as soon as they are misclassified, or when their
    gradient is zero where they stand (at their best point): they could not move again.

    Threat model: linf or l2, fixed budget ``eps``.

    Args:
        norm: ``"linf"`` (default) or ``"l2"``.
        steps: Forward+backward passes per run (default 100).
        restarts: Random restarts; later ones attack only the samples still robust (default 1).
        rho: Fraction of loss-raising steps below which the step size is halved (default 0.75).
        **kwargs: ``bounds``, ``targeted``, ``seed``, ``eval_mode`` (see :class:`Attack`).

    Shape:
        - x: ``[N, ...]`` in bounds; y: ``[N]``; result x_adv: like x (``[K, N, ...]`` for K eps).

    Example:
        >>> apgd = attacks.create("apgd_ce", norm="linf", steps=100)
        >>> res = apgd(model, x, y, eps=0.3)

    References:
        Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
        diverse parameter-free attacks", ICML 2020.

    """

    def __init__(
        self,
        norm: str | Norm = Norm.LINF,
        *,
        steps: int = 100,
        restarts: int = 1,
        rho: float = 0.75,
        **kwargs,
    ) -> None:
        super().__init__(norm, **kwargs)
        self.steps = check_positive_int("steps", steps)
        self.restarts = check_positive_int("restarts", restarts)
        self.rho = check_number("rho", rho, low=0.0, high=1.0, low_open=True)

    def run(self, ctx: AttackContext, x: Tensor, y: Tensor, eps: float) -> Tensor:
        """Run ``restarts`` APGD runs on the cross-entropy (targeted: towards ``y``)."""

        def loss(logits: Tensor, rows: Tensor) -> Tensor:
            return cross_entropy(logits, y[rows], ctx.targeted)

        return run_restarts(x, self.restarts, self._runner(ctx, x, y, eps, loss, ("ce",))).x

    def _runner(
        self, ctx: AttackContext, x: Tensor, y: Tensor, eps: float, loss: RowLoss, key: Key
    ) -> SingleRun:
        """``single_run(rows, restart)`` of :func:`~attacks.restarts.run_restarts` for ``loss``.

        ``loss(logits, rows)`` gets the rows of ``run``'s input that the logits belong to.
        """

        def single_run(rows: Tensor, restart: int) -> tuple[Tensor, Tensor, Tensor]:
            draws = ctx.stream(rows, ("start", *key, restart))
            return self._single_run(ctx, take_rows(x, rows), y[rows], eps, rows, loss, draws)

        return single_run

    def _single_run(
        self,
        ctx: AttackContext,
        x: Tensor,
        y: Tensor,
        eps: float,
        rows: Tensor,
        loss: RowLoss,
        draws: Stream,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One APGD run on the rows ``rows`` of ``run``'s input (here ``x``, ``y``).

        Returns the final candidates, their losses (``-inf`` if fooled) and success.
        """
        n = x.shape[0]
        out, out_loss = x.clone(), torch.full((n,), -math.inf, dtype=x.dtype, device=x.device)
        hit = torch.zeros(n, dtype=torch.bool, device=x.device)
        local = torch.arange(n, device=x.device)  # rows of this run still attacked
        start = x + random_start(x, self.norm, eps, draws)
        x_cur = project_and_clip(x, start, self.norm, eps, ctx.bounds)
        s = _State(x, x_cur, torch.full((n,), 2 * eps, dtype=x.dtype, device=x.device))
        marks = set(checkpoints(self.steps))
        last_mark = 0
        for i in range(self.steps):
            f, grad, logits = ctx.loss_and_grad(s.x_cur, lambda z, r=rows[local]: loss(z, r))
            s.observe(i, f, grad)
            fooled = ctx.success(logits, y[local])
            if bool(fooled.any()):
                out[local[fooled]], hit[local[fooled]] = s.x_cur[fooled], True
            stuck = ~fooled & s.stuck()
            if bool(stuck.any()):  # every later iteration would repeat this point
                out[local[stuck]], out_loss[local[stuck]] = s.x_max[stuck], s.f_max[stuck]
            if bool((fooled | stuck).any()):
                keep = ~(fooled | stuck)
                local = local[keep]
                s.select(keep)
                if local.numel() == 0:
                    break
            if i in marks:
                s.checkpoint(self.rho * (i - last_mark))
                last_mark = i
            if i < self.steps - 1:
                s.step(i, eps, self.norm, ctx.bounds)
        out[local], out_loss[local] = s.x_max, s.f_max
        return out, out_loss, hit


class _State:
    """Per-sample APGD state of the samples still being attacked (rows of one run)."""

    def __init__(self, x: Tensor, x_cur: Tensor, eta: Tensor) -> None:
        self.x, self.x_cur, self.x_prev, self.eta = x, x_cur, x_cur, eta
        self.reduced = torch.zeros_like(eta, dtype=torch.bool)
        self.count = torch.zeros_like(eta)

    def observe(self, i: int, f: Tensor, grad: Tensor) -> None:
        """Record the loss and gradient at ``x_cur``; track the best point."""
        self.grad = grad
        if i == 0:
            self.f_max, self.x_max, self.g_max = f, self.x_cur, grad
            self.f_last, self.f_mark = f, f
            return
        self.count += (f > self.f_last).to(self.count.dtype)
        self.f_last = f
        better = f > self.f_max
        self.f_max = torch.where(better, f, self.f_max)
        self.x_max = torch.where(_row(better, self.x), self.x_cur, self.x_max)
        self.g_max = torch.where(_row(better, self.x), grad, self.g_max)

    def stuck(self) -> Tensor:
        """``[n]``: zero gradient at ``x_cur``, which is also the previous and the best point.

        Such a sample cannot move (the step and the momentum are zero, a restart from the best
        point lands where it is), so for a deterministic model every later iteration repeats it.
        """
        zero = (self.grad.flatten(1) == 0).all(1)
        if not bool(zero.any()):  # the usual case: no need to compare the points
            return zero
        same = (self.x_cur == self.x_prev) & (self.x_cur == self.x_max)
        return zero & same.flatten(1).all(1)

    def select(self, keep: Tensor) -> None:
        """Drop the samples that are done."""
        keep = row_index(keep)
        for name, value in vars(self).items():
            setattr(self, name, take_rows(value, keep))

    def checkpoint(self, min_increases: float) -> None:
        """Halve the step and restart from the best point where progress stalled."""
        stalled = self.count < min_increases
        stuck = ~self.reduced & (self.f_max <= self.f_mark)
        reduce = stalled | stuck
        m = _row(reduce, self.x)
        self.eta = torch.where(reduce, self.eta / 2, self.eta)
        self.x_cur = torch.where(m, self.x_max, self.x_cur)
        self.x_prev = torch.where(m, self.x_max, self.x_prev)
        self.grad = torch.where(m, self.g_max, self.grad)
        self.f_last = torch.where(reduce, self.f_max, self.f_last)
        self.reduced, self.f_mark = reduce, self.f_max
        self.count = torch.zeros_like(self.count)

    def step(self, i: int, eps: float, norm: Norm, bounds: tuple[float, float]) -> None:
        """Gradient step to ``z``, then the momentum step (a plain step the first time)."""
        direction = normalize_gradient(self.grad, norm)
        z = project_and_clip(
            self.x, self.x_cur + _row(self.eta, self.x) * direction, norm, eps, bounds
        )
        if i > 0:
            moved = (
                self.x_cur
                + MOMENTUM * (z - self.x_cur)
                + (1 - MOMENTUM) * (self.x_cur - self.x_prev)
            )
            z = project_and_clip(self.x, moved, norm, eps, bounds)
        self.x_prev, self.x_cur = self.x_cur, z


def _dlr_to_target(logits: Tensor, target: Tensor) -> Tensor:
    """Targeted DLR with the true class unknown: the best non-target logit takes its place."""
    if logits.shape[1] < 4:
        raise ValueError("targeted DLR needs at least 4 classes; use apgd_ce or pgd")
    top = logits.sort(dim=1, descending=True).values
    z_t = logits.gather(1, target.unsqueeze(1)).squeeze(1)
    z_other = logits.scatter(1, target.unsqueeze(1), -math.inf).amax(dim=1)
    return (z_t - z_other) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


@register_attack("apgd_dlr")
class APGDT(APGD):
    r"""APGD-T: APGD on the targeted DLR loss, towards each of the top-scoring other classes.

    Paper: Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
    diverse parameter-free attacks", ICML 2020. https://arxiv.org/abs/2003.01690

    Untargeted use (the default, as in the paper): for ``k = 1..n_target_classes``, APGD
    maximises ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`` with ``t`` the class of k-th
    highest clean logit after ``y``, on the samples still correctly classified; a sample keeps
    its first success. With ``targeted=True`` the given target is the only ``t`` and the best
    other logit replaces ``z_y``. The DLR loss needs at least 4 classes.

    Args:
        norm: ``"linf"`` (default) or ``"l2"``.
        steps: Forward+backward passes per run (default 100).
        restarts: Random restarts per target class (default 1).
        rho: Step-size halving threshold (default 0.75).
        n_target_classes: Target classes tried (default 9; at most ``C - 1`` are used).
        target_order: ``"logits"`` (default, AutoAttack's: by clean logit) or ``"linear"``
            (by distance to the linearised boundary at the clean point, as MALT; one backward
            pass per candidate class more). See :mod:`attacks.targets`.
        **kwargs: ``bounds``, ``targeted``, ``seed``, ``eval_mode`` (see :class:`Attack`).

    Example:
        >>> apgd_t = attacks.create("apgd_dlr", steps=100, n_target_classes=9)
        >>> res = apgd_t(model, x, y, eps=0.3)

    References:
        Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
        diverse parameter-free attacks", ICML 2020.

    """

    def __init__(
        self,
        norm: str | Norm = Norm.LINF,
        *,
        n_target_classes: int = 9,
        target_order: str = "logits",
        **kwargs,
    ) -> None:
        super().__init__(norm, **kwargs)
        self.n_target_classes = check_positive_int("n_target_classes", n_target_classes)
        self.target_order = check_target_order(target_order)

    def run(self, ctx: AttackContext, x: Tensor, y: Tensor, eps: float) -> Tensor:
        """Loop over target classes and restarts, attacking only the samples still robust."""
        if ctx.targeted:
            targets = y.unsqueeze(1)
        else:
            targets = rank_targets(ctx, x, y, self.n_target_classes, self.target_order)
            if targets.shape[1] < self.n_target_classes:
                k = targets.shape[1]
                logger.info("apgd_dlr: only %d other classes; using %d targets", k, k)
        best = BestOf(x)
        for j in range(targets.shape[1]):
            loss = self._dlr_loss(ctx.targeted, y, targets[:, j])
            run_restarts(x, self.restarts, self._runner(ctx, x, y, eps, loss, ("dlr", j)), best)
        return best.x

    def config(self) -> dict[str, Any]:
        """The settings; ``target_order`` only when it is not the default."""
        return without_default_order(super().config())

    @staticmethod
    def _dlr_loss(targeted: bool, y: Tensor, target: Tensor) -> RowLoss:
        """The DLR loss towards ``target`` (both indexed by the rows of ``run``'s input)."""
        if targeted:  # ``y`` holds the targets; the true class is unknown
            return lambda logits, rows: _dlr_to_target(logits, target[rows])
        return lambda logits, rows: dlr_targeted(logits, y[rows], target[rows])
