"""The IDX format (MNIST, Fashion-MNIST): gzipped big-endian headers and unsigned bytes.

Registers ``"mnist"`` and ``"fashion_mnist"`` with their official files and MD5s. Decoded arrays
are cached in memory per process, keyed by resolved path, size and modification time, so
repeated loads are fast; every call returns fresh tensors.

References:
    LeCun, Cortes & Burges, "The MNIST database of handwritten digits", 1998.
    Xiao, Rasul & Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
    Learning Algorithms", arXiv:1708.07747, 2017.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from robustbench_local.data.sources import FileSources, fetch_all, file_stamp
from robustbench_local.data.specs import (
    DATASETS,
    DatasetInfo,
    DatasetPair,
    DatasetSpec,
    FileSpec,
    pair_from_uint8,
)

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049


def read_idx(path: str | os.PathLike[str], magic: int) -> np.ndarray:
    """Read a gzipped IDX file of unsigned bytes (the MNIST / Fashion-MNIST format).

    Args:
        path: ``*.gz`` file.
        magic: Expected magic number: 2051 for images, 2049 for labels.

    Returns:
        A uint8 array with the header's dimensions.

    Raises:
        ValueError: Not gzip, wrong magic number, or a payload size that disagrees with the header.

    """
    path = Path(path)
    try:
        with gzip.open(path, "rb") as fh:
            buf = bytearray(fh.read())
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path} is not a readable gzip file ({err}); delete it") from err
    if len(buf) < 4:
        raise ValueError(f"{path}: IDX header truncated ({len(buf)} bytes)")
    (found,) = struct.unpack_from(">I", buf, 0)
    if found != magic:
        raise ValueError(f"{path}: IDX magic number {found}, expected {magic}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise ValueError(f"{path}: IDX header truncated ({len(buf)} bytes)")
    dims = struct.unpack_from(f">{ndim}I", buf, 4)
    if len(buf) - header != math.prod(dims):
        raise ValueError(
            f"{path}: IDX header says {dims} = {math.prod(dims)} bytes of data, "
            f"found {len(buf) - header}; the file is truncated or corrupt"
        )
    return np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(dims)


def _idx_split(images: Path, labels: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(images, IDX_IMAGES_MAGIC)
    y = read_idx(labels, IDX_LABELS_MAGIC)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{images} has {x.shape[0]} images but {labels} has {y.shape[0]} labels")
    if y.size and int(y.max()) >= num_classes:
        raise ValueError(f"{labels}: label {int(y.max())} outside 0..{num_classes - 1}")
    return x[:, None], y


@functools.lru_cache(maxsize=4)
def _decode_idx(
    stamps: tuple[tuple[str, int, int], ...], num_classes: int
) -> tuple[np.ndarray, ...]:
    paths = [Path(s[0]) for s in stamps]
    return (*_idx_split(paths[0], paths[1], num_classes), *_idx_split(*paths[2:], num_classes))


def load_idx_dataset(spec: DatasetSpec, src: FileSources) -> DatasetPair:
    """Load an MNIST-style dataset: four gzipped IDX files (train/test images and labels)."""
    paths = fetch_all(spec, src)
    return pair_from_uint8(*_decode_idx(tuple(file_stamp(p) for p in paths), spec.info.num_classes))


MNIST = DatasetSpec(
    DatasetInfo("mnist", 10, (1, 28, 28), (0.1307,), (0.3081,)),
    files=(
        FileSpec("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", 9912422),
        FileSpec("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", 28881),
        FileSpec("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", 1648877),
        FileSpec("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", 4542),
    ),
    urls=("http://yann.lecun.com/exdb/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
)
FASHION_MNIST = DatasetSpec(
    DatasetInfo("fashion_mnist", 10, (1, 28, 28), (0.2860,), (0.3530,)),
    files=(
        FileSpec("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", 26421880),
        FileSpec("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", 29515),
        FileSpec("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", 4422102),
        FileSpec("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", 5148),
    ),
    urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
)
DATASETS.register("mnist", spec=MNIST)(load_idx_dataset)
DATASETS.register("fashion_mnist", spec=FASHION_MNIST)(load_idx_dataset)


__all__ = [
    "FASHION_MNIST",
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
    "MNIST",
    "load_idx_dataset",
    "read_idx",
]
