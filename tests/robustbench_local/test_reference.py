"""The reference suite on every evaluation: where it runs, what it finds, how it is labelled."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import attacks
import robustbench_local as rbl
import robustbench_local.reference
from robustbench_local.checks.reference import check_weaker_than_reference
from robustbench_local.curve import Curve
from robustbench_local.evaluate import robustness_curve
from robustbench_local.reference import (
    DEFAULT_BUDGETS,
    REFERENCE_LABEL,
    ReferenceSuite,
    reference_from_config,
    resolve_reference,
    standard_suite,
)

# A reduced reference for the tests that are not about its budgets.
QUICK = {"steps": 10, "n_target_classes": 2, "square_queries": 50, "eot_samples": 2}


class Scaled(nn.Module):
    """Logits times 1e4: the softmax saturates and the cross-entropy gradient vanishes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x) * 1e4


class Noisy(nn.Module):
    """Fresh noise on the logits at every call; ``random`` declared or not."""

    def __init__(self, model: nn.Module, declare: bool = False) -> None:
        super().__init__()
        self.model = model
        if declare:
            self.random = True

    def forward(self, x):
        out = self.model(x)
        return out + 0.5 * torch.randn_like(out)


@pytest.fixture
def data(digits):
    x, y = digits
    return TensorDataset(x[1200:1500], y[1200:1500])


def flag_of(curve: Curve):
    (flag,) = [f for f in curve.health if f.name == "weaker_than_reference"]
    return flag


def survivors_of(model, data, curve, label_attack, eps):
    """Independent recomputation: the chosen attack alone, then the suite on its survivors."""
    x, y = data.tensors
    x, y, ids = x[curve.indices], y[curve.indices], curve.indices
    res = label_attack(model, x, y, eps=eps, ids=ids)
    return x, y, ids, ~res.success


# ------------------------------------------------------------------------------ the suite


def test_standard_suite_is_autoattacks_cascade_in_order():
    suite = standard_suite("l2", seed=3)
    assert isinstance(suite, ReferenceSuite) and suite.norm == attacks.Norm.L2
    names = [m.name for m in suite.members]
    expected = ["apgd_ce", "apgd_dlr", "fab_t", "square"]
    assert names == [n for n in expected if n in attacks.ATTACKS]  # fab_t/square when merged
    assert suite.missing == [n for n in ("fab_t", "square") if n not in attacks.ATTACKS]
    cfg = suite.config()
    assert cfg["version"] == rbl.SUITE_VERSION == "3" and cfg["budgets"] == DEFAULT_BUDGETS
    assert DEFAULT_BUDGETS == {
        "steps": 100, "n_target_classes": 4, "square_queries": 5000, "eot_samples": 20,
    }  # fmt: skip
    ce, apgd_t = cfg["attacks"][:2]
    assert (ce["steps"], ce["restarts"], ce["seed"], ce["norm"]) == (100, 1, 3, "l2")
    assert (apgd_t["steps"], apgd_t["n_target_classes"], apgd_t["target_order"]) == (
        100,
        4,
        "linear",
    )
    assert [a["name"] for a in cfg["rand_attacks"]] == ["apgd_ce", "apgd_dlr_untargeted"]
    assert not suite.reduced and standard_suite(square_queries=500).reduced
    assert rbl.standard_suite is standard_suite
    from robustbench_local.benchmark import standard_suite as old_path

    assert old_path is standard_suite
    with pytest.raises(ValueError, match="threat_model"):
        standard_suite("l3")
    with pytest.raises(ValueError, match="square_queries must be a positive integer"):
        standard_suite(square_queries=0)


def test_cascade_attacks_survivors_only_and_equals_its_members(digits_model, digits_batch):
    x, y = digits_batch
    suite = standard_suite(**QUICK)
    res = suite(digits_model, x, y, eps=0.05)
    assert res.details["protocol"] == {0.05: "standard"}
    broken_by = res.details["broken_by"][0.05]
    clean_wrong = int((~res.clean_correct).sum())
    assert sum(broken_by.values()) == int(res.success.sum()) - clean_wrong
    # The same members by hand, each on the previous one's survivors, give the same samples.
    alive = res.clean_correct.clone()
    ids = torch.arange(len(y))
    for member in suite.members:
        idx = alive.nonzero().squeeze(1)
        out = member(digits_model, x[idx], y[idx], eps=0.05, ids=ids[idx])
        alive[idx] = ~out.success
    assert torch.equal(alive, ~res.success)


def test_random_models_switch_to_the_rand_protocol(digits_model, digits_batch):
    x, y = digits_batch[0][:40], digits_batch[1][:40]
    suite = standard_suite(**QUICK)
    for model in (Noisy(digits_model), Noisy(digits_model, declare=True)):
        res = suite(model, x, y, eps=0.05)
        assert res.details["protocol"] == {0.05: "rand"}
        assert set(res.details["broken_by"][0.05]) <= {"apgd_ce", "apgd_dlr_untargeted"}
        assert res.n_backward % QUICK["eot_samples"] == 0 and res.n_backward > 0
    assert suite(digits_model, x, y, eps=0.05).details["protocol"] == {0.05: "standard"}


# ------------------------------------------------------------------------------ where it runs


def test_resolve_reference_modes_and_errors():
    amap = {"pgd": attacks.create("pgd")}
    grid = [0.1, 0.2, 0.3]
    auto = resolve_reference("auto", amap, grid)
    assert (auto.mode, auto.ran, auto.label, auto.reduced) == (
        "auto", [False, False, True], REFERENCE_LABEL, False,
    )  # fmt: skip
    assert resolve_reference("auto", amap, grid, headline_eps=0.2).ran == [False, True, False]
    assert resolve_reference("all", amap, grid).ran == [True] * 3
    off = resolve_reference(False, amap, grid)
    assert off.suite is None and off.mode == "off" and off.label is None
    reduced = resolve_reference(standard_suite(n_target_classes=3), amap, grid)
    assert reduced.mode == "explicit" and reduced.reduced
    assert not resolve_reference(standard_suite(), amap, grid).reduced
    assert resolve_reference(attacks.create("apgd_ce"), amap, grid).reduced
    # The chosen attacks include the same suite: it is shared, not run twice.
    shared = resolve_reference("auto", {"aa": standard_suite(), **amap}, grid)
    assert shared.shared and shared.suite is None and shared.label == "aa"
    seeded = resolve_reference("auto", {"aa": standard_suite(seed=1)}, grid)
    assert not seeded.shared  # another seed is another suite
    with pytest.raises(ValueError, match="not on the eps grid"):
        resolve_reference("auto", amap, grid, headline_eps=0.25)
    with pytest.raises(ValueError, match="reference must be 'auto', 'all', False"):
        resolve_reference("yes", amap, grid)
    with pytest.raises(ValueError, match="same threat model"):
        resolve_reference(standard_suite("l2"), amap, grid)


def test_reference_from_config_values():
    assert reference_from_config("auto", "linf") == "auto"
    assert reference_from_config(True, "linf") == "auto"
    assert reference_from_config("all", "linf") == "all"
    assert reference_from_config(False, "linf") is False
    assert reference_from_config("false", "linf") is False
    suite = reference_from_config({"n_target_classes": 3, "square_queries": 500}, "l2", seed=2)
    assert suite.reduced and suite.norm == attacks.Norm.L2 and suite.seed == 2
    assert suite.budgets["n_target_classes"] == 3 and suite.budgets["steps"] == 100
    with pytest.raises(ValueError, match="unknown reference settings"):
        reference_from_config({"queries": 5}, "linf")
    with pytest.raises(ValueError, match="reference must be auto, all, false"):
        reference_from_config("sometimes", "linf")


# ------------------------------------------------------------------------------ in a curve


@pytest.mark.slow
def test_weak_attack_gets_the_reference_worst_case_and_the_flag(digits_model, data):
    """FGSM alone overestimates robustness; the full default reference finds the gap."""
    grid = [0.05, 0.1]
    c = robustness_curve(
        digits_model, data, ["fgsm"], grid, n_examples=100, checks=False, progress=False
    )
    assert c.attacks == ["fgsm", "reference"] and not c.reference.reduced
    x, y, ids, alive = survivors_of(digits_model, data, c, attacks.create("fgsm"), grid)
    res = standard_suite()(digits_model, x[alive[1]], y[alive[1]], eps=0.1, ids=ids[alive[1]])
    expected = int((~res.success).sum()) / c.n_examples
    fgsm_acc = float(alive[1].float().mean())
    assert float(c.accuracy("fgsm")[1]) == pytest.approx(fgsm_acc)
    assert float(c.worst_case()[1]) == pytest.approx(expected)
    assert float(c.accuracy("reference")[1]) == pytest.approx(expected)
    assert math.isnan(float(c.accuracy("reference")[0]))
    gap = fgsm_acc - expected
    assert gap > 0.03  # PGD-like attacks break what FGSM misses on this undefended MLP
    flag = flag_of(c)
    assert not flag.ok and flag.severity == "warning"
    assert flag.details["gap"] == pytest.approx(gap)
    assert flag.details["tolerance"] == [
        pytest.approx(max(0.01, 2 * math.sqrt(gap * (1 - gap) / 100)))
    ]
    assert f"{100 * gap:.1f} points" in flag.message and "eps 0.1" in flag.message
    assert "apgd_ce broke" in flag.advice
    assert c.reference.broken_by["0.1"] == res.details["broken_by"][0.1]
    assert c.cost["reference"]["n_backward"] == res.n_backward
    assert "-" in c.table().splitlines()[2].split()


def test_saturated_logits_fool_pgd_but_not_the_reference(digits_model, data):
    scaled = Scaled(digits_model)
    kw = dict(n_examples=100, checks=False, progress=False, reference=standard_suite(**QUICK))
    naive = robustness_curve(scaled, data, ["pgd"], [0.1, 0.2], adaptive=False, **kw)
    assert naive.attacks == ["pgd", "reference"]
    pgd, worst = float(naive.accuracy("pgd")[1]), float(naive.worst_case()[1])
    assert pgd > 0.8 and worst < 0.1  # APGD-T's DLR loss does not saturate
    flag = flag_of(naive)
    assert not flag.ok and flag.details["gap"] == pytest.approx(pgd - worst)
    assert "reference (reduced)" in flag.message
    # Found without the user's help: the probe sees the saturation and adds a margin-loss run.
    auto = robustness_curve(scaled, data, ["pgd"], [0.1, 0.2], **kw)
    assert auto.attacks == ["pgd", "pgd+margin", "reference"]
    assert "saturated" in auto.why["pgd+margin"]
    assert auto.attack_configs["pgd+margin"]["loss"] == "cw"
    assert float(auto.accuracy("pgd+margin")[1]) < 0.1


def test_nested_rule_at_the_headline_eps(digits_model, data):
    grid = [0.02, 0.05, 0.1]
    weak = attacks.create("fgsm", rel_step_size=0.2)  # a step of eps/5: weak at every eps
    c = robustness_curve(
        digits_model, data, {"weak": weak}, grid, n_examples=120, checks=False, progress=False,
        reference=standard_suite(**QUICK), headline_eps=0.05,
    )  # fmt: skip
    assert c.reference.ran == [False, True, False]
    chosen, ref, worst = c.chosen_worst_case_robust(), c.robust["reference"], c.worst_case_robust()
    broken_by_ref = chosen[1] & ~ref[1]
    assert (chosen[2] & broken_by_ref).any()  # the weak attack misses them at 0.1 too
    assert not (worst[2] & broken_by_ref).any()  # broken at 0.05 means broken at 0.1
    assert torch.equal(worst[0], chosen[0])  # smaller eps: untouched
    assert (c.worst_case()[1:] <= c.worst_case()[:-1]).all()
    acc = c.accuracy("reference")
    assert math.isnan(acc[0]) and math.isnan(acc[2]) and not math.isnan(acc[1])
    cells = [line.split() for line in c.table().splitlines()[2:5]]
    assert [row[2] for row in cells] == ["-", f"{float(acc[1]):.2%}", "-"]


def test_reference_all_runs_at_every_eps_nested(digits_model, data, monkeypatch):
    # The placement, not the budgets, is under test: "all" with a quick default suite.
    monkeypatch.setattr(
        rbl.reference, "standard_suite", functools.partial(rbl.reference.standard_suite, **QUICK)
    )
    c = robustness_curve(
        digits_model, data, ["fgsm"], [0.02, 0.05, 0.1], n_examples=80, checks=False,
        progress=False, reference="all", adaptive=False,
    )  # fmt: skip
    assert c.reference.ran == [True, True, True] and c.reference.mode == "all"
    r = c.robust["reference"]
    assert not (r[1:] & ~r[:-1]).any()
    assert not torch.isnan(c.accuracy("reference")).any()
    assert torch.equal(c.worst_case(), c.accuracy("reference"))


def test_no_double_run_when_the_chosen_attacks_include_the_suite(digits_model, data):
    suite = standard_suite(**QUICK)
    again = standard_suite(**QUICK)  # another instance, same config
    c = robustness_curve(
        digits_model, data, {"aa": suite}, [0.05], n_examples=60, checks=False, progress=False,
        reference=again,
    )  # fmt: skip
    assert c.attacks == ["aa"] and "reference" not in c.cost
    assert c.reference.shared and c.reference.label == "aa"
    assert flag_of(c).ok and "is the reference suite" in flag_of(c).message
    assert "not run twice" in c.table()


def test_opting_out_is_noted_in_the_health(digits_model, data):
    c = robustness_curve(
        digits_model, data, ["pgd"], [0.05], n_examples=40, checks=False, progress=False,
        reference=False,
    )  # fmt: skip
    assert c.attacks == ["pgd"] and c.reference.mode == "off"
    flag = flag_of(c)
    assert not flag.ok and flag.severity == "info" and "no reference was run" in flag.message
    assert "not run (reference=False)" in c.table()


def test_curve_with_reference_round_trips(digits_model, data):
    c = robustness_curve(
        digits_model, data, ["fgsm"], [0.05, 0.1], n_examples=50, checks=False, progress=False,
        reference=standard_suite(**QUICK), headline_eps=0.05,
    )  # fmt: skip
    back = Curve.from_dict(json.loads(json.dumps(c.to_dict())))
    assert back.reference == c.reference and back.attacks == c.attacks
    assert torch.equal(back.worst_case(), c.worst_case())
    assert torch.equal(back.chosen_worst_case(), c.chosen_worst_case())
    assert back.table() == c.table() and back.health == c.health


def test_undeclared_random_model_gets_eot_runs_and_the_rand_reference(digits_model, data):
    noisy = Noisy(digits_model)
    c = robustness_curve(
        noisy, data, ["pgd"], [0.1], n_examples=40, checks=False, progress=False,
        reference=standard_suite(**QUICK),
    )  # fmt: skip
    assert c.attacks == ["pgd", "pgd+eot", "reference"]
    assert "two forward passes differ" in c.why["pgd+eot"]
    members = {m for counts in c.reference.broken_by.values() for m in counts}
    assert members <= {"apgd_ce", "apgd_dlr_untargeted"}  # the suite ran its rand protocol


# ------------------------------------------------------------------------------ the flag


def fake_curve(n: int, chosen: int, with_ref: int, ran=(True,)) -> Curve:
    """A one-eps curve: ``chosen`` samples survive the chosen attack, ``with_ref`` the reference."""
    k = torch.arange(n)
    return Curve(
        eps=torch.tensor([0.3], dtype=torch.float64),
        attacks=["fgsm", "reference"],
        robust={"fgsm": (k < chosen).unsqueeze(0), "reference": (k < with_ref).unsqueeze(0)},
        clean_correct=torch.ones(n, dtype=torch.bool),
        indices=k,
        reference=rbl.curve.ReferenceRecord(label="reference", mode="auto", ran=list(ran)),
    )


@pytest.mark.parametrize(
    ("n", "chosen", "with_ref", "fires"),
    [
        (100, 30, 28, False),  # 2 points < 2 SE = 2.8 points
        (100, 30, 20, True),  # 10 points > 2 SE = 6 points
        (100, 30, 30, False),
        (10000, 3000, 2850, True),  # 1.5 points > max(1 point, 2 SE = 0.24 points)
        (10000, 3000, 2910, False),  # 0.9 points < 1 point
    ],
)
def test_flag_threshold_is_max_of_one_point_and_two_standard_errors(n, chosen, with_ref, fires):
    flag = check_weaker_than_reference(fake_curve(n, chosen, with_ref))
    gap = (chosen - with_ref) / n
    assert flag.details["gap"] == pytest.approx(gap)
    assert flag.details["tolerance"] == [
        pytest.approx(max(0.01, 2 * math.sqrt(gap * (1 - gap) / n)))
    ]
    assert flag.ok is not fires
    assert flag.severity == ("warning" if fires else "info")


def test_flag_ignores_eps_where_the_reference_did_not_run():
    flag = check_weaker_than_reference(fake_curve(100, 30, 0, ran=(False,)))
    assert flag.ok and flag.details["eps"] == []


@pytest.mark.slow
def test_standard_suite_is_as_strong_as_reference_autoattack(digits_model, digits_batch):
    """The oracle: pyautoattack's AutoAttack "standard" (Croce & Hein's own code)."""
    autoattack = pytest.importorskip("pyautoattack")
    x, y = digits_batch[0][:100], digits_batch[1][:100]
    eps = 0.05
    aa = autoattack.AutoAttack(digits_model, norm="Linf", eps=eps, version="standard", seed=0)
    x_aa, _ = aa.run_standard_evaluation(x, y, batch_size=100)
    with torch.no_grad():
        theirs = float((digits_model(x_aa).argmax(1) == y).float().mean())
    ours = float(standard_suite()(digits_model, x, y, eps=eps).robust_accuracy)
    assert 0.2 < theirs < 0.95, "pick an eps where robust accuracy is in between"
    assert ours <= theirs + 0.01, (ours, theirs)


def test_dlr_members_are_left_out_for_models_with_few_classes(digits_batch):
    torch.manual_seed(0)
    three = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    x, y = digits_batch[0][:30], digits_batch[1][:30] % 3
    res = standard_suite(**QUICK)(three, x, y, eps=0.1)
    assert "apgd_dlr" not in res.details["broken_by"][0.1]  # targeted DLR needs 4 classes
    assert res.success.shape == (30,)
