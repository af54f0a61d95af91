"""What the ``robustness_gate`` fixture gives a test: the marker's validated gate.

The marker ``@pytest.mark.robustness(...)`` describes the gate; :func:`gate_from_marker` turns
it into a :class:`RobustnessGate` at setup (bad settings are setup errors that name the fix),
and the test calls :meth:`RobustnessGate.check` with its model, and optionally its data. A test
with the marker that never calls ``check`` fails (the plugin's ``pytest_runtest_call``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from robustbench_local.gates.errors import GateConfigError
from robustbench_local.gates.results import GateResult
from robustbench_local.gates.session import (
    MARKER,
    GateSession,
    fail_gate,
    fail_setup,
    gate_session,
)
from robustbench_local.gates.spec import GateSpec

if TYPE_CHECKING:
    from torch import nn

    from robustbench_local.gates.runner import GateData

_DATA_ERRORS = (GateConfigError, OSError, ValueError, TypeError)


class RobustnessGate:
    """What the ``robustness_gate`` fixture returns: the marker's validated gate.

    Attributes:
        spec: The :class:`~robustbench_local.gates.GateSpec` built from the marker and options.
    """

    def __init__(
        self,
        state: GateSession,
        nodeid: str,
        spec: GateSpec,
        data: GateData | None,
        root: Path | None = None,
    ) -> None:
        self._state = state
        self._nodeid = nodeid
        self._data = data
        self._root = root
        self.spec = spec

    def check(self, model: nn.Module, data: Any = None) -> GateResult:
        """Evaluate ``model`` deterministically; fail the test with the table unless it passes.

        Args:
            model: The classifier (inputs in [0, 1], logits out; see ``rbl.wrap_model``).
            data: The data to sample from, when the marker names no ``dataset``: any data spec
                (a registered name, an image folder, an ``.npz``/``.pt`` file,
                ``module:function``; relative to the test file), ``(x, y)`` tensors or numpy
                arrays, or a Dataset. Default: the marker's ``dataset`` (``mnist`` if none).

        Returns:
            The :class:`~robustbench_local.gates.GateResult` of a gate that did not fail.
        """
        gate_id = self._state.gate_id(self._nodeid)
        split = self._split(data)
        return self._state.evaluate(gate_id, self.spec, model, split)

    def _split(self, data: Any) -> GateData:
        """The prepared split: the marker's, or ``data`` (failing the test on bad data)."""
        if data is not None and self._data is not None:
            pytest.fail(
                f"robustness gate {self.spec.name!r}: the marker names dataset="
                f"{self.spec.dataset!r} and check() got data= too; pass the data once",
                pytrace=False,
            )
        if data is None and self._data is not None:
            return self._data
        try:
            return self._state.prepare(self.spec, self._root, data)
        except _DATA_ERRORS as err:
            fail_gate(f"robustness gate {self.spec.name!r}: {err}")

    def __repr__(self) -> str:
        return f"RobustnessGate({self.spec!r})"


def gate_from_marker(request: pytest.FixtureRequest) -> RobustnessGate:
    """The gate of the requesting test's ``@pytest.mark.robustness(...)`` marker.

    A missing marker, positional arguments, bad settings or unusable data fail the setup with
    a message (no traceback). The data is loaded at setup when the marker names a ``dataset``,
    else at :meth:`RobustnessGate.check` (its ``data=``, or the default dataset).
    """
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
    from robustbench_local.gates.runner import build_attack

    state = gate_session(request.config)
    root = Path(node.path).parent
    data = None
    try:
        spec = state.spec(node.name, marker.kwargs)
        build_attack(spec)
        if "dataset" in marker.kwargs:
            data = state.prepare(spec, root)
    except _DATA_ERRORS as err:
        fail_setup(node.nodeid, err)
    return RobustnessGate(state, node.nodeid, spec, data, root)


__all__ = ["RobustnessGate", "gate_from_marker"]
