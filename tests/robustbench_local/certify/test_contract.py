"""The certifier contract, for every registered method (a new method is tested for free).

Certified implies correctly classified; certified at eps implies certified at every smaller eps;
the radius agrees with the grid; the result depends on (seed, sample id) only: not on the batch
size, the order of the samples or a second call.
"""

from __future__ import annotations

import pytest
import torch

import robustbench_local as rbl
from robustbench_local.certify import CERTIFIERS, create_certifier

# Settings that keep each method fast on the digits MLP; a method not listed runs its defaults.
FAST: dict[str, dict] = {
    "milp": {"time_limit": 20.0},
    "smoothing": {"sigma": 0.25, "n0": 16, "n": 256, "alpha": 0.01},
}
GRIDS = {"linf": [0.0, 0.02, 0.05, 0.1], "l2": [0.0, 0.1, 0.25, 0.5]}
N = 12


def build(name: str):
    return create_certifier(name, **FAST.get(name, {}))


@pytest.fixture
def samples(digits):
    x, y = digits
    return x[1300 : 1300 + N].clone(), y[1300 : 1300 + N].clone(), torch.arange(1300, 1300 + N)


@pytest.mark.parametrize("name", CERTIFIERS.names())
def test_certified_is_correct_nested_and_radius_agrees(name, digits_model, samples) -> None:
    cert = build(name)
    x, y, ids = samples
    eps = GRIDS[cert.norm]
    out = cert.certify_batch(digits_model, x, y, ids, eps, 0)
    assert out.certified.shape == (len(eps), N) and out.certified.dtype == torch.bool
    assert out.correct.shape == (N,) and out.radius.shape == (N,)
    assert not (out.certified & ~out.correct).any()
    later = out.certified[1:]
    assert not (later & ~out.certified[:-1]).any()  # nested in eps
    grid = torch.tensor(eps)
    for i in range(N):
        certified_eps = grid[out.certified[:, i]]
        if len(certified_eps):
            assert float(out.radius[i]) >= float(certified_eps.max()) - 1e-6
        else:
            assert float(out.radius[i]) < eps[1] or not out.correct[i]
    for name_, t in out.extra.items():
        assert t.shape[-1] == N, name_
    assert out.cost.wall_time > 0 and out.cost.n_forward >= N


@pytest.mark.parametrize("name", CERTIFIERS.names())
def test_deterministic_per_seed_and_id(name, digits_model, samples) -> None:
    cert = build(name)
    x, y, ids = samples
    eps = GRIDS[cert.norm]
    first = cert.certify_batch(digits_model, x, y, ids, eps, 3)
    again = cert.certify_batch(digits_model, x, y, ids, eps, 3)
    assert torch.equal(first.certified, again.certified)
    assert torch.equal(first.radius, again.radius)
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(0))
    shuffled = cert.certify_batch(digits_model, x[perm], y[perm], ids[perm], eps, 3)
    assert torch.equal(shuffled.certified, first.certified[:, perm])
    assert torch.equal(shuffled.radius, first.radius[perm])


@pytest.mark.parametrize("name", CERTIFIERS.names())
def test_batch_size_does_not_change_the_curve(name, digits_model, digits) -> None:
    cert = build(name)
    kwargs = {**FAST.get(name, {}), "progress": False, "n_examples": N, "seed": 1}
    eps = GRIDS[cert.norm]
    whole = rbl.certify(digits_model, digits, name, eps, batch_size=N, **kwargs)
    parts = rbl.certify(digits_model, digits, name, eps, batch_size=5, **kwargs)
    assert torch.equal(whole.indices, parts.indices)
    assert torch.equal(whole.certified, parts.certified)
    assert torch.equal(whole.radius, parts.radius)
    assert whole.method == name and whole.norm == cert.norm
    assert whole.certifies == cert.certifies


@pytest.mark.parametrize("name", CERTIFIERS.names())
def test_unknown_norm_is_refused(name) -> None:
    with pytest.raises(ValueError, match=r"certifies .* balls, not 'l1'"):
        create_certifier(name, **{**FAST.get(name, {}), "norm": "l1"})


@pytest.mark.parametrize("name", CERTIFIERS.names())
def test_probabilities_are_refused(name, samples) -> None:
    """A model whose outputs are non-negative and sum to 1 is a softmax, not logits."""
    x, y, ids = samples
    probs = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    torch.nn.init.zeros_(probs[1].weight)
    torch.nn.init.constant_(probs[1].bias, 0.1)
    with pytest.raises(ValueError, match="probabilities"):
        build(name).certify_batch(probs, x, y, ids, GRIDS[build(name).norm], 0)


def test_unknown_method_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"Known certification methods: crown, ibp, milp"):
        create_certifier("crwn")


def test_bad_grid_is_refused(digits_model, samples) -> None:
    x, y, ids = samples
    with pytest.raises(ValueError, match="strictly increasing"):
        build("ibp").certify_batch(digits_model, x, y, ids, [0.1, 0.05], 0)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        build("crown").certify_batch(digits_model, x, y, ids, [-0.1], 0)
