"""Contract tests for every registered model, and checkpoint safety."""

from __future__ import annotations

import copy
import zipfile

import pytest
import torch
from torch import nn

from robustbench_local import data, models
from robustbench_local.models import (
    Normalize,
    create_model,
    load_checkpoint,
    model_names,
    save_checkpoint,
    weights_digest,
)

torch.set_num_threads(1)

# Tiny settings for the big CIFAR models; everything else at its defaults.
TINY_KW: dict[str, dict] = {"wide_resnet": {"depth": 10, "width": 1}}


def make(name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, **{**TINY_KW.get(name, {}), **kw})


def batch(model: nn.Module, n: int = 2) -> torch.Tensor:
    return torch.rand(n, *model.input_shape, generator=torch.Generator().manual_seed(1))


@pytest.fixture(params=model_names())
def name(request) -> str:
    return request.param


def test_registry_names():
    assert {
        "digits_mlp",
        "mnist_small_cnn",
        "mnist_cnn",
        "preact_resnet18",
        "wide_resnet",
    } <= set(model_names())
    assert model_names("mnist_*") == ["mnist_cnn", "mnist_small_cnn"]
    with pytest.raises(ValueError, match=r"Known models: .*digits_mlp"):
        create_model("resnet9000")


def test_forward_shape_and_attributes(name):
    model = make(name).eval()
    info = data.dataset_info(model.dataset)
    assert model.arch == name
    assert model.num_classes == info.num_classes
    assert tuple(model.input_shape) == info.shape
    with torch.no_grad():
        out = model(batch(model))
    assert out.shape == (2, info.num_classes)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # Logits, not probabilities.
    assert not torch.allclose(out.sum(1), torch.ones(2))
    five = make(name, num_classes=5).eval()
    assert five(batch(five)).shape == (2, 5) and five.num_classes == 5


def test_normalisation_is_the_first_layer(name):
    model = make(name).eval()
    info = data.dataset_info(model.dataset)
    norm = model.normalize
    assert isinstance(norm, Normalize)
    assert torch.allclose(norm.mean.flatten(), torch.tensor(info.mean))
    assert torch.allclose(norm.std.flatten(), torch.tensor(info.std))
    assert {"normalize.mean", "normalize.std"} <= set(model.state_dict())
    x = batch(model)
    bare = copy.deepcopy(model)
    bare.normalize = nn.Identity()
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), bare((x - mean) / std), atol=1e-5)
        # Feeding [0, 1] inputs to the bare network is different: the layer does something.
        assert not torch.allclose(model(x), bare(x), atol=1e-3)


def test_normalize_validates():
    with pytest.raises(ValueError, match="positive"):
        Normalize((0.5,), (0.0,))
    with pytest.raises(ValueError, match="channels"):
        Normalize((0.5, 0.5), (1.0,))
    x = torch.rand(3, 2, 4, 4)
    out = Normalize((0.5, 0.25), (0.5, 2.0))(x)
    assert torch.allclose(out[:, 1], (x[:, 1] - 0.25) / 2.0)


def test_dropout_option(name):
    model = make(name, dropout=0.5)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert [d.p for d in drops] == [0.5]
    assert model.arch_kwargs["dropout"] == 0.5
    x = batch(model, 4)
    with torch.no_grad():
        model.train()
        assert not torch.allclose(model(x), model(x))
        model.eval()
        assert torch.equal(model(x), model(x))
    assert [m.p for m in make(name).modules() if isinstance(m, nn.Dropout)] == [0.0]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"num_classes": 1}, "num_classes"),
        ({"depth": 11}, "6n\\+4"),
        ({"width": 0}, "width"),
    ],
)
def test_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        create_model("wide_resnet", **kw)


def test_option_types_are_checked_like_everywhere_else():
    with pytest.raises(TypeError, match="dropout must be a number"):
        create_model("digits_mlp", dropout="0.5")
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2, got True"):
        create_model("digits_mlp", num_classes=True)
    with pytest.raises(ValueError, match="depth must be 6n\\+4"):
        create_model("wide_resnet", depth=4)


def test_unknown_option_and_wrong_dataset():
    with pytest.raises(TypeError, match=r"does not take depth.*accepts"):
        create_model("mnist_cnn", depth=3)
    with pytest.raises(ValueError, match=r"\(1, 28, 28\).*cifar10"):
        create_model("mnist_cnn", dataset="cifar10")
    fmnist = create_model("mnist_small_cnn", dataset="fashion_mnist")
    assert fmnist.dataset == "fashion_mnist"
    assert torch.allclose(fmnist.normalize.mean.flatten(), torch.tensor([0.2860]))


def test_save_load_round_trip(name, tmp_path):
    model = make(name, dropout=0.25)
    x = batch(model)
    with torch.no_grad():
        model.train()(x)  # move BatchNorm running statistics away from their defaults
    model.eval()
    path = tmp_path / "sub" / "model.pt"
    digest = save_checkpoint(model, path, meta={"epochs": 3, "note": "test", "eps": [0.1, 0.3]})
    assert digest == weights_digest(model) and len(digest) == 64
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp files left

    loaded = load_checkpoint(path)
    assert type(loaded) is type(model) and loaded.arch == name
    assert loaded.arch_kwargs == model.arch_kwargs
    assert not loaded.training
    assert weights_digest(loaded) == digest
    assert loaded.checkpoint_meta == {"epochs": 3, "note": "test", "eps": [0.1, 0.3]}
    assert loaded.checkpoint_digest == digest
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))

    torch.manual_seed(123)
    fresh = create_model(name, dropout=0.25, **TINY_KW.get(name, {})).train()
    assert weights_digest(fresh) != digest
    load_checkpoint(path, fresh)
    assert weights_digest(fresh) == digest
    assert fresh.training  # a given model keeps its mode


def test_digest_is_sensitive_and_stable():
    a, b = make("digits_mlp"), make("digits_mlp")
    assert weights_digest(a) == weights_digest(b) == weights_digest(a.state_dict())
    with torch.no_grad():
        b.fc3.bias[0] += 1e-6
    assert weights_digest(a) != weights_digest(b)
    half = copy.deepcopy(a).to(torch.float16)
    assert weights_digest(half) != weights_digest(a)


def test_wrong_architecture_raises(name, tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(make(name), path)
    others = [n for n in model_names() if n != name]
    other = make(others[0])
    before = weights_digest(other)
    with pytest.raises(ValueError, match=f"{name}.*{others[0]}"):
        load_checkpoint(path, other)
    assert weights_digest(other) == before  # nothing was loaded


def test_same_arch_other_shape_raises(tmp_path):
    path = tmp_path / "wrn.pt"
    save_checkpoint(create_model("wide_resnet", depth=10, width=1), path)
    target = create_model("wide_resnet", depth=10, width=2)
    with pytest.raises(ValueError, match=r"width=1.*do not fit.*width=2"):
        load_checkpoint(path, target)
    mlp = create_model("digits_mlp")
    save_checkpoint(mlp, path)
    with pytest.raises(ValueError, match=r"hidden=32.*mismatches"):
        load_checkpoint(path, create_model("digits_mlp", hidden=32))


def test_tampered_checkpoint_raises(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(make("mnist_small_cnn"), path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"]["fc2.bias"][3] += 0.5  # a backdoor-style edit; digest left as it was
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="tampered"):
        load_checkpoint(path)


def test_corrupt_checkpoint_bytes_raise(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(make("mnist_small_cnn"), path)
    with zipfile.ZipFile(path) as zf:
        info = max(zf.infolist(), key=lambda i: i.file_size)  # the largest tensor's bytes
    raw = bytearray(path.read_bytes())
    raw[info.header_offset + 200] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="stored digest"):
        load_checkpoint(path)
    path.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "payload": nn.Linear(2, 2)}, path)  # a pickled module
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(path)
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="not a robustbench_local checkpoint"):
        load_checkpoint(path)


def test_missing_file_and_bad_save_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.pt does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(ValueError, match="pass arch="):
        save_checkpoint(plain, tmp_path / "p.pt")
    save_checkpoint(plain, tmp_path / "p.pt", arch="my_custom_net")
    with pytest.raises(ValueError, match="not registered"):
        load_checkpoint(tmp_path / "p.pt")
    into = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    assert weights_digest(load_checkpoint(tmp_path / "p.pt", into)) == weights_digest(plain)
    mlp = make("digits_mlp")
    with pytest.raises(ValueError, match="drop arch="):
        save_checkpoint(mlp, tmp_path / "q.pt", arch="mnist_cnn")
    with pytest.raises(TypeError, match=r"meta.*plain data"):
        save_checkpoint(mlp, tmp_path / "q.pt", meta={"optimizer": torch.optim.SGD})
    assert not (tmp_path / "q.pt").exists()


def test_models_package_keeps_its_public_names():
    assert models.MODELS.names() == model_names()
    assert models.save_checkpoint.__module__ == "robustbench_local.models.checkpoints"
    assert models.create_model.__module__ == "robustbench_local.models.zoo"
    assert models.WideBasicBlock is models.PreActBlock
