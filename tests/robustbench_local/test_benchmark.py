"""The benchmark runner and the CLI, on the digits dataset with a tiny zoo model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import attacks
import defenses
import robustbench_local as rbl
import robustbench_local.benchmark as benchmark_module
from robustbench_local.benchmark import benchmark, standard_suite
from robustbench_local.card import BENCHMARKED, ModelCard, percent_interval
from robustbench_local.data import sample_indices

REPO = Path(__file__).resolve().parents[2]

FAST = {
    "dataset": "digits", "eps": 0.05, "n_examples": 80, "steps": 10, "n_target_classes": 3,
    "square_queries": 100,
}  # fmt: skip


@pytest.fixture(scope="module")
def zoo_model(trained):
    """A digits_mlp from the zoo (it has ``arch``): tests/trained.py's ``digits_zoo_mlp``."""
    return trained("digits_zoo_mlp")


@pytest.fixture(scope="module")
def card(zoo_model):
    return benchmark(zoo_model, name="tiny mlp", reported=90.0, **FAST)


def test_benchmark_card_fields(card, zoo_model):
    assert card.architecture == "digits_mlp" and card.name == "tiny mlp"
    assert card.n_examples == 80 and card.eps == 0.05 and card.seed == 0
    _, test = rbl.load_dataset("digits")
    x, y = (t[sample_indices(len(test), 80, seed=0)] for t in test.tensors)
    with torch.no_grad():
        clean = 100 * float((zoo_model(x).argmax(1) == y).float().mean())
    assert card.clean_acc == round(clean, 2)
    assert 0 < card.robust_acc < card.clean_acc  # an undefended MLP loses some, not all
    broken = round(card.robust_acc * 80 / 100)
    assert card.robust_acc == round(100 * broken / 80, 2)
    assert (card.ci_low, card.ci_high) == percent_interval(broken, 80)
    assert card.weights_digest == rbl.weights_digest(zoo_model)
    assert card.reported == 90.0 and card.source == BENCHMARKED and not card.adaptive
    assert card.suite_version == "3-reduced"  # 10 steps is not the standard suite
    assert "reduced suite (steps=10, n_target_classes=3, square_queries=100" in card.notes
    names = [a["name"] for a in card.suite["attacks"]]
    assert names == [n for n in ("apgd_ce", "apgd_dlr", "fab_t", "square") if n in attacks.ATTACKS]
    assert card.suite["version"] == "3" and card.suite["budgets"]["square_queries"] == 100
    assert {h["name"] for h in card.health} >= {"deterministic", "gradients_nonzero"}
    assert card.cost["n_backward"] > 0 and card.cost["n_examples"] == 80
    assert not card.failed_checks, card.failed_checks
    assert ModelCard.from_json(card.to_json()) == card


def test_standard_suite_and_bad_tracks(zoo_model):
    suite = standard_suite("l2", steps=7, n_target_classes=2, seed=3)
    members = suite.config()["attacks"]
    assert [(m["name"], m["norm"], m["steps"], m["seed"]) for m in members[:2]] == [
        ("apgd_ce", "l2", 7, 3),
        ("apgd_dlr", "l2", 7, 3),
    ]
    assert members[1]["n_target_classes"] == 2
    assert members[1]["target_order"] == "linear" and members[2]["target_order"] == "linear"
    assert benchmark_module.STANDARD_STEPS == 100 and benchmark_module.STANDARD_TARGETS == 4
    assert benchmark_module.SUITE_VERSION == "3"
    with pytest.raises(ValueError, match="threat_model"):
        benchmark(zoo_model, threat_model="l3", **FAST)
    with pytest.raises(ValueError, match="eps must be > 0"):
        benchmark(zoo_model, **(FAST | {"eps": 0.0}))
    with pytest.raises(TypeError, match="eps must be a number"):
        benchmark(zoo_model, **(FAST | {"eps": "0.3"}))


def test_benchmark_runs_the_suite_once_as_its_own_reference(zoo_model, monkeypatch):
    seen = []
    real = benchmark_module.robustness_curve

    def spy(*args, **kwargs):
        curve = real(*args, **kwargs)
        seen.append(curve)
        return curve

    monkeypatch.setattr(benchmark_module, "robustness_curve", spy)
    benchmark(zoo_model, **(FAST | {"n_examples": 30}), checks=False)
    (curve,) = seen
    assert curve.attacks == ["standard_suite"] and "reference" not in curve.cost
    assert curve.reference.shared and curve.reference.label == "standard_suite"


def test_suite_is_at_least_as_strong_as_pgd(card, zoo_model):
    _, test = rbl.load_dataset("digits")
    curve = rbl.robustness_curve(
        zoo_model, test, ["pgd"], [0.05], n_examples=80, checks=False, progress=False,
        reference=False,
    )  # fmt: skip
    assert card.robust_acc <= 100 * float(curve.accuracy("pgd")[0]) + 2.5


def test_benchmark_of_a_denoiser_is_adaptive_and_judged_on_the_bpda_model(zoo_model):
    # bit_depth declares differentiable=False: it is attacked through BPDA, whose gradients are
    # not zero, so the masking check must not cry wolf (the naive gradients are, and are noted)
    guarded = defenses.create("bit_depth", bits=2).wrap(zoo_model)
    c = benchmark(guarded, **(FAST | {"n_examples": 50}))
    assert c.adaptive
    assert "gradients_nonzero" not in c.failed_checks


def run_cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "robustbench_local", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.distributed
def test_cli_benchmark_then_leaderboard(zoo_model, tmp_path):
    ckpt = tmp_path / "tiny.pt"
    rbl.save_checkpoint(zoo_model, ckpt)
    out = tmp_path / "board"
    r = run_cli(
        "benchmark", "--checkpoint", str(ckpt), "--dataset", "digits", "--eps", "0.05",
        "--n-examples", "40", "--steps", "5", "--n-target-classes", "2",
        "--square-queries", "50", "--name", "cli-mlp", "--out", str(out),
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "cli-mlp" in r.stdout and len(list(out.glob("*.json"))) == 1
    r = run_cli("leaderboard", "--dir", str(out), "--dataset", "digits", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "cli-mlp" in r.stdout
    html = tmp_path / "b.html"
    r = run_cli("leaderboard", "--markdown", "--html", str(html), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "| reported by paper |" in r.stdout and html.exists()
    r = run_cli("leaderboard", "--dir", str(tmp_path / "missing"), cwd=tmp_path)
    assert r.returncode == 2 and "does not exist" in r.stderr
    card = json.loads(next(out.glob("*.json")).read_text())
    assert card["n_examples"] == 40 and card["suite_version"] == "3-reduced"
