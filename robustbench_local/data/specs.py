"""What a dataset is: its info, its official files, and the one registry of datasets.

Every dataset registers its loader once in :data:`DATASETS`, with its :class:`DatasetSpec` as
metadata (``DATASETS.register("mnist", spec=DatasetSpec(...))``): there is no other table of
datasets. A loader takes ``(spec, sources)`` and returns ``(train, test)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import TensorDataset

from attacks.registry import Registry

DatasetPair = tuple[TensorDataset, TensorDataset]


@dataclass(frozen=True)
class FileSpec:
    """One official release file: its name, MD5 and size in bytes (``None`` if unknown)."""

    name: str
    md5: str
    size: int | None = None


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset.

    ``mean``/``std`` are per-channel training-set statistics of ``x`` in ``[0, 1]``; the models'
    ``Normalize`` layers use them. ``source`` says where the data came from: ``"registered"``
    (:data:`DATASETS`), or a user spec (:mod:`.user`): ``"folder"`` (images in class
    subfolders), ``"file"`` (an ``.npz``/``.pt`` file of arrays) or ``"import"``
    (``module:function``). ``from_uint8`` is True for user data read from 8-bit images and
    scaled to ``[0, 1]``: its eps grids default to the CIFAR-style ``1/255 ... 16/255``
    (:func:`~robustbench_local.data.user.default_eps_grid`).
    """

    name: str
    num_classes: int
    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = "registered"
    from_uint8: bool = False


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset's info, its official files and the base URLs (mirrors, in order) serving them."""

    info: DatasetInfo
    files: tuple[FileSpec, ...] = ()
    urls: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The dataset's name (also its folder in mirrors and caches)."""
        return self.info.name


DATASETS: Registry[DatasetPair] = Registry("dataset")
"""Dataset loaders by name; each registered with metadata ``spec`` (a :class:`DatasetSpec`)."""


def pair_from_uint8(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> DatasetPair:
    """Fresh float32 tensors in ``[0, 1]`` from cached uint8 arrays (callers may modify them)."""

    def part(x: np.ndarray, y: np.ndarray) -> TensorDataset:
        xt = torch.from_numpy(x).to(torch.float32).div_(255.0)
        return TensorDataset(xt, torch.from_numpy(y.astype(np.int64)))

    return part(x_train, y_train), part(x_test, y_test)


__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DatasetPair",
    "DatasetSpec",
    "FileSpec",
    "pair_from_uint8",
]
