"""The health vocabulary: :class:`Flag`, severities and the adaptive-run label suffix.

The robustness curve (:mod:`robustbench_local.curve`), the evaluation
(:mod:`robustbench_local.evaluate`) and the checks (:mod:`robustbench_local.checks`) speak this
vocabulary, and the gates, the benchmark and the experiments read it; it lives here so that
none of them imports another to get it. The checks' names and kinds live in their registry
(:mod:`robustbench_local.checks.registry`), which imports this module, never the reverse.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

ADAPTIVE_SUFFIX = "+adaptive"
"""Label suffix of a curve's adaptive (BPDA/EOT) run of an attack: ``pgd+adaptive``."""

Severity = Literal["info", "warning", "error"]
SEVERITIES = ("info", "warning", "error")


@dataclass
class Flag:
    """The result of one health check.

    Attributes:
        name: The check's name (see :data:`robustbench_local.checks.PREFLIGHT_FLAGS` and
            :data:`robustbench_local.checks.GRADIENT_MASKING_FLAGS`).
        ok: True if the check passed.
        severity: ``"info"`` (passed or harmless), ``"warning"`` (results may be unreliable) or
            ``"error"`` (the evaluation would be meaningless; ``robustness_curve`` raises).
        message: What was found.
        advice: What to do about it (empty when nothing is needed).
        details: Numbers behind the verdict (JSON-able).
    """

    name: str
    ok: bool
    severity: Severity
    message: str
    advice: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Flag:
        """Rebuild a flag from :meth:`to_dict` output."""
        return cls(
            name=str(d["name"]),
            ok=bool(d["ok"]),
            severity=d["severity"],
            message=str(d.get("message", "")),
            advice=str(d.get("advice", "")),
            details=dict(d.get("details") or {}),
        )

    def __str__(self) -> str:
        status = "ok" if self.ok else self.severity.upper()
        text = f"[{status}] {self.name}: {self.message}"
        return f"{text} -> {self.advice}" if self.advice and not self.ok else text


def passed(name: str, message: str, **details: Any) -> Flag:
    """A check that passed (severity ``info``, no advice)."""
    return Flag(name, True, "info", message, "", details)


def failed(name: str, severity: Severity, message: str, advice: str, **details: Any) -> Flag:
    """A check that failed with ``severity``, saying what was found and what to do."""
    return Flag(name, False, severity, message, advice, details)


def summarize(flags: list[Flag]) -> str:
    """One line per flag, failures first."""
    return "\n".join(str(f) for f in sorted(flags, key=lambda f: (f.ok, f.name)))


def raise_on_errors(flags: list[Flag], what: str = "the model fails the preflight") -> None:
    """Raise if any flag failed with error severity.

    Raises:
        ValueError: Listing each error flag's message and advice.
    """
    errors = [f for f in flags if not f.ok and f.severity == "error"]
    if errors:
        raise ValueError(f"{what}: " + "; ".join(f"{f.message} {f.advice}" for f in errors))


__all__ = [
    "ADAPTIVE_SUFFIX",
    "SEVERITIES",
    "Flag",
    "Severity",
    "failed",
    "passed",
    "raise_on_errors",
    "summarize",
]
