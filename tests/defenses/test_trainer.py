"""Trainer: metrics, callbacks, schedules, checkpoints and resume."""

from __future__ import annotations

import logging

import pytest
import torch
from torch.utils.data import Subset

import defenses
from defenses.schedules import LRSchedule
from defenses.storage import load_trusted
from defenses.trainer import Trainer


def fast(**kw):
    base = {"epochs": 3, "batch_size": 100, "optimizer": "adam", "lr": 1e-2, "progress": False}
    return Trainer(**{**base, **kw})


def test_fit_trains_returns_eval_model_and_reports_metrics(digits_sets, make_mlp):
    train, val, (xt, yt) = digits_sets
    seen = []
    model = fast().fit(make_mlp(), train, val, callbacks=[lambda e, m: seen.append((e, m))])
    assert not model.training
    assert [e for e, _ in seen] == [0, 1, 2]
    m = seen[-1][1]
    assert {"train_loss", "train_acc", "lr", "epoch_time", "val_loss", "val_acc"} <= set(m)
    assert seen[-1][1]["train_loss"] < seen[0][1]["train_loss"]
    assert m["val_acc"] > 0.85
    with torch.no_grad():
        assert (model(xt).argmax(1) == yt).float().mean() > 0.8


def test_same_seed_same_weights_and_generic_datasets(digits_sets, make_mlp, weights_equal):
    train, _, _ = digits_sets
    a = fast(epochs=2).fit(make_mlp(), train)
    b = fast(epochs=2).fit(make_mlp(), train)
    assert weights_equal(a, b)
    c = fast(epochs=2, seed=1).fit(make_mlp(), train)
    assert not weights_equal(a, c)
    # a non-TensorDataset goes through the generic DataLoader path
    sub = fast(epochs=1).fit(make_mlp(), Subset(train, list(range(300))))
    assert not sub.training


def test_schedules():
    cyc = LRSchedule("cyclic", epochs=10, steps_per_epoch=10, peak=0.4)
    values = [cyc(k) for k in range(100)]
    assert values[0] == pytest.approx(0.1 / 4)
    assert max(values) == pytest.approx(1.0) and values.index(1.0) == 39
    assert values[-1] == pytest.approx(0.0)
    pw = LRSchedule("piecewise", epochs=4, steps_per_epoch=2, milestones=[2, 3], gamma=0.1)
    assert [round(pw(k), 6) for k in range(8)] == [1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01]
    one = LRSchedule("onecycle", epochs=10, steps_per_epoch=10, peak=0.3)
    ov = [one(k) for k in range(100)]
    assert ov[0] < 0.1 and max(ov) == pytest.approx(1.0) and ov[-1] < 1e-3


def test_cyclic_lr_reaches_peak_in_metrics(digits_sets, make_mlp):
    train, _, _ = digits_sets
    lrs = []
    fast(epochs=5, schedule="cyclic", lr=5e-3).fit(
        make_mlp(), train, callbacks=[lambda e, m: lrs.append(m["lr"])]
    )
    assert lrs[1] == pytest.approx(5e-3)  # peak at 40% of 5 epochs = end of epoch 2
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_checkpoint_is_weights_only_and_atomic(digits_sets, tmp_path, make_mlp):
    train, _, _ = digits_sets
    fast(epochs=2).fit(make_mlp(), train, checkpoint_dir=tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["last.pt"]  # no temporary files left behind
    ckpt = load_trusted(tmp_path / "last.pt")
    assert ckpt["epoch"] == 2 and len(ckpt["history"]) == 2
    assert {"model", "optimizer", "scheduler", "rng"} <= set(ckpt)


class InterruptError(Exception):
    pass


def interrupt_after(epoch_index: int):
    def cb(epoch, metrics):
        if epoch == epoch_index:
            raise InterruptError

    return cb


@pytest.mark.parametrize("name", ["pgd_at", "standard"])
def test_resume_after_interruption_matches_straight_run(
    digits_sets, tmp_path, name, make_mlp, weights_equal
):
    """Kill a 4-epoch run in epoch 2's callback, resume it: same weights as a straight run."""
    train, _, _ = digits_sets
    train = Subset(train, list(range(400))) if name == "pgd_at" else train
    kw = {"epochs": 4, "batch_size": 100, "progress": False}
    if name == "pgd_at":
        kw |= {"eps": 0.2, "steps": 3, "step_size": 0.1, "lr": 1e-2, "schedule": "cyclic"}
    else:
        kw |= {"lr": 1e-2, "dropout": 0.2, "schedule": "onecycle"}
    straight = defenses.create(name, **kw).fit(make_mlp(), train)
    with pytest.raises(InterruptError):
        defenses.create(name, **kw).fit(
            make_mlp(), train, checkpoint_dir=tmp_path, callbacks=[interrupt_after(1)]
        )
    # the checkpoint comes after the callbacks: the interrupted epoch is not in it
    assert load_trusted(tmp_path / "last.pt")["epoch"] == 1
    seen = []
    resumed = defenses.create(name, **kw).fit(
        make_mlp(seed=123),  # different init: everything must come from the checkpoint
        train,
        checkpoint_dir=tmp_path,
        resume=True,
        callbacks=[lambda e, m: seen.append(e)],
    )
    assert seen == [1, 2, 3]
    assert weights_equal(straight, resumed)


def test_resume_with_more_epochs_constant_lr(digits_sets, tmp_path, make_mlp, weights_equal):
    train, _, _ = digits_sets
    straight = fast(epochs=4).fit(make_mlp(), train)
    fast(epochs=2).fit(make_mlp(), train, checkpoint_dir=tmp_path)
    resumed = fast(epochs=4).fit(make_mlp(), train, checkpoint_dir=tmp_path, resume=True)
    assert weights_equal(straight, resumed)


def test_resume_without_checkpoint_starts_fresh(
    digits_sets, tmp_path, caplog, make_mlp, weights_equal
):
    train, _, _ = digits_sets
    with caplog.at_level(logging.INFO, logger="defenses"):
        model = fast(epochs=1).fit(make_mlp(), train, checkpoint_dir=tmp_path, resume=True)
    assert "starting from epoch 0" in caplog.text
    assert weights_equal(model, fast(epochs=1).fit(make_mlp(), train))


def test_bf16_on_cpu_warns_and_trains_in_float32(digits_sets, caplog, make_mlp):
    train, _, _ = digits_sets
    with caplog.at_level(logging.WARNING, logger="defenses"):
        model = fast(epochs=1, bf16=True).fit(make_mlp(), train)
    assert "only applies on CUDA" in caplog.text
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_bad_trainer_input(digits_sets, make_mlp):
    train, _, _ = digits_sets
    with pytest.raises(ValueError, match=r"Unknown optimizer 'rmsprop'.*sgd, adam"):
        Trainer(optimizer="rmsprop")
    with pytest.raises(ValueError, match=r"Unknown schedule 'cosine'.*cyclic"):
        Trainer(schedule="cosine")
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        Trainer(epochs=0)
    with pytest.raises(ValueError, match="lr must be > 0"):
        Trainer(lr=-1)
    with pytest.raises(ValueError, match="resume=True needs checkpoint_dir"):
        fast().fit(make_mlp(), train, resume=True)
    with pytest.raises(TypeError, match="torch Dataset"):
        fast().fit(make_mlp(), (train.tensors[0], train.tensors[1]))


def test_resume_by_default_resumes_fits_with_a_checkpoint_dir(digits_sets, tmp_path, make_mlp):
    from defenses.trainer import resume_by_default

    train, _, _ = digits_sets
    fast(epochs=2).fit(make_mlp(), train, checkpoint_dir=tmp_path)
    seen = []
    with resume_by_default():
        fast(epochs=3).fit(
            make_mlp(), train, checkpoint_dir=tmp_path, callbacks=[lambda e, m: seen.append(e)]
        )
        assert seen == [2]  # epochs 0 and 1 came from the checkpoint
        fast(epochs=1).fit(make_mlp(), train)  # no checkpoint_dir: nothing to resume, no error
        seen.clear()
        fast(epochs=3).fit(
            make_mlp(),
            train,
            checkpoint_dir=tmp_path,
            resume=False,
            callbacks=[lambda e, m: seen.append(e)],
        )
        assert seen == [0, 1, 2]  # an explicit resume=False wins
    seen.clear()
    fast(epochs=3).fit(
        make_mlp(), train, checkpoint_dir=tmp_path, callbacks=[lambda e, m: seen.append(e)]
    )
    assert seen == [0, 1, 2]  # outside the block: a fresh run, as before
