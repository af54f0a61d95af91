"""The user's own data through one spec: image folders, .npz/.pt files, module:function."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

import robustbench_local as rbl
from attacks.validation import InputError
from robustbench_local.data import (
    CIFAR_STYLE_GRIDS,
    dataset_info,
    default_eps_grid,
    load_dataset,
    resolve_dataset,
    spec_kind,
)

from .user_repo import PACKAGE, PER_CLASS, user_repo_once


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return user_repo_once(tmp_path_factory)


def assert_same_data(a: TensorDataset, x: torch.Tensor, y: torch.Tensor) -> None:
    assert a.tensors[0].dtype == torch.float32 and a.tensors[1].dtype == torch.int64
    assert torch.equal(a.tensors[0], x) and torch.equal(a.tensors[1], y)


def test_png_folder_is_read_in_class_order(repo, caplog):
    with caplog.at_level(logging.INFO, logger="robustbench_local.data.user"):
        data = resolve_dataset(repo.png)
    assert data.kind == "folder" and data.classes == tuple(f"digit_{c}" for c in range(10))
    assert_same_data(data.test, repo.x_test, repo.y_test)  # PNG is lossless: the same pixels
    assert not data.has_train and data.train.tensors[0].shape == (0, 1, 8, 8)
    info = data.info
    assert (info.num_classes, info.shape, info.source, info.from_uint8) == (
        10,
        (1, 8, 8),
        "folder",
        True,
    )
    assert info.mean[0] == pytest.approx(float(repo.x_test.mean()), abs=1e-4)
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 1 and "uint8 images scaled from 0-255 to [0, 1]" in logged[0]
    train, test = load_dataset(repo.png)  # the same call as for a registered name
    assert len(train) == 0 and torch.equal(test.tensors[0], repo.x_test)


def test_split_folder_and_relative_paths(repo):
    data = resolve_dataset("pngs_split", root=repo.root)
    assert len(data.test) == 10 * PER_CLASS and len(data.train) == 30
    assert data.require_train() is data.train
    assert set(data.train.tensors[1].tolist()) <= set(range(10))
    assert data.classes == tuple(f"digit_{c}" for c in range(10))


def test_npz_without_channel_dimension(repo, caplog):
    with caplog.at_level(logging.INFO, logger="robustbench_local.data.user"):
        data = resolve_dataset(repo.npz)
    assert_same_data(data.test, repo.x_test, repo.y_test)
    assert data.train.tensors[0].shape[1:] == (1, 8, 8) and len(data.train) > 1000
    assert (data.kind, data.info.source, data.info.name) == ("file", "file", "digits")
    (message,) = [r.getMessage() for r in caplog.records]
    assert "scaled from 0-255" in message and "channel dimension added" in message


def test_pt_file_and_channels_last_rgb(tmp_path, caplog):
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 5, 7, 3), dtype=torch.uint8, generator=gen)  # NHWC
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    torch.save({"x": x, "y": y}, tmp_path / "rgb.pt")
    with caplog.at_level(logging.INFO, logger="robustbench_local.data.user"):
        data = resolve_dataset(tmp_path / "rgb.pt")
    assert torch.equal(data.test.tensors[0], x.permute(0, 3, 1, 2).float() / 255)
    assert data.info.shape == (3, 5, 7) and data.info.num_classes == 3 and len(data.info.mean) == 3
    assert "channels-last images laid out as [N, C, H, W]" in caplog.text
    np.savez(tmp_path / "f.npz", x=np.full((4, 1, 2, 2), 0.5), y=np.arange(4))
    data = resolve_dataset(tmp_path / "f.npz")  # float64 in [0, 1]: converted, not rescaled
    assert data.test.tensors[0].dtype == torch.float32 and not data.info.from_uint8
    assert float(data.test.tensors[0].max()) == 0.5


@pytest.mark.parametrize(
    ("function", "n_train"),
    [("load_test", 0), ("load_pair", "all"), ("load_items", 0)],
)
def test_import_path_specs(repo, function, n_train):
    data = resolve_dataset(f"{PACKAGE}.data:{function}")
    assert data.kind == "import" and data.info.source == "import"
    assert_same_data(data.test, repo.x_test, repo.y_test)
    assert (len(data.train) > 1000) if n_train == "all" else len(data.train) == 0


def test_import_path_kwargs(repo):
    data = resolve_dataset(f"{PACKAGE}.data:load_pair", kwargs={})
    assert data.has_train
    assert len(resolve_dataset(f"{PACKAGE}.data:load_items", kwargs={"n": 5}).test) == 5
    with pytest.raises(TypeError, match="unexpected keyword"):
        resolve_dataset(f"{PACKAGE}.data:load_items", kwargs={"m": 5})


def test_default_eps_grids(repo):
    info = resolve_dataset(repo.npz).info
    assert default_eps_grid(info, "linf") == pytest.approx(
        [1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255]
    )
    assert default_eps_grid(info, "l2") == list(CIFAR_STYLE_GRIDS[rbl.data.user.Norm.L2])
    assert default_eps_grid(info, "L1") == [1.5, 3.0, 6.0, 12.0]
    assert default_eps_grid(dataset_info("mnist"), "linf") is None  # its own configured grid
    with pytest.raises(ValueError, match="norm"):
        default_eps_grid(info, "l3")


def test_spec_kinds_and_the_registry_is_untouched(repo):
    assert spec_kind("MNIST") == ("registered", "MNIST")
    assert spec_kind(repo.png)[0] == "folder"
    assert spec_kind(str(repo.npz))[0] == "file"
    assert spec_kind(f"{PACKAGE}.data:load_test") == ("import", f"{PACKAGE}.data:load_test")
    assert rbl.dataset_names() == ["cifar10", "digits", "fashion_mnist", "mnist"]
    with pytest.raises(ValueError, match=r"only test data.*x_train"):
        resolve_dataset(repo.png).require_train("adversarial training")


# --------------------------------------------------------------------------- bad specs


def _png(path, size=(8, 8), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":  # a 16-bit grey PNG
        Image.fromarray(np.zeros((size[1], size[0]), dtype=np.uint16)).save(path)
    else:
        Image.new(mode, size).save(path)


def test_missing_and_unknown_specs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_dataset(tmp_path / "nope.npz")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_dataset("./not_here")
    with pytest.raises(FileNotFoundError, match=r"write module:function \(mypkg\.data:load\)"):
        load_dataset("mypkg.data.load")
    with pytest.raises(
        ValueError, match=r"Did you mean 'mnist'.*folder of images.*module:function"
    ):
        load_dataset("mnsit")
    (tmp_path / "d.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"suffix '\.csv'.*\.npz or \.pt"):
        load_dataset(tmp_path / "d.csv")


def test_bad_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no class subfolders.*<class>/\*\.png"):
        load_dataset(tmp_path / "empty")
    _png(tmp_path / "flat" / "img.png")
    with pytest.raises(ValueError, match="no class subfolders"):
        load_dataset(tmp_path / "flat")
    _png(tmp_path / "hollow" / "a" / "1.png")
    (tmp_path / "hollow" / "b").mkdir()
    with pytest.raises(ValueError, match=r"hollow/b holds no \.png/\.jpg/\.jpeg image"):
        load_dataset(tmp_path / "hollow")
    _png(tmp_path / "sizes" / "a" / "1.png")
    _png(tmp_path / "sizes" / "b" / "2.png", size=(9, 8))
    with pytest.raises(ValueError, match=r"differ in size.*8x8.*9x8.*resize"):
        load_dataset(tmp_path / "sizes")
    _png(tmp_path / "deep" / "a" / "1.png", mode="I;16")
    with pytest.raises(ValueError, match=r"mode 'I;16'.*8-bit"):
        load_dataset(tmp_path / "deep")
    (tmp_path / "broken" / "a").mkdir(parents=True)
    (tmp_path / "broken" / "a" / "1.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image"):
        load_dataset(tmp_path / "broken")
    _png(tmp_path / "half" / "train" / "a" / "1.png")
    with pytest.raises(ValueError, match="no test/ folder"):
        load_dataset(tmp_path / "half")
    _png(tmp_path / "mixed" / "test" / "a" / "1.png")
    _png(tmp_path / "mixed" / "cat" / "1.png")
    with pytest.raises(ValueError, match="mixes split folders"):
        load_dataset(tmp_path / "mixed")


def test_grey_and_rgb_images_mix_into_rgb(tmp_path):
    _png(tmp_path / "mix" / "a" / "1.png", mode="L")
    _png(tmp_path / "mix" / "b" / "2.png", mode="RGBA")
    data = resolve_dataset(tmp_path / "mix")
    assert data.info.shape == (3, 8, 8) and data.test.tensors[1].tolist() == [0, 1]


X8 = np.zeros((4, 8, 8), dtype=np.uint8)


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"x": X8, "y": np.arange(3)}, r"4 images but y has 3 labels"),
        ({"x": X8, "y": np.array([0.0, 1.0, 3.7, 2.0])}, r"3\.7 that are not whole numbers"),
        ({"x": X8, "y": np.array([0.0, 1.0, 3.0, 2.0])}, r"whole numbers.*y\.long\(\)"),
        ({"x": X8, "y": np.eye(4)}, r"one-hot.*argmax\(1\)"),
        ({"x": X8, "y": np.array([0, -1, 2, 1])}, "negative"),
        ({"x": X8.astype(np.float32) + 200.0, "y": np.arange(4)}, "0-255 pixel values.*divide"),
        ({"x": np.random.default_rng(0).normal(size=(4, 1, 8, 8)), "y": np.arange(4)},
         "mean/std-normalised.*wrap_model"),
        ({"x": np.zeros((4, 64)), "y": np.arange(4)}, r"images must be \[N, H, W\]"),
        ({"images": X8, "labels": np.arange(4)}, r"named images, labels; name the test images x"),
        ({"x": X8, "y": np.arange(4), "x_train": X8}, "both x_train and y_train"),
        ({"x": X8.astype(np.int32) * 300 + 1000, "y": np.arange(4)}, "not 8-bit pixel values"),
    ],
)  # fmt: skip
def test_bad_arrays(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=match) as err:
        load_dataset(tmp_path / "bad.npz")
    assert isinstance(err.value, InputError) and "bad.npz" in str(err.value)


def test_unsafe_or_unreadable_files(tmp_path):
    np.savez(tmp_path / "obj.npz", x=np.array([object()]), y=np.arange(1))
    with pytest.raises(ValueError, match=r"not a readable \.npz of numeric arrays"):
        load_dataset(tmp_path / "obj.npz")
    torch.save({"x": np.zeros((2, 1, 4, 4)), "y": np.arange(2)}, tmp_path / "np.pt")
    with pytest.raises(
        ValueError, match=r"not a readable file of tensors.*torch\.as_tensor"
    ) as err:
        load_dataset(tmp_path / "np.pt")  # numpy inside a .pt needs unpickling: refused
    assert "weights_only=False" not in str(err.value)  # never the advice to run the file's code
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a dict of tensors"):
        load_dataset(tmp_path / "list.pt")


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("no_such_pkg_xyz.data:load", r"cannot import module 'no_such_pkg_xyz\.data'.*PYTHONPATH"),
        (f"{PACKAGE}.data:lod_test", r"has no attribute 'lod_test' \(it has: .*load_test"),
        (f"{PACKAGE}.data:not_a_function", "not a function"),
        (f"{PACKAGE}.data:load_nothing", r"returned str; return \(train, test\)"),
        (f"{PACKAGE}.data:load_float_labels", "not whole numbers"),
    ],
)
def test_bad_import_paths(repo, spec, match):
    with pytest.raises(ValueError, match=match):
        load_dataset(spec)


def test_dataset_labels_are_never_truncated(repo):
    with pytest.raises(InputError, match=r"2\.5 that are not whole numbers"):
        load_dataset(f"{PACKAGE}.data:load_items_half")  # a Dataset whose labels are 2.5
