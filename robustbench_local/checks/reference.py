"""The ``weaker_than_reference`` health flag: whether the chosen attacks overestimate robustness.

Every evaluation runs the reference suite on the samples the chosen attacks left standing
(:mod:`robustbench_local.reference`). :func:`check_weaker_than_reference` compares, at each eps
where the reference ran, the chosen attacks' worst-case robust accuracy with the worst case
*with* the reference, and fires when the gap exceeds ``max(1 point, 2 standard errors)``. The
gap is a paired difference (the share ``d`` of samples only the reference broke), so its
standard error is ``sqrt(d (1 - d) / n)``. The flag does not depend on ``checks=True``: the
reference is part of every evaluation; with ``reference=False`` the flag says that no
reference ran.

References:
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020 (robust accuracy overestimated by weak attacks).
    Carlini et al., "On Evaluating Adversarial Robustness", arXiv:1902.06705, 2019.
"""

from __future__ import annotations

import math
from typing import Any

from robustbench_local.card import THREAT_MODELS
from robustbench_local.checks.registry import KINDS, register_check
from robustbench_local.curve import Curve
from robustbench_local.health import Flag, failed, passed

WEAKER_THAN_REFERENCE = "weaker_than_reference"
MIN_GAP = 0.01
"""Smallest gap (1 point) the flag reports, whatever the sample count."""


def check_weaker_than_reference(curve: Curve, min_gap: float = MIN_GAP, z: float = 2.0) -> Flag:
    """Flag eps where the chosen attacks' accuracy exceeds the worst case with the reference.

    Args:
        curve: A finished curve (its ``reference`` says where the reference ran).
        min_gap: The smallest gap reported (default 1 point).
        z: Standard errors of the paired gap that count as noise (default 2).

    Returns:
        A :class:`Flag`; failed with severity ``"warning"`` when some gap exceeds
        ``max(min_gap, z * se)``; failed with severity ``"info"`` when no reference ran.
    """
    name = WEAKER_THAN_REFERENCE
    ref = curve.reference
    if (ref is None or ref.mode == "off") and curve.norm not in THREAT_MODELS:
        return failed(
            name,
            "info",
            f"no reference was run: there is no standard reference suite for {curve.norm}, so "
            "the chosen attacks' numbers are not checked against one",
            "pass reference=<an Attack on this norm> (e.g. attacks.create('alma', norm='l1'))",
        )
    if ref is None or ref.mode == "off":
        return failed(
            name,
            "info",
            "no reference was run (reference=False): the chosen attacks' numbers are not "
            "checked against the reference suite",
            "drop reference=False (eval.reference / the gate's reference:) to run it",
        )
    if ref.shared:
        return passed(name, f"the chosen attack {ref.label!r} is the reference suite")
    rows = _gaps(curve, min_gap, z)
    details: dict[str, Any] = {
        "eps": [r["eps"] for r in rows],
        "chosen": [r["chosen"] for r in rows],
        "with_reference": [r["with_reference"] for r in rows],
        "gaps": [r["gap"] for r in rows],
        "tolerance": [r["tolerance"] for r in rows],
        "n": curve.n_examples,
        "reduced": ref.reduced,
        "broken_by": ref.broken_by,
    }
    worst = max(rows, key=lambda r: r["gap"] - r["tolerance"], default=None)
    details["gap"] = max((r["gap"] for r in rows), default=0.0)
    if worst is None or worst["gap"] <= worst["tolerance"]:
        return passed(
            name,
            f"the chosen attacks agree with the {ref.display} (gap {details['gap']:.1%})",
            **details,
        )
    return failed(name, "warning", _message(curve, worst), _advice(ref.broken_by), **details)


def _gaps(curve: Curve, min_gap: float, z: float) -> list[dict[str, float]]:
    """Chosen vs. with-reference accuracy, gap and tolerance at every eps where it ran."""
    n = max(curve.n_examples, 1)
    chosen = curve.chosen_worst_case_robust().sum(dim=1).tolist()
    with_ref = curve.worst_case_robust().sum(dim=1).tolist()
    rows = []
    for k in curve.ran(curve.reference_label or "").nonzero().flatten().tolist():
        gap = max(0, chosen[k] - with_ref[k]) / n  # the share only the reference broke
        se = math.sqrt(gap * (1.0 - gap) / n)
        rows.append(
            {
                "eps": float(curve.eps[k]),
                "chosen": chosen[k] / n,
                "with_reference": with_ref[k] / n,
                "gap": gap,
                "tolerance": max(min_gap, z * se),
            }
        )
    return rows


def _message(curve: Curve, row: dict[str, float]) -> str:
    ref = curve.reference
    labels = ", ".join(curve.chosen_labels)
    display = ref.display if ref is not None else "reference"
    return (
        f"at eps {row['eps']:g} the chosen attacks ({labels}) leave {row['chosen']:.1%} robust "
        f"accuracy, the worst case with the {display} {row['with_reference']:.1%}: they "
        f"overestimate robustness by {100 * row['gap']:.1f} points (more than "
        f"max(1 point, 2 standard errors) = {100 * row['tolerance']:.1f} points)"
    )


def _advice(broken_by: dict[str, dict[str, int]]) -> str:
    totals: dict[str, int] = {}
    for members in broken_by.values():
        for member, count in members.items():
            totals[member] = totals.get(member, 0) + int(count)
    found = ", ".join(f"{m} broke {c}" for m, c in totals.items() if c) or "its members"
    return (
        "the headline (worst case) already includes the reference; report it, not the chosen "
        f"attacks' own numbers. Where the reference succeeded ({found}), use those attacks or "
        "rbl.standard_suite() in your evaluation; a large gap also suggests gradient masking"
    )


if "reference" in KINDS:  # TODO(merge, ste): add the "reference" kind to checks/registry.py
    register_check(WEAKER_THAN_REFERENCE, "reference")(check_weaker_than_reference)  # type: ignore[arg-type]


__all__ = ["MIN_GAP", "WEAKER_THAN_REFERENCE", "check_weaker_than_reference"]
