"""Curve.summary(): one line with the clean accuracy, the headline worst case and the health."""

from __future__ import annotations

import torch

from robustbench_local.certify import CertifiedCurve
from robustbench_local.curve import Curve, ReferenceRecord, health_summary
from robustbench_local.health import failed, passed


def rows(*bits: str) -> torch.Tensor:
    """``rows("1100", "1000")``: a bool [K, N] matrix, one string per eps."""
    return torch.tensor([[c == "1" for c in b] for b in bits])


def make_curve(**kw) -> Curve:
    """4 samples, 3 eps; PGD leaves 3, 2 and 1 samples standing; one sample is misclassified."""
    return Curve(
        eps=torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64),
        attacks=["pgd"],
        robust={"pgd": rows("1110", "1100", "1000")},
        clean_correct=torch.tensor([True, True, True, False]),
        indices=torch.arange(4),
        **kw,
    )


def test_a_healthy_curve_is_summarised_at_its_largest_eps():
    curve = make_curve(health=[passed("monotone", "fine")])
    assert curve.summary() == "clean 75.00%, worst case 25.00% at eps 0.3 (linf, n=4); health: ok"


def test_the_headline_is_where_the_reference_ran():
    reference = ReferenceRecord(label="reference", mode="auto", ran=[False, True, False])
    curve = make_curve(reference=reference, norm="l2")
    curve.attacks.append("reference")
    curve.robust["reference"] = rows("1110", "1000", "1000")  # it breaks one more at 0.2
    assert curve.summary().startswith("clean 75.00%, worst case 25.00% at eps 0.2 (l2, n=4)")
    curve.reference = ReferenceRecord(label=None, mode="off")  # opted out: the largest eps
    assert "at eps 0.3 (l2" in curve.summary()


def test_failed_checks_are_named_by_severity_errors_first():
    health = [
        failed("monotone", "warning", "rises", "fix"),
        passed("deterministic", "fine"),
        failed("resumed", "info", "from state", ""),
        failed("certificate_violated", "error", "broken", "fix"),
        failed("apgd_vs_pgd", "warning", "far below", "fix"),
    ]
    summary = make_curve(health=health).summary()
    assert summary.endswith(
        "; health: 1 error (certificate_violated), 2 warnings (monotone, apgd_vs_pgd), "
        "1 info (resumed)"
    )
    assert health_summary([]) == "ok"


def test_the_certified_accuracy_at_the_headline_eps_follows():
    certified = CertifiedCurve(
        eps=torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64),
        norm="linf",
        method="crown",
        settings={"method": "crown", "norm": "linf"},
        certified=rows("1100", "1000", "0000"),
        clean_correct=torch.tensor([True, True, True, False]),
        radius=torch.tensor([0.2, 0.1, 0.0, 0.0]),
        indices=torch.arange(4),
    )
    curve = make_curve(certified=certified)
    expected = "worst case 25.00% at eps 0.3 (linf, n=4), certified (crown) 0.00%; health: ok"
    assert curve.summary().endswith(expected)
    assert Curve.from_dict(curve.to_dict()).summary() == curve.summary()  # JSON round trip
