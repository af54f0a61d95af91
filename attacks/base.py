"""The sealed attack interface: ``Attack.__call__`` owns validation, the eps loop and bookkeeping.

Subclasses implement only :meth:`Attack.run`, which maps a batch of still-robust samples and one
budget to candidate adversarial inputs. Everything a user relies on (inputs checked, outputs in
bounds and inside the ball, nested eps semantics, the model restored, determinism, cost
accounting) lives here once, in the style of Foolbox 3's ``attacks/base.py``.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from attacks.losses import misclassified
from attacks.registry import Registry
from attacks.threat import Norm, norm_of, project_and_clip
from attacks.validation import looks_like_probabilities

EpsLike = float | Sequence[float] | Tensor | None
BOUNDS_TOL = 1e-6


@dataclass
class AttackResult:
    """What an attack returns.

    With a scalar ``eps`` the leading ``[K]`` dimension below is absent.

    Attributes:
        x_adv: ``[K, N, ...]`` adversarial inputs, in bounds and inside each eps-ball.
        success: ``[K, N]`` bool; True where ``x_adv`` fools the model (a sample that is
            misclassified clean counts as a success at every eps).
        norms: ``[K, N]`` perturbation norms of ``x_adv - x``; for minimum-norm attacks ``[N]``,
            the smallest successful perturbation found (``inf`` where none was found).
        eps: ``[K]`` the budgets, in the order given.
        clean_correct: ``[N]`` bool, the model's clean correctness (untargeted) on ``x``.
        n_forward: per-sample forward passes spent (a batch of 100 counts 100).
        n_backward: per-sample backward passes spent.
        wall_time: seconds.
        details: attack-specific extras (e.g. which suite member broke each sample).

    """

    x_adv: Tensor
    success: Tensor
    norms: Tensor
    eps: Tensor
    clean_correct: Tensor
    n_forward: int = 0
    n_backward: int = 0
    wall_time: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def robust_accuracy(self) -> Tensor:
        """Fraction of samples not fooled: a scalar tensor, or ``[K]`` for an eps list."""
        return (~self.success).float().mean(dim=-1)


class AttackContext:
    """The model as an attack sees it: counted forward and forward+backward passes.

    Args:
        model: The classifier (returns logits).
        norm: The threat model's norm.
        bounds: Valid input range.
        targeted: Whether labels passed to :meth:`success` are targets.
        generator: The seeded random generator every random draw must use.

    """

    def __init__(
        self,
        model: Callable[[Tensor], Tensor],
        norm: Norm,
        bounds: tuple[float, float],
        targeted: bool,
        generator: torch.Generator,
    ) -> None:
        self.model = model
        self.norm = norm
        self.bounds = bounds
        self.targeted = targeted
        self.generator = generator
        self.n_forward = 0
        self.n_backward = 0
        self.details: dict[str, Any] = {}

    def logits(self, x: Tensor) -> Tensor:
        """Forward pass without gradients."""
        self.n_forward += x.shape[0]
        with torch.no_grad():
            return self.model(x)

    def loss_and_grad(
        self, x: Tensor, loss_fn: Callable[[Tensor], Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One forward+backward: per-sample loss ``[n]``, its input gradient and the logits."""
        self.n_forward += x.shape[0]
        self.n_backward += x.shape[0]
        x = x.detach().requires_grad_(True)
        logits = self.model(x)
        loss = loss_fn(logits)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        return loss.detach(), grad.detach(), logits.detach()

    def success(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Boolean ``[n]``: the attack goal holds for these logits."""
        return misclassified(logits, labels, self.targeted)


@contextlib.contextmanager
def model_guard(model: nn.Module, eval_mode: bool = True) -> Iterator[None]:
    """Run the attack on a frozen (and by default eval-mode) model; restore it afterwards.

    Parameters get ``requires_grad=False`` during the attack, so no weight gradients are computed,
    and every module's ``training`` flag and every parameter's ``requires_grad`` are restored on
    exit, even when the attack raises.
    """
    if not isinstance(model, nn.Module):
        with torch.enable_grad():
            yield
        return
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        if eval_mode:
            model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        with torch.enable_grad():
            yield
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)


def parse_eps(eps: EpsLike, *, allow_none: bool = False) -> list[float] | None:
    """Validate ``eps`` (a number, a sequence or a 0-/1-d tensor) into a list of floats.

    Raises:
        TypeError: Non-numeric eps (strings, booleans, nested lists).
        ValueError: NaN, infinite or negative eps, an empty list, or a missing eps.

    """
    if eps is None:
        if allow_none:
            return None
        raise ValueError(
            "eps is required for this attack: pass eps=0.3 or a list such as eps=[0.1, 0.3]"
        )
    if isinstance(eps, Tensor):
        if eps.dim() > 1:
            raise ValueError(f"eps tensor must be 0-d or 1-d, got shape {tuple(eps.shape)}")
        values: list[Any] = eps.flatten().tolist()
    elif isinstance(eps, numbers.Real) and not isinstance(eps, bool):
        values = [eps]
    elif isinstance(eps, Sequence) and not isinstance(eps, str | bytes):
        values = list(eps)
    else:
        raise TypeError(f"eps must be a number or a list of numbers, got {type(eps).__name__}")
    if not values:
        raise ValueError("eps list is empty; pass at least one budget")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"eps values must be numbers, got {v!r} ({type(v).__name__})")
        v = float(v)
        if math.isnan(v) or math.isinf(v):
            raise ValueError(f"eps must be finite, got {v}")
        if v < 0:
            raise ValueError(f"eps must be >= 0, got {v}")
        out.append(v)
    return out


def check_inputs(x: Tensor, y: Tensor, bounds: tuple[float, float], name: str = "y") -> Tensor:
    """Validate ``x`` and labels ``y``; return ``y`` as int64 on ``x``'s device.

    Raises:
        TypeError: Non-tensor or non-float ``x``; non-integer labels.
        ValueError: Wrong shapes, non-finite ``x`` or ``x`` outside ``bounds``.

    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"x must be a float tensor in {bounds}, got dtype {x.dtype}; divide uint8 images by 255"
        )
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch [N, ...], got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or infinite values")
    lo, hi = bounds
    x_min, x_max = float(x.min()), float(x.max())
    if x_min < lo - BOUNDS_TOL or x_max > hi + BOUNDS_TOL:
        raise ValueError(
            f"x has values in [{x_min:.4g}, {x_max:.4g}], outside the bounds ({lo}, {hi}). "
            "Pass unnormalised inputs in bounds and put normalisation inside the model "
            "(or set bounds= on the attack)."
        )
    if not isinstance(y, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(y).__name__}")
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"{name} must have shape [N] = [{x.shape[0]}], got {tuple(y.shape)}")
    return y.to(device=x.device, dtype=torch.long)


def check_logits(logits: Tensor, n: int, labels: Sequence[Tensor]) -> None:
    """Check the model's output is ``[N, C]`` finite logits and every label is a valid class.

    Raises:
        ValueError: Wrong shape, NaN/inf outputs, probabilities instead of logits, or labels
            outside ``[0, C)``.

    """
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != n:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"the model must return logits of shape [N, C] = [{n}, C], got {shape}")
    c = logits.shape[1]
    if c < 2:
        raise ValueError(f"the model must return at least 2 class logits, got {c}")
    if not torch.isfinite(logits).all():
        raise ValueError("the model returned NaN or infinite logits for the clean inputs")
    if looks_like_probabilities(logits):
        raise ValueError(
            "the model's outputs are non-negative and sum to 1 per row: they look like "
            "probabilities. Return logits (remove the final softmax)."
        )
    for y in labels:
        if bool((y < 0).any()) or bool((y >= c).any()):
            raise ValueError(
                f"labels must lie in [0, {c}), got values in [{int(y.min())}, {int(y.max())}]"
            )


class Attack(ABC):
    """Base class of every attack.

    Args:
        norm: The threat model's norm (``linf`` or ``l2``).
        bounds: Valid input range ``(lo, hi)``; ``x`` must lie inside it.
        targeted: If True, ``__call__`` needs ``target=`` labels and succeeds when the model
            predicts them.
        seed: Seed of the attack's random generator; same seed and inputs give the same result.
        eval_mode: Put the model in eval mode during the attack (restored afterwards).
            Adversarial training may pass False to attack the model as it trains.

    """

    name: ClassVar[str] = "attack"
    minimum_norm: ClassVar[bool] = False

    def __init__(
        self,
        norm: str | Norm = Norm.LINF,
        *,
        bounds: tuple[float, float] = (0.0, 1.0),
        targeted: bool = False,
        seed: int = 0,
        eval_mode: bool = True,
    ) -> None:
        self.norm = Norm.parse(norm)
        lo, hi = (float(b) for b in bounds)
        if not lo < hi:
            raise ValueError(f"bounds must satisfy lo < hi, got {bounds}")
        self.bounds = (lo, hi)
        self.targeted = bool(targeted)
        self.seed = int(seed)
        self.eval_mode = bool(eval_mode)

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

    @abstractmethod
    def run(self, ctx: AttackContext, x: Tensor, y: Tensor, eps: float | None) -> Tensor:
        """Return candidate adversarial inputs for a batch of samples the model gets right.

        Args:
            ctx: Counted model access, norm, bounds and the seeded generator.
            x: ``[n, ...]`` clean inputs.
            y: ``[n]`` true labels, or target labels for a targeted attack.
            eps: The budget (``None`` for minimum-norm attacks, which search for it).

        Returns:
            ``[n, ...]`` candidates; the caller clips them into bounds and the ball and checks
            them with a fresh forward pass.

        """

    def __call__(
        self,
        model: Callable[[Tensor], Tensor],
        x: Tensor,
        y: Tensor,
        *,
        eps: EpsLike = None,
        target: Tensor | None = None,
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

        Returns:
            An :class:`AttackResult`.

        """
        start = time.perf_counter()
        eps_list = parse_eps(eps, allow_none=self.minimum_norm)
        x, y = _detach_inputs(x), _detach_inputs(y)
        y = check_inputs(x, y, self.bounds)
        labels = y
        if self.targeted:
            if target is None:
                raise ValueError(f"{self.name} is targeted: pass target= labels of shape [N]")
            labels = check_inputs(x, _detach_inputs(target), self.bounds, name="target")
        elif target is not None:
            raise ValueError(
                f"{self.name} is untargeted; create it with targeted=True to use target="
            )
        generator = torch.Generator(device=x.device).manual_seed(self.seed)
        with model_guard(model, self.eval_mode):
            ctx = AttackContext(model, self.norm, self.bounds, self.targeted, generator)
            clean_logits = ctx.logits(x)
            check_logits(clean_logits, x.shape[0], [y, labels])
            clean_correct = clean_logits.argmax(1) == y
            clean_success = ctx.success(clean_logits, labels)
            if eps_list is None or self.minimum_norm:
                result = self._minimum_norm(ctx, x, labels, clean_success, eps_list)
            else:
                result = self._fixed_budget(ctx, x, labels, clean_success, eps_list)
        result.clean_correct = clean_correct
        result.details = ctx.details
        result.n_forward, result.n_backward = ctx.n_forward, ctx.n_backward
        result.wall_time = time.perf_counter() - start
        if eps is None or _is_scalar(eps):
            result.x_adv, result.success = result.x_adv[0], result.success[0]
            result.eps = result.eps[0]
            if not self.minimum_norm:
                result.norms = result.norms[0]
        return result

    def _fixed_budget(
        self,
        ctx: AttackContext,
        x: Tensor,
        labels: Tensor,
        clean_success: Tensor,
        eps_list: list[float],
    ) -> AttackResult:
        """Run ``run`` per eps in increasing order, only on samples not yet broken."""
        k = len(eps_list)
        x_adv = x.unsqueeze(0).repeat(k, *([1] * x.dim()))
        success = torch.zeros(k, x.shape[0], dtype=torch.bool, device=x.device)
        current, broken = x.clone(), clean_success.clone()
        for i in sorted(range(k), key=lambda j: eps_list[j]):
            e = eps_list[i]
            idx = (~broken).nonzero().squeeze(1)
            if e > 0 and idx.numel() > 0:
                cand = self.run(ctx, x[idx], labels[idx], e)
                cand = project_and_clip(
                    x[idx], cand.detach().to(x.dtype), self.norm, e, self.bounds
                )
                hit = ctx.success(ctx.logits(cand), labels[idx])
                current[idx] = cand
                broken[idx] = hit
            x_adv[i], success[i] = current, broken
        norms = norm_of((x_adv - x).flatten(0, 1), self.norm).view(k, -1)
        eps_t = torch.tensor(eps_list, dtype=x.dtype, device=x.device)
        return AttackResult(x_adv, success, norms, eps_t, clean_success)

    def _minimum_norm(
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
            cand = self.run(ctx, x[idx], labels[idx], None).detach().to(x.dtype)
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


ATTACKS: Registry[Attack] = Registry("attack")


def register_attack(name: str) -> Callable[[type[Attack]], type[Attack]]:
    """Class decorator: register an :class:`Attack` subclass under ``name`` and set its ``name``."""

    def decorator(cls: type[Attack]) -> type[Attack]:
        cls.name = name
        ATTACKS.register(name)(cls)
        return cls

    return decorator


def _expand(mask: Tensor, ref: Tensor) -> Tensor:
    """Reshape a mask so it broadcasts over the trailing dimensions of ``ref``."""
    return mask.view(*mask.shape, *([1] * (ref.dim() - mask.dim())))


def _is_scalar(eps: EpsLike) -> bool:
    if isinstance(eps, Tensor):
        return eps.dim() == 0
    return isinstance(eps, numbers.Real)


def _detach_inputs(t: Any) -> Any:
    """Detach tensors and turn inference-mode tensors into normal ones (attacks need autograd)."""
    if not isinstance(t, Tensor):
        return t
    if t.is_inference():
        with torch.inference_mode(False):
            return t.clone()
    return t.detach()
