"""The sealed attack interface: two kinds of attack behind one final ``__call__``.

In the style of Foolbox 3's ``attacks/base.py`` (``FixedEpsilonAttack`` vs
``MinimizationAttack``), every attack derives from one of two base classes:

- :class:`FixedBudgetAttack` (FGSM, PGD, APGD, suites): ``run(ctx, x, y, eps)`` maps still-robust
  samples and one budget to candidates. The sealed call runs the budgets in increasing order,
  each only on the samples no smaller budget broke (the balls are nested), and clips every
  candidate into the bounds and the ball. :meth:`FixedBudgetAttack.perturb` is the inner
  maximisation of adversarial training: the same ``run`` on every sample, no bookkeeping.
- :class:`MinimumNormAttack` (Carlini-Wagner, DeepFool): ``run(ctx, x, y)`` searches for each
  sample's smallest successful perturbation; the sealed call runs it once and thresholds the
  norms at every eps.

``Attack.__call__`` is ``typing.final`` and owns everything a user relies on: inputs, labels,
budgets and ids checked, the model guarded and restored, clean logits checked, outputs in the
bounds and inside the ball, success recomputed with a fresh forward pass, passes counted. A
subclass that defines ``__call__``, ``perturb`` or ``_evaluate`` is refused when it is created;
subclasses write ``run`` only. ``attack.minimum_norm`` is a read-only property of the kind.

Randomness. Every random number an attack draws is a pure function of (``attack.seed``, the
sample's id, the stream key) through :mod:`attacks.rng`, never of the batch: the sealed call
takes ``ids=`` (``[N]`` int64, default ``0..N-1``) and the :class:`AttackContext` gives ``run``
the draws of the rows it attacks (``ctx.uniform(rows, shape, key)``, ``ctx.normal``,
``ctx.randint``), keyed by the attack's name and the budget (set by the sealed call) and a key
naming the draw (e.g. ``("start", restart)``). A sample attacked alone, in a batch of 7 or of 500,
at any position, gets bitwise the same random starts and, up to the float noise of the model's
batched arithmetic, the same ``x_adv``; a sharded or resumed evaluation that passes the global
sample indices as ``ids`` equals a single run. Same seed and inputs give the same result; another
seed gives other draws. ``perturb`` draws a fresh seed from the global torch RNG per call (new
numbers every training step, reproducible under ``torch.manual_seed``).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, cast, final

import torch
from torch import Tensor

from attacks.context import AttackContext, model_guard
from attacks.registry import Registry
from attacks.result import AttackResult
from attacks.rng import draw_seed
from attacks.rows import take_rows
from attacks.threat import Norm, norm_of, project_and_clip, require_norm
from attacks.validation import (
    BOUNDS_TOL,
    EpsLike,
    check_bool,
    check_bounds,
    check_ids,
    check_inputs,
    check_logits,
    check_positive_int,
    is_scalar_eps,
    parse_eps,
)

Model = Callable[[Tensor], Tensor]
SEALED_METHODS = frozenset({"__call__", "perturb", "_evaluate"})


class Attack(ABC):
    """Common base of the two kinds of attack; subclass one of them, never this class.

    Args:
        norm: The threat model's norm, one of the class's ``norms`` (``linf`` or ``l2``
            unless the attack declares more, e.g. ``fmn``'s l1); others are refused.
        bounds: Valid input range ``(lo, hi)``; ``x`` must lie inside it.
        targeted: If True, ``__call__`` needs ``target=`` labels and succeeds when the model
            predicts them.
        seed: Seed of the attack's random draws; same seed and inputs give the same result.
        eval_mode: Put the model in eval mode during the attack (restored afterwards).
            Adversarial training may pass False to attack the model as it trains.

    """

    name: ClassVar[str] = "attack"
    norms: ClassVar[frozenset[Norm]] = frozenset({Norm.LINF, Norm.L2})

    def __init__(
        self,
        norm: str | Norm = Norm.LINF,
        *,
        bounds: tuple[float, float] = (0.0, 1.0),
        targeted: bool = False,
        seed: int = 0,
        eval_mode: bool = True,
    ) -> None:
        self.norm = require_norm(self.name, norm, self.norms)
        self.bounds = check_bounds(bounds)
        self.targeted = check_bool("targeted", targeted)
        self.seed = check_positive_int("seed", seed, minimum=0)
        self.eval_mode = check_bool("eval_mode", eval_mode)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse subclasses that override the sealed methods (outside this module)."""
        super().__init_subclass__(**kwargs)
        overridden = sorted(SEALED_METHODS & set(vars(cls)))
        if overridden and cls.__module__ != __name__:
            raise TypeError(
                f"{cls.__name__} overrides the sealed {', '.join(overridden)} of attacks.Attack; "
                "write run() instead (the base class owns validation, the eps loop, clipping "
                "and bookkeeping)"
            )

    @property
    @abstractmethod
    def minimum_norm(self) -> bool:
        """True for minimum-norm attacks (norms thresholded at each eps), False for fixed-budget."""

    def config(self) -> dict[str, Any]:
        """The attack's settings, for logging and baselines."""
        cfg: dict[str, Any] = {"name": self.name}
        for k, v in vars(self).items():
            if not k.startswith("_"):
                cfg[k] = v.value if isinstance(v, Norm) else v
        return cfg

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"

    @final
    def __call__(
        self,
        model: Model,
        x: Tensor,
        y: Tensor,
        *,
        eps: EpsLike = None,
        target: Tensor | None = None,
        ids: Tensor | None = None,
    ) -> AttackResult:
        """Attack ``model`` on ``(x, y)`` at one budget or a list of budgets.

        Args:
            model: A classifier taking inputs in ``bounds`` and returning logits ``[N, C]``.
            x: ``[N, ...]`` float inputs in ``bounds``.
            y: ``[N]`` true labels.
            eps: A budget or a list of budgets (in any order; the balls are nested, so a sample
                broken at a smaller eps is broken at every larger one). Optional for
                minimum-norm attacks.
            target: ``[N]`` target labels, required when the attack is targeted.
            ids: ``[N]`` non-negative int sample ids (default ``0..N-1``); every random draw of
                a sample is derived from (seed, id), so pass global indices when a data set is
                attacked in batches or shards.

        Returns:
            An :class:`AttackResult`.

        """
        start = time.perf_counter()
        eps_list = self._budgets(eps)
        x, y = _detach_inputs(x), _detach_inputs(y)
        y = check_inputs(x, y, self.bounds)
        labels = self._labels(x, y, target)
        ids = check_ids(_detach_inputs(ids), x.shape[0], x.device)
        with model_guard(model, self.eval_mode):
            ctx = AttackContext(
                model, self.norm, self.bounds, self.targeted, seed=self.seed, ids=ids, dtype=x.dtype
            )
            clean_logits = ctx.logits(x)
            check_logits(clean_logits, x.shape[0], [y, labels])
            clean_success = ctx.success(clean_logits, labels)
            result = self._evaluate(ctx, x, labels, clean_success, eps_list)
        result.clean_correct = clean_logits.argmax(1) == y
        result.details = ctx.details
        result.n_forward, result.n_backward = ctx.n_forward, ctx.n_backward
        result.wall_time = time.perf_counter() - start
        if eps is None or is_scalar_eps(eps):
            self._squeeze(result)
        return result

    def _labels(self, x: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
        """The labels the attack goal refers to: ``y``, or the checked targets."""
        if self.targeted:
            if target is None:
                raise ValueError(f"{self.name} is targeted: pass target= labels of shape [N]")
            return check_inputs(x, _detach_inputs(target), self.bounds, name="target")
        if target is not None:
            raise ValueError(
                f"{self.name} is untargeted; create it with targeted=True to use target="
            )
        return y

    @abstractmethod
    def _budgets(self, eps: EpsLike) -> list[float] | None:
        """The validated budgets of a call."""

    @abstractmethod
    def _evaluate(
        self,
        ctx: AttackContext,
        x: Tensor,
        labels: Tensor,
        clean_success: Tensor,
        eps_list: list[float] | None,
    ) -> AttackResult:
        """Attack every budget (implemented once per kind; sealed)."""

    @abstractmethod
    def _squeeze(self, result: AttackResult) -> None:
        """Drop the leading budget dimension of a result for a scalar (or no) eps."""


class FixedBudgetAttack(Attack):
    """An attack that looks for an adversarial example inside a given eps-ball.

    Subclasses implement :meth:`run`. See :class:`Attack` for the arguments.
    """

    @property
    def minimum_norm(self) -> bool:
        """False: budgets are given, each sample is attacked inside each ball."""
        return False

    @abstractmethod
    def run(self, ctx: AttackContext, x: Tensor, y: Tensor, eps: float) -> Tensor:
        """Return candidate adversarial inputs for a batch of samples.

        Args:
            ctx: Counted model access, norm, bounds and the rows' random draws.
            x: ``[n, ...]`` clean inputs.
            y: ``[n]`` true labels, or target labels for a targeted attack.
            eps: The budget (``> 0``).

        Returns:
            ``[n, ...]`` candidates; the caller clips them into the bounds and the ball and
            checks them with a fresh forward pass.

        """

    def _budgets(self, eps: EpsLike) -> list[float] | None:
        return parse_eps(eps)

    @final
    def _evaluate(
        self,
        ctx: AttackContext,
        x: Tensor,
        labels: Tensor,
        clean_success: Tensor,
        eps_list: list[float] | None,
    ) -> AttackResult:
        """Run ``run`` per eps in increasing order, only on samples not yet broken."""
        eps_list = list(eps_list or ())  # never empty here: _budgets requires eps
        ids, k = ctx.ids, len(eps_list)
        x_adv = x.unsqueeze(0).repeat(k, *([1] * x.dim()))
        success = torch.zeros(k, x.shape[0], dtype=torch.bool, device=x.device)
        current, broken = x.clone(), clean_success.clone()
        for i in sorted(range(k), key=lambda j: eps_list[j]):
            e = eps_list[i]
            idx = (~broken).nonzero().squeeze(1)
            if e > 0 and idx.numel() > 0:
                ctx.focus(ids[idx], (self.name, "eps", e))
                xs = take_rows(x, idx)
                cand = self.run(ctx, xs, labels[idx], e)
                cand = project_and_clip(xs, cand.detach().to(x.dtype), self.norm, e, self.bounds)
                current[idx] = cand
                broken[idx] = ctx.success(ctx.logits(cand), labels[idx])
            x_adv[i], success[i] = current, broken
        ctx.focus(ids, ())
        norms = norm_of((x_adv - x).flatten(0, 1), self.norm).view(k, -1)
        eps_t = torch.tensor(eps_list, dtype=x.dtype, device=x.device)
        return AttackResult(x_adv, success, norms, eps_t, clean_success)

    def _squeeze(self, result: AttackResult) -> None:
        result.x_adv, result.success = result.x_adv[0], result.success[0]
        result.eps, result.norms = result.eps[0], result.norms[0]

    @final
    def perturb(
        self,
        model: Model,
        x: Tensor,
        y: Tensor,
        eps: float,
        bounds: tuple[float, float] | None = None,
        *,
        ids: Tensor | None = None,
    ) -> Tensor:
        """The inner maximisation of adversarial training: ``run`` on every sample of ``(x, y)``.

        Unlike ``__call__``, no sample is skipped (clean-misclassified ones included) and no
        extra forward pass is spent on bookkeeping; early stopping is whatever ``run`` itself
        does. The model is guarded (eval mode if ``eval_mode``, parameters frozen, restored
        afterwards). The attack is untargeted: ``y`` are the true labels. The draws use a
        fresh seed from the global torch RNG on every call, so each training step gets new
        random starts and a run seeded with ``torch.manual_seed`` is reproducible.

        Args:
            model: The model being trained.
            x: ``[N, ...]`` inputs in ``bounds``.
            y: ``[N]`` labels.
            eps: The budget (one number ``>= 0``).
            bounds: The valid input range of ``x`` and of the result (default the attack's
                bounds). An attack created with wider bounds explores outside the input range
                during its steps (Wong et al.'s unclipped random start); the returned examples
                are always in ``bounds``.
            ids: ``[N]`` sample ids of the draws (default ``0..N-1``).

        Returns:
            ``[N, ...]`` adversarial examples inside the eps-ball and ``bounds``.

        Raises:
            TypeError: ``eps`` is not one number.
            ValueError: ``x`` outside ``bounds``, bad labels or ids, a negative eps.

        """
        if not is_scalar_eps(eps):
            raise TypeError(f"perturb takes one budget, got eps={eps!r}; call it once per eps")
        (e,) = cast(list[float], parse_eps(eps))
        bounds = self.bounds if bounds is None else check_bounds(bounds)
        x = _detach_inputs(x)
        y = check_inputs(x, _detach_inputs(y), bounds)
        ids = check_ids(_detach_inputs(ids), x.shape[0], x.device)
        scope = (self.name, "perturb", draw_seed(), "eps", e)
        with model_guard(model, self.eval_mode):
            ctx = AttackContext(
                model, self.norm, self.bounds, False, seed=self.seed, ids=ids, dtype=x.dtype
            )
            ctx.focus(ids, scope)
            x_adv = self.run(ctx, x, y, e)
        return project_and_clip(x, x_adv.detach().to(x.dtype), self.norm, e, bounds)


class MinimumNormAttack(Attack):
    """An attack that searches each sample's smallest successful perturbation.

    ``eps`` is optional in the call; ``res.norms`` holds the norms found (``inf`` where the
    attack failed) and ``res.success[k]`` is ``norms <= eps[k]``. Subclasses implement
    :meth:`run`. See :class:`Attack` for the arguments.
    """

    @property
    def minimum_norm(self) -> bool:
        """True: the attack runs once and its norms are thresholded at every eps."""
        return True

    @abstractmethod
    def run(self, ctx: AttackContext, x: Tensor, y: Tensor) -> Tensor:
        """Return each sample's smallest successful adversarial input found (else anything).

        Args:
            ctx: Counted model access, norm, bounds and the rows' random draws.
            x: ``[n, ...]`` clean inputs the model gets right.
            y: ``[n]`` true labels, or target labels for a targeted attack.

        Returns:
            ``[n, ...]`` candidates; the caller clips them into the bounds, checks them with a
            fresh forward pass and keeps the clean input where they fail.

        """

    def _budgets(self, eps: EpsLike) -> list[float] | None:
        return parse_eps(eps, allow_none=True)

    @final
    def _evaluate(
        self,
        ctx: AttackContext,
        x: Tensor,
        labels: Tensor,
        clean_success: Tensor,
        eps_list: list[float] | None,
    ) -> AttackResult:
        """Run ``run`` once and threshold the per-sample minimal norms at every eps."""
        best = x.clone()
        idx = (~clean_success).nonzero().squeeze(1)
        found = clean_success.clone()
        if idx.numel() > 0:
            ids = ctx.ids
            ctx.focus(ids[idx], (self.name, "run"))
            cand = self.run(ctx, x[idx], labels[idx]).detach().to(x.dtype)
            ctx.focus(ids, ())
            cand = cand.clamp(*self.bounds)
            hit = ctx.success(ctx.logits(cand), labels[idx])
            best[idx] = torch.where(_expand(hit, cand), cand, x[idx])
            found[idx] = hit
        norms = norm_of(best - x, self.norm)
        norms = torch.where(found, norms, torch.full_like(norms, float("inf")))
        eps_values = eps_list if eps_list is not None else [float("inf")]
        eps_t = torch.tensor(eps_values, dtype=x.dtype, device=x.device)
        success = found.unsqueeze(0) & (norms.unsqueeze(0) <= eps_t.unsqueeze(1) + BOUNDS_TOL)
        x_adv = torch.where(_expand(success, best.unsqueeze(0)), best.unsqueeze(0), x.unsqueeze(0))
        return AttackResult(x_adv, success, norms, eps_t, clean_success)

    def _squeeze(self, result: AttackResult) -> None:
        result.x_adv, result.success = result.x_adv[0], result.success[0]
        result.eps = result.eps[0]


ATTACKS: Registry[Attack] = Registry("attack")


def register_attack(name: str, **metadata: Any) -> Callable[[type[Attack]], type[Attack]]:
    """Class decorator: register an :class:`Attack` subclass under ``name`` and set its ``name``.

    ``metadata`` is stored with the entry (see :meth:`attacks.registry.Registry.register`).
    """

    def decorator(cls: type[Attack]) -> type[Attack]:
        cls.name = name
        ATTACKS.register(name, **metadata)(cls)
        return cls

    return decorator


def _expand(mask: Tensor, ref: Tensor) -> Tensor:
    """Reshape a mask so it broadcasts over the trailing dimensions of ``ref``."""
    return mask.view(*mask.shape, *([1] * (ref.dim() - mask.dim())))


def _detach_inputs(t: Any) -> Any:
    """Detach tensors and turn inference-mode tensors into normal ones (attacks need autograd)."""
    if not isinstance(t, Tensor):
        return t
    if t.is_inference():
        with torch.inference_mode(False):
            return t.clone()
    return t.detach()


__all__ = [
    "ATTACKS",
    "Attack",
    "AttackContext",
    "AttackResult",
    "FixedBudgetAttack",
    "MinimumNormAttack",
    "check_inputs",
    "check_logits",
    "model_guard",
    "parse_eps",
    "register_attack",
]
