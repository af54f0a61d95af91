"""The check registry: one registration per check, the name tuples derived from it, no cycle."""

from __future__ import annotations

import subprocess
import sys
import typing

import pytest

from robustbench_local import checks, health
from robustbench_local.benchmark import card_from_curve
from robustbench_local.checks import (
    CHECKS,
    GRADIENT_MASKING_FLAGS,
    KINDS,
    NONDETERMINISM_FLAGS,
    PREFLIGHT_FLAGS,
    check_names,
    register_check,
)
from robustbench_local.checks.masking import MaskingContext
from robustbench_local.curve import Curve
from robustbench_local.health import Flag


def test_name_tuples_are_derived_from_the_registry():
    assert PREFLIGHT_FLAGS == (
        "inputs_in_bounds",
        "logits_not_probabilities",
        "labels_in_range",
        "eval_mode",
        "deterministic",
        "batch_size_invariance",
    )
    assert GRADIENT_MASKING_FLAGS == (
        "monotone",
        "near_chance_at_large_eps",
        "iterative_beats_single_step",
        "apgd_vs_pgd",
        "more_steps_stable",
        "gradients_nonzero",
    )
    assert set(NONDETERMINISM_FLAGS) == {"deterministic", "batch_size_invariance", "eval_mode"}
    for kind, names in [
        ("preflight", PREFLIGHT_FLAGS),
        ("masking", GRADIENT_MASKING_FLAGS),
        ("nondeterminism", NONDETERMINISM_FLAGS),
    ]:
        assert check_names(kind) == names
        assert all(kind in CHECKS.metadata(n)["kind"] for n in names)
    every = set(PREFLIGHT_FLAGS) | set(GRADIENT_MASKING_FLAGS)
    assert sorted(every) == CHECKS.names() and len(CHECKS) == len(every)
    assert KINDS == ("preflight", "masking", "nondeterminism")


def test_health_keeps_no_table_of_check_names():
    assert not hasattr(health, "GRADIENT_MASKING_FLAGS")
    assert not hasattr(health, "PREFLIGHT_FLAGS")


def test_register_check_validates():
    with pytest.raises(ValueError, match="needs kinds"):
        register_check("x")
    with pytest.raises(ValueError, match="needs kinds"):
        register_check("x", "masked")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="already registered"):
        register_check("monotone", "masking")(lambda ctx: None)
    with pytest.raises(ValueError, match="unknown check kind"):
        check_names("gates")  # type: ignore[arg-type]


def test_old_names_still_importable():
    assert checks.masking_checks.__module__ == "robustbench_local.checks.masking"
    assert checks.preflight.__module__ == "robustbench_local.checks.preflight"
    assert checks.Flag is Flag


def test_curve_and_flag_are_typed_not_any():
    assert typing.get_type_hints(checks.masking_checks)["curve"] is Curve
    assert typing.get_type_hints(checks.masking_checks)["return"] == list[Flag]
    assert typing.get_type_hints(card_from_curve)["curve"] is Curve
    assert typing.get_type_hints(MaskingContext)["curve"] is Curve
    assert typing.get_type_hints(Curve)["health"] == list[Flag]


@pytest.mark.distributed  # a fresh interpreter per case
@pytest.mark.parametrize(
    ("module", "must_not_load"),
    [
        ("robustbench_local.checks", "robustbench_local.evaluate"),
        ("robustbench_local.curve", "robustbench_local.checks"),
        ("robustbench_local.health", "robustbench_local.checks"),
        ("robustbench_local.health", "robustbench_local.curve"),
    ],
)
def test_no_import_cycle(module, must_not_load):
    code = f"import sys, {module}; sys.exit({must_not_load!r} in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=120).returncode == 0
