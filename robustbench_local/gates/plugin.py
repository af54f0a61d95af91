"""pytest plugin: robustness gates for CI (``pytest11`` entry point ``robustness``).

In a test, a marker describes the gate and the ``robustness_gate`` fixture checks a model::

    @pytest.mark.robustness(attack="pgd", eps=0.3, min_accuracy=0.85, n_examples=500,
                            dataset="mnist", attack_kwargs={"steps": 40})
    def test_model_is_robust(robustness_gate, my_model):
        robustness_gate.check(my_model)  # pass, or fail with the table (no traceback)

    @pytest.mark.robustness(eps=[2 / 255, 8 / 255], min_accuracy=[0.8, 0.5], n_examples=40)
    def test_on_my_data(robustness_gate, my_model):
        robustness_gate.check(my_model, data="data/test_pngs")  # or (x, y) arrays, a Dataset

A test with the marker that never calls ``robustness_gate.check(...)`` fails: a gate that
checks nothing must not pass.

Marker arguments (all keyword): ``attack``, ``eps`` (float or list), ``min_accuracy`` (one
threshold for every eps or one per eps, in [0, 1]; None = compare only), ``n_examples``,
``dataset`` (any data spec: a registered name, an image folder, an ``.npz``/``.pt`` file,
``module:function``; relative paths are relative to the test file),
``split``, ``norm``, ``attack_kwargs``, ``confidence``, ``method`` (wilson|clopper-pearson),
``margin``, ``inconclusive`` (fail|warn|pass), ``allow_masking``, ``allow_nondeterminism``,
``seed``, ``reference`` (auto|all|false, or reduced settings such as
``{"n_target_classes": 3, "square_queries": 500}``), ``certify`` (a method: ibp, crown, milp,
or a mapping such as ``{"method": "smoothing", "sigma": 0.25}``) with
``min_certified_accuracy`` (one threshold or one per eps), ``corruptions`` (auto or names),
``severities`` (1-5 and "bench") and ``min_corruption_accuracy`` (a number for the mean, or
``{"mean": 0.8, "fog": 0.6}``). Unknown arguments are an error at setup.

Certified and corruption rows are judged with the same one-sided bounds as the attack's rows;
the corruption bounds use the sample count, since the corrupted images of one sample are not
independent. A sample certified at eps and broken by the attack (``certificate_violated``)
fails the gate whatever its thresholds::

    @pytest.mark.robustness(eps=[0.05, 0.1], min_accuracy=0.8, certify="crown",
                            min_certified_accuracy=[0.7, 0.4], dataset="mnist",
                            min_corruption_accuracy={"mean": 0.85, "fog": 0.6})

A gate's verdict is the worst case of its attack and the reference suite (APGD-CE, APGD-T,
FAB-T, Square on the attack's survivors; by default at the gate's largest eps); the table shows
the attack's own accuracy beside it.

Without Python, a YAML file whose name matches ``*robustness_gates*.yaml`` (ini option
``robustness_gate_files``) is collected as one test item per gate::

    defaults:                      # optional: settings shared by every gate
      dataset: mnist
      n_examples: 500
      marks: [slow]                # optional pytest markers: -m "not slow" deselects them
    gates:
      - name: small_cnn_pgd
        model: checkpoints/small_cnn.pt          # a checkpoint (relative to this file)
        attack: pgd
        attack_kwargs: {steps: 20}
        eps: [0.1, 0.2]
        min_accuracy: [0.9, 0.6]
      - name: built_model
        model:
          _target_: robustbench_local.models.create_model   # hydra.utils.instantiate
          name: mnist_small_cnn
          checkpoint: ${MY_CKPT}                             # optional weights; $VARS expand
        eps: 0.1
        min_accuracy: 0.5
      - name: my_cnn_on_my_pngs
        model:
          checkpoint: weights/net_state.pt    # a plain state dict or a save_checkpoint file
          arch: mypkg.nets:Net                # a registered name or an import path
          arch_kwargs: {width: 64}
          wrap: {logits: logits, mean: [0.5], std: [0.25]}   # rbl.wrap_model settings
        dataset: data/test_pngs               # any data spec, relative to this file
        eps: [0.0078, 0.0314]
        min_accuracy: [0.8, 0.5]

Options (group "robustness"): ``--robustness-n-examples``, ``--robustness-device``,
``--robustness-data-dir``, ``--robustness-save-baseline[=PATH]``, ``--robustness-compare[=PATH]``,
``--robustness-report=FILE``, ``--robustness-confidence``, ``--robustness-inconclusive``,
``--robustness-mlflow[=EXPERIMENT]``. Command-line values override the gates' own settings.

Load it with ``-p robustness`` where plugin autoloading is off; the old path
``-p robustbench_local.pytest_plugin`` still works and never registers the hooks twice.

The plugin imports nothing heavy until a gate runs, so sessions without gates are unaffected.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
from pathlib import Path
from typing import Any

import pytest

from robustbench_local.gates.collector import GateFile, GateItem
from robustbench_local.gates.fixture import RobustnessGate, gate_from_marker
from robustbench_local.gates.session import MARKER, SESSION_KEY, GateSession

ENTRY_POINT = "robustness"
"""The plugin's name: its ``pytest11`` entry point, ``-p robustness``, ``-p no:robustness``."""
DEFAULT_BASELINE = "robustness_baseline.json"
DEFAULT_EXPERIMENT = "robustness-gates"
GATE_FILE_PATTERNS = ["*robustness_gates*.yaml", "*robustness_gates*.yml"]
MARKER_HELP = (
    "robustness(attack='pgd', eps=0.3, min_accuracy=0.85, n_examples=500, dataset='mnist', ...): "
    "a robustness gate checked by the robustness_gate fixture"
)


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _confidence(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a probability such as 0.95, got {text!r}"
        ) from None
    if not 0.5 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"confidence must be in [0.5, 1), e.g. 0.95; got {text!r}")
    return value


def _optional_path(default: str) -> dict[str, Any]:
    """``--option`` alone means ``default``; ``--option=PATH`` gives the path."""
    return {"nargs": "?", "const": default, "metavar": "PATH"}


OPTIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    (
        "--robustness-n-examples",
        {"type": _positive_int, "metavar": "N",
         "help": "Evaluate every gate on N samples (overrides the gates' n_examples)."},
    ),
    (
        "--robustness-device",
        {"metavar": "DEVICE",
         "help": "Device to evaluate gates on, e.g. cpu or cuda:0 (default: the model's device)."},
    ),
    (
        "--robustness-data-dir",
        {"metavar": "DIR",
         "help": "Dataset mirror folder (default: $ROBUSTBENCH_LOCAL_DATA_DIR, else download)."},
    ),
    (
        "--robustness-save-baseline",
        {**_optional_path(DEFAULT_BASELINE),
         "help": "Save per-sample gate results as a baseline "
                 f"(default PATH: {DEFAULT_BASELINE})."},
    ),
    (
        "--robustness-compare",
        {**_optional_path(DEFAULT_BASELINE),
         "help": "Compare gates with a saved baseline (exact McNemar, Holm-corrected); fail on a "
                 f"significant drop larger than the gate's margin (default PATH: "
                 f"{DEFAULT_BASELINE})."},
    ),
    (
        "--robustness-report",
        {"metavar": "FILE", "help": "Write a JSON report of every gate to FILE."},
    ),
    (
        "--robustness-confidence",
        {"type": _confidence, "metavar": "P",
         "help": "One-sided confidence of the bounds and tests (overrides the gates'; "
                 "default 0.95)."},
    ),
    (
        "--robustness-inconclusive",
        {"choices": ("fail", "warn", "pass"),
         "help": "What an inconclusive gate does (overrides the gates'; default fail)."},
    ),
    (
        "--robustness-mlflow",
        {"nargs": "?", "const": DEFAULT_EXPERIMENT, "metavar": "EXPERIMENT",
         "help": "Log gate results to MLflow ($MLFLOW_TRACKING_URI, else sqlite mlflow.db in "
                 f"the rootdir) under EXPERIMENT (default {DEFAULT_EXPERIMENT})."},
    ),
)  # fmt: skip
"""The ``--robustness-*`` options: flag and ``addoption`` arguments (every default is None)."""


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ``--robustness-*`` options and the gate-file ini setting."""
    group = parser.getgroup("robustness", "robustness gates (robustbench_local)")
    for flag, kwargs in OPTIONS:
        group.addoption(flag, default=None, **kwargs)
    parser.addini(
        "robustness_gate_files",
        type="args",
        default=GATE_FILE_PATTERNS,
        help="Glob patterns of YAML files collected as robustness gates.",
    )


# --------------------------------------------------------------------------------------------
# Hooks
# --------------------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker and the session state; read the baseline to compare with."""
    config.addinivalue_line("markers", MARKER_HELP)
    state = GateSession(config)
    config.stash[SESSION_KEY] = state
    state.load_baseline()


def pytest_report_header(config: pytest.Config) -> str | None:
    """Mention the baseline and report settings when they are used."""
    parts = []
    for option in ("compare", "save_baseline", "report", "mlflow"):
        value = config.getoption(f"robustness_{option}")
        if value:
            parts.append(f"{option.replace('_', '-')}={value}")
    return f"robustness gates: {', '.join(parts)}" if parts else None


def pytest_collection_finish(session: pytest.Session) -> None:
    """Count the baseline comparisons planned this run (the Holm family)."""
    state = session.config.stash.get(SESSION_KEY, None)
    if state is None or state.baseline is None:
        return
    known = state.baseline["gates"]
    for item in session.items:
        if item.nodeid in known:
            state.family_size += _planned_rows(item)


def _planned_rows(item: pytest.Item) -> int:
    if isinstance(item, GateItem):
        return len(item.spec.eps)
    marker = item.get_closest_marker(MARKER)
    eps = marker.kwargs.get("eps") if marker else None
    return len(eps) if isinstance(eps, list | tuple) else 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Resolve Holm-pending comparisons; write baseline, report and MLflow run."""
    state = session.config.stash.get(SESSION_KEY, None)
    if state is not None:
        state.finish(session)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    """Print the table of every gate that ran."""
    state = config.stash.get(SESSION_KEY, None)
    if state is None or not (state.results or state.messages):
        return
    from robustbench_local.gates.report import render_table

    terminalreporter.section("robustness gates")
    if state.results:
        terminalreporter.line(render_table(state.results))
    for message in state.messages:
        terminalreporter.line(message, red=message.startswith("FAILED"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    """Fail a test with the ``robustness`` marker that ran without checking a model."""
    result = yield  # a test that raised (failed, skipped) keeps its own outcome
    require_check(item)
    return result


def require_check(item: pytest.Item) -> None:
    """Fail ``item`` if it has the robustness marker but never called the gate's ``check``."""
    state = item.config.stash.get(SESSION_KEY, None)
    if state is None or isinstance(item, GateItem) or item.get_closest_marker(MARKER) is None:
        return
    if item.nodeid not in state.checked:
        pytest.fail(
            f"{item.nodeid} has the @pytest.mark.robustness marker but never called "
            "robustness_gate.check(model): the gate checked nothing. Request the "
            "robustness_gate fixture and call robustness_gate.check(model) in the test, or "
            "remove the marker.",
            pytrace=False,
        )


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """Collect YAML gate files (names matching the ``robustness_gate_files`` patterns)."""
    if file_path.suffix not in (".yaml", ".yml"):
        return None
    patterns = parent.config.getini("robustness_gate_files")
    if any(fnmatch.fnmatch(file_path.name, p) for p in patterns):
        return GateFile.from_parent(parent, path=file_path)
    return None


# --------------------------------------------------------------------------------------------
# The fixture
# --------------------------------------------------------------------------------------------


@pytest.fixture
def robustness_gate(request: pytest.FixtureRequest) -> RobustnessGate:
    """The gate described by the test's ``@pytest.mark.robustness(...)`` marker."""
    return gate_from_marker(request)


# --------------------------------------------------------------------------------------------
# Registration through the old module path
# --------------------------------------------------------------------------------------------


def register_once(pluginmanager: pytest.PytestPluginManager) -> None:
    """Register this plugin under :data:`ENTRY_POINT` unless it is registered already.

    The old module ``robustbench_local.pytest_plugin`` calls this instead of defining hooks, so
    ``-p robustbench_local.pytest_plugin`` or ``pytest_plugins = [...]`` in a conftest, alone or
    together with the installed entry point, registers the hooks exactly once. The entry point
    then finds its name taken and is skipped. A blocked name (``-p no:robustness``) stays
    blocked.
    """
    module = sys.modules[__name__]
    if pluginmanager.is_registered(module) or pluginmanager.has_plugin(ENTRY_POINT):
        return
    pluginmanager.register(module, ENTRY_POINT)


__all__ = [
    "DEFAULT_BASELINE",
    "DEFAULT_EXPERIMENT",
    "ENTRY_POINT",
    "GATE_FILE_PATTERNS",
    "MARKER",
    "MARKER_HELP",
    "OPTIONS",
    "GateFile",
    "GateItem",
    "GateSession",
    "RobustnessGate",
    "register_once",
    "require_check",
]
