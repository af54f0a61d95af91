"""Property-based tests for projection, clipping and random starts."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attacks.rng import Stream
from attacks.threat import (
    Norm,
    ThreatModel,
    clip_to_bounds,
    norm_of,
    project,
    project_and_clip,
    random_start,
)

norms = st.sampled_from([Norm.LINF, Norm.L2])
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
    if eps > 0:
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
    import pytest

    with pytest.raises(ValueError, match="eps"):
        ThreatModel("linf", -1.0)
    with pytest.raises(ValueError, match="bounds"):
        ThreatModel("linf", 0.1, (1.0, 0.0))
