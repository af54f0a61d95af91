"""FAB and FAB-T: the projection against brute force, exact minima of linear models, pass
accounting, the eps cascade, and the reference AutoAttack (pyautoattack) as an oracle.

FAB is deterministic without restarts, so ours and the reference run the same algorithm on the
same points; the tolerances (1% on the median norm, 1 point of robust accuracy) only absorb the
float noise of the closest-boundary choice and our final search (which only shortens norms).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.optimize import linprog, minimize
from torch import nn

import attacks
from attacks.fab_projections import project_to_hyperplane
from attacks.threat import Norm, norm_of

NORM_TOL, ACC_TOL = 0.01, 0.01
AA_NORM = {"linf": "Linf", "l2": "L2"}


@pytest.fixture(scope="module")
def held_out(digits):
    x, y = digits
    return x[1200:1500].clone(), y[1200:1500].clone()


def _planes(n: int, d: int, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, d, generator=g, dtype=dtype)
    w = torch.randn(n, d, generator=g, dtype=dtype)
    w[:, :2] = 0  # coordinates the plane ignores stay put
    b = torch.randn(n, generator=g, dtype=dtype) * 2
    return t, w, b


def _brute_force(t, w, b, norm: Norm, bounds) -> float:
    """The minimal norm by a generic solver (linprog for linf, SLSQP for l2)."""
    lo, hi = bounds
    d = len(t)
    box = [(lo - t[j], hi - t[j]) for j in range(d)]
    rhs = b - w @ t
    if norm is Norm.LINF:
        a_ub = np.r_[np.c_[np.eye(d), -np.ones(d)], np.c_[-np.eye(d), -np.ones(d)]]
        res = linprog(
            np.r_[np.zeros(d), 1.0], A_ub=a_ub, b_ub=np.zeros(2 * d), A_eq=np.r_[w, 0][None],
            b_eq=[rhs], bounds=[*box, (0, None)], method="highs",
        )  # fmt: skip
        return float(res.fun)
    res = minimize(
        lambda z: z @ z, np.zeros(d), jac=lambda z: 2 * z, bounds=box, method="SLSQP",
        constraints=[{"type": "eq", "fun": lambda z: w @ z - rhs}],
        options={"ftol": 1e-15, "maxiter": 500},
    )  # fmt: skip
    return float(np.sqrt(res.fun))


@pytest.mark.parametrize("norm", [Norm.LINF, Norm.L2])
@pytest.mark.parametrize("bounds", [(0.0, 1.0), (-1.0, 2.0)])
def test_projection_is_the_minimal_feasible_perturbation(norm, bounds):
    lo, hi = bounds
    t, w, b = _planes(40, 16, seed=1)
    t = lo + (hi - lo) * t
    b = b * (hi - lo)
    d = project_to_hyperplane(t, w, b, norm, bounds)
    z = t + d
    assert (z >= lo - 1e-12).all() and (z <= hi + 1e-12).all()
    assert (d[:, :2] == 0).all()
    on_plane = ((w * z).sum(1) - b).abs() < 1e-9
    assert float(on_plane.double().mean()) > 0.7
    size = norm_of(d, norm)
    for i in range(20):
        if on_plane[i]:
            ref = _brute_force(t[i].numpy(), w[i].numpy(), float(b[i]), norm, bounds)
            assert float(size[i]) == pytest.approx(ref, rel=1e-6, abs=1e-9), i


@pytest.mark.parametrize("norm", [Norm.LINF, Norm.L2])
def test_projection_out_of_reach_goes_to_the_closest_corner(norm):
    t, w, b = _planes(30, 16, seed=3)
    gap = (w * t).sum(1) - b
    b = b + 100 * torch.sign(gap) * w.abs().sum(1)  # far beyond what the box can reach
    z = t + project_to_hyperplane(t, w, b, norm, (0.0, 1.0))
    towards = (w * t).sum(1) > b  # the plane lies where w . z decreases
    corner = torch.where((w > 0) == towards.unsqueeze(1), 0.0, 1.0).to(t)
    corner = torch.where(w == 0, t, corner)
    assert torch.allclose(z, corner, atol=1e-12)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_matches_autoattack(norm):
    proj = pytest.importorskip("pyautoattack.fab_projections")
    ref_fn = proj.projection_linf if norm == "linf" else proj.projection_l2
    t, w, b = _planes(300, 50, seed=2)
    ours = project_to_hyperplane(t, w, b, Norm.parse(norm), (0.0, 1.0))
    theirs = ref_fn(t.clone(), w.clone(), b.clone())
    reached = ((w * (t + ours)).sum(1) - b).abs() < 1e-9
    assert torch.allclose(ours[reached], theirs[reached], atol=1e-9)
    p = float("inf") if norm == "linf" else 2.0
    assert (ours.norm(p=p, dim=1) <= theirs.norm(p=p, dim=1) + 1e-9)[reached].all()


def test_zero_normal_gives_no_move():
    t = torch.rand(3, 5)
    d = project_to_hyperplane(t, torch.zeros(3, 5), torch.ones(3), Norm.LINF, (0.0, 1.0))
    assert torch.equal(d, torch.zeros(3, 5))


# ------------------------------------------------------------------------ exact minima


class Linear(nn.Module):
    def __init__(self, w: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.w, self.b = nn.Parameter(w), nn.Parameter(b)

    def forward(self, x):
        return x.flatten(1) @ self.w.t() + self.b


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_finds_the_exact_minimum_of_a_linear_model(norm):
    g = torch.Generator().manual_seed(0)
    w, b = (
        torch.randn(10, 64, generator=g, dtype=torch.float64),
        torch.zeros(10, dtype=torch.float64),
    )
    model = Linear(w, b).eval()
    x = (0.4 + 0.2 * torch.rand(100, 1, 8, 8, generator=g, dtype=torch.float64)) / 1.0
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    dw = w.unsqueeze(0) - w[y].unsqueeze(1)  # [n, C, D]
    df = logits - logits.gather(1, y.unsqueeze(1))
    dual = dw.abs().sum(2) if norm == "linf" else dw.norm(dim=2)
    exact = (df.abs() / dual).scatter(1, y.unsqueeze(1), float("inf")).amin(1)
    assert float(exact.max()) < 0.4  # the box [0, 1] is not active around x in [0.4, 0.6]
    res = attacks.create("fab", norm=norm, steps=50)(model, x, y)
    assert res.norms.isfinite().all()
    assert (res.norms >= exact * (1 - 1e-6)).all()  # nothing beats the true minimum
    assert (res.norms <= exact * (1 + 1e-3)).all()


# ------------------------------------------------------------------ passes and settings


def test_passes_are_counted(digits_model, held_out):
    x, y = held_out
    res = attacks.create("fab", steps=10, final_search_steps=0)(digits_model, x, y)
    n = int(res.clean_correct.sum())
    assert res.n_backward == 10 * 9 * n  # one backward pass per other class and step
    assert res.n_forward == len(y) + n + 2 * 10 * n  # clean, final check, 2 per step
    fab_t = attacks.create("fab_t", steps=10, n_target_classes=3, final_search_steps=0)
    res_t = fab_t(digits_model, x, y)
    assert res_t.n_backward == 10 * 3 * n  # one per step and target, every target run


def test_zero_gradient_at_the_start_stops_at_once():
    class Flat(torch.nn.Module):
        def forward(self, x):
            return torch.round(x.flatten(1)[:, :3] * 0)  # constant: zero gradient everywhere

    x = torch.rand(6, 1, 4, 4)
    y = torch.zeros(6, dtype=torch.long)
    res = attacks.create("fab_t", steps=50, n_target_classes=2)(Flat(), x, y)
    assert res.n_backward <= 2 * 2 * 6  # one linearisation per target, then it stops
    assert not res.success.any()


def test_eps_cascade_is_cheaper_and_full_search_is_never_weaker(digits_model, held_out):
    x, y = held_out
    e = 0.08
    full = attacks.create("fab_t", steps=20, n_target_classes=4)(digits_model, x, y, eps=e)
    cascade = attacks.create("fab_t", steps=20, n_target_classes=4, eps=e)
    res = cascade(digits_model, x, y, eps=e)
    assert res.n_backward < 0.7 * full.n_backward
    assert not (res.success & ~full.success).any()  # the full search breaks a superset
    assert (res.norms[res.success] <= e).all()  # a row within eps stops there, unrefined
    assert (full.norms[~res.success] <= res.norms[~res.success] + 1e-7).all()
    assert float(res.robust_accuracy) < float(res.clean_correct.float().mean()) - 0.2


def test_final_search_and_restarts_only_shorten(digits_model, held_out):
    x, y = held_out
    for norm in ("linf", "l2"):
        plain = attacks.create("fab", norm=norm, steps=20, final_search_steps=0)
        searched = attacks.create("fab", norm=norm, steps=20)
        restarted = attacks.create("fab", norm=norm, steps=20, restarts=3, final_search_steps=0)
        n0 = plain(digits_model, x, y).norms
        n1 = searched(digits_model, x, y).norms
        n3 = restarted(digits_model, x, y).norms
        assert (n1 <= n0 + 1e-7).all() and (n1 < n0 - 1e-6).any()
        assert (n3 <= n0 + 1e-7).all() and (n3 < n0 - 1e-6).any()


def test_targeted(digits_model, held_out):
    x, y = held_out
    target = (y + 3) % 10
    res = attacks.create("fab", targeted=True, steps=50)(digits_model, x, y, target=target)
    with torch.no_grad():
        pred = digits_model(res.x_adv).argmax(1)
    found = res.norms.isfinite()
    assert float(found.float().mean()) > 0.9
    assert (pred[found] == target[found]).all()
    untargeted = attacks.create("fab", steps=50)(digits_model, x, y)
    assert float(untargeted.norms.median()) < float(res.norms.median())


def test_bad_settings():
    with pytest.raises(ValueError, match="fab_t picks its own target"):
        attacks.create("fab_t", targeted=True)
    for kw, match in [
        ({"alpha_max": 1.5}, "alpha_max"),
        ({"eta": 0.0}, "eta"),
        ({"beta": -0.1}, "beta"),
        ({"eps": 0.0}, "eps"),
        ({"final_search_steps": -1}, "final_search_steps"),
        ({"steps": 0}, "steps"),
    ]:
        with pytest.raises(ValueError, match=match):
            attacks.create("fab", **kw)
    with pytest.raises(ValueError, match="target="):
        attacks.create("fab", targeted=True)(
            nn.Linear(4, 3), torch.rand(2, 4), torch.zeros(2).long()
        )


def test_zero_gradients_give_no_nan(digits_model, held_out):
    x, y = held_out

    class Rounded(nn.Module):
        def forward(self, z):
            return digits_model((z * 16).round() / 16)

    res = attacks.create("fab", steps=5)(Rounded(), x[:50], y[:50], eps=0.1)
    assert torch.isfinite(res.x_adv).all()
    assert not res.norms.isnan().any()


def test_in_a_suite_at_a_fixed_eps(digits_model, held_out):
    x, y = held_out
    e = 0.08
    fgsm = attacks.create("fgsm")
    suite = attacks.AttackSuite([fgsm, attacks.create("fab_t", steps=30, eps=e)])
    res = suite(digits_model, x, y, eps=e)
    alone = fgsm(digits_model, x, y, eps=e)
    assert float(norm_of(res.x_adv - x, Norm.LINF).max()) <= e + 1e-6
    with torch.no_grad():
        assert torch.equal(digits_model(res.x_adv).argmax(1) != y, res.success)
    broken = res.details["broken_by"][e]
    assert broken.get("fab_t", 0) > 0
    assert float(res.robust_accuracy) < float(alone.robust_accuracy)


def test_a_sample_gets_the_same_result_in_any_batch(digits_model, digits):
    x, y = digits
    x, y = x[1200:1300].double(), y[1200:1300]
    model = copy.deepcopy(digits_model).double().eval()
    ids = torch.arange(100) * 7 + 3
    attack = attacks.create("fab", norm="l2", steps=15, restarts=2)
    full = attack(model, x, y, ids=ids)
    parts = [
        attack(model, x[i : i + 7], y[i : i + 7], ids=ids[i : i + 7]).x_adv for i in range(0, 49, 7)
    ]
    assert torch.allclose(torch.cat(parts), full.x_adv[:49], atol=1e-9, rtol=0)
    alone = attack(model, x[5:6], y[5:6], ids=ids[5:6])
    assert torch.allclose(alone.x_adv[0], full.x_adv[5], atol=1e-9, rtol=0)
    other = attack(model, x, y, ids=ids + 1)
    assert not torch.allclose(other.x_adv, full.x_adv)  # restarts draw per sample id


# ------------------------------------------------------------------------- the oracle


def _reference_norms(model, x, y, x_ref, norm: str, clean: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        ok = (model(x_ref).argmax(1) != y) & clean
    size = norm_of(x_ref - x, Norm.parse(norm))
    return torch.where(ok, size, torch.full_like(size, float("inf")))


def _compare_fab(model, x, y, norm: str, steps: int) -> None:
    fab_pt = pytest.importorskip("pyautoattack.fab_pt")
    res = attacks.create("fab", norm=norm, steps=steps)(model, x, y)
    ref = fab_pt.FABAttack_PT(model, norm=AA_NORM[norm], n_restarts=1, n_iter=steps, eps=1e10)
    clean = res.clean_correct
    theirs = _reference_norms(model, x, y, ref.perturb(x, y), norm, clean)[clean]
    ours = res.norms[clean]
    assert float(ours.isfinite().float().mean()) >= float(theirs.isfinite().float().mean())
    assert float(theirs.isfinite().float().mean()) > 0.9
    assert float(ours.median()) <= float(theirs.median()) * (1 + NORM_TOL)


def _compare_fab_t(model, x, y, norm: str, eps: float, steps: int) -> None:
    fab_pt = pytest.importorskip("pyautoattack.fab_pt")
    ours = attacks.create("fab_t", norm=norm, steps=steps, eps=eps)(model, x, y, eps=eps)
    ref = fab_pt.FABAttack_PT(
        model, norm=AA_NORM[norm], n_restarts=1, n_iter=steps, eps=eps, targeted=True,
        n_target_classes=9,
    )  # fmt: skip
    x_ref = ref.perturb(x, y)
    theirs = _reference_norms(model, x, y, x_ref, norm, ours.clean_correct) <= eps + 1e-6
    their_acc = float((ours.clean_correct & ~theirs).float().mean())
    assert their_acc < float(ours.clean_correct.float().mean()) - 0.1  # informative
    assert float(ours.robust_accuracy) <= their_acc + ACC_TOL


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_not_weaker_than_autoattack(digits_model, held_out, norm):
    x, y = held_out
    _compare_fab(digits_model, x[:150], y[:150], norm, steps=30)


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.08), ("l2", 0.4)])
def test_fab_t_not_weaker_than_autoattack(digits_model, held_out, norm, eps):
    x, y = held_out
    _compare_fab_t(digits_model, x[:150], y[:150], norm, eps, steps=20)


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_not_weaker_than_autoattack_on_mnist(mnist_cnn, norm):
    model, x, y = mnist_cnn
    x, y = x[:100], y[:100]
    _compare_fab(model, x, y, norm, steps=100)


@pytest.mark.slow
def test_fab_t_not_weaker_than_autoattack_on_mnist(mnist_cnn):
    model, x, y = mnist_cnn
    x, y = x[:100], y[:100]
    _compare_fab_t(model, x, y, "linf", 0.1, steps=100)


def test_with_eps_is_a_fixed_budget_copy(digits_model, held_out):
    x, y = held_out
    fab_t = attacks.create("fab_t", steps=20, n_target_classes=3)
    member = fab_t.with_eps(0.08)
    assert member.eps == 0.08 and fab_t.eps is None and member.config()["eps"] == 0.08
    full, cascade = fab_t(digits_model, x, y, eps=0.08), member(digits_model, x, y, eps=0.08)
    assert cascade.n_backward < full.n_backward
    assert float(cascade.robust_accuracy) <= float(full.robust_accuracy) + 0.02
    with pytest.raises(ValueError, match="eps"):
        fab_t.with_eps(0.0)
