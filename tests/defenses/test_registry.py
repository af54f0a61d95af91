"""Contract tests over every registered defense: a new entry is tested for free."""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
from torch.utils.data import Subset

import defenses
from defenses.registry import register_defense

TRAINING = defenses.names(kind="training")
INFERENCE = defenses.names(kind="inference")
FAST = {
    "pgd_at": {"steps": 2, "step_size": 0.1},
    "trades": {"steps": 2, "step_size": 0.1},
    "fgsm_at": {"guard_n": 100},
    "denoising_autoencoder": {"attack_steps": 2, "width": 8},
}


def test_names_and_unknown_name_lists_known_ones():
    assert {"distillation", "fgsm_at", "pgd_at", "standard", "trades"} <= set(TRAINING)
    assert defenses.names("*_at") == ["fgsm_at", "pgd_at"]
    assert defenses.names("*_at", kind="inference") == []
    with pytest.raises(ValueError, match=r"Unknown defense 'pgd-at'.*Known defenses: .*pgd_at"):
        defenses.create("pgd-at")
    with pytest.raises(ValueError, match=r"Known defenses: .*median_filter"):
        defenses.create("median")
    with pytest.raises(ValueError, match="kind must be one of training, inference"):
        defenses.names(kind="both")


def test_kinds_split_the_registry():
    assert sorted(set(TRAINING) | set(INFERENCE)) == defenses.names()
    assert set(TRAINING) & set(INFERENCE) == {"denoising_autoencoder"}
    assert defenses.kinds("pgd_at") == ("training",)
    assert defenses.kinds("jpeg") == ("inference",)
    assert defenses.kinds("denoising_autoencoder") == ("training", "inference")


def test_register_defense_checks_the_kind():
    with pytest.raises(ValueError, match=r"kind='train'.*'training', 'inference'"):
        register_defense("x_bad_kind", kind="train")
    with pytest.raises(ValueError, match="already registered"):
        register_defense("pgd_at", kind="training")(lambda: None)
    assert "x_bad_kind" not in defenses.DEFENSES


@pytest.mark.parametrize("name", defenses.names())
def test_every_defense_builds_with_defaults(name):
    d = defenses.create(name)
    assert d.name == name
    if "training" in defenses.kinds(name):
        assert d.trainer.epochs >= 1 and d.trainer.batch_size >= 1
    else:
        assert defenses.DEFENSES.metadata(name)["preprocessor"] is type(d.preprocessor)


@pytest.mark.parametrize("name", defenses.names())
def test_every_defense_yields_a_model_obeying_the_contract(
    name, digits_sets, make_mlp, weights_equal
):
    """Used as its kind says: fit (training), wrap (inference), or fit then wrap (both)."""
    train, val, (xt, _) = digits_sets
    kinds = defenses.kinds(name)
    d = defenses.create(name, **FAST.get(name, {}))
    model = make_mlp()
    initial = copy.deepcopy(model)
    if "training" in kinds:
        out = d.fit(model, Subset(train, list(range(400))), val)
        assert out is model
        trained_the_model = "inference" not in kinds
        assert weights_equal(model, initial) is not trained_the_model
    if "inference" in kinds:
        wrapped = d.wrap(model)
        assert wrapped.classifier is model
        model = wrapped
    assert not model.training
    logits = model(xt[:16])
    assert logits.shape == (16, 10) and torch.isfinite(logits).all()


MOVED = {  # old path -> new home
    "defenses.training.DEFENSES": "defenses.registry.DEFENSES",
    "defenses.training.Trainer": "defenses.trainer.Trainer",
    "defenses.training.LRSchedule": "defenses.schedules.LRSchedule",
    "defenses.training.TrainState": "defenses.plugins.TrainState",
    "defenses.training.Plugin": "defenses.plugins.Plugin",
    "defenses.training.state_to_cpu": "defenses.checkpoints.state_to_cpu",
    "defenses.training.evaluate_clean": "defenses.trainer.evaluate_clean",
    "defenses.denoising.Preprocessed": "defenses.inference.Preprocessed",
    "defenses.denoising.InputDefense": "defenses.inference.InputDefense",
    "defenses.denoising.Preprocessor": "defenses.preprocessors.Preprocessor",
    "defenses.denoising.BitDepth": "defenses.preprocessors.BitDepth",
    "defenses.denoising.JPEG": "defenses.preprocessors.JPEG",
    "defenses.regularization.RobustEarlyStopping": "defenses.monitors.RobustEarlyStopping",
    "defenses.regularization.RobustMonitor": "defenses.monitors.RobustMonitor",
    "defenses.adversarial.OverfitGuard": "defenses.monitors.OverfitGuard",
}


def _resolve(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize(("old", "new"), sorted(MOVED.items()))
def test_moved_names_keep_their_old_import_paths(old, new):
    assert _resolve(old) is _resolve(new)
