"""The user's own architecture, checkpoints and outputs: import paths, state dicts, wrap_model."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

import robustbench_local as rbl
from robustbench_local.checks.preflight import check_eval_mode, preflight
from robustbench_local.models import (
    MODELS,
    Normalize,
    WrappedModel,
    create_model,
    load_checkpoint,
    register_model,
    save_checkpoint,
    weights_digest,
    wrap_model,
)

from .user_repo import PACKAGE, user_repo_once

NET = f"{PACKAGE}.nets:SmallCNN"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return user_repo_once(tmp_path_factory)


@pytest.fixture(scope="module")
def nets(repo):
    return importlib.import_module(f"{PACKAGE}.nets")


def flags_by_name(model, x, y, bounds=(0.0, 1.0)):
    return {f.name: f for f in preflight(model, x, y, bounds)}


# --------------------------------------------------------------------------- checkpoints


def test_plain_state_dict_loads_with_an_import_path(repo, nets):
    model = load_checkpoint(repo.state_dict, arch=NET)
    assert isinstance(model, nets.SmallCNN) and not model.training
    assert model.arch == NET and model.arch_kwargs == {}
    assert model.checkpoint_digest == weights_digest(model) and model.checkpoint_meta == {}
    with torch.no_grad():
        acc = float((model(repo.x_test).argmax(1) == repo.y_test).float().mean())
    assert acc == repo.accuracy > 0.8  # the user's trained weights, not a fresh init
    by_class = load_checkpoint(repo.state_dict, arch=nets.SmallCNN)
    assert weights_digest(by_class) == weights_digest(model)
    into = load_checkpoint(repo.state_dict, nets.SmallCNN())
    assert weights_digest(into) == weights_digest(model)


def test_plain_state_dict_needs_an_architecture(repo):
    with pytest.raises(ValueError, match=r"plain state dict.*arch=.*mypkg\.nets:Net"):
        load_checkpoint(repo.state_dict)
    with pytest.raises(ValueError, match=r"width=8.*keyword arguments the weights were trained"):
        load_checkpoint(repo.state_dict, arch=NET, width=8)
    with pytest.raises(ValueError, match=r"not registered.*register_model.*import path"):
        load_checkpoint(repo.state_dict, arch="smallcnn")
    with pytest.raises(ValueError, match=r"cannot import module 'mypkg_nope\.nets'.*PYTHONPATH"):
        load_checkpoint(repo.state_dict, arch="mypkg_nope.nets:Net")
    with pytest.raises(ValueError, match="not both"):
        load_checkpoint(repo.state_dict, create_model(NET), arch=NET)


def test_save_records_the_import_path(repo, nets, tmp_path):
    model = load_checkpoint(repo.state_dict, arch=NET)
    del model.arch, model.arch_kwargs  # as the user's own loop leaves it: a plain module
    digest = save_checkpoint(model, tmp_path / "net.pt", meta={"epochs": 40})
    raw = torch.load(tmp_path / "net.pt", weights_only=True)
    assert raw["arch"] == NET and raw["kwargs"] == {}
    loaded = load_checkpoint(tmp_path / "net.pt")  # no arch needed any more
    assert type(loaded) is nets.SmallCNN and loaded.checkpoint_digest == digest
    assert loaded.checkpoint_meta == {"epochs": 40}
    wide = nets.SmallCNN(width=6)
    save_checkpoint(wide, tmp_path / "wide.pt", arch_kwargs={"width": 6})
    assert load_checkpoint(tmp_path / "wide.pt").conv.out_channels == 6
    assert load_checkpoint(tmp_path / "wide.pt", arch=NET, width=6).conv.out_channels == 6
    with pytest.raises(ValueError, match=r"saved with width=6 but width=5 was passed"):
        load_checkpoint(tmp_path / "wide.pt", width=5)


def test_a_checkpoint_of_another_architecture_is_refused(repo, tmp_path):
    save_checkpoint(load_checkpoint(repo.state_dict, arch=NET), tmp_path / "net.pt")
    other = f"{PACKAGE}.nets:DictCNN"
    with pytest.raises(ValueError, match=rf"holds a '{NET}' checkpoint but arch='{other}'"):
        load_checkpoint(tmp_path / "net.pt", arch=other)
    save_checkpoint(create_model("digits_mlp"), tmp_path / "mlp.pt")
    with pytest.raises(ValueError, match=r"'digits_mlp' checkpoint but arch='mnist_small_cnn'"):
        load_checkpoint(tmp_path / "mlp.pt", arch="MNIST_small_cnn")
    assert load_checkpoint(tmp_path / "mlp.pt", arch="digits_mlp").arch == "digits_mlp"


def test_classes_that_cannot_be_reimported(nets, tmp_path):
    class Local(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

    with pytest.raises(ValueError, match=r"Local is defined in a function.*move it into a module"):
        save_checkpoint(Local(), tmp_path / "l.pt")
    main_cls = type("MainNet", (nn.Module,), {"__module__": "__main__"})
    with pytest.raises(
        ValueError, match=r"MainNet is defined in the script being run \(__main__\)"
    ):
        save_checkpoint(main_cls(), tmp_path / "m.pt")
    with pytest.raises(ValueError, match=r"NeedsWidth takes width without defaults.*arch_kwargs"):
        save_checkpoint(nets.NeedsWidth(width=3), tmp_path / "w.pt")
    save_checkpoint(nets.NeedsWidth(width=3), tmp_path / "w.pt", arch_kwargs={"width": 3})
    assert load_checkpoint(tmp_path / "w.pt").conv.out_channels == 3
    with pytest.raises(ValueError, match=r"save the model inside the wrapper"):
        save_checkpoint(wrap_model(nets.SmallCNN()), tmp_path / "wrapped.pt")


def test_register_model_builds_and_loads_by_name(repo, nets, tmp_path):
    register_model("zz_user_smallcnn", note="from the user repo")(nets.SmallCNN)
    try:
        model = create_model("zz_user_smallcnn", width=5, num_classes=3)
        assert (model.arch, model.arch_kwargs) == (
            "zz_user_smallcnn",
            {"width": 5, "num_classes": 3},
        )
        assert not model.training and model.num_classes == 3
        save_checkpoint(model, tmp_path / "r.pt")
        assert weights_digest(load_checkpoint(tmp_path / "r.pt")) == weights_digest(model)
        with pytest.raises(TypeError, match=r"does not take dropout.*accepts num_classes, width"):
            create_model("zz_user_smallcnn", dropout=0.1)
    finally:
        MODELS.unregister("zz_user_smallcnn")
    assert "zz_user_smallcnn" not in rbl.model_names()


def test_create_model_by_import_path_and_eval_mode(nets):
    model = create_model(NET, width=2)
    assert isinstance(model, nets.SmallCNN) and model.conv.out_channels == 2
    assert not model.training and model.arch == NET and model.arch_kwargs == {"width": 2}
    with pytest.raises(TypeError, match=r"does not take depth; it accepts num_classes, width"):
        create_model(NET, depth=3)
    zoo = create_model("digits_mlp")
    assert not zoo.training and zoo.arch_kwargs == {"num_classes": 10, "dropout": 0.0}


def test_no_false_eval_mode_warning_for_dropout_zero(nets):
    quiet = check_eval_mode(create_model("digits_mlp").train())  # Dropout(p=0.0) inside
    assert quiet.severity == "info" and "harmless" in quiet.message
    loud = check_eval_mode(create_model("digits_mlp", dropout=0.5).train())
    assert loud.severity == "warning" and "Dropout" in loud.message


# --------------------------------------------------------------------------- wrap_model


@pytest.mark.parametrize(
    ("cls", "logits"),
    [("DictCNN", "logits"), ("HFStyleCNN", "logits"), ("TupleCNN", 0),
     ("DictCNN", lambda out: out["logits"])],
)  # fmt: skip
def test_wrap_model_extracts_the_logits(repo, nets, cls, logits):
    reference = load_checkpoint(repo.state_dict, arch=NET)
    model = load_checkpoint(repo.state_dict, arch=f"{PACKAGE}.nets:{cls}")
    wrapped = wrap_model(model, logits=logits)
    with torch.no_grad():
        assert torch.equal(wrapped(repo.x_test), reference(repo.x_test))


def test_wrap_model_normalises_and_scales_inside(nets):
    torch.manual_seed(0)
    net = nets.SmallCNN().eval()
    x = torch.rand(5, 1, 8, 8)
    wrapped = wrap_model(net, mean=(0.3,), std=(0.2,))
    scaled = wrap_model(net, input_scale=255.0)
    both = wrap_model(net, mean=127.0, std=50.0, input_scale=255.0)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), net((x - 0.3) / 0.2))
        torch.testing.assert_close(scaled(x), net(x * 255))
        torch.testing.assert_close(both(x), net((x * 255 - 127) / 50))
    assert isinstance(wrapped.normalize, Normalize) and not wrapped.training
    assert "input_scale=255" in repr(scaled)


def test_wrap_model_keeps_declarations_and_round_trips(nets):
    torch.manual_seed(1)
    net = nets.DictCNN().train()
    net.random, net.differentiable = True, False
    wrapped = wrap_model(net, logits="logits", mean=(0.5,), std=(0.25,))
    assert wrapped.random is True and wrapped.differentiable is False and wrapped.training
    assert not hasattr(wrap_model(nets.SmallCNN()), "random")
    fresh = wrap_model(nets.DictCNN(), logits="logits", mean=(0.0,), std=(1.0,))
    fresh.load_state_dict(wrapped.state_dict())
    assert weights_digest(fresh) == weights_digest(wrapped)
    assert {"normalize.mean", "normalize.std", "model.fc.weight"} <= set(wrapped.state_dict())
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), wrapped.eval()(x))


def test_wrap_model_bad_arguments(nets):
    net = nets.DictCNN()
    with pytest.raises(ValueError, match="both mean= and std="):
        wrap_model(net, mean=(0.5,))
    with pytest.raises(ValueError, match="std must be positive"):
        wrap_model(net, mean=(0.5,), std=(0.0,))
    with pytest.raises(ValueError, match="input_scale must be > 0"):
        wrap_model(net, input_scale=0)
    with pytest.raises(TypeError, match="logits must be a dict key"):
        wrap_model(net, logits=1.5)
    with pytest.raises(TypeError, match=r"needs an nn\.Module"):
        wrap_model(lambda x: x)
    with pytest.raises(ValueError, match=r"logits='logit'.*keys 'logits', 'features'"):
        wrap_model(net, logits="logit")(torch.rand(2, 1, 8, 8))
    assert isinstance(wrap_model(net), WrappedModel)


# --------------------------------------------------------------------------- preflight


@pytest.mark.parametrize(
    ("cls", "fix"),
    [("DictCNN", "logits='logits'"), ("HFStyleCNN", "logits='logits'"), ("TupleCNN", "logits=0")],
)
def test_preflight_names_the_wrap_call_for_other_outputs(repo, cls, fix):
    model = load_checkpoint(repo.state_dict, arch=f"{PACKAGE}.nets:{cls}")
    flags = flags_by_name(model, repo.x_test, repo.y_test)
    logits = flags["logits_not_probabilities"]
    assert (
        logits.severity == "error"
        and f"robustbench_local.wrap_model(model, {fix})" in logits.advice
    )
    assert flags["deterministic"].ok and flags["batch_size_invariance"].ok  # skipped, no crash
    wrapped = wrap_model(model, logits="logits" if fix != "logits=0" else 0)
    assert all(f.ok for f in preflight(wrapped, repo.x_test, repo.y_test))


def test_preflight_recognises_outside_normalisation(repo):
    model = load_checkpoint(repo.state_dict, arch=NET)
    x, y = repo.x_test, repo.y_test
    mean, std = x.mean(), x.std()
    normalised = flags_by_name(model, (x - mean) / std, y)["inputs_in_bounds"]
    assert "mean/std-normalised" in normalised.message
    assert "wrap_model(model, mean=" in normalised.advice and "bounds=" not in normalised.advice
    pixels = flags_by_name(model, x * 255, y)["inputs_in_bounds"]
    assert "0-255 pixel values" in pixels.message and "input_scale=255.0" in pixels.advice
    assert flags_by_name(wrap_model(model), x, y)["inputs_in_bounds"].ok
