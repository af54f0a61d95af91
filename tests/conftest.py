"""Shared fixtures: real data (scikit-learn digits, the MNIST mirror) and tiny trained models."""

from __future__ import annotations

import os
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
