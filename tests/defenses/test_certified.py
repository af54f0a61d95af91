"""Certified training (ibp, crown_ibp): schedules, loss, resume, refusals, and that it works."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import defenses
from defenses.bounds import BoundedModel, certified_by_margins, margin_bounds
from defenses.certified import LR_MILESTONES, CROWNIBPTraining, IBPTraining, Ramp

EPS = 0.1


def test_registered_as_training_defenses() -> None:
    assert {"ibp", "crown_ibp"} <= set(defenses.names(kind="training"))
    ibp = defenses.create("ibp")
    assert isinstance(ibp, IBPTraining)
    assert ibp.eps == 0.4 and ibp.kappa == (1.0, 0.5) and ibp.trainer.optimizer == "adam"
    assert ibp.trainer.milestones == [f * ibp.trainer.epochs for f in LR_MILESTONES]
    crown = defenses.create("crown_ibp", epochs=10)
    assert isinstance(crown, CROWNIBPTraining)
    assert crown.kappa == (1.0, 0.0) and crown.beta == (1.0, 0.0)
    assert crown.trainer.batch_size == 256 and crown.trainer.lr == 5e-4
    assert crown.trainer.milestones == [2.5, 4.167]


def test_ramp() -> None:
    ramp = Ramp(0.1, 0.4)
    values = [ramp.progress(t) for t in (0.0, 0.1, 0.3, 0.5, 1.0)]
    assert values == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0])
    assert Ramp(0.2, 0.0).progress(0.1) == 0.0 and Ramp(0.2, 0.0).progress(0.2) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eps": 0}, "eps must be > 0"),
        ({"norm": "l1"}, "norm='l1'"),
        ({"kappa": (1.0,)}, "kappa must be a"),
        ({"kappa": (1.5, 0.5)}, r"kappa must be in \[0, 1\]"),
        ({"warmup": 2.0}, "warmup"),
    ],
)
def test_bad_settings(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        defenses.create("ibp", **kwargs)


def test_loss_is_clean_cross_entropy_during_warmup(make_mlp, digits_sets) -> None:
    train, _, _ = digits_sets
    x, y = train.tensors[0][:50], train.tensors[1][:50]
    model = make_mlp()
    d = defenses.create("ibp", eps=EPS)
    d.bind_clock(_FakeScheduler(step=0, epochs=10, steps_per_epoch=10))
    loss, _logits = d.objective(model, x, y)
    torch.testing.assert_close(loss, nn.functional.cross_entropy(model(x), y))
    d.bind_clock(_FakeScheduler(step=100, epochs=10, steps_per_epoch=10))  # end of training
    now = d.schedule()
    assert now["eps"] == EPS and now["kappa"] == 0.5
    loss, _ = d.objective(model, x, y)
    robust = nn.functional.cross_entropy(-margin_bounds(model, x, y, EPS), y)
    expected = 0.5 * nn.functional.cross_entropy(model(x), y) + 0.5 * robust
    torch.testing.assert_close(loss, expected)


def test_crown_ibp_mixes_bounds_with_beta(make_mlp, digits_sets) -> None:
    train, _, _ = digits_sets
    x, y = train.tensors[0][:30], train.tensors[1][:30]
    model = make_mlp().eval()
    bounded = BoundedModel(model)
    with torch.no_grad():
        ibp = bounded.margins(x, y, EPS, method="ibp")
        cibp = bounded.margins(x, y, EPS, method="crown-ibp")
        for beta in (0.0, 0.3, 1.0):
            mixed = bounded.mixed_margins(x, y, EPS, beta)
            torch.testing.assert_close(mixed, beta * cibp + (1 - beta) * ibp)
    d = defenses.create("crown_ibp", eps=EPS)
    d.bind_clock(_FakeScheduler(step=10, epochs=10, steps_per_epoch=10))  # mid-ramp
    now = d.schedule()
    assert 0 < now["p"] < 1 and now["beta"] == pytest.approx(1 - now["p"])


def test_refuses_batchnorm_in_train_mode(digits_sets) -> None:
    train, _, _ = digits_sets
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(),
                          nn.Linear(16, 10))  # fmt: skip
    d = defenses.create("ibp", eps=EPS, epochs=1, warmup=0.0, ramp=0.0, progress=False)
    with pytest.raises(ValueError, match=r"BatchNorm1d.*remove it"):
        d.fit(model, TensorDataset(*[t[:200] for t in train.tensors]))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ibp", "crown_ibp"])
def test_certified_training_certifies_more_than_standard(name, make_mlp, digits_sets) -> None:
    train, _, (x, y) = digits_sets
    common = {"epochs": 12, "batch_size": 64, "lr": 5e-3, "progress": False}
    plain = defenses.create("standard", **common).fit(make_mlp(), train)
    robust = defenses.create(name, eps=EPS, **common).fit(make_mlp(), train)
    counts = {}
    for label, model in (("standard", plain), (name, robust)):
        with torch.no_grad():
            m = margin_bounds(model, x, y, EPS / 2, method="ibp")
        counts[label] = int(certified_by_margins(m, y).sum())
    assert counts[name] > counts["standard"] + 0.2 * len(y), counts


@pytest.mark.slow
def test_resume_continues_the_ramp(make_mlp, digits_sets, tmp_path, weights_equal) -> None:
    train, _, _ = digits_sets
    small = TensorDataset(*[t[:256] for t in train.tensors])
    common = {"eps": EPS, "batch_size": 64, "progress": False, "warmup": 0.1, "ramp": 0.5}
    straight = defenses.create("ibp", epochs=4, **common).fit(make_mlp(), small)

    def killed_in_epoch_2(epoch: int, metrics: dict) -> None:
        if epoch == 1:  # the callbacks come before the epoch's checkpoint
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        defenses.create("ibp", epochs=4, **common).fit(
            make_mlp(), small, checkpoint_dir=tmp_path, callbacks=[killed_in_epoch_2]
        )
    resumed = defenses.create("ibp", epochs=4, **common).fit(
        make_mlp(seed=5), small, checkpoint_dir=tmp_path, resume=True
    )
    assert weights_equal(straight, resumed)


class _FakeScheduler:
    """The two things the ramp reads from the Trainer's scheduler."""

    def __init__(self, step: int, epochs: int, steps_per_epoch: int) -> None:
        self.last_epoch = step
        self.lr_lambdas = [_Steps(epochs, steps_per_epoch)]


class _Steps:
    def __init__(self, epochs: int, steps_per_epoch: int) -> None:
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
