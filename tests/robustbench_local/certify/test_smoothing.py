"""Randomized smoothing: statistics, CERTIFY's contract, determinism, early stopping, PREDICT."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import binom
from torch import nn

import attacks
import robustbench_local as rbl
from robustbench_local.certify.base import CERTIFIERS, create_certifier
from robustbench_local.certify.smoothing import RandomizedSmoothing, smoothed_predict
from robustbench_local.certify.smoothing_noise import block_seeds, noise_counts
from robustbench_local.certify.smoothing_stats import (
    binomial_pvalues,
    clopper_pearson_lower,
    clopper_pearson_upper,
    look_levels,
    look_schedule,
    smoothing_radius,
)

torch.set_num_threads(1)
SIGMA = 0.25


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def noisy_digits_model(digits) -> nn.Module:
    """A digits MLP trained full-batch on N(0, 0.25^2)-noisy inputs (under a second)."""
    x, y = digits
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(120):
        opt.zero_grad()
        xn = x[:1200] + SIGMA * torch.randn_like(x[:1200])
        nn.functional.cross_entropy(model(xn), y[:1200]).backward()
        opt.step()
    return model.eval()


@pytest.fixture
def held_out(digits) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """40 held-out digits and their dataset ids."""
    x, y = digits
    ids = torch.arange(1400, 1440)
    return x[ids].clone(), y[ids].clone(), ids


def linear_model() -> nn.Module:
    """Two classes split by the hyperplane ``w.x = 4``, ``w = 1/8`` (unit norm) on 8x8 inputs.

    For ``x`` at signed distance ``d`` from the plane, the smoothed classifier's top-class
    probability is exactly ``Phi(|d| / sigma)``: Cohen et al.'s bound is tight, so the certified
    radius must be just below ``|d|``.
    """
    lin = nn.Linear(64, 2)
    with torch.no_grad():
        w = torch.full((64,), 1 / 8)
        lin.weight.copy_(torch.stack([w, -w]))
        lin.bias.copy_(torch.tensor([-4.0, 4.0]))
    return nn.Sequential(nn.Flatten(), lin).eval()


def at_distance(d: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs at signed distances ``d`` from the plane of :func:`linear_model`, with labels."""
    dist = torch.tensor(d)
    x = (0.5 + dist[:, None] / 8).expand(-1, 64).reshape(-1, 1, 8, 8).contiguous()
    return x, (dist < 0).long()


# ---------------------------------------------------------------------------- statistics


def test_clopper_pearson_against_hand_computed_values():
    # 9 of 10 at 95%: 10 p^9 (1 - p) + p^10 = 0.05 at p = 0.6058 (the classical table value)
    assert clopper_pearson_lower(9, 10, 0.05) == pytest.approx(0.6058, abs=1e-4)
    # all successes: P(X = n) = p^n = alpha; none: (1 - p)^n = alpha
    n, a = 100_000, 0.001
    assert clopper_pearson_lower(n, n, a) == pytest.approx(math.exp(math.log(a) / n), rel=1e-12)
    assert clopper_pearson_upper(0, n, a) == pytest.approx(-math.expm1(math.log(a) / n))
    assert clopper_pearson_lower(0, 10, a) == 0.0 and clopper_pearson_upper(10, 10, a) == 1.0
    # the defining property, vectorised: P(X >= k | p = lower) = alpha
    k = np.array([1, 30, 500, 999])
    lower = clopper_pearson_lower(k, 1000, 0.01)
    assert binom.sf(k - 1, 1000, lower) == pytest.approx(np.full(4, 0.01), rel=1e-6)
    upper = clopper_pearson_upper(k, 1000, 0.01)
    assert binom.cdf(k, 1000, upper) == pytest.approx(np.full(4, 0.01), rel=1e-6)
    assert np.all(lower < k / 1000) and np.all(upper > k / 1000)


def test_radius_against_hand_computed_values():
    # Phi(1) = 0.8413: radius exactly sigma; 1/2 and below: abstain, radius 0
    assert smoothing_radius(0.8413447460685429, 0.5) == pytest.approx(0.5)
    assert smoothing_radius([0.5, 0.3], 0.5).tolist() == [0.0, 0.0]
    # the paper's largest radius at sigma 0.25: all 100,000 draws right, alpha = 0.001:
    # p = 0.001^(1/100000) = 0.9999309, Phi^-1(p) = 3.8115, radius 0.9529
    p = clopper_pearson_lower(100_000, 100_000, 0.001)
    assert smoothing_radius(p, 0.25) == pytest.approx(0.9529, abs=5e-4)


def test_binomial_test_against_hand_computed_values():
    # two-sided, p = 1/2: 2 * P(X <= 2 | 10) = 2 * 56 / 1024; 2 * P(X = 0) = 2 / 1024; a tie: 1
    out = binomial_pvalues([8, 10, 5], [2, 0, 5])
    assert out == pytest.approx([112 / 1024, 2 / 1024, 1.0])


def test_look_schedule_and_levels():
    looks = look_schedule(100_000)
    assert looks == [512 * 2**t for t in range(8)] + [100_000]
    levels = look_levels(0.001, len(looks))
    assert sum(levels) == pytest.approx(0.001) and levels[-1] == 0.0005
    assert look_schedule(300) == [300] and look_levels(0.01, 1) == [0.01]


# ------------------------------------------------------------------------- the certifier


def test_registered_with_its_settings():
    assert "smoothing" in CERTIFIERS.names()
    cert = create_certifier("smoothing", sigma=0.5)
    assert isinstance(cert, RandomizedSmoothing)
    assert cert.norm == "l2" and cert.certifies == "the smoothed classifier"
    assert (cert.n0, cert.n, cert.alpha) == (100, 100_000, 0.001)
    config = json.loads(json.dumps(cert.config()))
    assert config["sigma"] == 0.5 and config["method"] == "smoothing"
    assert "batch_size" not in config  # speed only: the results do not depend on it
    assert create_certifier("smoothing", sigma=0.5, early_stop=True).settings()["looks"][-1] == (
        100_000
    )


def test_linear_classifier_radius_is_tight_and_sound():
    d = [0.3, -0.3, 0.6, 0.1, 0.0]
    x, y = at_distance(d)
    cert = RandomizedSmoothing(sigma=SIGMA, n=10_000, alpha=0.001)
    out = cert.certify_batch(linear_model(), x, y, torch.arange(5), [0.0, 0.25, 0.5], seed=0)
    r = out.radius.tolist()
    for i in range(4):  # sound (below the true distance) and tight (within Monte-Carlo slack)
        assert abs(d[i]) - 0.06 < r[i] < abs(d[i])
    # on the plane p_A = 1/2: abstain
    assert out.extra["prediction"][4] == -1 and r[4] == 0.0 and not out.correct[4]
    assert out.extra["prediction"][:4].tolist() == y[:4].tolist()
    assert out.certified.tolist() == [
        [True, True, True, True, False],
        [True, True, True, False, False],
        [False, False, True, False, False],
    ]


def test_certified_implies_correct_and_is_nested(noisy_digits_model, held_out):
    x, y, ids = held_out
    grid = [0.5, 0.0, 0.25, 1.0, 0.1]
    out = RandomizedSmoothing(sigma=SIGMA, n=2000).certify_batch(
        noisy_digits_model, x, y, ids, grid, seed=0
    )
    k, n = out.certified.shape
    assert (k, n) == (5, 40) and out.certified.dtype == torch.bool
    assert not (out.certified & ~out.correct).any()
    for a in range(k):
        for b in range(k):
            if grid[a] <= grid[b]:
                assert not (out.certified[b] & ~out.certified[a]).any()
    eps = torch.tensor(grid, dtype=out.radius.dtype)[:, None]
    assert torch.equal(out.certified, out.correct & (out.radius >= eps))
    assert (out.radius[~out.correct] == 0).all() and (out.radius[out.correct] > 0).all()
    assert 0.8 < out.correct.float().mean() < 1.0  # a sane model, a few abstentions or errors
    assert out.cost.n_forward == 40 + int(out.extra["n_noise"].sum()) == 40 * (1 + 2100)


def test_deterministic_per_seed_and_id(noisy_digits_model, held_out):
    x, y, ids = held_out
    model, grid = noisy_digits_model, [0.0, 0.25, 0.5]
    cert = RandomizedSmoothing(sigma=SIGMA, n0=50, n=1500)
    ref = cert.certify_batch(model, x, y, ids, grid, seed=3)
    again = cert.certify_batch(model, x, y, ids, grid, seed=3)
    assert torch.equal(ref.radius, again.radius)
    # another batch split, order and noise batch size: the same per-sample results
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    small = RandomizedSmoothing(sigma=SIGMA, n0=50, n=1500, batch_size=97)
    p_lower, certified = torch.empty_like(ref.extra["p_lower"]), torch.empty_like(ref.certified)
    for part in (perm[:13], perm[13:]):
        out = small.certify_batch(model, x[part], y[part], ids[part], grid, 3)
        p_lower[part], certified[:, part] = out.extra["p_lower"], out.certified
    assert torch.equal(p_lower, ref.extra["p_lower"]) and torch.equal(certified, ref.certified)
    assert 0 < ref.certified[1].sum() < 40  # p_lower varies: the comparison has teeth
    other = cert.certify_batch(model, x, y, ids, grid, seed=4)
    assert not torch.equal(other.extra["p_lower"], ref.extra["p_lower"])


def test_noise_is_a_function_of_seed_id_and_draw_index(noisy_digits_model, held_out):
    x, _, ids = held_out
    kw = {"sigma": SIGMA, "seed": 0, "stream": "estimate", "n_classes": 10}
    model = noisy_digits_model
    whole = noise_counts(model, x[:5], ids[:5], draws=(0, 700), batch_size=64, **kw)
    head = noise_counts(model, x[:5], ids[:5], draws=(0, 300), batch_size=1000, **kw)
    tail = noise_counts(model, x[:5], ids[:5], draws=(300, 700), batch_size=33, **kw)
    assert torch.equal(whole, head + tail) and (whole.sum(1) == 700).all()
    assert block_seeds(0, ids[:3], "estimate", 2) == [
        s[:2] for s in block_seeds(0, ids[:3], "estimate", 9)
    ]
    assert block_seeds(0, ids[:1], "estimate", 1) != block_seeds(0, ids[:1], "select", 1)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, ValueError, "needs the noise level: pass sigma="),
        ({"sigma": 0.0}, ValueError, "sigma must be > 0"),
        ({"sigma": "0.25"}, TypeError, "sigma must be a number"),
        ({"sigma": 0.25, "n0": 200, "n": 100}, ValueError, "n0=200 selection draws exceed"),
        ({"sigma": 0.25, "n": 0}, ValueError, "n must be a positive integer"),
        ({"sigma": 0.25, "alpha": 0.0}, ValueError, r"alpha must be in \(0, 1\)"),
        ({"sigma": 0.25, "alpha": 1.0}, ValueError, r"alpha must be in \(0, 1\)"),
        ({"sigma": 0.25, "norm": "linf"}, ValueError, "certifies l2 balls, not 'linf'"),
        ({"sigma": 0.25, "early_stop": "yes"}, TypeError, "early_stop must be True or False"),
    ],
)
def test_bad_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        create_certifier("smoothing", **kwargs)


def test_bad_inputs(noisy_digits_model, held_out):
    x, y, ids = held_out
    cert = RandomizedSmoothing(sigma=SIGMA, n=100)
    probs = nn.Sequential(noisy_digits_model, nn.Softmax(dim=1))
    with pytest.raises(ValueError, match="look like probabilities"):
        cert.certify_batch(probs, x, y, ids, [0.0], seed=0)
    with pytest.raises(ValueError, match="look like probabilities"):
        smoothed_predict(probs, x, sigma=SIGMA, n=10)
    with pytest.raises(ValueError, match="outside the bounds"):
        cert.certify_batch(noisy_digits_model, x + 2, y, ids, [0.0], seed=0)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        cert.certify_batch(noisy_digits_model, x, y, ids, [-0.1], seed=0)
    with pytest.raises(ValueError, match="needs the noise level"):
        smoothed_predict(noisy_digits_model, x)
    with pytest.raises(ValueError, match="alpha must be in"):
        smoothed_predict(noisy_digits_model, x, sigma=SIGMA, alpha=2.0)


# ------------------------------------------------------------------------ early stopping


def test_early_stopping_agrees_with_fixed_n(noisy_digits_model, digits):
    x, y = digits
    ids = torch.arange(1400, 1500)
    grid = [0.0, 0.25, 0.5]
    model, xs, ys = noisy_digits_model, x[ids], y[ids]
    fixed = RandomizedSmoothing(sigma=SIGMA, n=8000).certify_batch(model, xs, ys, ids, grid, 0)
    early = RandomizedSmoothing(sigma=SIGMA, n=8000, early_stop=True).certify_batch(
        model, xs, ys, ids, grid, 0
    )
    acc_fixed, acc_early = fixed.certified.sum(1), early.certified.sum(1)
    assert (acc_fixed - acc_early).abs().max() <= 2  # of 100 samples
    assert early.extra["n_noise"].sum() < fixed.extra["n_noise"].sum() / 3
    # a wrong selected class is settled after the selection draws; the rest look >= once
    wrong = early.extra["prediction"] != ys
    spent = early.extra["n_noise"]
    assert (spent[wrong & early.extra["p_lower"].isnan()] == 100).all()
    assert (spent[~early.extra["p_lower"].isnan()] >= 100 + 512).all()
    assert not (early.certified & ~early.correct).any()


def test_early_stopping_stops_once_every_radius_is_settled():
    # d = 0.6 (p_A = 0.992): certified at 0 at the first look; 5.0 exceeds the largest radius
    # n draws can give (0.95): hopeless at once. d = 0.3 (p_A = 0.885): 0.25 certified within
    # a few looks. (On the plane, p_A = 1/2 exactly, radius 0 never settles: such a sample
    # takes all n draws, as it should.)
    x, y = at_distance([0.6, 0.3])
    cert = RandomizedSmoothing(sigma=SIGMA, n=100_000, early_stop=True)
    out = cert.certify_batch(linear_model(), x, y, torch.arange(2), [0.0, 0.25, 5.0], seed=0)
    spent = out.extra["n_noise"].tolist()
    assert spent[0] == 100 + 512 and spent[1] <= 100 + 4096
    assert out.certified.tolist() == [[True, True], [True, True], [False, False]]


# ------------------------------------------------------------------------------- PREDICT


def test_smoothed_predict_returns_class_or_abstains():
    x, y = at_distance([0.6, -0.6, 0.0, 0.3])
    pred = smoothed_predict(linear_model(), x, sigma=SIGMA, n=2000, seed=1)
    assert pred.dtype == torch.long and pred[:2].tolist() == y[:2].tolist()
    assert pred[2] == -1  # p_A = 1/2 on the plane
    assert pred[3] == y[3]
    assert torch.equal(pred, rbl.smoothed_predict(linear_model(), x, sigma=SIGMA, n=2000, seed=1))


# --------------------------------------------------------- attacking the smoothed classifier


class SoftSmoothed(nn.Module):
    """Log of the mean softmax over Gaussian draws: Salman et al.'s smoothed soft classifier."""

    def __init__(self, model: nn.Module, sigma: float, draws: int) -> None:
        super().__init__()
        self.model, self.sigma, self.draws = model, sigma, draws

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noisy = x.unsqueeze(0) + self.sigma * torch.randn(self.draws, *x.shape)
        probs = self.model(noisy.flatten(0, 1)).softmax(1).view(self.draws, x.shape[0], -1)
        return probs.mean(0).clamp_min(1e-12).log()


def test_eot_attack_at_the_certified_radius_changes_no_prediction(noisy_digits_model, digits):
    """PGD (l2) through the noise (Salman et al. 2019) finds no sample whose class changes.

    At twice the certified radius the same attack changes most of them: it has teeth, and the
    certificate is not far from tight.
    """
    x, y = digits
    ids = torch.arange(1400, 1440)
    out = RandomizedSmoothing(sigma=SIGMA, n=2000).certify_batch(
        noisy_digits_model, x[ids], y[ids], ids, [0.0], seed=0
    )
    rows = torch.nonzero(out.radius > 0.2).flatten()[:8].tolist()
    assert len(rows) >= 5
    torch.manual_seed(0)
    soft = SoftSmoothed(noisy_digits_model, SIGMA, draws=32)
    pgd = attacks.create("pgd", norm="l2", steps=20, early_stop=False, seed=0)
    changed = {1.0: 0, 2.0: 0}
    for i in rows:
        xi, yi, idi = x[ids[i]][None], y[ids[i]][None], ids[i : i + 1]
        for scale in changed:
            x_adv = pgd(soft, xi, yi, eps=scale * float(out.radius[i])).x_adv
            pred = smoothed_predict(noisy_digits_model, x_adv, sigma=SIGMA, n=2000, ids=idi)
            changed[scale] += pred.item() not in (yi.item(), -1)
    assert changed[1.0] == 0
    assert changed[2.0] >= len(rows) // 2
