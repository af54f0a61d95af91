"""The statistics of randomized smoothing: confidence bounds, radii, tests and look schedules.

Pure NumPy/SciPy functions on class counts, vectorised over samples; the Monte-Carlo sampling
lives in :mod:`robustbench_local.certify.smoothing_noise` and the procedures in
:mod:`robustbench_local.certify.smoothing`.

References:
    Clopper & Pearson, "The use of confidence or fiducial limits illustrated in the case of the
    binomial", Biometrika 1934 (the exact binomial bounds, here through the Beta quantiles).
    Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized Smoothing",
    ICML 2019, arXiv:1902.02918 (Theorem 1: the radius ``sigma * Phi^-1(p_A)``; CERTIFY's
    one-sided bound and PREDICT's binomial test).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import beta, binomtest, norm

FIRST_LOOK = 512
"""Sample count of the first look of the early-stopping schedule (two noise blocks)."""

LOOK_RATIO = 2
"""Growth factor of the geometric early-stopping schedule."""


def _counts(k: ArrayLike, n: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """``k`` and ``n`` as broadcast float arrays."""
    k_arr, n_arr = np.broadcast_arrays(np.asarray(k, dtype=np.float64), np.asarray(n, float))
    return k_arr, n_arr


def clopper_pearson_lower(k: ArrayLike, n: ArrayLike, alpha: float) -> np.ndarray:
    """One-sided ``1 - alpha`` lower confidence bound on a binomial proportion.

    The exact (Clopper-Pearson) bound: the ``alpha`` quantile of ``Beta(k, n - k + 1)``, 0 when
    ``k = 0``; ``alpha ** (1 / n)`` when ``k = n``.

    Args:
        k: Successes (class counts), any shape.
        n: Trials, broadcastable against ``k``.
        alpha: Error probability in (0, 1).

    Returns:
        Float64 array of the bounds, the broadcast shape of ``k`` and ``n``.

    References:
        Clopper & Pearson, Biometrika 1934.

    """
    k_arr, n_arr = _counts(k, n)
    out = np.zeros(k_arr.shape)
    pos = k_arr > 0
    out[pos] = beta.ppf(alpha, k_arr[pos], n_arr[pos] - k_arr[pos] + 1)
    return out


def clopper_pearson_upper(k: ArrayLike, n: ArrayLike, alpha: float) -> np.ndarray:
    """One-sided ``1 - alpha`` upper confidence bound on a binomial proportion (1 when ``k = n``).

    References:
        Clopper & Pearson, Biometrika 1934.
    """
    k_arr, n_arr = _counts(k, n)
    out = np.ones(k_arr.shape)
    below = k_arr < n_arr
    out[below] = beta.ppf(1.0 - alpha, k_arr[below] + 1, n_arr[below] - k_arr[below])
    return out


def smoothing_radius(p_lower: ArrayLike, sigma: float) -> np.ndarray:
    """The certified l2 radius ``sigma * Phi^-1(p_lower)``, 0 where ``p_lower <= 1/2`` (abstain).

    References:
        Cohen, Rosenfeld & Kolter, ICML 2019, Theorem 1 (with ``p_B = 1 - p_A``).
    """
    p = np.asarray(p_lower, dtype=np.float64)
    out = np.zeros(p.shape)
    above = p > 0.5
    out[above] = sigma * norm.ppf(p[above])
    return out


def ceiling_radius(p_upper: ArrayLike, sigma: float) -> np.ndarray:
    """``sigma * Phi^-1(p_upper)``, ``-inf`` where ``p_upper <= 1/2`` (not even radius 0)."""
    p = np.asarray(p_upper, dtype=np.float64)
    out = np.full(p.shape, -np.inf)
    above = p > 0.5
    out[above] = sigma * norm.ppf(p[above])
    return out


def binomial_pvalues(k_top: ArrayLike, k_second: ArrayLike) -> np.ndarray:
    """Two-sided p-values of ``k_top`` successes in ``k_top + k_second`` trials against 1/2.

    PREDICT's test (Cohen et al. 2019, Algorithm 1), with ``scipy.stats.binomtest``
    (``binom_test`` is gone from SciPy).
    """
    tops = np.asarray(k_top, dtype=np.int64).ravel()
    seconds = np.asarray(k_second, dtype=np.int64).ravel()
    values = [binomtest(int(a), int(a + b), 0.5).pvalue for a, b in zip(tops, seconds, strict=True)]
    return np.asarray(values, dtype=np.float64).reshape(np.shape(k_top))


def look_schedule(n: int, first: int = FIRST_LOOK, ratio: int = LOOK_RATIO) -> list[int]:
    """Sample counts of the early-stopping looks: ``first * ratio**t`` below ``n``, then ``n``."""
    looks: list[int] = []
    m = first
    while m < n:
        looks.append(m)
        m *= ratio
    return [*looks, n]


def look_levels(alpha: float, n_looks: int) -> list[float]:
    """Error levels of the looks (Bonferroni): half of ``alpha`` on the last, half shared.

    They sum to ``alpha``. The last look (the full ``n``) keeps ``alpha / 2`` so the samples
    that need every draw lose little against the fixed-``n`` procedure; the earlier looks share
    the other half equally. One look gets all of ``alpha``.
    """
    if n_looks == 1:
        return [alpha]
    early = alpha / (2 * (n_looks - 1))
    return [early] * (n_looks - 1) + [alpha / 2]


__all__ = [
    "FIRST_LOOK",
    "LOOK_RATIO",
    "binomial_pvalues",
    "ceiling_radius",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "look_levels",
    "look_schedule",
    "smoothing_radius",
]
