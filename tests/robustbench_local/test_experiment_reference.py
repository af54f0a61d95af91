"""The experiments' wiring of the reference: eval.reference, the headline eps, tags, eval=strong."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_module
from torch.utils.data import TensorDataset

import experiments  # noqa: F401  (resolvers)
from experiments import pipeline

QUICK = "{steps:5,n_target_classes:2,square_queries:20,eot_samples:2}"


def make_cfg(*overrides: str):
    with initialize_config_module(config_module="experiments.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_eval_reference_defaults_to_auto_and_strong_runs_it_at_every_eps():
    cfg = make_cfg()
    assert cfg.eval.reference == "auto"
    assert pipeline.reference_of(cfg, "linf") == "auto"
    assert make_cfg("eval=strong").eval.reference == "all"
    assert make_cfg("eval=strong").eval.get("suite") is None  # folded into the reference
    assert pipeline.reference_of(make_cfg("eval.reference=false"), "linf") is False
    reduced = pipeline.reference_of(make_cfg(f"eval.reference={QUICK}"), "l2")
    assert reduced.reduced and reduced.norm.value == "l2" and reduced.budgets["steps"] == 5


def test_headline_eps_goes_to_the_headline_norm_only():
    cfg = make_cfg("eval.headline.eps=0.1")
    assert pipeline.headline_eps(cfg, "linf") == 0.1
    assert pipeline.headline_eps(cfg, "l2") is None


def test_a_bad_eval_reference_fails_validation():
    with pytest.raises(ValueError, match=r"eval\.reference: reference must be auto, all, false"):
        pipeline.validate(make_cfg("eval.reference=sometimes"))
    with pytest.raises(ValueError, match=r"eval\.reference: unknown reference settings"):
        pipeline.validate(make_cfg("eval.reference={queries:3}"))


def test_evaluate_runs_the_reference_at_the_headline_and_returns_its_tags(digits, digits_model):
    cfg = make_cfg(
        "attack=[fgsm]", "eval.n_examples=40", "eval.headline.eps=0.1", "progress=false",
        "eval.checks=false", f"eval.reference={QUICK}",
    )  # fmt: skip
    x, y = digits
    data = pipeline.Data(train=TensorDataset(x[:10], y[:10]), val=None, test=TensorDataset(x, y))
    plan = pipeline.validate(cfg)
    evaluation = pipeline.evaluate_plan(plan, cfg, digits_model, data, torch.device("cpu"))
    curves = evaluation.curves
    curve = curves["linf"]
    assert curve.attacks == ["fgsm", "reference"]
    grid = [float(e) for e in curve.eps]
    assert curve.reference.ran == [e == 0.1 for e in grid] and curve.reference.reduced
    assert "reference (reduced)" in curve.table()
    assert evaluation.tags == pipeline.reference_tags(curves) == {"reference.linf": "reduced"}
