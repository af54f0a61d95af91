"""Datasets: digits split, real MNIST / Fashion-MNIST files, real downloads over HTTP, CIFAR-10."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import gzip
import hashlib
import http.server
import io
import os
import pickle
import struct
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from attacks.registry import Registry
from robustbench_local import data
from robustbench_local.data import (
    ChecksumError,
    DownloadError,
    dataset_info,
    dataset_names,
    load_dataset,
    sample_indices,
    subset,
)

torch.set_num_threads(1)

# The published checksums (README of the mirror), written out here independently of data.py.
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
ENV_VARS = ("ROBUSTBENCH_LOCAL_DATA_DIR", "ROBUSTBENCH_LOCAL_CACHE", "ROBUSTBENCH_LOCAL_BASE_URL")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test reads the user's mirror settings or writes to ~/.cache."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ROBUSTBENCH_LOCAL_CACHE", str(tmp_path / "default-cache"))


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def listing(folder: Path) -> list[str]:
    """All entries, hidden temp files included."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@contextlib.contextmanager
def serve(root: Path) -> Iterator[tuple[str, list[tuple[str, int]]]]:
    """Serve ``root`` on 127.0.0.1 (a real HTTP server); yield its URL and the request log."""
    log: list[tuple[str, int]] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_request(self, code="-", size="-"):
            log.append((self.path, int(code)))

        def log_message(self, format, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def mirror_copy(src: Path, dst: Path, name: str, *, tamper: dict[str, bytes] | None = None) -> Path:
    """``dst/name/`` with symlinks to the real files, or replacement bytes for some of them."""
    folder = dst / name
    folder.mkdir(parents=True, exist_ok=True)
    for f in sorted((src / name).iterdir()):
        if tamper and f.name in tamper:
            (folder / f.name).write_bytes(tamper[f.name])
        else:
            (folder / f.name).symlink_to(f)
    return dst


def flipped(path: Path, offset: int = 100) -> bytes:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    return bytes(raw)


# --------------------------------------------------------------------------- registry, info


def test_names_and_info():
    assert dataset_names() == ["cifar10", "digits", "fashion_mnist", "mnist"]
    assert dataset_info("mnist").shape == (1, 28, 28)
    assert dataset_info("CIFAR10").mean == (0.4914, 0.4822, 0.4465)
    assert dataset_info("digits").num_classes == 10
    with pytest.raises(ValueError, match=r"Did you mean 'mnist'.*Known datasets"):
        load_dataset("mnsit")
    with pytest.raises(ValueError, match="base_url"):
        load_dataset("mnist", base_url="ftp://example.org")


def test_each_dataset_registers_once_with_its_spec():
    for name in dataset_names():
        spec = data.DATASETS.metadata(name)["spec"]
        assert spec.name == name and data.dataset_spec(name) == spec == data.SPECS[name]
        assert dataset_info(name) == spec.info
    mnist = data.dataset_spec("mnist")
    assert {f.name: f.md5 for f in mnist.files} == MNIST_MD5
    assert data.dataset_spec("digits").files == ()  # bundled with scikit-learn
    assert list(data.SPECS) == dataset_names() and len(data.SPECS) == 4
    with pytest.raises(TypeError):
        data.SPECS["mnist"] = mnist  # a view of the registry, not a second table
    with pytest.raises(KeyError):
        data.SPECS["mnsit"]


# --------------------------------------------------------------------------- digits


def test_digits_split(digits):
    train, test = load_dataset("digits")
    (xtr, ytr), (xte, yte) = train.tensors, test.tensors
    assert xtr.shape == (1258, 1, 8, 8) and xte.shape == (539, 1, 8, 8)
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.int64
    for x in (xtr, xte):
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    # Stratified: every class has round(30%) of its samples in the test set.
    total = torch.bincount(digits[1], minlength=10)
    assert torch.equal(torch.bincount(yte, minlength=10), torch.round(0.3 * total).long())

    # A partition of the full dataset (same images and labels, each exactly once).
    def rows(x, y):
        return collections.Counter(
            (bytes(xi.numpy().tobytes()), int(yi)) for xi, yi in zip(x, y, strict=True)
        )

    assert rows(xtr, ytr) + rows(xte, yte) == rows(*digits)
    # Deterministic, and fresh tensors each call.
    _, test2 = load_dataset("digits")
    assert torch.equal(xte, test2.tensors[0]) and torch.equal(yte, test2.tensors[1])
    xte.zero_()
    assert float(load_dataset("digits")[1].tensors[0].max()) == 1.0
    # Frozen split: the first test labels never change across versions.
    assert test2.tensors[1][:12].tolist() == [3, 5, 7, 3, 6, 9, 2, 6, 5, 0, 8, 7]


def test_digits_info_matches_training_statistics():
    x = load_dataset("digits")[0].tensors[0]
    info = dataset_info("digits")
    assert info.shape == tuple(x.shape[1:])
    assert abs(float(x.mean()) - info.mean[0]) < 1e-3
    assert abs(float(x.std()) - info.std[0]) < 1e-3


# --------------------------------------------------------------------------- MNIST mirror


def test_mnist_from_mirror(mnist_dir):
    train, test = load_dataset("mnist", data_dir=mnist_dir)
    assert train.tensors[0].shape == (60000, 1, 28, 28)
    assert test.tensors[0].shape == (10000, 1, 28, 28)
    for ds in (train, test):
        x, y = ds.tensors
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.bincount(train.tensors[1]).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(test.tensors[1]).tolist() == MNIST_TEST_COUNTS
    info = dataset_info("mnist")
    assert abs(float(train.tensors[0].mean()) - info.mean[0]) < 1e-3
    assert abs(float(train.tensors[0].std()) - info.std[0]) < 1e-3


def test_fashion_mnist_from_mirror(mnist_dir):
    train, test = load_dataset("fashion_mnist", data_dir=mnist_dir)
    assert train.tensors[0].shape == (60000, 1, 28, 28)
    assert test.tensors[0].shape == (10000, 1, 28, 28)
    assert torch.bincount(train.tensors[1]).tolist() == [6000] * 10
    assert torch.bincount(test.tensors[1]).tolist() == [1000] * 10
    assert float(test.tensors[0].min()) == 0.0 and float(test.tensors[0].max()) == 1.0
    info = dataset_info("fashion_mnist")
    assert abs(float(train.tensors[0].mean()) - info.mean[0]) < 1e-3
    assert abs(float(train.tensors[0].std()) - info.std[0]) < 1e-3
    # Not MNIST by accident.
    mnist_test = load_dataset("mnist", data_dir=mnist_dir)[1]
    assert not torch.equal(mnist_test.tensors[0][:10], test.tensors[0][:10])


def test_env_var_mirror_and_memory_cache(mnist_dir, monkeypatch):
    monkeypatch.setenv("ROBUSTBENCH_LOCAL_DATA_DIR", str(mnist_dir))
    _, first = load_dataset("mnist", download=False)
    hits = data.idx._decode_idx.cache_info().hits
    _, second = load_dataset("mnist", download=False)
    assert data.idx._decode_idx.cache_info().hits == hits + 1  # decoded once per process
    assert torch.equal(first.tensors[0], second.tensors[0])
    first.tensors[0].zero_()  # callers own their tensors
    assert float(load_dataset("mnist", download=False)[1].tensors[0].max()) == 1.0


# --------------------------------------------------------------------------- downloads


def test_download_over_http(mnist_dir, tmp_path):
    served = mirror_copy(mnist_dir, tmp_path / "served", "mnist")
    cache = tmp_path / "cache"
    with serve(served) as (url, log):
        train, test = load_dataset("mnist", base_url=url, cache_dir=cache)
    assert sorted(log) == sorted((f"/mnist/{f}", 200) for f in MNIST_MD5)
    assert listing(cache / "mnist") == sorted(MNIST_MD5)  # no temp files left
    for name, expected in MNIST_MD5.items():
        assert md5(cache / "mnist" / name) == expected
        assert not (cache / "mnist" / name).is_symlink()
    _, mirror_test = load_dataset("mnist", data_dir=mnist_dir)
    assert torch.equal(test.tensors[0], mirror_test.tensors[0])
    assert torch.equal(test.tensors[1], mirror_test.tensors[1])
    assert len(train) == 60000
    # The server is gone: the cache alone serves the next load.
    assert len(load_dataset("mnist", cache_dir=cache, download=False)[1]) == 10000


def test_tampered_download_is_rejected_and_not_cached(mnist_dir, tmp_path):
    name = "train-labels-idx1-ubyte.gz"
    bad = flipped(mnist_dir / "mnist" / name)
    served = mirror_copy(mnist_dir, tmp_path / "served", "mnist", tamper={name: bad})
    cache = tmp_path / "cache"
    with serve(served) as (url, _), pytest.raises(ChecksumError) as err:
        load_dataset("mnist", base_url=url, cache_dir=cache)
    msg = str(err.value)
    assert name in msg and MNIST_MD5[name] in msg
    assert hashlib.md5(bad).hexdigest() in msg
    assert "nothing was saved" in msg and "download again" in msg
    assert name not in listing(cache / "mnist")
    assert not [p for p in listing(cache / "mnist") if p.endswith(".part")]


def test_truncated_download_is_rejected(mnist_dir, tmp_path, monkeypatch):
    name = "train-labels-idx1-ubyte.gz"
    short = (mnist_dir / "mnist" / name).read_bytes()[:1000]
    served = mirror_copy(mnist_dir, tmp_path / "served", "mnist", tamper={name: short})
    cache = tmp_path / "cache"
    monkeypatch.setenv("ROBUSTBENCH_LOCAL_CACHE", str(cache))
    with serve(served) as (url, _):
        monkeypatch.setenv("ROBUSTBENCH_LOCAL_BASE_URL", url)
        with pytest.raises(ChecksumError, match=rf"{name}.*1000 bytes.*28881 bytes"):
            load_dataset("mnist")
    assert listing(cache / "mnist") == ["train-images-idx3-ubyte.gz"]


def test_unreachable_server_is_a_clear_error(tmp_path):
    with serve(tmp_path) as (url, _):
        pass  # the port is closed again
    with pytest.raises(DownloadError, match=r"(?s)Could not download.*base_url.*data_dir"):
        load_dataset("mnist", base_url=url, cache_dir=tmp_path / "cache")
    with serve(tmp_path) as (url, log), pytest.raises(DownloadError, match="404"):
        load_dataset("mnist", base_url=url, cache_dir=tmp_path / "cache")
    assert log == [("/mnist/train-images-idx3-ubyte.gz", 404)]
    assert listing(tmp_path / "cache" / "mnist") == []


def test_cached_file_with_wrong_md5_is_an_error(mnist_dir, tmp_path):
    name = "train-labels-idx1-ubyte.gz"
    cache = mirror_copy(
        mnist_dir, tmp_path / "cache", "mnist", tamper={name: flipped(mnist_dir / "mnist" / name)}
    )
    with pytest.raises(ChecksumError, match=rf"cache/mnist/{name} is corrupt.*delete it"):
        load_dataset("mnist", cache_dir=cache, download=False)


def test_tampered_mirror_file_is_an_error(mnist_dir, tmp_path):
    name = "t10k-images-idx3-ubyte.gz"
    mirror = mirror_copy(
        mnist_dir, tmp_path / "mirror", "mnist", tamper={name: flipped(mnist_dir / "mnist" / name)}
    )
    with pytest.raises(ChecksumError, match=rf"{name} is corrupt or tampered.*{MNIST_MD5[name]}"):
        load_dataset("mnist", data_dir=mirror)


def test_missing_files_without_download(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("fashion_mnist", data_dir=tmp_path / "m", download=False)
    msg = str(err.value)
    assert str(tmp_path / "m" / "fashion_mnist" / "train-images-idx3-ubyte.gz") in msg
    assert "default-cache" in msg and "ROBUSTBENCH_LOCAL_DATA_DIR" in msg


# --------------------------------------------------------------------------- IDX parsing


def write_idx(path: Path, magic: int, dims: tuple[int, ...], payload: bytes) -> Path:
    with gzip.open(path, "wb") as fh:
        fh.write(struct.pack(f">I{len(dims)}I", magic, *dims) + payload)
    return path


def test_read_idx_validates(tmp_path):
    ok = write_idx(tmp_path / "ok.gz", 2051, (2, 3, 3), bytes(range(18)))
    arr = data.read_idx(ok, 2051)
    assert arr.shape == (2, 3, 3) and arr.dtype == np.uint8 and int(arr[1, 2, 2]) == 17
    with pytest.raises(ValueError, match="magic number 2051, expected 2049"):
        data.read_idx(ok, 2049)
    short = write_idx(tmp_path / "short.gz", 2051, (2, 3, 3), bytes(17))
    with pytest.raises(ValueError, match="truncated or corrupt"):
        data.read_idx(short, 2051)
    (tmp_path / "plain.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="not a readable gzip"):
        data.read_idx(tmp_path / "plain.gz", 2051)


# --------------------------------------------------------------------------- CIFAR-10


class _Evil:
    """A pickle payload that would create a folder if it were ever executed."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.makedirs, (str(self.target),))


def make_cifar_archive(
    path: Path, n_train: int = 3, n_test: int = 4, *, replace: dict[str, object] | None = None
) -> dict[str, np.ndarray]:
    """A tiny archive in the official layout and pickle format (protocol 2, bytes keys)."""
    rng = np.random.RandomState(0)
    parts: dict[str, list] = {"x_train": [], "y_train": []}
    with tarfile.open(path, "w:gz") as tar:

        def add(name: str, obj: object) -> None:
            raw = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))

        add("batches.meta", {b"label_names": [b"airplane"] * 10, b"num_vis": 3072})
        for batch in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            n = n_test if batch == "test_batch" else n_train
            x = rng.randint(0, 256, size=(n, 3072)).astype(np.uint8)
            y = rng.randint(0, 10, size=n).tolist()
            obj = {b"batch_label": batch.encode(), b"labels": y, b"data": x}
            obj[b"filenames"] = [f"img_{i}.png".encode() for i in range(n)]
            add(batch, (replace or {}).get(batch, obj))
            if batch == "test_batch":
                parts["x_test"], parts["y_test"] = [x], [y]
            else:
                parts["x_train"].append(x)
                parts["y_train"].append(y)
    return {
        k: np.concatenate(v).reshape(-1, 3, 32, 32) if k[0] == "x" else np.concatenate(v)
        for k, v in parts.items()
    }


def test_cifar10_archive_reader(tmp_path):
    archive = tmp_path / data.CIFAR10_FILE
    expected = make_cifar_archive(archive)
    train, test = data.load_cifar10_archive(archive, md5=md5(archive))
    assert train.tensors[0].shape == (15, 3, 32, 32) and test.tensors[0].shape == (4, 3, 32, 32)
    assert train.tensors[0].dtype == torch.float32 and train.tensors[1].dtype == torch.int64
    assert torch.equal(train.tensors[0], torch.from_numpy(expected["x_train"]).float() / 255)
    assert torch.equal(test.tensors[0], torch.from_numpy(expected["x_test"]).float() / 255)
    assert train.tensors[1].tolist() == expected["y_train"].tolist()
    assert test.tensors[1].tolist() == expected["y_test"].tolist()
    # The official checksum is the default: this tiny archive is not the official file.
    with pytest.raises(ChecksumError, match=data.CIFAR10_MD5):
        data.load_cifar10_archive(archive)


def test_cifar10_rejects_code_in_pickles_and_bad_layout(tmp_path):
    marker = tmp_path / "pwned"
    archive = tmp_path / "evil.tar.gz"
    make_cifar_archive(archive, replace={"data_batch_3": _Evil(marker)})
    with pytest.raises(ValueError, match=r"data_batch_3.*refusing to load global .*makedirs"):
        data.load_cifar10_archive(archive, md5=md5(archive))
    assert not marker.exists()
    archive = tmp_path / "shape.tar.gz"
    make_cifar_archive(archive, replace={"test_batch": {b"data": np.zeros((2, 10), np.uint8)}})
    with pytest.raises(ValueError, match=r"test_batch.*\[n, 3072\]"):
        data.load_cifar10_archive(archive, md5=md5(archive))
    archive = tmp_path / "missing.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/readme.html")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(ValueError, match="data_batch_1 missing"):
        data.load_cifar10_archive(archive, md5=md5(archive))


@pytest.fixture
def tiny_cifar(tmp_path, monkeypatch) -> tuple[Path, dict[str, np.ndarray]]:
    """A tiny archive at ``<mirror>/cifar10/``; cifar10 re-registered with its checksum."""
    archive = tmp_path / "mirror" / "cifar10" / data.CIFAR10_FILE
    archive.parent.mkdir(parents=True)
    expected = make_cifar_archive(archive)
    file = data.FileSpec(data.CIFAR10_FILE, md5(archive), archive.stat().st_size)
    registry = Registry("dataset")
    for name in data.dataset_names():
        spec = data.dataset_spec(name)
        if name == "cifar10":
            spec = dataclasses.replace(spec, files=(file,))
        registry.register(name, spec=spec)(data.DATASETS.get(name))
    monkeypatch.setattr(data, "DATASETS", registry)
    return archive.parents[1], expected


def test_cifar10_via_load_dataset(tiny_cifar, tmp_path):
    mirror, expected = tiny_cifar
    train, test = load_dataset("cifar10", data_dir=mirror)
    assert torch.equal(test.tensors[0], torch.from_numpy(expected["x_test"]).float() / 255)
    assert len(train) == 15
    cache = tmp_path / "cache"
    with serve(mirror) as (url, log):
        _, downloaded = load_dataset("cifar10", base_url=url, cache_dir=cache)
    assert log == [(f"/cifar10/{data.CIFAR10_FILE}", 200)]
    assert listing(cache / "cifar10") == [data.CIFAR10_FILE]
    assert torch.equal(downloaded.tensors[1], test.tensors[1])


# --------------------------------------------------------------------------- sampling


def test_sample_indices_and_subset():
    idx = sample_indices(100, 10, seed=0)
    assert idx.dtype == torch.int64 and len(set(idx.tolist())) == 10
    assert torch.equal(idx, idx.sort().values)
    assert torch.equal(idx, sample_indices(100, 10, seed=0))
    assert not torch.equal(idx, sample_indices(100, 10, seed=1))
    assert sample_indices(10, 3, seed=0).tolist() == [2, 4, 8]  # frozen across versions
    assert torch.equal(sample_indices(5, 5), torch.arange(5))
    for bad in [(10, 11, 0), (10, -1, 0), (10, 2, -1), (10, 2.5, 0)]:
        with pytest.raises(ValueError, match=r"n_total|n=|n must|seed"):
            sample_indices(*bad)

    x, y = torch.arange(50.0).view(50, 1), torch.arange(50) % 7
    sub = subset(TensorDataset(x, y), 5, seed=3)
    keep = sample_indices(50, 5, seed=3)
    assert torch.equal(sub.tensors[0], x[keep]) and torch.equal(sub.tensors[1], y[keep])
    generic = subset([(x[i], y[i]) for i in range(50)], 5, seed=3)
    assert torch.equal(generic.tensors[0], sub.tensors[0])
    with pytest.raises(ValueError, match="n <= 50"):
        subset(TensorDataset(x, y), 51)
