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
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

EpsLike = float | Sequence[float] | Tensor | None
BOUNDS_TOL = 1e-6
_NP_BOOLS = frozenset({"bool", "bool_"})  # numpy's boolean scalar (named bool in numpy 2)


class InputError(ValueError, TypeError):
    """Bad inputs or labels (a wrong dtype, shape or value range) given to an attack or evaluation.

    Both a ``ValueError`` and a ``TypeError``: entry points that catch ``ValueError`` and code
    written against the attacks' earlier ``TypeError`` for a wrong dtype both see it.
    """


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
        raise InputError(
            f"x must be a float tensor in {bounds}, got dtype {x.dtype}; divide uint8 images by 255"
        )
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch [N, ...], got shape {tuple(x.shape)}")
    x_min, x_max = (float(v) for v in torch.aminmax(x))  # one pass; NaN propagates to both
    if not (math.isfinite(x_min) and math.isfinite(x_max)):
        raise ValueError("x contains NaN or infinite values")
    lo, hi = bounds
    if x_min < lo - BOUNDS_TOL or x_max > hi + BOUNDS_TOL:
        found = diagnose_range(x, bounds)
        if found is not None:
            raise InputError(
                f"x has {found.problem()}. {found.fix()} (or set bounds= on the attack)."
            )
    return check_labels(y, x.shape[0], x.device, name)


@dataclass(frozen=True)
class RangeDiagnosis:
    """Inputs outside the bounds, and what they most likely are.

    Attributes:
        kind: ``"pixels_255"`` (0-255 pixel values), ``"normalised"`` (mean/std-normalised
            data: negative values, per-channel means near 0, stds near 1) or ``"other"``.
        x_min: The smallest input value.
        x_max: The largest input value.
        bounds: The valid input range.
        mean: Per-channel means of the inputs (one value for inputs that are not ``[N, C, H, W]``).
        std: Per-channel standard deviations.
    """

    kind: str
    x_min: float
    x_max: float
    bounds: tuple[float, float]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def problem(self) -> str:
        """What is wrong, e.g. ``values in [-2.1, 2.6], outside the bounds (0.0, 1.0)``."""
        lo, hi = self.bounds
        what = ""
        if self.kind == "pixels_255":
            what = ": they look like 0-255 pixel values"
        elif self.kind == "normalised":
            what = (
                f": they look mean/std-normalised (per-channel means {_fmt(self.mean)}, "
                f"stds {_fmt(self.std)})"
            )
        return (
            f"values in [{self.x_min:.4g}, {self.x_max:.4g}], outside the bounds ({lo}, {hi}){what}"
        )

    def fix(self) -> str:
        """What to do, in terms of the model contract (no package above ``attacks`` named)."""
        if self.kind == "pixels_255":
            return "Divide the inputs by 255 so that they lie in the bounds"
        return (
            "Pass unnormalised inputs in bounds and put normalisation inside the model "
            "(a first layer that subtracts the mean and divides by the std per channel)"
        )


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in values) + ")"


def diagnose_range(x: Tensor, bounds: tuple[float, float]) -> RangeDiagnosis | None:
    """None when every input lies in ``bounds``; else what the out-of-bounds inputs look like.

    Floats up to 255 on ``[0, 1]`` bounds look like pixel values; negative values with
    per-channel means near 0 and stds near 1 look like mean/std-normalised data.
    """
    lo, hi = (float(b) for b in bounds)
    x_min, x_max = (float(v) for v in torch.aminmax(x.detach()))
    if x_min >= lo - BOUNDS_TOL and x_max <= hi + BOUNDS_TOL:
        return None
    xd = x.detach().double()
    per = xd.transpose(0, 1).reshape(x.shape[1], -1) if x.dim() == 4 else xd.reshape(1, -1)
    mean = tuple(float(v) for v in per.mean(dim=1))
    std = tuple(float(v) for v in per.std(dim=1, unbiased=False))
    if x_min >= lo - BOUNDS_TOL and hi <= 1.0 + BOUNDS_TOL and 1.5 < x_max <= 255.0 + BOUNDS_TOL:
        kind = "pixels_255"
    elif x_min < lo and all(abs(m) < 1.5 for m in mean) and all(0.2 < s < 3.0 for s in std):
        kind = "normalised"
    else:
        kind = "other"
    return RangeDiagnosis(kind, x_min, x_max, (lo, hi), mean, std)


def check_labels(y: Any, n: int, device: torch.device, name: str = "y") -> Tensor:
    """Return integer labels ``[n]`` as int64 on ``device``.

    Raises:
        TypeError: ``y`` is not a tensor of integers.
        ValueError: ``y`` does not have shape ``[n]``.

    """
    if not isinstance(y, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(y).__name__}")
    problem = label_problem(y, n, name)
    if problem is not None:
        raise InputError(problem)
    return y.to(device=device, dtype=torch.long)


def label_problem(y: Tensor, n: int | None = None, name: str = "y") -> str | None:
    """Why ``y`` is not ``[n]`` integer class indices, with the fix; None when it is.

    One-hot (or probability) rows, booleans and float labels are named as such; float labels
    are never truncated (``3.7`` is not class 3). Ranges are checked against the model's
    outputs elsewhere (:func:`check_logits`).
    """
    if y.dim() == 2 and y.shape[1] >= 2 and (n is None or y.shape[0] == n) and _one_hot(y):
        return (
            f"{name} has shape {tuple(y.shape)}: one-hot rows (or probabilities), not integer "
            f"class indices; pass {name}.argmax(1)"
        )
    if y.dtype == torch.bool or y.is_complex():
        return f"{name} must hold integer class indices, got dtype {y.dtype}"
    if y.dtype.is_floating_point:
        frac = y[y != y.round()]
        if frac.numel():
            return (
                f"{name} must hold integer class indices, got dtype {y.dtype} with values such "
                f"as {float(frac[0]):g} that are not whole numbers; fix the labels (they are "
                "never truncated)"
            )
        return (
            f"{name} must hold integer class indices, got dtype {y.dtype} (whole numbers); "
            f"pass {name}.long()"
        )
    if n is not None and y.shape != (n,):
        return f"{name} must have shape [N] = [{n}], got {tuple(y.shape)}"
    return None


def _one_hot(y: Tensor) -> bool:
    """True when every row of ``y`` ``[N, C]`` is non-negative and sums to 1."""
    if y.is_complex() or y.numel() == 0:
        return False
    yd = y.detach().double()
    rows = yd.sum(dim=1)
    return bool((yd >= 0).all()) and torch.allclose(rows, torch.ones_like(rows), atol=1e-3)


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
    "InputError",
    "RangeDiagnosis",
    "check_bool",
    "check_bounds",
    "check_ids",
    "check_inputs",
    "check_labels",
    "check_logits",
    "check_number",
    "check_positive_int",
    "diagnose_range",
    "is_scalar_eps",
    "label_problem",
    "looks_like_probabilities",
    "parse_eps",
]
