"""Benchmark datasets in their original distribution formats, MD5-verified.

``load_dataset(name)`` returns ``(train, test)`` as :class:`torch.utils.data.TensorDataset` with
``x`` float32 ``[N, C, H, W]`` in ``[0, 1]`` and ``y`` int64. Names:

* ``"digits"``: scikit-learn's bundled 8x8 handwritten digits (offline), a fixed stratified split
  (:mod:`.digits`).
* ``"mnist"`` and ``"fashion_mnist"``: the official gzipped IDX files (:mod:`.idx`).
* ``"cifar10"``: the official ``cifar-10-python.tar.gz`` (pickled batches, read restrictedly;
  :mod:`.cifar`).

The user's own data goes through the same call (:mod:`.user`): a folder of images in class
subfolders, an ``.npz``/``.pt`` file of arrays, or ``module:function``; :func:`resolve_dataset`
also returns its :class:`DatasetInfo` and :func:`default_eps_grid` the eps grid to default to.

Each dataset registers once in :data:`DATASETS` with its spec (:mod:`.specs`). Files come from a
local mirror, the download cache or a verified download (:mod:`.sources`); every file must match
its published MD5 (:class:`ChecksumError` otherwise). Fixed seeded subsets: :mod:`.sampling`.

Example:
    >>> train, test = load_dataset("digits")
    >>> train.tensors[0].shape[1:]
    torch.Size([1, 8, 8])
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

from robustbench_local.data.cifar import (
    CIFAR10_FILE,
    CIFAR10_MD5,
    CIFAR10_MEMBERS,
    load_cifar10_archive,
)
from robustbench_local.data.digits import DIGITS_SEED, DIGITS_TEST_FRACTION
from robustbench_local.data.idx import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, read_idx
from robustbench_local.data.sampling import sample_indices, subset
from robustbench_local.data.sources import (
    DEFAULT_CACHE,
    ENV_BASE_URL,
    ENV_CACHE,
    ENV_DATA_DIR,
    TIMEOUT_S,
    ChecksumError,
    DownloadError,
    FileSources,
    download_file,
    verify_file,
)
from robustbench_local.data.specs import (
    DATASETS,
    DatasetInfo,
    DatasetPair,
    DatasetSpec,
    FileSpec,
)
from robustbench_local.data.user import (
    CIFAR_STYLE_GRIDS,
    DataSpec,
    ResolvedDataset,
    default_eps_grid,
    resolve_user_data,
    spec_kind,
)


def dataset_names() -> list[str]:
    """Sorted names accepted by :func:`load_dataset`."""
    return DATASETS.names()


def dataset_spec(name: str) -> DatasetSpec:
    """The spec (info, official files, URLs) a dataset registered with.

    Raises:
        ValueError: For an unknown name (the message lists the known ones).
    """
    return DATASETS.metadata(name)["spec"]


def dataset_info(name: str) -> DatasetInfo:
    """Classes, input shape ``(C, H, W)`` and normalisation statistics of a dataset.

    Raises:
        ValueError: For an unknown name (the message lists the known ones).
    """
    return dataset_spec(name).info


class _SpecView(Mapping[str, DatasetSpec]):
    """A read-only ``name -> DatasetSpec`` view of :data:`DATASETS` (kept for older callers)."""

    def __getitem__(self, name: str) -> DatasetSpec:
        if name not in DATASETS:
            raise KeyError(name)
        return dataset_spec(name)

    def __iter__(self) -> Iterator[str]:
        return iter(dataset_names())

    def __len__(self) -> int:
        return len(DATASETS)


SPECS: Mapping[str, DatasetSpec] = _SpecView()
"""Read-only ``name -> DatasetSpec``, derived from the registry (register datasets there)."""


def load_dataset(
    name: DataSpec,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    base_url: str | None = None,
    download: bool = True,
) -> DatasetPair:
    """Load a benchmark dataset or the user's own data as ``(train, test)`` tensor datasets.

    For the info that goes with the data (classes, shape, the default eps grid of user data),
    use :func:`resolve_dataset`, which this calls.

    Args:
        name: A data spec: one of :func:`dataset_names`, a folder of images
            (``root/<class>/*.png``, optionally with ``train/`` and ``test/``), an ``.npz``/
            ``.pt`` file of arrays ``x``, ``y`` (optionally ``x_train``, ``y_train``), or
            ``module:function`` (:mod:`.user`). User data without a training split gets an
            empty ``train``.
        data_dir: Local mirror (``<data_dir>/<name>/<official files>``); default
            ``$ROBUSTBENCH_LOCAL_DATA_DIR``.
        cache_dir: Download cache; default ``$ROBUSTBENCH_LOCAL_CACHE`` or
            ``~/.cache/robustbench_local``.
        base_url: Serve files from ``<base_url>/<name>/<file>`` instead of the official URLs;
            default ``$ROBUSTBENCH_LOCAL_BASE_URL``.
        download: Download missing files; if ``False`` a missing file is an error.

    Returns:
        ``(train, test)``; ``x`` float32 ``[N, C, H, W]`` in ``[0, 1]``, ``y`` int64.

    Raises:
        ValueError: Unknown name or bad ``base_url``; for user data, see
            :func:`resolve_dataset`.
        ChecksumError: A local, cached or downloaded file does not match its official MD5.
        FileNotFoundError: A file is missing and ``download=False``, or a user spec's file or
            folder does not exist.
        DownloadError: Every URL failed for a missing file.
    """
    return resolve_dataset(
        name, data_dir, cache_dir=cache_dir, base_url=base_url, download=download
    ).pair


def resolve_dataset(
    spec: DataSpec,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    base_url: str | None = None,
    download: bool = True,
    root: str | os.PathLike[str] | None = None,
    kwargs: Mapping[str, Any] | None = None,
) -> ResolvedDataset:
    """Load any data spec as tensor datasets, with its :class:`DatasetInfo`.

    What every entry point calls: the info gives the classes and input shape a model is built
    for, and :func:`default_eps_grid` the eps grid of user data.

    Args:
        spec: A registered name, or a user spec (:func:`resolve_user_data`).
        data_dir: Local mirror of a registered dataset (see :func:`load_dataset`).
        cache_dir: Download cache of a registered dataset.
        base_url: Mirror URL of a registered dataset.
        download: Download a registered dataset's missing files.
        root: Folder that a relative path is relative to (e.g. a gate file's folder).
        kwargs: Keyword arguments of a ``module:function`` spec.

    Returns:
        A :class:`ResolvedDataset` (``.pair`` is ``(train, test)``).

    Raises:
        ValueError, FileNotFoundError, ChecksumError, DownloadError: As :func:`load_dataset`
            and :func:`resolve_user_data`.
    """
    if isinstance(spec, str) and spec in DATASETS:
        loader = DATASETS.get(spec)
        sources = FileSources.resolve(data_dir, cache_dir, base_url, download)
        train, test = loader(dataset_spec(spec), sources)
        return ResolvedDataset(train, test, dataset_info(spec), "registered")
    return resolve_user_data(spec, root=root, kwargs=kwargs)


__all__ = [
    "CIFAR10_FILE",
    "CIFAR10_MD5",
    "CIFAR10_MEMBERS",
    "CIFAR_STYLE_GRIDS",
    "DATASETS",
    "DEFAULT_CACHE",
    "DIGITS_SEED",
    "DIGITS_TEST_FRACTION",
    "ENV_BASE_URL",
    "ENV_CACHE",
    "ENV_DATA_DIR",
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
    "SPECS",
    "TIMEOUT_S",
    "ChecksumError",
    "DataSpec",
    "DatasetInfo",
    "DatasetPair",
    "DatasetSpec",
    "DownloadError",
    "FileSources",
    "FileSpec",
    "ResolvedDataset",
    "dataset_info",
    "dataset_names",
    "dataset_spec",
    "default_eps_grid",
    "download_file",
    "load_cifar10_archive",
    "load_dataset",
    "read_idx",
    "resolve_dataset",
    "resolve_user_data",
    "sample_indices",
    "spec_kind",
    "subset",
    "verify_file",
]
