"""Make a user's model obey the model contract: inputs in ``[0, 1]``, logits out.

Models found in the wild return dicts (``{"logits": ...}``), tuples, dataclasses or
HuggingFace-style output objects (``out.logits``), expect mean/std-normalised or 0-255 inputs.
:func:`wrap_model` turns such a model into one the attacks, curves, gates and the benchmark take:

    x in [0, 1] -> x * input_scale -> (x - mean) / std (per channel) -> model -> logits

The diagnosis the preflight and the input checks print names the ``wrap_model`` call that fixes
what they found (:func:`output_problem`, :func:`inputs_fix`).

Example:
    >>> net = HuggingFaceStyleNet()                     # forward returns an object with .logits
    >>> model = wrap_model(net, logits="logits", mean=(0.485, 0.456, 0.406),
    ...                    std=(0.229, 0.224, 0.225))
    >>> model(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 10])

References:
    Carlini et al., "On Evaluating Adversarial Robustness", arXiv:1902.06705, 2019 (preprocessing
    belongs inside the evaluated model, so attacks work in input units).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from attacks.validation import RangeDiagnosis, check_number
from robustbench_local.models.zoo import Normalize

LogitsSpec = str | int | Callable[[Any], Tensor] | None
KEPT_ATTRIBUTES = ("differentiable", "random", "num_classes", "input_shape")
"""Attributes of the wrapped model the wrapper declares too (when the wrapped model has them)."""


def _extract(out: Any, logits: LogitsSpec) -> Any:
    """The logits of one output: ``out[key]``, ``out.<name>``, ``out[index]`` or ``logits(out)``.

    Raises:
        ValueError: The key, attribute or index is not in the output (the message lists what is).
    """
    if logits is None:
        return out
    if callable(logits):
        return logits(out)
    if isinstance(logits, int):
        if isinstance(out, Sequence) and -len(out) <= logits < len(out):
            return out[logits]
    elif isinstance(out, Mapping) and logits in out:
        return out[logits]
    elif not isinstance(out, Mapping) and hasattr(out, logits):
        return getattr(out, logits)
    raise ValueError(
        f"wrap_model(logits={logits!r}) but the model returns {describe_output(out)}; pass "
        "logits= one of its keys, attributes or indices, or a function of the output"
    )


class WrappedModel(nn.Module):
    """A model in the contract's units: scale, normalise, forward, extract the logits.

    Build it with :func:`wrap_model`. Its state dict holds the wrapped model's under ``model.``
    and, with a mean and std, the statistics under ``normalize.``, so it round-trips into a
    wrapper built the same way.

    Attributes:
        model: The wrapped model.
        normalize: A :class:`~robustbench_local.models.zoo.Normalize` layer, or ``nn.Identity``.
        input_scale: Inputs are multiplied by this before the normalisation.
        logits: How the logits are read from the model's output (see :func:`wrap_model`).
    """

    def __init__(
        self, model: nn.Module, normalize: nn.Module, input_scale: float, logits: LogitsSpec
    ) -> None:
        super().__init__()
        self.model = model
        self.normalize = normalize
        self.input_scale = input_scale
        self.logits = logits
        for name in KEPT_ATTRIBUTES:
            if hasattr(model, name):
                setattr(self, name, getattr(model, name))
        self.train(model.training)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[N, C]`` for inputs ``x`` ``[N, C, H, W]`` in ``[0, 1]``."""
        if self.input_scale != 1.0:
            x = x * self.input_scale
        return _extract(self.model(self.normalize(x)), self.logits)

    def extra_repr(self) -> str:
        """Show the scale and the logits spec in ``repr(model)``."""
        return f"input_scale={self.input_scale:g}, logits={self.logits!r}"


def wrap_model(
    model: nn.Module,
    *,
    logits: LogitsSpec = None,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    input_scale: float = 1.0,
) -> WrappedModel:
    """Wrap ``model`` so that it takes inputs in ``[0, 1]`` and returns logits ``[N, C]``.

    Args:
        model: The user's model (an ``nn.Module``); its training mode is kept.
        logits: Where the logits are in the model's output: a dict key (``"logits"``), an
            attribute name (HuggingFace-style ``out.logits``, a dataclass field), a tuple index
            (``0``) or a function of the output; ``None`` when it already returns logits.
        mean: Per-channel means the model expects its inputs normalised with (in the units
            after ``input_scale``), e.g. ``(0.485, 0.456, 0.406)``; needs ``std``.
        std: Per-channel standard deviations, all positive; needs ``mean``.
        input_scale: Inputs are multiplied by this first: ``255.0`` for a model that expects
            0-255 pixel values.

    Returns:
        A :class:`WrappedModel` with the wrapped model's ``differentiable``, ``random``,
        ``num_classes`` and ``input_shape`` attributes when it declares them.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or ``logits`` is of another type.
        ValueError: Only one of ``mean``/``std``, mismatched lengths, a non-positive std or
            ``input_scale``.

    Example:
        >>> model = wrap_model(net, logits="logits", mean=(0.5,), std=(0.25,))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"wrap_model needs an nn.Module, got {type(model).__name__}; wrap a plain function "
            "in a Module whose forward calls it"
        )
    if logits is not None and not isinstance(logits, str | int) and not callable(logits):
        raise TypeError(
            "logits must be a dict key or attribute name (str), a tuple index (int) or a "
            f"function of the output, got {type(logits).__name__}"
        )
    if (mean is None) != (std is None):
        raise ValueError("pass both mean= and std= (per-channel normalisation), or neither")
    scale = check_number("input_scale", input_scale, low=0.0, low_open=True)
    normalize = nn.Identity() if mean is None else Normalize(mean, std)  # type: ignore[arg-type]
    return WrappedModel(model, normalize, scale, logits)


def describe_output(out: Any) -> str:
    """A short description of a model output, e.g. ``a dict with keys 'logits', 'hidden'``."""
    if isinstance(out, Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    if isinstance(out, Mapping):
        return f"a {type(out).__name__} with keys {', '.join(map(repr, out))}"
    if isinstance(out, tuple | list):
        return f"a {type(out).__name__} of {len(out)} items"
    fields = _attribute_names(out)
    if fields:
        return f"a {type(out).__name__} with attributes {', '.join(fields)}"
    return f"a {type(out).__name__}"


def _attribute_names(out: Any) -> list[str]:
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        return [f.name for f in dataclasses.fields(out)]
    return [k for k in vars(out) if not k.startswith("_")] if hasattr(out, "__dict__") else []


def _is_logits(t: Any) -> bool:
    return isinstance(t, Tensor) and t.dim() == 2 and t.shape[1] >= 2


def logits_location(out: Any) -> LogitsSpec:
    """Where the logits most likely are in a non-tensor output (``None`` if nowhere).

    A ``"logits"`` key or attribute first, then the first ``[N, C]`` tensor among the dict
    values, dataclass fields or attributes, or tuple items.
    """
    if isinstance(out, Mapping):
        if _is_logits(out.get("logits")):
            return "logits"
        return next((k for k, v in out.items() if isinstance(k, str) and _is_logits(v)), None)
    if isinstance(out, tuple | list):
        return next((i for i, v in enumerate(out) if _is_logits(v)), None)
    names = _attribute_names(out)
    if "logits" in names and _is_logits(out.logits):
        return "logits"
    return next((n for n in names if _is_logits(getattr(out, n))), None)


def output_problem(out: Any) -> tuple[str, str] | None:
    """What a non-tensor output is and the ``wrap_model`` call that extracts its logits.

    Returns:
        ``(problem, fix)``, e.g. ``("the model returns a dict with keys 'logits'",
        "wrap it: robustbench_local.wrap_model(model, logits='logits')")``; None for a tensor.
    """
    if isinstance(out, Tensor):
        return None
    where = logits_location(out)
    spec = (
        "<a function of the output returning the [N, C] logits>" if where is None else repr(where)
    )
    return (
        f"the model returns {describe_output(out)}",
        f"wrap it: robustbench_local.wrap_model(model, logits={spec})",
    )


def inputs_fix(diagnosis: RangeDiagnosis) -> str:
    """What to do about inputs outside the bounds, naming the ``wrap_model`` call that helps."""
    if diagnosis.kind == "pixels_255":
        return (
            "divide the inputs by 255; if the model expects 0-255 inputs, wrap it: "
            "robustbench_local.wrap_model(model, input_scale=255.0)"
        )
    if diagnosis.kind == "normalised":
        return (
            "pass the raw inputs in the bounds and move the normalisation into the model (a "
            "Normalize layer): robustbench_local.wrap_model(model, mean=(...), std=(...)) with "
            "the per-channel statistics the data was normalised with"
        )
    lo, hi = diagnosis.bounds
    return (
        f"pass inputs in [{lo}, {hi}] with the preprocessing inside the model (a Normalize "
        "layer: robustbench_local.wrap_model(model, mean=..., std=..., input_scale=...)), or "
        "set bounds= if the model's valid input range really is another"
    )


__all__ = [
    "KEPT_ATTRIBUTES",
    "LogitsSpec",
    "WrappedModel",
    "describe_output",
    "inputs_fix",
    "logits_location",
    "output_problem",
    "wrap_model",
]
