"""The state of one pytest run of gates: options, loaded data, the baseline and every result.

:class:`GateSession` lives in the pytest config's stash (see :func:`gate_session`). The marker
fixture and the YAML items both validate their settings through :meth:`GateSession.spec` (which
applies the ``--robustness-*`` overrides), load data through :meth:`GateSession.prepare` (once
per dataset split) and evaluate through :meth:`GateSession.evaluate` (which compares with the
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

from robustbench_local.gates.errors import BaselineError, GateConfigError, RobustnessGateWarning
from robustbench_local.gates.results import INCONCLUSIVE, GateResult
from robustbench_local.gates.spec import GateSpec

if TYPE_CHECKING:
    from torch import nn

    from defenses.data import DataLike

MARKER = "robustness"
"""The marker name: ``@pytest.mark.robustness(...)``; YAML gate items carry it too."""


def fail_setup(where: str, err: Exception) -> NoReturn:
    """Fail a gate's setup with ``err`` as the message (no traceback)."""
    pytest.fail(f"robustness gate setup failed for {where}: {err}", pytrace=False)


class GateSession:
    """Per-run state: options, loaded data, the baseline, and every gate result."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.results: list[GateResult] = []
        self.messages: list[str] = []
        self.family_size = 0
        self.baseline: dict[str, Any] | None = None
        self.baseline_path = self._option("compare")
        self._data: dict[tuple[str, str], DataLike] = {}
        self._ids: dict[str, int] = {}

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

    def prepare(self, spec: GateSpec) -> DataLike:
        """Load (once per run) the gate's data split; check the attack and ``n_examples``."""
        from robustbench_local.gates.runner import build_attack, load_split, select_samples

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

    def evaluate(
        self, gate_id: str, spec: GateSpec, model: nn.Module, data: DataLike | None
    ) -> GateResult:
        """Run the gate, record it, compare it with the baseline and enforce the verdict.

        ``data`` is the split to sample from (None: load the spec's dataset).
        """
        from robustbench_local.gates.runner import run_gate

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


__all__ = ["MARKER", "SESSION_KEY", "GateSession", "fail_setup", "gate_session"]
