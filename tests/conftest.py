"""Shared fixtures: real data (scikit-learn digits, the MNIST mirror) and tiny trained models."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


DATA_ENV = "ROBUSTBENCH_LOCAL_DATA_DIR"


def shared_datasets_dir() -> Path | None:
    """The offline dataset mirror: $ROBUSTBENCH_LOCAL_DATA_DIR or ../shared/datasets.

    This is the one lookup of the mirror in the test suite: :func:`pytest_configure` exports it
    in $ROBUSTBENCH_LOCAL_DATA_DIR, which the other conftests and subprocesses read.
    """
    env = os.environ.get(DATA_ENV)
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "datasets")
    for c in candidates:
        if (c / "mnist" / "t10k-images-idx3-ubyte.gz").exists():
            return c.resolve()
    return None


def pytest_configure(config: pytest.Config) -> None:
    """Point the product at the offline mirror when one is found (``make test-fast`` too)."""
    found = shared_datasets_dir()
    if found is not None and not os.environ.get(DATA_ENV):
        os.environ[DATA_ENV] = str(found)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """Folder holding mnist/ and fashion_mnist/ in their original format."""
    d = shared_datasets_dir()
    if d is None:
        pytest.skip("MNIST mirror not found: set ROBUSTBENCH_LOCAL_DATA_DIR to ../shared/datasets")
    return d


def _load_trained() -> ModuleType:
    """``tests/trained.py`` (the cached training helper) as module ``tests_trained``.

    Loaded by path, as the test folders are no packages; other conftests reach it through the
    ``trained`` fixture or ``sys.modules["tests_trained"]``.
    """
    spec = importlib.util.spec_from_file_location("tests_trained", REPO / "tests" / "trained.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


TRAINED = _load_trained()


@pytest.fixture(scope="session")
def trained(pytestconfig) -> Callable[[str], nn.Module]:
    """``trained(recipe_name)``: a model of ``tests/trained.py``'s RECIPES, trained once and
    cached on disk (pytest's cache folder) by recipe and code version. Each call gives a new
    instance."""
    cache_dir = TRAINED.pytest_cache_dir(pytestconfig)
    return lambda name: TRAINED.trained_model(name, cache_dir)


@pytest.fixture(scope="session")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits as ``x [1797, 1, 8, 8]`` in [0, 1] and ``y [1797]``."""
    return TRAINED.digits_tensors()


@pytest.fixture(scope="session")
def digits_model(trained) -> nn.Module:
    """An undefended MLP with ~100% train accuracy on digits[:1200] (do not modify it in tests)."""
    return trained("digits_mlp")


@pytest.fixture
def digits_batch(digits) -> tuple[torch.Tensor, torch.Tensor]:
    """200 held-out digits samples."""
    x, y = digits
    return x[1200:1400].clone(), y[1200:1400].clone()


# ------------------------------------------------------------------------ a real mlflow server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"mlflow server at {url} did not answer /health within {timeout:.0f} s")


def _stop(proc: subprocess.Popen) -> None:
    """End the server's whole process group (uvicorn workers included) by its process id."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 (SQLite store, proxied artifacts); yields its URI.

    One server serves the whole session; it is stopped by its process id at the end, and its
    port is free again afterwards.
    """
    root = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "mlartifacts"),
    ]  # fmt: skip
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(url, proc)
        yield url
    finally:
        _stop(proc)
        log.close()
