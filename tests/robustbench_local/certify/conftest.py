"""Tiny trained networks for the bound-propagation and MILP tests (a second or two each)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from robustbench_local.models.zoo import Normalize


def train_full_batch(model: nn.Module, x: Tensor, y: Tensor, steps: int, lr: float = 1e-2):
    """Full-batch Adam on ``(x, y)``; the model comes back in eval mode."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def small_mlp(hidden: int = 16) -> nn.Sequential:
    """Normalisation, two hidden ReLU layers (nested containers), dropout."""
    torch.manual_seed(1)
    return nn.Sequential(
        Normalize(0.3, 0.35),
        nn.Flatten(),
        nn.Sequential(nn.Linear(64, hidden), nn.ReLU()),
        nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(0.1)),
        nn.Linear(hidden, 10),
    )


def small_cnn() -> nn.Sequential:
    """Normalisation, convolutions, BatchNorm, average pooling, a hidden linear layer."""
    torch.manual_seed(2)
    return nn.Sequential(
        Normalize(0.3, 0.35),
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(4, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 2 * 2, 16),
        nn.ReLU(),
        nn.Linear(16, 10),
    )


@pytest.fixture(scope="session")
def cert_mlp(digits) -> nn.Module:
    """A 64-16-16-10 digits MLP with a normalisation layer, trained (eval mode)."""
    x, y = digits
    return train_full_batch(small_mlp(), x[:1200], y[:1200], steps=150)


@pytest.fixture(scope="session")
def cert_cnn(digits) -> nn.Module:
    """A small digits CNN (conv, BatchNorm, average pooling), trained (eval mode)."""
    x, y = digits
    return train_full_batch(small_cnn(), x[:1200], y[:1200], steps=150)


@pytest.fixture
def cert_batch(digits) -> tuple[Tensor, Tensor]:
    """40 held-out digits samples."""
    x, y = digits
    return x[1200:1240].clone(), y[1200:1240].clone()
