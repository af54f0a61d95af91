"""The gate spec: normalisation, overrides and validation messages."""

from __future__ import annotations

import pytest

from robustbench_local.gates import GateConfigError, GateSpec


def test_spec_from_kwargs_normalises_and_sorts():
    spec = GateSpec.from_kwargs(
        "g", {"eps": [0.2, 0.1], "min_accuracy": [0.5, 0.8], "attack": "PGD", "method": "cp"}
    )
    assert spec.eps == (0.1, 0.2)
    assert spec.min_accuracy == (0.8, 0.5)
    assert spec.attack == "pgd"
    assert spec.method == "clopper-pearson"
    single = GateSpec.from_kwargs("g", {"eps": 0.3, "min_accuracy": 0.9})
    assert single.eps == (0.3,)
    assert single.min_accuracy == (0.9,)
    broadcast = GateSpec.from_kwargs("g", {"eps": [0.1, 0.3], "min_accuracy": 0.4})
    assert broadcast.min_accuracy == (0.4, 0.4)


def test_spec_overrides_ignore_none_and_revalidate():
    spec = GateSpec.from_kwargs("g", {"eps": 0.1, "n_examples": 100})
    assert spec.with_overrides(n_examples=None).n_examples == 100
    assert spec.with_overrides(n_examples=20, confidence=0.99).confidence == 0.99
    with pytest.raises(GateConfigError, match="confidence"):
        spec.with_overrides(confidence=1.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"eps": 0.1, "min_acuracy": 0.5},
            "unknown robustness gate argument 'min_acuracy'.*min_accuracy",
        ),
        ({"eps": 0.1, "steps": 10}, "attack_kwargs"),
        ({"eps": 0.1, "min_accuracy": 1.5}, r"min_accuracy must be in \[0, 1\]"),
        ({"eps": 0.1, "min_accuracy": 85}, "fraction"),
        ({"eps": 0.1, "min_accuracy": -0.1}, r"\[0, 1\]"),
        ({"eps": [0.1, 0.2], "min_accuracy": [0.5, 0.4, 0.3]}, "3 values for 2 eps"),
        ({"min_accuracy": 0.5}, "eps is required"),
        ({"eps": -0.1}, "eps must be >= 0"),
        ({"eps": []}, "eps is empty"),
        ({"eps": "0.3"}, "eps must be a number"),
        ({"eps": [0.1, 0.1]}, "duplicates"),
        ({"eps": 0.1, "n_examples": 0}, "n_examples must be >= 1"),
        ({"eps": 0.1, "n_examples": 1.5}, "n_examples must be an integer"),
        ({"eps": 0.1, "confidence": 0.3}, "confidence"),
        ({"eps": 0.1, "margin": 1.0}, "margin"),
        ({"eps": 0.1, "norm": "l1"}, "norm must be one of"),
        ({"eps": 0.1, "split": "val"}, "split must be one of"),
        ({"eps": 0.1, "inconclusive": "maybe"}, "inconclusive must be one of"),
        ({"eps": 0.1, "allow_masking": "yes"}, "allow_masking must be True or False"),
        ({"eps": 0.1, "attack_kwargs": {"seed": 3}}, "gate's seed= setting"),
        ({"eps": 0.1, "attack_kwargs": {"eval_mode": False}}, "eval mode"),
        ({"eps": 0.1, "attack_kwargs": [1, 2]}, "mapping"),
        ({"eps": 0.1, "method": "bayes"}, "method must be one of"),
        ({"eps": 0.1, "reference": "sometimes"}, "reference must be auto, all, false or a"),
        ({"eps": 0.1, "reference": {"queries": 10}}, r"unknown reference settings \['queries'\]"),
        ({"eps": 0.1, "reference": {"steps": 0}}, r"reference.steps must be >= 1"),
    ],
)
def test_spec_rejects_bad_settings_with_clear_messages(kwargs, message):
    with pytest.raises(GateConfigError, match=message):
        GateSpec.from_kwargs("g", kwargs)


def test_reference_setting_is_normalised():
    def ref(value):
        return GateSpec.from_kwargs("g", {"eps": 0.1, "reference": value}).reference

    assert GateSpec.from_kwargs("g", {"eps": 0.1}).reference == "auto"
    assert (ref("ALL"), ref(True), ref(False), ref("false"), ref("off")) == (
        "all", "auto", False, False, False,
    )  # fmt: skip
    assert ref({"n_target_classes": 3, "square_queries": 500}) == {
        "n_target_classes": 3, "square_queries": 500,
    }  # fmt: skip
    spec = GateSpec.from_kwargs("g", {"eps": 0.1, "reference": {"steps": 5}})
    assert spec.to_dict()["reference"] == {"steps": 5}


def test_reduced_settings_are_the_suites_budgets():
    from robustbench_local.gates.spec import REFERENCE_SETTINGS
    from robustbench_local.reference import DEFAULT_BUDGETS

    assert set(REFERENCE_SETTINGS) == set(DEFAULT_BUDGETS)
