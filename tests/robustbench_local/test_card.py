"""Model cards: the schema, its validation, JSON files, and the one Wilson interval."""

from __future__ import annotations

import json

import pytest

from robustbench_local.card import (
    BENCHMARKED,
    ModelCard,
    check_threat_model,
    percent_interval,
    wilson_interval,
)

BASE = {
    "name": "m",
    "architecture": "a",
    "dataset": "mnist",
    "threat_model": "linf",
    "eps": 0.3,
    "clean_acc": 99.0,
    "robust_acc": 90.0,
}


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    assert percent_interval(5, 10) == (23.66, 76.34)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)


def test_card_validation():
    card = ModelCard.from_dict(BASE)
    assert (card.robust_acc, card.source, card.is_reference) == (90.0, BENCHMARKED, False)
    with pytest.raises(ValueError, match="unknown model card fields"):
        ModelCard.from_dict(BASE | {"robustacc": 1})
    with pytest.raises(ValueError, match="required"):
        ModelCard.from_dict({k: v for k, v in BASE.items() if k != "robust_acc"})
    with pytest.raises(ValueError, match="percentage"):
        ModelCard.from_dict(BASE | {"robust_acc": 0.9 * 1000})
    with pytest.raises(ValueError, match="threat_model"):
        ModelCard.from_dict(BASE | {"threat_model": "l3"})
    with pytest.raises(ValueError, match="format 2"):
        ModelCard.from_dict(BASE | {"format": 2})
    assert check_threat_model("l2") == "l2"


def test_failed_checks_lists_warnings_and_errors_only():
    health = [
        {"name": "monotone", "ok": False, "severity": "warning"},
        {"name": "eval_mode", "ok": False, "severity": "info"},
        {"name": "deterministic", "ok": True, "severity": "info"},
        {"name": "labels_in_range", "ok": False, "severity": "error"},
    ]
    card = ModelCard.from_dict(BASE | {"health": health})
    assert card.failed_checks == ["monotone", "labels_in_range"]


def test_json_file_round_trip(tmp_path):
    card = ModelCard.from_dict(BASE | {"weights_digest": "ab" * 32, "suite": {"steps": [1, 2]}})
    assert ModelCard.from_json(card.to_json()) == card
    assert json.loads(card.to_json())["format"] == 1
    path = card.save(tmp_path)
    assert path == tmp_path / "m-abababab.json"
    assert ModelCard.load(path) == card
    assert ModelCard.load(card.save(tmp_path / "x.json")) == card
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-abababab.json", "x.json"]
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"bad\.json is not a valid model card"):
        ModelCard.load(tmp_path / "bad.json")
