"""How one attack covers the eps grid of a robustness curve on one batch: the strategies.

A fixed-budget attack must answer at every eps of a curve. :class:`Nested` is the schedule of
the sealed call (``attack(model, x, y, eps=grid)``): eps in increasing order, each only on the
samples no smaller eps broke. It attacks a sample at every eps up to the one that breaks it,
so on a robust model, where most samples survive most of the grid, it costs nearly as much as
attacking every eps from scratch.

:class:`Descent` walks the grid the other way and pays the full attack about once per sample:

1. The attack runs from scratch at the largest eps. A sample it fails to break there is
   counted robust at every eps.
2. Going down the grid, a sample broken at ``eps_{j+1}`` is first *screened* at ``eps_j``: its
   adversarial example at ``eps_{j+1}``, projected into the ``eps_j``-ball, is checked with one
   forward pass and, if it no longer fools the model, warm-started for ``screen_steps`` steps
   of projected gradient ascent (early stop). A success is an adversarial example inside the
   smaller ball: the sample is broken at ``eps_j``.
3. Where the screen fails, the attack runs from scratch at ``eps_j``, with the samples' ids,
   so its verdict is exactly that of the attack alone at that eps (same random draws). If it
   breaks the sample the walk goes on down; if not, the sample is robust at ``eps_j`` and,
   as at the largest eps, counted robust at every smaller eps.

Every "broken" is backed by an adversarial example inside that ball, and a sample broken at
``eps_i`` is broken at every larger eps (the nested-ball rule holds by construction). Every
"robust" is a failure of the full attack from scratch at that eps or at a larger one. The one
inference, that an attack failing in a larger ball would fail in a smaller one, is about the
attack, not the model: where the attack is noisy (its random start at ``eps_i`` finds an
example that the one at ``eps_j > eps_i`` misses) the curve may count such a sample robust at
``eps_i``. The warm-started screens, which start next to the decision boundary, break samples
that random starts miss and pull the other way; ``benchmarks/curves.py`` checks the curve per
eps against the attack run from scratch at every eps.

:class:`Auto` (the default of :func:`robustbench_local.robustness_curve`) uses the descent for
iterative attacks (at least ``min_steps`` gradient steps per eps) and the nested schedule for
single-step ones, where a screen would cost as much as the attack. Minimum-norm attacks need
no strategy: one run gives the whole curve (the sealed call thresholds its norms at every
eps), and every strategy hands them to it.

Randomness: the from-scratch runs are the attack's own sealed calls with the samples' ids and
the screens are deterministic, so a sample's curve does not depend on its batch.

References:
    Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018
    (projected gradient ascent, used by the screens).
    Carlini et al., "On Evaluating Adversarial Robustness", arXiv:1902.06705, 2019 (robustness
    curves and the nested-ball rule).
"""

from __future__ import annotations

import itertools
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

import attacks as atk_lib
from attacks.context import AttackContext, model_guard
from attacks.losses import get_loss
from attacks.registry import Registry
from attacks.result import AttackResult
from attacks.rows import row_index, take_rows
from attacks.threat import norm_of, normalize_gradient, project_and_clip
from attacks.validation import check_ids, check_inputs, check_number, check_positive_int

Model = Callable[[Tensor], Tensor]


class CurveStrategy(ABC):
    """How one attack covers the eps grid of a curve on one batch.

    Subclasses implement :meth:`sweep`; :meth:`__call__` hands minimum-norm attacks and
    one-eps grids to the attack's own sealed call, which is already optimal for them.
    """

    name: ClassVar[str] = "strategy"

    def __call__(
        self,
        attack: atk_lib.Attack,
        model: Model,
        x: Tensor,
        y: Tensor,
        eps: Sequence[float],
        ids: Tensor | None = None,
    ) -> AttackResult:
        """Attack ``(x, y)`` at every eps of the strictly increasing grid ``eps``.

        Args:
            attack: An untargeted attack.
            model: The classifier.
            x: ``[N, ...]`` inputs in the attack's bounds.
            y: ``[N]`` labels.
            eps: The grid, strictly increasing.
            ids: ``[N]`` the samples' ids (their random draws derive from them; default
                ``0..N-1``).

        Returns:
            An :class:`attacks.AttackResult` with ``success [K, N]`` (nested: broken at
            ``eps_i`` implies broken at every larger eps) and the cost of the whole sweep.

        Raises:
            ValueError: A targeted attack (curves are untargeted), or a grid that is not
                strictly increasing.

        """
        grid = [float(e) for e in eps]
        if attack.targeted:
            raise ValueError(f"{attack.name} is targeted; curves need untargeted attacks")
        if any(b <= a for a, b in itertools.pairwise(grid)):
            raise ValueError(f"the eps grid must be strictly increasing, got {grid}")
        if attack.minimum_norm or len(grid) < 2:
            return attack(model, x, y, eps=grid, ids=ids)
        return self.sweep(attack, model, x, y, grid, ids)

    @abstractmethod
    def sweep(
        self,
        attack: atk_lib.Attack,
        model: Model,
        x: Tensor,
        y: Tensor,
        grid: list[float],
        ids: Tensor | None,
    ) -> AttackResult:
        """Run a fixed-budget attack over a grid of at least two eps."""

    def config(self) -> dict[str, Any]:
        """The strategy's settings, for logging."""
        public = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return {"name": self.name, **public}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


STRATEGIES: Registry[CurveStrategy] = Registry("curve strategy")


def register_strategy(name: str) -> Callable[[type[CurveStrategy]], type[CurveStrategy]]:
    """Class decorator: register a :class:`CurveStrategy` under ``name`` and set its name."""

    def decorator(cls: type[CurveStrategy]) -> type[CurveStrategy]:
        cls.name = name
        STRATEGIES.register(name)(cls)
        return cls

    return decorator


def get_strategy(spec: str | CurveStrategy, **kwargs: Any) -> CurveStrategy:
    """A strategy from its registered name (``"auto"``, ``"nested"``, ``"descent"``) or itself.

    Raises:
        ValueError: An unknown name (the message lists the known ones).
        TypeError: Neither a name nor a :class:`CurveStrategy`.
    """
    if isinstance(spec, CurveStrategy):
        return spec
    if not isinstance(spec, str):
        raise TypeError(
            f"strategy must be a name ({', '.join(STRATEGIES.names())}) or a CurveStrategy, "
            f"got {type(spec).__name__}"
        )
    return STRATEGIES.create(spec, **kwargs)


@register_strategy("nested")
class Nested(CurveStrategy):
    """The sealed call's schedule: eps in increasing order, each on the samples still robust."""

    def sweep(
        self,
        attack: atk_lib.Attack,
        model: Model,
        x: Tensor,
        y: Tensor,
        grid: list[float],
        ids: Tensor | None,
    ) -> AttackResult:
        """``attack(model, x, y, eps=grid, ids=ids)``."""
        return attack(model, x, y, eps=grid, ids=ids)


@register_strategy("descent")
class Descent(CurveStrategy):
    """Largest eps first, then down the grid with warm-started screens (see the module doc).

    Args:
        screen_steps: Gradient steps of each warm-started screen (default 3); 0 keeps only
            the one-forward check of the projected example.
        screen_step: Screen step size as a fraction of eps (default 0.15).
        screen_loss: Loss the screens ascend (``"ce"``, default, or ``"cw"``).

    """

    def __init__(
        self, *, screen_steps: int = 3, screen_step: float = 0.15, screen_loss: str = "ce"
    ) -> None:
        self.screen_steps = check_positive_int("screen_steps", screen_steps, minimum=0)
        self.screen_step = check_number("screen_step", screen_step, low_open=True)
        get_loss(screen_loss)
        self.screen_loss = screen_loss

    def sweep(
        self,
        attack: atk_lib.Attack,
        model: Model,
        x: Tensor,
        y: Tensor,
        grid: list[float],
        ids: Tensor | None,
    ) -> AttackResult:
        """Walk the grid from the largest eps down (see the module docstring)."""
        start = time.perf_counter()
        with model_guard(model, attack.eval_mode):
            walk = _Walk(attack, model, x, y, grid, ids)
            for j in reversed(range(len(grid))):
                rows = walk.pending()
                if rows.numel() == 0:
                    break
                if j < len(grid) - 1:
                    hit, cand = self._screen(walk, rows, j)
                    walk.mark_broken(j, rows[hit], cand[hit])
                    rows = rows[~hit]
                if rows.numel() > 0:
                    walk.from_scratch(j, rows)
        return walk.result(time.perf_counter() - start, self.name)

    def _screen(self, walk: _Walk, rows: Tensor, j: int) -> tuple[Tensor, Tensor]:
        """Check, then climb from, the rows' examples at ``grid[j + 1]`` projected to ``j``."""
        ctx, eps = walk.ctx, walk.grid[j]
        x, y = walk.x[rows], walk.y[rows]
        out = project_and_clip(x, walk.x_adv[j + 1, rows], ctx.norm, eps, ctx.bounds)
        hit = ctx.success(ctx.logits(out), y)
        walk.count("projected", rows.numel(), int(hit.sum()), rows.numel())
        todo = (~hit).nonzero().squeeze(1)
        if self.screen_steps > 0 and todo.numel() > 0:
            before = ctx.n_forward + ctx.n_backward
            found, adv = self._climb(ctx, x[todo], y[todo], out[todo], eps)
            hit[todo[found]] = True
            out[todo[found]] = adv[found]
            passes = ctx.n_forward + ctx.n_backward - before
            walk.count("climbed", todo.numel(), int(found.sum()), passes)
        return hit, out

    def _climb(
        self, ctx: AttackContext, x: Tensor, y: Tensor, start: Tensor, eps: float
    ) -> tuple[Tensor, Tensor]:
        """``screen_steps`` ascent steps from ``start`` (not adversarial), early stop per row.

        Each step's success is read from the logits of the next gradient call, the last one's
        from one forward pass.
        """
        loss_fn = get_loss(self.screen_loss)
        alpha = self.screen_step * eps
        hit = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        out, xa = start.clone(), start
        active = torch.arange(x.shape[0], device=x.device)
        for step in range(self.screen_steps):
            ya = y[active]
            _, grad, logits = ctx.loss_and_grad(xa, lambda z, ya=ya: loss_fn(z, ya))
            if step > 0:  # the start was checked by the caller
                fooled = ctx.success(logits, ya)
                out[active[fooled]], hit[active[fooled]] = xa[fooled], True
                keep = row_index(~fooled)
                active, xa, grad = (take_rows(t, keep) for t in (active, xa, grad))
                if active.numel() == 0:
                    return hit, out
            moved = xa + alpha * normalize_gradient(grad, ctx.norm)
            xa = project_and_clip(take_rows(x, active), moved, ctx.norm, eps, ctx.bounds)
        fooled = ctx.success(ctx.logits(xa), y[active])
        out[active[fooled]], hit[active[fooled]] = xa[fooled], True
        return hit, out


@register_strategy("auto")
class Auto(CurveStrategy):
    """:class:`Descent` for iterative attacks, :class:`Nested` for single-step ones.

    Args:
        min_steps: Gradient steps per eps (``steps * restarts``, summed over a suite's
            members) from which the descent is used (default 10).
        **kwargs: Settings of the :class:`Descent`.

    """

    def __init__(self, *, min_steps: int = 10, **kwargs: Any) -> None:
        self.min_steps = check_positive_int("min_steps", min_steps)
        self._descent, self._nested = Descent(**kwargs), Nested()

    def pick(self, attack: atk_lib.Attack) -> CurveStrategy:
        """The strategy used for ``attack``."""
        return self._descent if attack_steps(attack) >= self.min_steps else self._nested

    def sweep(
        self,
        attack: atk_lib.Attack,
        model: Model,
        x: Tensor,
        y: Tensor,
        grid: list[float],
        ids: Tensor | None,
    ) -> AttackResult:
        """Delegate to :meth:`pick`'s choice."""
        return self.pick(attack).sweep(attack, model, x, y, grid, ids)


def attack_steps(attack: atk_lib.Attack) -> int:
    """Gradient steps one run of ``attack`` may take per eps (0 if it does not say)."""
    members = getattr(attack, "members", None)
    if isinstance(members, list):
        return sum(attack_steps(m) for m in members)
    steps = getattr(attack, "steps", 0)
    restarts = getattr(attack, "restarts", 1)
    if not isinstance(steps, int) or not isinstance(restarts, int):
        return 0
    return steps * max(restarts, 1)


class _Walk:
    """One batch's walk down the grid: per eps, the samples broken and their examples."""

    def __init__(
        self,
        attack: atk_lib.Attack,
        model: Model,
        x: Tensor,
        y: Tensor,
        grid: list[float],
        ids: Tensor | None,
    ) -> None:
        x = x.detach().clone() if x.is_inference() else x.detach()
        y = check_inputs(x, y.detach().clone() if y.is_inference() else y, attack.bounds)
        self.ids = check_ids(ids, x.shape[0], x.device)
        self.attack, self.model, self.x, self.y, self.grid = attack, model, x, y, grid
        self.ctx = AttackContext(
            model, attack.norm, attack.bounds, False, seed=attack.seed, ids=self.ids, dtype=x.dtype
        )
        self.clean_correct = self.ctx.logits(x).argmax(1) == y
        k = len(grid)
        self.x_adv = x.unsqueeze(0).repeat(k, *([1] * x.dim()))
        self.broken = (~self.clean_correct).unsqueeze(0).repeat(k, 1)
        self.done = ~self.clean_correct
        self.n_forward, self.n_backward = 0, 0
        self.counts: dict[str, list[int]] = {}  # stage -> [tried, broke, passes]

    def count(self, stage: str, tried: int, broke: int, passes: int) -> None:
        """Add ``tried`` samples, the ``broke`` broken at ``stage`` and the passes it took."""
        c = self.counts.setdefault(stage, [0, 0, 0])
        c[0], c[1], c[2] = c[0] + tried, c[1] + broke, c[2] + passes

    def pending(self) -> Tensor:
        """Samples broken at every eps walked so far (not yet found robust)."""
        return (~self.done).nonzero().squeeze(1)

    def mark_broken(self, j: int, rows: Tensor, x_adv: Tensor) -> None:
        """Record adversarial examples inside the ``grid[j]``-ball."""
        self.x_adv[j, rows] = x_adv
        self.broken[j, rows] = True

    def from_scratch(self, j: int, rows: Tensor) -> None:
        """The attack's own sealed call at ``grid[j]``; the rows it fails on are done."""
        res = self.attack(
            self.model, self.x[rows], self.y[rows], eps=self.grid[j], ids=self.ids[rows]
        )
        self.n_forward += res.n_forward
        self.n_backward += res.n_backward
        self.x_adv[j, rows] = res.x_adv
        self.broken[j, rows] = res.success
        self.done[rows[~res.success]] = True
        stage = "from_scratch" if j < len(self.grid) - 1 else "largest_eps"
        self.count(stage, rows.numel(), int(res.success.sum()), res.n_forward + res.n_backward)

    def result(self, wall_time: float, name: str) -> AttackResult:
        """The sweep as one :class:`AttackResult` (robust below a sample's robust eps: ``x``)."""
        k = len(self.grid)
        norms = norm_of((self.x_adv - self.x).flatten(0, 1), self.attack.norm).view(k, -1)
        eps_t = torch.tensor(self.grid, dtype=self.x.dtype, device=self.x.device)
        res = AttackResult(self.x_adv, self.broken, norms, eps_t, ~self.clean_correct)
        res.clean_correct = self.clean_correct
        res.n_forward = self.n_forward + self.ctx.n_forward
        res.n_backward = self.n_backward + self.ctx.n_backward
        res.wall_time = wall_time
        res.details = {"strategy": name, "stages": {k: tuple(v) for k, v in self.counts.items()}}
        return res


__all__ = [
    "STRATEGIES",
    "Auto",
    "CurveStrategy",
    "Descent",
    "Nested",
    "attack_steps",
    "get_strategy",
    "register_strategy",
]
