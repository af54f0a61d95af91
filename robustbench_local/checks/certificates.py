"""The ``certificate_violated`` health flag: a certificate and an attack that contradict each other.

A curve with a certified row (``robustness_curve(..., certify=...)``) holds both bounds of the
same model on the same samples: the attacks' worst case is an upper bound on the robust
accuracy, the certificates a lower bound. A sample certified at eps by a bound method (IBP,
CROWN, MILP) provably keeps its class in the whole eps-ball, so no attack may break it at eps
or at any smaller eps; the balls are nested and a broken sample counts as broken at every
larger eps, so "broken at eps or below" is "not robust in the worst case at eps". If it
happens, one of the two is wrong (a bug in the bounds, or an attack reporting an example
outside its ball): the flag is an error, never silent.

Randomized smoothing certifies the smoothed classifier, another classifier than the one the
attacks attack; its certificates say nothing about the base model's adversarial examples, and
the flag passes with a note saying so.

References:
    Gowal et al., "On the Effectiveness of Interval Bound Propagation for Training Verifiably
    Robust Models", arXiv:1810.12715, 2018 (certified vs attacked accuracy side by side).
    Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized Smoothing",
    ICML 2019.
"""

from __future__ import annotations

from robustbench_local.curve import Curve
from robustbench_local.health import Flag, failed, passed

CERTIFICATE_VIOLATED = "certificate_violated"


def check_certificates(curve: Curve) -> Flag:
    """Fire (severity error) where a sample certified at eps is broken by an attack at eps.

    Args:
        curve: A curve with a certified row (:attr:`Curve.certified`).

    Returns:
        A passed flag (also for smoothing, with a note, and without a certified row), or a
        failed one with severity ``"error"`` listing the eps and the sample ids.
    """
    cert = curve.certified
    name = CERTIFICATE_VIOLATED
    if cert is None:
        return passed(name, "no certified row in this curve")
    if cert.certifies != "the model":
        return passed(
            name,
            f"{cert.label} certifies {cert.certifies}, not the model the attacks attack: its "
            "certificates and the attacks' examples are not compared",
        )
    broken = ~curve.worst_case_robust()
    clash = cert.certified & broken
    if not bool(clash.any()):
        return passed(name, f"no sample certified by {cert.method} is broken by an attack")
    where = {
        f"{float(e):g}": curve.indices[clash[k]].tolist()
        for k, e in enumerate(curve.eps.tolist())
        if bool(clash[k].any())
    }
    first = next(iter(where))
    return failed(
        name,
        "error",
        f"{int(clash.any(0).sum())} sample(s) certified by {cert.method} are broken by an attack "
        f"in the same ball (e.g. eps {first}: dataset ids {where[first][:5]}): a certificate "
        "and an attack contradict each other, so one of them is wrong",
        "report it: check the model is in eval mode and deterministic and that the attacks and "
        "the certificate use the same bounds and norm; until resolved, trust neither number",
        samples=where,
        method=cert.method,
    )


__all__ = ["CERTIFICATE_VIOLATED", "check_certificates"]
