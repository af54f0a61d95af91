"""Decoupled Direction and Norm (DDN): a fast minimum-norm l2 attack."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from attacks.base import AttackContext, MinimumNormAttack, register_attack
from attacks.losses import cross_entropy
from attacks.threat import Norm, norm_of
from attacks.validation import check_number, check_positive_int

_TINY = 1e-12


def cosine_schedule(start: float, end: float, step: int, steps: int) -> float:
    """Cosine annealing from ``start`` (step 0) towards ``end`` (step ``steps``).

    References:
        Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017.

    """
    return end + (start - end) * (1 + math.cos(math.pi * step / steps)) / 2


def rows_view(t: Tensor, ref: Tensor) -> Tensor:
    """Reshape a per-sample ``[n]`` tensor to broadcast over ``ref`` ``[n, ...]``."""
    return t.view(-1, *([1] * (ref.dim() - 1)))


def quantize(x: Tensor, bounds: tuple[float, float], levels: int) -> Tensor:
    """Round ``x`` (in ``bounds``) to the nearest of ``levels`` evenly spaced values, in place."""
    lo, hi = bounds
    scale = (levels - 1) / (hi - lo)
    return x.sub_(lo).mul_(scale).round_().div_(scale).add_(lo)


def worst_norm(x: Tensor, bounds: tuple[float, float], norm: Norm) -> Tensor:
    """``[n]`` the largest norm a perturbation of ``x`` inside the box can have."""
    lo, hi = bounds
    return norm_of(torch.maximum(x - lo, hi - x), norm)


@register_attack("ddn")
class DDN(MinimumNormAttack):
    r"""DDN: gradient steps on the cross-entropy, each projected onto an adaptive l2 sphere.

    Paper: Rony, Hafemann, Oliveira, Ben Ayed, Sabourin & Granger, "Decoupling Direction and
    Norm for Efficient Gradient-Based L2 Adversarial Attacks and Defenses", CVPR 2019.
    https://arxiv.org/abs/1811.09600

    Each step moves ``delta`` by ``alpha * g / ||g||_2`` along the gradient ``g`` of the
    cross-entropy (towards the target for a targeted attack), then rescales it to norm
    ``eps``: ``eps`` shrinks by ``(1 - gamma)`` while the current point is adversarial and
    grows by ``(1 + gamma)`` while it is not, so the iterate follows the decision boundary
    towards smaller norms. The point is then clipped into the box and quantized to ``levels``
    values. The step ``alpha`` is cosine-annealed from ``alpha_init`` to ``alpha_final``, as in
    the authors' code (SGD with ``CosineAnnealingLR``). The smallest adversarial iterate is
    kept. Defaults are the paper's (``gamma = 0.05``, initial norm 1, 256 levels).

    Threat model: l2, minimum norm: ``res.norms`` holds each sample's smallest successful
    perturbation (``inf`` where none was found).

    Args:
        norm: Only ``"l2"``.
        steps: Forward+backward passes (default 100; the paper also reports 1000).
        gamma: Relative change of the norm per step (default 0.05).
        init_norm: The first norm ``eps_0`` (default 1.0).
        alpha_init: First step size (default 1.0).
        alpha_final: Last step size (default 0.01).
        levels: Quantization levels of the iterates, ``None`` for none (default 256: 8-bit
            images).
        **kwargs: ``bounds``, ``targeted``, ``seed``, ``eval_mode`` (see :class:`Attack`).

    Shape:
        - x: ``[N, ...]`` in bounds; y: ``[N]``; result norms: ``[N]``.

    Example:
        >>> ddn = attacks.create("ddn", steps=1000)
        >>> res = ddn(model, x, y, eps=[0.5, 1.0, 2.0])
        >>> res.norms.median()

    References:
        Rony et al., "Decoupling Direction and Norm for Efficient Gradient-Based L2
        Adversarial Attacks and Defenses", CVPR 2019.

    """

    norms: ClassVar[frozenset[Norm]] = frozenset({Norm.L2})

    def __init__(
        self,
        norm: str | Norm = Norm.L2,
        *,
        steps: int = 100,
        gamma: float = 0.05,
        init_norm: float = 1.0,
        alpha_init: float = 1.0,
        alpha_final: float = 0.01,
        levels: int | None = 256,
        **kwargs,
    ) -> None:
        super().__init__(norm, **kwargs)
        self.steps = check_positive_int("steps", steps)
        self.gamma = check_number("gamma", gamma, low=0.0, high=1.0, low_open=True, high_open=True)
        self.init_norm = check_number("init_norm", init_norm, low_open=True)
        self.alpha_init = check_number("alpha_init", alpha_init, low_open=True)
        self.alpha_final = check_number("alpha_final", alpha_final, low_open=True)
        self.levels = None if levels is None else check_positive_int("levels", levels, minimum=2)

    def run(self, ctx: AttackContext, x: Tensor, y: Tensor) -> Tensor:
        """Run DDN on every sample; return each one's smallest adversarial iterate (else x)."""
        n, bounds = x.shape[0], ctx.bounds
        delta = torch.zeros_like(x)
        eps = torch.full((n,), self.init_norm, dtype=x.dtype, device=x.device)
        worst = worst_norm(x, bounds, Norm.L2)
        best_norm = torch.full_like(eps, math.inf)
        best = x.clone()
        for i in range(self.steps):
            x_adv = x + delta
            _, grad, logits = ctx.loss_and_grad(x_adv, lambda z: cross_entropy(z, y, ctx.targeted))
            l2 = norm_of(delta, Norm.L2)
            adv = ctx.success(logits, y)
            better = adv & (l2 < best_norm)
            best_norm = torch.where(better, l2, best_norm)
            best = torch.where(rows_view(better, x), x_adv, best)
            if i == self.steps - 1:
                break
            direction = self._direction(ctx, grad, i)
            alpha = cosine_schedule(self.alpha_init, self.alpha_final, i, self.steps)
            delta.add_(direction, alpha=alpha)
            eps = torch.where(adv, eps * (1 - self.gamma), eps * (1 + self.gamma)).minimum(worst)
            delta.mul_(rows_view(eps / norm_of(delta, Norm.L2).clamp(min=_TINY), x))
            x_new = (x + delta).clamp_(*bounds)
            if self.levels is not None:
                quantize(x_new, bounds, self.levels)
            delta = x_new.sub_(x)
        return best

    @staticmethod
    def _direction(ctx: AttackContext, grad: Tensor, step: int) -> Tensor:
        """``g / ||g||_2``; a random unit direction (per sample and step) where ``g = 0``."""
        g_norm = norm_of(grad, Norm.L2)
        zero = g_norm < _TINY
        if bool(zero.any()):
            rows = zero.nonzero().squeeze(1)
            noise = ctx.normal(rows, tuple(grad.shape[1:]), ("zero_grad", step))
            grad[rows] = noise.to(grad)
            g_norm[rows] = norm_of(grad[rows], Norm.L2)
        return grad.div_(rows_view(g_norm.clamp(min=_TINY), grad))
