"""Carlini-Wagner L2: a minimum-norm attack optimised with Adam in tanh space."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from attacks.base import AttackContext, MinimumNormAttack, register_attack
from attacks.losses import cw_margin
from attacks.rows import row_index, take_rows
from attacks.threat import Norm
from attacks.validation import check_bool, check_number, check_positive_int

_SMOOTH = 0.999999  # keeps atanh finite for pixels on the bounds (as in the authors' code)
_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8
_MAX_C = 1e10  # the authors' upper bound on the constant


@register_attack("cw_l2")
class CarliniWagnerL2(MinimumNormAttack):
    r"""Carlini-Wagner L2: the smallest L2 perturbation that changes the label.

    Paper: Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P
    2017. https://arxiv.org/abs/1608.04644

    Minimises ``||x' - x||_2^2 + c * max(z_y - max_{j != y} z_j + confidence, 0)`` over
    ``x' = lo + (hi - lo) * (tanh(w) + 1) / 2`` (always inside the bounds) with Adam, for a
    batch at once. A per-sample binary search over ``c`` keeps the smallest successful ``x'``.
    Defaults follow the authors' reference code (``initial_const=1e-3``, 9 search steps,
    ``learning_rate=1e-2``, early abort) except ``steps`` (100 instead of 10000, to keep
    evaluations cheap) and ``warm_start`` (see below). ART's ``CarliniL2Method`` starts at
    ``initial_const=1e-2``; pass that to compare with it.

    Threat model: l2, minimum norm: ``res.norms`` holds each sample's smallest successful
    perturbation (``inf`` where none was found) and ``success[k] = norms <= eps[k]``.

    Args:
        norm: Only ``"l2"``.
        steps: Adam iterations per value of ``c`` (default 100).
        binary_search_steps: Values of ``c`` tried per sample (default 9).
        initial_const: First ``c`` (default 1e-3). Multiplied by 10 until an adversarial
            example is found, then bisected.
        learning_rate: Adam step size in tanh space (default 1e-2).
        confidence: Margin ``kappa`` the adversarial logit must win by (default 0).
        abort_early: Stop optimising a sample for the current ``c`` when its lowest objective
            has not dropped by 0.01% over the last ``steps // 5`` iterations (default True).
            The authors check every ``steps // 10`` of their 10000 iterations; over 100 steps
            that window also stops samples that are still slowly improving.
        warm_start: Start each value of ``c`` from where the previous one ended (default
            True). The authors restart from ``x``; with 100 Adam steps of 0.01 a pixel on the
            bounds (``w = atanh(0.999999) ~ 7.25``) then never moves, which makes the attack
            weak on MNIST, so the optimisation is continued across the binary search instead.
        **kwargs: ``bounds``, ``targeted``, ``seed``, ``eval_mode`` (see :class:`Attack`).

    Shape:
        - x: ``[N, ...]`` in bounds; y: ``[N]``; result norms: ``[N]``.

    Example:
        >>> cw = attacks.create("cw_l2", binary_search_steps=9, steps=100)
        >>> res = cw(model, x, y, eps=[0.5, 1.0, 2.0])
        >>> res.norms.median()

    References:
        Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017.
        Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.

    """

    norms: ClassVar[frozenset[Norm]] = frozenset({Norm.L2})

    def __init__(
        self,
        norm: str | Norm = Norm.L2,
        *,
        steps: int = 100,
        binary_search_steps: int = 9,
        initial_const: float = 1e-3,
        learning_rate: float = 1e-2,
        confidence: float = 0.0,
        abort_early: bool = True,
        warm_start: bool = True,
        **kwargs,
    ) -> None:
        if Norm.parse(norm) is not Norm.L2:
            raise ValueError(
                f"cw_l2 is an l2 attack, got norm={norm!r}; use fmn for a minimum-norm attack "
                "in linf or l1 (pgd or apgd_ce for a fixed linf budget)"
            )
        super().__init__(norm, **kwargs)
        self.steps = check_positive_int("steps", steps)
        self.binary_search_steps = check_positive_int("binary_search_steps", binary_search_steps)
        self.initial_const = check_number("initial_const", initial_const, low_open=True)
        self.learning_rate = check_number("learning_rate", learning_rate, low_open=True)
        self.confidence = check_number("confidence", confidence)
        self.abort_early = check_bool("abort_early", abort_early)
        self.warm_start = check_bool("warm_start", warm_start)

    def run(self, ctx: AttackContext, x: Tensor, y: Tensor) -> Tensor:
        """Binary search over ``c``; return each sample's smallest successful ``x'`` (else x)."""
        n = x.shape[0]
        w0 = self._to_tanh(x, ctx.bounds)
        const = torch.full((n,), self.initial_const, dtype=x.dtype, device=x.device)
        lower = torch.zeros_like(const)
        upper = torch.full_like(const, math.inf)
        best_l2 = torch.full_like(const, math.inf)
        best_x = x.clone()
        w = w0
        for _ in range(self.binary_search_steps):
            found, w_last = self._optimize(ctx, x, y, w, const, best_l2, best_x)
            if self.warm_start:
                w = w_last
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(upper.isfinite(), (lower + upper) / 2, const * 10).clamp(max=_MAX_C)
        return best_x

    def _optimize(
        self,
        ctx: AttackContext,
        x: Tensor,
        y: Tensor,
        w_start: Tensor,
        const: Tensor,
        best_l2: Tensor,
        best_x: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Adam from ``w_start`` for one ``c`` per sample; update the bests in place.

        Returns:
            Which samples succeeded at some iterate, and where each sample's ``w`` ended.

        """
        lo, hi = ctx.bounds
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        rows = torch.arange(x.shape[0], device=x.device)
        w, xs, ys, cs = w_start, x, y, const
        w_out = w_start.clone()
        m, v = torch.zeros_like(w), torch.zeros_like(w)
        low = torch.full_like(const, math.inf)  # lowest objective so far
        prev = low.clone()  # ... at the last check
        check_every = max(self.steps // 5, 1)
        for t in range(1, self.steps + 1):
            tanh_w = torch.tanh(w)
            x_adv = self._from_tanh(tanh_w, ctx.bounds)
            margin_loss, grad, logits = ctx.loss_and_grad(
                x_adv, lambda z, ys=ys, cs=cs: cs * self._hinge(z, ys, ctx.targeted)
            )
            diff = x_adv - xs
            l2 = diff.flatten(1).pow(2).sum(1)
            ok = ctx.success(logits, ys)
            if self.confidence > 0:
                ok &= cw_margin(logits, ys, ctx.targeted) >= self.confidence
            found[rows] |= ok
            better = ok & (l2 < best_l2[rows])
            if bool(better.any()):
                best_l2[rows[better]] = l2[better]
                best_x[rows[better]] = x_adv[better]
            if t == self.steps:
                break
            grad_w = (grad + 2 * diff) * ((hi - lo) / (2 * _SMOOTH)) * (1 - tanh_w.pow(2))
            w = self._adam_step(w, grad_w, m, v, t)
            low = torch.minimum(low, l2 + margin_loss)
            if self.abort_early and t % check_every == 0:
                keep = low <= 0.9999 * prev
                prev = low
                if not bool(keep.all()):
                    w_out[rows[~keep]] = w[~keep]
                    if not bool(keep.any()):
                        return found, w_out
                    keep = row_index(keep)
                    rows, w, m, v = (take_rows(t, keep) for t in (rows, w, m, v))
                    low, prev = low[keep], prev[keep]
                    xs, ys, cs = take_rows(x, rows), y[rows], const[rows]
        w_out[rows] = w
        return found, w_out

    def _adam_step(self, w: Tensor, grad: Tensor, m: Tensor, v: Tensor, t: int) -> Tensor:
        """One Adam step (Kingma & Ba, default betas); updates the moments ``m, v`` in place."""
        m.mul_(_BETAS[0]).add_(grad, alpha=1 - _BETAS[0])
        v.mul_(_BETAS[1]).addcmul_(grad, grad, value=1 - _BETAS[1])
        denom = v.sqrt().div_(math.sqrt(1 - _BETAS[1] ** t)).add_(_ADAM_EPS)
        return w.addcdiv(m, denom, value=-self.learning_rate / (1 - _BETAS[0] ** t))

    def _hinge(self, logits: Tensor, y: Tensor, targeted: bool) -> Tensor:
        """CW objective ``f``: zero once the adversarial class wins by ``confidence``."""
        return (self.confidence - cw_margin(logits, y, targeted)).clamp(min=0)

    @staticmethod
    def _to_tanh(x: Tensor, bounds: tuple[float, float]) -> Tensor:
        lo, hi = bounds
        u = ((x - lo) / (hi - lo) * 2 - 1).clamp(-1, 1) * _SMOOTH
        return torch.atanh(u)

    @staticmethod
    def _from_tanh(tanh_w: Tensor, bounds: tuple[float, float]) -> Tensor:
        lo, hi = bounds
        return (lo + (hi - lo) * (tanh_w / _SMOOTH + 1) / 2).clamp(lo, hi)
