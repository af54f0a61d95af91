"""Square Attack: known facts, query accounting, per-sample draws, and the reference oracles.

Oracles: pyautoattack (the reference AutoAttack, ``bench`` extra) for the schedule, the l2
pattern and the strength at equal queries; ART's ``SquareAttack`` for strength at equal
iterations. Tolerance of the strength comparisons: 2 points of robust accuracy. Over 4 seeds on
the digits MLP at 300 queries the robust accuracy of either implementation moves by a standard
deviation of 0.5 to 1.6 points, so 2 points is about two standard deviations of one run's noise,
while ours is 5 to 11 points stronger there (per-sample squares, no wasted colour draws).
"""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from torch import nn

import attacks
from attacks.square import SCHEDULE, l2_pattern, p_at, side_of
from attacks.threat import Norm, norm_of

TOL = 0.02


class Counting(nn.Module):
    """Records the batch size of every forward pass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.sizes = model, []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        return self.model(x)


class NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("this model has no gradients")


class Quantised(nn.Module):
    """The model on inputs rounded to 1/16: zero gradients everywhere (a masked gradient)."""

    def __init__(self, model: nn.Module, gradient_free: bool = False) -> None:
        super().__init__()
        self.model, self.gradient_free = model, gradient_free

    def forward(self, x):
        if self.gradient_free:
            x = NoBackward.apply(x)
        return self.model((x * 16).round() / 16)


@pytest.fixture(scope="module")
def held_out(digits):
    x, y = digits
    return x[1200:1500].clone(), y[1200:1500].clone()


def _acc(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


# ------------------------------------------------------------------ schedule and pattern


def test_schedule_matches_autoattack():
    square = pytest.importorskip("pyautoattack.square")
    for n_queries, rescale in [(5000, False), (5000, True), (1000, True), (10000, False)]:
        ref = square.SquareAttack(
            lambda z: z, n_queries=n_queries, eps=0.1, p_init=0.8, resc_schedule=rescale
        )
        for it in range(n_queries):
            assert p_at(it, 0.8, n_queries, rescale) == ref.p_selection(it), (n_queries, it)
    assert p_at(0, 0.8, 5000, False) == 0.8
    assert p_at(SCHEDULE[-1] + 1, 0.8, 10000, False) == 0.8 / 512


def test_side_lengths():
    # MNIST: 784 pixels, one channel; CIFAR: 3 channels of 32 x 32
    assert side_of(0.8, 784, 1, 28, Norm.LINF) == 25
    assert side_of(0.8 / 512, 784, 1, 28, Norm.LINF) == 1
    assert side_of(0.8 / 512, 784, 1, 28, Norm.L2) == 3  # l2: at least 3
    assert side_of(0.8, 3072, 3, 32, Norm.L2) == 29  # odd
    assert side_of(1.0, 3072, 3, 32, Norm.L2) == 32  # never more than the image
    for p in (0.8 / 2**k for k in range(10)):
        assert side_of(p, 3072, 3, 32, Norm.L2) % 2 == 1 or side_of(p, 3072, 3, 32, Norm.L2) == 32


@pytest.mark.parametrize("s", [1, 3, 5, 8, 11])
def test_l2_pattern_matches_autoattack(s):
    square = pytest.importorskip("pyautoattack.square")
    ref = square.SquareAttack(lambda z: z, norm="L2", eps=1.0, device=torch.device("cpu"))
    torch.manual_seed(0)
    theirs = {tuple(ref.eta(s).flatten().tolist()) for _ in range(20)}  # random transpose
    ours = l2_pattern(s, torch.float64, torch.device("cpu"))
    assert float(ours.norm()) == pytest.approx(1.0)
    for t in theirs:
        t = torch.tensor(t, dtype=torch.float64).view(s, s)
        assert torch.allclose(ours, t, atol=1e-6) or torch.allclose(ours.t(), t, atol=1e-6)


# ------------------------------------------------------------------------ known facts


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.3), ("l2", 3.0)])
def test_undefended_model_falls_at_a_large_eps(digits_model, held_out, norm, eps):
    x, y = held_out
    res = attacks.create("square", norm=norm, n_queries=1000)(digits_model, x, y, eps=eps)
    assert float(res.clean_correct.float().mean()) > 0.9
    assert float(res.robust_accuracy) <= 0.01
    assert res.n_backward == 0
    assert float(norm_of(res.x_adv - x, res_norm := Norm.parse(norm)).max()) <= eps + 1e-6, res_norm


def test_forward_passes_only_and_masked_gradients_do_not_stop_it(digits_model, held_out):
    x, y = held_out
    masked = Quantised(digits_model)
    pgd = attacks.create("pgd", steps=20, random_start=False)(masked, x, y, eps=0.15)
    assert float(pgd.robust_accuracy) >= float(pgd.clean_correct.float().mean()) - 0.02
    square = attacks.create("square", n_queries=500)
    res = square(Quantised(digits_model, gradient_free=True), x, y, eps=0.15)
    assert res.n_backward == 0
    assert float(res.robust_accuracy) < float(pgd.robust_accuracy) - 0.3


def test_queries_are_counted_and_survivors_leave(digits_model, held_out):
    x, y = held_out
    model = Counting(digits_model)
    res = attacks.create("square", n_queries=200)(model, x, y, eps=0.1)
    inner = model.sizes[1:-1]  # without the clean pass and the final check of the sealed call
    assert res.n_forward == sum(model.sizes)
    assert len(inner) == 200  # the start and 199 proposals
    assert all(a >= b for a, b in itertools.pairwise(inner))  # survivors only
    robust = int((~res.success).sum())
    assert inner[-1] == robust and inner[0] == int(res.clean_correct.sum())
    assert sum(inner) <= 200 * inner[0]


def test_accuracy_never_rises_with_eps_and_nested_budgets(digits_model, held_out):
    x, y = held_out
    eps = [0.02, 0.05, 0.1, 0.2]
    res = attacks.create("square", n_queries=300)(digits_model, x, y, eps=eps)
    acc = res.robust_accuracy
    assert (acc[1:] <= acc[:-1]).all(), acc
    assert float(acc[0]) > float(acc[-1]) + 0.3


def test_targeted_and_ce(digits_model, held_out):
    x, y = held_out
    target = (y + 1) % 10
    atk = attacks.create("square", n_queries=500, targeted=True)
    res = atk(digits_model, x, y, eps=0.3, target=target)
    with torch.no_grad():
        pred = digits_model(res.x_adv).argmax(1)
    assert torch.equal(res.success, pred == target)
    assert float(res.success.float().mean()) > 0.8
    margin = attacks.create("square", n_queries=300)(digits_model, x, y, eps=0.1)
    ce = attacks.create("square", n_queries=300, loss="ce")(digits_model, x, y, eps=0.1)
    assert float(ce.robust_accuracy) < float(ce.clean_correct.float().mean()) - 0.2
    assert abs(float(ce.robust_accuracy) - float(margin.robust_accuracy)) < 0.15


def test_restarts_only_help(digits_model, held_out):
    x, y = held_out
    one = attacks.create("square", n_queries=100)(digits_model, x, y, eps=0.1)
    three = attacks.create("square", n_queries=100, restarts=3)(digits_model, x, y, eps=0.1)
    assert not (one.success & ~three.success).any()  # restart 0 is the same run
    assert float(three.robust_accuracy) < float(one.robust_accuracy)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"loss": "dlr"}, "Unknown loss"),
        ({"n_queries": 0}, "n_queries"),
        ({"p_init": 0.0}, "p_init"),
        ({"p_init": 1.5}, "p_init"),
        ({"norm": "l1"}, "norm"),
    ],
)
def test_bad_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        attacks.create("square", **kw)


def test_non_image_inputs_are_refused():
    model = nn.Linear(5, 3)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        attacks.create("square")(model, torch.rand(4, 5), torch.zeros(4, dtype=torch.long), eps=0.1)


# ------------------------------------------------------------- per-sample randomness


@pytest.fixture(scope="module")
def model64(digits_model):
    return copy.deepcopy(digits_model).double().eval()


@pytest.mark.parametrize(
    ("kw", "eps"),
    [({"n_queries": 100, "restarts": 2}, 0.08), ({"norm": "l2", "n_queries": 100}, 0.6)],
    ids=["linf", "l2"],
)
def test_a_sample_gets_the_same_draws_in_any_batch(model64, digits, kw, eps):
    x, y = digits
    x, y = x[1200:1400].double(), y[1200:1400]
    ids = torch.randperm(10_000, generator=torch.Generator().manual_seed(0))[:200]
    attack = attacks.create("square", **kw)
    full = attack(model64, x, y, eps=eps, ids=ids)
    assert 0.05 < float(full.robust_accuracy) < float(full.clean_correct.double().mean())
    parts = [
        attack(model64, x[i : i + 7], y[i : i + 7], eps=eps, ids=ids[i : i + 7]).x_adv
        for i in range(0, 70, 7)
    ]
    assert torch.allclose(torch.cat(parts), full.x_adv[:70], atol=1e-9, rtol=0)
    for i in range(5):
        alone = attack(model64, x[i : i + 1], y[i : i + 1], eps=eps, ids=ids[i : i + 1])
        assert torch.allclose(alone.x_adv[0], full.x_adv[i], atol=1e-9, rtol=0)
    perm = torch.randperm(200, generator=torch.Generator().manual_seed(1))
    shuffled = attack(model64, x[perm], y[perm], eps=eps, ids=ids[perm])
    assert torch.equal(shuffled.success, full.success[perm])
    other_ids = attack(model64, x, y, eps=eps, ids=ids + 1)
    other_seed = attacks.create("square", seed=1, **kw)(model64, x, y, eps=eps, ids=ids)
    assert not torch.allclose(other_ids.x_adv, full.x_adv)
    assert not torch.allclose(other_seed.x_adv, full.x_adv)


# ------------------------------------------------------------------------ the oracles


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 0.5)])
def test_not_weaker_than_autoattack_at_equal_queries(digits_model, held_out, norm, eps):
    square = pytest.importorskip("pyautoattack.square")
    x, y = held_out
    n_queries = 300
    ours = attacks.create("square", norm=norm, n_queries=n_queries)(digits_model, x, y, eps=eps)
    ref = square.SquareAttack(
        digits_model,
        norm={"linf": "Linf", "l2": "L2"}[norm],
        n_queries=n_queries - 1,  # AutoAttack does not count its first query
        eps=eps,
        p_init=0.8,
        resc_schedule=False,
        seed=0,
    )
    x_ref = ref.perturb(x, y)
    theirs = _acc(digits_model, x_ref, y)
    assert theirs < float(ours.clean_correct.float().mean()) - 0.1  # informative setting
    assert float(ours.robust_accuracy) <= theirs + TOL


@pytest.mark.slow
@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 0.5)])
def test_not_weaker_than_art_at_equal_iterations(digits_model, held_out, norm, eps):
    art_evasion = pytest.importorskip("art.attacks.evasion")
    from art.estimators.classification import PyTorchClassifier

    x, y = held_out
    iterations = 300
    clf = PyTorchClassifier(
        model=digits_model,
        loss=nn.CrossEntropyLoss(),
        input_shape=(1, 8, 8),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )
    art = art_evasion.SquareAttack(
        clf,
        norm=np.inf if norm == "linf" else 2,
        max_iter=iterations,
        eps=eps,
        p_init=0.8,
        batch_size=len(y),
        verbose=False,
    )
    np.random.seed(0)
    x_art = torch.as_tensor(art.generate(x.numpy(), y.numpy()))
    assert float(norm_of(x_art - x, Norm.parse(norm)).max()) <= eps + 1e-5
    theirs = _acc(digits_model, x_art, y)
    ours = attacks.create("square", norm=norm, n_queries=iterations + 1, rescale_schedule=True)
    res = ours(digits_model, x, y, eps=eps)
    assert theirs < float(res.clean_correct.float().mean()) - 0.1
    assert float(res.robust_accuracy) <= theirs + TOL


@pytest.mark.slow
@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 1.0)])
def test_not_weaker_than_autoattack_on_mnist(mnist_cnn, norm, eps):
    square = pytest.importorskip("pyautoattack.square")
    model, x, y = mnist_cnn
    n_queries = 1000
    res = attacks.create("square", norm=norm, n_queries=n_queries)(model, x, y, eps=eps)
    ref = square.SquareAttack(
        model,
        norm={"linf": "Linf", "l2": "L2"}[norm],
        n_queries=n_queries - 1,
        eps=eps,
        resc_schedule=False,
    )
    theirs = _acc(model, ref.perturb(x, y), y)
    clean = float(res.clean_correct.float().mean())
    assert clean > 0.9
    assert theirs < clean - 0.1
    assert float(res.robust_accuracy) <= theirs + TOL
    # an undefended model falls to ~0% at a large eps
    big = attacks.create("square", norm=norm, n_queries=n_queries)
    assert float(big(model, x, y, eps=4 * eps).robust_accuracy) <= 0.02
