"""Curve: per-sample worst case, accuracies, cost, the text table, the figure and JSON."""

from __future__ import annotations

import json

import pytest
import torch

from robustbench_local.curve import Curve
from robustbench_local.health import Flag


def rows(*bits: str) -> torch.Tensor:
    """``rows("1100", "1000")``: a bool [K, N] matrix, one string per eps."""
    return torch.tensor([[c == "1" for c in b] for b in bits])


@pytest.fixture
def curve() -> Curve:
    """4 samples, 2 eps; the adaptive run breaks what the naive one misses."""
    return Curve(
        eps=torch.tensor([0.1, 0.3], dtype=torch.float64),
        attacks=["pgd", "pgd+adaptive"],
        robust={"pgd": rows("1110", "1100"), "pgd+adaptive": rows("1011", "0001")},
        clean_correct=torch.tensor([True, True, True, False]),
        indices=torch.tensor([3, 5, 7, 9]),
        cost={
            "pgd": {"wall_time": 1.5, "n_forward": 10, "n_backward": 8},
            "pgd+adaptive": {"wall_time": 0.5, "n_forward": 4, "n_backward": 2},
        },
        seed=7,
        health=[Flag("monotone", True, "info", "fine")],
    )


def test_worst_case_is_per_sample(curve):
    assert curve.worst_case_robust().tolist() == [[True, False, True, False], [False] * 4]
    assert curve.worst_case().tolist() == [0.5, 0.0]
    assert curve.accuracy("pgd").tolist() == [0.75, 0.5]
    assert curve.accuracy("pgd+adaptive").tolist() == [0.75, 0.25]
    assert curve.clean_accuracy == 0.75 and curve.n_examples == 4
    assert curve.headline_labels == ["pgd", "pgd+adaptive"]
    with pytest.raises(ValueError, match=r"no attack 'fgsm'.*pgd, pgd\+adaptive"):
        curve.accuracy("fgsm")


def test_total_cost_sums_attacks(curve):
    assert curve.total_cost() == {"wall_time": 2.0, "n_forward": 14.0, "n_backward": 10.0}


def test_table_has_one_row_per_eps(curve):
    lines = curve.table().splitlines()
    assert lines[0] == "clean accuracy 75.00% on 4 samples"
    assert lines[1].split() == ["eps", "pgd", "pgd+adaptive", "worst_case"]
    assert lines[2].split() == ["0.1", "75.00%", "75.00%", "50.00%"]
    assert lines[3].split() == ["0.3", "50.00%", "25.00%", "0.00%"]


def test_json_round_trip(curve):
    d = json.loads(json.dumps(curve.to_dict()))
    assert d["worst_case"] == [0.5, 0.0] and d["accuracy"]["pgd"] == [0.75, 0.5]
    back = Curve.from_dict(d)
    assert back.attacks == curve.attacks and back.seed == 7 and back.health == curve.health
    for label in curve.attacks:
        assert torch.equal(back.robust[label], curve.robust[label])
    assert torch.equal(back.indices, curve.indices)
    assert torch.equal(back.worst_case(), curve.worst_case())


def test_plot_draws_naive_dashed_adaptive_solid_and_the_worst_case(curve, tmp_path):
    fig = curve.plot(tmp_path / "curve.png", title="t")
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    assert set(lines) == {"pgd", "pgd+adaptive", "worst case"}
    assert lines["pgd"].get_linestyle() == "--" and lines["pgd+adaptive"].get_linestyle() == "-"
    assert list(lines["worst case"].get_ydata()) == [0.75, 0.5, 0.0]
    assert fig.axes[0].get_title() == "t"
    assert (tmp_path / "curve.png").stat().st_size > 1000
