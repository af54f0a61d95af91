"""What a new user sees: a sweep's parent run and compare command, tables once, no false notice."""

from __future__ import annotations

import logging

import pytest
import torch
from hydra import compose, initialize_config_module
from mlflow import MlflowClient
from omegaconf import open_dict
from torch import nn
from torch.utils.data import TensorDataset

import attacks
import robustbench_local as rbl
from defenses.checkpoints import resume_by_default
from defenses.trainer import Trainer
from experiments import sweep
from experiments.callbacks import MLflowSweepCallback
from experiments.run import Results, tables_logged


@pytest.mark.slow
def test_a_sweep_ends_with_its_parent_run_and_the_compare_command(sqlite_uri, tmp_path, capsys):
    over = [f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    with initialize_config_module(config_module="experiments.conf", version_base="1.3"):
        config = compose(config_name="config", overrides=over, return_hydra_config=True)
    with open_dict(config):
        config.hydra.overrides.task = ["defense=none,fgsm_at"]  # as typed after -m
    callback = MLflowSweepCallback()
    callback.on_multirun_start(config)
    callback.on_multirun_end(config)
    out = capsys.readouterr().out.splitlines()
    parent = callback.run_id
    assert MlflowClient(sqlite_uri).get_run(parent).info.status == "FINISHED"
    assert out[-2] == f"sweep done: 0 run(s); MLflow parent run {parent} at {sqlite_uri}"
    # the store is the one experiments.compare finds by itself ($MLFLOW_TRACKING_URI)
    assert out[-1] == f"compare them: python -m experiments.compare --parent {parent}"


def test_the_compare_command_names_a_store_it_would_not_find():
    cmd = sweep.compare_command("abc", "sqlite:////data/my runs.db", "sqlite:////here/mlflow.db")
    tail = "--tracking-uri 'sqlite:////data/my runs.db'"
    assert cmd == f"python -m experiments.compare --parent abc {tail}"
    assert "failed" in sweep.end_message("abc", "u", 3, 1, "u").splitlines()[0]


def test_the_summary_leaves_out_the_tables_the_log_showed(digits, tmp_path, caplog):
    x, y = digits
    model = rbl.create_model("digits_mlp")
    attack = {"fgsm": attacks.create("fgsm")}
    curve = rbl.robustness_curve(
        model, (x[:20], y[:20]), attack, [0.1], reference=False, checks=False,
        progress=False,
    )  # fmt: skip
    res = Results({"linf": curve}, 0.5, curve.clean_accuracy, model, output_dir=tmp_path)
    assert curve.table() in res.summary() and "headline" in res.summary()
    short = res.summary(tables=False)
    assert curve.table() not in short and "headline worst-case robust accuracy: 50.00%" in short
    logging.getLogger("robustbench_local.evaluate").setLevel(logging.WARNING)
    try:
        assert not tables_logged()
    finally:
        logging.getLogger("robustbench_local.evaluate").setLevel(logging.NOTSET)
    with caplog.at_level(logging.INFO):
        assert tables_logged()


def _fit(epochs: int, folder, data: TensorDataset) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    return Trainer(epochs=epochs, batch_size=200, progress=False).fit(
        net, data, checkpoint_dir=folder
    )


def test_a_fresh_run_has_no_resume_notice_and_a_real_resume_says_so(digits, tmp_path, caplog):
    data = TensorDataset(*(t[:400] for t in digits))
    with resume_by_default(), caplog.at_level(logging.INFO, logger="defenses"):
        _fit(1, tmp_path, data)
        fresh = caplog.text
        caplog.clear()
        _fit(2, tmp_path, data)
    assert "resum" not in fresh.lower() and "does not exist" not in fresh
    assert "resumed from" in caplog.text  # asked or not, a real resume is said
