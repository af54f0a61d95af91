"""Target-class order of APGD-T and FAB-T: by logit (AutoAttack) or by linearised distance."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attacks
from attacks.base import AttackContext
from attacks.targets import rank_targets
from attacks.threat import Norm


def _linear_model(seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 6))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(6, 16, generator=g) * torch.rand(6, 1, generator=g) * 3)
        model[1].bias.zero_()
    return model.eval()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_linear_order_is_the_exact_boundary_distance_on_a_linear_model(norm):
    model = _linear_model()
    x = torch.rand(50, 1, 4, 4)
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    w = model[1].weight
    dw = w.unsqueeze(0) - w[y].unsqueeze(1)  # [n, C, D]
    gap = logits.gather(1, y.unsqueeze(1)) - logits
    dual = dw.abs().sum(2) if norm == "linf" else dw.norm(dim=2)
    dist = (gap / dual.clamp(min=1e-12)).scatter(1, y.unsqueeze(1), float("inf"))
    ctx = AttackContext(model, Norm.parse(norm), (0.0, 1.0), False, seed=0, ids=torch.arange(50))
    got = rank_targets(ctx, x, y, 3, "linear")
    assert torch.equal(got, dist.topk(3, dim=1, largest=False).indices)
    assert ctx.n_backward == 50 * 5 and ctx.n_forward == 50  # one backward per other class
    by_logit = rank_targets(ctx, x, y, 3, "logits")
    assert torch.equal(by_logit, logits.scatter(1, y.unsqueeze(1), -1e9).topk(3, dim=1).indices)


@pytest.mark.parametrize("name", ["apgd_dlr", "fab_t"])
def test_target_order_option_and_config(name):
    default = attacks.create(name)
    assert default.target_order == "logits" and "target_order" not in default.config()
    linear = attacks.create(name, target_order="linear", n_target_classes=2)
    assert linear.config()["target_order"] == "linear"
    with pytest.raises(ValueError, match="target_order='closest'; use one of: logits, linear"):
        attacks.create(name, target_order="closest")


def test_linear_order_finds_what_the_logit_order_finds_with_fewer_targets(
    digits_model, digits_batch
):
    x, y = digits_batch
    eps = 0.12
    logit9 = attacks.create("apgd_dlr", steps=20, n_target_classes=9)(digits_model, x, y, eps=eps)
    linear3 = attacks.create("apgd_dlr", steps=20, n_target_classes=3, target_order="linear")
    res = linear3(digits_model, x, y, eps=eps)
    assert res.n_backward < logit9.n_backward  # the ranking included (a backward per class)
    assert float(res.robust_accuracy) <= float(logit9.robust_accuracy) + 0.02
