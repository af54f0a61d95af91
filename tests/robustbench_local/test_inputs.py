"""The input checks every entry point runs: one clear error per mistake, numpy accepted."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from attacks.threat import Norm
from attacks.validation import InputError
from robustbench_local.inputs import (
    EvalInputs,
    check_eps_scale,
    check_eval_inputs,
    resolve_device,
)
from robustbench_local.models import create_model, load_checkpoint, wrap_model

from .user_repo import PACKAGE, user_repo_once

NET = f"{PACKAGE}.nets:SmallCNN"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return user_repo_once(tmp_path_factory)


@pytest.fixture(scope="module")
def model(repo):
    return load_checkpoint(repo.state_dict, arch=NET)


def test_good_inputs_pass_and_say_what_they_are(repo, model):
    checked = check_eval_inputs(model, (repo.x_test, repo.y_test), [1 / 255, 8 / 255], "linf")
    assert isinstance(checked, EvalInputs)
    assert (checked.num_classes, checked.sample_shape, checked.norm) == (10, (1, 8, 8), Norm.LINF)
    assert checked.eps == [1 / 255, 8 / 255] and checked.data[0] is repo.x_test
    assert check_eval_inputs(model, (repo.x_test, repo.y_test), 2.0, "l2").eps == [2.0]
    assert model.training is False


def test_numpy_arrays_are_converted_once(repo, model, caplog):
    x, y = repo.x_test.numpy(), repo.y_test.numpy()
    with caplog.at_level(logging.INFO, logger="robustbench_local.inputs"):
        checked = check_eval_inputs(model, (x, y), 0.1)
    assert torch.equal(checked.data[0], repo.x_test) and checked.data[1].dtype == torch.int64
    assert [r.getMessage() for r in caplog.records] == [
        "numpy arrays x, y converted to tensors (dtypes kept)"
    ]


def _hwc(x):
    return x.permute(0, 2, 3, 1)


@pytest.mark.parametrize(
    ("make_x", "match"),
    [
        (lambda x: (x * 255).to(torch.uint8), r"dtype torch\.uint8.*x\.float\(\) / 255"),
        (lambda x: (x * 255).to(torch.uint8).numpy(), r"dtype torch\.uint8.*x\.float\(\) / 255"),
        (lambda x: x.double(), r"float64 but the model computes in torch\.float32: pass x\.float"),
        (lambda x: x.double().numpy(), r"float64.*astype\(np\.float32\)"),
        (_hwc, r"channels-last \[N, H, W, C\]: pass x\.permute\(0, 3, 1, 2\)"),
        (lambda x: x[:, 0], r"no channel dimension: pass x\.unsqueeze\(1\)"),
        (lambda x: x.expand(-1, 3, -1, -1), r"3 channels but the model's first conv.* takes 1"),
        (lambda x: (x - 0.5) / 0.3, r"mean/std-normalised.*wrap_model\(model, mean="),
        (lambda x: x * 255, r"0-255 pixel values.*input_scale=255\.0"),
        (lambda x: x.to(torch.bool), r"dtype torch\.bool"),
    ],
)  # fmt: skip
def test_bad_images(repo, model, make_x, match):
    with pytest.raises(ValueError, match=match) as err:
        check_eval_inputs(model, (make_x(repo.x_test), repo.y_test), 0.1)
    assert isinstance(err.value, InputError)


@pytest.mark.parametrize(
    ("make_y", "match"),
    [
        (lambda y: y.float() + 0.7, r"such as 0\.7 that are not whole numbers.*never truncated"),
        (lambda y: y.float(), r"float32 \(whole numbers\); pass y\.long\(\)"),
        (lambda y: torch.nn.functional.one_hot(y, 10), r"one-hot.*y\.argmax\(1\)"),
        (lambda y: y + 1, r"labels span \[1, 10\] but the model has 10 outputs"),
        (lambda y: y - 1, r"labels span \[-1, 8\]"),
        (lambda y: y[:-1], r"x has shape \(40, 1, 8, 8\) but y \(39,\)"),
        (lambda y: y.numpy() + 0.7, "not whole numbers"),
    ],
)
def test_bad_labels(repo, model, make_y, match):
    with pytest.raises(ValueError, match=match):
        check_eval_inputs(model, (repo.x_test, make_y(repo.y_test)), 0.1)


class FloatLabels(Dataset):
    """A Dataset whose labels are floats: tensors_of would truncate them to ints."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], float(self.y[i]) + 0.5


def test_dataset_labels_are_checked_before_any_cast(repo, model):
    with pytest.raises(ValueError, match=r"0\.5 that are not whole numbers"):
        check_eval_inputs(model, FloatLabels(repo.x_test, repo.y_test), 0.1)
    with pytest.raises(TypeError, match=r"an \(x, y\) pair.*Dataset"):
        check_eval_inputs(model, repo.x_test, 0.1)


@pytest.mark.parametrize(
    ("eps", "norm", "match"),
    [
        (8, "linf", r"eps=8 on inputs in \[0, 1\].*Did you mean 8/255\?"),
        ([1, 2, 4, 8], "linf", r"Did you mean \[1/255, 2/255, 4/255, 8/255\]\?"),
        (1.0, "linf", r"eps=1 .*every input value change freely"),
        (9.0, "l2", r"largest l2 distance between two inputs of shape \(1, 8, 8\) is 8"),
        (65, "l1", r"largest l1 distance .* is 64.*65/255"),
    ],
)
def test_eps_in_the_wrong_units(repo, model, eps, norm, match):
    with pytest.raises(ValueError, match=match):
        check_eval_inputs(model, (repo.x_test, repo.y_test), eps, norm)


def test_eps_scale_edges():
    check_eps_scale([0.0, 0.999], "linf", (0.0, 1.0), (3, 32, 32))
    check_eps_scale([55.0], "l2", (0.0, 1.0), (3, 32, 32))  # below sqrt(3072) = 55.4
    check_eps_scale([1.5], "linf", (-1.0, 1.0), (3, 32, 32))  # bounds of width 2
    with pytest.raises(InputError, match=r"eps=2 on inputs in \[-1, 1\]"):
        check_eps_scale([2.0], "linf", (-1.0, 1.0), (3, 32, 32))


def test_other_outputs_name_the_wrap_call(repo):
    model = load_checkpoint(repo.state_dict, arch=f"{PACKAGE}.nets:HFStyleCNN")
    with pytest.raises(ValueError, match=r"returns a Output with attributes logits, hidden.*"
                       r"wrap_model\(model, logits='logits'\)"):  # fmt: skip
        check_eval_inputs(model, (repo.x_test, repo.y_test), 0.1)
    assert check_eval_inputs(wrap_model(model, logits="logits"), (repo.x_test, repo.y_test), 0.1)


def test_a_declared_input_shape_is_enforced():
    mlp = create_model("digits_mlp")  # declares input_shape (1, 8, 8)
    x, y = torch.rand(4, 8, 8), torch.arange(4)
    with pytest.raises(ValueError, match=r"x\.unsqueeze\(1\)"):
        check_eval_inputs(mlp, (x, y), 0.1)  # flattening would hide the missing channel
    assert check_eval_inputs(mlp, (x.unsqueeze(1), y), 0.1).num_classes == 10


def test_model_errors_are_reported_with_the_input_shape(repo):
    broken = create_model(NET, width=2)
    broken.fc = torch.nn.Linear(3, 10)  # does not fit the flattened features
    with pytest.raises(ValueError, match=r"fails on one input of x \(shape \(1, 1, 8, 8\)\)"):
        check_eval_inputs(broken, (repo.x_test, repo.y_test), 0.1)


def test_resolve_device(model):
    assert resolve_device(None, model) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match=r"device='gpu' is not a device.*'auto'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        for spec in ("cuda", "cuda:1", torch.device("cuda")):
            with pytest.raises(ValueError, match="CUDA is not available here"):
                resolve_device(spec)
    else:
        with pytest.raises(ValueError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_numpy_float32_with_int_labels_in_a_list(repo, model):
    x = repo.x_test.numpy().astype(np.float32)
    checked = check_eval_inputs(model, [x, repo.y_test.numpy()], [0.1, 0.2])
    assert checked.data[0].dtype == torch.float32 and checked.eps == [0.1, 0.2]
