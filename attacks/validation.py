"""Argument checks shared by every package: one definition, one error message per problem.

``attacks`` is the bottom layer of the project, so the validators every other package needs
live here: the attacks, the defenses, the models and the experiments call the same functions
and reject the same values (``True`` is never a positive integer). The checks of an attack's
call (budgets, inputs, labels, sample ids, the model's logits) live here too.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

EpsLike = float | Sequence[float] | Tensor | None
BOUNDS_TOL = 1e-6
_NP_BOOLS = frozenset({"bool", "bool_"})  # numpy's boolean scalar (named bool in numpy 2)


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


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is a boolean (Python's or numpy's); refuse strings and numbers.

    Raises:
        TypeError: ``value`` is not a boolean (``"false"`` would silently count as True).

    """
    kind = type(value)
    if isinstance(value, bool) or (kind.__module__ == "numpy" and kind.__name__ in _NP_BOOLS):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")


def check_choice(name: str, value: Any, choices: Sequence[str], hint: str = "") -> str:
    """``value`` if it is one of ``choices``.

    Raises:
        ValueError: Any other value (the message lists the choices, then ``hint``).
    """
    if value not in choices:
        raise ValueError(f"{name}={value!r}; use one of: {', '.join(choices)}{hint}")
    return str(value)


def check_bounds(bounds: Any) -> tuple[float, float]:
    """Return ``bounds`` as ``(lo, hi)`` floats if they are two finite numbers with ``lo < hi``.

    Raises:
        TypeError: ``bounds`` is not a pair of numbers.
        ValueError: Non-finite values or ``lo >= hi``.

    """
    if isinstance(bounds, str | bytes) or not isinstance(bounds, Sequence) or len(bounds) != 2:
        raise TypeError(f"bounds must be a pair (lo, hi), got {bounds!r}")
    lo, hi = (check_number("bounds", b, low=-math.inf) for b in bounds)
    if not lo < hi:
        raise ValueError(f"bounds must satisfy lo < hi, got {tuple(bounds)}")
    return lo, hi


def parse_eps(eps: EpsLike, *, allow_none: bool = False) -> list[float] | None:
    """Validate ``eps`` (a number, a sequence or a 0-/1-d tensor) into a list of floats.

    Raises:
        TypeError: Non-numeric eps (strings, booleans, nested lists).
        ValueError: NaN, infinite or negative eps, an empty list, or a missing eps.

    """
    if eps is None:
        if allow_none:
            return None
        raise ValueError(
            "eps is required for this attack: pass eps=0.3 or a list such as eps=[0.1, 0.3]"
        )
    if isinstance(eps, Tensor):
        if eps.dim() > 1:
            raise ValueError(f"eps tensor must be 0-d or 1-d, got shape {tuple(eps.shape)}")
        values: list[Any] = eps.flatten().tolist()
    elif isinstance(eps, numbers.Real) and not isinstance(eps, bool):
        values = [eps]
    elif isinstance(eps, Sequence) and not isinstance(eps, str | bytes):
        values = list(eps)
    else:
        raise TypeError(f"eps must be a number or a list of numbers, got {type(eps).__name__}")
    if not values:
        raise ValueError("eps list is empty; pass at least one budget")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"eps values must be numbers, got {v!r} ({type(v).__name__})")
        if not math.isfinite(v):
            raise ValueError(f"eps must be finite, got {v}")
        out.append(check_number("eps", v))
    return out


def is_scalar_eps(eps: EpsLike) -> bool:
    """True for one budget given as a number or a 0-d tensor (not a list)."""
    if isinstance(eps, Tensor):
        return eps.dim() == 0
    return isinstance(eps, numbers.Real)


def check_inputs(x: Tensor, y: Tensor, bounds: tuple[float, float], name: str = "y") -> Tensor:
    """Validate ``x`` and labels ``y``; return ``y`` as int64 on ``x``'s device.

    Raises:
        TypeError: Non-tensor or non-float ``x``; non-integer labels.
        ValueError: Wrong shapes, non-finite ``x`` or ``x`` outside ``bounds``.

    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"x must be a float tensor in {bounds}, got dtype {x.dtype}; divide uint8 images by 255"
        )
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch [N, ...], got shape {tuple(x.shape)}")
    x_min, x_max = (float(v) for v in torch.aminmax(x))  # one pass; NaN propagates to both
    if not (math.isfinite(x_min) and math.isfinite(x_max)):
        raise ValueError("x contains NaN or infinite values")
    lo, hi = bounds
    if x_min < lo - BOUNDS_TOL or x_max > hi + BOUNDS_TOL:
        raise ValueError(
            f"x has values in [{x_min:.4g}, {x_max:.4g}], outside the bounds ({lo}, {hi}). "
            "Pass unnormalised inputs in bounds and put normalisation inside the model "
            "(or set bounds= on the attack)."
        )
    return check_labels(y, x.shape[0], x.device, name)


def check_labels(y: Any, n: int, device: torch.device, name: str = "y") -> Tensor:
    """Return integer labels ``[n]`` as int64 on ``device``.

    Raises:
        TypeError: ``y`` is not a tensor of integers.
        ValueError: ``y`` does not have shape ``[n]``.

    """
    if not isinstance(y, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(y).__name__}")
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape [N] = [{n}], got {tuple(y.shape)}")
    return y.to(device=device, dtype=torch.long)


def check_ids(ids: Any, n: int, device: torch.device) -> Tensor:
    """Per-sample ids ``[n]`` as int64 on ``device``; ``None`` gives ``0..n-1``.

    Raises:
        TypeError: ``ids`` is not a tensor of integers.
        ValueError: Wrong shape or negative ids.

    """
    if ids is None:
        return torch.arange(n, device=device)
    ids = check_labels(ids, n, device, name="ids")
    if bool((ids < 0).any()):
        raise ValueError(f"ids must be >= 0 (sample indices), got min {int(ids.min())}")
    return ids


def check_logits(logits: Tensor, n: int, labels: Sequence[Tensor]) -> None:
    """Check the model's output is ``[N, C]`` finite logits and every label is a valid class.

    Raises:
        ValueError: Wrong shape, NaN/inf outputs, probabilities instead of logits, or labels
            outside ``[0, C)``.

    """
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != n:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"the model must return logits of shape [N, C] = [{n}, C], got {shape}")
    c = logits.shape[1]
    if c < 2:
        raise ValueError(f"the model must return at least 2 class logits, got {c}")
    if not torch.isfinite(logits).all():
        raise ValueError("the model returned NaN or infinite logits for the clean inputs")
    if looks_like_probabilities(logits):
        raise ValueError(
            "the model's outputs are non-negative and sum to 1 per row: they look like "
            "probabilities. Return logits (remove the final softmax)."
        )
    for y in labels:
        if bool((y < 0).any()) or bool((y >= c).any()):
            raise ValueError(
                f"labels must lie in [0, {c}), got values in [{int(y.min())}, {int(y.max())}]"
            )


def looks_like_probabilities(out: Tensor) -> bool:
    """True when every row of ``out`` ``[N, C]`` is non-negative and sums to 1 (a softmax).

    Attacks on probabilities saturate and overstate robustness, so callers refuse such outputs
    and ask for logits.
    """
    rows = out.sum(dim=1)
    return bool((out >= 0).all()) and torch.allclose(rows, torch.ones_like(rows), atol=1e-3)


__all__ = [
    "BOUNDS_TOL",
    "EpsLike",
    "check_bool",
    "check_bounds",
    "check_ids",
    "check_inputs",
    "check_labels",
    "check_logits",
    "check_number",
    "check_positive_int",
    "is_scalar_eps",
    "looks_like_probabilities",
    "parse_eps",
]
