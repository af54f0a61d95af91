"""The evaluation plan: built and checked once per run, then shared by every step."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from experiments import pipeline
from experiments.plan import EvalPlan
from experiments.run import run

from .conftest import TINY

QUICK = [
    *TINY,
    "train=none",
    "defense=none",
    "tracking=none",
    "eval.n_examples=20",
    "eval.checks=false",
    "eval.reference=false",
]


def test_the_plan_holds_the_attacks_grids_references_and_headline(make_cfg):
    cfg = make_cfg(["eval.headline.eps=0.1", "eval.reference=all"])
    plan = pipeline.validate(cfg)
    assert isinstance(plan, EvalPlan)
    assert plan.labels == ["fgsm", "pgd", "cw_l2"]
    assert {n: list(g) for n, g in plan.attacks.items()} == {
        "linf": ["fgsm", "pgd"],
        "l2": ["cw_l2"],
    }
    assert plan.grids == {n: tuple(g) for n, g in pipeline.eps_grids(cfg).items()}
    assert plan.references == {"linf": "all", "l2": "all"}
    assert (plan.headline_norm, plan.headline_eps) == ("linf", 0.1)
    assert plan.grids["linf"][plan.headline_index] == pytest.approx(0.1)
    assert plan.headline_eps_of("linf") == pipeline.headline_eps(cfg, "linf") == 0.1
    assert plan.headline_eps_of("l2") is pipeline.headline_eps(cfg, "l2") is None


def test_the_plan_cannot_be_changed(make_cfg):
    plan = EvalPlan.from_config(make_cfg())
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.headline_eps = 0.5  # type: ignore[misc]
    with pytest.raises(TypeError):
        plan.grids["linf"] = (0.5,)  # type: ignore[index]
    with pytest.raises(TypeError):
        plan.attacks["linf"]["other"] = plan.attacks["linf"]["pgd"]  # type: ignore[index]


def test_a_headline_norm_without_a_grid_has_no_index(make_cfg):
    plan = EvalPlan.from_config(make_cfg(["eval.headline.norm=l1", "eval.headline.eps=5"]))
    assert plan.headline_index is None and plan.headline({}) is None


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("eval.headline.eps=0.25", "not on the linf grid"),
        ("eval.headline.eps=abc", "cannot read"),
        ("eval.n_examples=0", "positive integer"),
        ("~eval.eps.l2", r"attacks in norm\(s\) \['l2'\]"),
        ("eval.reference=sometimes", "eval.reference"),
    ],
)
def test_the_plan_refuses_what_validate_refuses(make_cfg, override, match):
    cfg = make_cfg([override])
    with pytest.raises(ValueError, match=match):
        EvalPlan.from_config(cfg)
    with pytest.raises(ValueError, match=match):
        pipeline.validate(cfg)


def test_a_run_builds_its_attacks_once_and_takes_the_headline_from_the_plan(
    make_cfg, caplog, tmp_path
):
    """The deprecated ``eval.suite`` warns each time the attacks are built: once per run."""
    cfg = make_cfg([*QUICK, "attack=fgsm", "eval.suite=[fgsm]", f"+output_dir={tmp_path}"])
    with caplog.at_level(logging.WARNING, logger="experiments.plan"):
        res = run(cfg)
    built = [r for r in caplog.records if "eval.suite is deprecated" in r.getMessage()]
    assert len(built) == 1
    assert res.curves["linf"].attacks[:2] == ["fgsm", "suite"]
    assert res.headline == pipeline.headline(cfg, res.curves)
    assert res.tags == {"reference.linf": "off"}


def test_evaluate_plan_returns_the_tags_the_run_records(make_cfg, digits_model):
    cfg = make_cfg([*QUICK, "attack=fgsm", "~eval.eps.l2"])
    plan = pipeline.validate(cfg)
    data = pipeline.load_data(cfg)
    evaluation = pipeline.evaluate_plan(
        plan, cfg, digits_model, data, pipeline.resolve_device("cpu")
    )
    assert list(evaluation.curves) == ["linf"]
    assert (
        evaluation.tags == pipeline.reference_tags(evaluation.curves) == {"reference.linf": "off"}
    )
    assert evaluation.headline == plan.headline(evaluation.curves)
    assert evaluation.headline == pipeline.headline(cfg, evaluation.curves)
