"""Robustness gates: pass/fail verdicts on robust accuracy that do not flake.

A gate evaluates one attack over an eps grid on a fixed, hashed list of test samples and turns
the count of samples that stay correctly classified into a verdict with one-sided binomial
confidence bounds:

* **pass** when the lower bound clears the threshold,
* **fail** when the upper bound is below it,
* **inconclusive** otherwise (the policy decides whether that fails, warns or passes).

Against a stored baseline (same attack config, same samples) a gate runs an exact McNemar test on
the per-sample outcomes and fails only on a drop significantly larger than ``margin``, with Holm's
correction across every comparison of the session. A gate whose health checks flag gradient
masking or non-determinism refuses to pass unless it opts in.

The package is laid out like pytest-benchmark:

* :mod:`~robustbench_local.gates.stats`: Wilson, Clopper-Pearson, exact McNemar, Holm;
* :mod:`~robustbench_local.gates.spec`: :class:`GateSpec` and its validation;
* :mod:`~robustbench_local.gates.results`: :class:`GateRow`, :class:`GateResult`, verdicts;
* :mod:`~robustbench_local.gates.runner`: :func:`gate_data` (any data spec, or data in
  memory), :func:`run_gate` and its health policy;
* :mod:`~robustbench_local.gates.axis_spec` and :mod:`~robustbench_local.gates.axes`: the
  certified rows (``certify``, ``min_certified_accuracy``) and corruption rows
  (``corruptions``, ``severities``, ``min_corruption_accuracy``) beside the attack's;
* :mod:`~robustbench_local.gates.baseline`: baseline files, McNemar comparisons, Holm;
* :mod:`~robustbench_local.gates.report`: the table, the JSON report, MLflow;
* :mod:`~robustbench_local.gates.plugin`: the pytest11 plugin (options, hooks, marker, fixture),
  with :mod:`~.session` (the run's state), :mod:`~.collector` (YAML gate files) and
  :mod:`~.fixture` (the ``robustness_gate`` fixture's object).

Every public name is importable from here (``from robustbench_local.gates import GateSpec``);
they are imported on first use, so that loading the pytest plugin stays cheap.

Example:
    >>> spec = GateSpec.from_kwargs("digits_pgd", {"attack": "pgd", "eps": [0.05, 0.1],
    ...                                            "min_accuracy": [0.8, 0.3], "dataset": "digits"})
    >>> result = run_gate(spec, model)
    >>> print(render_table([result]))

References:
    Wilson, "Probable inference, the law of succession, and statistical inference", JASA 1927.
    Clopper & Pearson, "The use of confidence or fiducial limits illustrated in the case of the
    binomial", Biometrika 1934.
    McNemar, "Note on the sampling error of the difference between correlated proportions or
    percentages", Psychometrika 1947.
    Liu, Hsueh, Hsieh & Chen, "Tests for equivalence or non-inferiority for paired binary data",
    Statistics in Medicine 2002 (the margin-shifted conditional test).
    Holm, "A simple sequentially rejective multiple test procedure", Scand. J. Statistics 1979.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "GateConfigError": "errors",
    "BaselineError": "errors",
    "RobustnessGateWarning": "errors",
    "METHODS": "stats",
    "accuracy_bounds": "stats",
    "clopper_pearson_bounds": "stats",
    "holm_adjust": "stats",
    "mcnemar_drop_pvalue": "stats",
    "mean_bounds": "stats",
    "wilson_bounds": "stats",
    "wilson_interval": "stats",
    "NORMS": "spec",
    "POLICIES": "spec",
    "RESERVED_ATTACK_KWARGS": "spec",
    "SPLITS": "spec",
    "GateSpec": "spec",
    "FAIL": "results",
    "FORMAT_VERSION": "results",
    "INCONCLUSIVE": "results",
    "NO_THRESHOLD": "results",
    "PASS": "results",
    "REFUSED": "results",
    "AxisRow": "results",
    "GateResult": "results",
    "GateRow": "results",
    "make_rows": "results",
    "threshold_verdict": "results",
    "GateData": "runner",
    "gate_data": "runner",
    "apply_health": "runner",
    "attack_config": "runner",
    "build_attack": "runner",
    "deterministic": "runner",
    "gate_model": "runner",
    "load_split": "runner",
    "run_gate": "runner",
    "sample_list_hash": "runner",
    "select_samples": "runner",
    "BASELINE_FORMAT": "baseline",
    "apply_holm": "baseline",
    "baseline_entry": "baseline",
    "check_compatible": "baseline",
    "compare_to_baseline": "baseline",
    "load_baseline": "baseline",
    "save_baseline": "baseline",
    "REPORT_FORMAT": "report",
    "failure_message": "report",
    "log_to_mlflow": "report",
    "render_table": "report",
    "report_dict": "report",
    "write_report": "report",
}

if TYPE_CHECKING:
    from robustbench_local.gates.baseline import (
        BASELINE_FORMAT,
        apply_holm,
        baseline_entry,
        check_compatible,
        compare_to_baseline,
        load_baseline,
        save_baseline,
    )
    from robustbench_local.gates.errors import (
        BaselineError,
        GateConfigError,
        RobustnessGateWarning,
    )
    from robustbench_local.gates.report import (
        REPORT_FORMAT,
        failure_message,
        log_to_mlflow,
        render_table,
        report_dict,
        write_report,
    )
    from robustbench_local.gates.results import (
        FAIL,
        FORMAT_VERSION,
        INCONCLUSIVE,
        NO_THRESHOLD,
        PASS,
        REFUSED,
        AxisRow,
        GateResult,
        GateRow,
        make_rows,
        threshold_verdict,
    )
    from robustbench_local.gates.runner import (
        GateData,
        apply_health,
        attack_config,
        build_attack,
        deterministic,
        gate_data,
        gate_model,
        load_split,
        run_gate,
        sample_list_hash,
        select_samples,
    )
    from robustbench_local.gates.spec import (
        NORMS,
        POLICIES,
        RESERVED_ATTACK_KWARGS,
        SPLITS,
        GateSpec,
    )
    from robustbench_local.gates.stats import (
        METHODS,
        accuracy_bounds,
        clopper_pearson_bounds,
        holm_adjust,
        mcnemar_drop_pvalue,
        mean_bounds,
        wilson_bounds,
        wilson_interval,
    )


def __getattr__(name: str) -> Any:
    """Import public names lazily (``torch``, ``scipy`` and MLflow load only when used)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'robustbench_local.gates' has no attribute {name!r}")
    module = importlib.import_module(f"robustbench_local.gates.{_EXPORTS[name]}")
    return getattr(module, name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "BASELINE_FORMAT",
    "FAIL",
    "FORMAT_VERSION",
    "INCONCLUSIVE",
    "METHODS",
    "NORMS",
    "NO_THRESHOLD",
    "PASS",
    "POLICIES",
    "REFUSED",
    "REPORT_FORMAT",
    "RESERVED_ATTACK_KWARGS",
    "SPLITS",
    "AxisRow",
    "BaselineError",
    "GateConfigError",
    "GateData",
    "GateResult",
    "GateRow",
    "GateSpec",
    "RobustnessGateWarning",
    "accuracy_bounds",
    "apply_health",
    "apply_holm",
    "attack_config",
    "baseline_entry",
    "build_attack",
    "check_compatible",
    "clopper_pearson_bounds",
    "compare_to_baseline",
    "deterministic",
    "failure_message",
    "gate_data",
    "gate_model",
    "holm_adjust",
    "load_baseline",
    "load_split",
    "log_to_mlflow",
    "make_rows",
    "mcnemar_drop_pvalue",
    "mean_bounds",
    "render_table",
    "report_dict",
    "run_gate",
    "sample_list_hash",
    "save_baseline",
    "select_samples",
    "threshold_verdict",
    "wilson_bounds",
    "wilson_interval",
    "write_report",
]
