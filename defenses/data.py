"""Data and device helpers shared by every package above ``attacks``.

Datasets reach the project as any map-style ``torch`` Dataset of ``(x, y)`` pairs or as a
``TensorDataset``; these helpers validate them, turn them into tensors (without a per-item
collate for a ``TensorDataset``), build loaders, and find the device a model lives on.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)


def check_dataset(name: str, data: Any) -> Dataset:
    """Check ``data`` is a non-empty Dataset whose items are ``(x, y)`` pairs."""
    if not isinstance(data, Dataset):
        raise TypeError(
            f"{name} must be a torch Dataset of (x, y) pairs (e.g. TensorDataset(x, y)), "
            f"got {type(data).__name__}"
        )
    try:
        n = len(data)  # type: ignore[arg-type]
    except TypeError as err:
        raise TypeError(f"{name} must be a map-style Dataset with a length") from err
    if n == 0:
        raise ValueError(f"{name} is empty")
    item = data[0]
    if not (isinstance(item, tuple | list) and len(item) >= 2 and isinstance(item[0], Tensor)):
        raise ValueError(f"{name}[0] must be an (x, y) pair of tensors, got {type(item).__name__}")
    return data


def make_loader(
    data: Dataset, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None
) -> DataLoader:
    """A DataLoader; a ``TensorDataset`` is sliced a whole batch at a time (no per-item collate)."""
    if isinstance(data, TensorDataset):
        base = RandomSampler(data, generator=generator) if shuffle else SequentialSampler(data)
        sampler = BatchSampler(base, batch_size, drop_last=False)
        # batch_size=None: the loader fetches data[list_of_indices], one slice per batch
        return DataLoader(data, sampler=sampler, batch_size=None)
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator)


DataLike = Dataset | tuple[Tensor, Tensor] | list[Tensor]


def tensors_of(data: DataLike, indices: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Materialise ``(x, y)`` tensors from a Dataset or an ``(x, y)`` pair (optionally ``indices``).

    A ``TensorDataset`` or a pair of tensors is sliced directly; any other map-style dataset
    (a ``Dataset`` or a sequence of ``(x, y)`` items) is read one item at a time.

    Raises:
        TypeError: ``data`` is neither a sized dataset of ``(x, y)`` items nor a pair of tensors.

    """
    pair = _tensor_pair(data)
    if pair is not None:
        return pair if indices is None else (pair[0][indices], pair[1][indices])
    if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
        raise TypeError(
            f"data must be a Dataset of (x, y) pairs or a tuple (x, y), got {type(data).__name__}"
        )
    if indices is None:
        indices = torch.arange(len(data))  # type: ignore[arg-type]
    items = [data[int(i)] for i in indices]
    x = torch.stack([torch.as_tensor(it[0]) for it in items])
    y = torch.as_tensor([int(it[1]) for it in items], dtype=torch.long)
    return x, y


def _tensor_pair(data: Any) -> tuple[Tensor, Tensor] | None:
    """``(x, y)`` when ``data`` is a 2-tensor TensorDataset or a pair of tensors, else None."""
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        return data.tensors[0], data.tensors[1]
    if (
        isinstance(data, tuple | list)
        and len(data) == 2
        and all(isinstance(t, Tensor) for t in data)
        and data[0].dim() > 0
        and data[1].dim() > 0
        and data[0].shape[0] == data[1].shape[0]
    ):
        return data[0], data[1]
    return None


def model_device(model: Any) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a parameter-free model).

    Anything that is not an ``nn.Module`` (a plain function) counts as living on the CPU.
    """
    if not isinstance(model, nn.Module):
        return torch.device("cpu")
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


__all__ = ["DataLike", "check_dataset", "make_loader", "model_device", "tensors_of"]
