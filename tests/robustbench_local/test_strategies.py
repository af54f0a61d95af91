"""Curve strategies: the descent is nested, never weaker than the attack alone, and cheaper.

The yardstick is the attack itself run from scratch at every eps (its own sealed call, same
sample ids, so the same random draws). The model is a digits MLP briefly trained with FGSM-RS
so that most samples survive part of the grid (the regime where the strategy matters), in
float64 so that batching leaves only float noise far below any decision.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attacks
from attacks.threat import norm_of
from robustbench_local.evaluate import robustness_curve
from robustbench_local.strategies import (
    STRATEGIES,
    Auto,
    Descent,
    Nested,
    attack_steps,
    get_strategy,
)

EPS = [0.03, 0.06, 0.09, 0.12, 0.15, 0.18, 0.21, 0.25]
K = len(EPS)


def _pgd(**kw) -> attacks.Attack:
    kw.setdefault("steps", 20)
    return attacks.create("pgd", **kw)


@pytest.fixture(scope="module")
def robust_mlp(digits) -> nn.Module:
    """A digits MLP trained with FGSM-RS at eps 0.15 (full batch, 100 steps), in float64."""
    x, y = digits
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    fgsm = attacks.create("fgsm", random_start=True, rel_step_size=1.25)
    for _ in range(100):
        xa = fgsm.perturb(model, x[:1200], y[:1200], 0.15)
        opt.zero_grad()
        nn.functional.cross_entropy(model(xa), y[:1200]).backward()
        opt.step()
    return model.double().eval()


@pytest.fixture(scope="module")
def data(digits) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """300 held-out digits and their dataset indices as ids."""
    x, y = digits
    return x[1200:1500].double(), y[1200:1500].clone(), torch.arange(1200, 1500)


@pytest.fixture(scope="module")
def scratch(robust_mlp, data) -> tuple[torch.Tensor, int]:
    """The attack alone at every eps: ``success [K, N]`` and its backward passes."""
    x, y, ids = data
    pgd = _pgd()
    runs = [pgd(robust_mlp, x, y, eps=e, ids=ids) for e in EPS]
    return torch.stack([r.success for r in runs]), sum(r.n_backward for r in runs)


@pytest.fixture(scope="module")
def descent(robust_mlp, data) -> attacks.AttackResult:
    x, y, ids = data
    return Descent()(_pgd(), robust_mlp, x, y, EPS, ids)


@pytest.fixture(scope="module")
def nested(robust_mlp, data) -> attacks.AttackResult:
    x, y, ids = data
    return Nested()(_pgd(), robust_mlp, x, y, EPS, ids)


def _first_broken(success: torch.Tensor) -> torch.Tensor:
    """Per sample, the first eps index it is broken at (K if none)."""
    idx = torch.arange(K).unsqueeze(1).expand_as(success)
    return torch.where(success, idx, K).amin(0)


def test_the_model_is_robust_on_part_of_the_grid(scratch):
    acc = (~scratch[0]).double().mean(1)
    assert acc[0] > 0.8 and acc[-1] < 0.3  # the regime a strategy is for
    assert ((acc > 0.2) & (acc < 0.8)).sum() >= 3


def test_descent_obeys_the_nested_ball_rule(descent):
    robust = ~descent.success
    assert descent.success.shape == (K, 300)
    assert not (robust[1:] & ~robust[:-1]).any()  # broken at eps_i: broken at every larger eps


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_every_entry_is_a_checked_example_in_its_ball(robust_mlp, data, norm):
    x, y, ids = data
    eps = EPS if norm == "linf" else [4 * e for e in EPS]
    res = Descent()(_pgd(norm=norm), robust_mlp, x, y, eps, ids)
    for j, e in enumerate(eps):
        adv = res.x_adv[j]
        assert float(norm_of(adv - x, attacks.Norm(norm)).max()) <= e + 1e-6
        assert float(adv.min()) >= 0 and float(adv.max()) <= 1
        with torch.no_grad():
            fooled = robust_mlp(adv).argmax(1) != y
        assert torch.equal(res.success[j], fooled), j  # success is what x_adv does
    assert torch.equal(res.clean_correct, robust_mlp(x).argmax(1) == y)


def test_robust_claims_are_failures_of_the_attack_alone(scratch, descent):
    """Where the descent says robust at eps_j, the attack from scratch failed at some eps >= j.

    At a sample's last robust eps the descent ran the attack from scratch with the same draws,
    so the two agree exactly there; below it the descent infers robustness from that failure.
    """
    alone = scratch[0]
    t = _first_broken(descent.success)
    probed = (t >= 1) & descent.clean_correct
    assert bool(probed.any())
    assert not alone[t[probed] - 1, probed.nonzero().squeeze(1)].any()
    # a sample broken by the attack alone at eps_j and called robust there by the descent is
    # one the attack alone failed on at a larger eps (its random start was unlucky there)
    weaker = descent.success.logical_not() & alone
    for j, n in weaker.nonzero().tolist():
        assert not alone[t[n] - 1, n] and t[n] - 1 > j


def test_never_weaker_than_the_attack_alone_at_any_eps(scratch, descent, nested):
    alone = (~scratch[0]).double().mean(1)
    for res in (descent, nested):
        acc = (~res.success).double().mean(1)
        assert (acc <= alone + 0.005).all(), (acc - alone).tolist()  # at most 1 of 300 samples
    # the nested schedule runs the same calls as the attack alone on its survivors
    assert ((~nested.success).double().mean(1) <= alone).all()


def test_descent_costs_a_fraction_on_a_robust_model(scratch, descent, nested):
    assert descent.n_backward < 0.5 * nested.n_backward
    assert descent.n_backward < 0.4 * scratch[1]
    assert descent.n_forward < 0.6 * nested.n_forward


def test_batches_of_1_7_or_all_give_the_same_curve(robust_mlp, data):
    x, y, ids = (t[:35] for t in data)
    pgd, descent = _pgd(), Descent()
    full = descent(pgd, robust_mlp, x, y, EPS, ids)
    for size in (1, 7):
        parts = [
            descent(pgd, robust_mlp, x[i : i + size], y[i : i + size], EPS, ids[i : i + size])
            for i in range(0, 35, size)
        ]
        assert torch.equal(torch.cat([p.success for p in parts], 1), full.success), size
        x_adv = torch.cat([p.x_adv for p in parts], 1)
        assert torch.allclose(x_adv, full.x_adv, atol=1e-9, rtol=0), size


@pytest.mark.slow
def test_robustness_curve_uses_the_strategy(robust_mlp, data):
    x, y, _ = data
    pgd = _pgd()
    kw = {"checks": False, "progress": False, "adaptive": False, "batch_size": 128}
    data_set = (x, y)
    by_name = {
        name: robustness_curve(robust_mlp, data_set, {"pgd": pgd}, EPS, strategy=name, **kw)
        for name in ("nested", "descent", "auto")
    }
    local = torch.arange(300)  # robustness_curve's ids are the indices into its data
    sealed = pgd(robust_mlp, x, y, eps=EPS, ids=local)
    assert torch.equal(by_name["nested"].robust["pgd"], ~sealed.success)
    walked = Descent()(pgd, robust_mlp, x, y, EPS, local)
    assert torch.equal(by_name["descent"].robust["pgd"], ~walked.success)
    assert torch.equal(by_name["auto"].robust["pgd"], by_name["descent"].robust["pgd"])
    cost = by_name["descent"].cost["pgd"]
    assert cost["n_backward"] == walked.n_backward and cost["wall_time"] > 0
    assert cost["n_backward"] < 0.5 * by_name["nested"].cost["pgd"]["n_backward"]


def test_auto_picks_descent_for_iterative_attacks_only():
    auto = Auto()
    assert isinstance(auto.pick(_pgd()), Descent)
    assert isinstance(auto.pick(attacks.create("fgsm")), Nested)
    assert isinstance(auto.pick(attacks.create("pgd", steps=3, restarts=4)), Descent)
    suite = attacks.AttackSuite([attacks.create("fgsm"), attacks.create("pgd", steps=9)])
    assert attack_steps(suite) == 10 and isinstance(auto.pick(suite), Descent)
    assert isinstance(Auto(min_steps=50).pick(_pgd()), Nested)


def test_minimum_norm_attacks_run_once(digits_model, digits_batch):
    x, y = digits_batch
    cw = attacks.create("cw_l2", steps=20, binary_search_steps=2)
    grid = [0.25, 0.5, 1.0]
    own = cw(digits_model, x[:60], y[:60], eps=grid)
    for name in STRATEGIES.names():
        res = get_strategy(name)(cw, digits_model, x[:60], y[:60], grid)
        assert torch.equal(res.success, own.success), name


def test_model_is_left_as_it_came(robust_mlp, data):
    x, y, ids = data
    robust_mlp.train()
    try:
        Descent()(_pgd(steps=5), robust_mlp, x[:40], y[:40], EPS, ids[:40])
        assert robust_mlp.training
        assert all(p.requires_grad for p in robust_mlp.parameters())
    finally:
        robust_mlp.eval()


def test_bad_arguments_are_explained(robust_mlp, data):
    x, y, _ = data
    with pytest.raises(ValueError, match="descent"):
        get_strategy("bisect")
    with pytest.raises(TypeError, match="CurveStrategy"):
        get_strategy(3)
    with pytest.raises(ValueError, match="strictly increasing"):
        Descent()(_pgd(), robust_mlp, x[:5], y[:5], [0.1, 0.05])
    with pytest.raises(ValueError, match="untargeted"):
        Descent()(_pgd(targeted=True), robust_mlp, x[:5], y[:5], EPS)
    with pytest.raises(ValueError, match="screen_steps"):
        Descent(screen_steps=-1)
    with pytest.raises(ValueError, match="strategy"):
        robustness_curve(robust_mlp, (x, y), ["pgd"], EPS, strategy="fastest")
    assert get_strategy(d := Descent(screen_steps=2)) is d
    assert repr(d) == "Descent(screen_steps=2, screen_step=0.15, screen_loss='ce')"
