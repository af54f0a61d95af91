"""A user's own architecture and a wrapped model are stored as weights and names, and rebuilt."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

import defenses
import robustbench_local as rbl
from experiments import model_logging as ml
from experiments.model_spec import build_model_node, with_num_classes

from ..robustbench_local.user_repo import PACKAGE, UserRepo, user_repo_once

NETS = f"{PACKAGE}.nets"


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> UserRepo:
    return user_repo_once(tmp_path_factory)


def _same_logits(model, files, x) -> torch.nn.Module:
    rebuilt = ml.load_model_files(files["classifier"], files.get("defense"))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)
    return rebuilt


def test_a_wrapped_dict_model_is_rebuilt_with_its_wrapper(repo, tmp_path):
    net = rbl.load_checkpoint(repo.state_dict, arch=f"{NETS}:DictCNN", width=4)
    model = rbl.wrap_model(net, logits="logits", mean=[0.4], std=[0.3], input_scale=2.0)
    assert ml.loadable(model) is None
    files = ml.save_model_files(model, tmp_path)
    ckpt = torch.load(files["classifier"], weights_only=True)
    assert ckpt["arch"] == f"{NETS}:DictCNN" and ckpt["kwargs"] == {"width": 4}
    wrap = ckpt["meta"]["wrap"]
    assert wrap["logits"] == "logits" and wrap["input_scale"] == 2.0
    assert wrap["mean"] == pytest.approx([0.4]) and wrap["std"] == pytest.approx([0.3])
    rebuilt = _same_logits(model, files, repo.x_test)
    assert isinstance(rebuilt, rbl.models.WrappedModel) and not rebuilt.training


def test_a_defended_wrapped_model_is_rebuilt(repo, tmp_path):
    net = rbl.load_checkpoint(repo.state_dict, arch=f"{NETS}:DictCNN", width=4)
    model = defenses.create("median_filter", size=3).wrap(rbl.wrap_model(net, logits="logits"))
    rebuilt = _same_logits(model, ml.save_model_files(model, tmp_path), repo.x_test)
    assert type(rebuilt.classifier).__name__ == "WrappedModel"


def test_a_user_class_from_the_config_records_its_arguments(repo, tmp_path):
    node = OmegaConf.create({"_target_": f"{NETS}.SmallCNN", "width": 3})
    model = build_model_node(node, num_classes=10)
    assert (model.arch, model.arch_kwargs) == (f"{NETS}:SmallCNN", {"width": 3, "num_classes": 10})
    rebuilt = _same_logits(model, ml.save_model_files(model, tmp_path), repo.x_test)
    assert rebuilt.conv.out_channels == 3


def test_what_cannot_be_rebuilt_is_said_and_its_weights_kept(repo, tmp_path):
    net = rbl.load_checkpoint(repo.state_dict, arch=f"{NETS}:TupleCNN", width=4)
    model = rbl.wrap_model(net, logits=lambda out: out[0])
    assert "function" in ml.loadable(model)
    files = ml.save_model_files(model, tmp_path)  # the network inside, weights only
    ckpt = torch.load(files["classifier"], weights_only=True)
    assert ckpt["arch"] == f"{NETS}:TupleCNN" and "wrap" not in ckpt["meta"]
    with pytest.raises(ml.UnsupportedModelError, match="function"):
        ml.log_model(model, files)


def test_num_classes_come_from_the_data_where_the_model_takes_them():
    zoo = OmegaConf.create({"_target_": "robustbench_local.create_model", "name": "digits_mlp"})
    assert with_num_classes(zoo, 3).num_classes == 3
    own = OmegaConf.create({"_target_": f"{NETS}.SmallCNN", "num_classes": 5})
    assert with_num_classes(own, 3).num_classes == 5  # set in the config: kept
    seq = OmegaConf.create({"_target_": "torch.nn.Flatten"})
    assert "num_classes" not in with_num_classes(seq, 3)
    ckpt = OmegaConf.create({"_target_": "experiments.model_spec.load_checkpoint", "path": "x"})
    assert "num_classes" not in with_num_classes(ckpt, 3)
