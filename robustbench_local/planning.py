"""Which runs a robustness curve makes, and why.

A curve attacks the model with the chosen attacks and, where the model calls for it, with
derived runs whose rows count in the worst case (each :class:`Run` says why it is there):

* ``<label>+adaptive``: the model declares a non-differentiable or random forward pass; the
  attack runs on its BPDA/EOT wrapper (:func:`attacks.adaptive_model`), the declared surrogate
  included;
* ``<label>+margin``: the probe found the cross-entropy gradient saturated (zero where the CW
  margin's is not, e.g. logits scaled by 1e4); the gradient attack also runs on a margin loss;
* ``<label>+ste``: the probe found rounding-like operations hidden in the model's own
  ``forward``; the attack runs on the straight-through model (with EOT if the forward pass is
  random);
* ``<label>+eot``: the probe found the forward pass random although the model does not declare
  it; the attack runs on the EOT average of the model.

:func:`reference_model` picks the model the reference suite attacks by the same rules (the
suite switches to EOT by itself for random models). The probe is
:func:`robustbench_local.checks.gradients.gradient_probe`, run by ``robustness_curve`` on the
evaluation's first samples whether or not its checks are on.

References:
    Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018.
    Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017.
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import NamedTuple

from torch import nn

import attacks as atk_lib
from attacks.straight_through import straight_through_model
from robustbench_local.checks.gradients import GradientReport
from robustbench_local.health import ADAPTIVE_SUFFIX
from robustbench_local.reference import APGDDLRUntargeted

MARGIN_SUFFIX = "+margin"
STE_SUFFIX = "+ste"
EOT_SUFFIX = "+eot"
SATURATED_FRACTION = 0.1
"""Share of probe samples with a saturated cross-entropy gradient that adds the margin runs."""
EOT_SAMPLES = 8
"""Draws of the EOT average of the derived runs (the reference takes its own, 20)."""


class Run(NamedTuple):
    """One row of a curve: an attack, the model it attacks, and why the row is there."""

    label: str
    attack: atk_lib.Attack
    model: nn.Module
    why: str = "chosen"


def _check_adaptive(adaptive: bool | str) -> None:
    if adaptive not in (True, False, "auto"):
        raise ValueError(f"adaptive must be True, False or 'auto', got {adaptive!r}")


def attack_runs(
    model: nn.Module, attacks: Mapping[str, atk_lib.Attack], adaptive: bool | str = "auto"
) -> list[Run]:
    """The chosen attacks on the model, plus BPDA/EOT runs for a declared defense.

    Raises:
        ValueError: ``adaptive`` is not True, False or ``"auto"``.
    """
    _check_adaptive(adaptive)
    use = adaptive is True or (adaptive == "auto" and atk_lib.needs_adaptive(model))
    out = [Run(label, a, model) for label, a in attacks.items()]
    if use:
        wrapped = atk_lib.adaptive_model(model)
        why = "the model declares a non-differentiable or random forward pass (BPDA/EOT)"
        out += [Run(f"{label}{ADAPTIVE_SUFFIX}", a, wrapped, why) for label, a in attacks.items()]
    return out


def plan_runs(
    model: nn.Module,
    attacks: Mapping[str, atk_lib.Attack],
    adaptive: bool | str = "auto",
    report: GradientReport | None = None,
) -> list[Run]:
    """Every run of a curve: :func:`attack_runs` plus the runs the probe ``report`` calls for.

    ``adaptive=False`` keeps the chosen attacks only.

    Raises:
        ValueError: ``adaptive`` is not True, False or ``"auto"``.
    """
    runs = attack_runs(model, attacks, adaptive)
    if adaptive is False or report is None:
        return runs
    if report.saturated > SATURATED_FRACTION:
        why = f"cross-entropy gradients saturated on {report.saturated:.0%} of the probe samples"
        for label, a in attacks.items():
            variant = margin_variant(a)
            if variant is not None:
                runs.append(Run(f"{label}{MARGIN_SUFFIX}", variant, model, why))
    declared_nondiff = not getattr(model, "differentiable", True)
    declared_random = bool(getattr(model, "random", False))
    if report.hidden_ops and not declared_nondiff:
        target = _straight_through(model, report.random)
        why = f"rounding-like operations in the forward pass: {', '.join(report.hidden_ops)}"
        runs += [Run(f"{lbl}{STE_SUFFIX}", a, target, why) for lbl, a in attacks.items()]
    elif report.random and not declared_random:
        target = atk_lib.EOT(model, samples=EOT_SAMPLES)
        why = "two forward passes differ but the model does not declare random=True (EOT)"
        runs += [Run(f"{lbl}{EOT_SUFFIX}", a, target, why) for lbl, a in attacks.items()]
    return runs


def _straight_through(model: nn.Module, random: bool) -> nn.Module:
    """The straight-through model, averaged over draws when the forward pass is random."""
    declared = bool(getattr(model, "random", False))
    return straight_through_model(model, eot_samples=EOT_SAMPLES, random=random or declared)


def margin_variant(attack: atk_lib.Attack) -> atk_lib.Attack | None:
    """The attack on a margin loss: PGD/FGSM with ``loss="cw"``, APGD-CE as APGD-DLR.

    Returns None for attacks that have no cross-entropy to swap (suites, minimum-norm attacks,
    attacks already on a margin loss).
    """
    if getattr(attack, "loss", None) == "ce":
        variant = copy.copy(attack)
        variant.loss = "cw"
        return variant
    if attack.name == "apgd_ce" and isinstance(attack, atk_lib.APGD):
        return APGDDLRUntargeted(
            attack.norm,
            steps=attack.steps,
            restarts=attack.restarts,
            rho=attack.rho,
            bounds=attack.bounds,
            seed=attack.seed,
        )
    return None


def reference_model(
    model: nn.Module, adaptive: bool | str = "auto", report: GradientReport | None = None
) -> tuple[nn.Module, str]:
    """The model the reference suite attacks and what it is.

    BPDA for a model that declares ``differentiable=False`` (its declared surrogate), the
    straight-through model where the probe found hidden rounding ops, else the model as given.
    Randomness needs nothing here: the suite switches to its EOT protocol by itself.
    """
    if adaptive is False:
        return model, "as given"
    if not getattr(model, "differentiable", True):
        return atk_lib.BPDA(model), "BPDA (the model declares differentiable=False)"
    if report is not None and report.hidden_ops:
        # the suite averages a random model's draws itself (its "rand" protocol)
        return straight_through_model(model, random=False), "straight-through"
    return model, "as given"


__all__ = [
    "EOT_SUFFIX",
    "MARGIN_SUFFIX",
    "SATURATED_FRACTION",
    "STE_SUFFIX",
    "Run",
    "attack_runs",
    "margin_variant",
    "plan_runs",
    "reference_model",
]
