"""robustness_curve: nested eps semantics, survivors only, worst case, streaming, adaptive runs."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import TensorDataset

import attacks
import defenses
from robustbench_local.evaluate import Curve, attack_runs, robustness_curve

EPS = [0.05, 0.1, 0.2, 0.3]


@pytest.fixture
def test_set(digits):
    x, y = digits
    return TensorDataset(x[1200:1500], y[1200:1500])


def curve_of(model, data, names=("fgsm", "pgd"), **kw):
    kw.setdefault("checks", False)
    kw.setdefault("progress", False)
    kw.setdefault("reference", False)  # these tests are about the chosen attacks
    return robustness_curve(model, data, list(names), EPS, **kw)


def test_accuracy_non_increasing_and_worst_case_below_each(digits_model, test_set):
    c = curve_of(digits_model, test_set)
    for label in c.attacks:
        acc = c.accuracy(label)
        assert (acc[1:] <= acc[:-1]).all()
        assert (c.worst_case() <= acc + 1e-12).all()
        assert (acc <= c.clean_accuracy).all()
    assert c.robust["pgd"].shape == (len(EPS), 300)
    # nested: broken at eps_i means broken at every larger eps
    r = c.robust["pgd"]
    assert not (r[1:] & ~r[:-1]).any()
    assert c.worst_case()[-1] < 0.05  # an undefended model falls to ~0% at a large eps


def test_survivors_only_costs_less_than_naive(digits_model, test_set):
    c = curve_of(digits_model, test_set, names=("pgd",))
    x, y = test_set.tensors
    pgd = attacks.create("pgd")
    naive_pgd = attacks.create("pgd", early_stop=False)  # every eps on every sample, as ART does
    naive = sum(naive_pgd(digits_model, x, y, eps=e).n_backward for e in EPS)
    assert c.cost["pgd"]["n_backward"] < naive / 2
    for k, e in enumerate(EPS):  # and it is at least as strong as attacking each eps alone
        alone = float(pgd(digits_model, x, y, eps=e).robust_accuracy)
        assert float(c.accuracy("pgd")[k]) <= alone + 0.01


def test_batches_give_the_same_answer(digits_model, test_set):
    one = curve_of(digits_model, test_set, names=("fgsm",), batch_size=1000)
    many = curve_of(digits_model, test_set, names=("fgsm",), batch_size=64)
    assert torch.equal(one.robust["fgsm"], many.robust["fgsm"])


def test_n_examples_selects_a_fixed_subset(digits_model, test_set):
    a = curve_of(digits_model, test_set, names=("fgsm",), n_examples=100, seed=3)
    b = curve_of(digits_model, test_set, names=("fgsm",), n_examples=100, seed=3)
    assert torch.equal(a.indices, b.indices)
    assert len(a.indices) == 100
    assert torch.equal(a.robust["fgsm"], b.robust["fgsm"])


def test_minimum_norm_attack_is_thresholded(digits_model, test_set):
    cw = attacks.create("cw_l2", steps=30, binary_search_steps=3)
    grid = [0.25, 0.5, 1.0]
    c = robustness_curve(
        digits_model, test_set, {"cw": cw}, grid, n_examples=50, checks=False, progress=False,
        reference=False,
    )  # fmt: skip
    x, y = test_set.tensors
    res = cw(digits_model, x[c.indices], y[c.indices])  # one run, minimal norms [N]
    for k, e in enumerate(grid):
        expected = res.clean_correct & ~(res.norms <= e)
        assert torch.equal(c.robust["cw"][k], expected)
    acc = c.accuracy("cw")
    assert (acc[1:] <= acc[:-1]).all() and float(acc[-1]) < float(acc[0])


def test_adaptive_runs_for_non_differentiable_defense(digits_model, test_set):
    guarded = defenses.create("bit_depth", bits=2).wrap(digits_model)
    c = curve_of(guarded, test_set, names=("pgd",), n_examples=150)
    assert c.attacks == ["pgd", "pgd+adaptive"]
    assert float(c.accuracy("pgd+adaptive")[-1]) < float(c.accuracy("pgd")[-1]) - 0.3
    assert torch.equal(c.worst_case(), torch.minimum(c.accuracy("pgd"), c.accuracy("pgd+adaptive")))


def test_curve_records_configs_health_and_json(digits_model, test_set):
    c = robustness_curve(digits_model, test_set, ["fgsm"], EPS, n_examples=50, progress=False)
    assert c.attack_configs["fgsm"]["name"] == "fgsm" and c.norm == "linf"
    assert [f.name for f in c.health][:2] == ["inputs_in_bounds", "logits_not_probabilities"]
    assert c.attacks == ["fgsm", "reference"]  # the defaults: reference="auto", full budgets
    assert c.reference.ran == [False, False, False, True] and not c.reference.reduced
    assert c.attack_configs["reference"]["budgets"] == {
        "steps": 100, "n_target_classes": 4, "square_queries": 5000, "eot_samples": 20,
    }  # fmt: skip
    c2 = Curve.from_dict(json.loads(json.dumps(c.to_dict())))
    assert torch.equal(c2.worst_case(), c.worst_case()) and c2.health == c.health
    assert c2.reference == c.reference and c2.table() == c.table()


def test_runs_add_adaptive_rows_only_where_asked(digits_model):
    pgd = attacks.create("pgd")
    assert [r.label for r in attack_runs(digits_model, {"pgd": pgd})] == ["pgd"]
    runs = attack_runs(digits_model, {"pgd": pgd}, adaptive=True)
    assert [r.label for r in runs] == ["pgd", "pgd+adaptive"]
    guarded = defenses.create("bit_depth", bits=2).wrap(digits_model)
    runs = attack_runs(guarded, {"pgd": pgd})  # "auto": the denoiser is non-differentiable
    assert [r.label for r in runs] == ["pgd", "pgd+adaptive"]
    assert runs[0].model is guarded and runs[1].model is not guarded
    assert [r.label for r in attack_runs(guarded, {"pgd": pgd}, adaptive=False)] == ["pgd"]
    with pytest.raises(ValueError, match="adaptive must be"):
        attack_runs(digits_model, {"pgd": pgd}, adaptive="yes")


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"eps": [0.3, 0.1]}, "increasing"),
        ({"eps": [-0.1, 0.1]}, ">= 0"),
        ({"n_examples": 10_000}, "n_examples"),
        ({"attacks": []}, "no attacks"),
        ({"attacks": ["pgdd"]}, "Known attacks"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"n_examples": 0}, "n_examples"),
    ],
)
def test_bad_input(digits_model, test_set, kw, match):
    args = {"attacks": ["fgsm"], "eps": EPS} | kw
    with pytest.raises(ValueError, match=match):
        robustness_curve(
            digits_model, test_set, args.pop("attacks"), args.pop("eps"), progress=False, **args
        )
