"""Baselines: save, load, paired comparison, Holm across gates, refusals of other configs."""

from __future__ import annotations

import json

import pytest

from robustbench_local import gates
from robustbench_local.gates import BaselineError


def test_baseline_roundtrip_compare_and_holm(make_result, tmp_path):
    base_outcomes = [[True] * 150 + [False] * 50]
    path = gates.save_baseline(tmp_path / "b.json", [make_result(base_outcomes)])
    doc = gates.load_baseline(path)
    entry = doc["gates"]["tests/test_x.py::test_gate"]
    assert entry["robust"][0] == "1" * 150 + "0" * 50
    assert entry["model_digest"] == "abc"
    assert {"python", "torch", "numpy"} <= set(doc["versions"])

    same = make_result(base_outcomes)
    gates.compare_to_baseline(same, entry)
    assert (same.rows[0].losses, same.rows[0].gains) == (0, 0)
    assert same.rows[0].regression == "ok"

    dropped = make_result([[True] * 100 + [False] * 100])
    gates.compare_to_baseline(dropped, entry, family_size=1)
    assert (dropped.rows[0].losses, dropped.rows[0].gains) == (50, 0)
    assert dropped.rows[0].regression == "regressed"
    assert dropped.verdict == "fail"

    # A drop within the margin passes.
    tolerated = make_result([[True] * 145 + [False] * 55], margin=0.05)
    gates.compare_to_baseline(tolerated, entry)
    assert tolerated.rows[0].regression == "ok"


def test_holm_resolves_pending_rows_across_gates(make_result, tmp_path):
    base = [[True] * 150 + [False] * 50]
    entry = gates.baseline_entry(make_result(base))
    # 7 losses, 0 gains: p = 2**-7 = 0.0078; Bonferroni over 10 comparisons would need 0.005.
    small_drop = make_result([[True] * 143 + [False] * 57])
    gates.compare_to_baseline(small_drop, entry, family_size=10)
    assert small_drop.rows[0].regression == "pending"
    newly = gates.apply_holm([small_drop])
    assert newly == [(small_drop, small_drop.rows[0])]
    assert small_drop.rows[0].regression == "regressed"
    assert small_drop.rows[0].p_adjusted == pytest.approx(2**-7)

    a = make_result([[True] * 143 + [False] * 57])
    b = make_result([[True] * 146 + [False] * 54])  # 4 losses: p = 1/16
    for r in (a, b):
        gates.compare_to_baseline(r, entry, family_size=2)
    gates.apply_holm([a, b])
    assert a.rows[0].p_adjusted == pytest.approx(2 * 2**-7)
    assert a.rows[0].regression == "regressed"
    assert b.rows[0].regression == "ok"


def test_baseline_from_another_attack_config_is_refused(make_result, tmp_path):
    entry = gates.baseline_entry(make_result([[True] * 10]))
    entry["attack_config"]["attack"]["steps"] = 40
    with pytest.raises(
        BaselineError, match=r"another attack config \(attack.steps: 40 \(baseline\) != 10"
    ):
        gates.compare_to_baseline(make_result([[True] * 10]), entry)


def test_baseline_from_another_sample_list_is_refused(make_result):
    entry = gates.baseline_entry(make_result([[True] * 10]))
    with pytest.raises(BaselineError, match="another sample list"):
        gates.compare_to_baseline(make_result([[True] * 12]), entry)


def test_load_baseline_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(BaselineError, match=r"not found.*--robustness-save-baseline"):
        gates.load_baseline(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text(json.dumps({"benchmarks": []}))
    with pytest.raises(BaselineError, match="not a robustness baseline"):
        gates.load_baseline(tmp_path / "other.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(BaselineError, match="cannot read"):
        gates.load_baseline(tmp_path / "broken.json")


def test_save_baseline_keeps_other_gates(make_result, tmp_path):
    path = tmp_path / "b.json"
    gates.save_baseline(path, [make_result([[True] * 10], gate_id="a.py::one")])
    gates.save_baseline(path, [make_result([[False] * 10], gate_id="a.py::two")])
    assert sorted(gates.load_baseline(path)["gates"]) == ["a.py::one", "a.py::two"]


def test_baselines_recorded_before_the_reference_are_refused_with_the_reason(make_result, tmp_path):
    path = tmp_path / "old.json"
    gates.save_baseline(path, [make_result([[True] * 10])])
    doc = json.loads(path.read_text())
    assert doc["version"] == gates.FORMAT_VERSION == 2
    doc["version"] = 1
    path.write_text(json.dumps(doc))
    with pytest.raises(
        BaselineError,
        match=r"format version 1; this version of the gates reads version 2 \(since version 2 "
        r"a gate's verdict is the worst case of its attack and the reference suite.*"
        r"re-record the baseline with --robustness-save-baseline",
    ):
        gates.load_baseline(path)


def test_baseline_with_another_reference_is_refused(make_result):
    entry = gates.baseline_entry(make_result([[True] * 10]))
    entry["attack_config"]["reference"] = {"setting": "auto"}
    now = make_result([[True] * 10])
    now.attack_config["reference"] = {"setting": {"n_target_classes": 3}}
    with pytest.raises(BaselineError, match=r"another attack config \(reference.setting: 'auto'"):
        gates.compare_to_baseline(now, entry)
