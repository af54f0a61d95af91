"""Regularisation: dropout insertion, robust early stopping, standard training, distillation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attacks
import defenses
from defenses.regularization import RobustEarlyStopping, add_dropout
from defenses.storage import load_trusted
from defenses.training import Plugin, Trainer

COMMON = {"epochs": 4, "batch_size": 64, "lr": 1e-2, "progress": False}


def test_add_dropout_to_sequential_keeps_parameter_names(make_mlp):
    model = make_mlp()
    keys = list(model.state_dict())
    add_dropout(model, 0.5)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 1 and drops[0].p == 0.5
    assert list(model.state_dict()) == keys
    x = torch.rand(4, 1, 8, 8)
    model.train()
    assert not torch.equal(model(x), model(x))  # stochastic in train mode
    model.eval()
    assert torch.equal(model(x), model(x))


def test_add_dropout_in_nested_conv_model():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.Sequential(nn.Flatten(), nn.Linear(144, 32), nn.ReLU(), nn.Linear(32, 10)),
    )
    add_dropout(model, 0.1)
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 1  # before the last Linear
    existing = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.Dropout(0.0), nn.Linear(4, 2))
    add_dropout(existing, 0.3)
    assert existing[2].p == 0.3


def test_add_dropout_errors():
    with pytest.raises(ValueError, match="no activation feeding a Linear"):
        add_dropout(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), 0.2)
    with pytest.raises(ValueError, match="dropout rate must be in"):
        add_dropout(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)), 1.0)


class Sabotage(Plugin):
    """Scrambles the weights after some epoch: robust accuracy really drops."""

    def __init__(self, after):
        self.after = after

    def on_epoch_end(self, state, epoch, metrics):
        if epoch >= self.after:
            g = torch.Generator().manual_seed(epoch)
            with torch.no_grad():
                for p in state.model.parameters():
                    p.add_(torch.randn(p.shape, generator=g))


def test_early_stopping_restores_best_robust_checkpoint(digits_sets, make_mlp, tmp_path):
    train, val, _ = digits_sets
    at = defenses.create("pgd_at", eps=0.1, steps=5, step_size=0.04, **COMMON)
    es = RobustEarlyStopping(0.1, n=150, steps=5, patience=2)
    history = []
    model = Trainer(epochs=8, batch_size=64, optimizer="adam", lr=1e-2, progress=False).fit(
        make_mlp(),
        train,
        val,
        batch_fn=at.loss,
        plugins=[Sabotage(after=3), es],
        callbacks=[lambda e, m: history.append(m)],
        checkpoint_dir=tmp_path,
    )
    accs = [m["val_robust_acc"] for m in history]
    # epochs 3 and 4 (0-based) are sabotaged: worse than the best -> stop after patience=2
    assert len(history) == 5
    assert es.best_epoch <= 2 and es.best == max(accs)
    assert accs[-1] < es.best - 0.1
    assert {p.name for p in tmp_path.iterdir()} == {"last.pt", "best.pt"}
    best = load_trusted(tmp_path / "best.pt")
    assert best["epoch"] == es.best_epoch
    for k, v in model.state_dict().items():
        assert torch.equal(v, best["model"][k])
    x, y = es._x, es._y
    res = attacks.create("pgd", steps=5, seed=0)(model, x, y, eps=0.1)
    assert float(res.robust_accuracy) == pytest.approx(es.best)


def test_early_stopping_option_on_every_training_defense(digits_sets, make_mlp):
    train, val, _ = digits_sets
    history = []
    d = defenses.create("standard", early_stopping={"eps": 0.0, "every": 2, "n": 100}, **COMMON)
    d.fit(make_mlp(), train, val, callbacks=[lambda e, m: history.append(m)])
    assert ["val_robust_acc" in m for m in history] == [False, True, False, True]
    for name in ("pgd_at", "fgsm_at", "trades", "distillation"):
        kw = (
            {"early_stopping": {"eps": 0.1}} if name == "distillation" else {"early_stopping": True}
        )
        with pytest.raises(ValueError, match="needs a validation set"):
            defenses.create(name, **kw, progress=False).fit(make_mlp(), train)


def test_early_stopping_needs_eps_for_standard_training():
    with pytest.raises(ValueError, match="needs an attack budget"):
        defenses.create("standard", early_stopping=True)
    with pytest.raises(TypeError, match="early_stopping must be None, True or a dict"):
        defenses.create("standard", early_stopping="yes")
    with pytest.raises(TypeError, match="unexpected keyword"):
        defenses.create("standard", early_stopping={"eps": 0.1, "patiense": 2})


def test_standard_training_with_regularisers(digits_sets, make_mlp):
    train, val, (xt, yt) = digits_sets
    d = defenses.create(
        "standard",
        dropout=0.2,
        weight_decay=1e-4,
        label_smoothing=0.1,
        gaussian_noise=0.1,
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        schedule="piecewise",
        **{k: v for k, v in COMMON.items() if k != "lr"},
    )
    model = d.fit(make_mlp(), train, val)
    assert any(isinstance(m, nn.Dropout) for m in model.modules())
    assert float((model(xt).argmax(1) == yt).float().mean()) > 0.8
    assert d.trainer.optimizer == "sgd" and d.trainer.weight_decay == 1e-4


def test_distillation_trains_teacher_then_student(digits_sets, make_mlp, tmp_path):
    train, val, (xt, yt) = digits_sets
    seen = []
    model = defenses.create("distillation", temperature=10, **COMMON).fit(
        make_mlp(),
        train,
        val,
        callbacks=[lambda e, m: seen.append(sorted(m)[0])],
        checkpoint_dir=tmp_path,
    )
    assert seen[:4] == ["teacher_epoch_time"] * 4 and seen[4:] == ["epoch_time"] * 4
    assert {p.name for p in tmp_path.iterdir()} == {"teacher", "student"}
    assert float((model(xt).argmax(1) == yt).float().mean()) > 0.7
    plain = defenses.create("standard", **COMMON).fit(make_mlp(), train)
    # trained at T=10 and deployed at T=1: much larger logits (saturated softmax)
    assert model(xt).std() > 3 * plain(xt).std()


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"dropout": 1.0}, "dropout must be in"),
        ({"label_smoothing": -0.1}, "label_smoothing must be in"),
        ({"gaussian_noise": -1}, "gaussian_noise must be >= 0"),
        ({"weight_decay": -1}, "weight_decay must be >= 0"),
        ({"bounds": (1, 0)}, "lo < hi"),
    ],
)
def test_bad_regulariser_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        defenses.create("standard", **kw)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        defenses.create("distillation", temperature=0)
