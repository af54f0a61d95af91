"""The certified and corruption parts of a benchmark run and of its model card.

:func:`~robustbench_local.benchmark.benchmark` can certify the track's samples at the track's
eps (``certify=``: a method or ``{"method": ..., **settings}``; the certified row of the same
robustness curve) and measure the accuracy under common corruptions on the same samples
(``corruptions=``: ``"auto"`` or names; :func:`~robustbench_local.corruption_curve`). This
module checks those settings before anything runs and turns the results into the card's
``certified`` and ``corruptions`` fields (percentages, as the rest of the card).

References:
    Gowal et al., "On the Effectiveness of Interval Bound Propagation for Training Verifiably
    Robust Models", 2018 (certified accuracy beside attacked accuracy).
    Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
    Perturbations", ICLR 2019.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from robustbench_local.certify import CertifiedCurve
    from robustbench_local.corruptions.curve import CorruptionCurve

CertifyArg = str | Mapping[str, Any] | None
CorruptionsArg = str | Sequence[str] | None
BENCH = "bench"


def check_certify(certify: CertifyArg, threat_model: str) -> CertifyArg:
    """Check ``certify`` for a track's threat model before the (long) evaluation starts.

    Returns:
        ``certify`` as it is (None: no certification).

    Raises:
        ValueError: Not a method name or a mapping with ``method``, an unknown method, a
            method that does not certify the threat model, or settings it refuses.
    """
    if certify is None:
        return None
    from robustbench_local.certify import create_certifier

    if isinstance(certify, str):
        method, settings = certify, {}
    elif isinstance(certify, Mapping) and isinstance(certify.get("method"), str):
        method = str(certify["method"])
        settings = {str(k): v for k, v in certify.items() if k != "method"}
    else:
        raise ValueError(
            "certify must be a method name ('ibp', 'crown', 'milp', 'smoothing') or a mapping "
            f"such as {{'method': 'smoothing', 'sigma': 0.25}}, got {certify!r}"
        )
    try:
        create_certifier(method, norm=threat_model, **settings)
    except TypeError as err:
        raise ValueError(f"certify: {err}") from None
    return certify


def certified_part(cert: CertifiedCurve | None) -> dict[str, Any] | None:
    """The card's ``certified`` field from the curve's certified row (one eps), or None."""
    if cert is None:
        return None
    from robustbench_local.utils import plain

    settings = {k: v for k, v in cert.settings.items() if k not in ("method", "norm")}
    return plain(
        {
            "method": cert.method,
            "settings": settings,
            "certifies": cert.certifies,
            "eps": float(cert.eps[0]),
            "accuracy": round(100 * float(cert.accuracy[0]), 2),
            "n": cert.n_examples,
        }
    )


def corruption_part(
    model: nn.Module,
    data: Any,
    corruptions: CorruptionsArg,
    severities: Sequence[int | None],
    evaluation: Mapping[str, Any],
    progress: bool = False,
) -> dict[str, Any] | None:
    """Evaluate the corruptions on the benchmark's samples; the card's ``corruptions`` field.

    Args:
        model: The model.
        data: The track's test split.
        corruptions: ``"auto"``, names, or None (no corruption field).
        severities: 1-5, None for each corruption's benchmark level.
        evaluation: The benchmark's ``n_examples``, ``batch_size``, ``seed`` and ``device``
            (so the samples are the robustness curve's).
        progress: Show a progress bar.

    Raises:
        ValueError: Unknown names, bad severities, images the corruptions cannot take.
    """
    if corruptions is None:
        return None
    from robustbench_local.corruptions.curve import corruption_curve

    names = corruptions if isinstance(corruptions, str) else list(corruptions)
    curve = corruption_curve(model, data, names, severities, progress=progress, **evaluation)
    return corruption_fields(curve)


def corruption_fields(curve: CorruptionCurve) -> dict[str, Any]:
    """A corruption curve as the card's ``corruptions`` field (accuracies in percent)."""
    return {
        "suite": curve.suite,
        "corruptions": list(curve.corruptions),
        "severities": [BENCH if s is None else int(s) for s in curve.severities],
        "mean_acc": round(100 * curve.mean_accuracy, 2),
        "clean_acc": round(100 * curve.clean_accuracy, 2),
        "n": curve.n_examples,
    }


def severities_text(severities: Sequence[int | str]) -> str:
    """``1-5``, ``bench`` or ``1,3,5``: how a card's severities are shown."""
    ints = [s for s in severities if isinstance(s, int)]
    if ints and len(ints) == len(severities) and ints == list(range(ints[0], ints[-1] + 1)):
        return f"{ints[0]}-{ints[-1]}" if len(ints) > 1 else str(ints[0])
    return ",".join(str(s) for s in severities)


__all__ = [
    "CertifyArg",
    "CorruptionsArg",
    "certified_part",
    "check_certify",
    "corruption_fields",
    "corruption_part",
    "severities_text",
]
