"""Straight-through gradients for rounding-like operations hidden in a model's own ``forward``.

A model that rounds, floors, binarises or quantises its input inside ``forward`` (``x =
torch.round(x * 4) / 4``, ``(x > 0.5).float()``, ``(x * 255).byte().float() / 255``,
``torch.quantize_per_tensor(...).dequantize()``) has a zero (or no) input gradient almost
everywhere, so every gradient-based attack is blind, whether or not the model declares it.
:class:`StraightThrough` wraps such a model: its forward pass is the model's, bitwise, and in the
backward pass each of those operations acts as the identity on its input (the straight-through
estimator of Bengio et al. 2013; BPDA with the identity surrogate of Athalye et al. 2018). It
needs no cooperation from the model: a :class:`torch.overrides.TorchFunctionMode` intercepts the
operations while the model runs and replaces each result by the same values carrying the
surrogate gradient.

Swapped operations (only where an input carries a gradient, i.e. depends on the attacked input;
the swap is off under ``torch.no_grad``):

* ``round``, ``floor``, ``ceil``, ``trunc``, ``fix``, ``sign``, ``sgn``: backward = identity;
* ``a // b``, ``floor_divide``, ``div(..., rounding_mode=...)``: backward of ``a / b``;
* comparisons ``>``, ``>=``, ``<``, ``<=`` whose boolean result is cast to float (``.float()``,
  ``.to(dtype)``, ``.type_as``), used in float arithmetic (``(x > t) * 1.0``) or selects between
  two constants (``torch.where(x > t, 1.0, 0.0)``): the step acts as ``a - b`` (``b - a`` for
  ``<``), i.e. the identity for a threshold ``(x > t)``; a ``torch.where`` whose branches carry
  gradients (a gate) is left alone, its gradient flows through the branches;
* casts of a float to an integer dtype (``.byte()``, ``.to(torch.uint8)``, ``.long()``) that are
  cast back or used in float arithmetic: backward = identity (the name reported is ``int_cast``);
* ``quantize_per_tensor`` / ``quantize_per_channel`` followed by ``dequantize``: identity.

Not swapped: ``clamp``/``clip`` (its zero gradient outside the range is the truth: the output
really does not move there), ``fake_quantize_per_*`` (torch already gives it a straight-through
gradient inside the range), in-place variants (``x.round_()``, whose result cannot be replaced),
``detach`` and ``torch.no_grad`` blocks inside ``forward``, and rounding-like steps that are not
torch operations (NumPy, PIL).

Example:
    >>> find_rounding_ops(model, x)
    ['round']
    >>> res = attacks.create("apgd_ce")(straight_through_model(model), x, y, eps=0.3)

References:
    Bengio, Leonard & Courville, "Estimating or Propagating Gradients Through Stochastic
    Neurons for Conditional Computation", arXiv:1308.3432, 2013.
    Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security:
    Circumventing Defenses to Adversarial Examples", ICML 2018, Section 4.1 (BPDA).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from attacks.adaptive import EOT
from attacks.context import model_guard
from attacks.validation import check_positive_int

_ROUNDING = frozenset({"round", "floor", "ceil", "trunc", "fix", "sign", "sgn"})
_FLOOR_DIVIDE = frozenset({"floor_divide", "__floordiv__", "__rfloordiv__"})
_DIVIDE = frozenset({"div", "divide", "__truediv__", "__rtruediv__", "true_divide"})
_COMPARE = {
    "gt": 1,
    "__gt__": 1,
    "greater": 1,
    "ge": 1,
    "__ge__": 1,
    "greater_equal": 1,
    "lt": -1,
    "__lt__": -1,
    "less": -1,
    "le": -1,
    "__le__": -1,
    "less_equal": -1,
}
_CASTS = frozenset(
    {"float", "double", "half", "bfloat16", "to", "type", "type_as", "int", "long", "short"}
    | {"byte", "char", "clone", "contiguous", "view", "reshape", "flatten", "expand", "expand_as"}
)
_ARITHMETIC = frozenset(
    {"mul", "multiply", "__mul__", "__rmul__", "add", "__add__", "__radd__", "sub", "subtract"}
    | {"__sub__", "__rsub__", "rsub"}
    | _DIVIDE
)
_QUANTIZE = frozenset({"quantize_per_tensor", "quantize_per_channel"})


class _Straight(torch.autograd.Function):
    """Forward: ``value`` exactly (a copy); backward: the gradient goes to ``surrogate``."""

    @staticmethod
    def forward(ctx: Any, surrogate: Tensor, value: Tensor) -> Tensor:
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def _straight(value: Tensor, surrogate: Tensor) -> Tensor:
    """``value`` in the forward pass, ``surrogate``'s gradient in the backward pass."""
    surrogate = torch.broadcast_to(surrogate.to(value.dtype), value.shape)
    return _Straight.apply(surrogate, value)


def _tracks(t: Any) -> bool:
    """A float tensor that carries a gradient (depends on the attacked input)."""
    return isinstance(t, Tensor) and t.requires_grad and t.is_floating_point()


def _flat(args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[Any]:
    return [*args, *kwargs.values()]


class _Pending:
    """A non-float tensor (bool, int, quantised) whose float value is a rounding of a surrogate.

    Kept by identity (with a weak reference, so a recycled ``id`` is never mistaken for it)
    for the lifetime of one :class:`StraightThroughMode`.
    """

    __slots__ = ("name", "ref", "surrogate")

    def __init__(self, tensor: Tensor, surrogate: Tensor, name: str) -> None:
        self.ref = weakref.ref(tensor)
        self.surrogate = surrogate
        self.name = name


class StraightThroughMode(TorchFunctionMode):
    """Swap rounding-like torch operations for straight-through versions while active.

    Forward values are unchanged bitwise; see the module docstring for the operations and
    their surrogates. ``found`` lists the names of the operations that were swapped, in the
    order first seen.
    """

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._pending: dict[int, _Pending] = {}
        self._handlers: dict[str, Callable[..., Any]] = {
            **dict.fromkeys(_ROUNDING, self._rounding),
            **dict.fromkeys(_FLOOR_DIVIDE, self._floor_divide),
            **dict.fromkeys(_COMPARE, self._compare),
            **dict.fromkeys(_QUANTIZE, self._quantize),
            "dequantize": self._dequantize,
            "where": self._where,
        }

    def __exit__(self, *exc: Any) -> Any:
        self._pending.clear()
        return super().__exit__(*exc)

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        """Run ``func``; where it is rounding-like and differentiated, return the STE version."""
        kwargs = kwargs or {}
        if not torch.is_grad_enabled():
            return func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        handler = self._handlers.get(name)
        if handler is None and name in _DIVIDE and kwargs.get("rounding_mode") is not None:
            handler = self._floor_divide
        if handler is not None:
            return handler(func, name, args, kwargs)
        out = func(*args, **kwargs)
        if name not in _CASTS and name not in _ARITHMETIC:
            return out
        if self._pending:
            resolved = self._resolve(func, name, args, kwargs, out)
            if resolved is not out:
                return resolved
        if name in _CASTS and _is_integer(out) and args and _tracks(args[0]):
            self._remember(out, args[0], "int_cast")
        return out

    def _note(self, name: str) -> None:
        name = name.strip("_")
        if name not in self.found:
            self.found.append(name)

    def _remember(self, out: Any, surrogate: Tensor, name: str) -> None:
        if isinstance(out, Tensor):
            self._pending[id(out)] = _Pending(out, surrogate, name)

    def _lookup(self, t: Any) -> _Pending | None:
        if not isinstance(t, Tensor):
            return None
        entry = self._pending.get(id(t))
        return entry if entry is not None and entry.ref() is t else None

    def _rounding(self, func: Callable[..., Any], name: str, args: Sequence[Any], kwargs: Any):
        x = args[0] if args else kwargs.get("input")
        if not _tracks(x):
            return func(*args, **kwargs)
        out = _value(func, args, kwargs)
        if not (isinstance(out, Tensor) and out.is_floating_point()):
            return out
        self._note(name)
        return _straight(out, x)

    def _floor_divide(self, func: Callable[..., Any], name: str, args: Sequence[Any], kwargs: Any):
        a, b = args[0], args[1] if len(args) > 1 else kwargs.get("other")
        if name == "__rfloordiv__":
            a, b = b, a
        if not any(_tracks(t) for t in (a, b)):
            return func(*args, **kwargs)
        out = _value(func, args, kwargs)  # torch has no derivative for floor_divide
        if not (isinstance(out, Tensor) and out.is_floating_point()):
            return out
        self._note("floor_divide" if "floordiv" in name or name == "floor_divide" else "div")
        return _straight(out, torch.true_divide(a, b))

    def _compare(self, func: Callable[..., Any], name: str, args: Sequence[Any], kwargs: Any):
        out = func(*args, **kwargs)
        a, b = args[0], args[1] if len(args) > 1 else kwargs.get("other")
        if any(_tracks(t) for t in (a, b)) and isinstance(out, Tensor):
            diff = torch.sub(torch.as_tensor(a), b)
            self._remember(out, diff if _COMPARE[name] > 0 else -diff, name)
        return out

    def _quantize(self, func: Callable[..., Any], name: str, args: Sequence[Any], kwargs: Any):
        x = args[0] if args else kwargs.get("input")
        if not _tracks(x):
            return func(*args, **kwargs)
        out = func(x.detach(), *args[1:], **kwargs)
        self._remember(out, x, name)
        return out

    def _dequantize(self, func: Callable[..., Any], name: str, args: Sequence[Any], kwargs: Any):
        out = _value(func, args, kwargs)
        entry = self._lookup(args[0] if args else None)
        if entry is None or not isinstance(out, Tensor):
            return out
        self._note(entry.name)
        return _straight(out, entry.surrogate)

    def _where(self, func: Callable[..., Any], name: str, args: Sequence[Any], kwargs: Any):
        out = func(*args, **kwargs)
        cond = args[0] if args else kwargs.get("condition")
        entry = self._lookup(cond)
        branches = [*args[1:3], kwargs.get("input"), kwargs.get("other")]
        if (
            entry is None
            or not (isinstance(out, Tensor) and out.is_floating_point())
            or any(_tracks(t) for t in branches)
        ):
            return out
        a, b = (args[1], args[2]) if len(args) == 3 else (kwargs["input"], kwargs["other"])
        self._note(entry.name)
        c = _straight(cond.to(out.dtype), entry.surrogate)
        return _straight(out, c * a + (1 - c) * b)

    def _resolve(
        self, func: Callable[..., Any], name: str, args: Sequence[Any], kwargs: Any, out: Any
    ) -> Any:
        """A cast of, or arithmetic on, pending tensors: give the result their surrogates.

        A float result is returned as the same values carrying the gradient of ``func`` on the
        straight-through float versions of the pending tensors; a non-float result (a boolean
        moved or reshaped, integer arithmetic) stays pending, with ``func`` applied to the
        surrogates as its own surrogate. Returns ``out`` itself when no argument is pending.
        """
        entries = {id(t): e for t in _flat(args, kwargs) if (e := self._lookup(t)) is not None}
        if not entries or not isinstance(out, Tensor):
            return out
        if out.is_floating_point():
            swap = {
                i: _straight(e.ref().to(out.dtype), e.surrogate)  # type: ignore[union-attr]
                for i, e in entries.items()
            }
            for e in entries.values():
                self._note(e.name)
        elif name in _CASTS:
            first = entries.get(id(args[0])) if args else None
            if first is not None:
                self._remember(out, first.surrogate, first.name)
            return out
        else:
            swap = {i: e.surrogate for i, e in entries.items()}
        new_args = [swap.get(id(a), a) for a in args]
        new_kwargs = {k: swap.get(id(v), v) for k, v in kwargs.items()}
        value = func(*new_args, **new_kwargs)
        if out.is_floating_point():
            return _straight(out, value)
        names = sorted({e.name for e in entries.values()})
        self._remember(out, value, names[0])
        return out


def _value(func: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
    """``func``'s result without a graph (its own gradient is replaced)."""
    with torch.no_grad():
        return func(*args, **kwargs)


def _is_integer(t: Any) -> bool:
    return isinstance(t, Tensor) and not t.is_floating_point() and not t.is_complex()


def find_rounding_ops(model: nn.Module, x: Tensor) -> list[str]:
    """Names of the rounding-like ops the model's forward calls on x (empty if none).

    The model runs once in eval mode with its parameters frozen (restored afterwards) and a
    gradient on ``x``, so only operations on tensors that depend on ``x`` count (rounding a
    weight or a constant buffer does not). The names are those of :class:`StraightThroughMode`
    (``"round"``, ``"floor"``, ``"floor_divide"``, ``"sign"``, ``"gt"``, ``"int_cast"``,
    ``"quantize_per_tensor"``...), each once, in the order first called.

    Args:
        model: The classifier.
        x: ``[N, ...]`` inputs (a few samples are enough).

    Raises:
        TypeError: ``x`` is not a floating-point tensor.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError("find_rounding_ops needs a float tensor x [N, ...]")
    mode = StraightThroughMode()
    with model_guard(model, eval_mode=True):
        xg = x.detach().clone().requires_grad_(True)
        with mode:
            model(xg)
    return list(mode.found)


class StraightThrough(nn.Module):
    """A model whose hidden rounding-like operations get straight-through gradients.

    ``forward(x)`` returns exactly ``model(x)`` (bitwise); in the backward pass every operation
    listed in the module docstring acts as the identity (or ``a / b`` for floor division), so
    gradient-based attacks see through the rounding. Operations with a meaningful gradient are
    untouched, so on a model without such operations the gradients are the model's own.

    Args:
        model: Any classifier (declared differentiable or not).

    Attributes:
        model: The wrapped model.
        differentiable: True.
        random: The wrapped model's declared ``random`` flag.

    References:
        Bengio, Leonard & Courville, arXiv:1308.3432, 2013; Athalye, Carlini & Wagner, ICML 2018,
        Section 4.1.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"StraightThrough wraps an nn.Module, got {type(model).__name__}")
        self.model = model
        self.differentiable = True
        self.random = bool(getattr(model, "random", False))

    def forward(self, x: Tensor) -> Tensor:
        """The model's logits, with straight-through gradients for rounding-like operations."""
        with StraightThroughMode():
            return self.model(x)


def straight_through_model(
    model: nn.Module, eot_samples: int = 8, *, random: bool | None = None
) -> nn.Module:
    """StraightThrough(model), inside EOT when the model's forward pass is random.

    Args:
        model: The classifier.
        eot_samples: Draws averaged per forward pass by EOT (default 8).
        random: Whether the forward pass is random (default: the model's declared ``random``
            flag; pass the result of a check, e.g. two forward passes that differ, for a model
            that does not declare it).

    Raises:
        ValueError: ``eot_samples`` is not a positive integer.
    """
    check_positive_int("EOT samples", eot_samples)
    ste = StraightThrough(model)
    is_random = ste.random if random is None else bool(random)
    return EOT(ste, samples=eot_samples) if is_random else ste


__all__ = ["StraightThrough", "StraightThroughMode", "find_rounding_ops", "straight_through_model"]
