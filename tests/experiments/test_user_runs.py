"""A user's own model and data through experiments.run, with documented config keys only.

The user repository (tests/robustbench_local/user_repo.py) is a package no one here wrote: an
unregistered CNN trained by its own loop and saved as a plain state dict, its test images as a
PNG folder and as an ``.npz`` (uint8, no channel dimension), a variant returning
``{"logits": ...}``. Each run below is what the user types, composed by Hydra; every bad input
gets its message before any training (no output folder is created).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

import robustbench_local as rbl
from attacks.threat import Norm
from experiments import pipeline
from experiments.model_logging import load_logged_model
from experiments.run import run
from robustbench_local.data import CIFAR_STYLE_GRIDS

from ..robustbench_local.user_repo import PACKAGE, UserRepo, user_repo_once

ROOT = Path(__file__).resolve().parents[2]
NET = f"{PACKAGE}.nets:SmallCNN"
CIFAR_LINF = list(CIFAR_STYLE_GRIDS[Norm.LINF])
# A short evaluation: PGD-5 and a reduced reference at the headline eps (8/255), 40 samples.
QUICK = [
    "attack=pgd",
    "attack.pgd.steps=5",
    "eval.reference={n_target_classes: 2, square_queries: 50}",
    "eval.batch_size=40",
    "progress=false",
]
AS_IS = ["train=none", "defense=none"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> UserRepo:
    return user_repo_once(tmp_path_factory)


def state_dict_model(repo: UserRepo, arch: str = NET) -> list[str]:
    """The user's plain state dict, its architecture named by import path."""
    return [
        "model=checkpoint",
        f"model.path={repo.state_dict}",
        f"model.arch={arch}",
        "+model.arch_kwargs.width=4",
    ]


def files(path: Path) -> list[str]:
    return ["dataset=files", f"dataset.path={path}"]


@pytest.mark.slow
def test_state_dict_and_png_folder_are_evaluated_as_they_are(make_cfg, repo, tmp_path, caplog):
    over = [*QUICK, *AS_IS, *files(repo.png), *state_dict_model(repo), "tracking=none"]
    cfg = make_cfg([*over, f"+output_dir={tmp_path}"])
    with caplog.at_level(logging.INFO):
        res = run(cfg)
    curve = res.curves["linf"]
    assert res.clean_accuracy == pytest.approx(repo.accuracy)  # the user's own number
    assert curve.eps.tolist() == pytest.approx(CIFAR_LINF)  # user data: CIFAR-style grid
    assert res.headline == pytest.approx(float(curve.worst_case()[3]))  # at 8/255
    assert res.headline <= res.clean_accuracy
    assert cfg.dataset.name == "pngs" and res.manifest["dataset"] == "pngs"
    scaled = [r for r in caplog.records if "scaled from 0-255" in r.getMessage()]
    assert len(scaled) == 1  # the uint8 conversion is said once
    assert not [r for r in caplog.records if "does not exist" in r.getMessage()]


def test_uint8_npz_is_converted_and_explicit_grids_are_kept(make_cfg, repo):
    cfg = make_cfg([*AS_IS, *files(repo.npz), "eval.eps.linf=[0.05,0.1]"])
    data = pipeline.load_data(cfg)
    x = data.test.tensors[0]
    assert x.dtype == torch.float32 and tuple(x.shape[1:]) == (1, 8, 8)
    torch.testing.assert_close(x, repo.x_test, rtol=0, atol=0)
    assert data.info.from_uint8 and len(data.train) > 0  # x_train, y_train of the file
    assert list(cfg.eval.eps.linf) == [0.05, 0.1]  # set explicitly: kept
    assert list(cfg.eval.eps.l2) == pytest.approx(list(CIFAR_STYLE_GRIDS[Norm.L2]))
    registered = make_cfg([])
    pipeline.load_data(registered)
    assert list(registered.eval.eps.linf) == [0.05, 0.1, 0.15, 0.2, 0.3]  # digits: its own


@pytest.mark.slow
def test_npz_and_logits_variant_log_a_model_that_loads_back(make_cfg, repo, sqlite_uri, tmp_path):
    """The dict-returning variant with model.wrap.logits; its MLflow model gives the same logits."""
    model = state_dict_model(repo, f"{PACKAGE}.nets:DictCNN")
    over = [*QUICK, *AS_IS, *files(repo.npz), *model, "+model.wrap.logits=logits"]
    res = run(make_cfg([*over, "tracking.log_model=true", f"+output_dir={tmp_path}"]))
    assert res.clean_accuracy == pytest.approx(repo.accuracy)
    assert type(res.model).__name__ == "WrappedModel"
    mrun = MlflowClient(sqlite_uri).get_run(res.run_id)
    assert mrun.data.tags["logged_model"].startswith("model (pyfunc")
    assert mrun.data.tags["dataset"] == "digits"  # the file's stem
    module = load_logged_model(f"runs:/{res.run_id}/model", tracking_uri=sqlite_uri)
    with torch.no_grad():
        torch.testing.assert_close(module(repo.x_test), res.model(repo.x_test), rtol=0, atol=0)


@pytest.mark.slow
def test_the_users_class_is_trained_and_logged_with_its_arguments(
    make_cfg, repo, sqlite_uri, tmp_path, caplog
):
    """model=custom with +model.width: trained by the run, rebuilt by path with width=6."""
    model = ["model=custom", f"model._target_={PACKAGE}.nets.SmallCNN", "+model.width=6"]
    train = ["train=standard", "defense=none", "train.epochs=1"]
    over = [*QUICK, *train, *files(repo.npz), *model, "tracking.log_model=true"]
    with caplog.at_level(logging.INFO):
        res = run(make_cfg([*over, f"+output_dir={tmp_path}"]))
    assert res.model.arch == NET and res.model.arch_kwargs == {"width": 6, "num_classes": 10}
    assert not [r for r in caplog.records if "does not exist" in r.getMessage()]  # fresh run
    mrun = MlflowClient(sqlite_uri).get_run(res.run_id)
    assert mrun.data.tags["logged_model"].startswith("model (pyfunc")
    module = load_logged_model(f"runs:/{res.run_id}/model", tracking_uri=sqlite_uri)
    assert module.conv.out_channels == 6
    with torch.no_grad():
        torch.testing.assert_close(module(repo.x_test), res.model(repo.x_test), rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.distributed
def test_the_command_line_run_on_the_users_files(repo, tmp_path):
    """``python -m experiments.run`` as the user types it; each table shows once."""
    over = [*QUICK, *AS_IS, *files(repo.png), *state_dict_model(repo), "tracking=none"]
    cmd = [sys.executable, "-m", "experiments.run", *over, f"hydra.run.dir={tmp_path / 'out'}"]
    path = os.pathsep.join([str(ROOT), str(repo.root)])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shown = proc.stdout + proc.stderr
    assert shown.count("clean accuracy") == 1  # the linf table, once
    assert "headline worst-case robust accuracy" in proc.stdout
    assert f"{repo.accuracy:.2%}" in shown


# ------------------------------------------------------------------ bad inputs, before training


def _refused(make_cfg, tmp_path, over: list[str], error: type[Exception], match: str) -> None:
    """The run raises ``error`` matching ``match`` and never creates its output folder."""
    out = tmp_path / "out"
    with pytest.raises(error, match=match):
        run(make_cfg([*QUICK, "tracking=none", *over, f"+output_dir={out}"]))
    assert not out.exists()


def test_float_labels_are_refused(make_cfg, repo, tmp_path):
    data = ["dataset=custom", f"dataset._target_={PACKAGE}.data.load_float_labels"]
    over = [*AS_IS, *data, *state_dict_model(repo)]
    _refused(make_cfg, tmp_path, over, ValueError, r"integer class indices.*0\.7.*never truncated")


def test_eps_in_0_255_units_asks_for_255ths(make_cfg, repo, tmp_path):
    over = [*AS_IS, *files(repo.png), *state_dict_model(repo), "eval.eps.linf=[1,2,4,8]"]
    _refused(make_cfg, tmp_path, over, ValueError, r"Did you mean \[1/255, 2/255, 4/255, 8/255\]")
    over = [*over[:-1], "eval.eps.linf=[8]", "eval.headline.eps=8"]
    _refused(make_cfg, tmp_path, over, ValueError, r"eps=8 on inputs in \[0, 1\].*8/255")


def test_an_unknown_attack_keyword_names_the_attack_and_its_keywords(make_cfg, repo, tmp_path):
    over = [*AS_IS, *files(repo.png), *state_dict_model(repo), "+attack.pgd.stepz=3"]
    _refused(make_cfg, tmp_path, over, TypeError, r"'pgd' does not take 'stepz'.*'steps'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_refused(make_cfg, repo, tmp_path):
    over = [*AS_IS, *files(repo.png), *state_dict_model(repo), "device=cuda"]
    _refused(make_cfg, tmp_path, over, ValueError, "CUDA is not available here")


def test_a_dict_output_names_the_wrap_setting(make_cfg, repo, tmp_path):
    over = [*AS_IS, *files(repo.png), *state_dict_model(repo, f"{PACKAGE}.nets:DictCNN")]
    _refused(make_cfg, tmp_path, over, ValueError, r"\+model\.wrap\.logits='logits'")


def test_a_plain_state_dict_needs_its_architecture(make_cfg, repo, tmp_path):
    over = [*AS_IS, *files(repo.png), "model=checkpoint", f"model.path={repo.state_dict}"]
    _refused(make_cfg, tmp_path, over, ValueError, "plain state dict: it records no architecture")


def test_a_checkpoint_of_another_architecture_is_refused_with_both_names(make_cfg, repo, tmp_path):
    saved = tmp_path / "net.pt"
    rbl.save_checkpoint(rbl.load_checkpoint(repo.state_dict, arch=NET, width=4), saved)
    model = ["model=checkpoint", f"model.path={saved}", f"model.arch={PACKAGE}.nets:TupleCNN"]
    over = [*AS_IS, *files(repo.png), *model]
    _refused(make_cfg, tmp_path, over, ValueError, rf"'{NET}' checkpoint but arch='.*TupleCNN'")


def test_training_on_test_only_data_says_how_to_run_without(make_cfg, repo, tmp_path):
    over = [*files(repo.png), *state_dict_model(repo), "defense=fgsm_at"]
    match = r"training split.*only test data.*train=none defense=none"
    _refused(make_cfg, tmp_path, over, ValueError, match)


def test_a_misspelt_wrap_setting_is_named(make_cfg, repo, tmp_path):
    over = [*AS_IS, *files(repo.png), *state_dict_model(repo), "+model.wrap.logit=logits"]
    _refused(make_cfg, tmp_path, over, ValueError, r"model\.wrap: .*'logit'.*'logits'")


# ------------------------------------------------------------------------- the data specs


def test_a_function_with_keyword_arguments_and_a_relative_path(make_cfg, repo, monkeypatch):
    data = ["dataset=custom", f"dataset._target_={PACKAGE}.data.load_items", "+dataset.n=20"]
    cfg = make_cfg([*AS_IS, *data])
    loaded = pipeline.load_data(cfg)
    assert len(loaded.test) == 20 and cfg.dataset.name == f"{PACKAGE}.data:load_items"
    monkeypatch.chdir(repo.root)
    cfg = make_cfg([*AS_IS, "dataset=files", "dataset.path=pngs_split"])
    loaded = pipeline.load_data(cfg)
    assert (len(loaded.test), len(loaded.train)) == (40, 30)


@pytest.mark.parametrize(
    ("over", "match"),
    [
        (["dataset=files"], r"dataset\.path is not set: add e\.g\. dataset\.path="),
        (["dataset=custom"], r"dataset\._target_ is not set"),
        (["dataset=custom", "dataset._target_=nowhere.load"], "no module of it can be imported"),
        (["dataset=files", "dataset.path=nothing/here"], "no such file or folder"),
    ],
)
def test_bad_data_specs_say_what_to_write(make_cfg, over, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        pipeline.load_data(make_cfg([*AS_IS, *over]))


def test_auto_grids_need_the_data(make_cfg, repo):
    cfg = make_cfg([*AS_IS, *files(repo.png)])
    with pytest.raises(ValueError, match=r"eval\.eps\.linf=auto .*load_data\(cfg\) first"):
        pipeline.validate(cfg)
    digits = make_cfg(["eval.eps.linf=auto"])
    pipeline.validate(digits)  # a registered dataset's own grid
    assert list(digits.eval.eps.linf) == [0.05, 0.1, 0.15, 0.2, 0.3]
