"""Curve: per-sample worst case, accuracies, cost, the text table, the figure and JSON."""

from __future__ import annotations

import json

import pytest
import torch

from robustbench_local.curve import Curve, ReferenceRecord
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


@pytest.fixture
def with_reference(curve) -> Curve:
    """The curve plus a reference row that ran at eps 0.1 only and broke sample 2 there."""
    curve.attacks.append("reference")
    curve.robust["reference"] = rows("1000", "0000")  # nested: broken at 0.1 stays broken
    curve.reference = ReferenceRecord(
        label="reference",
        mode="explicit",
        reduced=True,
        ran=[True, False],
        config={"name": "standard_suite"},
        broken_by={"0.1": {"apgd_ce": 1}},
    )
    curve.why = {"pgd": "chosen", "pgd+adaptive": "declared", "reference": "the reference"}
    return curve


def test_reference_row_counts_in_the_worst_case_only_where_it_ran(with_reference):
    c = with_reference
    assert c.chosen_labels == ["pgd", "pgd+adaptive"]
    assert c.chosen_worst_case().tolist() == [0.5, 0.0]
    assert c.worst_case().tolist() == [0.25, 0.0]
    acc = c.accuracy("reference")
    assert acc[0].item() == 0.25 and torch.isnan(acc[1])
    assert c.ran("reference").tolist() == [True, False] and c.ran("pgd").tolist() == [True, True]


def test_table_shows_no_number_where_the_reference_did_not_run(with_reference):
    lines = with_reference.table().splitlines()
    assert lines[1].split() == [
        "eps",
        "pgd",
        "pgd+adaptive",
        "reference",
        "(reduced)",
        "worst_case",
    ]
    assert lines[2].split() == ["0.1", "75.00%", "75.00%", "25.00%", "25.00%"]
    assert lines[3].split() == ["0.3", "50.00%", "25.00%", "-", "0.00%"]
    assert "pgd+adaptive: declared" in lines
    assert lines[-1] == (
        "reference (reduced): worst case with a reduced reference at eps 0.1 (on as given)"
    )


def test_json_round_trip_keeps_the_reference(with_reference):
    d = json.loads(json.dumps(with_reference.to_dict()))
    assert d["accuracy"]["reference"] == [0.25, None]  # JSON has no NaN
    back = Curve.from_dict(d)
    assert back.reference == with_reference.reference and back.why == with_reference.why
    assert torch.equal(back.worst_case(), with_reference.worst_case())
    assert torch.equal(back.chosen_worst_case(), with_reference.chosen_worst_case())
    assert back.table() == with_reference.table()


def test_shared_and_opted_out_references(curve):
    curve.reference = ReferenceRecord(label="pgd", mode="auto", ran=[True, True], shared=True)
    assert curve.chosen_labels == curve.attacks and "not run twice" in curve.table()
    curve.reference = ReferenceRecord(label=None, mode="off")
    assert curve.chosen_labels == curve.attacks
    assert curve.table().splitlines()[-1].startswith("reference: not run (reference=False)")
    assert Curve.from_dict(curve.to_dict()).reference == curve.reference


def test_plot_marks_the_reference_where_it_ran(with_reference):
    fig = with_reference.plot()
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    ref = lines["reference (reduced)"]
    assert ref.get_linestyle() == "None" and ref.get_marker() == "x"
    y = list(ref.get_ydata())
    assert y[0] == 0.25 and y[1] != y[1]  # NaN: no marker at eps 0.3
