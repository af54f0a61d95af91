"""robustness_curve(..., certify=...): the certified row beside the empirical curve."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import attacks
import robustbench_local as rbl
from robustbench_local.checks.certificates import CERTIFICATE_VIOLATED, check_certificates

EPS = [0.01, 0.03, 0.06]
QUICK = {"steps": 10, "n_target_classes": 2, "square_queries": 50, "eot_samples": 2}


@pytest.fixture(scope="module")
def curve(digits, digits_model):
    x, y = digits
    return rbl.robustness_curve(
        digits_model, (x[1200:1300], y[1200:1300]), ["pgd"], EPS, certify="crown",
        progress=False, reference=rbl.standard_suite(**QUICK),
    )  # fmt: skip


def test_the_certified_row_is_a_lower_bound_beside_the_worst_case(curve):
    cert = curve.certified
    assert cert is not None and cert.method == "crown" and cert.norm == "linf"
    assert torch.equal(cert.indices, curve.indices)
    assert torch.equal(cert.eps, curve.eps)
    # certified samples are a subset of the samples no attack broke
    assert not (cert.certified & ~curve.worst_case_robust()).any()
    assert (cert.accuracy <= curve.worst_case() + 1e-12).all()
    assert cert.accuracy[0] > 0  # a small ball certifies something on this model
    flag = next(h for h in curve.health if h.name == CERTIFICATE_VIOLATED)
    assert flag.ok
    table = curve.table()
    assert "certified (crown)" in table and "lies between it and the worst case" in table


def test_the_certified_row_round_trips_through_json(curve, tmp_path):
    back = rbl.Curve.from_dict(curve.to_dict())
    assert torch.equal(back.certified.certified, curve.certified.certified)
    assert back.certified.method == "crown"
    curve.plot(tmp_path / "band.png")
    assert (tmp_path / "band.png").stat().st_size > 0


def test_a_certified_sample_broken_by_an_attack_is_an_error_flag(curve):
    cert = curve.certified
    wrong = cert.certified.clone()
    broken = ~curve.worst_case_robust()
    sample = int(broken[-1].nonzero()[0])  # broken at the largest eps
    wrong[:, sample] = True  # a (wrong) certificate at every eps
    flag = check_certificates(dataclasses.replace(curve, certified=dataclasses.replace(
        cert, certified=wrong)))  # fmt: skip
    assert not flag.ok and flag.severity == "error"
    assert int(curve.indices[sample]) in flag.details["samples"][f"{EPS[-1]:g}"]
    assert "contradict" in flag.message


def test_smoothing_certifies_another_classifier_and_says_so(digits, digits_model):
    x, y = digits
    l2 = rbl.robustness_curve(
        digits_model, (x[1200:1230], y[1200:1230]), {"pgd": attacks.create("pgd", norm="l2")},
        [0.1, 0.25], certify={"method": "smoothing", "sigma": 0.25, "n0": 20, "n": 200},
        progress=False, reference=False, checks=False,
    )  # fmt: skip
    assert l2.certified.certifies == "the smoothed classifier"
    assert "not a bound on this model's robust accuracy" in l2.table()
    flag = next(h for h in l2.health if h.name == CERTIFICATE_VIOLATED)
    assert flag.ok and "not compared" in flag.message


def test_bad_certify_arguments(digits, digits_model):
    x, y = digits
    data = (x[1200:1210], y[1200:1210])
    kw = {"progress": False, "reference": False, "checks": False}
    with pytest.raises(ValueError, match="certify must be a method name"):
        rbl.robustness_curve(digits_model, data, ["fgsm"], [0.1], certify={"sigma": 1}, **kw)
    with pytest.raises(ValueError, match="smoothing certifies l2"):
        rbl.robustness_curve(digits_model, data, ["fgsm"], [0.1], certify="smoothing", **kw)
    with pytest.raises(ValueError, match=r"Unknown certification method 'magic'\. Known"):
        rbl.robustness_curve(digits_model, data, ["fgsm"], [0.1], certify="magic", **kw)


def test_the_certified_row_resumes_from_the_state(digits, digits_model, tmp_path):
    x, y = digits
    data = (x[1200:1260], y[1200:1260])
    kw = {"progress": False, "reference": False, "checks": False, "batch_size": 20}
    first = rbl.robustness_curve(digits_model, data, ["fgsm"], EPS, certify="ibp",
                                 state_dir=tmp_path, **kw)  # fmt: skip
    again = rbl.robustness_curve(digits_model, data, ["fgsm"], EPS, certify="ibp",
                                 state_dir=tmp_path, **kw)  # fmt: skip
    assert torch.equal(again.certified.certified, first.certified.certified)
    assert again.certified.cost.n_forward == 0  # everything came from the state
    assert (tmp_path / "certify" / "manifest.json").exists()
