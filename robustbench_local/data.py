"""Benchmark datasets in their original distribution formats, MD5-verified.

``load_dataset(name)`` returns ``(train, test)`` as :class:`torch.utils.data.TensorDataset` with
``x`` float32 ``[N, C, H, W]`` in ``[0, 1]`` and ``y`` int64. Names:

* ``"digits"``: scikit-learn's bundled 8x8 handwritten digits (offline), a fixed stratified split.
* ``"mnist"`` and ``"fashion_mnist"``: the official gzipped IDX files.
* ``"cifar10"``: the official ``cifar-10-python.tar.gz`` (pickled batches, read restrictedly).

Where files come from, in order, per file:

1. a local mirror, ``data_dir`` or ``$ROBUSTBENCH_LOCAL_DATA_DIR``, laid out as
   ``<dir>/<name>/<official file name>``;
2. the download cache, ``cache_dir`` or ``$ROBUSTBENCH_LOCAL_CACHE`` (default
   ``~/.cache/robustbench_local``), same layout;
3. a download (if ``download=True``) from ``base_url`` / ``$ROBUSTBENCH_LOCAL_BASE_URL``
   (``<base_url>/<name>/<file>``) or else the official URLs, into the cache.

Every file, wherever it comes from, must match its published MD5: a mismatch raises
:class:`ChecksumError` and the file is never used. Downloads go to a temporary file in the cache
folder, are verified, then renamed into place (atomic), so a failed or tampered download leaves
nothing behind. Decoded arrays are cached in memory per process, keyed by resolved path, size and
modification time, so repeated loads are fast; every call returns fresh tensors.

Example:
    >>> train, test = load_dataset("digits")
    >>> train.tensors[0].shape[1:]
    torch.Size([1, 8, 8])

References:
    LeCun, Cortes & Burges, "The MNIST database of handwritten digits", 1998.
    Xiao, Rasul & Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
    Learning Algorithms", arXiv:1708.07747, 2017.
    Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", Tech. Report,
    University of Toronto, 2009.

"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import io
import logging
import math
import os
import pickle
import struct
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from attacks.registry import Registry
from defenses.data import tensors_of
from defenses.storage import atomic_write

logger = logging.getLogger(__name__)

ENV_DATA_DIR = "ROBUSTBENCH_LOCAL_DATA_DIR"
ENV_CACHE = "ROBUSTBENCH_LOCAL_CACHE"
ENV_BASE_URL = "ROBUSTBENCH_LOCAL_BASE_URL"
DEFAULT_CACHE = Path("~/.cache/robustbench_local")
TIMEOUT_S = 60.0
_CHUNK = 1 << 20
_USER_AGENT = "robustbench_local/0.1 (python urllib)"

DatasetPair = tuple[TensorDataset, TensorDataset]


class ChecksumError(ValueError):
    """A dataset file whose MD5 (or size) differs from the published one: corrupt or tampered."""


class DownloadError(OSError):
    """No URL could deliver a dataset file (network error, HTTP error, incomplete transfer)."""


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
    ``Normalize`` layers use them.
    """

    name: str
    num_classes: int
    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset's info, its official files and the base URLs (mirrors, in order) serving them."""

    info: DatasetInfo
    files: tuple[FileSpec, ...] = ()
    urls: tuple[str, ...] = ()


CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FILE = "cifar-10-python.tar.gz"
CIFAR10_MEMBERS = (
    *(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)),
    "cifar-10-batches-py/test_batch",
)

# Module-level table of every dataset: tests may inject a spec (e.g. a tiny CIFAR-10 archive).
SPECS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(DatasetInfo("digits", 10, (1, 8, 8), (0.3061,), (0.3766,))),
    "mnist": DatasetSpec(
        DatasetInfo("mnist", 10, (1, 28, 28), (0.1307,), (0.3081,)),
        files=(
            FileSpec("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", 9912422),
            FileSpec("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", 28881),
            FileSpec("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", 1648877),
            FileSpec("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", 4542),
        ),
        urls=(
            "http://yann.lecun.com/exdb/mnist/",
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
        ),
    ),
    "fashion_mnist": DatasetSpec(
        DatasetInfo("fashion_mnist", 10, (1, 28, 28), (0.2860,), (0.3530,)),
        files=(
            FileSpec("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", 26421880),
            FileSpec("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", 29515),
            FileSpec("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", 4422102),
            FileSpec("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", 5148),
        ),
        urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    ),
    "cifar10": DatasetSpec(
        DatasetInfo("cifar10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
        files=(FileSpec(CIFAR10_FILE, CIFAR10_MD5),),
        urls=("https://www.cs.toronto.edu/~kriz/",),
    ),
}

DATASETS: Registry[DatasetPair] = Registry("dataset")


# --------------------------------------------------------------------------- public API


def dataset_names() -> list[str]:
    """Sorted names accepted by :func:`load_dataset`."""
    return DATASETS.names()


def dataset_info(name: str) -> DatasetInfo:
    """Classes, input shape ``(C, H, W)`` and normalisation statistics of a dataset.

    Raises:
        ValueError: For an unknown name (the message lists the known ones).

    """
    DATASETS.get(name)
    return SPECS[name.lower()].info


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    base_url: str | None = None,
    download: bool = True,
) -> DatasetPair:
    """Load a benchmark dataset as ``(train, test)`` tensor datasets.

    Args:
        name: One of :func:`dataset_names`.
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
        ValueError: Unknown name or bad ``base_url``.
        ChecksumError: A local, cached or downloaded file does not match its official MD5.
        FileNotFoundError: A file is missing and ``download=False``.
        DownloadError: Every URL failed for a missing file.

    """
    loader = DATASETS.get(name)
    return loader(
        SPECS[name.lower()],
        _Sources.resolve(data_dir, cache_dir, base_url, download),
    )


def sample_indices(n_total: int, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` distinct indices out of ``range(n_total)``, sorted, the same for the same seed.

    Uses NumPy's legacy ``RandomState`` whose stream is frozen across NumPy versions, so the
    selection (and any hash of it) is stable.

    Raises:
        ValueError: If ``n`` is not in ``[0, n_total]`` or ``seed`` is negative.

    """
    for label, value in (("n_total", n_total), ("n", n), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise ValueError(f"{label} must be a non-negative integer, got {value!r}")
    if n > n_total:
        raise ValueError(f"cannot sample n={n} indices out of {n_total}; pass n <= {n_total}")
    perm = np.random.RandomState(int(seed)).permutation(int(n_total))[: int(n)]
    return torch.from_numpy(np.sort(perm).astype(np.int64))


def subset(dataset: Dataset, n: int, seed: int = 0) -> TensorDataset:
    """A deterministic random subset of ``n`` samples (in dataset order) as a TensorDataset.

    Raises:
        TypeError: If ``dataset`` has no length.
        ValueError: If ``n`` exceeds the dataset size.

    """
    if not hasattr(dataset, "__len__"):
        raise TypeError(f"subset needs a sized dataset, got {type(dataset).__name__}")
    idx = sample_indices(len(dataset), n, seed)
    if isinstance(dataset, TensorDataset):
        return TensorDataset(*(t[idx] for t in dataset.tensors))
    if idx.numel() == 0:
        raise ValueError("subset of a non-TensorDataset needs n >= 1")
    return TensorDataset(*tensors_of(dataset, idx))


# --------------------------------------------------------------------------- file sources


@dataclass(frozen=True)
class _Sources:
    """Where to look for files and where to download them."""

    data_dir: Path | None
    cache_dir: Path
    base_url: str | None
    download: bool

    @classmethod
    def resolve(
        cls,
        data_dir: str | os.PathLike[str] | None,
        cache_dir: str | os.PathLike[str] | None,
        base_url: str | None,
        download: bool,
    ) -> _Sources:
        data_dir = data_dir if data_dir is not None else os.environ.get(ENV_DATA_DIR) or None
        cache_dir = cache_dir if cache_dir is not None else os.environ.get(ENV_CACHE) or None
        base_url = base_url if base_url is not None else os.environ.get(ENV_BASE_URL) or None
        if base_url is not None:
            scheme = urllib.parse.urlparse(base_url).scheme
            if scheme not in ("http", "https", "file"):
                raise ValueError(
                    f"base_url must be an http(s):// or file:// URL, got {base_url!r}; "
                    f"fix the argument or ${ENV_BASE_URL}"
                )
        return cls(
            data_dir=Path(data_dir).expanduser() if data_dir is not None else None,
            cache_dir=Path(cache_dir if cache_dir is not None else DEFAULT_CACHE).expanduser(),
            base_url=base_url,
            download=bool(download),
        )

    def urls(self, dataset: str, spec: DatasetSpec, file: FileSpec) -> list[str]:
        if self.base_url is not None:
            return [f"{self.base_url.rstrip('/')}/{dataset}/{file.name}"]
        return [base + file.name for base in spec.urls]


def _fetch_all(dataset: str, spec: DatasetSpec, src: _Sources) -> list[Path]:
    """Resolve (and download if needed) every file of ``spec``; each is MD5-verified."""
    return [_fetch(dataset, spec, f, src) for f in spec.files]


def _fetch(dataset: str, spec: DatasetSpec, file: FileSpec, src: _Sources) -> Path:
    looked: list[Path] = []
    if src.data_dir is not None:
        local = src.data_dir / dataset / file.name
        looked.append(local)
        if local.is_file():
            verify_file(local, file, advice="repair or remove the mirror file")
            return local
    cached = src.cache_dir / dataset / file.name
    looked.append(cached)
    if cached.is_file():
        verify_file(cached, file, advice="delete it so that it is downloaded again")
        return cached
    if not src.download:
        raise FileNotFoundError(
            f"{dataset}: {file.name} not found; looked in {', '.join(map(str, looked))}. "
            f"Pass data_dir= (or set ${ENV_DATA_DIR}) to a folder holding "
            f"{dataset}/{file.name}, or call with download=True."
        )
    return download_file(src.urls(dataset, spec, file), cached, file)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@functools.lru_cache(maxsize=64)
def _md5_cached(path: str, size: int, mtime_ns: int) -> str:
    return _md5(Path(path))


def _stamp(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def verify_file(path: Path, file: FileSpec, *, advice: str) -> None:
    """Check a file's MD5 against ``file.md5`` (cached per path, size and mtime).

    Raises:
        ChecksumError: Naming the file, the expected and actual MD5 and what to do.

    """
    actual = _md5_cached(*_stamp(path))
    if actual != file.md5:
        size = f", expected {file.size}" if file.size is not None else ""
        raise ChecksumError(
            f"{path} is corrupt or tampered: MD5 {actual}, expected {file.md5} "
            f"(size {path.stat().st_size} bytes{size}). It was not used; {advice}."
        )


def download_file(urls: list[str], dest: Path, file: FileSpec) -> Path:
    """Download ``file`` from the first working URL to ``dest`` (atomic, MD5-verified).

    The bytes go to a temporary file next to ``dest``; only a file whose MD5 matches is renamed
    to ``dest``. A mirror serving a wrong file is skipped (with a warning) for the next one.

    Raises:
        ChecksumError: Every response had the wrong MD5 or size (nothing is saved).
        DownloadError: No URL could be read.

    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    bad_checksum = False
    for url in urls:
        logger.info("Downloading %s to %s", url, dest)
        try:
            _download_verified(url, dest, file)
        except ChecksumError as err:
            bad_checksum = True
            failures.append(str(err))
            logger.warning("%s", err)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            failures.append(f"{url}: {type(err).__name__}: {err}")
            logger.warning("Download of %s failed: %s", url, err)
        else:
            return dest
    detail = "\n  ".join(failures)
    if bad_checksum:
        raise ChecksumError(
            f"Refusing {file.name}: the download is corrupt, truncated or tampered; nothing was "
            f"saved to {dest.parent}. Re-run to download again, or point base_url / data_dir at "
            f"a trusted copy.\n  {detail}"
        )
    raise DownloadError(
        f"Could not download {file.name} into {dest.parent}:\n  {detail}\n"
        f"Check the network, pass base_url= (or ${ENV_BASE_URL}) for a reachable mirror, or "
        f"pass data_dir= (or ${ENV_DATA_DIR}) to a folder holding the official files."
    )


def _download_verified(url: str, dest: Path, file: FileSpec) -> None:
    from tqdm.auto import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    digest, size = hashlib.md5(usedforsecurity=False), 0
    with (
        atomic_write(dest) as out,
        urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp,
        tqdm(
            total=int(resp.headers.get("Content-Length") or 0) or None,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=file.name,
            disable=None,
            leave=False,
        ) as bar,
    ):
        for chunk in iter(lambda: resp.read(_CHUNK), b""):
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
            bar.update(len(chunk))
        actual = digest.hexdigest()
        if actual != file.md5 or (file.size is not None and size != file.size):
            want = f" and {file.size} bytes" if file.size is not None else ""
            raise ChecksumError(
                f"{url}: downloaded {file.name} has MD5 {actual} and {size} bytes, expected MD5 "
                f"{file.md5}{want} (corrupt, truncated or tampered)"
            )


# --------------------------------------------------------------------------- IDX (MNIST)

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


def _to_pair(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> DatasetPair:
    """Fresh float32 tensors in ``[0, 1]`` from cached uint8 arrays (callers may modify them)."""

    def part(x: np.ndarray, y: np.ndarray) -> TensorDataset:
        xt = torch.from_numpy(x).to(torch.float32).div_(255.0)
        return TensorDataset(xt, torch.from_numpy(y.astype(np.int64)))

    return part(x_train, y_train), part(x_test, y_test)


def _load_idx_dataset(name: str, spec: DatasetSpec, src: _Sources) -> DatasetPair:
    paths = _fetch_all(name, spec, src)
    return _to_pair(*_decode_idx(tuple(_stamp(p) for p in paths), spec.info.num_classes))


@DATASETS.register("mnist")
def _mnist(spec: DatasetSpec, src: _Sources) -> DatasetPair:
    return _load_idx_dataset("mnist", spec, src)


@DATASETS.register("fashion_mnist")
def _fashion_mnist(spec: DatasetSpec, src: _Sources) -> DatasetPair:
    return _load_idx_dataset("fashion_mnist", spec, src)


# --------------------------------------------------------------------------- digits

DIGITS_TEST_FRACTION = 0.3
DIGITS_SEED = 0


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    return x, y, _stratified_test_mask(y, DIGITS_TEST_FRACTION, DIGITS_SEED)


def _stratified_test_mask(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Mark ``round(fraction * n_c)`` random samples of every class ``c`` as test samples."""
    rng = np.random.RandomState(seed)  # legacy stream, frozen: the split never changes
    is_test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        n_test = int(np.rint(fraction * len(members)))
        is_test[rng.permutation(members)[:n_test]] = True
    return is_test


@DATASETS.register("digits")
def _digits(spec: DatasetSpec, src: _Sources) -> DatasetPair:
    """scikit-learn's 8x8 digits /16; a 70/30 split stratified per class with seed 0."""
    x, y, is_test = _digits_arrays()

    def part(mask: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.from_numpy(x[mask].copy()), torch.from_numpy(y[mask].copy()))

    return part(~is_test), part(is_test)


# --------------------------------------------------------------------------- CIFAR-10

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
    return _to_pair(*_decode_cifar10(_stamp(path)))


@DATASETS.register("cifar10")
def _cifar10(spec: DatasetSpec, src: _Sources) -> DatasetPair:
    (path,) = _fetch_all("cifar10", spec, src)
    return load_cifar10_archive(path, md5=spec.files[0].md5)
