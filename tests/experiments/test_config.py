"""Every config group option composes and instantiates; bad configs fail early and clearly."""

from __future__ import annotations

import math

import pytest
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

import attacks
import defenses
from experiments import pipeline
from experiments.instantiate import build

from .conftest import CONF, options

GROUPS = [
    "dataset",
    "train/dataset",
    "model",
    "train",
    "attack",
    "defense",
    "eval",
    "tracking",
    "experiment",
]
NEEDS_VALUE = {
    ("model", "checkpoint"),
    ("model", "custom"),
    ("dataset", "files"),
    ("dataset", "custom"),
}


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
    cfg = make_cfg([f"attack=[{option}]", "seed=7"])
    ((label, node),) = cfg.attack.items()
    attack = build(node, "attack")(seed=cfg.seed)
    assert label == option and attack.seed == 7
    assert type(attack) is type(attacks.create(node.name))
    assert attack.norm.value == node.get("norm", attack.norm.value)
    assert attack.norm.value in pipeline.eps_grids(cfg)
    if "steps" in node:
        assert attack.steps == node.steps


@pytest.mark.parametrize("option", options("defense"))
def test_defense_options_build_what_their_kind_says(make_cfg, option):
    cfg = make_cfg([f"defense={option}"])
    obj = build(cfg.defense, "defense")
    kinds = pipeline.defense_kinds(cfg.defense, "defense")
    if option == "none":
        assert obj is None and kinds == ()
        return
    assert obj.name == option and kinds == defenses.kinds(option)
    settings = OmegaConf.to_container(cfg.defense, resolve=True)
    if "training" in kinds:
        assert obj.trainer.epochs == settings["epochs"]
        assert obj.trainer.batch_size == settings.get("batch_size", obj.trainer.batch_size)
    if "eps" in settings:
        assert obj.eps == pytest.approx(settings["eps"])
    if kinds == ("inference",):
        cls = defenses.DEFENSES.metadata(option)["preprocessor"]
        assert type(obj.preprocessor) is cls
        for key, value in settings.items():
            if key not in ("_target_", "name"):
                assert getattr(obj.preprocessor, key) == value


@pytest.mark.parametrize("option", [o for o in options("model") if ("model", o) not in NEEDS_VALUE])
def test_zoo_models_build(make_cfg, option):
    model = build(make_cfg([f"model={option}"]).model, "model")
    assert model.arch == option and model.num_classes == 10


@pytest.mark.parametrize("dataset", options("dataset"))
def test_training_defaults_follow_the_dataset(make_cfg, dataset):
    cfg = make_cfg([f"dataset={dataset}"])
    own = OmegaConf.load(CONF / "train" / "dataset" / f"{dataset}.yaml")
    assert not {"epochs", "train_eps", "guard_n"} & set(cfg.dataset)
    assert (cfg.train.epochs, cfg.train.guard_n) == (own.epochs, own.guard_n)
    assert cfg.defense.eps == cfg.train.eps == cfg.eval.headline.eps
    assert cfg.defense.epochs == cfg.train.epochs == cfg.train.base.epochs
    assert cfg.defense.guard_n == cfg.train.guard_n
    assert make_cfg([f"dataset={dataset}", "train.epochs=3"]).defense.epochs == 3


def test_train_standard_reuses_the_standard_defense_recipe(make_cfg):
    base = OmegaConf.to_container(make_cfg(["train=standard"]).train.base, resolve=True)
    recipe = OmegaConf.to_container(make_cfg(["defense=standard"]).defense, resolve=True)
    assert base == recipe
    none = make_cfg(["train=none", "defense=none"])
    assert none.train.base is None and build(none.defense, "defense") is None
    assert none.train.epochs == make_cfg().train.epochs  # still there for training defenses


def test_fraction_resolver_reads_eps_over_255(make_cfg):
    cfg = make_cfg(["dataset=cifar10"])
    assert math.isclose(cfg.train.eps, 8 / 255)
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
        ("optimized_metric=robust_acc", "not a scalar metric of the run"),
        ("defense.name=nothing", "not a registered defense"),
        ("train.base.name=median_filter", "base training needs a training defense"),
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
