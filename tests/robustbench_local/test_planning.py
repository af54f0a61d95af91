"""Which runs a curve makes and why: probe reports in, labelled runs out."""

from __future__ import annotations

import pytest

import attacks
import defenses
from attacks.straight_through import StraightThrough
from robustbench_local.checks.gradients import GradientReport
from robustbench_local.planning import (
    attack_runs,
    margin_variant,
    plan_runs,
    reference_model,
)
from robustbench_local.reference import APGDDLRUntargeted

CLEAN = GradientReport(zero=0.0, saturated=0.0, nonfinite=0.0, hidden_ops=[], random=False)


def report(**kw):
    return GradientReport(**{**CLEAN.__dict__, **kw})


@pytest.fixture
def amap():
    return {"pgd": attacks.create("pgd"), "apgd": attacks.create("apgd_ce", steps=7)}


def labels(runs):
    return [r.label for r in runs]


def test_a_healthy_model_gets_the_chosen_attacks_only(digits_model, amap):
    runs = plan_runs(digits_model, amap, "auto", CLEAN)
    assert labels(runs) == ["pgd", "apgd"] and {r.why for r in runs} == {"chosen"}
    assert all(r.model is digits_model for r in runs)
    assert reference_model(digits_model, "auto", CLEAN) == (digits_model, "as given")


def test_saturated_gradients_add_margin_loss_runs(digits_model, amap):
    runs = plan_runs(digits_model, amap, "auto", report(zero=0.9, saturated=0.9))
    assert labels(runs) == ["pgd", "apgd", "pgd+margin", "apgd+margin"]
    pgd_m, apgd_m = runs[2].attack, runs[3].attack
    assert pgd_m.loss == "cw" and amap["pgd"].loss == "ce"  # a copy, the chosen one unchanged
    assert isinstance(apgd_m, APGDDLRUntargeted) and apgd_m.steps == 7
    assert "saturated on 90%" in runs[2].why
    assert labels(plan_runs(digits_model, amap, "auto", report(saturated=0.05))) == ["pgd", "apgd"]


def test_margin_variants():
    assert margin_variant(attacks.create("fgsm")).loss == "cw"
    assert margin_variant(attacks.create("pgd", loss="cw")) is None  # already a margin loss
    assert margin_variant(attacks.create("apgd_dlr")) is None
    assert margin_variant(attacks.create("cw_l2")) is None
    suite = attacks.AttackSuite([attacks.create("apgd_ce")])
    assert margin_variant(suite) is None


def test_hidden_rounding_ops_add_straight_through_runs_and_reference(digits_model, amap):
    found = report(zero=1.0, hidden_ops=["round"])
    runs = plan_runs(digits_model, amap, "auto", found)
    assert labels(runs) == ["pgd", "apgd", "pgd+ste", "apgd+ste"]
    assert isinstance(runs[2].model, StraightThrough) and "round" in runs[2].why
    model, what = reference_model(digits_model, "auto", found)
    assert isinstance(model, StraightThrough) and what == "straight-through"
    random_too = plan_runs(digits_model, amap, "auto", report(hidden_ops=["round"], random=True))
    assert isinstance(random_too[2].model, attacks.EOT)  # straight-through with EOT


def test_undeclared_randomness_adds_eot_runs(digits_model, amap):
    runs = plan_runs(digits_model, amap, "auto", report(random=True))
    assert labels(runs) == ["pgd", "apgd", "pgd+eot", "apgd+eot"]
    assert isinstance(runs[2].model, attacks.EOT) and runs[2].model.model is digits_model


def test_declared_defense_keeps_its_bpda_surrogate(digits_model, amap):
    guarded = defenses.create("bit_depth", bits=2).wrap(digits_model)
    runs = plan_runs(guarded, amap, "auto", report(zero=1.0, hidden_ops=["round"]))
    assert labels(runs) == ["pgd", "apgd", "pgd+adaptive", "apgd+adaptive"]  # no +ste
    model, what = reference_model(guarded, "auto", CLEAN)
    assert isinstance(model, attacks.BPDA) and "differentiable=False" in what


def test_adaptive_false_runs_the_chosen_attacks_only(digits_model, amap):
    bad = report(zero=1.0, saturated=1.0, hidden_ops=["round"], random=True)
    assert labels(plan_runs(digits_model, amap, False, bad)) == ["pgd", "apgd"]
    assert reference_model(digits_model, False, bad)[1] == "as given"
    assert labels(attack_runs(digits_model, amap, True)) == [
        "pgd", "apgd", "pgd+adaptive", "apgd+adaptive",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="adaptive must be"):
        plan_runs(digits_model, amap, "yes", CLEAN)
