"""Property-based tests for projection, clipping and random starts, in linf, l2 and l1.

The l1 projections are checked against independent references: a bisection on the
soft-threshold (any precision), and scipy's SLSQP on the quadratic program itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from attacks.rng import Stream
from attacks.threat import (
    Norm,
    ThreatModel,
    clip_to_bounds,
    dual_norm_of,
    norm_of,
    normalize_gradient,
    project,
    project_and_clip,
    project_delta_,
    project_l1,
    project_l1_box,
    random_start,
    require_norm,
)

norms = st.sampled_from([Norm.LINF, Norm.L2, Norm.L1])
eps_s = st.floats(min_value=0.0, max_value=5.0, allow_nan=False)
seeds = st.integers(min_value=0, max_value=2**31 - 1)


def _batch(seed: int, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 1, 5, 5, generator=g, dtype=torch.float64)
    d = (torch.rand(4, 1, 5, 5, generator=g, dtype=torch.float64) * 2 - 1) * scale
    return x, d


@settings(max_examples=60, deadline=None)
@given(norm=norms, eps=eps_s, seed=seeds)
def test_projection_lands_in_ball_and_is_idempotent(norm, eps, seed):
    _, d = _batch(seed)
    p = project(d, norm, eps)
    assert (norm_of(p, norm) <= eps + 1e-9).all()
    assert torch.allclose(project(p, norm, eps), p)
    inside = norm_of(d, norm) <= eps
    assert torch.allclose(p[inside], d[inside])


@settings(max_examples=60, deadline=None)
@given(norm=norms, eps=eps_s, seed=seeds)
def test_project_and_clip_is_feasible(norm, eps, seed):
    x, d = _batch(seed)
    xa = project_and_clip(x, x + d, norm, eps, (0.0, 1.0))
    assert xa.min() >= 0 and xa.max() <= 1
    assert (norm_of(xa - x, norm) <= eps + 1e-9).all()


@settings(max_examples=40, deadline=None)
@given(seed=seeds)
def test_clip_to_bounds(seed):
    x, d = _batch(seed)
    c = clip_to_bounds(x, d, (0.0, 1.0))
    assert (x + c).min() >= 0 and (x + c).max() <= 1
    keep = ((x + d) >= 0) & ((x + d) <= 1)
    assert torch.allclose(c[keep], d[keep])


def _stream(seed: int, ids: torch.Tensor, key: tuple = ("start",)) -> Stream:
    return Stream(seed, ids, key, torch.float64)


@settings(max_examples=40, deadline=None)
@given(norm=norms, eps=eps_s, seed=seeds)
def test_random_start_is_in_ball_and_seeded(norm, eps, seed):
    x, _ = _batch(seed)
    ids = torch.arange(4)
    d1 = random_start(x, norm, eps, _stream(seed, ids))
    d2 = random_start(x, norm, eps, _stream(seed, ids))
    assert torch.equal(d1, d2)
    assert d1.dtype == x.dtype
    assert (norm_of(d1, norm) <= eps + 1e-9).all()
    if eps > 1e-300:  # below, every perturbation underflows to zero whatever the draws
        assert not torch.equal(d1, random_start(x, norm, eps, _stream(seed + 1, ids)))
        assert not torch.equal(d1, random_start(x, norm, eps, _stream(seed, ids, ("other",))))


@settings(max_examples=20, deadline=None)
@given(norm=norms, seed=seeds)
def test_random_start_of_a_sample_ignores_its_batch(norm, seed):
    """The same start for a sample alone, in a batch, at any position.

    Bitwise for linf (elementwise ops on bitwise-equal draws); l2 divides by a per-row norm, a
    reduction whose rounding may depend on the row's memory alignment, so equal to 1e-12.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(9, 1, 5, 5, generator=g, dtype=torch.float64)
    ids = torch.randperm(1000, generator=g)[:9]
    full = random_start(x, norm, 0.3, _stream(seed, ids))
    perm = torch.randperm(9, generator=g)
    others = [
        (random_start(x[i : i + 1], norm, 0.3, _stream(seed, ids[i : i + 1])), [i])
        for i in range(9)
    ]
    others.append((random_start(x[perm], norm, 0.3, _stream(seed, ids[perm])), perm.tolist()))
    for got, rows in others:
        if norm is Norm.LINF:
            assert torch.equal(got, full[rows])
        else:
            assert torch.allclose(got, full[rows], rtol=1e-12, atol=0)


def test_random_start_is_uniform_in_the_ball():
    x = torch.zeros(4000, 1, 2, 2, dtype=torch.float64)
    ids = torch.arange(4000)
    d = random_start(x, Norm.LINF, 0.5, _stream(0, ids)).flatten()
    assert abs(float(d.mean())) < 0.01 and abs(float(d.var()) - 0.25 / 3) < 0.005
    r = norm_of(random_start(x, Norm.L2, 1.0, _stream(0, ids)), Norm.L2)
    # uniform in the 4-d ball: P(r <= t) = t^4
    assert abs(float((r <= 0.5).double().mean()) - 0.5**4) < 0.015
    assert float(r.max()) <= 1.0 + 1e-12


def test_per_sample_eps():
    _, d = _batch(0)
    eps = torch.tensor([0.0, 0.1, 0.2, 0.3], dtype=torch.float64)
    for norm in Norm:
        assert (norm_of(project(d, norm, eps), norm) <= eps + 1e-9).all()


def test_threat_model_validation():
    assert ThreatModel("l2", 0.5).norm is Norm.L2
    assert ThreatModel("L1", 10.0).norm is Norm.L1
    with pytest.raises(ValueError, match="eps"):
        ThreatModel("linf", -1.0)
    with pytest.raises(ValueError, match="bounds"):
        ThreatModel("linf", 0.1, (1.0, 0.0))


# ------------------------------------------------------------------------------------ l1


def test_norm_names_and_duals():
    assert [Norm.parse(v) for v in ("l1", "1", "L_1", "inf", "2")] == [
        Norm.L1,
        Norm.L1,
        Norm.L1,
        Norm.LINF,
        Norm.L2,
    ]
    assert (Norm.LINF.dual, Norm.L2.dual, Norm.L1.dual) == (Norm.L1, Norm.L2, Norm.LINF)
    with pytest.raises(ValueError, match="linf, l2, l1"):
        Norm.parse("l0")


def test_require_norm_names_the_supported_norms_and_an_alternative():
    assert require_norm("ddn", "l2", {Norm.L2}) is Norm.L2
    with pytest.raises(ValueError, match=r"ddn supports norm l2, got norm='l1'; fmn supports l1"):
        require_norm("ddn", "l1", {Norm.L2})


def _soft_threshold_ref(z: np.ndarray, lower: np.ndarray, upper: np.ndarray, eps: float):
    """Projection onto the l1 ball and the box by bisection on the threshold (float64)."""
    a = np.abs(z)
    b = np.where(z >= 0, upper, -lower)

    def mass(lam: float) -> float:
        return float(np.minimum(np.maximum(a - lam, 0.0), b).sum())

    lo, hi = 0.0, float(a.max()) + 1.0
    if mass(0.0) <= eps:
        hi = 0.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mass(mid) > eps else (lo, mid)
    return np.sign(z) * np.minimum(np.maximum(a - hi, 0.0), b)


@settings(max_examples=60, deadline=None)
@given(seed=seeds, eps=st.floats(min_value=0.0, max_value=30.0), scale=st.floats(0.01, 3.0))
def test_l1_projections_match_a_bisection_reference(seed, eps, scale):
    x, d = _batch(seed, scale)
    z = d.flatten(1).numpy()
    inf = np.full_like(z[0], np.inf)
    ball = project_l1(d, eps).flatten(1).numpy()
    both = project_l1_box(d, eps, -x, 1 - x).flatten(1).numpy()
    for i in range(z.shape[0]):
        ref_ball = _soft_threshold_ref(z[i], -inf, inf, eps)
        lower, upper = -x[i].flatten().numpy(), 1 - x[i].flatten().numpy()
        ref_both = _soft_threshold_ref(z[i], lower, upper, eps)
        np.testing.assert_allclose(ball[i], ref_ball, atol=1e-9)
        np.testing.assert_allclose(both[i], ref_both, atol=1e-9)
        assert np.abs(both[i]).sum() <= eps + 1e-9
        assert (both[i] >= lower - 1e-12).all() and (both[i] <= upper + 1e-12).all()


def test_l1_box_projection_is_the_scipy_quadratic_program_optimum():
    """min ||d - z||^2 s.t. ||d||_1 <= eps, lower <= d <= upper, with d = p - q, p, q >= 0."""
    g = torch.Generator().manual_seed(3)
    for trial in range(6):
        x = torch.rand(1, 12, generator=g, dtype=torch.float64)
        z = torch.randn(1, 12, generator=g, dtype=torch.float64)
        eps = [0.3, 1.0, 2.5][trial % 3]
        got = project_and_clip(x, x + z, Norm.L1, eps, (0.0, 1.0)) - x
        zn, lo, hi = z[0].numpy(), -x[0].numpy(), 1 - x[0].numpy()

        def objective(v: np.ndarray, zn: np.ndarray = zn) -> float:
            return float(((v[:12] - v[12:] - zn) ** 2).sum())

        def jacobian(v: np.ndarray, zn: np.ndarray = zn) -> np.ndarray:
            r = 2 * (v[:12] - v[12:] - zn)
            return np.concatenate([r, -r])

        budget = {
            "type": "ineq",
            "fun": lambda v, eps=eps: eps - v.sum(),
            "jac": lambda v: -np.ones(24),
        }
        res = minimize(
            objective,
            np.zeros(24),
            jac=jacobian,
            bounds=[(0, h) for h in hi] + [(0, -lw) for lw in lo],
            constraints=[budget],
            method="SLSQP",
            options={"ftol": 1e-14, "maxiter": 500},
        )
        assert res.success, res.message
        np.testing.assert_allclose(got[0].numpy(), res.x[:12] - res.x[12:], atol=1e-5)


def test_l1_box_projection_spends_the_budget_inside_the_box():
    """Ball-then-box wastes budget on clipped pixels; the exact projection does not."""
    x = torch.tensor([[0.0, 0.0, 1.0, 0.5]], dtype=torch.float64)
    z = torch.tensor([[-2.0, 1.0, 3.0, 0.2]], dtype=torch.float64)
    d = project_and_clip(x, x + z, Norm.L1, 1.0, (0.0, 1.0)) - x
    assert torch.allclose(d, torch.tensor([[0.0, 0.9, 0.0, 0.1]], dtype=torch.float64))
    naive = clip_to_bounds(x, project(z, Norm.L1, 1.0), (0.0, 1.0))
    assert float(norm_of(naive, Norm.L1)) < 0.5  # most of the budget lost to the box


@pytest.mark.parametrize("norm", list(Norm))
def test_steepest_ascent_direction_attains_the_dual_norm(norm):
    g = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v = normalize_gradient(g, norm)
    assert torch.allclose(norm_of(v, norm), torch.ones(6, dtype=torch.float64))
    assert torch.allclose((g * v).flatten(1).sum(1), dual_norm_of(g, norm))
    assert torch.equal(normalize_gradient(torch.zeros_like(g), norm), torch.zeros_like(g))


def test_l1_random_start_is_uniform_in_the_ball():
    """Uniform in the 4-d l1 ball: P(||d||_1 <= t) = t^4 and P(|d_1| > t) = (1 - t)^4."""
    x = torch.zeros(6000, 1, 2, 2, dtype=torch.float64)
    d = random_start(x, Norm.L1, 1.0, _stream(0, torch.arange(6000)))
    r = norm_of(d, Norm.L1)
    assert float(r.max()) <= 1.0 + 1e-12
    assert abs(float((r <= 0.6).double().mean()) - 0.6**4) < 0.015
    first = d.flatten(1)[:, 0]
    assert abs(float((first.abs() > 0.3).double().mean()) - 0.7**4) < 0.015
    assert abs(float((first > 0).double().mean()) - 0.5) < 0.02


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_project_delta_in_place_matches_project_and_clip(norm):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 5, 5, generator=gen)
    delta = torch.randn(6, 1, 5, 5, generator=gen)
    eps = torch.tensor([0.1, 0.5, 2.0, 10.0, float("inf"), 0.0])
    expected = project_and_clip(x, x + delta, norm, eps, (0.0, 1.0)) - x
    out = project_delta_(x, delta, norm, eps, (0.0, 1.0))
    assert out.data_ptr() == delta.data_ptr()
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    assert ((x + out) >= -1e-6).all() and ((x + out) <= 1 + 1e-6).all()
