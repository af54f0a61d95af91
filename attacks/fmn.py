"""Fast Minimum-Norm (FMN) attack: linf, l2 and l1, with an adaptive norm constraint."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from attacks.base import AttackContext, MinimumNormAttack, register_attack
from attacks.ddn import cosine_schedule, rows_view, worst_norm
from attacks.losses import cw_margin
from attacks.restarts import per_run_values, scalar_if_single, smallest_over_runs
from attacks.threat import Norm, dual_norm_of, norm_of, project_delta_
from attacks.validation import check_bool, check_number, check_positive_int

_TINY = 1e-12
PROJECTIONS = ("ball", "sphere")


@register_attack("fmn")
class FMN(MinimumNormAttack):
    r"""FMN: normalised gradient steps on the logit margin inside an adaptive eps-ball.

    Paper: Pintor, Roli, Brendel & Biggio, "Fast Minimum-norm Adversarial Attacks through
    Adaptive Norm Constraints", NeurIPS 2021. https://arxiv.org/abs/2102.12827

    Each step ascends the margin ``max_{j != y} z_j - z_y`` (for a target ``t``:
    ``z_t - max_{j != t} z_j``) by ``alpha * g / ||g||_2`` and projects ``delta`` onto the
    ``eps``-ball of the norm and the input box. The radius adapts per sample: while the point
    is adversarial, ``eps`` shrinks to ``min(eps (1 - gamma), best norm)``; before any
    adversarial point is found, it jumps to the linear estimate of the distance to the
    boundary, ``||delta|| + |margin| / ||g||_dual``, times ``(1 + gamma)`` (the paper takes
    the estimate itself, which on a locally linear model lands exactly on the boundary, on
    its robust side, and stays there); afterwards it grows by ``(1 + gamma)``.
    ``alpha`` and ``gamma`` are cosine-annealed (``alpha`` to ``alpha_init / 100``, ``gamma``
    to ``gamma_final``). The smallest adversarial iterate is kept. For l1 the projection is
    the exact one onto the intersection of the ball and the box (:func:`attacks.threat.
    project_l1_box`), where the authors project onto the ball and then clip. Defaults are the
    authors' (``alpha_init = 1``, ``gamma_init = 0.05``, ``gamma_final = 0.001``), with 100
    steps instead of their code's 10 (the paper's experiments run up to 1000).

    Threat model: linf, l2 (default) or l1, minimum norm: ``res.norms`` holds each sample's
    smallest successful perturbation in that norm (``inf`` where none was found).

    Args:
        norm: ``"l2"`` (default), ``"linf"`` or ``"l1"``.
        steps: Forward+backward passes (default 100).
        alpha_init: First step size (l2 length of the step; default 1.0), or several: FMN then
            runs once per value from ``x``, the ``steps`` split evenly between the runs, and
            keeps each sample's smallest norm (different step sizes end in different local
            optima; on an adversarially trained MNIST CNN, l1 ``(1, 3, 10)`` in 1000 steps finds
            a smaller median norm than one run of 1000 steps, ``benchmarks/minnorm.py``).
        alpha_final: Last step size (default ``alpha_init / 100``, per run).
        gamma_init: First relative change of ``eps`` (default 0.05).
        gamma_final: Last relative change of ``eps`` (default 0.001).
        momentum: Heavy-ball momentum of the normalised steps (default 0, the paper's plain
            steps): the step is ``alpha * v`` with ``v <- momentum * v + g / ||g||_2``, as in
            HO-FMN's SGD-with-momentum variant.
        relative_step: If True, ``alpha`` (and its schedule) is a fraction of each sample's
            current radius: the step is ``alpha * eps * v`` (default False, the paper's
            absolute step). The step then follows the scale of the norm being minimised.
            At l1 the two options pay together: on an FGSM-trained MNIST CNN, ``momentum=
            0.97, relative_step=True, alpha_init=(0.01, 0.03, 0.1)`` in 1000 steps finds a
            median l1 norm 0.62x that of the defaults and below ALMA's
            (``benchmarks/minnorm.py``; set on test images 1000-1200, measured on 0-200).
            A setting for long runs: heavy momentum needs a few hundred steps per run.
        projection: ``"ball"`` (default, the paper's): project onto the ``eps``-ball;
            ``"sphere"``: rescale every iterate to norm ``eps`` before clipping it into the
            box, as DDN does (and as adv-lib 0.2.8's l2 FMN does in effect), which follows
            growing radii at once and is stronger on adversarially trained models.
        **kwargs: ``bounds``, ``targeted``, ``seed``, ``eval_mode`` (see :class:`Attack`).

    Shape:
        - x: ``[N, ...]`` in bounds; y: ``[N]``; result norms: ``[N]``.

    Example:
        >>> fmn = attacks.create("fmn", norm="linf", steps=1000)
        >>> res = fmn(model, x, y, eps=[0.1, 0.2, 0.3])
        >>> res.norms.median()

    References:
        Pintor et al., "Fast Minimum-norm Adversarial Attacks through Adaptive Norm
        Constraints", NeurIPS 2021.
        Mura et al., "HO-FMN: Hyperparameter Optimization for Fast Minimum-Norm Attacks",
        arXiv:2407.08806, 2024 (FMN with momentum and other optimisers and schedules).
        Polyak, "Some methods of speeding up the convergence of iteration methods", USSR
        Comput. Math. and Math. Phys. 1964 (heavy-ball momentum).
        Croce & Hein, "Mind the Box: l1-APGD for Sparse Adversarial Attacks on Image
        Classifiers", ICML 2021 (the l1 projection onto the box).

    """

    norms: ClassVar[frozenset[Norm]] = frozenset(Norm)

    def __init__(
        self,
        norm: str | Norm = Norm.L2,
        *,
        steps: int = 100,
        alpha_init: float | Sequence[float] = 1.0,
        alpha_final: float | None = None,
        gamma_init: float = 0.05,
        gamma_final: float = 0.001,
        momentum: float = 0.0,
        relative_step: bool = False,
        projection: str = "ball",
        **kwargs,
    ) -> None:
        super().__init__(norm, **kwargs)
        self.steps = check_positive_int("steps", steps)
        alphas = per_run_values("alpha_init", alpha_init, self.steps)
        self.alpha_init = scalar_if_single(alphas)
        if alpha_final is None:  # None with several runs: each run's alpha_init / 100
            self.alpha_final: float | None = alphas[0] / 100 if len(alphas) == 1 else None
        else:
            self.alpha_final = check_number("alpha_final", alpha_final, low_open=True)
        self.gamma_init = check_number("gamma_init", gamma_init, low=0.0, high=1.0, high_open=True)
        self.gamma_final = check_number(
            "gamma_final", gamma_final, low=0.0, high=1.0, high_open=True
        )
        self.momentum = check_number("momentum", momentum, low=0.0, high=1.0, high_open=True)
        self.relative_step = check_bool("relative_step", relative_step)
        if projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
        self.projection = projection

    def run(self, ctx: AttackContext, x: Tensor, y: Tensor) -> Tensor:
        """One FMN run per ``alpha_init``; each sample's smallest adversarial iterate (else x)."""
        return smallest_over_runs(
            x, self.alpha_init, self.steps, lambda steps, a: self._single_run(ctx, x, y, steps, a)
        )

    def _single_run(
        self, ctx: AttackContext, x: Tensor, y: Tensor, steps: int, alpha_init: float
    ) -> tuple[Tensor, Tensor]:
        """One run of ``steps`` steps: the smallest adversarial iterates (else x), their norms."""
        n, norm, bounds = x.shape[0], self.norm, ctx.bounds
        alpha_final = alpha_init / 100 if self.alpha_final is None else self.alpha_final
        delta = torch.zeros_like(x)
        worst = worst_norm(x, bounds, norm)
        eps = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
        best_norm = torch.full_like(eps, math.inf)
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        best = x.clone()
        velocity = torch.zeros_like(x) if self.momentum > 0 else None
        for i in range(steps):
            x_adv = x + delta
            margin, grad, logits = ctx.loss_and_grad(x_adv, lambda z: cw_margin(z, y, ctx.targeted))
            size = norm_of(delta, norm)
            adv = ctx.success(logits, y)
            better = adv & (size < best_norm)
            best_norm = torch.where(better, size, best_norm)
            best = torch.where(rows_view(better, x), x_adv, best)
            found |= adv
            if i == steps - 1:
                break
            gamma = cosine_schedule(self.gamma_init, self.gamma_final, i, steps)
            to_boundary = margin.abs() / dual_norm_of(grad, norm).clamp(min=_TINY)
            grown = torch.where(found, eps, size + to_boundary) * (1 + gamma)
            eps = torch.where(adv, torch.minimum(eps * (1 - gamma), best_norm), grown)
            eps = torch.minimum(eps, worst)
            alpha = cosine_schedule(alpha_init, alpha_final, i, steps)
            length = alpha * eps if self.relative_step else torch.full_like(eps, alpha)
            inv_norm = norm_of(grad, Norm.L2).clamp(min=_TINY).reciprocal()
            if velocity is None:
                delta.add_(grad.mul_(rows_view(inv_norm.mul_(length), grad)))
            else:
                velocity.mul_(self.momentum).add_(grad.mul_(rows_view(inv_norm, grad)))
                delta.addcmul_(velocity, rows_view(length, velocity))
            delta = self._project(x, delta, eps, bounds)
        return best, best_norm

    def _project(
        self, x: Tensor, delta: Tensor, eps: Tensor, bounds: tuple[float, float]
    ) -> Tensor:
        """Map ``x + delta`` into the box and the ``eps``-ball (or onto its sphere), in place."""
        if self.projection == "sphere":
            size = norm_of(delta, self.norm).clamp(min=_TINY)
            return (x + delta * rows_view(eps / size, delta)).clamp_(*bounds).sub_(x)
        return project_delta_(x, delta, self.norm, eps, bounds)
