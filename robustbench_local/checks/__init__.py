"""Health checks for robustness evaluations: a preflight on the model and gradient-masking checks.

:func:`preflight` (:mod:`.preflight`) runs before any attack and catches what makes an
evaluation meaningless or unreliable; :func:`masking_checks` (:mod:`.masking`) runs after a
robustness curve and automates the gradient-masking checklist of Carlini et al. (2019);
:func:`gradient_probe` (:mod:`.gradients`) tells whether input gradients are informative at all
(zero, saturated, NaN, hidden rounding, randomness), for the evaluation's fallbacks. Every
check registers once in :data:`CHECKS` (:mod:`.registry`) with its kinds; the flag-name tuples
below are derived from it.

Example:
    >>> flags = preflight(model, x, y, bounds=(0.0, 1.0))
    >>> [f.name for f in flags if not f.ok]
    []

References:
    Carlini et al., "On Evaluating Adversarial Robustness", arXiv:1902.06705, 2019.
"""

from __future__ import annotations

from robustbench_local.checks.gradients import GradientReport, gradient_probe
from robustbench_local.checks.masking import (
    MaskingContext,
    check_apgd_vs_pgd,
    check_gradients_nonzero,
    check_iterative_beats_single_step,
    check_monotone,
    check_more_steps_stable,
    check_near_chance_at_large_eps,
    input_gradients,
    masking_checks,
)
from robustbench_local.checks.preflight import (
    Probe,
    check_batch_size_invariance,
    check_deterministic,
    check_eval_mode,
    check_inputs_in_bounds,
    check_labels,
    check_logits,
    preflight,
)
from robustbench_local.checks.registry import CHECKS, KINDS, check_names, register_check
from robustbench_local.health import Flag, raise_on_errors, summarize

PREFLIGHT_FLAGS: tuple[str, ...] = check_names("preflight")
"""Flags of the preflight, in the order it runs them."""

GRADIENT_MASKING_FLAGS: tuple[str, ...] = check_names("masking")
"""Flags whose failure suggests gradient masking or a too-weak attack."""

NONDETERMINISM_FLAGS: tuple[str, ...] = check_names("nondeterminism")
"""Flags whose failure means the model's outputs are not a function of its input alone."""

__all__ = [
    "CHECKS",
    "GRADIENT_MASKING_FLAGS",
    "KINDS",
    "NONDETERMINISM_FLAGS",
    "PREFLIGHT_FLAGS",
    "Flag",
    "GradientReport",
    "MaskingContext",
    "Probe",
    "check_apgd_vs_pgd",
    "check_batch_size_invariance",
    "check_deterministic",
    "check_eval_mode",
    "check_gradients_nonzero",
    "check_inputs_in_bounds",
    "check_iterative_beats_single_step",
    "check_labels",
    "check_logits",
    "check_monotone",
    "check_more_steps_stable",
    "check_names",
    "check_near_chance_at_large_eps",
    "gradient_probe",
    "input_gradients",
    "masking_checks",
    "preflight",
    "raise_on_errors",
    "register_check",
    "summarize",
]
