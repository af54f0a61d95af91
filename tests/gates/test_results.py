"""Gate results: row and overall verdicts; the runner's sample hash and health policy."""

from __future__ import annotations

import pytest

from robustbench_local import gates
from robustbench_local.gates import threshold_verdict
from robustbench_local.health import failed, passed


def test_threshold_verdicts():
    assert threshold_verdict(0.81, 0.9, 0.8) == "pass"
    assert threshold_verdict(0.8, 0.9, 0.8) == "pass"
    assert threshold_verdict(0.6, 0.79, 0.8) == "fail"
    assert threshold_verdict(0.75, 0.85, 0.8) == "inconclusive"
    assert threshold_verdict(0.75, 0.85, None) == "n/a"


def test_rows_and_overall_verdicts(make_result):
    strong = [True] * 180 + [False] * 20  # 0.90
    weak = [True] * 60 + [False] * 140  # 0.30
    res = make_result([strong, weak], thresholds=[0.8, 0.2])
    assert [r.verdict for r in res.rows] == ["pass", "pass"]
    assert res.rows[0].accuracy == pytest.approx(0.9)
    assert res.verdict == "pass"
    assert not res.failed()
    failing = make_result([strong, weak], thresholds=[0.8, 0.4])
    assert failing.verdict == "fail"
    assert failing.failed()
    unsure = make_result([strong], thresholds=0.9)
    assert unsure.verdict == "inconclusive"
    assert unsure.failed()  # default policy: fail
    assert not unsure.failed("warn")
    assert not unsure.failed("pass")
    unsure.refusals.append("gradient masking flagged")
    assert unsure.verdict == "refused"
    assert unsure.failed("pass")


def test_sample_hash_depends_on_dataset_split_and_indices():
    h = gates.sample_list_hash("digits", "test", [1, 2, 3])
    assert h == gates.sample_list_hash("digits", "test", [1, 2, 3])
    assert h != gates.sample_list_hash("digits", "train", [1, 2, 3])
    assert h != gates.sample_list_hash("mnist", "test", [1, 2, 3])
    assert h != gates.sample_list_hash("digits", "test", [1, 2, 4])


def test_health_policy_refuses_masking_and_nondeterminism_unless_allowed(make_result):
    flags = [
        passed("monotone", "accuracy falls with eps"),
        failed("gradients_nonzero", "warning", "40% of gradients are zero", "use BPDA"),
        failed("deterministic", "warning", "outputs differ between calls", "remove dropout"),
        failed("labels_in_range", "warning", "3 labels unseen", "check the labels"),
    ]
    strict = make_result([[True] * 10])
    gates.apply_health(strict, flags)
    assert [f["name"] for f in strict.health] == [
        "monotone", "gradients_nonzero", "deterministic", "labels_in_range",
    ]  # fmt: skip
    assert strict.refusals == [
        "gradient masking flagged, so the measured robust accuracy cannot be trusted: "
        "gradients_nonzero: 40% of gradients are zero (use BPDA). Fix the model or evaluation, "
        "or opt in explicitly with allow_masking=True.",
        "non-determinism flagged, so the measured robust accuracy cannot be trusted: "
        "deterministic: outputs differ between calls (remove dropout). Fix the model or "
        "evaluation, or opt in explicitly with allow_nondeterminism=True.",
    ]
    assert strict.notes == ["health warning labels_in_range: 3 labels unseen (check the labels)"]
    assert strict.verdict == "refused"

    allowed = make_result([[True] * 10], allow_masking=True, allow_nondeterminism=True)
    gates.apply_health(allowed, flags)
    assert allowed.refusals == []
    assert allowed.notes[:2] == [
        "gradient masking flagged but accepted (allow_masking=True): gradients_nonzero: 40% of "
        "gradients are zero (use BPDA)",
        "non-determinism flagged but accepted (allow_nondeterminism=True): deterministic: "
        "outputs differ between calls (remove dropout)",
    ]
    assert allowed.verdict == "pass"
