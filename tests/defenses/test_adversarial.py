"""Adversarial training: it works, it attacks every sample, the guard rolls back, bad input."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Subset

import attacks
import defenses
from attacks.threat import Norm, norm_of
from defenses.adversarial import perturb

EPS = 0.2
COMMON = {"epochs": 10, "batch_size": 64, "lr": 1e-2, "progress": False}


def pgd_accuracy(model, x, y, eps=EPS):
    return float(attacks.create("pgd", steps=20)(model, x, y, eps=eps).robust_accuracy)


@pytest.fixture(scope="module")
def undefended(trained):
    return trained("digits_mlp_standard")


@pytest.mark.parametrize(
    "recipe",
    ["digits_mlp_pgd_at", "digits_mlp_fgsm_at", "digits_mlp_trades", "digits_mlp_pgd_at_mix"],
)
def test_adversarial_training_raises_pgd_accuracy(digits_sets, trained, undefended, recipe):
    """Each defense trains the MLP for real (tests/trained.py: cached until the code changes)."""
    _, _, (xt, yt) = digits_sets
    base = pgd_accuracy(undefended, xt, yt)
    model = trained(recipe)
    robust = pgd_accuracy(model, xt, yt)
    clean = float((model(xt).argmax(1) == yt).float().mean())
    assert base < 0.1
    assert robust > base + 0.2, (recipe, base, robust)
    assert clean > 0.6
    assert not model.training


def test_perturb_attacks_every_sample_and_restores_model(make_mlp, digits_sets):
    train, _, _ = digits_sets
    model = make_mlp().train()  # untrained: most samples are misclassified clean
    x, y = train.tensors[0][:64], train.tensors[1][:64]
    atk = attacks.create("pgd", steps=5, step_size=0.05, early_stop=False)
    x_adv = perturb(atk, model, x, y, 0.2)
    assert (x_adv - x).flatten(1).abs().amax(1).gt(0).all()  # every sample moved
    assert float(norm_of(x_adv - x, Norm.LINF).max()) <= 0.2 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert model.training and all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="outside the bounds"):
        perturb(atk, model, x * 3, y, 0.2)


def test_mix_perturbs_only_a_fraction_of_the_batch(make_mlp, digits_sets):
    train, _, _ = digits_sets
    model = make_mlp().eval()
    x, y = train.tensors[0][:10], train.tensors[1][:10]
    d = defenses.create("pgd_at", eps=0.2, steps=3, step_size=0.1, mix=0.3, progress=False)
    _, logits = d.objective(model, x, y)
    with torch.no_grad():
        clean = model(x)
    assert torch.allclose(logits[3:], clean[3:])
    assert not torch.allclose(logits[:3], clean[:3])


def test_fgsm_at_guard_holds_out_a_slice_of_train(digits_sets, make_mlp):
    train, _, _ = digits_sets
    d = defenses.create("fgsm_at", eps=EPS, alpha=0.25, guard_n=100, **{**COMMON, "epochs": 1})
    rest, plugins = d.setup(train, None)
    assert len(rest) == len(train) - 100
    guard = plugins[-1]
    held = set(guard.data.indices)
    assert held.isdisjoint(rest.indices) and len(held) == 100
    history = []
    d.fit(make_mlp(), train, callbacks=[lambda e, m: history.append(m)])
    assert "guard_pgd_acc" in history[0]


def test_fgsm_at_defaults_follow_wong_et_al():
    d = defenses.create("fgsm_at")
    t = d.trainer
    assert (d.eps, d.alpha) == (0.3, 0.375)
    assert (t.optimizer, t.lr, t.schedule, t.peak, t.epochs, t.batch_size) == (
        "adam",
        5e-3,
        "cyclic",
        0.4,
        10,
        100,
    )
    assert d.attack.random_start and d.attack.alpha(0.3) == 0.375


def test_fgsm_at_without_val_on_tiny_data_says_it_needs_validation(digits_sets, make_mlp):
    train, _, _ = digits_sets
    tiny = Subset(train, list(range(300)))
    with pytest.raises(ValueError, match="needs a validation set"):
        defenses.create("fgsm_at", guard_n=512, progress=False).fit(make_mlp(), tiny)


@pytest.mark.parametrize(
    ("name", "kw", "match"),
    [
        ("pgd_at", {"eps": -0.1}, "eps must be > 0"),
        ("pgd_at", {"eps": 0}, "eps must be > 0"),
        ("fgsm_at", {"eps": float("nan")}, "eps must be > 0"),
        ("trades", {"eps": 1.5}, "whole"),
        ("fgsm_at", {"alpha": 0}, "alpha must be > 0"),
        ("fgsm_at", {"alpha": -0.375}, "alpha must be > 0"),
        ("pgd_at", {"step_size": -0.01}, "step_size"),
        ("pgd_at", {"steps": 0}, "steps must be a positive integer"),
        ("pgd_at", {"epochs": 0}, "epochs must be a positive integer"),
        ("fgsm_at", {"epochs": 2.5}, "epochs must be a positive integer"),
        ("trades", {"epochs": -1}, "epochs must be a positive integer"),
        ("pgd_at", {"mix": 0.0}, "mix must be in"),
        ("pgd_at", {"mix": 1.5}, "mix must be in"),
        ("trades", {"mix": 0.5}, "beta already weighs"),
        ("trades", {"beta": -1}, "beta must be >= 0"),
        ("fgsm_at", {"guard_action": "panic"}, "'stop' or 'reduce_lr'"),
        ("pgd_at", {"norm": "l3"}, "Unknown norm"),
    ],
)
def test_bad_settings(name, kw, match):
    with pytest.raises(ValueError, match=match):
        defenses.create(name, **kw)


def test_non_numeric_eps_is_a_type_error():
    with pytest.raises(TypeError, match="eps must be a number"):
        defenses.create("pgd_at", eps="0.3")


def test_training_inputs_outside_bounds_are_rejected(digits_sets, make_mlp):
    train, _, _ = digits_sets
    bad = torch.utils.data.TensorDataset(train.tensors[0] * 255, train.tensors[1])
    with pytest.raises(ValueError, match="outside the bounds"):
        defenses.create("pgd_at", steps=2, epochs=1, progress=False).fit(make_mlp(), bad)


def test_l2_training_crafts_l2_examples_and_trains(digits_sets, make_mlp, weights_equal):
    train, _, _ = digits_sets
    d = defenses.create(
        "pgd_at", norm="l2", eps=1.0, steps=3, step_size=None, **{**COMMON, "epochs": 1}
    )
    assert d.attack.norm is Norm.L2
    x, y = train.tensors[0][:32], train.tensors[1][:32]
    x_adv = perturb(d.attack, make_mlp().eval(), x, y, 1.0)
    dist = norm_of(x_adv - x, Norm.L2)
    assert float(dist.max()) <= 1.0 + 1e-5 and float(dist.mean()) > 0.5
    init = make_mlp()
    model = d.fit(make_mlp(), train)
    assert not weights_equal(model, init) and not model.training


def test_trades_inner_maximisation_increases_kl(digits_model, digits_batch):
    x, _ = digits_batch
    d = defenses.create("trades", eps=0.1, steps=10, step_size=0.02)
    x_adv = d.adversarial(digits_model, x)
    assert float((x_adv - x).abs().max()) <= 0.1 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        p = torch.softmax(digits_model(x), 1)
        noise = (x + 0.1 * torch.sign(torch.randn_like(x))).clamp(0, 1)

        def kl(z):
            return torch.nn.functional.kl_div(
                torch.log_softmax(digits_model(z), 1), p, reduction="batchmean"
            )

        assert kl(x_adv) > 5 * kl(noise)
    assert not digits_model.training


def test_fgsm_at_step_matches_wong_et_al_code(make_mlp, digits_batch):
    """Unclipped uniform start, one signed step of alpha, clamp to the ball, then to [0, 1]."""
    from attacks.rng import Stream, draw_seed

    model = make_mlp().eval()
    x, y = digits_batch
    d = defenses.create("fgsm_at", eps=0.3, alpha=0.375)
    torch.manual_seed(5)
    ours = perturb(d.attack, model, x, y, 0.3, d.bounds)
    torch.manual_seed(5)  # perturb's draws: (fgsm's seed, sample id, this call's scope)
    scope = ("fgsm", "perturb", draw_seed(), "eps", 0.3, "start", 0)
    u = Stream(d.attack.seed, torch.arange(len(x)), scope).uniform(x.shape[1:])
    delta = ((2 * u - 1) * 0.3).requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model(x + delta), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, delta)
    delta = torch.clamp(delta.detach() + 0.375 * grad.sign(), -0.3, 0.3)
    delta = torch.max(torch.min(1 - x, delta), -x)
    assert torch.allclose(ours, x + delta, atol=1e-6)
    clipped = defenses.create("fgsm_at", eps=0.3, alpha=0.375, clip_start=True)
    torch.manual_seed(5)
    assert not torch.allclose(perturb(clipped.attack, model, x, y, 0.3, d.bounds), ours)
