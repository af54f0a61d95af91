"""Data specs: one string names any data, the registered datasets' or the user's own.

A spec is, in the order it is recognised:

* a registered name (:data:`~.specs.DATASETS`: ``"mnist"``, ``"cifar10"``, ...);
* a folder of images in the class-subfolder layout, ``root/<class>/*.png|jpg`` (optionally
  ``root/train/<class>/`` and ``root/test/<class>/``), read through Pillow (:mod:`.folders`);
* an ``.npz`` or ``.pt`` file of arrays ``x``, ``y`` (the test split) and optionally
  ``x_train``, ``y_train`` (``.npz`` read without pickle, ``.pt`` with ``weights_only=True``);
* an import path ``module:function`` whose function returns ``(train, test)`` Datasets, a test
  Dataset, ``(x, y)`` arrays or a dict of arrays as in a file.

User data comes back in the registered datasets' layout (:mod:`.arrays`): float32
``[N, C, H, W]`` in ``[0, 1]`` and int64 labels; 8-bit images are scaled and channels-last
arrays laid out channels-first, each conversion said once in the log.
:func:`~robustbench_local.data.resolve_dataset` (registered names, then :func:`resolve_user_data`)
returns the splits with a :class:`~.specs.DatasetInfo` (classes, shape, statistics, where the
data came from); :func:`default_eps_grid` is the eps grid entry points default to for it.

Example:
    >>> data = resolve_dataset("my_images/")            # my_images/<class>/*.png
    >>> data.info.num_classes, data.info.shape
    (3, (3, 32, 32))
    >>> default_eps_grid(data.info, "linf")             # 1/255 ... 16/255
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from attacks.threat import Norm
from attacks.validation import InputError
from defenses.storage import load_trusted
from robustbench_local.data.arrays import (
    Notes,
    empty_like,
    info_of,
    standard_images,
    standard_labels,
    to_tensor,
)
from robustbench_local.data.folders import read_image_folder
from robustbench_local.data.specs import DATASETS, DatasetInfo, DatasetPair
from robustbench_local.imports import import_object, is_import_path, load_refusal

logger = logging.getLogger(__name__)

DataSpec = str | os.PathLike[str]
ARRAY_SUFFIXES = (".npz", ".pt", ".pth")
SPEC_FORMS = (
    "a registered name, a folder of images (root/<class>/*.png), an .npz or .pt file of "
    "arrays x, y (optionally x_train, y_train), or module:function"
)
CIFAR_STYLE_GRIDS: dict[Norm, tuple[float, ...]] = {
    Norm.LINF: (1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255),
    Norm.L2: (0.125, 0.25, 0.5, 1.0),
    Norm.L1: (1.5, 3.0, 6.0, 12.0),
}
"""Default eps grids for user data, as for CIFAR-10 (RobustBench: linf 8/255, l2 0.5; l1 12)."""


@dataclass(frozen=True)
class ResolvedDataset:
    """A data spec's splits and what callers need to know about them.

    Attributes:
        train: The training split (empty when the spec has none: see :meth:`require_train`).
        test: The test split, the one evaluations use.
        info: Classes, input shape, statistics, ``source`` and ``from_uint8``.
        kind: ``"registered"``, ``"folder"``, ``"file"`` or ``"import"``.
        classes: The class folder names of an image folder (label ``i`` is ``classes[i]``).
    """

    train: TensorDataset
    test: TensorDataset
    info: DatasetInfo
    kind: str
    classes: tuple[str, ...] | None = None

    @property
    def pair(self) -> DatasetPair:
        """``(train, test)``, what :func:`~robustbench_local.data.load_dataset` returns."""
        return self.train, self.test

    @property
    def has_train(self) -> bool:
        """Whether the spec has a (non-empty) training split."""
        return len(self.train) > 0

    def require_train(self, purpose: str = "training") -> TensorDataset:
        """The training split.

        Raises:
            ValueError: The spec has none; the message says how to add one.
        """
        if not self.has_train:
            raise ValueError(
                f"{purpose} needs a training split but dataset {self.info.name!r} has only test "
                "data: add x_train and y_train to the file, a train/ folder beside test/, or "
                "return (train, test) from the function"
            )
        return self.train


def spec_kind(spec: DataSpec, root: str | os.PathLike[str] | None = None) -> tuple[str, Any]:
    """Recognise a data spec: ``(kind, target)`` with the name, path or import path.

    Args:
        spec: The spec (see the module docstring).
        root: Folder that relative paths are relative to (default: the working directory).

    Raises:
        FileNotFoundError: A path-like spec that does not exist.
        ValueError: A file with another suffix, or an unknown name (the message lists the
            registered names and the other spec forms).
    """
    if isinstance(spec, str) and spec in DATASETS:
        return "registered", spec
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if root is not None and not path.is_absolute():
        path = Path(root) / path
    if path.is_dir():
        return "folder", path
    if path.is_file():
        if path.suffix.lower() not in ARRAY_SUFFIXES:
            raise ValueError(
                f"dataset file {path} has suffix {path.suffix!r}; use an .npz or .pt file of "
                "arrays x, y (optionally x_train, y_train), or a folder of images"
            )
        return "file", path
    if is_import_path(text):
        return "import", text
    if isinstance(spec, os.PathLike) or any(c in text for c in "/\\.~"):
        module, _, function = text.rpartition(".")
        hint = (
            f"; for a function, write module:function ({module}:{function})"
            if is_import_path(f"{module}:{function}")
            else ""
        )
        raise FileNotFoundError(
            f"dataset {text!r}: no such file or folder ({path.resolve()}){hint}"
        )
    try:
        DATASETS.get(text)
    except ValueError as err:
        raise ValueError(f"{err} A dataset spec is {SPEC_FORMS}.") from err
    return "registered", text


def resolve_user_data(
    spec: DataSpec,
    *,
    root: str | os.PathLike[str] | None = None,
    kwargs: Mapping[str, Any] | None = None,
) -> ResolvedDataset:
    """Load a user data spec (a folder, a file or ``module:function``) with its info.

    Registered names go through :func:`robustbench_local.data.resolve_dataset`, which calls
    this for every other spec.

    Args:
        spec: An image folder, an ``.npz``/``.pt`` file or ``module:function``.
        root: Folder that a relative path is relative to (e.g. a gate file's folder).
        kwargs: Keyword arguments of a ``module:function`` spec.

    Raises:
        FileNotFoundError: A missing file or folder.
        ValueError: A registered or unknown name, an unknown suffix, an empty folder, arrays
            of mismatched lengths, labels that are not integers, images that are not in
            ``[0, 1]`` or 0-255, an import path that does not resolve, or a function that
            returns something else than data. Each message says what to write instead.
    """
    kind, target = spec_kind(spec, root)
    if kind == "registered":
        raise ValueError(f"{spec!r} is a registered dataset; load it with load_dataset")
    notes = Notes()
    try:
        if kind == "folder":
            return _from_folder(target, notes)
        raw = _read_array_file(target) if kind == "file" else _call(target, kwargs or {})
        train, test = _from_returned(raw, notes)
    except InputError as err:
        raise InputError(f"dataset {os.fspath(spec)!r}: {err}") from err
    name = target.stem if isinstance(target, Path) else target
    return _finish(name, kind, train, test, notes)


def _finish(
    name: str,
    kind: str,
    train: TensorDataset | None,
    test: TensorDataset,
    notes: Notes,
    classes: tuple[str, ...] | None = None,
) -> ResolvedDataset:
    """The resolved dataset, its info computed and its conversions logged once."""
    if train is not None and train.tensors[0].shape[1:] != test.tensors[0].shape[1:]:
        raise InputError(
            f"dataset {name!r}: training images have shape {tuple(train.tensors[0].shape[1:])} "
            f"but test images {tuple(test.tensors[0].shape[1:])}; they must match"
        )
    parts = [test] if train is None else [train, test]
    info = info_of(name, parts, kind, notes.from_uint8)
    sizes = f"{len(test)} test" + ("" if train is None else f", {len(train)} train")
    logger.info(
        "dataset %r (%s): %s samples, %d classes, shape %s%s",
        name, kind, sizes, info.num_classes, info.shape, f"; {notes}" if notes.items else "",
    )  # fmt: skip
    return ResolvedDataset(
        train if train is not None else empty_like(test), test, info, kind, classes
    )


def _from_folder(path: Path, notes: Notes) -> ResolvedDataset:
    """An image folder as a resolved dataset."""
    found = read_image_folder(path, notes)
    test = _part(*found.test, "x", notes, "nhwc")
    train = None if found.train is None else _part(*found.train, "x_train", notes, "nhwc")
    return _finish(path.name, "folder", train, test, notes, found.classes)


def _part(x: Any, y: Any, name: str, notes: Notes, layout: str = "auto") -> TensorDataset:
    """One split as a TensorDataset in the standard layout (``name``: ``x`` or ``x_train``)."""
    xs = standard_images(x, name, notes, layout)
    return TensorDataset(xs, standard_labels(y, xs.shape[0], "y" + name[1:]))


def _read_array_file(path: Path) -> Mapping[str, Any]:
    """The arrays of an ``.npz`` (no pickle) or ``.pt`` (``weights_only``) file.

    Raises:
        ValueError: The file is unreadable, holds Python objects, or is not a dict of arrays.
    """
    if path.suffix.lower() == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except (ValueError, OSError, EOFError) as err:
            raise ValueError(
                f"{path} is not a readable .npz of numeric arrays ({err}); save it with "
                "np.savez(path, x=images, y=labels)"
            ) from err
    try:
        found = load_trusted(path)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        raise ValueError(
            f"{path} is not a readable file of tensors (corrupt, or holding objects other than "
            f"tensors and plain data, such as numpy arrays: {load_refusal(err)}); save it with "
            "torch.save({'x': torch.as_tensor(x), 'y': torch.as_tensor(y)}, path)"
        ) from err
    if not isinstance(found, Mapping):
        raise ValueError(
            f"{path} holds a {type(found).__name__}, not a dict of tensors; save it with "
            "torch.save({'x': x, 'y': y}, path)"
        )
    return found


def _call(path: str, kwargs: Mapping[str, Any]) -> Any:
    """Call the function an import path names.

    Raises:
        ValueError: The path does not resolve or names something that is not callable.
    """
    fn = import_object(path, "dataset")
    if not callable(fn):
        raise ValueError(
            f"dataset {path!r} is a {type(fn).__name__}, not a function; name a function "
            "returning (train, test) Datasets, a test Dataset or (x, y) arrays"
        )
    return fn(**kwargs)


def _is_array(a: Any) -> bool:
    return isinstance(a, torch.Tensor | np.ndarray)


def _from_returned(out: Any, notes: Notes) -> tuple[TensorDataset | None, TensorDataset]:
    """``(train or None, test)`` from a dict of arrays, Datasets or an ``(x, y)`` pair.

    Raises:
        ValueError: Anything else (the message lists what is accepted).
    """
    if isinstance(out, Mapping):
        return _from_mapping(out, notes)
    if isinstance(out, Dataset):
        return None, _part(*_dataset_arrays(out, "test dataset"), "x", notes)
    if isinstance(out, tuple | list) and len(out) == 2:
        if all(isinstance(d, Dataset) for d in out):
            train = _part(*_dataset_arrays(out[0], "train dataset"), "x_train", notes)
            return train, _part(*_dataset_arrays(out[1], "test dataset"), "x", notes)
        if all(_is_array(a) for a in out):
            return None, _part(out[0], out[1], "x", notes)
    raise InputError(
        f"the dataset function returned {type(out).__name__}; return (train, test) Datasets, "
        "a test Dataset, (x, y) arrays or a dict with x, y (and x_train, y_train)"
    )


def _from_mapping(
    arrays: Mapping[str, Any], notes: Notes
) -> tuple[TensorDataset | None, TensorDataset]:
    """``x``, ``y`` and optionally ``x_train``, ``y_train`` as datasets.

    Raises:
        ValueError: ``x`` or ``y`` missing, or only one of ``x_train``/``y_train``.
    """
    keys = sorted(map(str, arrays))
    if "x" not in arrays or "y" not in arrays:
        raise InputError(
            f"the arrays are named {', '.join(keys) or '(none)'}; name the test images x and "
            "their labels y (and optionally the training split x_train, y_train)"
        )
    if ("x_train" in arrays) != ("y_train" in arrays):
        raise InputError("give both x_train and y_train (the training split), or neither")
    test = _part(arrays["x"], arrays["y"], "x", notes)
    if "x_train" not in arrays:
        return None, test
    return _part(arrays["x_train"], arrays["y_train"], "x_train", notes), test


def _dataset_arrays(ds: Dataset, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of a map-style Dataset, labels kept as they are (never cast to int).

    Raises:
        ValueError: The dataset has no length, is empty, or its items are not ``(x, y)``.
    """
    if isinstance(ds, TensorDataset) and len(ds.tensors) >= 2:
        return ds.tensors[0], ds.tensors[1]
    if not hasattr(ds, "__len__"):
        raise InputError(f"the {name} has no length; return a map-style Dataset or arrays")
    items = [ds[i] for i in range(len(ds))]  # type: ignore[arg-type]
    if not items:
        raise InputError(f"the {name} is empty")
    if not all(isinstance(it, tuple | list) and len(it) >= 2 for it in items):
        raise InputError(f"the {name}'s items must be (x, y) pairs, got {type(items[0]).__name__}")
    x = torch.stack([to_tensor(it[0], f"{name} image") for it in items])
    y = torch.stack([to_tensor(it[1], f"{name} label").reshape(()) for it in items])
    return x, y


def default_eps_grid(info: DatasetInfo, norm: str | Norm) -> list[float] | None:
    """The eps grid an entry point defaults to for a dataset, in input units.

    For user data (``info.source`` other than ``"registered"``) the CIFAR-style grids of
    :data:`CIFAR_STYLE_GRIDS`: linf ``1/255 ... 16/255`` (one step is one grey level of 8-bit
    images, ``info.from_uint8``), l2 ``0.125 ... 1``, l1 ``1.5 ... 12``. For a registered dataset
    ``None``: its grid is configured with it (``experiments/conf/dataset/<name>.yaml``).

    Raises:
        ValueError: An unknown norm.
    """
    if info.source == "registered":
        return None
    return list(CIFAR_STYLE_GRIDS[Norm.parse(norm)])


__all__ = [
    "ARRAY_SUFFIXES",
    "CIFAR_STYLE_GRIDS",
    "DataSpec",
    "ResolvedDataset",
    "default_eps_grid",
    "resolve_user_data",
    "spec_kind",
]
