"""Exact verification (milp): the yardstick of the bound methods, checked against brute force."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustbench_local.certify import create_certifier
from robustbench_local.certify.milp import COUNTEREXAMPLE, ROBUST, UNKNOWN

EPS = [0.02, 0.05]


@pytest.fixture(scope="module")
def milp_runs(cert_mlp, digits):
    """IBP, CROWN and an independent MILP (IBP big-M, no CROWN presolve) on 16 samples."""
    x, y = digits[0][1200:1216], digits[1][1200:1216]
    ids = torch.arange(1200, 1216)
    runs = {
        name: create_certifier(name).certify_batch(cert_mlp, x, y, ids, EPS, 0)
        for name in ("ibp", "crown")
    }
    exact = create_certifier("milp", big_m="ibp", presolve=False, time_limit=60)
    runs["milp"] = exact.certify_batch(cert_mlp, x, y, ids, EPS, 0)
    return x, y, runs


@pytest.mark.slow
def test_bound_certificates_are_robust_by_the_milp(milp_runs) -> None:
    _, _, runs = milp_runs
    outcome = runs["milp"].extra["milp_outcome"]
    for name in ("ibp", "crown"):
        cert = runs[name].certified
        assert (outcome[cert] == ROBUST).all(), name
        assert (runs["milp"].certified | ~cert).all()
    assert int(runs["milp"].certified.sum()) >= int(runs["crown"].certified.sum())


@pytest.mark.slow
def test_milp_counterexamples_change_the_class(milp_runs, cert_mlp) -> None:
    x, y, runs = milp_runs
    out = runs["milp"]
    points = out.extra["counterexample"]  # [K, d, n]
    found = 0
    for k, eps in enumerate(EPS):
        for i in (out.extra["milp_outcome"][k] == COUNTEREXAMPLE).nonzero().flatten().tolist():
            p = points[k, :, i].reshape(x[i].shape)
            assert (p - x[i]).abs().max() <= eps + 1e-6 and p.min() >= 0 and p.max() <= 1
            with torch.no_grad():
                assert int(cert_mlp(p.unsqueeze(0)).argmax()) != int(y[i])
            found += 1
    assert found > 0
    assert torch.isnan(points[:, :, out.certified[-1]]).all()


@pytest.mark.slow
def test_milp_outcomes_are_consistent(milp_runs) -> None:
    _, _, runs = milp_runs
    out = runs["milp"]
    outcome = out.extra["milp_outcome"]
    assert torch.equal(out.certified, outcome == ROBUST)
    cex = outcome == COUNTEREXAMPLE
    assert torch.equal(cex, cex.cummax(dim=0).values)  # a counterexample holds at larger eps
    assert (cex[:, ~out.correct]).all()


def test_milp_matches_brute_force_on_a_two_input_network() -> None:
    """A 2-d input: the minimum margin over the box found on a fine grid decides robustness."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    net.eval()
    x = torch.rand(30, 2)
    y = net(x).argmax(1).detach()
    eps = 0.1
    out = create_certifier("milp", attack_steps=0).certify_batch(
        net, x, y, torch.arange(30), [eps], 0
    )
    grid = torch.linspace(-eps, eps, 201)
    delta = torch.cartesian_prod(grid, grid)
    decided = 0
    for i in range(30):
        pts = (x[i] + delta).clamp(0, 1)
        with torch.no_grad():
            logits = net(pts)
        others = logits.clone()
        others[:, y[i]] = -torch.inf
        worst = float((logits[:, y[i]] - others.max(1).values).min())
        if worst > 1e-3:
            assert int(out.extra["milp_outcome"][0, i]) == ROBUST
            decided += 1
        elif worst < -1e-3:
            assert int(out.extra["milp_outcome"][0, i]) == COUNTEREXAMPLE
            decided += 1
    assert decided >= 25


def test_unknown_is_never_certified(cert_mlp, digits) -> None:
    x, y = digits[0][1200:1206], digits[1][1200:1206]
    cert = create_certifier("milp", time_limit=1e-4, presolve=False, attack_steps=0, big_m="ibp")
    out = cert.certify_batch(cert_mlp, x, y, torch.arange(6), [0.1], 0)
    outcome = out.extra["milp_outcome"]
    assert (outcome == UNKNOWN).any()
    assert not out.certified[outcome == UNKNOWN].any()
    (flag,) = cert.health(out.extra, out.certified)
    assert not flag.ok and flag.severity == "warning" and "time_limit" in flag.advice


def test_milp_refuses_what_it_cannot_encode(cert_mlp) -> None:
    with pytest.raises(ValueError, match="certifies linf balls, not 'l2'"):
        create_certifier("milp", norm="l2")
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    pooled = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 10)).eval()
    with pytest.raises(ValueError, match=r"milp cannot encode 0 \(MaxPool2d\)"):
        create_certifier("milp").certify_batch(pooled, x, y, torch.arange(2), [0.1], 0)

    class Skip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 64)
            self.out = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = x.flatten(1)
            return self.out(h + torch.relu(self.fc(h)))

    with pytest.raises(ValueError, match="residual"):
        create_certifier("milp").certify_batch(Skip().eval(), x, y, torch.arange(2), [0.1], 0)
    with pytest.raises(ValueError, match="time_limit must be > 0"):
        create_certifier("milp", time_limit=0)
