"""Randomized smoothing: certify and predict with the Gaussian-smoothed classifier.

The smoothed classifier ``g(x) = argmax_c P(f(x + e) = c)``, ``e ~ N(0, sigma^2 I)``, of a base
classifier ``f`` keeps its class in the l2 ball of radius ``sigma * Phi^-1(p_A)`` around ``x``
whenever its top class has probability at least ``p_A > 1/2`` (Cohen et al. 2019, Theorem 1).
``p_A`` is bounded by Monte Carlo, as in the paper:

* CERTIFY (:class:`RandomizedSmoothing`, registered as ``"smoothing"``): ``n0`` draws pick the
  top class ``c_A``; ``n`` fresh draws count it; the one-sided Clopper-Pearson lower bound
  ``p_lower`` at level ``alpha`` gives the radius ``sigma * Phi^-1(p_lower)``; it abstains when
  ``p_lower <= 1/2``. A sample is certified at ``eps`` iff it does not abstain, ``c_A`` is its
  label and the radius is at least ``eps``; each certificate holds with probability
  ``1 - alpha`` over the noise.
* PREDICT (:func:`smoothed_predict`): ``n`` draws; the top class, unless the two-sided binomial
  test of its count against the runner-up's does not reject equality at level ``alpha``
  (abstain, ``-1``). A returned class differs from ``g(x)`` with probability at most ``alpha``.

The noise of a sample is a pure function of (seed, sample id): see
:mod:`~robustbench_local.certify.smoothing_noise`.

Early stopping (``early_stop=True``; off by default, so the paper's procedure is the default).
Certification on a grid of radii only needs each sample's verdict at every radius of the grid,
and most samples settle long before ``n`` draws. The estimation draws are then looked at after
``m_1 < m_2 < ... < m_T = n`` draws (a geometric schedule fixed in advance,
:func:`~robustbench_local.certify.smoothing_stats.look_schedule`), with the level ``alpha`` split
over the looks, ``sum_t alpha_t = alpha`` (Bonferroni; half on the last look,
:func:`~robustbench_local.certify.smoothing_stats.look_levels`). At look ``t`` the bound
``L_t`` is the Clopper-Pearson lower bound of the first ``m_t`` draws at level ``alpha_t``. Why
this is valid: each ``L_t`` alone is a valid lower bound for its fixed ``m_t``, so by the union
bound ``P(L_t <= p_A for every t) >= 1 - alpha``; on that event every radius computed from
``max_t L_t`` over whichever looks were made is certified, whatever rule (depending on the
data) decided when to stop. A sample stops once, at every radius ``eps`` of the grid, either it
is certified (``max_t L_t`` reaches ``Phi(eps / sigma)``, which later draws cannot undo) or it
is hopeless (the upper Clopper-Pearson bound at level ``alpha_t`` is below ``Phi(eps /
sigma)``, or even ``n`` draws all of class ``c_A`` could not reach it). Stopping a hopeless
radius early only ever loses certificates, never makes a false one. A sample whose selected
class ``c_A`` is not its label is settled after the ``n0`` selection draws (it is certified at
no radius). The reported radius is then a valid certified radius, but a smaller one than ``n``
draws would give: read the grid.

References:
    Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized Smoothing",
    ICML 2019, arXiv:1902.02918 (CERTIFY and PREDICT, Algorithm 1; Theorem 1).
    Clopper & Pearson, "The use of confidence or fiducial limits illustrated in the case of
    the binomial", Biometrika 1934.
    Salman et al., "Provably Robust Deep Learning via Adversarially Trained Smoothed
    Classifiers", NeurIPS 2019, arXiv:1906.04584 (attacking the smoothed classifier: the
    tests check the certificates with their EOT attack).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from attacks.context import model_guard
from attacks.result import Cost
from attacks.validation import (
    check_bool,
    check_ids,
    check_inputs,
    check_logits,
    check_number,
    check_positive_int,
    parse_eps,
)
from robustbench_local.certify.base import CertifiedBatch, Certifier, register_certifier
from robustbench_local.certify.smoothing_noise import noise_counts
from robustbench_local.certify.smoothing_stats import (
    binomial_pvalues,
    ceiling_radius,
    clopper_pearson_lower,
    clopper_pearson_upper,
    look_levels,
    look_schedule,
    smoothing_radius,
)

DEFAULT_BATCH_SIZE = 1000
"""Noisy inputs per forward pass (a good size for small models on one CPU core)."""


def check_sigma(sigma: Any) -> float:
    """``sigma`` as a float if it is given and positive.

    Raises:
        ValueError: ``sigma`` is missing or not > 0 (the message says what to pass).
        TypeError: ``sigma`` is not a number.
    """
    if sigma is None:
        raise ValueError(
            "randomized smoothing needs the noise level: pass sigma= (the standard deviation "
            "of the Gaussian noise the model was trained with, e.g. sigma=0.25)"
        )
    return check_number("sigma", sigma, low_open=True)


def check_alpha(alpha: Any) -> float:
    """``alpha`` as a float in the open interval (0, 1)."""
    return check_number("alpha", alpha, high=1.0, low_open=True, high_open=True)


@dataclass(frozen=True)
class _Sampler:
    """The base classifier's class counts under noise, for one model, sigma and seed."""

    model: Callable[[Tensor], Tensor]
    sigma: float
    seed: int
    batch_size: int
    n_classes: int

    def counts(self, x: Tensor, ids: Tensor, stream: str, draws: tuple[int, int]) -> Tensor:
        """``[n, C]`` counts of draws ``[start, stop)`` of ``stream``."""
        return noise_counts(
            self.model,
            x,
            ids,
            sigma=self.sigma,
            seed=self.seed,
            stream=stream,
            draws=draws,
            n_classes=self.n_classes,
            batch_size=self.batch_size,
        )


@dataclass(frozen=True)
class _Estimate:
    """CERTIFY's per-sample outcome (NumPy, CPU)."""

    selected: np.ndarray  # int64 [n]: c_A
    p_lower: np.ndarray  # float64 [n]: lower bound on p_A (NaN when not estimated)
    n_noise: np.ndarray  # int64 [n]: noise draws spent (selection included)


def _clean_classes(model: Callable[[Tensor], Tensor], x: Tensor, labels: Sequence[Tensor]) -> int:
    """Check the model's clean outputs are logits (not probabilities); return the class count."""
    logits = model(x)
    check_logits(logits, x.shape[0], labels)
    return int(logits.shape[1])


def _certify_fixed(
    sm: _Sampler, x: Tensor, ids: Tensor, n0: int, n: int, alpha: float
) -> _Estimate:
    """CERTIFY with ``n`` estimation draws for every sample (Cohen et al., Algorithm 1)."""
    selected = sm.counts(x, ids, "select", (0, n0)).argmax(dim=1)
    hits = sm.counts(x, ids, "estimate", (0, n)).gather(1, selected[:, None]).squeeze(1)
    return _Estimate(
        selected.cpu().numpy(),
        clopper_pearson_lower(hits.cpu().numpy(), n, alpha),
        np.full(x.shape[0], n0 + n, dtype=np.int64),
    )


@dataclass(frozen=True)
class _Grid:
    """What early stopping checks a sample's verdicts against."""

    eps: np.ndarray  # float64 [K]: the radii
    sigma: float
    n: int  # draws of the last look
    final_level: float  # alpha of the last look

    def settled(self, hits: np.ndarray, m: int, level: float, best: np.ndarray) -> np.ndarray:
        """Samples whose verdict at every radius is final: certified, or hopeless.

        Args:
            hits: Draws of class ``c_A`` among the first ``m``.
            m: Draws made.
            level: Alpha of this look.
            best: The best lower bound so far (``max_t L_t``).
        """
        radius = np.where(best > 0.5, smoothing_radius(best, self.sigma), -np.inf)
        certified = radius[:, None] >= self.eps[None, :]
        ceiling = np.minimum(
            clopper_pearson_upper(hits, m, level),
            clopper_pearson_lower(hits + (self.n - m), self.n, self.final_level),
        )
        hopeless = ceiling_radius(ceiling, self.sigma)[:, None] < self.eps[None, :]
        return (certified | hopeless).all(axis=1)


def _certify_sequential(
    sm: _Sampler, x: Tensor, y: Tensor, ids: Tensor, settings: tuple[int, int, float, list[float]]
) -> _Estimate:
    """CERTIFY with early stopping on the grid (see the module docstring for why it is valid)."""
    n0, n, alpha, eps = settings
    selected = sm.counts(x, ids, "select", (0, n0)).argmax(dim=1)
    looks = look_schedule(n)
    levels = look_levels(alpha, len(looks))
    grid = _Grid(np.asarray(eps, dtype=np.float64), sm.sigma, n, levels[-1])
    hits = np.zeros(x.shape[0], dtype=np.int64)
    best = np.zeros(x.shape[0])
    used = np.zeros(x.shape[0], dtype=np.int64)
    active = (selected == y).cpu().numpy()  # a wrong c_A is certified at no radius: settled
    done = 0
    for m, level in zip(looks, levels, strict=True):
        rows = np.flatnonzero(active)
        if rows.size == 0:
            break
        idx = torch.as_tensor(rows, device=x.device)
        counts = sm.counts(x[idx], ids[idx], "estimate", (done, m))
        hits[rows] += counts.gather(1, selected[idx, None]).squeeze(1).cpu().numpy()
        used[rows] = m
        best[rows] = np.maximum(best[rows], clopper_pearson_lower(hits[rows], m, level))
        active[rows] = ~grid.settled(hits[rows], m, level, best[rows])
        done = m
    p_lower = np.where(used > 0, best, np.nan)
    return _Estimate(selected.cpu().numpy(), p_lower, used + n0)


def _certified_batch(
    est: _Estimate, y: Tensor, eps: list[float], sigma: float, cost: Cost
) -> CertifiedBatch:
    """The verdicts of CERTIFY's outcome on the grid, as tensors on ``y``'s device."""
    p = np.nan_to_num(est.p_lower, nan=0.0)
    estimated = ~np.isnan(est.p_lower)
    abstain = estimated & (p <= 0.5)
    prediction = np.where(abstain, -1, est.selected)
    correct = estimated & ~abstain & (est.selected == y.cpu().numpy())
    radius = np.where(correct, smoothing_radius(p, sigma), 0.0)
    certified = correct[None, :] & (radius[None, :] >= np.asarray(eps)[:, None])
    dev = y.device
    return CertifiedBatch(
        certified=torch.as_tensor(certified, device=dev),
        correct=torch.as_tensor(correct, device=dev),
        radius=torch.as_tensor(radius, device=dev),
        cost=cost,
        extra={
            "prediction": torch.as_tensor(prediction, dtype=torch.long, device=dev),
            "p_lower": torch.as_tensor(est.p_lower, device=dev),
            "n_noise": torch.as_tensor(est.n_noise, device=dev),
        },
    )


@register_certifier("smoothing")
class RandomizedSmoothing(Certifier):
    """Randomized smoothing's CERTIFY (Cohen et al. 2019) on an l2 radius grid.

    It certifies the smoothed classifier ``g``, not the base model. Per sample: the certified
    radius (0 when abstaining or wrong), certified at each ``eps`` of the grid iff correct and
    the radius is at least ``eps``; ``extra`` holds ``prediction`` (``c_A``, or -1 when
    abstaining), ``p_lower`` (NaN where early stopping skipped the estimate because ``c_A`` is
    wrong) and ``n_noise`` (noise draws spent). The cost counts every forward pass (the clean
    check and one per noise draw).

    Args:
        sigma: Noise standard deviation (required: the one the model was trained with).
        n0: Draws that select the top class (paper: 100).
        n: Draws that estimate its probability (paper: 100,000).
        alpha: Failure probability of each certificate (paper: 0.001).
        batch_size: Noisy inputs per forward pass (speed only: results do not depend on it).
        early_stop: Stop each sample once its verdict at every radius of the grid is settled
            at the overall level ``alpha`` (see the module docstring); default off.
        norm: ``"l2"`` (the only norm it certifies).
        bounds: Valid input range of the clean inputs (the noise is not clipped).

    Raises:
        ValueError: Missing or non-positive ``sigma``, ``n0 > n``, ``alpha`` outside (0, 1),
            a norm other than l2.

    References:
        Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized
        Smoothing", ICML 2019, arXiv:1902.02918.
        Clopper & Pearson, Biometrika 1934.

    Example:
        >>> cert = create_certifier("smoothing", sigma=0.25)
        >>> out = cert.certify_batch(model, x, y, ids, eps=[0.0, 0.25, 0.5], seed=0)

    """

    name = "smoothing"
    norms = ("l2",)
    certifies = "the smoothed classifier"

    def __init__(
        self,
        sigma: float | None = None,
        *,
        n0: int = 100,
        n: int = 100_000,
        alpha: float = 0.001,
        batch_size: int = DEFAULT_BATCH_SIZE,
        early_stop: bool = False,
        norm: str | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        super().__init__(norm, bounds)
        self.sigma = check_sigma(sigma)
        self.n0 = check_positive_int("n0", n0)
        self.n = check_positive_int("n", n)
        if self.n0 > self.n:
            raise ValueError(
                f"n0={n0} selection draws exceed the n={n} estimation draws; n0 is the small "
                "sample that picks the class (paper: n0=100, n=100000)"
            )
        self.alpha = check_alpha(alpha)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.early_stop = check_bool("early_stop", early_stop)

    def settings(self) -> dict[str, Any]:
        """``sigma``, ``n0``, ``n``, ``alpha``, ``early_stop`` (and the looks when on)."""
        out: dict[str, Any] = {
            "sigma": self.sigma,
            "n0": self.n0,
            "n": self.n,
            "alpha": self.alpha,
            "early_stop": self.early_stop,
        }
        if self.early_stop:
            out["looks"] = look_schedule(self.n)
        return out

    def certify_batch(
        self, model: nn.Module, x: Tensor, y: Tensor, ids: Tensor, eps: Sequence[float], seed: int
    ) -> CertifiedBatch:
        """Certify ``(x, y)`` (dataset ids ``ids``) at every l2 radius of ``eps``.

        Raises:
            ValueError: Bad inputs, labels, ids or eps; a model returning probabilities.
        """
        start = time.perf_counter()
        grid = parse_eps(eps)
        y = check_inputs(x, y, self.bounds)
        ids = check_ids(ids, x.shape[0], x.device)
        with model_guard(model), torch.no_grad():
            n_classes = _clean_classes(model, x, [y])
            sm = _Sampler(model, self.sigma, int(seed), self.batch_size, n_classes)
            if self.early_stop:
                est = _certify_sequential(sm, x, y, ids, (self.n0, self.n, self.alpha, grid))
            else:
                est = _certify_fixed(sm, x, ids, self.n0, self.n, self.alpha)
        cost = Cost(time.perf_counter() - start, x.shape[0] + int(est.n_noise.sum()), 0)
        return _certified_batch(est, y, grid, self.sigma, cost)


def smoothed_predict(
    model: nn.Module,
    x: Tensor,
    *,
    sigma: float | None = None,
    n: int = 100_000,
    alpha: float = 0.001,
    ids: Tensor | None = None,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> Tensor:
    """PREDICT of randomized smoothing: the smoothed classifier's class, or -1 (abstain).

    ``n`` noisy copies of each input are classified; the top class is returned unless the
    two-sided binomial test of its count against the runner-up's (``scipy.stats.binomtest``,
    p = 1/2) has a p-value above ``alpha``. A returned class differs from the smoothed
    classifier's true class with probability at most ``alpha``. The draws depend on
    (``seed``, id) only (a stream apart from CERTIFY's).

    Args:
        model: The base classifier (returns logits).
        x: ``[N, ...]`` inputs in ``bounds``.
        sigma: Noise standard deviation (required).
        n: Noise draws per input.
        alpha: Level of the test.
        ids: ``[N]`` sample ids (default ``0..N-1``).
        seed: Seed of the draws.
        batch_size: Noisy inputs per forward pass.
        bounds: Valid input range.

    Returns:
        ``[N]`` int64 classes on ``x``'s device, -1 where it abstains.

    Raises:
        ValueError: Missing or non-positive sigma, alpha outside (0, 1), bad inputs, a model
            returning probabilities.

    References:
        Cohen, Rosenfeld & Kolter, ICML 2019, arXiv:1902.02918 (PREDICT, Algorithm 1).

    """
    sigma_ = check_sigma(sigma)
    n = check_positive_int("n", n)
    alpha = check_alpha(alpha)
    batch_size = check_positive_int("batch_size", batch_size)
    rows = x.shape[0] if isinstance(x, Tensor) and x.dim() > 0 else 0
    check_inputs(x, torch.zeros(rows, dtype=torch.long), bounds)  # no labels: zeros pass
    ids = check_ids(ids, x.shape[0], x.device)
    with model_guard(model), torch.no_grad():
        n_classes = _clean_classes(model, x, [])
        sm = _Sampler(model, sigma_, int(seed), batch_size, n_classes)
        counts = sm.counts(x, ids, "predict", (0, n))
    top2 = counts.topk(2, dim=1)
    k = top2.values.cpu().numpy()
    keep = binomial_pvalues(k[:, 0], k[:, 1]) <= alpha
    return torch.where(torch.as_tensor(keep, device=x.device), top2.indices[:, 0], -1)


__all__ = ["RandomizedSmoothing", "check_alpha", "check_sigma", "smoothed_predict"]
