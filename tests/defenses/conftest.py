"""Fixtures for the defense tests: digits as Datasets and tiny models."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

torch.set_num_threads(1)


def _make_mlp(seed: int = 0, hidden: int = 64) -> nn.Sequential:
    """A fresh digits MLP (1x8x8 inputs), deterministic for a seed: the architecture of the
    ``plain_mlp`` recipes of ``tests/trained.py``."""
    torch.manual_seed(seed)
    return sys.modules["tests_trained"].plain_mlp(hidden)


@pytest.fixture(scope="session")
def digits_sets(digits) -> tuple[TensorDataset, TensorDataset, tuple[torch.Tensor, torch.Tensor]]:
    """(train [1200], val [200], test tensors [397]) from scikit-learn's digits."""
    x, y = digits
    train = TensorDataset(x[:1200].clone(), y[:1200].clone())
    val = TensorDataset(x[1200:1400].clone(), y[1200:1400].clone())
    return train, val, (x[1400:].clone(), y[1400:].clone())


def _weights_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="session")
def make_mlp():
    """Factory of fresh digits MLPs: ``make_mlp(seed=0, hidden=64)``."""
    return _make_mlp


@pytest.fixture(scope="session")
def weights_equal():
    """``weights_equal(a, b)``: identical state dicts."""
    return _weights_equal
