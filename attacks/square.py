"""Square Attack: score-based random search over square updates, linf and l2 (no gradients)."""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

from attacks.base import AttackContext, FixedBudgetAttack, register_attack
from attacks.losses import cross_entropy, cw_margin
from attacks.restarts import run_restarts
from attacks.rows import row_index, take_rows
from attacks.threat import Norm
from attacks.validation import check_bool, check_number, check_positive_int

# The paper's schedule of the fraction p of changed pixels: p_init / 2**k after the k-th of
# these iterations (defined for 10000 queries; see ``rescale_schedule``).
SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
LOSSES = {"margin": cw_margin, "ce": cross_entropy}
BLOCK = 32  # queries whose draws are made at once (keyed by the block: batch-independent)
_GRID = 5  # the l2 start is a 5 x 5 grid of bumps


def p_at(iteration: int, p_init: float, n_queries: int, rescale: bool) -> float:
    """The fraction of pixels a square covers at ``iteration`` (0-based) of the paper's schedule.

    ``p_init`` is halved after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000;
    with ``rescale`` the iteration is first mapped onto a budget of 10000 queries.
    """
    it = int(iteration / n_queries * 10000) if rescale else iteration
    return p_init / 2 ** sum(it > mark for mark in SCHEDULE)


def side_of(p: float, n_features: int, channels: int, size: int, norm: Norm) -> int:
    """Side length of the square that covers about a fraction ``p`` of the pixels.

    linf: at least 1; l2: at least 3 and odd. Never more than ``size``, the image's shorter side.
    """
    s = round(math.sqrt(p * n_features / channels))
    if norm is Norm.L2:
        s = max(s, 3)
        s += 1 - s % 2
    return min(max(s, 1), size)


@lru_cache(maxsize=64)
def _bump(rows: int, cols: int) -> tuple[float, ...]:
    """The l2 bump ``sum_{k >= d(i, j)} 1 / (k + 1)**2`` on a ``rows x cols`` patch, flattened.

    ``d(i, j)`` is the Chebyshev distance to the patch's centre ``(rows // 2, cols // 2)``.
    """
    if rows == 0:
        return ()
    depth = max(rows // 2, cols // 2) + 1
    tail = [sum(1.0 / (k + 1) ** 2 for k in range(d, depth)) for d in range(depth)]
    return tuple(
        tail[max(abs(i - rows // 2), abs(j - cols // 2))] for i in range(rows) for j in range(cols)
    )


def l2_pattern(s: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The paper's ``s x s`` l2 update: a positive bump over a negative one, unit l2 norm."""
    top = torch.tensor(_bump(s // 2, s), dtype=torch.float64).view(s // 2, s)
    bottom = torch.tensor(_bump(s - s // 2, s), dtype=torch.float64).view(s - s // 2, s)
    top = top / top.norm().clamp(min=1e-12)
    bottom = bottom / bottom.norm().clamp(min=1e-12)
    pattern = torch.cat((top, -bottom))
    return (pattern / pattern.norm()).to(dtype=dtype, device=device)


@lru_cache(maxsize=64)
def _offsets(s: int, width: int, device: torch.device) -> Tensor:
    """``[s*s]`` flat offsets of the pixels of an ``s x s`` square from its top-left pixel."""
    r = torch.arange(s, device=device)
    return (r.unsqueeze(1) * width + r).flatten()


def _window_index(u_top: Tensor, u_left: Tensor, s: int, h: int, w: int) -> Tensor:
    """``[n, s*s]`` flat pixel indices of ``s x s`` squares placed uniformly at random.

    ``u_top`` and ``u_left`` are uniforms in (0, 1); every position ``[0, h - s] x [0, w - s]``
    is equally likely.
    """
    top = (u_top * (h - s + 1)).long().clamp_(max=h - s)
    left = (u_left * (w - s + 1)).long().clamp_(max=w - s)
    return (top * w + left).unsqueeze(1) + _offsets(s, w, u_top.device)


@register_attack("square")
class Square(FixedBudgetAttack):
    r"""Square Attack: random search with square-shaped updates, scored by the model's logits.

    Paper: Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient
    black-box adversarial attack via random search", ECCV 2020. https://arxiv.org/abs/1912.00049

    Score-based and gradient-free: every query is one forward pass (``n_forward``), there is
    no backward pass, so masked or obfuscated gradients do not stop it. Each sample keeps its
    best point and proposes one change per query, accepted when it raises the loss (the margin
    ``max_{j != y} z_j - z_y`` by default); a sample leaves as soon as it is misclassified.

    - linf: starts from vertical stripes of ``+-eps``; each proposal sets a random square of
      side ``s`` (per channel) to ``x +- eps``. A colour that would not change the square gets
      one random channel flipped (the authors' code redraws it until it changes something).
    - l2: starts from a 5 x 5 grid of bumps with random signs, scaled to norm ``eps``; each
      proposal moves the perturbation's mass from a second random square into a new bump on
      the first one and rescales to norm ``eps``.

    The side ``s`` covers a fraction ``p`` of the pixels, ``p_init`` halved on the paper's
    schedule (after 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 queries). Every draw
    (square positions, colours, bump orientation) is keyed by (seed, sample id, restart,
    query), so a sample gets the same draws alone or in any batch. Inputs must be images
    ``[N, C, H, W]``.

    Threat model: linf or l2, fixed budget ``eps``.

    Args:
        norm: ``"linf"`` (default) or ``"l2"``.
        n_queries: Forward passes per sample and restart, the start included (default 5000,
            AutoAttack's budget).
        p_init: Initial fraction of pixels per square (default 0.8, AutoAttack's value for
            both norms; the paper tunes 0.05 (linf) and 0.1 (l2) for undefended ImageNet
            models and larger values for robust ones).
        restarts: Random restarts; later ones attack only the samples still robust (default 1).
        loss: ``"margin"`` (default) or ``"ce"`` (cross-entropy).
        rescale_schedule: Map the queries onto the paper's 10000-query schedule (default
            False: AutoAttack's standard run uses the schedule as is for its 5000 queries).
        **kwargs: ``bounds``, ``targeted``, ``seed``, ``eval_mode`` (see :class:`Attack`).

    Shape:
        - x: ``[N, C, H, W]`` in bounds; y: ``[N]``; result x_adv: like x (``[K, N, ...]``
          for K eps).

    Example:
        >>> square = attacks.create("square", norm="linf", n_queries=5000)
        >>> res = square(model, x, y, eps=0.3)
        >>> res.robust_accuracy, res.n_forward

    References:
        Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box
        adversarial attack via random search", ECCV 2020.
        Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
        diverse parameter-free attacks", ICML 2020 (Square in AutoAttack, its defaults).

    """

    def __init__(
        self,
        norm: str | Norm = Norm.LINF,
        *,
        n_queries: int = 5000,
        p_init: float = 0.8,
        restarts: int = 1,
        loss: str = "margin",
        rescale_schedule: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(norm, **kwargs)
        if loss not in LOSSES:
            raise ValueError(f"Unknown loss {loss!r}; use one of: {', '.join(sorted(LOSSES))}.")
        self.n_queries = check_positive_int("n_queries", n_queries)
        self.p_init = check_number("p_init", p_init, low=0.0, high=1.0, low_open=True)
        self.restarts = check_positive_int("restarts", restarts)
        self.loss = loss
        self.rescale_schedule = check_bool("rescale_schedule", rescale_schedule)

    def run(self, ctx: AttackContext, x: Tensor, y: Tensor, eps: float) -> Tensor:
        """Run ``restarts`` searches; later restarts attack only samples still robust."""
        if x.dim() != 4:
            raise ValueError(
                f"square needs image inputs [N, C, H, W], got shape {tuple(x.shape)}; "
                "reshape the inputs (the model may flatten them itself)"
            )

        def single_run(rows: Tensor, restart: int) -> tuple[Tensor, Tensor, Tensor]:
            return self._single_run(ctx, take_rows(x, rows), y[rows], eps, rows, restart)

        return run_restarts(x, self.restarts, single_run).x

    def _objective(self, ctx: AttackContext, logits: Tensor, y: Tensor) -> Tensor:
        return LOSSES[self.loss](logits, y, ctx.targeted)

    def _single_run(
        self, ctx: AttackContext, x: Tensor, y: Tensor, eps: float, rows: Tensor, restart: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One search on the rows ``rows`` of ``run``'s input; returns (best, loss, fooled)."""
        n = x.shape[0]
        out, hit = x.clone(), torch.zeros(n, dtype=torch.bool, device=x.device)
        out_loss = torch.empty(n, dtype=x.dtype, device=x.device)
        # Compact state of the samples still searched: rows of this run, clean, best, label,
        # loss, and the draws of the current block of queries.
        local, xs, ys = torch.arange(n, device=x.device), x, y
        xb = self._start(ctx, x, eps, rows, restart)
        logits = ctx.logits(xb)
        loss, fooled = self._objective(ctx, logits, y), ctx.success(logits, y)
        width = (3 if self.norm is Norm.LINF else 5) + x.shape[1]
        draws = x.new_empty(n, BLOCK, width)
        for i in range(self.n_queries):
            if bool(fooled.any()):
                out[local[fooled]], hit[local[fooled]] = xb[fooled], True
                out_loss[local[fooled]] = loss[fooled]
                keep = row_index(~fooled)
                local, xs, ys, xb, loss, draws = (
                    take_rows(t, keep) for t in (local, xs, ys, xb, loss, draws)
                )
            if local.numel() == 0 or i == self.n_queries - 1:
                break
            if i % BLOCK == 0:  # the draws of queries i..i+BLOCK-1: a function of (id, i) only
                draws = ctx.uniform(rows[local], (BLOCK, width), ("query", restart, i // BLOCK))
            x_new = self._propose(ctx, xs, xb, eps, draws[:, i % BLOCK], self._side(i, xs))
            logits = ctx.logits(x_new)
            new_loss, fooled = self._objective(ctx, logits, ys), ctx.success(logits, ys)
            accept = fooled | (new_loss > loss)
            xb = torch.where(accept.view(-1, 1, 1, 1), x_new, xb)
            loss = torch.where(accept, new_loss, loss)
        out[local], out_loss[local] = xb, loss
        return out, out_loss, hit

    def _side(self, iteration: int, x: Tensor) -> int:
        """Side of the squares of query ``iteration`` (0-based, after the start)."""
        p = p_at(iteration, self.p_init, self.n_queries, self.rescale_schedule)
        return side_of(p, x[0].numel(), x.shape[1], min(x.shape[2:]), self.norm)

    def _start(
        self, ctx: AttackContext, x: Tensor, eps: float, rows: Tensor, restart: int
    ) -> Tensor:
        """The first query: vertical stripes (linf) or a grid of bumps (l2)."""
        n, c, h, w = x.shape
        if self.norm is Norm.LINF:
            u = ctx.uniform(rows, (c, 1, w), ("init", restart)).to(x)
            return (x + eps * torch.where(u < 0.5, -1.0, 1.0).to(x)).clamp(*ctx.bounds)
        s = max(h // _GRID, 1)
        u = ctx.uniform(rows, (c + 1, _GRID, _GRID), ("init", restart)).to(x)
        pattern = l2_pattern(s, x.dtype, x.device)
        flip = (u[:, :1] < 0.5).unsqueeze(-1).unsqueeze(-1)  # [n, 1, G, G, 1, 1]
        bumps = torch.where(flip, pattern.t(), pattern)  # [n, 1, G, G, s, s]
        signs = torch.where(u[:, 1:] < 0.5, -1.0, 1.0).to(x).unsqueeze(-1).unsqueeze(-1)
        grid = (bumps * signs).permute(0, 1, 2, 4, 3, 5).reshape(n, c, _GRID * s, _GRID * s)
        delta = torch.zeros_like(x)
        top, left = max((h - _GRID * s) // 2, 0), max((w - _GRID * s) // 2, 0)
        gh, gw = min(_GRID * s, h - top), min(_GRID * s, w - left)
        delta[:, :, top : top + gh, left : left + gw] = grid[:, :, :gh, :gw]
        return (x + eps * _unit_l2(delta)).clamp(*ctx.bounds)

    def _propose(
        self, ctx: AttackContext, x: Tensor, xb: Tensor, eps: float, u: Tensor, s: int
    ) -> Tensor:
        """One proposal per sample from its uniforms ``u`` ``[n, 3 + C]`` (l2: ``5 + C``)."""
        if self.norm is Norm.LINF:
            return self._propose_linf(x, xb, eps, u, s, ctx.bounds)
        return self._propose_l2(x, xb, eps, u.to(x), s, ctx.bounds)

    @staticmethod
    def _propose_linf(
        x: Tensor, xb: Tensor, eps: float, u: Tensor, s: int, bounds: tuple[float, float]
    ) -> Tensor:
        """Set a random ``s x s`` square of each sample to ``x +- eps`` (one sign per channel).

        A colour that leaves the square as it is gets one random channel flipped.
        """
        n, c, h, w = x.shape
        idx = _window_index(u[:, 0], u[:, 1], s, h, w).unsqueeze(1).expand(n, c, s * s)
        xw = x.reshape(n, c, h * w).gather(2, idx)
        bw = xb.reshape(n, c, h * w).gather(2, idx)
        up, down = (xw + eps).clamp_(*bounds), (xw - eps).clamp_(*bounds)
        sign = u[:, 3:] < 0.5  # [n, c], True: +eps
        same = torch.where(sign.unsqueeze(2), bw == up, bw == down).flatten(1).all(1)
        if bool(same.any()):
            channel = (u[:, 2] * c).long().clamp_(max=c - 1)
            flip = torch.nn.functional.one_hot(channel, c).bool() & same.unsqueeze(1)
            sign = sign ^ flip
        new = torch.where(sign.unsqueeze(2), up, down)
        return xb.reshape(n, c, h * w).scatter(2, idx, new).view_as(xb)

    @staticmethod
    def _propose_l2(
        x: Tensor, xb: Tensor, eps: float, u: Tensor, s: int, bounds: tuple[float, float]
    ) -> Tensor:
        """Move the mass of a second square into a new bump on the first; rescale to ``eps``."""
        n, c, h, w = x.shape
        idx1 = _window_index(u[:, 0], u[:, 1], s, h, w)
        idx2 = _window_index(u[:, 2], u[:, 3], s, h, w)
        delta = (xb - x).reshape(n, c, h * w)
        both = torch.zeros(n, 1, h * w, dtype=torch.bool, device=x.device)
        both.scatter_(2, idx1.unsqueeze(1), True).scatter_(2, idx2.unsqueeze(1), True)
        mass = (delta * both).pow(2).sum(2)  # [n, c] squared norm on the two squares
        spare = (eps**2 - delta.pow(2).sum((1, 2))).clamp(min=0)  # [n]
        win1 = idx1.unsqueeze(1).expand(n, c, s * s)
        old = delta.gather(2, win1)
        pattern = l2_pattern(s, x.dtype, x.device)
        bump = torch.where((u[:, 4] < 0.5).view(n, 1, 1), pattern.t(), pattern).reshape(n, 1, -1)
        signs = torch.where(u[:, 5:] < 0.5, -1.0, 1.0).to(x).unsqueeze(2)
        new = bump * signs + old / (old.norm(dim=2, keepdim=True) + 1e-12)
        size = (spare.unsqueeze(1) / c + mass).sqrt().unsqueeze(2)
        new = new / (new.norm(dim=2, keepdim=True) + 1e-12) * size
        win2 = idx2.unsqueeze(1).expand(n, c, s * s)
        delta = delta.scatter(2, win2, 0.0).scatter_(2, win1, new).view_as(x)
        return (x + eps * _unit_l2(delta)).clamp(*bounds)


def _unit_l2(delta: Tensor) -> Tensor:
    """``delta`` scaled to unit l2 norm per sample (zero stays zero)."""
    n = delta.flatten(1).norm(dim=1).view(-1, *([1] * (delta.dim() - 1)))
    return delta / (n + 1e-12)
