"""Contract tests run for every registered attack: a new attack is tested for free."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attacks
from attacks.threat import Norm, norm_of

# Smaller budgets for the expensive attacks so the contract suite stays fast; settings only.
FAST_KW: dict[str, dict] = {
    "cw_l2": {"steps": 30, "binary_search_steps": 3},
    "apgd_ce": {"steps": 20},
    "apgd_dlr": {"steps": 20, "n_target_classes": 2},
    "trades_kl": {"steps": 10},
    "fab": {"steps": 20},
    "fab_t": {"steps": 20, "n_target_classes": 2},
    "square": {"n_queries": 300},
    "alma": {"steps": 100},
}
EPS = {Norm.LINF: [0.0, 0.05, 0.1, 0.3], Norm.L2: [0.0, 0.5, 1.0, 3.0]}


def make(name: str, **kw) -> attacks.Attack:
    """The attack with its fast settings; a wrong setting fails the test, never falls back."""
    return attacks.create(name, **FAST_KW.get(name, {}), **kw)


@pytest.fixture(params=attacks.names())
def attack(request) -> attacks.Attack:
    return make(request.param)


def test_names_and_create():
    known = {"apgd_ce", "apgd_dlr", "art", "cw_l2", "fgsm", "pgd", "trades_kl"}
    assert known <= set(attacks.names())
    assert attacks.names("pg*") == ["pgd"]
    assert set(FAST_KW) <= set(attacks.names())
    pgd = attacks.create("pgd", steps=7, norm="l2")
    assert (type(pgd).__name__, pgd.name, pgd.steps, pgd.norm) == ("PGD", "pgd", 7, Norm.L2)


def test_result_follows_the_sample_not_its_position(attack, digits_model, digits_batch):
    x, y = digits_batch
    e = EPS[attack.norm][2]
    ids = torch.arange(len(y)) + 1000
    ref = attack(digits_model, x, y, eps=e, ids=ids)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    res = attack(digits_model, x[perm], y[perm], eps=e, ids=ids[perm])
    assert torch.equal(res.success, ref.success[perm])
    assert torch.allclose(res.x_adv, ref.x_adv[perm], atol=1e-5)


def test_output_in_bounds_and_in_ball(attack, digits_model, digits_batch):
    x, y = digits_batch
    eps = EPS[attack.norm]
    res = attack(digits_model, x, y, eps=eps)
    assert res.x_adv.shape == (len(eps), *x.shape)
    assert res.success.shape == (len(eps), x.shape[0])
    assert res.x_adv.min() >= 0.0 and res.x_adv.max() <= 1.0
    for k, e in enumerate(eps):
        assert float(norm_of(res.x_adv[k] - x, attack.norm).max()) <= e + 1e-6


def test_success_is_true_for_returned_examples(attack, digits_model, digits_batch):
    x, y = digits_batch
    e = EPS[attack.norm][-1]
    res = attack(digits_model, x, y, eps=e)
    with torch.no_grad():
        fooled = digits_model(res.x_adv).argmax(1) != y
    assert torch.equal(fooled, res.success)


def test_eps_zero_gives_clean_accuracy(attack, digits_model, digits_batch):
    x, y = digits_batch
    res = attack(digits_model, x, y, eps=0.0)
    assert torch.equal(res.x_adv, x)
    assert torch.equal(~res.success, res.clean_correct)


def test_accuracy_never_rises_with_eps(attack, digits_model, digits_batch):
    x, y = digits_batch
    res = attack(digits_model, x, y, eps=list(reversed(EPS[attack.norm])))
    acc = res.robust_accuracy.flip(0)  # back to increasing eps
    assert (acc[1:] <= acc[:-1]).all(), acc
    assert torch.equal(res.eps, torch.tensor(list(reversed(EPS[attack.norm]))))


def test_model_left_as_it_came(attack, digits):
    x, y = digits
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.Dropout(0.1), nn.ReLU(), nn.Linear(32, 10)
    )
    model.train()
    model[1].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    attack(model, x[:64], y[:64], eps=EPS[attack.norm][2])
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_same_seed_same_result(attack, digits_model, digits_batch):
    x, y = digits_batch
    e = EPS[attack.norm][2]
    r1 = attack(digits_model, x, y, eps=e)
    r2 = attack(digits_model, x, y, eps=e)
    assert torch.equal(r1.x_adv, r2.x_adv)
    assert torch.equal(r1.success, r2.success)


def test_works_inside_no_grad_and_inference_mode(attack, digits_model, digits_batch):
    x, y = digits_batch
    e = EPS[attack.norm][2]
    ref = attack(digits_model, x, y, eps=e)
    with torch.no_grad():
        res = attack(digits_model, x, y, eps=e)
    assert torch.equal(res.success, ref.success)
    with torch.inference_mode():
        xi, yi = x.clone(), y.clone()
    res = attack(digits_model, xi, yi, eps=e)
    assert torch.equal(res.success, ref.success)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes(attack, digits_model, digits_batch, dtype):
    x, y = digits_batch
    model = _Cast(digits_model, dtype)
    res = attack(model, x.to(dtype), y, eps=EPS[attack.norm][2])
    assert res.x_adv.dtype == dtype
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1


def test_scalar_eps_shapes(attack, digits_model, digits_batch):
    x, y = digits_batch
    res = attack(digits_model, x, y, eps=EPS[attack.norm][2])
    assert res.x_adv.shape == x.shape
    assert res.success.shape == (x.shape[0],)
    assert res.n_forward >= x.shape[0]


class _Cast(nn.Module):
    """Runs a float32 model on inputs of another dtype by converting a copy of it."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        import copy

        self.model = copy.deepcopy(model).to(dtype)

    def forward(self, x):
        return self.model(x)
