"""pytest plugin: robustness gates for CI (``pytest11`` entry point ``robustness``).

In a test, a marker describes the gate and the ``robustness_gate`` fixture checks a model::

    @pytest.mark.robustness(attack="pgd", eps=0.3, min_accuracy=0.85, n_examples=500,
                            dataset="mnist", attack_kwargs={"steps": 40})
    def test_model_is_robust(robustness_gate, my_model):
        robustness_gate.check(my_model)  # pass, or fail with the table (no traceback)

Marker arguments (all keyword): ``attack``, ``eps`` (float or list), ``min_accuracy`` (one
threshold or one per eps, in [0, 1]; None = compare only), ``n_examples``, ``dataset``,
``split``, ``norm``, ``attack_kwargs``, ``confidence``, ``method`` (wilson|clopper-pearson),
``margin``, ``inconclusive`` (fail|warn|pass), ``allow_masking``, ``allow_nondeterminism``,
``seed``. Unknown arguments are an error at setup.

Without Python, a YAML file whose name matches ``*robustness_gates*.yaml`` (ini option
``robustness_gate_files``) is collected as one test item per gate::

    defaults:                      # optional: settings shared by every gate
      dataset: mnist
      n_examples: 500
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

Options (group "robustness"): ``--robustness-n-examples``, ``--robustness-device``,
``--robustness-data-dir``, ``--robustness-save-baseline[=PATH]``, ``--robustness-compare[=PATH]``,
``--robustness-report=FILE``, ``--robustness-confidence``, ``--robustness-inconclusive``,
``--robustness-mlflow[=EXPERIMENT]``. Command-line values override the gates' own settings.

The plugin imports nothing heavy until a gate runs, so sessions without gates are unaffected.
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from robustbench_local.gates import GateResult, GateSpec

logger = logging.getLogger(__name__)

DEFAULT_BASELINE = "robustness_baseline.json"
DEFAULT_EXPERIMENT = "robustness-gates"
GATE_FILE_PATTERNS = ["*robustness_gates*.yaml", "*robustness_gates*.yml"]
MARKER = "robustness"
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


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ``--robustness-*`` options and the gate-file ini setting."""
    group = parser.getgroup("robustness", "robustness gates (robustbench_local)")
    add = group.addoption
    add(
        "--robustness-n-examples",
        type=_positive_int,
        default=None,
        metavar="N",
        help="Evaluate every gate on N samples (overrides the gates' n_examples).",
    )
    add(
        "--robustness-device",
        default=None,
        metavar="DEVICE",
        help="Device to evaluate gates on, e.g. cpu or cuda:0 (default: the model's device).",
    )
    add(
        "--robustness-data-dir",
        default=None,
        metavar="DIR",
        help="Dataset mirror folder (default: $ROBUSTBENCH_LOCAL_DATA_DIR, else download).",
    )
    add(
        "--robustness-save-baseline",
        nargs="?",
        const=DEFAULT_BASELINE,
        default=None,
        metavar="PATH",
        help=f"Save per-sample gate results as a baseline (default PATH: {DEFAULT_BASELINE}).",
    )
    add(
        "--robustness-compare",
        nargs="?",
        const=DEFAULT_BASELINE,
        default=None,
        metavar="PATH",
        help="Compare gates with a saved baseline (exact McNemar, Holm-corrected); fail on a "
        f"significant drop larger than the gate's margin (default PATH: {DEFAULT_BASELINE}).",
    )
    add(
        "--robustness-report",
        default=None,
        metavar="FILE",
        help="Write a JSON report of every gate to FILE.",
    )
    add(
        "--robustness-confidence",
        type=_confidence,
        default=None,
        metavar="P",
        help="One-sided confidence of the bounds and tests (overrides the gates'; default 0.95).",
    )
    add(
        "--robustness-inconclusive",
        choices=("fail", "warn", "pass"),
        default=None,
        help="What an inconclusive gate does (overrides the gates'; default fail).",
    )
    add(
        "--robustness-mlflow",
        nargs="?",
        const=DEFAULT_EXPERIMENT,
        default=None,
        metavar="EXPERIMENT",
        help="Log gate results to MLflow ($MLFLOW_TRACKING_URI, else sqlite mlflow.db in the "
        f"rootdir) under EXPERIMENT (default {DEFAULT_EXPERIMENT}).",
    )
    parser.addini(
        "robustness_gate_files",
        type="args",
        default=GATE_FILE_PATTERNS,
        help="Glob patterns of YAML files collected as robustness gates.",
    )


# --------------------------------------------------------------------------------------------
# Session state
# --------------------------------------------------------------------------------------------


class GateSession:
    """Per-run state: options, loaded data, the baseline, and every gate result."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.results: list[GateResult] = []
        self.messages: list[str] = []
        self.family_size = 0
        self.baseline: dict[str, Any] | None = None
        self.baseline_path = self._option("compare")
        self._data: dict[tuple[str, str], Any] = {}
        self._ids: dict[str, int] = {}

    def _option(self, name: str) -> Any:
        return self.config.getoption(f"robustness_{name}")

    def load_baseline(self) -> None:
        """Read the ``--robustness-compare`` file (a usage error if unusable)."""
        if self.baseline_path is None:
            return
        from robustbench_local.gates import BaselineError, load_baseline

        try:
            self.baseline = load_baseline(self._resolve(self.baseline_path))
        except BaselineError as err:
            raise pytest.UsageError(f"--robustness-compare: {err}") from None

    def _resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.config.invocation_params.dir) / p

    def spec(self, name: str, kwargs: Mapping[str, Any]) -> GateSpec:
        """Validate gate settings and apply the command-line overrides."""
        from robustbench_local.gates import GateSpec

        spec = GateSpec.from_kwargs(name, kwargs)
        return spec.with_overrides(
            n_examples=self._option("n_examples"),
            confidence=self._option("confidence"),
            inconclusive=self._option("inconclusive"),
        )

    def prepare(self, spec: GateSpec) -> Any:
        """Load (once per run) the gate's data split; check the attack and ``n_examples``."""
        from robustbench_local.gates import build_attack, load_split, select_samples

        build_attack(spec)
        key = (spec.dataset, spec.split)
        if key not in self._data:
            try:
                self._data[key] = load_split(spec.dataset, spec.split, self._option("data_dir"))
            except OSError as err:
                raise OSError(
                    f"{err}\nFor gates: point --robustness-data-dir at a dataset mirror."
                ) from err
        data = self._data[key]
        select_samples(spec, data)
        return data

    def gate_id(self, nodeid: str) -> str:
        """The node id; repeated checks in one test get ``#2``, ``#3``..."""
        self._ids[nodeid] = self._ids.get(nodeid, 0) + 1
        count = self._ids[nodeid]
        return nodeid if count == 1 else f"{nodeid}#{count}"

    def evaluate(self, gate_id: str, spec: GateSpec, model: Any, data: Any) -> GateResult:
        """Run the gate, record it, compare it with the baseline and enforce the verdict."""
        from robustbench_local.gates import BaselineError, GateConfigError, run_gate

        try:
            result = run_gate(
                spec, model, data=data, device=self._option("device"), gate_id=gate_id
            )
        except GateConfigError as err:
            pytest.fail(f"robustness gate {spec.name!r}: {err}", pytrace=False)
        self.results.append(result)
        try:
            self._compare(result)
        except BaselineError as err:
            pytest.fail(str(err), pytrace=False)
        self.enforce(result)
        return result

    def _compare(self, result: GateResult) -> None:
        if self.baseline is None:
            return
        from robustbench_local.gates import compare_to_baseline

        entry = self.baseline["gates"].get(result.gate_id)
        if entry is None:
            result.notes.append(f"no baseline for this gate in {self.baseline_path}")
            return
        compared = sum(1 for r in self.results for row in r.rows if row.p_value is not None)
        family = max(self.family_size, compared + len(result.rows))
        compare_to_baseline(result, entry, family_size=family, source=str(self.baseline_path))

    @staticmethod
    def enforce(result: GateResult) -> None:
        """Fail (table as message, no traceback) or warn according to the verdict and policy."""
        from robustbench_local.gates import INCONCLUSIVE, RobustnessGateWarning, failure_message

        if result.failed():
            pytest.fail(failure_message(result), pytrace=False)
        if result.verdict == INCONCLUSIVE and result.spec.inconclusive == "warn":
            warnings.warn(RobustnessGateWarning(failure_message(result)), stacklevel=2)

    def finish(self, session: pytest.Session) -> None:
        """Holm-correct comparisons; save the baseline, the report and the MLflow run."""
        if not self.results:
            return
        from robustbench_local.gates import apply_holm

        if self.baseline is not None:
            for res, row in apply_holm(self.results):
                self._fail_session(
                    session,
                    f"FAILED robustness gate {res.spec.name} at eps={row.eps:g}: significant "
                    f"drop from the baseline after Holm correction (p={row.p_adjusted:.4g})",
                )
        self._write_outputs(session)

    def _write_outputs(self, session: pytest.Session) -> None:
        from robustbench_local.gates import save_baseline, write_report

        outputs = [
            ("save_baseline", "baseline saved to", lambda p: save_baseline(p, self.results)),
            ("report", "report written to", lambda p: write_report(p, self.results)),
        ]
        for option, label, write in outputs:
            if self._option(option):
                path = self._resolve(self._option(option))
                try:
                    self.messages.append(f"robustness gates: {label} {write(path)}")
                except (OSError, ValueError) as err:
                    self._fail_session(session, f"robustness gates: could not write {path}: {err}")
        if self._option("mlflow"):
            self._log_mlflow(session)

    def _log_mlflow(self, session: pytest.Session) -> None:
        from robustbench_local.gates import log_to_mlflow

        uri = (
            os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{self.config.rootpath / 'mlflow.db'}"
        )
        try:
            run_id = log_to_mlflow(
                self.results, experiment=self._option("mlflow"), tracking_uri=uri
            )
        except Exception as err:  # any MLflow failure is reported
            self._fail_session(
                session, f"robustness gates: MLflow logging to {uri} failed: {err!r}"
            )
        else:
            self.messages.append(f"robustness gates: logged to MLflow run {run_id} ({uri})")

    def _fail_session(self, session: pytest.Session, message: str) -> None:
        self.messages.append(message)
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


_SESSION = pytest.StashKey[GateSession]()


def _gate_session(config: pytest.Config) -> GateSession:
    return config.stash[_SESSION]


# --------------------------------------------------------------------------------------------
# Hooks
# --------------------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker and the session state; read the baseline to compare with."""
    config.addinivalue_line("markers", MARKER_HELP)
    state = GateSession(config)
    config.stash[_SESSION] = state
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
    state = session.config.stash.get(_SESSION, None)
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
    state = session.config.stash.get(_SESSION, None)
    if state is not None:
        state.finish(session)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Print the table of every gate that ran."""
    state = config.stash.get(_SESSION, None)
    if state is None or not (state.results or state.messages):
        return
    from robustbench_local.gates import render_table

    terminalreporter.section("robustness gates")
    if state.results:
        terminalreporter.line(render_table(state.results))
    for message in state.messages:
        terminalreporter.line(message, red=message.startswith("FAILED"))


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


class RobustnessGate:
    """What the ``robustness_gate`` fixture returns: the marker's validated gate.

    Attributes:
        spec: The :class:`~robustbench_local.gates.GateSpec` built from the marker and options.
    """

    def __init__(self, state: GateSession, nodeid: str, spec: GateSpec, data: Any) -> None:
        self._state = state
        self._nodeid = nodeid
        self._data = data
        self.spec = spec

    def check(self, model: Any) -> GateResult:
        """Evaluate ``model`` deterministically; fail the test with the table unless it passes.

        Returns:
            The :class:`~robustbench_local.gates.GateResult` of a gate that did not fail.
        """
        gate_id = self._state.gate_id(self._nodeid)
        return self._state.evaluate(gate_id, self.spec, model, self._data)

    def __repr__(self) -> str:
        return f"RobustnessGate({self.spec!r})"


def _setup_error(where: str, err: Exception) -> None:
    pytest.fail(f"robustness gate setup failed for {where}: {err}", pytrace=False)


@pytest.fixture
def robustness_gate(request: pytest.FixtureRequest) -> RobustnessGate:
    """The gate described by the test's ``@pytest.mark.robustness(...)`` marker."""
    from robustbench_local.gates import GateConfigError

    node = request.node
    marker = node.get_closest_marker(MARKER)
    if marker is None:
        pytest.fail(
            f"{node.nodeid} uses the robustness_gate fixture without a "
            "@pytest.mark.robustness(...) marker: add one with at least eps= and min_accuracy=",
            pytrace=False,
        )
    if marker.args:
        pytest.fail(
            f"@pytest.mark.robustness takes keyword arguments only, got positional {marker.args!r}",
            pytrace=False,
        )
    state = _gate_session(request.config)
    try:
        spec = state.spec(node.name, marker.kwargs)
        data = state.prepare(spec)
    except (GateConfigError, OSError, ValueError, TypeError) as err:
        _setup_error(node.nodeid, err)
    return RobustnessGate(state, node.nodeid, spec, data)


# --------------------------------------------------------------------------------------------
# YAML gate files
# --------------------------------------------------------------------------------------------

_FILE_KEYS = ("defaults", "gates")
_MODEL_KEYS = ("checkpoint", "_target_")


class GateFile(pytest.File):
    """A YAML file of gates: ``{defaults: {...}, gates: [{name, model, ...}, ...]}``."""

    def collect(self) -> Iterator[GateItem]:
        """One :class:`GateItem` per gate; malformed files are collection errors."""
        from robustbench_local.gates import GateConfigError

        defaults, gates = self._read()
        state = _gate_session(self.config)
        seen: set[str] = set()
        for i, raw in enumerate(gates):
            where = f"{self.path.name}: gates[{i}]"
            entry = {**defaults, **self._mapping(raw, where)}
            name = entry.pop("name", None)
            if not isinstance(name, str) or not re.fullmatch(r"[\w.\-]+", name):
                raise self.CollectError(
                    f"{where}: every gate needs a name of letters, digits, _ . -"
                )
            if name in seen:
                raise self.CollectError(f"{where}: duplicate gate name {name!r}")
            seen.add(name)
            model = self._model(entry.pop("model", None), f"{self.path.name}: gate {name!r}")
            try:
                spec = state.spec(name, entry)
            except GateConfigError as err:
                raise self.CollectError(f"{self.path.name}: gate {name!r}: {err}") from None
            yield GateItem.from_parent(self, name=name, spec=spec, model_cfg=model)

    def _read(self) -> tuple[dict[str, Any], list[Any]]:
        import yaml

        try:
            doc = yaml.safe_load(self.path.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise self.CollectError(f"{self.path.name}: cannot read YAML: {err}") from None
        doc = self._mapping(doc, self.path.name)
        unknown = sorted(set(doc) - set(_FILE_KEYS))
        if unknown:
            raise self.CollectError(
                f"{self.path.name}: unknown top-level keys {unknown}; expected {_FILE_KEYS}"
            )
        gates = doc.get("gates")
        if not isinstance(gates, list) or not gates:
            raise self.CollectError(f"{self.path.name}: 'gates' must be a non-empty list of gates")
        return self._mapping(doc.get("defaults") or {}, f"{self.path.name}: defaults"), gates

    def _mapping(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.CollectError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)

    def _model(self, value: Any, where: str) -> dict[str, Any]:
        if isinstance(value, str):
            value = {"checkpoint": value}
        if not isinstance(value, dict) or not any(k in value for k in _MODEL_KEYS):
            raise self.CollectError(
                f"{where}: 'model' must be a checkpoint path or a mapping with 'checkpoint' "
                "and/or '_target_' (a class or function for hydra.utils.instantiate)"
            )
        return dict(value)


class GateItem(pytest.Item):
    """One gate of a YAML file: loads its model and checks it like the fixture does."""

    def __init__(self, *, spec: GateSpec, model_cfg: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.model_cfg = model_cfg
        self.add_marker(MARKER)
        self._data: Any = None

    def setup(self) -> None:
        """Check the checkpoint exists, the attack builds and the data has enough samples."""
        from robustbench_local.gates import GateConfigError

        try:
            self.checkpoint_path()
            self._data = _gate_session(self.config).prepare(self.spec)
        except (GateConfigError, OSError, ValueError, TypeError) as err:
            _setup_error(self.nodeid, err)

    def checkpoint_path(self) -> Path | None:
        """The model's checkpoint, environment variables expanded, relative to the YAML file.

        Raises:
            FileNotFoundError: The checkpoint does not exist.
            ValueError: The path uses an environment variable that is not set.
        """
        raw = self.model_cfg.get("checkpoint")
        if raw is None:
            return None
        text = os.path.expanduser(os.path.expandvars(str(raw)))
        missing = re.findall(r"\$\{?(\w+)\}?", text)
        if missing:
            raise ValueError(
                f"model checkpoint {raw!r} uses unset environment variable(s) {missing}"
            )
        path = Path(text)
        path = path if path.is_absolute() else self.path.parent / path
        if not path.is_file():
            raise FileNotFoundError(
                f"model checkpoint not found: {path} (from {raw!r} in {self.path.name}); "
                "create it first or fix the path"
            )
        return path

    def load_model(self) -> Any:
        """Build the model (``_target_`` via hydra.utils.instantiate) and load ``checkpoint``."""
        from robustbench_local.models import load_checkpoint

        path = self.checkpoint_path()
        model = None
        if "_target_" in self.model_cfg:
            from hydra.utils import instantiate

            cfg = {k: v for k, v in self.model_cfg.items() if k != "checkpoint"}
            model = instantiate(cfg)
        if path is not None:
            model = load_checkpoint(path, model=model)
        return model

    def runtest(self) -> None:
        """Evaluate the gate; a failing verdict fails the item with the table."""
        state = _gate_session(self.config)
        state.evaluate(state.gate_id(self.nodeid), self.spec, self.load_model(), self._data)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        """Where the gate is defined."""
        return self.path, None, f"robustness gate {self.name}"
