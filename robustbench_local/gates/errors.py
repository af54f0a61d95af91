"""What the gates raise and warn: bad settings, unusable baselines, inconclusive verdicts."""

from __future__ import annotations


class GateConfigError(ValueError):
    """A gate's settings are invalid (the message names the setting and the fix)."""


class BaselineError(ValueError):
    """A baseline file cannot be used for a gate (other attack config, other samples, bad file)."""


class RobustnessGateWarning(UserWarning):
    """An inconclusive gate under the ``warn`` policy."""


__all__ = ["BaselineError", "GateConfigError", "RobustnessGateWarning"]
