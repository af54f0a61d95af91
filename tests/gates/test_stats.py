"""Statistics of the gates: one-sided bounds, the two-sided Wilson interval, McNemar and Holm."""

from __future__ import annotations

import math

import pytest
from scipy.stats import binom, binomtest

from robustbench_local.gates import (
    accuracy_bounds,
    clopper_pearson_bounds,
    holm_adjust,
    mcnemar_drop_pvalue,
    wilson_bounds,
    wilson_interval,
)

# ---------------------------------------------------------------------------------- bounds


@pytest.mark.parametrize("n", [20, 100, 500])
def test_clopper_pearson_closed_forms_at_the_extremes(n):
    alpha = 0.05
    lo0, hi0 = clopper_pearson_bounds(0, n, 0.95)
    assert lo0 == 0.0
    assert hi0 == pytest.approx(1 - alpha ** (1 / n))
    lo_n, hi_n = clopper_pearson_bounds(n, n, 0.95)
    assert hi_n == 1.0
    assert lo_n == pytest.approx(alpha ** (1 / n))


def _miss_probability(bound_fn, p: float, n: int, side: str) -> float:
    """Exact P(bound excludes the true p) under Binomial(n, p)."""
    total = 0.0
    for k in range(n + 1):
        lo, hi = bound_fn(k, n, 0.95)
        if (side == "lower" and lo > p) or (side == "upper" and hi < p):
            total += binom.pmf(k, n, p)
    return total


@pytest.mark.parametrize("p", [0.3, 0.7, 0.9])
@pytest.mark.parametrize("side", ["lower", "upper"])
def test_one_sided_bounds_have_their_coverage(p, side):
    n = 150
    # Clopper-Pearson is exact-conservative; Wilson is close to nominal.
    assert _miss_probability(clopper_pearson_bounds, p, n, side) <= 0.05 + 1e-12
    assert _miss_probability(wilson_bounds, p, n, side) <= 0.075


def test_wilson_matches_the_score_interval_and_is_monotone():
    lo, hi = wilson_bounds(80, 100, 0.95)
    z = 1.6448536269514722
    # The Wilson bounds solve |p_hat - p| = z sqrt(p (1 - p) / n).
    for b in (lo, hi):
        assert abs(0.8 - b) == pytest.approx(z * math.sqrt(b * (1 - b) / 100), rel=1e-9)
    lows = [wilson_bounds(k, 50, 0.95)[0] for k in range(51)]
    assert lows == sorted(lows)
    assert wilson_bounds(0, 50)[0] == 0.0
    assert wilson_bounds(50, 50)[1] == 1.0


def test_higher_confidence_widens_the_interval():
    lo90, hi90 = accuracy_bounds(70, 100, 0.90, "clopper-pearson")
    lo99, hi99 = accuracy_bounds(70, 100, 0.99, "clopper-pearson")
    assert lo99 < lo90 < 0.7 < hi90 < hi99
    for (lo, hi), two_sided in (((lo90, hi90), 0.80), ((lo99, hi99), 0.98)):
        exact = binomtest(70, 100).proportion_ci(confidence_level=two_sided, method="exact")
        assert (lo, hi) == pytest.approx((exact.low, exact.high), abs=1e-12)


@pytest.mark.parametrize(
    ("k", "n", "confidence", "error"),
    [
        (5, 0, 0.95, ValueError),
        (6, 5, 0.95, ValueError),
        (1.5, 5, 0.95, TypeError),
        (1, 5, 1.0, ValueError),
    ],
)
def test_bounds_reject_bad_input(k, n, confidence, error):
    with pytest.raises(error):
        wilson_bounds(k, n, confidence)


# ---------------------------------------------------------------------------------- paired tests


@pytest.mark.parametrize(("losses", "gains"), [(10, 2), (5, 5), (0, 4), (30, 12), (1, 0)])
def test_mcnemar_without_margin_is_the_exact_binomial_test(losses, gains):
    expected = binomtest(losses, losses + gains, 0.5, alternative="greater").pvalue
    if losses == 0:
        expected = 1.0
    assert mcnemar_drop_pvalue(losses, gains, 200) == pytest.approx(expected)


def test_mcnemar_margin_makes_the_test_stricter():
    p0 = mcnemar_drop_pvalue(20, 4, 500, 0.0)
    p1 = mcnemar_drop_pvalue(20, 4, 500, 0.01)
    p2 = mcnemar_drop_pvalue(20, 4, 500, 0.02)
    assert p0 < p1 < p2
    assert p0 == pytest.approx(binomtest(20, 24, 0.5, alternative="greater").pvalue)
    # At margin d the loss probability of a discordant pair is 1/2 + d n / (2 m).
    assert p1 == pytest.approx(binom.sf(19, 24, 0.5 + 0.01 * 500 / 48))
    assert p2 == pytest.approx(binom.sf(19, 24, 0.5 + 0.02 * 500 / 48))
    # 24 discordant pairs cannot show a drop larger than 0.05 * 500 = 25 samples.
    assert mcnemar_drop_pvalue(24, 0, 500, 0.05) == 1.0
    assert mcnemar_drop_pvalue(0, 0, 500) == 1.0


def test_mcnemar_margin_false_alarm_rate_at_the_margin():
    # Paired outcomes whose true drop equals the margin must not be flagged more than ~alpha.
    n, margin, p_loss, p_gain = 400, 0.02, 0.05, 0.03
    p_none = 1 - p_loss - p_gain
    rate = 0.0
    for losses in range(0, 60):
        for gains in range(0, 45):
            prob = math.comb(n, losses) * math.comb(n - losses, gains)
            prob *= p_loss**losses * p_gain**gains * p_none ** (n - losses - gains)
            if prob > 1e-12 and mcnemar_drop_pvalue(losses, gains, n, margin) <= 0.05:
                rate += prob
    assert rate <= 0.07


def test_holm_adjustment_known_example():
    adjusted = holm_adjust([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjust([]) == []
    assert holm_adjust([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_one_sided_bounds_agree_with_scipy_two_sided_intervals():
    # One-sided bounds at level c are the ends of the two-sided interval at level 2c - 1.
    for k, n in [(70, 100), (3, 40), (199, 200)]:
        exact = binomtest(k, n).proportion_ci(confidence_level=0.80, method="exact")
        assert accuracy_bounds(k, n, 0.90, "clopper-pearson") == pytest.approx(
            (exact.low, exact.high), abs=1e-12
        )
        score = binomtest(k, n).proportion_ci(confidence_level=0.90, method="wilson")
        assert wilson_bounds(k, n, 0.95) == pytest.approx((score.low, score.high), abs=1e-12)


def test_wilson_interval_is_the_two_sided_interval():
    # The benchmark's model cards use the two-sided 95% interval (known values: 5 of 10, 0 of 10).
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4)
    assert hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0
    assert hi == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(37, 80, 0.9) == wilson_bounds(37, 80, 0.95)
    score = binomtest(37, 80).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(37, 80) == pytest.approx((score.low, score.high), abs=1e-12)


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((11, 10), ValueError, "successes"),
        ((1, 10, 1.0), ValueError, r"confidence must be in \(0, 1\)"),
        ((1, 10, 0.0), ValueError, r"confidence must be in \(0, 1\)"),
        ((1, 10, "95%"), TypeError, "confidence must be a number"),
        ((1.0, 10), TypeError, "integer count"),
    ],
)
def test_wilson_interval_rejects_bad_input(args, error, message):
    with pytest.raises(error, match=message):
        wilson_interval(*args)
