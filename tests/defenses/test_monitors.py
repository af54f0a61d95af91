"""Robust-validation plug-ins: early stopping (Rice et al. 2020) and the overfitting guard."""

from __future__ import annotations

import pytest
import torch

import attacks
import defenses
from defenses.monitors import OverfitGuard, RobustEarlyStopping
from defenses.plugins import Plugin
from defenses.storage import load_trusted
from defenses.trainer import Trainer

EPS = 0.2
COMMON = {"epochs": 4, "batch_size": 64, "lr": 1e-2, "progress": False}


def pgd_accuracy(model, x, y, eps=EPS):
    return float(attacks.create("pgd", steps=20)(model, x, y, eps=eps).robust_accuracy)


class Scramble(Plugin):
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
        plugins=[Scramble(after=3), es],
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


class Sabotage(Plugin):
    """Destroys the model at one epoch: a real collapse of robust accuracy."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, state, epoch, metrics):
        if epoch == self.epoch:
            with torch.no_grad():
                for p in state.model.parameters():
                    p.zero_()


@pytest.mark.parametrize("action", ["stop", "reduce_lr"])
def test_overfit_guard_rolls_back_to_best(digits_sets, make_mlp, action):
    train, val, _ = digits_sets
    d = defenses.create("fgsm_at", eps=EPS, alpha=0.25, guard=False, **{**COMMON, "epochs": 10})
    guard = OverfitGuard(EPS, data=val, n=200, steps=5, drop=0.1, action=action)
    history = []
    model = Trainer(epochs=6, batch_size=64, optimizer="adam", lr=1e-2, progress=False).fit(
        make_mlp(),
        train,
        batch_fn=d.loss,
        plugins=[Sabotage(epoch=3), guard],
        callbacks=[lambda e, m: history.append(m)],
    )
    assert history[3]["guard_rollback"] == 1.0
    assert history[3]["guard_pgd_acc"] < 0.15 < guard.best
    assert guard.rollbacks == 1
    assert len(history) == (4 if action == "stop" else 6)
    if action == "reduce_lr":
        assert history[4]["lr"] == pytest.approx(0.5 * history[2]["lr"])
    assert any(p.abs().sum() > 0 for p in model.parameters())
    assert pgd_accuracy(model, *val.tensors) > 0.2
