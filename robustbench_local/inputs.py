"""The input checks every entry point runs: one clear error per mistake, the same everywhere.

The curves, the benchmark, the gates and the Hydra runs call :func:`check_eval_inputs` on
``(model, data, eps, norm, bounds)`` before any attack runs, and :func:`resolve_device` on a
``device=`` argument. The checks build on the attacks' own (:mod:`attacks.validation`: labels,
bounds, logits) so an attack called directly and an evaluation refuse the same inputs with the
same words, and add what only the evaluation sees: numpy arrays (converted, said once), the
dtype, layout and channel count the model takes (probed with one sample), the model's output
type (naming the :func:`~robustbench_local.models.wrap.wrap_model` call that fixes it) and eps
budgets in the wrong units (``eps=8`` on ``[0, 1]`` inputs: did you mean ``8/255``?).

Example:
    >>> checked = check_eval_inputs(model, (x, y), [1 / 255, 8 / 255], "linf")
    >>> checked.num_classes, checked.eps
    (10, [0.00392..., 0.0313...])

References:
    Carlini et al., "On Evaluating Adversarial Robustness", arXiv:1902.06705, 2019.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from attacks.context import model_guard
from attacks.threat import Norm
from attacks.validation import (
    EpsLike,
    InputError,
    check_bounds,
    diagnose_range,
    label_problem,
    parse_eps,
)
from defenses.data import DataLike, model_device
from robustbench_local.data.arrays import CHANNELS, to_tensor
from robustbench_local.models.wrap import inputs_fix, output_problem

logger = logging.getLogger(__name__)
CHECKED_SAMPLES = 128
"""A Dataset that is not a TensorDataset is checked on its first this many samples."""
_FORWARD_ERRORS = (RuntimeError, ValueError, TypeError, IndexError)


@dataclass(frozen=True)
class EvalInputs:
    """What :func:`check_eval_inputs` found and converted.

    Attributes:
        data: The data, numpy arrays converted to tensors (else as given).
        eps: The eps grid as floats.
        norm: The threat model's norm.
        num_classes: The number of logits the model returns.
        sample_shape: One input's shape, e.g. ``(1, 28, 28)``.
    """

    data: DataLike
    eps: list[float]
    norm: Norm
    num_classes: int
    sample_shape: tuple[int, ...]


def resolve_device(
    device: str | torch.device | None = None, model: nn.Module | None = None
) -> torch.device:
    """The device an entry point runs on, checked to exist here.

    Args:
        device: ``None`` (the model's device, else the CPU), ``"auto"`` (CUDA when available),
            or a device such as ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
        model: The model whose device ``None`` means.

    Raises:
        ValueError: Not a device, or a device this machine does not have (CUDA on a CPU-only
            build or with no GPU visible, a GPU index beyond the count, MPS off a Mac).
    """
    if device is None:
        return model_device(model) if model is not None else torch.device("cpu")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"device={device!r} is not a device ({err}); use 'cpu', 'cuda', 'cuda:1' or 'auto'"
        ) from err
    _check_available(dev, device)
    return dev


def _check_available(dev: torch.device, spec: Any) -> None:
    """Raise unless ``dev`` exists on this machine."""
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={spec!r} but CUDA is not available here (a CPU-only PyTorch build, or "
                "no GPU visible: check CUDA_VISIBLE_DEVICES); use device='cpu' or 'auto'"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(
                f"device={spec!r} but {count} CUDA device(s) are visible: use cuda:0 to "
                f"cuda:{count - 1}, or 'auto'"
            )
        return
    backend = torch.backends.mps if dev.type == "mps" else getattr(torch, dev.type, None)
    available: Callable[[], bool] | None = getattr(backend, "is_available", None)
    if dev.type != "cpu" and available is not None and not available():
        raise ValueError(f"device={spec!r} is not available here; use device='cpu' or 'auto'")


def as_eval_data(data: Any) -> DataLike:
    """The data as tensors: ``(x, y)`` numpy arrays converted (said once), Datasets kept.

    Raises:
        TypeError: Neither an ``(x, y)`` pair nor a Dataset.
        InputError: ``x`` and ``y`` of different lengths, or arrays that are not numeric.
    """
    if isinstance(data, Dataset):
        return data
    if not isinstance(data, tuple | list) or len(data) != 2:
        raise TypeError(
            "data must be an (x, y) pair of tensors or numpy arrays, or a Dataset of (x, y) "
            f"pairs, got {type(data).__name__}"
        )
    if any(isinstance(a, np.ndarray) for a in data):
        logger.info("numpy arrays x, y converted to tensors (dtypes kept)")
    x, y = to_tensor(data[0], "x"), to_tensor(data[1], "y")
    if x.dim() == 0 or y.dim() == 0 or x.shape[0] != y.shape[0]:
        raise InputError(
            f"x has shape {tuple(x.shape)} but y {tuple(y.shape)}: pass one label per input "
            "(x [N, C, H, W], y [N])"
        )
    return x, y


def _checked_part(data: DataLike, limit: int | None = CHECKED_SAMPLES) -> tuple[Tensor, Tensor]:
    """A tensor pair whole, or another Dataset's first ``limit`` samples (None: all), uncast."""
    if isinstance(data, tuple | list):
        return data[0], data[1]
    if isinstance(data, TensorDataset) and len(data.tensors) >= 2:
        return data.tensors[0], data.tensors[1]
    n = len(data) if limit is None else min(len(data), limit)  # type: ignore[arg-type]
    if n == 0:
        raise InputError("the dataset is empty")
    items = [data[i] for i in range(n)]
    x = torch.stack([to_tensor(it[0], "x") for it in items])
    return x, torch.stack([to_tensor(it[1], "y").reshape(()) for it in items])


def eval_tensors(data: Any) -> tuple[Tensor, Tensor]:
    """Every sample of ``data`` as ``(x, y)`` tensors, dtypes kept (labels never cast).

    What an entry point that selects samples itself (the gates) or digests the data (the
    benchmark's cards) reads: numpy arrays converted as :func:`as_eval_data` does, a Dataset
    other than a TensorDataset read item by item, so that :func:`check_eval_inputs` still sees
    uint8 images or float labels as they are.

    Raises:
        TypeError: Neither an ``(x, y)`` pair nor a Dataset.
        InputError: Mismatched lengths, non-numeric arrays or an empty Dataset.
    """
    return _checked_part(as_eval_data(data), limit=None)


def check_images(x: Tensor, model: nn.Module) -> None:
    """Raise unless ``x`` has a float dtype the model computes in.

    Raises:
        InputError: uint8 or other integer images (divide by 255), booleans, or a float dtype
            other than the model's (e.g. float64 inputs for a float32 model).
    """
    if not x.is_floating_point():
        raise InputError(
            f"x has dtype {x.dtype}: images must be floats in [0, 1]; pass x.float() / 255 "
            "for 8-bit images (robustbench_local.load_dataset scales them when it reads files)"
        )
    want = next((p.dtype for p in _tensors(model) if p.is_floating_point()), None)
    if want is not None and x.dtype != want:
        cast = "x.float()" if want == torch.float32 else f"x.to({want})"
        numpy = ""
        if x.dtype == torch.float64:
            numpy = " (numpy arrays default to float64: x.astype(np.float32))"
        raise InputError(
            f"x has dtype {x.dtype} but the model computes in {want}: pass {cast}{numpy}"
        )


def _tensors(model: Any) -> list[Tensor]:
    if not isinstance(model, nn.Module):
        return []
    return [*model.parameters(), *model.buffers()]


def check_labels(y: Tensor, n: int, num_classes: int | None = None) -> None:
    """Raise unless ``y`` holds ``n`` integer class indices in ``[0, num_classes)``.

    Raises:
        InputError: Float labels (never truncated: 3.7 is not class 3), one-hot rows, a wrong
            shape, negative labels, or labels the model has no output for.
    """
    problem = label_problem(y, n)
    if problem is not None:
        raise InputError(problem)
    if not y.numel():
        return
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or (num_classes is not None and hi >= num_classes):
        classes = f"the model has {num_classes} outputs" if num_classes else "labels are >= 0"
        raise InputError(
            f"labels span [{lo}, {hi}] but {classes}: labels must be class indices 0..C-1; "
            "check that the data and the model have the same classes"
        )


def _works(model: Any, x: Tensor) -> bool:
    """Whether the model runs on ``x`` (one input) and answers for one input."""
    try:
        out = _forward(model, x)
    except _FORWARD_ERRORS:
        return False
    return not isinstance(out, Tensor) or (out.dim() >= 1 and out.shape[0] == 1)


def _layout_fix(model: Any, x1: Tensor) -> str | None:
    """Which reshaping of one input ``[1, ...]`` the model takes, as advice; None if none."""
    if x1.dim() == 3 and _works(model, x1.unsqueeze(1)):
        return "it has no channel dimension: pass x.unsqueeze(1) ([N, 1, H, W])"
    if x1.dim() == 4 and x1.shape[-1] in CHANNELS and _works(model, x1.permute(0, 3, 1, 2)):
        return "it is channels-last [N, H, W, C]: pass x.permute(0, 3, 1, 2)"
    return None


def _channel_fix(model: Any, x1: Tensor) -> str | None:
    """Advice when the first convolution takes another channel count than ``x1`` has."""
    conv = next((m for m in _modules(model) if isinstance(m, nn.Conv2d)), None)
    if conv is None or x1.dim() != 4 or x1.shape[1] == conv.in_channels:
        return None
    c, want = x1.shape[1], conv.in_channels
    convert = "x.mean(1, keepdim=True)" if want == 1 else f"x.expand(-1, {want}, -1, -1)"
    return (
        f"x has {c} channels but the model's first convolution takes {want}: convert the "
        f"images ({convert}) or use a model made for {c}-channel inputs"
    )


def _modules(model: Any) -> list[nn.Module]:
    return list(model.modules()) if isinstance(model, nn.Module) else []


def _forward(model: Any, x: Tensor) -> Any:
    with model_guard(model, eval_mode=True), torch.no_grad():
        return model(x)


def probe_model(model: Any, x: Tensor) -> Tensor:
    """The model's logits on the first input of ``x`` (in eval mode, model left as it came).

    Raises:
        InputError: The model fails on the input (the message names the layout or channel
            fix when one works) or returns something else than ``[1, C]`` logits (the message
            names the ``wrap_model`` call that extracts them).
    """
    x1 = x[:1].to(model_device(model))
    declared = getattr(model, "input_shape", None)
    if declared is not None and tuple(x1.shape[1:]) != tuple(declared):
        fix = _layout_fix(model, x1) or f"pass inputs of shape [N, {', '.join(map(str, declared))}]"
        raise InputError(
            f"x has shape {tuple(x.shape)} but the model takes [N, "
            f"{', '.join(map(str, declared))}]: {fix}"
        )
    if x1.dim() == 3:  # [N, H, W]: the contract's [N, C, H, W] lacks C
        fix = _layout_fix(model, x1)
        if fix is not None:
            raise InputError(f"x has shape {tuple(x.shape)}: {fix}")
    try:
        out = _forward(model, x1)
    except _FORWARD_ERRORS as err:
        fix = _layout_fix(model, x1) or _channel_fix(model, x1)
        if fix is None:
            fix = f"the model must take float [N, C, H, W] inputs in bounds. ({err})"
        raise InputError(
            f"the model fails on one input of x (shape {tuple(x1.shape)}): {fix}"
        ) from err
    wrap = output_problem(out)
    if wrap is not None:
        raise InputError(f"{wrap[0]}, not logits [N, C]: {wrap[1]}")
    if out.dim() != 2 or out.shape[0] != 1 or out.shape[1] < 2:
        raise InputError(
            f"the model returns shape {tuple(out.shape)} for one input; it must return class "
            "logits [N, C] with C >= 2"
        )
    return out


def check_eps_scale(
    eps: Sequence[float], norm: str | Norm, bounds: tuple[float, float], shape: Sequence[int]
) -> None:
    """Refuse budgets that cover the whole input domain (eps in the wrong units).

    A linf eps at least the bounds' width, or an l2 (l1) eps beyond the largest l2 (l1)
    distance between two inputs of ``shape``, lets an attack reach any input: every sample
    breaks and the curve says nothing. It is usually a budget in 0-255 units.

    Raises:
        InputError: Such an eps; the message suggests the budgets divided by 255.
    """
    norm = Norm.parse(norm)
    lo, hi = bounds
    width, d = hi - lo, math.prod(shape)
    diameter = {Norm.LINF: width, Norm.L2: width * math.sqrt(d), Norm.L1: width * d}[norm]
    bad = [e for e in eps if (e >= diameter if norm is Norm.LINF else e > diameter)]
    if not bad:
        return
    grid = ", ".join(_num(e) for e in eps)
    what = f"eps={_num(bad[0])}" if len(eps) == 1 else f"the eps grid [{grid}]"
    reach = (
        f"an linf budget >= {_num(width)} lets every input value change freely"
        if norm is Norm.LINF
        else f"the largest {norm.value} distance between two inputs of shape {tuple(shape)} is "
        f"{diameter:.4g}"
    )
    scaled = [f"{_num(e)}/255" for e in eps]
    guess = scaled[0] if len(eps) == 1 else f"[{', '.join(scaled)}]"
    raise InputError(
        f"{what} on inputs in [{_num(lo)}, {_num(hi)}]: {reach}, so every sample breaks. "
        f"Did you mean {guess}? Budgets are in input units (8/255 on 8-bit images)"
    )


def _num(v: float) -> str:
    return f"{v:g}"


def check_eval_inputs(
    model: nn.Module,
    data: Any,
    eps: EpsLike,
    norm: str | Norm = Norm.LINF,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> EvalInputs:
    """Check a model, its data and an eps grid before an evaluation; convert numpy arrays.

    Runs, in order: the data as tensors (:func:`as_eval_data`), the image dtype
    (:func:`check_images`), the labels' type and shape, one forward pass (:func:`probe_model`:
    layout, channels, output type), the labels against the model's classes, the inputs'
    range (mean/std-normalised or 0-255 data named as such) and the eps units
    (:func:`check_eps_scale`). A Dataset other than a TensorDataset is checked on its first
    :data:`CHECKED_SAMPLES` samples.

    Args:
        model: The classifier (inputs in ``bounds``, logits out).
        data: ``(x, y)`` tensors or numpy arrays, or a Dataset of ``(x, y)`` pairs.
        eps: A budget or a grid, in input units.
        norm: The threat model's norm (``"linf"``, ``"l2"``, ``"l1"``).
        bounds: The valid input range.

    Returns:
        :class:`EvalInputs`: the data as tensors, the eps grid, the norm, the model's number
        of classes and the input shape.

    Raises:
        InputError: (a ``ValueError``) for each mistake above, saying what to do.
        TypeError: ``data`` is neither a pair nor a Dataset.
    """
    bounds = check_bounds(bounds)
    grid = parse_eps(eps) or []
    norm = Norm.parse(norm)
    data = as_eval_data(data)
    x, y = _checked_part(data)
    check_images(x, model)
    check_labels(y, x.shape[0])
    out = probe_model(model, x)
    num_classes = int(out.shape[1])
    check_labels(y, x.shape[0], num_classes)
    found = diagnose_range(x, bounds)
    if found is not None:
        raise InputError(f"x has {found.problem()}: {inputs_fix(found)}")
    check_eps_scale(grid, norm, bounds, x.shape[1:])
    return EvalInputs(data, grid, norm, num_classes, tuple(x.shape[1:]))


__all__ = [
    "CHECKED_SAMPLES",
    "EvalInputs",
    "as_eval_data",
    "check_eps_scale",
    "check_eval_inputs",
    "check_images",
    "check_labels",
    "eval_tensors",
    "probe_model",
    "resolve_device",
]
