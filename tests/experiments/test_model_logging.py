"""The logged model holds no pickle, loads back through MLflow and gives the same logits."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from mlflow import MlflowClient
from torch import nn

import defenses
import robustbench_local as rbl
from defenses.denoising import ConvAutoencoder
from defenses.inference import Preprocessed
from defenses.preprocessors import Preprocessor
from experiments import model_logging as ml
from experiments.tracking import RunLogger

PICKLE_SUFFIXES = (".pkl", ".pickle", ".cloudpickle", ".joblib")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """A SQLite store and its artifact folder, MLflow's tracking URI for this module only."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    yield uri, root / "artifacts"
    mlflow.set_tracking_uri(before)


@pytest.fixture(scope="module")
def exp_id(store) -> str:
    uri, artifacts = store
    return MlflowClient(uri).create_experiment("model-logging", artifacts.as_uri())


@pytest.fixture(scope="module")
def classifier(digits) -> nn.Module:
    torch.manual_seed(0)
    net = rbl.create_model("digits_mlp")
    x, y = digits
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x[:1000]), y[:1000]).backward()
        opt.step()
    return net.eval()


def denoiser() -> ConvAutoencoder:
    torch.manual_seed(1)
    ae = ConvAutoencoder(channels=1, width=8)
    with torch.no_grad():
        for p in ae.parameters():
            p.normal_(0, 0.2)  # a "trained" denoiser that visibly changes the input
    return ae.eval()


def wrap(kind: str, net: nn.Module) -> nn.Module:
    if kind == "plain":
        return net
    if kind == "denoising_autoencoder":
        return Preprocessed(denoiser(), net)
    settings = {"median_filter": {"size": 3}, "jpeg": {"quality": 40}, "bit_depth": {"bits": 2}}
    return defenses.create(kind, **settings[kind]).wrap(net)


def log_and_reload(model: nn.Module, x: torch.Tensor, tmp_path: Path, exp_id: str):
    with mlflow.start_run(experiment_id=exp_id):
        files = ml.save_model_files(model, tmp_path)
        info = ml.log_model(model, files, x[:2])
    return info, mlflow.pyfunc.load_model(info.model_uri)


def assert_no_pickle(model_uri: str) -> dict:
    local = Path(mlflow.artifacts.download_artifacts(model_uri))
    files = [p for p in local.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in PICKLE_SUFFIXES], files
    for p in files:
        if p.suffix == ".pt":
            torch.load(p, weights_only=True)  # plain data and tensors only
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    assert set(mlmodel["flavors"]) == {"python_function"}
    assert mlmodel["flavors"]["python_function"]["loader_module"].endswith("code_model")
    assert (local / Path(ml.CODE_FILE).name).is_file()
    return mlmodel


@pytest.mark.parametrize("kind", ["plain", "median_filter", "jpeg", "denoising_autoencoder"])
def test_logged_model_gives_the_same_logits(exp_id, classifier, digits, tmp_path, kind):
    model = wrap(kind, classifier)
    x = digits[0][1500:1600]
    info, loaded = log_and_reload(model, x, tmp_path, exp_id)
    mlmodel = assert_no_pickle(info.model_uri)
    assert "tensor" in mlmodel["signature"]["inputs"]
    with torch.no_grad():
        want = model(x)
    got = torch.from_numpy(loaded.predict(x.numpy()))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    module = loaded.unwrap_python_model().model
    assert not module.training
    if kind != "plain":
        assert isinstance(module, Preprocessed)
        assert type(module.preprocessor) is type(model.preprocessor)
        assert (module.differentiable, module.random) == (model.differentiable, model.random)
        # the defense is really there: without it the logits differ
        with torch.no_grad():
            bare = classifier(x)
        assert (bare - want).abs().max() > 1e-3


def test_a_random_defense_is_rebuilt_with_its_settings(exp_id, classifier, digits, tmp_path):
    model = defenses.create("random_noise", sigma=0.3).wrap(classifier)
    info, _ = log_and_reload(model, digits[0][:8], tmp_path, exp_id)
    module = ml.load_logged_model(info.model_uri)
    assert module.random and module.preprocessor.sigma == 0.3
    torch.manual_seed(5)
    a = module(digits[0][:8])
    torch.manual_seed(5)
    torch.testing.assert_close(a, model(digits[0][:8]))


def test_files_load_weights_only_and_refuse_tampering(classifier, tmp_path):
    model = Preprocessed(denoiser(), classifier)
    files = ml.save_model_files(model, tmp_path)
    assert set(files) == {"classifier", "defense"}
    meta = torch.load(files["classifier"], weights_only=True)["meta"]
    assert meta["defense"]["name"] == "denoising_autoencoder"
    assert meta["defense"]["settings"] == {"channels": 1, "width": 8}
    with pytest.raises(ValueError, match=r"defense\.pt"):
        ml.load_model_files(files["classifier"])
    ckpt = torch.load(files["defense"], weights_only=True)
    ckpt["state_dict"]["net.0.weight"] += 1.0
    torch.save(ckpt, files["defense"])
    with pytest.raises(ValueError, match="tampered"):
        ml.load_model_files(files["classifier"], files["defense"])


class Unregistered(Preprocessor):
    def forward(self, x):
        return x.clamp(0.1, 0.9)


def test_models_that_cannot_be_rebuilt_are_refused_clearly(classifier, tmp_path):
    with pytest.raises(ml.UnsupportedModelError, match="register_input_defense"):
        ml.save_model_files(Preprocessed(Unregistered(), classifier), tmp_path)
    custom = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    files = ml.save_model_files(custom, tmp_path)
    assert "not a registered architecture" in ml.loadable(custom)
    with pytest.raises(ml.UnsupportedModelError, match="registered architecture"):
        ml.log_model(custom, files)


def test_run_logger_logs_checkpoints_and_says_when_it_skips_the_model(
    store, exp_id, classifier, digits
):
    client = MlflowClient(store[0])
    guarded = Preprocessed(Unregistered(), classifier)
    with mlflow.start_run(experiment_id=exp_id) as run:
        RunLogger(run.info.run_id, client).model(guarded, True, example=digits[0][:2])
    got = client.get_run(run.info.run_id)
    assert got.data.tags["logged_model"].startswith("skipped:")
    paths = [f.path for f in client.list_artifacts(run.info.run_id, "checkpoint")]
    assert paths == ["checkpoint/model.pt"]
    assert not client.search_logged_models([got.info.experiment_id], filter_string=(
        f"source_run_id = '{run.info.run_id}'"))  # fmt: skip

    with mlflow.start_run(experiment_id=exp_id) as run:
        RunLogger(run.info.run_id, client).model(wrap("denoising_autoencoder", classifier),
                                                 True, example=digits[0][:2])  # fmt: skip
    paths = {f.path for f in client.list_artifacts(run.info.run_id, "checkpoint")}
    assert paths == {"checkpoint/model.pt", "checkpoint/defense.pt"}
    local = client.download_artifacts(run.info.run_id, "checkpoint")
    rebuilt = ml.load_model_files(
        os.path.join(local, "model.pt"), os.path.join(local, "defense.pt")
    )
    x = digits[0][:16]
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), wrap("denoising_autoencoder", classifier)(x))
    module = ml.load_logged_model(f"runs:/{run.info.run_id}/model")
    assert isinstance(module.preprocessor, ConvAutoencoder)
