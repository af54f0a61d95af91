"""Health checks for robustness evaluations: a preflight on the model and gradient-masking checks.

:func:`preflight` runs before any attack and catches what makes an evaluation meaningless or
unreliable: inputs outside the bounds, probabilities instead of logits, a model left in training
mode, outputs that change between two identical forward passes or with the batch size.
:func:`masking_checks` runs after a robustness curve and automates the checklist of Carlini et
al. (2019): accuracy falls monotonically with eps and reaches chance at a huge eps, iterative
attacks beat single-step ones, a step-size-free attack (APGD) does not beat the fixed-step PGD
by a wide margin, more steps and restarts do not change the result, and input gradients are
neither zero nor NaN. Every check returns a :class:`Flag` that says what failed, what it means
and what to do. The extra attack work is small: at most ``max_samples`` samples, a few eps, few
steps.

Example:
    >>> flags = preflight(model, x, y, bounds=(0.0, 1.0))
    >>> [f.name for f in flags if not f.ok]
    []

References:
    Carlini et al., "On Evaluating Adversarial Robustness", arXiv:1902.06705, 2019.
    Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018.
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import attacks as atk_lib
from attacks.losses import cw_margin
from attacks.validation import looks_like_probabilities
from robustbench_local.health import (
    ADAPTIVE_SUFFIX,
    GRADIENT_MASKING_FLAGS,
    NONDETERMINISM_FLAGS,
    PREFLIGHT_FLAGS,
    Flag,
    failed,
    passed,
    raise_on_errors,
    summarize,
)

if TYPE_CHECKING:  # the curve imports the checks; they only read it
    from robustbench_local.evaluate import Curve

logger = logging.getLogger(__name__)

# Layers whose forward pass depends on ``training`` (random or batch-statistics based).
_MODE_DEPENDENT = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)
_PREFLIGHT_SAMPLES = 128


# ============================================================================== preflight


@contextlib.contextmanager
def _frozen_buffers(model: nn.Module) -> Iterator[None]:
    """Restore every buffer afterwards (a train-mode BatchNorm forward updates its statistics)."""
    saved = (
        [(b, b.detach().clone()) for b in model.buffers()] if isinstance(model, nn.Module) else []
    )
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


def _forward(model: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x)


def _is_random(model: nn.Module) -> bool:
    return bool(getattr(model, "random", False))


def preflight(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> list[Flag]:
    """Check that a model and data can be meaningfully attacked, before any attack runs.

    The model is used as given (its training mode is not changed) and left exactly as it came:
    buffers such as BatchNorm running statistics are restored.

    Args:
        model: The classifier to evaluate.
        x: ``[N, ...]`` inputs (at most 128 are forwarded).
        y: ``[N]`` integer labels.
        bounds: The valid input range of the attacks.

    Returns:
        Flags named ``inputs_in_bounds``, ``labels_in_range``, ``logits_not_probabilities``,
        ``eval_mode``, ``deterministic`` and ``batch_size_invariance``. Error severity means the
        evaluation would be meaningless (``robustness_curve`` raises a ValueError on them).

    Raises:
        TypeError: ``x`` or ``y`` is not a tensor, or ``model`` is not callable.

    References:
        Carlini et al., "On Evaluating Adversarial Robustness", arXiv:1902.06705, 2019.
    """
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError("preflight needs tensors x [N, ...] and y [N]")
    if not callable(model):
        raise TypeError(f"model must be callable (an nn.Module), got {type(model).__name__}")
    flags = [check_inputs_in_bounds(x, bounds)]
    xs, ys = x[:_PREFLIGHT_SAMPLES], y[:_PREFLIGHT_SAMPLES]
    with _frozen_buffers(model):
        out = _forward(model, xs)
        flags.append(check_logits(out))
        flags.append(check_labels(out, ys))
        flags.append(check_eval_mode(model))
        flags.append(check_deterministic(model, xs, out))
        flags.append(check_batch_size_invariance(model, xs, out))
    for f in flags:
        if not f.ok:
            logger.log(logging.ERROR if f.severity == "error" else logging.WARNING, "%s", f)
    return flags


def check_inputs_in_bounds(x: Tensor, bounds: tuple[float, float]) -> Flag:
    """Error unless every input is finite and inside ``bounds``."""
    name = "inputs_in_bounds"
    lo, hi = (float(b) for b in bounds)
    if not x.is_floating_point():
        return failed(
            name,
            "error",
            f"inputs have dtype {x.dtype}, not float",
            f"convert to float in [{lo}, {hi}] (e.g. divide uint8 images by 255)",
        )
    if not bool(torch.isfinite(x).all()):
        return failed(name, "error", "inputs contain NaN or inf", "clean the data")
    x_min, x_max = float(x.min()), float(x.max())
    if x_min < lo - 1e-6 or x_max > hi + 1e-6:
        return failed(
            name,
            "error",
            f"inputs lie in [{x_min:.4g}, {x_max:.4g}], outside the bounds [{lo}, {hi}]",
            "pass unnormalised inputs in bounds and put normalisation inside the model "
            "(a Normalize layer), or set bounds= on the attacks",
            min=x_min,
            max=x_max,
        )
    return passed(name, f"inputs lie in [{x_min:.4g}, {x_max:.4g}] within [{lo}, {hi}]")


def check_logits(out: Tensor) -> Flag:
    """Error if the outputs are not finite ``[N, C]`` scores or look like probabilities."""
    name = "logits_not_probabilities"
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[1] < 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        return failed(
            name, "error", f"the model returns {shape}, not logits [N, C]", "return class logits"
        )
    if not bool(torch.isfinite(out).all()):
        return failed(
            name, "error", "the model returns NaN or inf", "check the weights and preprocessing"
        )
    rows = out.sum(dim=1)
    if looks_like_probabilities(out):
        return failed(
            name,
            "error",
            "the outputs are non-negative and sum to 1 per row: they are probabilities",
            "return logits (remove the final softmax); attacks on probabilities saturate and "
            "overstate robustness",
        )
    if bool((out <= 0).all()) and torch.allclose(
        out.logsumexp(dim=1), torch.zeros_like(rows), atol=1e-3
    ):
        return passed(name, "the outputs are log-probabilities (fine for attacks)")
    if bool(((out >= 0) & (out <= 1)).all()) and out.shape[0] > 1:
        return failed(
            name,
            "warning",
            "every output lies in [0, 1]: they may be sigmoid scores, which saturate",
            "return raw logits (remove the final sigmoid)",
        )
    return passed(name, "the outputs are unnormalised logits")


def check_labels(out: Tensor, y: Tensor) -> Flag:
    """Error if a label is not a class index of the model's output."""
    name = "labels_in_range"
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.dim() != 1:
        return failed(
            name, "error", f"labels have dtype {y.dtype}, shape {tuple(y.shape)}", "pass int [N]"
        )
    c = out.shape[1] if isinstance(out, Tensor) and out.dim() == 2 else 0
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= c):
        return failed(
            name,
            "error",
            f"labels span [{int(y.min())}, {int(y.max())}] but the model has {c} outputs",
            "check the dataset matches the model's number of classes",
        )
    return passed(name, f"labels are valid class indices of {c} classes")


def check_eval_mode(model: nn.Module) -> Flag:
    """Warn if the model is in training mode with Dropout or BatchNorm layers."""
    name = "eval_mode"
    if not isinstance(model, nn.Module) or not model.training:
        return passed(name, "the model is in eval mode")
    layers = sorted(
        {type(m).__name__ for m in model.modules() if m.training and isinstance(m, _MODE_DEPENDENT)}
    )
    if not layers:
        return failed(
            name,
            "info",
            "the model is in training mode (harmless: it has no Dropout or BatchNorm)",
            "call model.eval() before evaluating",
        )
    return failed(
        name,
        "warning",
        f"the model is in training mode with {', '.join(layers)} layers: clean predictions "
        "are random or depend on the batch",
        "call model.eval() before evaluating (attacks run in eval mode, the clean pass does not)",
        layers=layers,
    )


def _max_diff(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max()) if a.numel() else 0.0


def _tolerance(out: Tensor) -> float:
    return 1e-4 * max(1.0, float(out.abs().max()))


def check_deterministic(model: nn.Module, x: Tensor, out: Tensor | None = None) -> Flag:
    """Warn if two forward passes on the same input disagree (undeclared randomness)."""
    name = "deterministic"
    out = _forward(model, x) if out is None else out
    diff = _max_diff(out, _forward(model, x))
    if diff <= _tolerance(out):
        return passed(name, "two forward passes agree", max_diff=diff)
    if _is_random(model):
        return passed(
            name,
            "the outputs are random, as the model declares (random=True): adaptive runs use EOT",
            max_diff=diff,
        )
    return failed(
        name,
        "warning",
        f"two forward passes on the same input differ (max logit difference {diff:.3g})",
        "call model.eval(); if the randomness is a defense, declare it (model.random = True) "
        "so the evaluation adds an EOT attack",
        max_diff=diff,
    )


def check_batch_size_invariance(model: nn.Module, x: Tensor, out: Tensor | None = None) -> Flag:
    """Warn if the outputs on a batch differ from the outputs on its two halves."""
    name = "batch_size_invariance"
    if x.shape[0] < 2:
        return passed(name, "skipped: needs at least 2 samples")
    out = _forward(model, x) if out is None else out
    h = x.shape[0] // 2
    halves = torch.cat([_forward(model, x[:h]), _forward(model, x[h:])])
    diff = _max_diff(out, halves)
    if diff <= 10 * _tolerance(out) or _is_random(model):
        return passed(name, "outputs do not depend on the batch", max_diff=diff)
    return failed(
        name,
        "warning",
        f"outputs on a batch and on its halves differ (max logit difference {diff:.3g})",
        "the model mixes samples within a batch (e.g. BatchNorm in training mode); call "
        "model.eval() so each prediction depends on its own input only",
        max_diff=diff,
    )


# ============================================================================== masking checks


@dataclass
class _Ctx:
    """What every masking check needs: the model, the data, the curve and a default attack."""

    curve: Curve
    model: nn.Module
    x: Tensor
    y: Tensor
    attack_map: dict[str, atk_lib.Attack]
    eps_idx: list[int]
    steps: int
    target: nn.Module
    suffix: str = ""
    cache: dict[str, Tensor] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def eps(self) -> list[float]:
        return [float(self.curve.eps[k]) for k in self.eps_idx]

    @property
    def reference(self) -> atk_lib.Attack:
        return next(iter(self.attack_map.values()))

    def make(self, name: str, **kw: Any) -> atk_lib.Attack:
        ref = self.reference
        return atk_lib.create(name, norm=ref.norm, bounds=ref.bounds, seed=ref.seed, **kw)


def _curve_label(ctx: _Ctx, attack_name: str) -> str | None:
    """The curve label of the headline run (adaptive where the curve has one) of an attack."""
    for label, a in ctx.attack_map.items():
        if a.name == attack_name and label + ctx.suffix in ctx.curve.robust:
            return label + ctx.suffix
    return None


def _accuracy(ctx: _Ctx, attack_name: str, **kw: Any) -> tuple[Tensor, str]:
    """Robust accuracy ``[len(eps_idx)]`` on the check samples: from the curve, else run it."""
    label = _curve_label(ctx, attack_name)
    if label is not None:
        robust = ctx.curve.robust[label][ctx.eps_idx, : ctx.n]
        return robust.float().mean(dim=1), f"{label} (from the curve)"
    if attack_name not in ctx.cache:
        res = ctx.make(attack_name, **kw)(ctx.target, ctx.x, ctx.y, eps=ctx.eps)
        ctx.cache[attack_name] = (~res.success).float().mean(dim=1).cpu()
    return ctx.cache[attack_name], f"{attack_name} (run by the check)"


def _fmt(values: Tensor | list[float]) -> str:
    return "[" + ", ".join(f"{float(v):.2f}" for v in values) + "]"


def check_monotone(ctx: _Ctx, tolerance: float = 1e-9) -> Flag:
    """Accuracy must not rise with eps and must not exceed the clean accuracy."""
    name = "monotone"
    curve = ctx.curve
    bad = []
    series = {label: curve.accuracy(label) for label in curve.attacks}
    series["worst_case"] = curve.worst_case()
    for label, acc in series.items():
        rises = bool((acc[1:] > acc[:-1] + tolerance).any())
        above = bool((acc > curve.clean_accuracy + tolerance).any())
        if rises or above:
            bad.append(label)
    if not bad:
        return passed(name, "accuracy falls monotonically with eps under every attack")
    return failed(
        name,
        "warning",
        f"accuracy rises with eps (or exceeds clean accuracy) under {', '.join(bad)}",
        "a larger ball contains the smaller one, so this means the attack fails to find "
        "examples it should: use more steps/restarts, a random start or an adaptive attack",
        attacks=bad,
    )


def _large_eps(ctx: _Ctx) -> float:
    lo, hi = ctx.reference.bounds
    width = hi - lo
    if ctx.reference.norm == atk_lib.Norm.LINF:
        return width
    return width * math.sqrt(ctx.x[0].numel())


def _strong_attack(ctx: _Ctx) -> atk_lib.Attack:
    """The evaluation's own iterative attack (or a default PGD) for the large-eps check."""
    for a in ctx.attack_map.values():
        if not a.minimum_norm and (
            isinstance(a, atk_lib.AttackSuite) or getattr(a, "steps", 1) > 1
        ):
            return a
    return ctx.make("pgd", steps=ctx.steps)


def check_near_chance_at_large_eps(ctx: _Ctx, large_eps: float | None = None) -> Flag:
    """At a huge eps (the bounds' width in linf) the attack must bring accuracy to chance."""
    name = "near_chance_at_large_eps"
    eps = _large_eps(ctx) if large_eps is None else float(large_eps)
    attack = _strong_attack(ctx)
    target = ctx.target
    res = attack(target, ctx.x, ctx.y, eps=eps)
    acc = float(res.robust_accuracy)
    with torch.no_grad():
        n_classes = int(target(ctx.x[:1]).shape[1])
    chance = 1.0 / n_classes
    details = {"eps": eps, "accuracy": acc, "chance": chance, "attack": attack.name}
    if acc <= chance + 1e-9:
        return passed(name, f"{attack.name} at eps={eps:.3g} leaves {acc:.1%} accuracy", **details)
    return failed(
        name,
        "warning",
        f"{attack.name} at eps={eps:.3g} (any input reachable) still leaves {acc:.1%} accuracy, "
        f"above chance ({chance:.1%})",
        "an unbounded attack must succeed; the attack is broken or gradients are masked: try "
        "BPDA/EOT (adaptive=True), more steps, or a gradient-free attack",
        **details,
    )


def check_iterative_beats_single_step(ctx: _Ctx, tolerance: float = 0.02) -> Flag:
    """PGD (iterative) must be at least as strong as FGSM (single step) at every eps."""
    name = "iterative_beats_single_step"
    fgsm, fgsm_src = _accuracy(ctx, "fgsm")
    pgd, pgd_src = _accuracy(ctx, "pgd", steps=ctx.steps)
    tol = max(tolerance, 1.0 / ctx.n)
    details = {"eps": ctx.eps, "fgsm": fgsm.tolist(), "pgd": pgd.tolist(), "n": ctx.n}
    if bool((pgd <= fgsm + tol).all()):
        return passed(name, f"PGD {_fmt(pgd)} <= FGSM {_fmt(fgsm)} at eps {ctx.eps}", **details)
    return failed(
        name,
        "warning",
        f"single-step FGSM {_fmt(fgsm)} [{fgsm_src}] beats iterative PGD {_fmt(pgd)} "
        f"[{pgd_src}] at eps {_fmt(ctx.eps)}",
        "a sign of gradient masking (a locally flat or noisy loss) or of a wrong PGD step "
        "size: check the step size, use a random start, or attack with BPDA/EOT",
        **details,
    )


def check_apgd_vs_pgd(ctx: _Ctx, margin: float = 0.1) -> Flag:
    """APGD (no step size to tune) must not beat the fixed-step PGD by more than ``margin``."""
    name = "apgd_vs_pgd"
    pgd, pgd_src = _accuracy(ctx, "pgd", steps=ctx.steps)
    apgd, apgd_src = _accuracy(ctx, "apgd_ce", steps=ctx.steps)
    gap = float((pgd - apgd).max())
    details = {"eps": ctx.eps, "pgd": pgd.tolist(), "apgd_ce": apgd.tolist(), "gap": gap}
    if gap <= max(margin, 2.0 / ctx.n):
        return passed(
            name, f"APGD {_fmt(apgd)} and PGD {_fmt(pgd)} agree (gap {gap:.1%})", **details
        )
    return failed(
        name,
        "warning",
        f"APGD-CE {_fmt(apgd)} [{apgd_src}] beats PGD {_fmt(pgd)} [{pgd_src}] by up to {gap:.1%}",
        "the PGD step size or step count is off, or its loss surface is masked: tune PGD "
        "(e.g. rel_step_size=2.5/steps, more steps) or report APGD, which adapts its step",
        **details,
    )


def _strengthen(attack: atk_lib.Attack, restart: bool = True) -> atk_lib.Attack | None:
    """A copy with twice the steps, another seed and one more restart (None if not iterative).

    Suite members get twice the steps and another seed only, to keep the check cheap.
    """
    if isinstance(attack, atk_lib.AttackSuite):
        members = [_strengthen(a, restart=False) or a for a in attack.members]
        return atk_lib.AttackSuite(members, seed=attack.seed + 1)
    if attack.minimum_norm or getattr(attack, "steps", 1) <= 1:
        return None
    stronger = copy.copy(attack)
    stronger.steps = 2 * attack.steps
    if restart and hasattr(attack, "restarts"):
        stronger.restarts = attack.restarts + 1
    stronger.seed = attack.seed + 1
    return stronger


def check_more_steps_stable(ctx: _Ctx, tolerance: float = 0.05, max_eps: int = 2) -> Flag:
    """Twice the steps and another start must not lower accuracy by more than ``tolerance``.

    Only the samples the curve still counts as robust are re-attacked, at the ``max_eps``
    largest of the check's eps points.
    """
    name = "more_steps_stable"
    for base, attack in ctx.attack_map.items():
        stronger = _strengthen(attack)
        label = base + ctx.suffix
        if stronger is not None and label in ctx.curve.robust:
            break
    else:
        return passed(name, "skipped: no iterative fixed-budget attack in the evaluation")
    drops = []
    for k in ctx.eps_idx[-max_eps:]:
        alive = ctx.curve.robust[label][k, : ctx.n].to(ctx.x.device)
        broken = 0
        if bool(alive.any()):
            eps = float(ctx.curve.eps[k])
            res = stronger(ctx.target, ctx.x[alive], ctx.y[alive], eps=eps)
            broken = int(res.success.sum())
        drops.append(broken / ctx.n)
    drop = max(drops)
    details = {"attack": label, "eps": ctx.eps[-max_eps:], "drops": drops}
    if drop <= max(tolerance, 2.0 / ctx.n):
        return passed(
            name,
            f"{label} with 2x steps and another start lowers accuracy by {drop:.1%}",
            **details,
        )
    return failed(
        name,
        "warning",
        f"{label} with 2x steps and another start lowers accuracy by {drop:.1%}: not converged",
        "increase the attack's steps and restarts until the accuracy stops falling, and "
        "report that setting",
        **details,
    )


def input_gradients(model: nn.Module, x: Tensor, y: Tensor, loss: str = "ce") -> Tensor:
    """Per-sample input gradients of the cross-entropy (or CW margin) loss, model left intact."""
    with atk_lib.model_guard(model, eval_mode=True):
        xg = x.detach().clone().requires_grad_(True)
        logits = model(xg)
        value = (
            F.cross_entropy(logits, y, reduction="sum")
            if loss == "ce"
            else -cw_margin(logits, y).sum()
        )
        (grad,) = torch.autograd.grad(value, xg, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad.detach()


def _bad_gradient_fraction(
    model: nn.Module, x: Tensor, y: Tensor, loss: str
) -> tuple[float, float]:
    """Fractions of samples with an all-zero input gradient and with a NaN/inf one."""
    g = input_gradients(model, x, y, loss).flatten(1)
    nonfinite = ~torch.isfinite(g).all(dim=1)
    zero = (g == 0).all(dim=1)
    return float(zero.float().mean()), float(nonfinite.float().mean())


def check_gradients_nonzero(ctx: _Ctx, max_fraction: float = 0.1) -> Flag:
    """At most ``max_fraction`` of the samples may have a zero or NaN input gradient."""
    name = "gradients_nonzero"
    zero, nonfinite = _bad_gradient_fraction(ctx.model, ctx.x, ctx.y, "ce")
    details: dict[str, Any] = {"zero": zero, "nonfinite": nonfinite}
    if zero <= max_fraction and nonfinite == 0:
        return passed(name, f"input gradients are nonzero ({zero:.0%} zero)", **details)
    message = (
        f"{zero:.0%} of the samples have an all-zero and {nonfinite:.0%} a NaN/inf input "
        "gradient of the cross-entropy"
    )
    advice = "gradient-based attacks are blind here (gradient masking)"
    if atk_lib.needs_adaptive(ctx.model):
        ad_zero, ad_nan = _bad_gradient_fraction(
            atk_lib.adaptive_model(ctx.model), ctx.x, ctx.y, "ce"
        )
        details |= {"adaptive_zero": ad_zero, "adaptive_nonfinite": ad_nan}
        advice += (
            f"; the model declares a non-differentiable or random forward pass and its BPDA/EOT "
            f"version has {ad_zero:.0%} zero gradients: trust the '+adaptive' rows, not the naive"
        )
    else:
        cw_zero, _ = _bad_gradient_fraction(ctx.model, ctx.x, ctx.y, "cw")
        details["cw_zero"] = cw_zero
        if cw_zero < zero:
            advice += (
                f"; the CW margin loss has {cw_zero:.0%} zero gradients: attack with loss='cw'"
            )
        advice += (
            "; if a layer is non-differentiable (rounding, quantisation, JPEG), wrap it as a "
            "defenses.Preprocessed model with differentiable=False so BPDA is used"
        )
    return failed(name, "warning", message, advice, **details)


CHECKS: dict[str, Callable[..., Flag]] = {
    "monotone": check_monotone,
    "near_chance_at_large_eps": check_near_chance_at_large_eps,
    "iterative_beats_single_step": check_iterative_beats_single_step,
    "apgd_vs_pgd": check_apgd_vs_pgd,
    "more_steps_stable": check_more_steps_stable,
    "gradients_nonzero": check_gradients_nonzero,
}


def _eps_points(n_eps: int, count: int) -> list[int]:
    """Up to ``count`` eps indices spread over the grid, always including the largest."""
    if n_eps <= count:
        return list(range(n_eps))
    return sorted({round(i * (n_eps - 1) / (count - 1)) for i in range(count)})


def masking_checks(
    curve: Curve,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attack_map: Mapping[str, atk_lib.Attack] | None = None,
    *,
    max_samples: int = 100,
    eps_points: int = 3,
    steps: int = 20,
    skip: tuple[str, ...] | list[str] = (),
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Flag]:
    """Automatable gradient-masking checks of Carlini et al. (2019) on a finished curve.

    ``x`` and ``y`` must be the first samples of the curve, in the curve's order (what
    ``robustness_curve`` passes), so the curve's per-sample results can be reused. For a model
    with a non-differentiable or random forward pass whose curve has ``+adaptive`` runs, the
    attack comparisons use the adaptive (BPDA/EOT) runs, the headline; ``gradients_nonzero``
    always looks at the model as given, so a masking defense is flagged.

    Args:
        curve: A :class:`robustbench_local.evaluate.Curve`.
        model: The evaluated model (as given, not the adaptive wrapper).
        x: ``[n, ...]`` the curve's first samples (at most ``max_samples`` are used).
        y: ``[n]`` their labels.
        attack_map: ``label -> Attack`` of the curve (default: FGSM and PGD on the curve's norm).
        max_samples: Samples the checks run on.
        eps_points: Eps values of the grid the comparisons use (spread, largest included).
        steps: Steps of the attacks the checks build themselves (PGD, APGD).
        skip: Names of checks not to run.
        options: ``check name -> keyword arguments`` (e.g. ``{"apgd_vs_pgd": {"margin": 0.2}}``).

    Returns:
        One flag per check in :data:`GRADIENT_MASKING_FLAGS` not skipped; a failure has
        severity ``"warning"``.

    Raises:
        ValueError: Unknown names in ``skip`` or ``options``, or no samples.

    References:
        Carlini et al., "On Evaluating Adversarial Robustness", arXiv:1902.06705, 2019,
        Sections 4-5 and Appendix (checklist).
    """
    unknown = sorted((set(skip) | set(options or {})) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown checks {unknown}; known: {', '.join(CHECKS)}")
    x, y = x[:max_samples], y[:max_samples]
    if x.shape[0] == 0:
        raise ValueError("masking_checks needs at least one sample")
    if attack_map is None:
        attack_map = {"fgsm": atk_lib.create("fgsm", norm=curve.norm)}
    adaptive = atk_lib.needs_adaptive(model) and any(
        label.endswith(ADAPTIVE_SUFFIX) for label in curve.robust
    )
    ctx = _Ctx(
        curve=curve,
        model=model,
        target=atk_lib.adaptive_model(model) if adaptive else model,
        suffix=ADAPTIVE_SUFFIX if adaptive else "",
        x=x,
        y=y.to(device=x.device, dtype=torch.long),
        attack_map=dict(attack_map),
        eps_idx=_eps_points(len(curve.eps), eps_points),
        steps=steps,
    )
    flags = []
    for name, check in CHECKS.items():
        if name in skip:
            continue
        flag = check(ctx, **dict((options or {}).get(name, {})))
        if not flag.ok:
            logger.warning("%s", flag)
        flags.append(flag)
    return flags


__all__ = [
    "CHECKS",
    "GRADIENT_MASKING_FLAGS",
    "NONDETERMINISM_FLAGS",
    "PREFLIGHT_FLAGS",
    "Flag",
    "input_gradients",
    "masking_checks",
    "preflight",
    "raise_on_errors",
    "summarize",
]
