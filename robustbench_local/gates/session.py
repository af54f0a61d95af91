"""The state of one pytest run of gates: options, loaded data, the baseline and every result.

:class:`GateSession` lives in the pytest config's stash (see :func:`gate_session`). The marker
fixture and the YAML items both validate their settings through :meth:`GateSession.spec` (which
applies the ``--robustness-*`` overrides), load data through :meth:`GateSession.prepare` (once
per data spec and split) and evaluate through :meth:`GateSession.evaluate` (which compares with the
baseline and fails the test with the table). At the end of the run :meth:`GateSession.finish`
Holm-corrects the comparisons and writes the baseline, the report and the MLflow run.

Only the light parts of the gates are imported here; the runner, baselines and reports (torch,
scipy, MLflow) are imported when a gate runs.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from robustbench_local.gates.errors import BaselineError, RobustnessGateWarning
from robustbench_local.gates.results import INCONCLUSIVE, GateResult
from robustbench_local.gates.spec import GateSpec

if TYPE_CHECKING:
    from torch import nn

    from robustbench_local.gates.runner import GateData

MARKER = "robustness"
"""The marker name: ``@pytest.mark.robustness(...)``; YAML gate items carry it too."""


def fail_setup(where: str, err: Exception) -> NoReturn:
    """Fail a gate's setup with ``err`` as the message (no traceback)."""
    fail_gate(f"robustness gate setup failed for {where}: {err}")


def fail_gate(message: str) -> NoReturn:
    """Fail the test with ``message`` alone: no traceback, and not the exception it handles."""
    raise pytest.fail.Exception(message, pytrace=False) from None


class GateSession:
    """Per-run state: options, loaded data, the baseline, and every gate result."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.results: list[GateResult] = []
        self.messages: list[str] = []
        self.family_size = 0
        self.baseline: dict[str, Any] | None = None
        self.baseline_path = self._option("compare")
        self._data: dict[tuple[str, str, str], GateData] = {}
        self._ids: dict[str, int] = {}
        self.checked: set[str] = set()

    def _option(self, name: str) -> Any:
        return self.config.getoption(f"robustness_{name}")

    def load_baseline(self) -> None:
        """Read the ``--robustness-compare`` file (a usage error if unusable)."""
        if self.baseline_path is None:
            return
        from robustbench_local.gates.baseline import load_baseline

        try:
            self.baseline = load_baseline(self._resolve(self.baseline_path))
        except BaselineError as err:
            raise pytest.UsageError(f"--robustness-compare: {err}") from None

    def _resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.config.invocation_params.dir) / p

    def spec(self, name: str, kwargs: Mapping[str, Any]) -> GateSpec:
        """Validate gate settings and apply the command-line overrides."""
        spec = GateSpec.from_kwargs(name, kwargs)
        return spec.with_overrides(
            n_examples=self._option("n_examples"),
            confidence=self._option("confidence"),
            inconclusive=self._option("inconclusive"),
        )

    def prepare(self, spec: GateSpec, root: Path | None = None, data: Any = None) -> GateData:
        """The gate's split, loaded once per run; check the attack and ``n_examples``.

        Args:
            spec: The gate.
            root: Folder that relative data paths are relative to (the gate file's folder, or
                the test file's for a marker).
            data: Data given to ``check(model, data=...)`` (a data spec, arrays or a Dataset);
                default: the spec's ``dataset`` and ``split``.
        """
        from robustbench_local.gates.runner import build_attack, gate_data, select_samples

        build_attack(spec)
        source = spec.dataset if data is None else data
        key = self._data_key(source, spec.split, root)
        if key is None or key not in self._data:
            try:
                loaded = gate_data(spec, data, data_dir=self._option("data_dir"), root=root)
            except OSError as err:
                raise OSError(
                    f"{err}\nFor gates: point --robustness-data-dir at a dataset mirror."
                ) from err
            if key is None:
                select_samples(spec, loaded)
                return loaded
            self._data[key] = loaded
        select_samples(spec, self._data[key])
        return self._data[key]

    @staticmethod
    def _data_key(source: Any, split: str, root: Path | None) -> tuple[str, str, str] | None:
        """The cache key of a data spec; None for data given in memory (not cached).

        A path's key includes the folder it is relative to; a registered name's does not.
        """
        if not isinstance(source, str | os.PathLike):
            return None
        text = os.fspath(source)
        folder = str(root) if root is not None and any(c in text for c in "/\\.~") else ""
        return (text, split, folder)

    def gate_id(self, nodeid: str) -> str:
        """The node id; repeated checks in one test get ``#2``, ``#3``...

        Asking for it is what a check does: the test counts as checked.
        """
        self.checked.add(nodeid)
        self._ids[nodeid] = self._ids.get(nodeid, 0) + 1
        count = self._ids[nodeid]
        return nodeid if count == 1 else f"{nodeid}#{count}"

    def evaluate(
        self, gate_id: str, spec: GateSpec, model: nn.Module, data: GateData | None
    ) -> GateResult:
        """Run the gate, record it, compare it with the baseline and enforce the verdict.

        ``data`` is the prepared split (None: load the spec's dataset). Settings, data or a
        device the evaluation cannot use fail the test with the message (no traceback).
        """
        from robustbench_local.gates.runner import run_gate

        try:
            result = run_gate(
                spec, model, data=data, data_dir=self._option("data_dir"),
                device=self._option("device"), gate_id=gate_id,
            )  # fmt: skip
        except ValueError as err:  # GateConfigError, and the input checks' InputError
            fail_gate(f"robustness gate {spec.name!r}: {err}")
        self.results.append(result)
        try:
            self._compare(result)
        except BaselineError as err:
            fail_gate(str(err))
        self.enforce(result)
        return result

    def _compare(self, result: GateResult) -> None:
        if self.baseline is None:
            return
        from robustbench_local.gates.baseline import compare_to_baseline

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
        from robustbench_local.gates.report import failure_message

        if result.failed():
            pytest.fail(failure_message(result), pytrace=False)
        if result.verdict == INCONCLUSIVE and result.spec.inconclusive == "warn":
            warnings.warn(RobustnessGateWarning(failure_message(result)), stacklevel=2)

    def finish(self, session: pytest.Session) -> None:
        """Holm-correct comparisons; save the baseline, the report and the MLflow run."""
        if not self.results:
            return
        from robustbench_local.gates.baseline import apply_holm

        if self.baseline is not None:
            for res, row in apply_holm(self.results):
                self._fail_session(
                    session,
                    f"FAILED robustness gate {res.spec.name} at eps={row.eps:g}: significant "
                    f"drop from the baseline after Holm correction (p={row.p_adjusted:.4g})",
                )
        self._write_outputs(session)

    def _write_outputs(self, session: pytest.Session) -> None:
        from robustbench_local import distributed
        from robustbench_local.gates.baseline import save_baseline
        from robustbench_local.gates.report import write_report

        if not distributed.is_main():  # sharded gates: every rank has the results, rank 0 writes
            return

        outputs: list[tuple[str, str, Callable[[Path], Path]]] = [
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
        from robustbench_local.gates.report import log_to_mlflow

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


SESSION_KEY = pytest.StashKey[GateSession]()
"""Where :func:`~robustbench_local.gates.plugin.pytest_configure` keeps the run's session."""


def gate_session(config: pytest.Config) -> GateSession:
    """The run's :class:`GateSession` (set up by the plugin's ``pytest_configure``)."""
    return config.stash[SESSION_KEY]


__all__ = ["MARKER", "SESSION_KEY", "GateSession", "fail_gate", "fail_setup", "gate_session"]
