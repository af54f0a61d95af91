"""Feature-squeezing detection (Xu et al. 2018)."""

from __future__ import annotations

import pytest
import torch

import attacks
from defenses.denoising import BitDepth
from defenses.detection import FeatureSqueezing


def test_detection_rate_exceeds_fpr_on_fgsm(digits_model, digits):
    """2-bit depth squeezing on 8x8 digits (a 2x2 median destroys such small images)."""
    x, y = digits
    detector = FeatureSqueezing(digits_model, [("bit_depth", {"bits": 2})], fpr=0.1)
    detector.fit(x[1200:1500])
    x_test, y_test = x[1500:1700], y[1500:1700]
    res = attacks.create("fgsm")(digits_model, x_test, y_test, eps=0.1)
    report = detector.report(x_test, res.x_adv, y_test)
    assert report["fpr"] < 0.25  # fitted for 0.1 on other clean data
    assert report["detection_rate"] > report["fpr"] + 0.3
    assert report["detection_rate_successful"] > report["fpr"] + 0.3
    assert report["roc_auc"] > 0.8
    flags = detector.detect(res.x_adv)
    assert flags.dtype == torch.bool and flags.shape == (200,)
    assert detector.detection_rate(res.x_adv) == pytest.approx(report["detection_rate"])


def test_threshold_matches_target_fpr_on_fitting_data(digits_model, digits):
    x, _ = digits
    det = FeatureSqueezing(digits_model, [BitDepth(1)], fpr=0.05).fit(x[:400])
    scores = det.score(x[:400])
    assert float(scores.min()) >= 0 and float(scores.max()) <= 2
    assert float((scores > det.threshold).float().mean()) <= 0.05


def test_bad_input(digits_model):
    with pytest.raises(ValueError, match=r"Unknown squeezer 'blur'.*bit_depth"):
        FeatureSqueezing(digits_model, ["blur"])
    with pytest.raises(ValueError, match="fpr must be in"):
        FeatureSqueezing(digits_model, fpr=0)
    with pytest.raises(ValueError, match="at least one squeezer"):
        FeatureSqueezing(digits_model, [])
    with pytest.raises(RuntimeError, match="call fit"):
        FeatureSqueezing(digits_model).detect(torch.rand(2, 1, 8, 8))
