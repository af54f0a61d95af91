"""Shared fixtures: real data (scikit-learn digits, the MNIST mirror) and tiny trained models."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from sklearn.datasets import load_digits
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


@pytest.fixture(scope="session")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits as ``x [1797, 1, 8, 8]`` in [0, 1] and ``y [1797]``."""
    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    return x, torch.tensor(d.target, dtype=torch.long)


def train_digits_mlp(
    x: torch.Tensor, y: torch.Tensor, epochs: int = 150, seed: int = 0
) -> nn.Module:
    """A small MLP trained full-batch on digits (about a second on one core)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def digits_model(digits) -> nn.Module:
    """An undefended MLP with ~100% train accuracy on digits (do not modify it in tests)."""
    x, y = digits
    return train_digits_mlp(x[:1200], y[:1200])


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
