"""``rbl.certify`` on the engine, and the CertifiedCurve it returns."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch

import robustbench_local as rbl
from robustbench_local.certify import CertifiedCurve, CertifyEvaluation, create_certifier
from robustbench_local.state import StateMismatchError

EPS = [0.02, 0.05, 0.1]


def test_rbl_certify_is_exported_and_callable(digits_model, digits) -> None:
    import robustbench_local.certify as package

    curve = rbl.certify(digits_model, digits, "ibp", EPS, n_examples=20, progress=False)
    assert isinstance(curve, CertifiedCurve) and rbl.CertifiedCurve is CertifiedCurve
    again = package(digits_model, digits, "ibp", EPS, n_examples=20, progress=False)
    assert torch.equal(curve.certified, again.certified)
    assert curve.label == "certified (ibp)" and curve.certifies == "the model"


def test_curve_fields_and_accuracy(digits_model, digits) -> None:
    curve = rbl.certify(digits_model, digits, "crown", EPS, n_examples=30, progress=False)
    assert curve.eps.tolist() == EPS and curve.norm == "linf" and curve.method == "crown"
    assert curve.settings["method"] == "crown" and curve.settings["norm"] == "linf"
    assert curve.certified.shape == (3, 30) and curve.indices.shape == (30,)
    torch.testing.assert_close(curve.accuracy, curve.certified.float().mean(1))
    assert curve.accuracy[0] <= curve.clean_accuracy
    assert (curve.accuracy[:-1] >= curve.accuracy[1:]).all()
    grid = torch.tensor([0.0, *EPS])
    torch.testing.assert_close(curve.radius, grid[curve.certified.sum(0)].float())
    assert curve.cost.n_forward > 0 and curve.cost.wall_time > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        curve.method = "ibp"  # type: ignore[misc]


def test_l2_when_asked(digits_model, digits) -> None:
    curve = rbl.certify(
        digits_model, digits, "crown", [0.1, 0.3], norm="l2", n_examples=20, progress=False
    )
    assert curve.norm == "l2" and curve.settings["norm"] == "l2"


def test_json_csv_table_and_plot(digits_model, digits, tmp_path: Path) -> None:
    curve = rbl.certify(
        digits_model, digits, "milp", EPS, n_examples=8, progress=False, time_limit=10
    )
    back = CertifiedCurve.from_dict(json.loads(json.dumps(curve.to_dict())))
    for f in ("eps", "certified", "clean_correct", "radius", "indices"):
        assert torch.equal(getattr(back, f), getattr(curve, f).to(getattr(back, f).dtype)), f
    assert back.settings == curve.settings and back.cost == curve.cost
    assert [h.name for h in back.health] == [h.name for h in curve.health]
    for k, v in curve.extra.items():
        torch.testing.assert_close(back.extra[k], v, equal_nan=True)
    curve.write_csv(tmp_path / "samples.csv")
    rows = list(csv.DictReader((tmp_path / "samples.csv").open()))
    assert len(rows) == 8 and "certified@0.05" in rows[0] and "milp_outcome@0.1" in rows[0]
    assert [int(r["index"]) for r in rows] == curve.indices.tolist()
    text = curve.table()
    assert "certified (milp)" in text and "time_limit=10" in text
    curve.plot(tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 0


def test_resumed_equals_uninterrupted(digits_model, digits, tmp_path: Path) -> None:
    kwargs = {"n_examples": 24, "batch_size": 8, "progress": False, "time_limit": 10}
    whole = rbl.certify(digits_model, digits, "milp", EPS, **kwargs)
    state = tmp_path / "state"
    rbl.certify(digits_model, digits, "milp", EPS, state_dir=state, **kwargs)
    batches = sorted((state / "batches").glob("*.pt"))
    assert len(batches) == 3
    batches[1].unlink()  # as if killed before the second batch was saved
    resumed = rbl.certify(digits_model, digits, "milp", EPS, state_dir=state, **kwargs)
    for f in ("certified", "clean_correct", "radius", "indices"):
        assert torch.equal(getattr(resumed, f), getattr(whole, f)), f
    torch.testing.assert_close(
        resumed.extra["counterexample"], whole.extra["counterexample"], equal_nan=True
    )
    (flag,) = [h for h in resumed.health if h.name == "resumed"]
    assert flag.details["loaded"] == 16


def test_state_of_another_method_is_refused(digits_model, digits, tmp_path: Path) -> None:
    kwargs = {"n_examples": 10, "progress": False, "state_dir": tmp_path}
    rbl.certify(digits_model, digits, "ibp", EPS, **kwargs)
    with pytest.raises(StateMismatchError, match="certifier"):
        rbl.certify(digits_model, digits, "crown", EPS, **kwargs)


def test_certify_bad_input(digits_model, digits) -> None:
    with pytest.raises(ValueError, match="Known certification methods"):
        rbl.certify(digits_model, digits, "lp", EPS, progress=False)
    with pytest.raises(ValueError, match="certifies linf balls, not 'l2'"):
        rbl.certify(digits_model, digits, "milp", EPS, norm="l2", progress=False)
    with pytest.raises(ValueError, match="strictly increasing"):
        rbl.certify(digits_model, digits, "ibp", [0.1, 0.1], progress=False)


def test_evaluation_kind_config(digits_model) -> None:
    evaluation = CertifyEvaluation(create_certifier("milp", time_limit=5), EPS)
    assert evaluation.kind == "certify" and evaluation.rows() == ["milp"]
    cfg = evaluation.config()
    assert cfg["eps"] == EPS and cfg["certifier"]["time_limit"] == 5.0
