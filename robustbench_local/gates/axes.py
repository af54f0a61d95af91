"""A gate's certified and corruption rows: evaluated on the gate's samples, judged like its rows.

The runner passes the spec's ``certify`` to the robustness curve (:func:`certify_argument`),
whose certified row (:attr:`robustbench_local.Curve.certified`) covers the gate's samples,
grid and norm; it evaluates the corruptions on the same samples (:func:`corruption_curve`);
:func:`add_axes` turns both into :class:`~robustbench_local.gates.results.AxisRow` verdicts
with the gate's one-sided bounds:

* certified rows: ``k`` certified samples of ``n``, the binomial bounds of the gate's
  ``method`` (:func:`~robustbench_local.gates.stats.accuracy_bounds`), as for robust accuracy;
  for smoothing the certificates hold for the smoothed classifier and each with probability
  ``1 - alpha`` (Cohen et al. 2019), which the bounds do not add to;
* corruption rows: the mean of the ``n`` per-sample averages over the corruptions and
  severities (or over one corruption's severities), bounded with sample size ``n``
  (:func:`~robustbench_local.gates.stats.mean_bounds`: the cells of one sample are not
  independent).

A ``certificate_violated`` flag (a sample certified at eps and broken by an attack in the same
ball) is an error of the gate (:func:`certificate_error`, recorded by the runner's health
policy): it fails whatever the thresholds and options.

References:
    Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized Smoothing",
    ICML 2019.
    Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
    Perturbations", ICLR 2019.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from robustbench_local.gates.axis_spec import MEAN, certify_method, severities_to_json
from robustbench_local.gates.results import (
    CERTIFIED,
    CORRUPTION,
    AxisRow,
    GateResult,
    bits,
    threshold_verdict,
)
from robustbench_local.gates.spec import GateSpec
from robustbench_local.gates.stats import accuracy_bounds, mean_bounds

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from robustbench_local.certify import CertifiedCurve
    from robustbench_local.corruptions.curve import CorruptionCurve
    from robustbench_local.curve import Curve
    from robustbench_local.health import Flag

CERTIFICATE_VIOLATED = "certificate_violated"
"""The health flag of a certificate contradicted by an attack (robustbench_local.checks)."""


def certify_argument(spec: GateSpec) -> str | dict[str, Any] | None:
    """The ``certify`` argument of the gate's robustness curve (None: no certified row)."""
    cert = spec.certify
    return None if cert is None else (cert if isinstance(cert, str) else dict(cert))


def corruption_curve(
    spec: GateSpec, model: nn.Module, x: Tensor, y: Tensor, device: torch.device
) -> CorruptionCurve | None:
    """The corruption curve of the gate's samples (None when the gate has no corruptions).

    The samples are the gate's own (already drawn), evaluated in order; each corrupted image
    derives from (seed, its position in the gate's list).
    """
    if spec.corruptions is None:
        return None
    from robustbench_local.corruptions.curve import corruption_curve as evaluate

    names = spec.corruptions if isinstance(spec.corruptions, str) else list(spec.corruptions)
    return evaluate(
        model, (x, y), names, spec.severities, seed=spec.seed, device=device, progress=False
    )


def add_axes(result: GateResult, curve: Curve, corruptions: CorruptionCurve | None) -> None:
    """Add the certified and corruption rows, summaries and errors to ``result``."""
    spec = result.spec
    if curve.certified is not None:
        result.axis_rows += certified_rows(spec, curve.certified)
        result.certified = certified_summary(curve.certified)
    if corruptions is not None:
        result.axis_rows += corruption_rows(spec, corruptions)
        result.corruptions = corruption_summary(corruptions)


def certified_rows(spec: GateSpec, cert: CertifiedCurve) -> list[AxisRow]:
    """One row per gate eps: certified count, bounds and verdict against its threshold."""
    thresholds = spec.min_certified_accuracy or (None,) * len(spec.eps)
    grid = [float(e) for e in cert.eps.tolist()]
    rows = []
    for e, threshold in zip(spec.eps, thresholds, strict=True):
        k_eps = min(range(len(grid)), key=lambda i: abs(grid[i] - e))
        n, k = cert.n_examples, int(cert.certified[k_eps].sum())
        lower, upper = accuracy_bounds(k, n, spec.confidence, spec.method)
        rows.append(
            AxisRow(CERTIFIED, cert.label, e, n, k / n, lower, upper, threshold,
                    threshold_verdict(lower, upper, threshold), count=k)
        )  # fmt: skip
    return rows


def corruption_rows(spec: GateSpec, curve: CorruptionCurve) -> list[AxisRow]:
    """The mean row, then a row per corruption with a threshold (averaged over severities).

    The mean row is there whether or not it has a threshold (it reports the mean); a
    corruption named in ``min_corruption_accuracy`` that the curve does not have is an error.

    Raises:
        ValueError: A thresholded corruption the evaluation did not run (e.g. ``auto`` chose
            another suite's corruptions); the curve's corruptions are listed.
    """
    thresholds = dict(spec.min_corruption_accuracy or {})
    per_sample = curve.correct.double().mean(dim=(0, 1))
    rows = [_mean_row(spec, "corruptions: mean", per_sample, thresholds.pop(MEAN, None))]
    for name, threshold in thresholds.items():
        if name not in curve.corruptions:
            raise ValueError(
                f"min_corruption_accuracy names {name!r} but the gate evaluated "
                f"{', '.join(curve.corruptions)} ({curve.suite}); name corruptions of that suite"
            )
        cells = curve.correct[curve.corruptions.index(name)].double().mean(dim=0)
        rows.append(_mean_row(spec, f"corruption: {name}", cells, threshold))
    return rows


def _mean_row(spec: GateSpec, label: str, per_sample: Tensor, threshold: float | None) -> AxisRow:
    """A corruption row from per-sample averages in [0, 1] (bounds with n = the samples)."""
    n = int(per_sample.numel())
    mean = float(per_sample.mean())
    lower, upper = mean_bounds(mean, n, spec.confidence, spec.method)
    verdict = threshold_verdict(lower, upper, threshold)
    return AxisRow(CORRUPTION, label, None, n, mean, lower, upper, threshold, verdict)


def certified_summary(cert: CertifiedCurve) -> dict[str, Any]:
    """The certified part of the report: method, settings, what it certifies, accuracies."""
    from robustbench_local.utils import plain

    return plain(
        {
            "method": cert.method,
            "settings": dict(cert.settings),
            "certifies": cert.certifies,
            "eps": cert.eps.tolist(),
            "accuracy": cert.accuracy.tolist(),
            "clean_accuracy": cert.clean_accuracy,
            "certified": [bits(row.tolist()) for row in cert.certified],
        }
    )


def corruption_summary(curve: CorruptionCurve) -> dict[str, Any]:
    """The corruption part of the report: suite, severities, accuracies, mean, clean."""
    return {
        "suite": curve.suite,
        "corruptions": list(curve.corruptions),
        "severities": severities_to_json(curve.severities),
        "accuracy": {c: curve.accuracy(c).tolist() for c in curve.corruptions},
        "mean_accuracy": curve.mean_accuracy,
        "clean_accuracy": curve.clean_accuracy,
        "n": curve.n_examples,
    }


def certificate_error(text: str) -> str:
    """The gate error of a failed ``certificate_violated`` flag (its text: name, message...)."""
    return (
        f"{text}. A sound certificate and a valid attack never disagree, so the gate fails "
        "whatever its thresholds and options."
    )


def axis_flags(curve: Curve, corruptions: CorruptionCurve | None) -> list[Flag]:
    """Health flags of the certified row and the corruption curve (beside the curve's own)."""
    flags = list(curve.certified.health) if curve.certified is not None else []
    return flags + (list(corruptions.health) if corruptions is not None else [])


def axis_label(spec: GateSpec) -> str:
    """What the gate judges besides its attack, e.g. ``certified (crown); corruptions``."""
    parts = []
    if spec.certify is not None:
        parts.append(f"certified ({certify_method(spec.certify)})")
    if spec.corruptions is not None:
        parts.append("corruptions")
    return "; ".join(parts)


__all__ = [
    "CERTIFICATE_VIOLATED",
    "add_axes",
    "axis_flags",
    "axis_label",
    "certificate_error",
    "certified_rows",
    "certified_summary",
    "certify_argument",
    "corruption_curve",
    "corruption_rows",
    "corruption_summary",
]
