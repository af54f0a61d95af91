"""Gradient-masking checks on a finished robustness curve.

:func:`masking_checks` automates the checklist of Carlini et al. (2019): accuracy falls
monotonically with eps and reaches chance at a huge eps, iterative attacks beat single-step
ones, a step-size-free attack (APGD) does not beat the fixed-step PGD by a wide margin, more
steps and restarts do not change the result, and input gradients are neither zero nor NaN.
Every check is registered once in :data:`robustbench_local.checks.registry.CHECKS` with kind
``"masking"``, takes a :class:`MaskingContext` and its options, and returns a
:class:`~robustbench_local.health.Flag` that says what failed, what it means and what to do.
The extra attack work is small: at most ``max_samples`` samples, a few eps, few steps.

References:
    Carlini et al., "On Evaluating Adversarial Robustness", arXiv:1902.06705, 2019.
    Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018.
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import attacks as atk_lib
from attacks.losses import cw_margin
from robustbench_local.checks.gradients import MAX_FRACTION, GradientReport, gradient_probe
from robustbench_local.checks.registry import CHECKS, check_names, register_check
from robustbench_local.curve import Curve
from robustbench_local.health import ADAPTIVE_SUFFIX, Flag, failed, passed

logger = logging.getLogger(__name__)


@dataclass
class MaskingContext:
    """What every masking check needs: the model, the data, the curve and a default attack.

    Attributes:
        curve: The finished curve.
        model: The evaluated model, as given.
        x: ``[n, ...]`` the curve's first samples, in the curve's order.
        y: ``[n]`` their labels (long, on ``x``'s device).
        attack_map: ``label -> Attack`` of the curve.
        eps_idx: Indices of the grid points the comparisons use.
        steps: Steps of the attacks the checks build themselves.
        target: The model the checks attack: its BPDA/EOT wrapper where the curve has
            ``+adaptive`` runs, else ``model``.
        suffix: ``"+adaptive"`` where the headline runs are adaptive, else ``""``.
        cache: Accuracies of attacks the checks ran, by attack name.
    """

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
        """Number of check samples."""
        return int(self.x.shape[0])

    @property
    def ids(self) -> Tensor:
        """The check samples' ids: their dataset indices, as in the curve (per-sample draws)."""
        return self.curve.indices[: self.n].to(self.x.device)

    @property
    def eps(self) -> list[float]:
        """The eps values the comparisons use."""
        return [float(self.curve.eps[k]) for k in self.eps_idx]

    @property
    def reference(self) -> atk_lib.Attack:
        """The curve's first attack: its norm, bounds and seed are the checks' own."""
        return next(iter(self.attack_map.values()))

    def make(self, name: str, **kw: Any) -> atk_lib.Attack:
        """A registered attack on the norm, bounds and seed of the curve's first attack.

        Raises:
            CheckUnavailableError: The attack does not support the curve's norm (e.g. PGD and l1).
        """
        ref = self.reference
        norms = getattr(atk_lib.ATTACKS.get(name), "norms", frozenset({ref.norm}))
        if ref.norm not in norms:
            raise CheckUnavailableError(f"it needs {name}, which has no {ref.norm.value} version")
        return atk_lib.create(name, norm=ref.norm, bounds=ref.bounds, seed=ref.seed, **kw)

    @classmethod
    def build(
        cls,
        curve: Curve,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        attack_map: Mapping[str, atk_lib.Attack] | None,
        *,
        eps_points: int,
        steps: int,
    ) -> MaskingContext:
        """The context of a curve; adaptive where the model needs it and the curve has it.

        Raises:
            ValueError: No samples.
        """
        if x.shape[0] == 0:
            raise ValueError("masking_checks needs at least one sample")
        if attack_map is None:
            attack_map = {"fgsm": atk_lib.create("fgsm", norm=curve.norm)}
        adaptive = atk_lib.needs_adaptive(model) and any(
            label.endswith(ADAPTIVE_SUFFIX) for label in curve.robust
        )
        return cls(
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


def _curve_label(ctx: MaskingContext, attack_name: str) -> str | None:
    """The curve label of the headline run (adaptive where the curve has one) of an attack."""
    for label, a in ctx.attack_map.items():
        if a.name == attack_name and label + ctx.suffix in ctx.curve.robust:
            return label + ctx.suffix
    return None


def _accuracy(ctx: MaskingContext, attack_name: str, **kw: Any) -> tuple[Tensor, str]:
    """Robust accuracy ``[len(eps_idx)]`` on the check samples: from the curve, else run it."""
    label = _curve_label(ctx, attack_name)
    if label is not None:
        robust = ctx.curve.robust[label][ctx.eps_idx, : ctx.n]
        return robust.float().mean(dim=1), f"{label} (from the curve)"
    if attack_name not in ctx.cache:
        res = ctx.make(attack_name, **kw)(ctx.target, ctx.x, ctx.y, eps=ctx.eps, ids=ctx.ids)
        ctx.cache[attack_name] = (~res.success).float().mean(dim=1).cpu()
    return ctx.cache[attack_name], f"{attack_name} (run by the check)"


def _fmt(values: Tensor | list[float]) -> str:
    return "[" + ", ".join(f"{float(v):.2f}" for v in values) + "]"


@register_check("monotone", "masking")
def check_monotone(ctx: MaskingContext, tolerance: float = 1e-9) -> Flag:
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


def _large_eps(ctx: MaskingContext) -> float:
    lo, hi = ctx.reference.bounds
    width = hi - lo
    if ctx.reference.norm == atk_lib.Norm.LINF:
        return width
    return width * math.sqrt(ctx.x[0].numel())


def _strong_attack(ctx: MaskingContext) -> atk_lib.Attack:
    """The evaluation's own iterative attack (or a default PGD) for the large-eps check."""
    for a in ctx.attack_map.values():
        if not a.minimum_norm and (
            isinstance(a, atk_lib.AttackSuite) or getattr(a, "steps", 1) > 1
        ):
            return a
    return ctx.make("pgd", steps=ctx.steps)


@register_check("near_chance_at_large_eps", "masking")
def check_near_chance_at_large_eps(ctx: MaskingContext, large_eps: float | None = None) -> Flag:
    """At a huge eps (the bounds' width in linf) the attack must bring accuracy to chance."""
    name = "near_chance_at_large_eps"
    eps = _large_eps(ctx) if large_eps is None else float(large_eps)
    attack = _strong_attack(ctx)
    target = ctx.target
    res = attack(target, ctx.x, ctx.y, eps=eps, ids=ctx.ids)
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


@register_check("iterative_beats_single_step", "masking")
def check_iterative_beats_single_step(ctx: MaskingContext, tolerance: float = 0.02) -> Flag:
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


@register_check("apgd_vs_pgd", "masking")
def check_apgd_vs_pgd(ctx: MaskingContext, margin: float = 0.1) -> Flag:
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


@register_check("more_steps_stable", "masking")
def check_more_steps_stable(ctx: MaskingContext, tolerance: float = 0.05, max_eps: int = 2) -> Flag:
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
            res = stronger(ctx.target, ctx.x[alive], ctx.y[alive], eps=eps, ids=ctx.ids[alive])
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


@register_check("gradients_nonzero", "masking")
def check_gradients_nonzero(ctx: MaskingContext, max_fraction: float = MAX_FRACTION) -> Flag:
    """At most ``max_fraction`` of the samples may have a zero or NaN input gradient.

    The gradients are judged on the model the headline attacks attack: the BPDA/EOT wrapper
    where the model declares a non-differentiable or random forward pass and the curve has
    ``+adaptive`` runs (the model as given then has zero gradients by declaration; that is
    reported in the details, not flagged), else the model as given. A model that hides a
    rounding step in its own ``forward`` without declaring it is judged as given, and flagged.
    """
    name = "gradients_nonzero"
    report = gradient_probe(ctx.target, ctx.x, ctx.y, max_samples=ctx.n)
    judged = (
        "the BPDA/EOT model the '+adaptive' runs attack" if ctx.suffix else "the model as given"
    )
    details: dict[str, Any] = {
        "judged_on": "adaptive" if ctx.suffix else "model",
        **{k: v for k, v in report.to_dict().items() if k not in ("max_fraction", "max_diff")},
    }
    note = ""
    if ctx.suffix:
        naive = gradient_probe(ctx.model, ctx.x, ctx.y, max_samples=ctx.n)
        details |= {"naive_zero": naive.zero, "naive_nonfinite": naive.nonfinite}
        note = (
            f"; the model as given has {naive.zero:.0%} zero gradients, as its declared "
            "non-differentiable or random forward pass implies"
        )
    if report.zero <= max_fraction and report.nonfinite == 0:
        message = f"input gradients of {judged} are nonzero ({report.zero:.0%} zero){note}"
        return passed(name, message, **details)
    message = (
        f"{report.zero:.0%} of the samples have an all-zero and {report.nonfinite:.0%} a NaN/inf "
        f"input gradient of the cross-entropy on {judged}"
    )
    return failed(name, "warning", message, _gradient_advice(ctx, report), **details)


def _gradient_advice(ctx: MaskingContext, report: GradientReport) -> str:
    """What to do about masked gradients, from what the probe found."""
    advice = ["gradient-based attacks are blind here (gradient masking)"]
    if report.saturated > 0:
        advice.append(
            f"the softmax saturates on {report.saturated:.0%} of the samples and the CW margin "
            "loss still has gradients there: attack with loss='cw' (or the reference suite's "
            "APGD-DLR, which is scale-invariant)"
        )
    if report.hidden_ops:
        advice.append(
            f"the model's forward calls {', '.join(report.hidden_ops)} on the input, which has no "
            "useful gradient: attack attacks.straight_through_model(model) (straight-through "
            "gradients for those ops), or declare the step (a defenses.Preprocessed model with "
            "differentiable=False) so BPDA is used"
        )
    if atk_lib.needs_adaptive(ctx.model) and not ctx.suffix:
        advice.append(
            "the model declares a non-differentiable or random forward pass: evaluate with "
            "adaptive='auto' and trust the '+adaptive' rows"
        )
    if not report.saturated and not report.hidden_ops:
        advice.append("check with a gradient-free attack (square) and with BPDA/EOT")
    return "; ".join(advice)


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
    skip: Sequence[str] = (),
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Flag]:
    """Automatable gradient-masking checks of Carlini et al. (2019) on a finished curve.

    ``x`` and ``y`` must be the first samples of the curve, in the curve's order (what
    ``robustness_curve`` passes), so the curve's per-sample results can be reused. Where the
    model's forward pass is non-differentiable or random and the curve has ``+adaptive`` runs,
    the attack comparisons use those (the headline), and ``gradients_nonzero`` judges the
    gradients of that BPDA/EOT model (a declared defense attacked with BPDA is not flagged for
    the zero gradients it declares); an undeclared masking model is judged, and flagged, as given.

    Args:
        curve: The curve.
        model: The evaluated model (as given, not the adaptive wrapper).
        x: ``[n, ...]`` the curve's first samples (at most ``max_samples`` are used).
        y: ``[n]`` their labels.
        attack_map: ``label -> Attack`` of the curve (default: FGSM on the curve's norm).
        max_samples: Samples the checks run on.
        eps_points: Eps values of the grid the comparisons use (spread, largest included).
        steps: Steps of the attacks the checks build themselves (PGD, APGD).
        skip: Names of checks not to run.
        options: ``check name -> keyword arguments`` (e.g. ``{"apgd_vs_pgd": {"margin": 0.2}}``).

    Returns:
        One flag per registered masking check not skipped, in registration order; a failure
        has severity ``"warning"``.

    Raises:
        ValueError: Unknown names in ``skip`` or ``options``, or no samples.

    References:
        Carlini et al., "On Evaluating Adversarial Robustness", arXiv:1902.06705, 2019,
        Sections 4-5 and Appendix (checklist).
    """
    names = check_names("masking")
    unknown = sorted((set(skip) | set(options or {})) - set(names))
    if unknown:
        raise ValueError(f"unknown checks {unknown}; known: {', '.join(names)}")
    x, y = x[:max_samples], y[:max_samples]
    ctx = MaskingContext.build(curve, model, x, y, attack_map, eps_points=eps_points, steps=steps)
    return [_run(name, ctx, (options or {}).get(name, {})) for name in names if name not in skip]


class CheckUnavailableError(ValueError):
    """A masking check cannot run on this curve (no attack of its kind for the curve's norm)."""


def _run(name: str, ctx: MaskingContext, options: Mapping[str, Any]) -> Flag:
    """Run one registered masking check with its options; log a failure."""
    try:
        flag = CHECKS.get(name)(ctx, **dict(options))
    except CheckUnavailableError as err:
        return failed(name, "info", f"not run on this curve: {err}", "nothing to do")
    if not flag.ok:
        logger.warning("%s", flag)
    return flag


__all__ = [
    "MaskingContext",
    "check_apgd_vs_pgd",
    "check_gradients_nonzero",
    "check_iterative_beats_single_step",
    "check_monotone",
    "check_more_steps_stable",
    "check_near_chance_at_large_eps",
    "input_gradients",
    "masking_checks",
]
