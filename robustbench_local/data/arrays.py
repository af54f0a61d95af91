"""User arrays into the project's data layout: float32 ``[N, C, H, W]`` in ``[0, 1]``, int64 labels.

Images arrive as numpy arrays or tensors, 8-bit or float, channels-first or channels-last, with
or without a channel dimension. :func:`standard_images` turns them into the one layout every
model and attack takes, and records each conversion as a note (the caller logs the notes once);
:func:`standard_labels` accepts integer class indices only (a float label such as ``3.7`` is
never truncated). What cannot be converted safely (floats in 0-255, normalised data, labels
that are not integers, mismatched lengths) is a ``ValueError`` that says what to store instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from attacks.validation import InputError, diagnose_range, label_problem
from robustbench_local.data.specs import DatasetInfo

CHANNELS = (1, 3, 4)
"""Channel counts an image layout may have (grey, RGB, RGBA)."""


class Notes:
    """The conversions applied while reading one data spec, each said once.

    Attributes:
        items: The conversions, in order, without repeats.
        from_uint8: Whether 8-bit (0-255) images were scaled to ``[0, 1]``.
    """

    def __init__(self) -> None:
        self.items: list[str] = []
        self.from_uint8 = False

    def add(self, note: str) -> None:
        """Record ``note`` unless it was recorded already."""
        if note not in self.items:
            self.items.append(note)

    def __str__(self) -> str:
        return "; ".join(self.items)


def to_tensor(a: Any, name: str) -> Tensor:
    """A tensor of ``a`` (numpy arrays and sequences are converted, keeping their dtype).

    Raises:
        InputError: ``a`` holds Python objects or is not array-like.
    """
    if isinstance(a, Tensor):
        return a
    arr = np.asarray(a)
    if arr.dtype == object or arr.dtype.kind in "USV":
        raise InputError(
            f"{name} is not a numeric array (dtype {arr.dtype}); pass numbers (images as uint8 "
            "or floats in [0, 1], labels as integers)"
        )
    if arr.dtype == np.uint16 or arr.dtype == np.uint32 or arr.dtype == np.uint64:
        arr = arr.astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(arr))


def _scaled_to_unit(x: Tensor, name: str, notes: Notes) -> Tensor:
    """Float32 values in ``[0, 1]``: 8-bit images divided by 255, floats checked."""
    if x.dtype == torch.bool or x.is_complex():
        raise InputError(f"{name} has dtype {x.dtype}; store images as uint8 or floats in [0, 1]")
    if not x.is_floating_point():
        lo, hi = (int(v) for v in torch.aminmax(x)) if x.numel() else (0, 0)
        if lo < 0 or hi > 255:
            raise InputError(
                f"{name} holds integers in [{lo}, {hi}], not 8-bit pixel values; store images "
                "as uint8 (0-255) or floats in [0, 1]"
            )
        notes.add(f"{x.dtype} images scaled from 0-255 to [0, 1]".replace("torch.", ""))
        notes.from_uint8 = True
        return x.to(torch.float32).div_(255.0)
    if x.dtype != torch.float32:
        notes.add(f"{x.dtype} images converted to float32".replace("torch.", ""))
        x = x.to(torch.float32)
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise InputError(f"{name} contains NaN or infinite values; clean the data")
    found = diagnose_range(x, (0.0, 1.0)) if x.numel() else None
    if found is not None:
        fix = (
            "divide them by 255 (or store uint8 images)"
            if found.kind == "pixels_255"
            else "store the raw images in [0, 1]: normalisation belongs inside the model "
            "(robustbench_local.wrap_model(model, mean=..., std=...))"
        )
        raise InputError(f"{name} has {found.problem()}; {fix}")
    return x


def _channels_first(x: Tensor, name: str, layout: str, notes: Notes) -> Tensor:
    """``[N, C, H, W]`` from ``[N, H, W]``, ``[N, C, H, W]`` or ``[N, H, W, C]``."""
    if x.dim() == 3:
        notes.add("a channel dimension added ([N, H, W] -> [N, 1, H, W])")
        return x.unsqueeze(1)
    if x.dim() != 4:
        raise InputError(
            f"{name} has shape {tuple(x.shape)}; images must be [N, H, W], [N, C, H, W] or "
            "[N, H, W, C]"
        )
    last = layout == "nhwc" or (
        layout == "auto" and x.shape[-1] in CHANNELS and x.shape[1] not in CHANNELS
    )
    if last:
        if layout == "auto":
            notes.add("channels-last images laid out as [N, C, H, W]")
        return x.permute(0, 3, 1, 2).contiguous()
    return x


def standard_images(x: Any, name: str, notes: Notes, layout: str = "auto") -> Tensor:
    """Images as float32 ``[N, C, H, W]`` in ``[0, 1]``; each conversion recorded in ``notes``.

    Args:
        x: ``[N, H, W]``, ``[N, C, H, W]`` or ``[N, H, W, C]`` images (array or tensor), uint8
            (or integer 0-255) or float in ``[0, 1]``.
        name: What ``x`` is called in messages (``"x_train"``, a file name).
        notes: Collects the conversions (uint8 scaling, float64, layout, channel dimension).
        layout: ``"auto"`` (channels-last when the last dimension is 1, 3 or 4 and the second
            is not) or ``"nhwc"`` (known to be channels-last).

    Raises:
        InputError: A dtype or shape that is not an image batch, floats outside ``[0, 1]``
            (0-255 values or normalised data), NaN or infinite values.
    """
    t = to_tensor(x, name)
    if t.dim() < 1 or t.shape[0] == 0:
        raise InputError(f"{name} is empty (shape {tuple(t.shape)}); it needs at least one image")
    return _channels_first(_scaled_to_unit(t, name, notes), name, layout, notes)


def standard_labels(y: Any, n: int, name: str) -> Tensor:
    """Integer class indices ``[n]`` as int64.

    Raises:
        InputError: Not ``n`` labels, float labels (never truncated), one-hot rows, or
            negative values.
    """
    t = to_tensor(y, name)
    if t.dim() == 1 and t.shape[0] != n:
        raise InputError(f"there are {n} images but {name} has {t.shape[0]} labels; pair them")
    problem = label_problem(t, n, name)
    if problem is not None:
        raise InputError(problem)
    if t.numel() and int(t.min()) < 0:
        raise InputError(f"{name} has negative values (min {int(t.min())}); labels are 0..C-1")
    return t.to(torch.int64)


def info_of(
    name: str, parts: Sequence[TensorDataset], source: str, from_uint8: bool
) -> DatasetInfo:
    """The :class:`DatasetInfo` of user data (statistics from the first non-empty part).

    Classes are ``max label + 1`` over every part; at least 2.
    """
    x = next(p.tensors[0] for p in parts if len(p))
    per = x.transpose(0, 1).reshape(x.shape[1], -1).double()
    labels = [int(p.tensors[1].max()) for p in parts if len(p)]
    return DatasetInfo(
        name=name,
        num_classes=max(2, max(labels) + 1),
        shape=tuple(int(s) for s in x.shape[1:]),  # type: ignore[arg-type]
        mean=tuple(round(float(v), 4) for v in per.mean(dim=1)),
        std=tuple(round(float(v), 4) for v in per.std(dim=1, unbiased=False)),
        source=source,
        from_uint8=from_uint8,
    )


def empty_like(test: TensorDataset) -> TensorDataset:
    """An empty dataset with ``test``'s sample shape: the missing training split."""
    x, y = test.tensors
    return TensorDataset(x.new_empty((0, *x.shape[1:])), y.new_empty((0,)))


__all__ = [
    "CHANNELS",
    "Notes",
    "empty_like",
    "info_of",
    "standard_images",
    "standard_labels",
    "to_tensor",
]
