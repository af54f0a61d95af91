"""The experiments' evaluation resumes from ``eval.state_dir`` (one state per norm's curve)."""

from __future__ import annotations

import torch
from hydra import compose, initialize_config_module

import experiments  # noqa: F401  (resolvers)
from experiments import pipeline

OVERRIDES = [
    "train=none", "defense=none", "eval.n_examples=60", "eval.batch_size=30", "progress=false",
    "attack.pgd.steps=3", "attack.cw_l2.steps=5", "attack.cw_l2.binary_search_steps=2",
]  # fmt: skip


def test_eval_state_dir_resumes_every_curve(tmp_path):
    with initialize_config_module(config_module="experiments.conf", version_base="1.3"):
        cfg = compose("config", overrides=[*OVERRIDES, f"eval.state_dir={tmp_path}"])
    assert cfg.eval.state_dir == str(tmp_path)
    data = pipeline.load_data(cfg)
    model = pipeline.build_model(cfg, data, torch.device("cpu"))
    first = pipeline.evaluate(cfg, model, data, torch.device("cpu"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(first)  # one state per norm
    again = pipeline.evaluate(cfg, model, data, torch.device("cpu"))
    for norm, curve in first.items():
        assert (tmp_path / norm / "manifest.json").exists()
        assert all(torch.equal(again[norm].robust[k], v) for k, v in curve.robust.items())
        assert again[norm].total_cost()["n_forward"] == 0 < curve.total_cost()["n_forward"]


def test_eval_state_dir_defaults_to_off():
    with initialize_config_module(config_module="experiments.conf", version_base="1.3"):
        cfg = compose("config", overrides=OVERRIDES)
    assert cfg.eval.state_dir is None
