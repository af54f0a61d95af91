"""The old path of the robustness-gates pytest plugin, kept for ``-p`` and ``pytest_plugins``.

The plugin now lives in :mod:`robustbench_local.gates.plugin` (the ``pytest11`` entry point
``robustness``). ``-p robustbench_local.pytest_plugin`` and ``pytest_plugins =
["robustbench_local.pytest_plugin"]`` keep working: this module defines no hooks or fixtures of
its own, and its one hook registers the real plugin under the entry point's name unless it is
registered already, so the hooks never run twice. The names that were importable from here
still are.
"""

from __future__ import annotations

import pytest

from robustbench_local.gates.plugin import (
    DEFAULT_BASELINE,
    DEFAULT_EXPERIMENT,
    GATE_FILE_PATTERNS,
    MARKER,
    MARKER_HELP,
    GateFile,
    GateItem,
    GateSession,
    RobustnessGate,
    register_once,
)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    """Register :mod:`robustbench_local.gates.plugin` once (called when this module registers)."""
    register_once(pluginmanager)


__all__ = [
    "DEFAULT_BASELINE",
    "DEFAULT_EXPERIMENT",
    "GATE_FILE_PATTERNS",
    "MARKER",
    "MARKER_HELP",
    "GateFile",
    "GateItem",
    "GateSession",
    "RobustnessGate",
]
