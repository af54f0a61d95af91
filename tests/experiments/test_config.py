"""Every config group option composes and instantiates; bad configs fail early and clearly."""

from __future__ import annotations

import math

import pytest
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf
from torch import nn

import attacks
from experiments import pipeline
from experiments.instantiate import build

from .conftest import options

GROUPS = ["dataset", "model", "train", "attack", "defense", "eval", "tracking", "experiment"]
NEEDS_VALUE = {("model", "checkpoint"), ("model", "custom")}


@pytest.mark.parametrize(
    ("group", "option"),
    [(g, o) for g in GROUPS for o in options(g) if (g, o) not in NEEDS_VALUE],
)
def test_every_option_composes_and_resolves(make_cfg, group, option):
    over = [f"{group}={option}"] if group != "attack" else [f"attack=[{option}]"]
    cfg = make_cfg(over)
    container = OmegaConf.to_container(cfg, resolve=True)
    assert container["seed"] == 0
    pipeline.eps_grids(cfg)


@pytest.mark.parametrize("option", options("attack"))
def test_attack_options_build_attacks(make_cfg, option):
    cfg = make_cfg([f"attack=[{option}]"])
    ((label, node),) = cfg.attack.items()
    attack = build(node, "attack")(seed=0)
    assert isinstance(attack, attacks.Attack)
    assert label == option


@pytest.mark.parametrize("option", options("defense"))
def test_defense_options_build(make_cfg, option):
    cfg = make_cfg([f"defense={option}"])
    obj = build(cfg.defense, "defense")
    if option == "none":
        assert obj is None
    else:
        assert hasattr(obj, "fit") or hasattr(obj, "wrap")


@pytest.mark.parametrize("option", [o for o in options("model") if ("model", o) not in NEEDS_VALUE])
def test_zoo_models_build(make_cfg, option):
    model = build(make_cfg([f"model={option}"]).model, "model")
    assert isinstance(model, nn.Module)


def test_fraction_resolver_reads_eps_over_255(make_cfg):
    cfg = make_cfg(["dataset=cifar10"])
    assert math.isclose(cfg.dataset.train_eps, 8 / 255)
    assert math.isclose(pipeline.eps_grids(cfg)["linf"][3], 8 / 255)
    grid = pipeline.eps_grids(make_cfg(["eval.eps.linf=[1/255,2/255]"]))["linf"]
    assert grid == pytest.approx([1 / 255, 2 / 255])


def test_unknown_option_lists_the_valid_ones(make_cfg):
    with pytest.raises(MissingConfigException) as err:
        make_cfg(["defense=fgsm_att"])
    assert "fgsm_at" in str(err.value) and "median_filter" in str(err.value)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("eval.eps.linf=[0.3,0.1]", "strictly increasing"),
        ("eval.eps.linf=[-0.1,0.1]", "negative"),
        ("eval.eps.linf=[0.1,abc]", "cannot read"),
        ("eval.headline.eps=0.25", "not on the linf grid"),
        ("eval.n_examples=-3", "positive integer"),
        ("~eval.eps.l2", "norm"),
    ],
)
def test_bad_eval_config_fails_before_training(make_cfg, override, match):
    with pytest.raises(ValueError, match=match):
        pipeline.validate(make_cfg([override]))


def test_n_examples_larger_than_the_test_set(make_cfg):
    cfg = make_cfg(["eval.n_examples=100000"])
    with pytest.raises(ValueError, match=r"eval\.n_examples=100000 but the data has 539"):
        pipeline.load_data(cfg)


def test_validation_split_is_held_out(make_cfg):
    data = pipeline.load_data(make_cfg(["dataset.val_size=100", "dataset.train_subset=500"]))
    assert len(data.val) == 100 and len(data.train) == 400


def test_model_returning_probabilities_fails_the_preflight(make_cfg):
    cfg = make_cfg(
        [
            "model=custom",
            "model._target_=torch.nn.Sequential",
            "+model._args_=[{_target_:torch.nn.Flatten},"
            "{_target_:torch.nn.Linear,in_features:64,out_features:10},"
            "{_target_:torch.nn.Softmax,dim:1}]",
        ]
    )
    data = pipeline.load_data(cfg)
    with pytest.raises(ValueError, match="preflight"):
        pipeline.build_model(cfg, data, pipeline.resolve_device("cpu"))


def test_bad_target_names_the_group(make_cfg):
    cfg = make_cfg(["model=custom", "model._target_=nowhere.Net"])
    data = pipeline.load_data(cfg)
    with pytest.raises(ValueError, match="could not build the model"):
        pipeline.build_model(cfg, data, pipeline.resolve_device("cpu"))
