"""Carlini-Wagner L2 and APGD (CE, targeted DLR) on the digits model: strength and semantics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attacks
from attacks.apgd import _State, checkpoints
from attacks.threat import norm_of

STEPS = 20


def robust_count(res: attacks.AttackResult) -> int:
    return int((~res.success).sum())


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 1.0)])
def test_apgd_at_least_as_strong_as_pgd(digits_model, digits_batch, norm, eps):
    x, y = digits_batch
    pgd = attacks.create("pgd", norm=norm, steps=STEPS)(digits_model, x, y, eps=eps)
    apgd = attacks.create("apgd_ce", norm=norm, steps=STEPS)(digits_model, x, y, eps=eps)
    clean_correct = int(pgd.clean_correct.sum())
    assert robust_count(pgd) < clean_correct  # the budget matters on this model
    assert robust_count(apgd) <= robust_count(pgd) + len(y) // 100  # within one point
    assert apgd.n_backward <= STEPS * len(y)  # at most `steps` passes per sample


def test_apgd_dlr_breaks_what_ce_breaks(digits_model, digits_batch):
    x, y = digits_batch
    ce = attacks.create("apgd_ce", steps=STEPS)(digits_model, x, y, eps=0.1)
    dlr = attacks.create("apgd_dlr", steps=STEPS, n_target_classes=3)(digits_model, x, y, eps=0.1)
    assert robust_count(dlr) <= robust_count(ce) + len(y) // 100
    assert dlr.n_backward <= 3 * STEPS * len(y)


@pytest.mark.parametrize("name", ["apgd_dlr", "apgd_ce"])
def test_apgd_targeted_reaches_the_target(digits_model, digits_batch, name):
    x, y = digits_batch
    target = (y + 1) % 10
    atk = attacks.create(name, steps=STEPS, targeted=True)
    res = atk(digits_model, x, y, eps=0.3, target=target)
    with torch.no_grad():
        pred = digits_model(res.x_adv).argmax(1)
    assert torch.equal(res.success, pred == target)
    assert res.success.float().mean() > 0.9


def test_checkpoint_schedule_follows_the_paper():
    # p = 0, .22, .41, .57, .70, .80, .87, .93, .99: steps of max(previous - .03, .06)
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(1) == []


def test_apgd_halves_the_step_and_restarts_from_the_best_point():
    x = torch.zeros(2, 3)
    s = _State(x, x + 0.1, torch.tensor([0.5, 0.5]))
    s.observe(0, torch.tensor([1.0, 1.0]), torch.ones(2, 3))
    s.x_cur = x + 0.2
    s.observe(1, torch.tensor([0.5, 2.0]), torch.ones(2, 3))  # sample 0 worse, 1 better
    s.checkpoint(min_increases=0.75)  # condition 1: fewer than rho * 1 loss increases
    assert s.eta.tolist() == [0.25, 0.5]
    assert torch.equal(s.x_cur, torch.stack([x[0] + 0.1, x[1] + 0.2]))
    assert torch.equal(s.x_prev[0], s.x_cur[0])  # no momentum out of a restart
    for i, f in ((2, [2.0, 1.0]), (3, [3.0, 1.5])):  # both rise once; only sample 0 beats its best
        s.x_cur = x + 0.3
        s.observe(i, torch.tensor(f), torch.ones(2, 3))
    s.checkpoint(min_increases=0.5)  # condition 2: not halved last time and no new best
    assert s.eta.tolist() == [0.25, 0.25]
    assert torch.equal(s.x_cur[1], x[1] + 0.2)


@pytest.mark.parametrize("name", ["apgd_ce", "apgd_dlr"])
def test_apgd_stops_samples_that_cannot_move(digits_model, digits_batch, name):
    x, y = digits_batch

    class HalfMasked(nn.Module):  # rows with a bright first pixel see a rounded (flat) input
        def __init__(self) -> None:
            super().__init__()
            self.net = digits_model

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            flat = (z.flatten(1)[:, :1] > 0.5).view(-1, *([1] * (z.dim() - 1)))
            return self.net(torch.where(flat, torch.round(z), z))

    x = x.clone()
    x.view(len(x), -1)[: len(x) // 2, 0] = 1.0  # the first half is masked
    model = HalfMasked().eval()
    kw = {"n_target_classes": 3} if name == "apgd_dlr" else {}
    atk = attacks.create(name, steps=50, **kw)
    res = atk(model, x, y, eps=0.1)
    full_cost = 50 * (3 if name == "apgd_dlr" else 1) * len(y)
    assert res.n_backward < 0.7 * full_cost  # the masked half stops after one pass
    half = torch.arange(len(x) // 2, len(x))
    plain = atk(digits_model, x[half], y[half], eps=0.1, ids=half)
    torch.testing.assert_close(res.success[len(x) // 2 :], plain.success)  # the rest unchanged


def test_cw_norms_finite_for_successes_inf_for_failures(digits_model, digits_batch):
    x, y = digits_batch
    weak = attacks.create("cw_l2", steps=5, binary_search_steps=1, initial_const=1e-3)
    res = weak(digits_model, x, y)  # eps=None: success means any finite norm
    assert torch.equal(res.success, res.norms.isfinite())
    failed = ~res.success
    assert failed.any() and res.success.any()
    assert torch.equal(res.x_adv[failed], x[failed])
    with torch.no_grad():
        fooled = digits_model(res.x_adv).argmax(1) != y
    assert torch.equal(fooled, res.success)
    measured = norm_of(res.x_adv - x, "l2")
    assert torch.allclose(measured[res.success], res.norms[res.success], atol=1e-5)


def test_cw_is_thresholded_over_eps(digits_model, digits_batch):
    x, y = digits_batch
    cw = attacks.create("cw_l2", steps=50, binary_search_steps=5, initial_const=1e-2)
    eps = [0.25, 0.5, 1.0, 2.0]
    res = cw(digits_model, x, y, eps=eps)
    assert res.norms.shape == (len(y),)
    assert res.norms.isfinite().float().mean() > 0.95  # CW breaks almost every sample
    for k, e in enumerate(eps):
        assert torch.equal(res.success[k], res.norms <= e + 1e-6)
        assert float(norm_of(res.x_adv[k] - x, "l2").max()) <= e + 1e-6
    median = res.norms[res.norms.isfinite()].median()
    assert 0.1 < median < 1.5, median


def test_cw_norms_are_nearly_minimal(digits_model, digits_batch):
    x, y = digits_batch
    res = attacks.create("cw_l2")(digits_model, x, y)
    assert res.norms.isfinite().all()
    e = float(res.norms.median())
    # CW breaks half the samples within its median norm; if PGD with that fixed budget broke
    # far more, CW's "minimal" norms would be loose
    pgd = attacks.create("pgd", norm="l2", steps=100)(digits_model, x, y, eps=e)
    assert pgd.robust_accuracy >= 0.4


def test_cw_targeted(digits_model, digits_batch):
    x, y = digits_batch
    target = (y + 3) % 10
    cw = attacks.create("cw_l2", targeted=True)
    res = cw(digits_model, x, y, target=target)
    with torch.no_grad():
        pred = digits_model(res.x_adv).argmax(1)
    assert torch.equal(res.success, pred == target)
    assert res.success.float().mean() > 0.9


def test_cw_confidence_gives_larger_margins(digits_model, digits_batch):
    x, y = digits_batch
    kw = {"steps": 50, "binary_search_steps": 5, "initial_const": 1e-2}
    plain = attacks.create("cw_l2", **kw)(digits_model, x, y)
    sure = attacks.create("cw_l2", confidence=5.0, **kw)(digits_model, x, y)
    both = plain.norms.isfinite() & sure.norms.isfinite() & plain.clean_correct
    assert both.sum() > 100
    assert (sure.norms[both] > plain.norms[both]).float().mean() > 0.9
    with torch.no_grad():
        logits = digits_model(sure.x_adv[both])
    z_y = logits.gather(1, y[both].unsqueeze(1)).squeeze(1)
    other = logits.scatter(1, y[both].unsqueeze(1), float("-inf")).amax(1)
    assert (other - z_y >= 5.0 - 1e-4).all()


def test_apgd_dlr_needs_four_classes(digits):
    x, y = digits
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with pytest.raises(ValueError, match="at least 4 classes"):
        attacks.create("apgd_dlr", steps=2)(model, x[:8], y[:8] % 3, eps=0.1)


@pytest.mark.parametrize(
    ("name", "kw", "match"),
    [
        ("cw_l2", {"steps": 0}, "steps"),
        ("cw_l2", {"binary_search_steps": 1.5}, "binary_search_steps"),
        ("cw_l2", {"initial_const": 0}, "initial_const"),
        ("cw_l2", {"learning_rate": float("nan")}, "learning_rate"),
        ("cw_l2", {"confidence": -1}, "confidence"),
        ("cw_l2", {"norm": "linf"}, "l2 attack"),
        ("apgd_ce", {"steps": 0}, "steps"),
        ("apgd_ce", {"restarts": 0}, "restarts"),
        ("apgd_ce", {"rho": 0}, "rho"),
        ("apgd_ce", {"rho": 1.5}, "rho"),
        ("apgd_ce", {"norm": "l1"}, "norm"),
        ("apgd_dlr", {"n_target_classes": 0}, "n_target_classes"),
    ],
)
def test_bad_kwargs(name, kw, match):
    with pytest.raises(ValueError, match=match):
        attacks.create(name, **kw)
