"""Benchmark, model cards, leaderboard and the CLI, on the digits dataset with tiny models."""

from __future__ import annotations

import dataclasses
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
from robustbench_local.benchmark import (
    REPORTED_BY_PAPER,
    Leaderboard,
    ModelCard,
    benchmark,
    reference_cards,
    wilson_interval,
)

REPO = Path(__file__).resolve().parents[2]

FAST = {"dataset": "digits", "eps": 0.05, "n_examples": 80, "steps": 10, "n_target_classes": 3}


def needs_apgd():
    if "apgd_ce" not in attacks.names() or "apgd_dlr" not in attacks.names():
        pytest.skip("apgd_ce/apgd_dlr not registered yet")


@pytest.fixture(scope="module")
def zoo_model():
    """A digits_mlp from the zoo (it has ``arch``), trained for a second."""
    torch.manual_seed(0)
    train, _ = rbl.load_dataset("digits")
    x, y = train.tensors
    model = rbl.create_model("digits_mlp")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def card(zoo_model):
    needs_apgd()
    return benchmark(zoo_model, name="tiny mlp", reported=90.0, **FAST)


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)


def test_benchmark_card_fields(card, zoo_model):
    assert card.architecture == "digits_mlp" and card.name == "tiny mlp"
    assert card.n_examples == 80 and card.eps == 0.05 and card.seed == 0
    assert 0 <= card.robust_acc <= card.clean_acc <= 100
    assert card.ci_low <= card.robust_acc <= card.ci_high
    assert card.weights_digest == rbl.weights_digest(zoo_model)
    assert card.reported == 90.0 and card.source != REPORTED_BY_PAPER
    assert card.suite_version.endswith("-custom")  # 10 steps is not the standard suite
    assert [a["name"] for a in card.suite["attacks"]] == ["apgd_ce", "apgd_dlr"]
    assert {h["name"] for h in card.health} >= {"deterministic", "gradients_nonzero"}
    assert card.cost["n_backward"] > 0
    assert not card.failed_checks, card.failed_checks


def test_suite_is_at_least_as_strong_as_pgd(card, zoo_model):
    _, test = rbl.load_dataset("digits")
    curve = rbl.robustness_curve(
        zoo_model, test, ["pgd"], [0.05], n_examples=80, checks=False, progress=False
    )
    assert card.robust_acc <= 100 * float(curve.accuracy("pgd")[0]) + 2.5


def test_benchmark_of_a_denoiser_is_adaptive_and_flags_masking(zoo_model):
    needs_apgd()
    guarded = defenses.create("bit_depth", bits=2).wrap(zoo_model)
    c = benchmark(guarded, **(FAST | {"n_examples": 50}))
    assert c.adaptive
    assert "gradients_nonzero" in c.failed_checks


def test_card_json_round_trip_and_save_load(card, tmp_path):
    assert ModelCard.from_json(card.to_json()) == card
    path = card.save(tmp_path)
    assert path.parent == tmp_path and path.name.endswith(f"{card.weights_digest[:8]}.json")
    assert ModelCard.load(path) == card
    assert ModelCard.load(card.save(tmp_path / "x.json")) == card


def test_card_validation():
    base = {
        "name": "m",
        "architecture": "a",
        "dataset": "mnist",
        "threat_model": "linf",
        "eps": 0.3,
        "clean_acc": 99.0,
        "robust_acc": 90.0,
    }
    assert ModelCard.from_dict(base).robust_acc == 90.0
    with pytest.raises(ValueError, match="unknown model card fields"):
        ModelCard.from_dict(base | {"robustacc": 1})
    with pytest.raises(ValueError, match="required"):
        ModelCard.from_dict({k: v for k, v in base.items() if k != "robust_acc"})
    with pytest.raises(ValueError, match="percentage"):
        ModelCard.from_dict(base | {"robust_acc": 0.9 * 1000})
    with pytest.raises(ValueError, match="threat_model"):
        ModelCard.from_dict(base | {"threat_model": "l3"})


def test_reference_rows_match_the_autoattack_table():
    rows = {c.name: c for c in reference_cards("mnist", "linf")}
    madry = rows["PGD-AT (Madry et al. 2018)"]
    assert (madry.clean_acc, madry.robust_acc, madry.reported) == (98.53, 88.50, 89.62)
    wong = rows["FGSM-RS fast AT (Wong et al. 2020)"]
    assert (wong.clean_acc, wong.robust_acc, wong.reported) == (98.50, 82.93, 88.77)
    trades = rows["TRADES (Zhang et al. 2019)"]
    assert (trades.clean_acc, trades.robust_acc, trades.reported) == (99.48, 92.81, 95.60)
    assert all(c.source == REPORTED_BY_PAPER and c.eps == 0.3 for c in rows.values())
    assert all(c.link and c.reference and "auto-attack" in c.reference for c in rows.values())


def test_leaderboard_ranks_cards_among_reference_rows(card, tmp_path):
    mine = dataclasses.replace(
        card, name="tiny mlp on mnist", dataset="mnist", eps=0.3, robust_acc=90.0, ci_high=92.0
    )
    mine.save(tmp_path)
    card.save(tmp_path)  # a digits card: another track, left out
    board = Leaderboard.load(tmp_path, "mnist", "linf")
    names = [c.name for c in board.cards]
    assert names.index("tiny mlp on mnist") == names.index("Atzmon et al. 2019") + 1
    assert len(board) == len(reference_cards("mnist", "linf")) + 1
    text = board.to_text()
    assert "reported by paper" in text and "tiny mlp on mnist" in text and "88.50" in text
    md = board.to_markdown()
    assert md.count("\n| ") == len(board) + 1  # header + rows
    page = board.to_html(tmp_path / "board.html")
    assert "<table>" in page and (tmp_path / "board.html").read_text() == page
    digits = Leaderboard.load(tmp_path, "digits", "linf")
    assert [c.name for c in digits.cards] == ["tiny mlp"]


def test_leaderboard_rejects_bad_files_and_missing_dirs(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Leaderboard.load(tmp_path / "nope")
    (tmp_path / "broken.json").write_text('{"name": "x"}')
    with pytest.raises(ValueError, match=r"broken\.json"):
        Leaderboard.load(tmp_path)


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


def test_cli_benchmark_then_leaderboard(zoo_model, tmp_path):
    needs_apgd()
    ckpt = tmp_path / "tiny.pt"
    rbl.save_checkpoint(zoo_model, ckpt)
    out = tmp_path / "board"
    r = run_cli(
        "benchmark", "--checkpoint", str(ckpt), "--dataset", "digits", "--eps", "0.05",
        "--n-examples", "40", "--steps", "5", "--name", "cli-mlp", "--out", str(out),
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
    assert card["n_examples"] == 40
