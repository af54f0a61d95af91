"""The CIFAR-10 python archive: a gzipped tar of pickled batches, read restrictedly.

Registers ``"cifar10"`` with the official ``cifar-10-python.tar.gz`` and its MD5. The pickles
are read in memory (nothing is extracted) by an unpickler that allows NumPy arrays and nothing
else, so a tampered archive cannot run code.

References:
    Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", Tech. Report,
    University of Toronto, 2009.
"""

from __future__ import annotations

import functools
import io
import os
import pickle
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from robustbench_local.data.sources import FileSources, fetch_all, file_stamp, verify_file
from robustbench_local.data.specs import (
    DATASETS,
    DatasetInfo,
    DatasetPair,
    DatasetSpec,
    FileSpec,
    pair_from_uint8,
)

CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FILE = "cifar-10-python.tar.gz"
CIFAR10_MEMBERS = (
    *(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)),
    "cifar-10-batches-py/test_batch",
)

_CIFAR_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays only; any other global is refused."""

    def find_class(self, module: str, name: str) -> Callable[..., object]:
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"{where}: not a CIFAR-10 batch pickle ({err})") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a dict, got {type(obj).__name__}")
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise ValueError(f"{where}: b'data' must be a uint8 array [n, 3072]")
    if data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{where}: b'data' has shape {data.shape}, expected [n, 3072]")
    y = np.asarray(labels if labels is not None else [])
    if y.ndim != 1 or y.shape[0] != data.shape[0] or (y.size and y.dtype.kind not in "iu"):
        raise ValueError(f"{where}: b'labels' must be {data.shape[0]} integers")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise ValueError(f"{where}: labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), y.astype(np.int64)


@functools.lru_cache(maxsize=2)
def _decode_cifar10(stamp: tuple[str, int, int]) -> tuple[np.ndarray, ...]:
    path = stamp[0]
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {m.name: m for m in tar.getmembers()}
            batches = []
            for name in CIFAR10_MEMBERS:
                member = members.get(name)
                if member is None or not member.isfile():
                    raise ValueError(
                        f"{path}: member {name} missing or not a regular file; expected "
                        f"{', '.join(CIFAR10_MEMBERS)}"
                    )
                fh = tar.extractfile(member)
                batches.append(_read_cifar_batch(fh.read(), f"{path}:{name}"))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path} is not a readable tar.gz archive ({err}); delete it") from err
    train = batches[:-1]
    return (
        np.concatenate([b[0] for b in train]),
        np.concatenate([b[1] for b in train]),
        *batches[-1],
    )


def load_cifar10_archive(path: str | os.PathLike[str], md5: str = CIFAR10_MD5) -> DatasetPair:
    """Read the official CIFAR-10 python archive ``cifar-10-python.tar.gz``.

    The official format: a gzipped tar with ``cifar-10-batches-py/data_batch_1`` .. ``_5`` and
    ``test_batch``, each a (Python 2) pickle of a dict with ``b'data'`` (uint8 ``[n, 3072]``,
    channel-major 3x32x32 rows) and ``b'labels'`` (list of ints). The archive's MD5 is checked
    first; then only those members are read, in memory (nothing is extracted), with an unpickler
    that allows NumPy arrays and nothing else, and only the data/labels keys are used.

    Args:
        path: The archive.
        md5: Expected MD5 (default: the official one).

    Returns:
        ``(train, test)`` with ``x`` float32 ``[N, 3, 32, 32]`` in ``[0, 1]`` and ``y`` int64.

    Raises:
        ChecksumError: If the archive's MD5 differs.
        ValueError: If the archive is not in the official format.

    """
    path = Path(path)
    verify_file(path, FileSpec(path.name, md5), advice="delete it or fetch a trusted copy")
    return pair_from_uint8(*_decode_cifar10(file_stamp(path)))


CIFAR10 = DatasetSpec(
    DatasetInfo("cifar10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    files=(FileSpec(CIFAR10_FILE, CIFAR10_MD5),),
    urls=("https://www.cs.toronto.edu/~kriz/",),
)


@DATASETS.register("cifar10", spec=CIFAR10)
def load_cifar10_dataset(spec: DatasetSpec, src: FileSources) -> DatasetPair:
    """Fetch the official archive (or the spec's) and read it."""
    (path,) = fetch_all(spec, src)
    return load_cifar10_archive(path, md5=spec.files[0].md5)


__all__ = [
    "CIFAR10",
    "CIFAR10_FILE",
    "CIFAR10_MD5",
    "CIFAR10_MEMBERS",
    "load_cifar10_archive",
    "load_cifar10_dataset",
]
