"""Argument checks shared by every package: one definition, one error message per problem.

``attacks`` is the bottom layer of the project, so the validators every other package needs
live here: the attacks, the defenses, the models and the experiments call the same functions
and reject the same values (``True`` is never a positive integer).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor


def check_positive_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """Return ``value`` as an int if it is an integer ``>= minimum`` (booleans are refused).

    Raises:
        ValueError: ``value`` is not an integer (``True`` included) or is below ``minimum``.

    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        want = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {want}, got {value!r}")
    return int(value)


def check_number(
    name: str,
    value: Any,
    *,
    low: float = 0.0,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a float if it is a finite number in the given range.

    Raises:
        TypeError: ``value`` is not a number (booleans and strings included).
        ValueError: ``value`` is NaN, infinite or outside ``[low, high]`` (open where asked).

    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    v = float(value)
    too_low = v <= low if low_open else v < low
    too_high = v >= high if high_open else v > high
    if math.isnan(v) or too_low or too_high or (math.isinf(v) and not math.isinf(high)):
        if math.isinf(high):
            want = f"> {low:g}" if low_open else f">= {low:g}"
        else:
            lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
            want = f"in {lo}{low:g}, {high:g}{hi}"
        raise ValueError(f"{name} must be {want}, got {value!r}")
    if math.isinf(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def looks_like_probabilities(out: Tensor) -> bool:
    """True when every row of ``out`` ``[N, C]`` is non-negative and sums to 1 (a softmax).

    Attacks on probabilities saturate and overstate robustness, so callers refuse such outputs
    and ask for logits.
    """
    rows = out.sum(dim=1)
    return bool((out >= 0).all()) and torch.allclose(rows, torch.ones_like(rows), atol=1e-3)


__all__ = ["check_number", "check_positive_int", "looks_like_probabilities"]
