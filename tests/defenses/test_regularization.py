"""Regularisation: dropout insertion, robust early stopping, standard training, distillation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import defenses
from defenses.regularization import add_dropout

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
