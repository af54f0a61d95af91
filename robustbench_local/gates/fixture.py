"""What the ``robustness_gate`` fixture gives a test: the marker's validated gate.

The marker ``@pytest.mark.robustness(...)`` describes the gate; :func:`gate_from_marker` turns
it into a :class:`RobustnessGate` at setup (bad settings are setup errors that name the fix),
and the test calls :meth:`RobustnessGate.check` with its model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from robustbench_local.gates.errors import GateConfigError
from robustbench_local.gates.results import GateResult
from robustbench_local.gates.session import MARKER, GateSession, fail_setup, gate_session
from robustbench_local.gates.spec import GateSpec

if TYPE_CHECKING:
    from torch import nn

    from defenses.data import DataLike


class RobustnessGate:
    """What the ``robustness_gate`` fixture returns: the marker's validated gate.

    Attributes:
        spec: The :class:`~robustbench_local.gates.GateSpec` built from the marker and options.
    """

    def __init__(self, state: GateSession, nodeid: str, spec: GateSpec, data: DataLike) -> None:
        self._state = state
        self._nodeid = nodeid
        self._data = data
        self.spec = spec

    def check(self, model: nn.Module) -> GateResult:
        """Evaluate ``model`` deterministically; fail the test with the table unless it passes.

        Returns:
            The :class:`~robustbench_local.gates.GateResult` of a gate that did not fail.
        """
        gate_id = self._state.gate_id(self._nodeid)
        return self._state.evaluate(gate_id, self.spec, model, self._data)

    def __repr__(self) -> str:
        return f"RobustnessGate({self.spec!r})"


def gate_from_marker(request: pytest.FixtureRequest) -> RobustnessGate:
    """The gate of the requesting test's ``@pytest.mark.robustness(...)`` marker.

    A missing marker, positional arguments, bad settings or unusable data fail the setup with
    a message (no traceback).
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
    state = gate_session(request.config)
    try:
        spec = state.spec(node.name, marker.kwargs)
        data = state.prepare(spec)
    except (GateConfigError, OSError, ValueError, TypeError) as err:
        fail_setup(node.nodeid, err)
    return RobustnessGate(state, node.nodeid, spec, data)


__all__ = ["RobustnessGate", "gate_from_marker"]
