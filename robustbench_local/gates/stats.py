"""Statistics of the gates: binomial confidence bounds, the exact McNemar test, Holm's correction.

:func:`mean_bounds` extends the binomial bounds to a mean of per-sample averages in [0, 1]
(the corruption rows: N samples, each averaged over its corruptions and severities).

This is the project's one Wilson score interval: the gates use its one-sided bounds
(:func:`wilson_bounds`), the benchmark's model cards its two-sided interval
(:func:`wilson_interval`, which is ``wilson_bounds(k, n, (1 + confidence) / 2)``).

scipy is imported inside the functions, so importing this module stays cheap.

References:
    Wilson, "Probable inference, the law of succession, and statistical inference", JASA 1927.
    Clopper & Pearson, "The use of confidence or fiducial limits illustrated in the case of the
    binomial", Biometrika 1934.
    McNemar, "Note on the sampling error of the difference between correlated proportions or
    percentages", Psychometrika 1947.
    Liu, Hsueh, Hsieh & Chen, "Tests for equivalence or non-inferiority for paired binary data",
    Statistics in Medicine 2002 (the margin-shifted conditional test).
    Holm, "A simple sequentially rejective multiple test procedure", Scand. J. Statistics 1979.
    Hoeffding, "Probability inequalities for sums of bounded random variables", JASA 1963
    (bounds on means of [0, 1] variables: :func:`mean_bounds`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from robustbench_local.gates.errors import GateConfigError

METHODS = ("wilson", "clopper-pearson")
_METHOD_ALIASES = {"cp": "clopper-pearson", "exact": "clopper-pearson"}


def check_counts(k: int, n: int) -> None:
    """Check that ``k`` successes out of ``n`` trials is a valid binomial count.

    Raises:
        TypeError: ``k`` or ``n`` is not an integer (booleans are refused).
        ValueError: ``n < 1`` or ``k`` outside ``[0, n]``.
    """
    for name, v in (("k", k), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be an integer count, got {v!r}")
    if n < 1 or not 0 <= k <= n:
        raise ValueError(
            f"need 0 <= k <= n and n >= 1 (k successes out of n trials), got k={k}, n={n}"
        )


def check_confidence(confidence: Any) -> float:
    """A one-sided confidence level in [0.5, 1) as a float.

    Raises:
        GateConfigError: Not a number, or outside [0.5, 1).
    """
    if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real):
        raise GateConfigError(f"confidence must be a number such as 0.95, got {confidence!r}")
    c = float(confidence)
    if not 0.5 <= c < 1.0:
        raise GateConfigError(
            f"confidence must be in [0.5, 1) (a probability, e.g. 0.95 for 95%), got {confidence}"
        )
    return c


def check_method(value: Any, key: str = "method") -> str:
    """``"wilson"`` or ``"clopper-pearson"`` (``"cp"``, ``"exact"`` and ``_`` spellings accepted).

    Raises:
        GateConfigError: Not a string, or an unknown method.
    """
    if not isinstance(value, str) or not value:
        raise GateConfigError(f"{key} must be a non-empty string, got {value!r}")
    v = value.lower().replace("_", "-")
    v = _METHOD_ALIASES.get(v, v)
    if v not in METHODS:
        raise GateConfigError(f"{key} must be one of {', '.join(METHODS)}; got {value!r}")
    return v


def _wilson(k: int, n: int, z: float) -> tuple[float, float]:
    return _wilson_fraction(k / n, n, z)


def wilson_bounds(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """One-sided Wilson score bounds for a binomial proportion.

    Each bound holds on its own at level ``confidence``: ``P(p < lower) <= 1 - confidence``
    (approximately) and likewise for ``upper``. Together they form a two-sided interval at
    level ``2 * confidence - 1``: ``wilson_bounds(k, n, 0.975)`` is the two-sided 95% interval
    (see :func:`wilson_interval`).

    Args:
        k: Successes (robust samples).
        n: Trials (evaluated samples).
        confidence: One-sided confidence level, e.g. 0.95.

    Returns:
        ``(lower, upper)`` in [0, 1].

    References:
        Wilson, "Probable inference, the law of succession, and statistical inference", 1927.
    """
    from scipy.stats import norm

    check_counts(k, n)
    return _wilson(k, n, float(norm.ppf(check_confidence(confidence))))


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided Wilson score interval (default 95%) of a binomial proportion, in [0, 1].

    The same as ``wilson_bounds(successes, n, (1 + confidence) / 2)``: both one-sided bounds
    at ``(1 + confidence) / 2`` leave ``(1 - confidence) / 2`` on each side.

    Args:
        successes: Successes (e.g. robust samples).
        n: Trials.
        confidence: Two-sided confidence level in (0, 1), e.g. 0.95.

    Returns:
        ``(lower, upper)``.

    Raises:
        TypeError: Counts that are not integers.
        ValueError: ``n < 1``, ``successes`` outside ``[0, n]``, or ``confidence`` outside (0, 1).

    References:
        Wilson, "Probable inference, the law of succession, and statistical inference", 1927.
    """
    if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real):
        raise TypeError(f"confidence must be a number such as 0.95, got {confidence!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95 for 95%; got {confidence}")
    return wilson_bounds(successes, n, (1.0 + float(confidence)) / 2.0)


def clopper_pearson_bounds(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """One-sided exact (Clopper-Pearson) bounds for a binomial proportion.

    Args:
        k: Successes (robust samples).
        n: Trials (evaluated samples).
        confidence: One-sided confidence level, e.g. 0.95.

    Returns:
        ``(lower, upper)``; each bound is exact-conservative at level ``confidence``.

    References:
        Clopper & Pearson, "The use of confidence or fiducial limits illustrated in the case of
        the binomial", Biometrika 1934.
    """
    check_counts(k, n)
    return _clopper_pearson(k, n, 1.0 - check_confidence(confidence))


def _clopper_pearson(k: float, n: int, alpha: float) -> tuple[float, float]:
    """The exact one-sided bounds at error ``alpha`` (``k`` may be fractional)."""
    from robustbench_local.certify.smoothing_stats import (
        clopper_pearson_lower,
        clopper_pearson_upper,
    )

    return float(clopper_pearson_lower(k, n, alpha)), float(clopper_pearson_upper(k, n, alpha))


def accuracy_bounds(
    k: int, n: int, confidence: float = 0.95, method: str = "wilson"
) -> tuple[float, float]:
    """One-sided bounds with ``method`` ``"wilson"`` or ``"clopper-pearson"``."""
    method = check_method(method)
    if method == "wilson":
        return wilson_bounds(k, n, confidence)
    return clopper_pearson_bounds(k, n, confidence)


def mean_bounds(
    mean: float, n: int, confidence: float = 0.95, method: str = "wilson"
) -> tuple[float, float]:
    """One-sided bounds on the mean of ``n`` independent per-sample averages in [0, 1].

    What a gate's corruption rows use: each of the ``n`` samples has an accuracy averaged over
    its C corruptions x S severities (``a_i`` in [0, 1]), and the mean corruption accuracy is
    the mean of the ``a_i``. The C x S cells of one sample are not independent (a digit the
    model misreads stays misread under most corruptions), so the sample size of the bound is
    ``n``, not ``C * S * n``: counting every corrupted image as a trial would narrow the
    interval by up to ``sqrt(C * S)`` (8.7 for MNIST-C's 15 x 5) and let noise decide the
    verdict. The bounds are the binomial bounds of ``method`` at ``k = n * mean`` successes
    (fractional ``k``): a variable in [0, 1] with mean ``p`` has variance at most
    ``p (1 - p)``, the Bernoulli variance, and among such variables the Bernoulli is the
    extreme case of the convex order (Hoeffding 1963), so treating the ``n`` averages as ``n``
    Bernoulli trials with the same mean is conservative (up to the approximation each method
    already makes). With one cell per sample (C = S = 1) ``k`` is an integer and these are
    exactly :func:`accuracy_bounds`.

    Args:
        mean: The mean of the per-sample averages, in [0, 1].
        n: The number of samples.
        confidence: One-sided confidence level, e.g. 0.95.
        method: ``"wilson"`` or ``"clopper-pearson"``.

    Returns:
        ``(lower, upper)`` in [0, 1].

    Raises:
        ValueError: ``n < 1`` or ``mean`` outside [0, 1].

    References:
        Hoeffding, "Probability inequalities for sums of bounded random variables", JASA 1963.
    """
    from scipy.stats import norm

    method = check_method(method)
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n must be a positive integer count of samples, got {n!r}")
    if not 0.0 <= float(mean) <= 1.0:
        raise ValueError(f"mean must be in [0, 1] (an average accuracy), got {mean}")
    c = check_confidence(confidence)
    k = float(mean) * n
    if method == "wilson":
        z = float(norm.ppf(c))
        return _wilson_fraction(float(mean), n, z)
    return _clopper_pearson(k, n, 1.0 - c)


def _wilson_fraction(p: float, n: int, z: float) -> tuple[float, float]:
    """Wilson bounds at the observed proportion ``p`` of ``n`` trials (``p`` may be k/n)."""
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def mcnemar_drop_pvalue(losses: int, gains: int, n: int, margin: float = 0.0) -> float:
    """One-sided exact McNemar p-value for "accuracy dropped by more than ``margin``".

    On paired outcomes (same samples, baseline vs. now) only the discordant pairs carry
    information: ``losses`` (robust before, broken now) and ``gains`` (the reverse). With
    ``margin = 0`` this is the exact McNemar test, ``P(Binom(m, 1/2) >= losses)`` with
    ``m = losses + gains``. With a margin ``d > 0`` the null hypothesis is "the drop is at most
    ``d``"; conditional on ``m`` its boundary puts the loss probability of a discordant pair at
    ``1/2 + d n / (2 m)`` (the discordance rate estimated by ``m / n``), which gives
    ``P(Binom(m, 1/2 + d n / (2 m)) >= losses)``; when ``m <= d n`` no outcome can show such a
    drop and the p-value is 1.

    Args:
        losses: Samples robust in the baseline and not now.
        gains: Samples not robust in the baseline and robust now.
        n: Paired samples in total.
        margin: The tolerated drop in accuracy (a fraction, ``0 <= margin < 1``).

    Returns:
        The p-value in [0, 1].

    References:
        McNemar, Psychometrika 1947; Liu et al., Statistics in Medicine 2002.
    """
    from scipy.stats import binom

    check_counts(losses + gains, n)
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must be in [0, 1), got {margin}")
    m = losses + gains
    if m == 0 or losses == 0:
        return 1.0
    theta = 0.5 + margin * n / (2.0 * m)
    if theta >= 1.0:
        return 1.0
    return float(min(1.0, binom.sf(losses - 1, m, theta)))


def holm_adjust(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (reject ``H_i`` at level alpha iff ``adj_i <= alpha``).

    References:
        Holm, "A simple sequentially rejective multiple test procedure", 1979.
    """
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


__all__ = [
    "METHODS",
    "accuracy_bounds",
    "check_confidence",
    "check_counts",
    "check_method",
    "clopper_pearson_bounds",
    "holm_adjust",
    "mcnemar_drop_pvalue",
    "mean_bounds",
    "wilson_bounds",
    "wilson_interval",
]
