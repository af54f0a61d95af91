"""Model cards with certified and corruption accuracy: benchmark, JSON, leaderboard, CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

import robustbench_local as rbl
from robustbench_local.__main__ import main
from robustbench_local.benchmark import benchmark
from robustbench_local.benchmark_axes import severities_text
from robustbench_local.card import ModelCard
from robustbench_local.leaderboard import Leaderboard, summary
from robustbench_local.reference import SUITE_VERSION

REDUCED = {"steps": 3, "n_target_classes": 1, "square_queries": 20}

CARD = ModelCard(
    name="ibp cnn",
    architecture="mnist_small_cnn",
    dataset="mnist",
    threat_model="linf",
    eps=0.1,
    clean_acc=95.0,
    robust_acc=80.0,
    n_examples=100,
    suite_version=SUITE_VERSION,
    weights_digest="ab" * 32,
    certified={"method": "crown", "settings": {}, "certifies": "the model", "eps": 0.1,
               "accuracy": 61.0, "n": 100},
    corruptions={"suite": "mnist_c", "corruptions": ["fog"], "severities": [1, 2, 3, 4, 5],
                 "mean_acc": 85.25, "clean_acc": 95.0, "n": 100},
)  # fmt: skip


def test_cards_round_trip_and_old_cards_still_load(tmp_path):
    path = CARD.save(tmp_path)
    again = ModelCard.load(path)
    assert again == CARD and again.certified["accuracy"] == 61.0
    old = CARD.to_dict()
    del old["certified"], old["corruptions"]
    plain = ModelCard.from_dict(old)
    assert plain.certified is None and plain.corruptions is None


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("certified", {"method": "crown", "accuracy": 120.0}, r"certified.accuracy is a percent"),
        ("certified", {"accuracy": 50.0}, r"certified lacks \['method'\]"),
        ("corruptions", {"suite": "mnist_c"}, r"lacks \['mean_acc'\]"),
        ("corruptions", [1, 2], "must be a mapping or null"),
    ],
)
def test_bad_parts_are_refused(field, value, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(CARD, **{field: value})


def test_the_leaderboard_shows_the_columns_only_where_cards_have_them(tmp_path):
    CARD.save(tmp_path)
    plain = dataclasses.replace(CARD, name="plain", certified=None, corruptions=None, robust_acc=70)
    plain.save(tmp_path)
    board = Leaderboard.load(tmp_path, "mnist", "linf", eps=0.1, references=False)
    assert board.columns[-2:] == ("certified", "corruptions")
    rows = {r[1]: r for r in board.rows()}
    assert rows["ibp cnn"][-2:] == ["61.00 (crown)", "85.25 (mnist_c 1-5)"]
    assert rows["plain"][-2:] == ["-", "-"]
    text = board.to_text()
    assert "certified: certified accuracy at the track's eps" in text
    assert "| certified | corruptions |" in board.to_markdown()
    assert "<th>corruptions</th>" in board.to_html()
    alone = Leaderboard([plain])
    assert "certified" not in alone.columns and "certified" not in alone.to_text()
    assert "certified 61.00% by crown" in summary(CARD)
    assert "corruptions: mean 85.25% over 1 mnist_c corruption(s), severities 1-5" in summary(CARD)


def test_severities_are_shown_compactly():
    assert severities_text([1, 2, 3, 4, 5]) == "1-5"
    assert severities_text(["bench"]) == "bench" and severities_text([1, 3]) == "1,3"
    assert severities_text([3]) == "3"


@pytest.fixture(scope="module")
def image_data() -> tuple[torch.Tensor, torch.Tensor]:
    """60 synthetic 28x28 gray images of 10 classes: class k has bright rows 2k and 2k+1."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(60, 1, 28, 28, generator=gen) * 0.2
    y = torch.arange(60) % 10
    for i, k in enumerate(y.tolist()):
        x[i, :, 2 * k : 2 * k + 2] += 0.7
    return x.clamp(0, 1), y


@pytest.fixture(scope="module")
def linear_model() -> nn.Module:
    """A linear classifier that reads the bright rows (weights set by hand, no training)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.zero_()
        for k in range(10):
            model[1].weight[k].view(28, 28)[2 * k : 2 * k + 2] = 0.1
    return model.eval()


def test_benchmark_adds_certified_and_corruption_fields(linear_model, image_data):
    card = benchmark(
        linear_model, image_data, eps=0.01, n_examples=30, certify="ibp",
        corruptions=["shot_noise", "fog"], severities=(1, None), **REDUCED,
    )  # fmt: skip
    cert, corr = card.certified, card.corruptions
    assert cert["method"] == "ibp" and cert["eps"] == 0.01 and cert["n"] == 30
    assert cert["certifies"] == "the model" and 0 <= cert["accuracy"] <= card.robust_acc
    assert corr["suite"] == "mnist_c" and corr["corruptions"] == ["shot_noise", "fog"]
    assert corr["severities"] == [1, "bench"] and corr["n"] == 30
    curve = rbl.corruption_curve(
        linear_model, image_data, ["shot_noise", "fog"], (1, None), n_examples=30, progress=False
    )
    assert corr["mean_acc"] == round(100 * curve.mean_accuracy, 2)
    assert corr["clean_acc"] == card.clean_acc
    assert ModelCard.from_json(card.to_json()) == card


def test_bad_certify_settings_fail_before_the_evaluation(linear_model, image_data):
    with pytest.raises(ValueError, match="Did you mean 'crown'"):
        benchmark(linear_model, image_data, certify="crwn", **REDUCED)
    with pytest.raises(ValueError, match="smoothing certifies l2"):
        benchmark(linear_model, image_data, certify={"method": "smoothing", "sigma": 0.2})
    with pytest.raises(ValueError, match="certify must be a method name"):
        benchmark(linear_model, image_data, certify=["ibp"])


def test_cli_flags(trained, tmp_path, capsys):
    ckpt = tmp_path / "mlp.pt"
    rbl.save_checkpoint(trained("digits_zoo_mlp"), ckpt)
    out = tmp_path / "board"
    args = ["benchmark", "--checkpoint", str(ckpt), "--dataset", "digits", "--eps", "0.02",
            "--n-examples", "30", "--steps", "3", "--n-target-classes", "1",
            "--square-queries", "20", "--out", str(out)]  # fmt: skip
    assert main([*args, "--certify", "crown"]) == 0
    card = json.loads(next(out.glob("*.json")).read_text())
    assert card["certified"]["method"] == "crown" and card["corruptions"] is None
    assert "certified" in capsys.readouterr().out
    assert main([*args, "--certify-settings", '{"sigma": 0.25}']) == 2
    assert "--certify-settings needs --certify" in capsys.readouterr().err
    assert main([*args, "--certify", "crown", "--certify-settings", '{"sigma": 0.25}']) == 2
    assert "sigma" in capsys.readouterr().err
    assert main(["leaderboard", "--dir", str(out), "--dataset", "digits"]) == 0
    assert "(crown)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*args, "--severities", "0"])
