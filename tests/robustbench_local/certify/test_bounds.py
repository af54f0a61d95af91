"""Bound propagation (defenses.bounds): soundness, tightness, exactness on linear maps, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import attacks
import robustbench_local as rbl
from defenses.bounds import (
    BoundedModel,
    certified_by_margins,
    interval_bounds,
    make_perturbation,
    margin_bounds,
    spec_matrix,
)
from robustbench_local.models.zoo import Normalize

METHODS = ("ibp", "crown", "crown-ibp")
TOL = 1e-5


def true_margins(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """``logit_y - logit_j`` ``[N, C]`` (0 at ``j = y``)."""
    with torch.no_grad():
        out = model(x)
    return torch.einsum("bsc,bc->bs", spec_matrix(y, out.shape[1], out.dtype), out)


def ball_points(x: Tensor, eps: float, norm: str, n: int, gen: torch.Generator) -> list[Tensor]:
    """``n`` random points of the ball around ``x`` clipped to [0, 1] (corners for linf)."""
    out = []
    for _ in range(n):
        if norm == "linf":
            d = torch.randint(0, 2, x.shape, generator=gen).to(x.dtype) * 2 - 1
            d = d * eps
        else:
            d = torch.randn(x.shape, generator=gen, dtype=x.dtype)
            d = d / d.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1)) * eps
        out.append((x + d).clamp(0, 1))
    return out


class Residual(nn.Module):
    """A pre-activation residual block as in the zoo's ResNets (functional ReLU, addition)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(nn.functional.relu(self.bn(x)))


def residual_net() -> nn.Module:
    return nn.Sequential(
        Normalize(0.3, 0.3),
        nn.Conv2d(1, 4, 3, padding=1),
        Residual(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def random_net(kind: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "mlp":
        net = nn.Sequential(
            Normalize(0.5, 0.25), nn.Flatten(), nn.Linear(64, 12), nn.ReLU(),
            nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 10),
        )  # fmt: skip
    elif kind == "cnn":
        net = nn.Sequential(
            nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
            nn.AvgPool2d(2, stride=1), nn.Conv2d(3, 4, 2), nn.ReLU(), nn.Flatten(),
            nn.Linear(16, 10),
        )  # fmt: skip
    else:
        net = residual_net()
    for m in net.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(-1.5, 1.5)
    return net.eval()


# --------------------------------------------------------------------------- soundness


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    kind=st.sampled_from(["mlp", "cnn", "residual"]),
    seed=st.integers(0, 10_000),
    eps=st.floats(0.0, 0.3),
    norm=st.sampled_from(["linf", "l2"]),
    method=st.sampled_from(METHODS),
)
def test_bounds_enclose_random_points_of_the_ball(kind, seed, eps, norm, method, digits) -> None:
    net = random_net(kind, seed)
    x, y = digits[0][seed % 1000 : seed % 1000 + 4], digits[1][seed % 1000 : seed % 1000 + 4]
    eps = eps if norm == "linf" else 4 * eps
    with torch.no_grad():
        lower = margin_bounds(net, x, y, eps, method=method, norm=norm)
        lo, hi = interval_bounds(net, x, eps, norm=norm)
    gen = torch.Generator().manual_seed(seed)
    for point in [x, *ball_points(x, eps, norm, 40, gen)]:
        with torch.no_grad():
            out = net(point)
        assert (out >= lo - TOL).all() and (out <= hi + TOL).all()
        assert (true_margins(net, point, y) >= lower - TOL).all()


@pytest.mark.parametrize(
    ("norm", "eps_grid"), [("linf", [0.02, 0.05, 0.1]), ("l2", [0.1, 0.3, 0.6])]
)
@pytest.mark.parametrize("which", ["cert_mlp", "cert_cnn"])
def test_bounds_enclose_pgd_points(which, norm, eps_grid, cert_batch, request) -> None:
    model = request.getfixturevalue(which)
    x, y = cert_batch
    pgd = attacks.create("pgd", norm=norm, steps=30, loss="cw", early_stop=False)
    for eps in eps_grid:
        adv = pgd(model, x, y, eps=eps).x_adv
        actual = true_margins(model, adv, y)
        for method in METHODS:
            with torch.no_grad():
                lower = margin_bounds(model, x, y, eps, method=method, norm=norm)
            assert (actual >= lower - TOL).all(), (method, eps)


def test_crown_is_tighter_than_ibp_on_a_trained_net(cert_mlp, cert_cnn, cert_batch) -> None:
    x, y = cert_batch
    for model in (cert_mlp, cert_cnn):
        with torch.no_grad():
            ibp = margin_bounds(model, x, y, 0.05, method="ibp")
            crown = margin_bounds(model, x, y, 0.05, method="crown")
        assert (crown >= ibp - 1e-6).all()
        assert int(certified_by_margins(crown, y).sum()) > int(certified_by_margins(ibp, y).sum())


def test_eps_zero_bounds_are_the_margins(cert_cnn, cert_batch) -> None:
    x, y = cert_batch
    for method in METHODS:
        with torch.no_grad():
            lower = margin_bounds(cert_cnn, x, y, 0.0, method=method)
        torch.testing.assert_close(lower, true_margins(cert_cnn, x, y), atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- exactness


def linear_net() -> nn.Module:
    """No ReLU: every method's bound of a margin is the exact minimum over the box."""
    torch.manual_seed(3)
    return nn.Sequential(
        Normalize(0.5, 0.25), nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.BatchNorm2d(3).eval(),
        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(12, 10),
    ).eval()  # fmt: skip


def test_crown_is_exact_on_a_linear_network() -> None:
    """Checks the transposed convolution, pooling and BatchNorm rules against autograd."""
    net = linear_net()
    x = torch.full((2, 1, 8, 8), 0.5)
    y = torch.tensor([3, 7])
    eps = 0.1  # the box [0.4, 0.6] is not clipped by [0, 1]
    lower = margin_bounds(net, x, y, eps, method="crown").detach()
    xr = x.clone().requires_grad_(True)
    m = true_margins_with_grad(net, xr, y)
    for j in range(10):
        (g,) = torch.autograd.grad(m[:, j].sum(), xr, retain_graph=True)
        exact = m[:, j].detach() - eps * g.abs().flatten(1).sum(1)
        torch.testing.assert_close(lower[:, j], exact, atol=1e-5, rtol=0)


def true_margins_with_grad(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    out = model(x)
    return torch.einsum("bsc,bc->bs", spec_matrix(y, out.shape[1], out.dtype), out)


def test_l2_first_layer_bound_is_exact() -> None:
    """IBP for l2: the first weighted layer gets ``w.x -+ eps ||w||_2`` (box not active)."""
    torch.manual_seed(4)
    net = nn.Sequential(Normalize(0.5, 0.5), nn.Flatten(), nn.Linear(64, 5)).eval()
    x = torch.full((1, 1, 8, 8), 0.5)
    eps = 0.05
    domain = make_perturbation(x, eps, "l2")
    lo, hi = BoundedModel(net).interval_bounds(domain)[-1]
    w = net[2].weight / 0.5
    centre = net(x).detach()
    spread = eps * w.norm(dim=1)
    torch.testing.assert_close(lo, centre - spread)
    torch.testing.assert_close(hi, centre + spread)


def test_zoo_preact_resnet18_gets_ibp() -> None:
    model = rbl.create_model("preact_resnet18").eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lo, hi = interval_bounds(model, x, 1e-6)
        out = model(x)
    assert lo.shape == (2, 10)
    assert (out >= lo - 1e-3).all() and (out <= hi + 1e-3).all()


# --------------------------------------------------------------------------- errors


def test_unsupported_layer_is_named() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10)).eval()
    with pytest.raises(ValueError, match=r"2 \(Tanh\)"):
        margin_bounds(net, torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), 0.1)


def test_max_pool_is_ibp_only() -> None:
    net = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 10)).eval()
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    assert margin_bounds(net, x, y, 0.1, method="ibp").shape == (2, 10)
    with pytest.raises(ValueError, match=r"MaxPool2d.*use method='ibp'"):
        margin_bounds(net, x, y, 0.1, method="crown")


def test_train_mode_random_and_non_differentiable_models_are_refused(cert_cnn) -> None:
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    cert_cnn.train()
    try:
        with pytest.raises(ValueError, match=r"training mode.*BatchNorm2d.*model.eval\(\)"):
            margin_bounds(cert_cnn, x, y, 0.1)
    finally:
        cert_cnn.eval()
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    net.random = True
    with pytest.raises(ValueError, match="random model"):
        margin_bounds(net, x, y, 0.1)
    net.random, net.differentiable = False, False
    with pytest.raises(ValueError, match="non-differentiable"):
        margin_bounds(net, x, y, 0.1)


def test_bad_norm_and_method() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="norm='l1'"):
        margin_bounds(net, x, y, 0.1, norm="l1")
    with pytest.raises(ValueError, match="method='lp'"):
        margin_bounds(net, x, y, 0.1, method="lp")


def test_data_dependent_forward_cannot_be_traced() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x: Tensor) -> Tensor:
            if x.sum() > 0:
                return self.fc(x.flatten(1))
            return -self.fc(x.flatten(1))

    with pytest.raises(ValueError, match="cannot trace Branchy"):
        margin_bounds(Branchy().eval(), torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), 0.1)


def test_bounds_are_differentiable(cert_mlp, cert_batch) -> None:
    """Certified training differentiates the bounds with respect to the weights."""
    x, y = cert_batch
    for method in METHODS:
        cert_mlp.zero_grad()
        lower = margin_bounds(cert_mlp, x, y, 0.05, method=method)
        nn.functional.cross_entropy(-lower, y).backward()
        grads = [p.grad for p in cert_mlp.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)
    cert_mlp.zero_grad()
