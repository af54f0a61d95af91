"""OmegaConf resolvers used by the configs: ``${frac:8/255}`` and ``${mul:1.25,${eps}}``."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from omegaconf import OmegaConf


def parse_number(value: Any) -> float:
    """A float from a number or a string such as ``"0.3"`` or ``"8/255"``.

    Raises:
        ValueError: The value is not a number or a fraction ``a/b``.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(Fraction(str(value).strip()))
    except (ValueError, ZeroDivisionError) as err:
        raise ValueError(f"cannot read {value!r} as a number; write e.g. 0.03 or 8/255") from err


def _mul(*factors: Any) -> float:
    out = 1.0
    for f in factors:
        out *= parse_number(f)
    return out


def register_resolvers() -> None:
    """Register the resolvers once (safe to call again)."""
    OmegaConf.register_new_resolver("frac", parse_number, replace=True)
    OmegaConf.register_new_resolver("mul", _mul, replace=True)


__all__ = ["parse_number", "register_resolvers"]
