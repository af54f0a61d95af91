"""FAB: the fast adaptive boundary attack (minimum norm, linf and l2), untargeted and FAB-T."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from attacks.base import AttackContext, MinimumNormAttack, register_attack
from attacks.fab_projections import project_to_hyperplane
from attacks.losses import cw_margin
from attacks.restarts import BestOf, SingleRun, run_restarts
from attacks.rows import row_index, take_rows
from attacks.targets import check_target_order, rank_targets, without_default_order
from attacks.threat import Norm, norm_of
from attacks.validation import check_number, check_positive_int

logger = logging.getLogger(__name__)

# The authors' restart radius when no eps is given and nothing was found yet (their defaults).
DEFAULT_RESTART_EPS = {Norm.LINF: 0.3, Norm.L2: 1.0}
_MIN_STEP = 1e-8
SEARCH_OVERSHOOT = 0.1  # the final search aims this fraction past the secant's zero
# diffs(logits, rows) -> [len(rows), K] differentiable logit differences, positive on the
# adversarial side of each of K linearised boundaries; ``rows`` index the input of ``run``.
Boundaries = Callable[[Tensor, Tensor], Tensor]


def _dual_norm(g: Tensor, norm: Norm) -> Tensor:
    """The dual norm of ``g`` ``[n, D]`` (l1 for linf, l2 for l2): distance = |f| / dual."""
    return g.abs().sum(1) if norm is Norm.LINF else g.norm(dim=1)


def _row(t: Tensor, ref: Tensor) -> Tensor:
    return t.view(-1, *([1] * (ref.dim() - 1)))


class _Run:
    """The state of one FAB run: the rows still iterating and every row's best example."""

    def __init__(self, x: Tensor, start: Tensor) -> None:
        n = x.shape[0]
        self.adv = x.clone()
        self.best_norm = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
        self.live = torch.arange(n, device=x.device)  # rows of the run still iterating
        self.x0, self.x1 = x, start.clone()  # clean points and iterates of the live rows

    def record(self, hit: Tensor, norm: Norm, beta: float) -> None:
        """Keep the smallest adversarial iterates ``hit`` (live rows); move those back.

        An adversarial iterate ``x1`` moves to ``x + beta (x1 - x)``.
        """
        if not bool(hit.any()):
            return
        rows = self.live
        size = norm_of(self.x1 - self.x0, norm)
        better = hit & (size < self.best_norm[rows])
        self.adv[rows] = torch.where(_row(better, self.x0), self.x1, take_rows(self.adv, rows))
        self.best_norm[rows] = torch.where(better, size, self.best_norm[rows])
        back = self.x0 + beta * (self.x1 - self.x0)
        self.x1 = torch.where(_row(hit, self.x0), back, self.x1)

    def within(self, eps: float | None, everywhere: bool = False) -> Tensor:
        """Live rows (every row with ``everywhere``) with an example of norm <= ``eps``."""
        norms = self.best_norm if everywhere else self.best_norm[self.live]
        if eps is None:
            return torch.zeros_like(norms, dtype=torch.bool)
        return norms <= eps

    def select(self, keep: Tensor) -> None:
        """Keep iterating only the live rows ``keep``."""
        keep = row_index(keep)
        self.live, self.x0, self.x1 = (take_rows(t, keep) for t in (self.live, self.x0, self.x1))


@register_attack("fab")
class FAB(MinimumNormAttack):
    r"""FAB: the smallest perturbation that crosses the linearised decision boundary.

    Paper: Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive
    boundary attack", ICML 2020. https://arxiv.org/abs/1907.02044

    Each step linearises the model at the iterate ``x_k``, picks the closest linearised
    boundary ``f_l - f_y = 0`` (distance ``|f_l - f_y| / ||grad(f_l - f_y)||_*``), projects
    both ``x_k`` and the original ``x`` onto it inside the input box (``d_k``, ``d_0``;
    :func:`attacks.fab_projections.project_to_hyperplane`) and moves to
    ``(1 - alpha) (x_k + eta d_k) + alpha (x + eta d_0)`` with
    ``alpha = min(||d_k|| / (||d_k|| + ||d_0||), alpha_max)``: the blend with the original
    point keeps the perturbation small. When the iterate is adversarial it is recorded if its
    norm is the smallest so far and moved back, ``x + beta (x_k - x)``. Restart 0 starts at
    ``x``; later restarts start on the sphere of radius ``min(best norm, eps) / 2`` around it.
    A final search (the authors' ``linear_approximation_search``) then moves each adversarial
    example towards ``x`` along the segment between them, with the secant rule on the margin.

    Per iteration and sample: one forward pass with ``K`` backward passes (``K = C - 1``
    boundaries untargeted, 1 for FAB-T or a given target) and one forward pass to check the
    new iterate. A sample whose step leaves it in place (zero gradient at ``x``) stops, and
    so, with an ``eps``, does one with an adversarial example within it.
    The final search costs ``2 + final_search_steps`` forward passes.

    ``eps`` and fixed-budget evaluations. The sealed call takes ``eps=`` only to threshold
    the norms found; it does not tell ``run`` the budget. ``eps`` here is AutoAttack's: with
    an ``eps``, later restarts (and, for :class:`FABT`, later target classes) run only on the
    samples whose smallest norm so far exceeds ``eps``, restarts start within ``eps / 2``, and
    a sample stops as soon as it has an example within ``eps`` (its norm is not refined).
    Inside an :class:`~attacks.AttackSuite` at a fixed budget, create FAB with that ``eps``
    to get AutoAttack's cost; without it (the default) every restart and target runs on every
    sample and keeps the smallest norm (the minimum-norm protocol of the paper), which costs
    more but is never weaker at any eps.

    Threat model: linf or l2, minimum norm: ``res.norms`` holds each sample's smallest
    perturbation found (``inf`` where none was) and ``success[k] = norms <= eps[k]``.

    Args:
        norm: ``"linf"`` (default) or ``"l2"``.
        steps: Iterations per restart (default 100, as in AutoAttack).
        restarts: Runs per sample (default 1, AutoAttack's standard version).
        alpha_max: Largest weight of the original point in the blend (default 0.1).
        eta: Overshoot of the projections (default 1.05).
        beta: Backward step towards ``x`` after a success (default 0.9).
        eps: The budget of a fixed-budget evaluation, the largest eps it is called with
            (see above; default None). Without it restarts start within
            ``min(best norm, 0.3) / 2`` (linf; ``1.0`` for l2), the authors' default radius.
        final_search_steps: Secant steps of the final search (default 3; 0 turns it off).
        **kwargs: ``bounds``, ``targeted``, ``seed``, ``eval_mode`` (see :class:`Attack`).
            With ``targeted=True`` the call needs ``target=`` and the boundary is
            ``f_t - max_{j != t} f_j = 0``.

    Shape:
        - x: ``[N, ...]`` in bounds; y: ``[N]``; result norms: ``[N]``.

    Example:
        >>> fab = attacks.create("fab", norm="linf", steps=100)
        >>> res = fab(model, x, y, eps=[0.1, 0.2, 0.3])
        >>> res.norms.median(), res.robust_accuracy

    References:
        Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive boundary
        attack", ICML 2020. https://arxiv.org/abs/1907.02044
        Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
        diverse parameter-free attacks", ICML 2020 (FAB-T, the AutoAttack defaults).

    """

    def __init__(
        self,
        norm: str | Norm = Norm.LINF,
        *,
        steps: int = 100,
        restarts: int = 1,
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        eps: float | None = None,
        final_search_steps: int = 3,
        **kwargs,
    ) -> None:
        super().__init__(norm, **kwargs)
        self.steps = check_positive_int("steps", steps)
        self.restarts = check_positive_int("restarts", restarts)
        self.alpha_max = check_number("alpha_max", alpha_max, low=0.0, high=1.0)
        self.eta = check_number("eta", eta, low_open=True)
        self.beta = check_number("beta", beta, low=0.0, high=1.0)
        self.eps = None if eps is None else check_number("eps", eps, low_open=True)
        self.final_search_steps = check_positive_int(
            "final_search_steps", final_search_steps, minimum=0
        )

    def with_eps(self, eps: float) -> FAB:
        """A copy that runs as a member of a fixed-budget cascade at ``eps`` (see above).

        Raises:
            ValueError: ``eps`` is not a positive number.
        """
        member = copy.copy(self)
        member.eps = check_number("eps", eps, low_open=True)
        return member

    def run(self, ctx: AttackContext, x: Tensor, y: Tensor) -> Tensor:
        """Every boundary set and restart in turn, then the final search."""
        best = BestOf(x)  # loss = -norm of the smallest adversarial example found
        for j, diffs in enumerate(self._boundary_sets(ctx, x, y)):
            run_restarts(x, self.restarts, self._runner(ctx, x, y, diffs, best, j), best)
        found = best.loss.isfinite()
        if self.final_search_steps > 0 and bool(found.any()):
            idx = found.nonzero().squeeze(1)
            best.x[idx] = self._final_search(ctx, x[idx], y[idx], best.x[idx])
        return best.x

    def _boundary_sets(self, ctx: AttackContext, x: Tensor, y: Tensor) -> Iterator[Boundaries]:
        """The boundaries of each pass over the samples: one pass, every other class."""
        if ctx.targeted:  # ``y`` holds the targets: the target against the best other class
            yield lambda logits, rows: cw_margin(logits, y[rows], True).unsqueeze(1)
            return

        def every_other_class(logits: Tensor, rows: Tensor) -> Tensor:
            labels = y[rows].unsqueeze(1)
            other = torch.arange(logits.shape[1] - 1, device=logits.device).expand(len(rows), -1)
            other = other + (other >= labels).long()
            return logits.gather(1, other) - logits.gather(1, labels)

        yield every_other_class

    def _runner(
        self,
        ctx: AttackContext,
        x: Tensor,
        y: Tensor,
        diffs: Boundaries,
        best: BestOf,
        pass_index: int,
    ) -> SingleRun:
        """``single_run(rows, restart)`` of :func:`~attacks.restarts.run_restarts`."""

        def single_run(rows: Tensor, restart: int) -> tuple[Tensor, Tensor, Tensor]:
            start = x[rows]
            if restart > 0:
                start = self._random_start(
                    ctx, x[rows], -best.loss[rows], rows, (pass_index, restart)
                )
            return self._single_run(ctx, x[rows], y[rows], start, rows, diffs)

        return single_run

    def _random_start(
        self, ctx: AttackContext, x: Tensor, best_norm: Tensor, rows: Tensor, key: tuple
    ) -> Tensor:
        """A point on the sphere of radius ``min(best norm, eps) / 2`` around ``x``."""
        cap = self.eps if self.eps is not None else DEFAULT_RESTART_EPS[self.norm]
        radius = best_norm.clamp(max=cap) / 2
        draws = ctx.stream(rows, ("start", *key))
        shape = tuple(x.shape[1:])
        if self.norm is Norm.LINF:
            t = 2 * draws.uniform(shape).to(x) - 1
        else:
            t = draws.normal(shape).to(x)
        t = t / _row(norm_of(t, self.norm).clamp(min=1e-12), t)
        return (x + _row(radius, x) * t).clamp(*ctx.bounds)

    def _single_run(
        self,
        ctx: AttackContext,
        x: Tensor,
        y: Tensor,
        start: Tensor,
        rows: Tensor,
        diffs: Boundaries,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``steps`` FAB iterations from ``start``; returns (best, -norm or -inf, norm <= eps).

        A row whose step leaves it where it was (a zero gradient at ``x``) would repeat it
        forever, and with an ``eps`` a row with an adversarial example within ``eps`` is done:
        both stop.
        """
        run = _Run(x, start)
        for _ in range(self.steps):
            f, g = self._closest_boundary(ctx, run.x1, rows[run.live], diffs)
            new = self._step(run.x0, run.x1, f, g, ctx.bounds)
            moved = ~(new == run.x1).flatten(1).all(1)
            run.x1 = new
            hit = ctx.success(ctx.logits(new), y[run.live])
            run.record(hit, self.norm, self.beta)
            keep = (moved | hit) & ~run.within(self.eps)
            if not bool(keep.all()):
                run.select(keep)
                if run.live.numel() == 0:
                    break
        found = run.best_norm.isfinite()
        done = run.within(self.eps, everywhere=True)
        return run.adv, torch.where(found, -run.best_norm, -math.inf), done

    def _closest_boundary(
        self, ctx: AttackContext, z: Tensor, rows: Tensor, diffs: Boundaries
    ) -> tuple[Tensor, Tensor]:
        """Value ``[n]`` and input gradient ``[n, D]`` of the closest linearised boundary.

        One forward pass and one backward pass per boundary, counted in ``ctx``.
        """
        n = z.shape[0]
        z = z.detach().requires_grad_(True)
        d = diffs(ctx.model(z), rows)
        k = d.shape[1]
        ctx.n_forward += n
        ctx.n_backward += n * k
        best_f = best_g = best_dist = None
        for j in range(k):
            (g,) = torch.autograd.grad(d[:, j].sum(), z, retain_graph=j < k - 1)
            g = g.flatten(1)
            f = d[:, j].detach()
            dist = f.abs() / (_dual_norm(g, self.norm) + 1e-12)
            if best_dist is None:
                best_f, best_g, best_dist = f, g, dist
                continue
            closer = dist < best_dist
            best_f = torch.where(closer, f, best_f)
            best_g = torch.where(closer.unsqueeze(1), g, best_g)
            best_dist = torch.where(closer, dist, best_dist)
        return best_f, best_g

    def _step(
        self, x: Tensor, x1: Tensor, f: Tensor, g: Tensor, bounds: tuple[float, float]
    ) -> Tensor:
        """Project ``x1`` and ``x`` onto the boundary, overshoot and blend them."""
        n = x.shape[0]
        flat1, flat0 = x1.flatten(1), x.flatten(1)
        b = (g * flat1).sum(1) - f  # the plane f + g . (z - x1) = 0 is g . z = b
        d = project_to_hyperplane(
            torch.cat((flat1, flat0)), torch.cat((g, g)), torch.cat((b, b)), self.norm, bounds
        )
        size = norm_of(d, self.norm).clamp(min=_MIN_STEP)
        a1, a0 = size[:n], size[n:]
        alpha = (a1 / (a1 + a0)).clamp(0.0, self.alpha_max).unsqueeze(1)
        # (x1 + eta d1)(1 - alpha) + (x + eta d0) alpha, written so that x1 = x, d = 0 stays put
        moved = flat1 + alpha * (flat0 - flat1) + self.eta * ((1 - alpha) * d[:n] + alpha * d[n:])
        return moved.clamp(*bounds).view_as(x)

    def _final_search(self, ctx: AttackContext, x: Tensor, y: Tensor, adv: Tensor) -> Tensor:
        """Secant steps on the segment ``[x, adv]``: the closest point that stays adversarial.

        The attack's margin ``m`` (positive once the goal holds) is linearly interpolated
        between the last non-adversarial point ``a`` and the adversarial one ``b``; the point
        a tenth of the way past the zero towards ``b`` replaces ``b`` if it is adversarial,
        else ``a``. Aiming past the zero keeps the points off the boundary itself, where float
        noise would decide the label, and shrinks the gap geometrically on a linear model.
        Every point stays on the segment, so the norm never grows.
        """
        lo_x, hi_x = x.clone(), adv.clone()
        lo_m = cw_margin(ctx.logits(lo_x), y, ctx.targeted)
        hi_m = cw_margin(ctx.logits(hi_x), y, ctx.targeted)
        for _ in range(self.final_search_steps):
            t = -lo_m / (hi_m - lo_m)
            t = torch.where((t >= 0) & (t <= 1), t, torch.ones_like(t))
            t = t + SEARCH_OVERSHOOT * (1 - t)  # land on the adversarial side of the zero
            mid = lo_x + _row(t, x) * (hi_x - lo_x)
            logits = ctx.logits(mid)
            ok, m = ctx.success(logits, y), cw_margin(logits, y, ctx.targeted)
            hi_x = torch.where(_row(ok, x), mid, hi_x)
            hi_m = torch.where(ok, m, hi_m)
            lo_x = torch.where(_row(ok, x), lo_x, mid)
            lo_m = torch.where(ok, lo_m, m)
        return hi_x


@register_attack("fab_t")
class FABT(FAB):
    r"""FAB-T: FAB towards each of the most likely other classes in turn (as in AutoAttack).

    Paper: Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
    diverse parameter-free attacks", ICML 2020. https://arxiv.org/abs/2003.01690

    For ``k = 1..n_target_classes``, FAB runs with the single boundary ``f_t - f_y = 0``,
    ``t`` the class of ``k``-th highest clean logit after ``y``: one backward pass per step
    instead of ``C - 1``. Success is untargeted (any wrong class), as in AutoAttack, so the
    call takes no ``target=``. With an ``eps`` a later target class runs only on the samples
    whose smallest norm so far exceeds it; without one, on every sample (see :class:`FAB`).

    Args:
        norm: ``"linf"`` (default) or ``"l2"``.
        n_target_classes: Target classes tried (default 9; at most ``C - 1`` are used).
        target_order: ``"logits"`` (default, AutoAttack's: by clean logit) or ``"linear"``
            (by distance to the linearised boundary at the clean point, as MALT; one backward
            pass per candidate class more). See :mod:`attacks.targets`.
        **kwargs: The arguments of :class:`FAB` (``steps=100``, ``restarts=1``, ``eps``, ...)
            and ``bounds``, ``seed``, ``eval_mode``.

    Shape:
        - x: ``[N, ...]`` in bounds; y: ``[N]``; result norms: ``[N]``.

    Example:
        >>> fab_t = attacks.create("fab_t", n_target_classes=9, eps=0.3)
        >>> res = fab_t(model, x, y, eps=0.3)

    References:
        Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
        diverse parameter-free attacks", ICML 2020.
        Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive boundary
        attack", ICML 2020.

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
        if self.targeted:
            raise ValueError(
                "fab_t picks its own target classes and succeeds on any wrong class; "
                "use attacks.create('fab', targeted=True) to attack given targets"
            )
        self.n_target_classes = check_positive_int("n_target_classes", n_target_classes)
        self.target_order = check_target_order(target_order)

    def config(self) -> dict[str, Any]:
        """The settings; ``target_order`` only when it is not the default."""
        return without_default_order(super().config())

    def _boundary_sets(self, ctx: AttackContext, x: Tensor, y: Tensor) -> Iterator[Boundaries]:
        """One pass per target class: the boundary between it and the true class."""
        targets = rank_targets(ctx, x, y, self.n_target_classes, self.target_order)
        k = targets.shape[1]
        if k < self.n_target_classes:
            logger.info("fab_t: only %d other classes; using %d targets", k, k)
        for j in range(k):
            target = targets[:, j]
            yield (
                lambda logits, rows, t=target: (
                    logits.gather(1, t[rows].unsqueeze(1)) - logits.gather(1, y[rows].unsqueeze(1))
                )
            )
