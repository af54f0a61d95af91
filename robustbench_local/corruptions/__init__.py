"""Common corruptions generated on the fly: the MNIST-C and CIFAR-10-C suites, batched in PyTorch.

Example:
    >>> import torch
    >>> from robustbench_local.corruptions import corrupt, corruption_names
    >>> x = torch.rand(8, 1, 28, 28)
    >>> y = corrupt(x, "glass_blur")  # MNIST-C's benchmark setting (severity 1)
    >>> corruption_names("mnist_c")[:3]
    ['shot_noise', 'impulse_noise', 'glass_blur']

References:
    Mu & Gilmer, "MNIST-C: A Robustness Benchmark for Computer Vision", ICML Workshop 2019.
    https://arxiv.org/abs/1906.02337
    Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
    Perturbations", ICLR 2019. https://arxiv.org/abs/1903.12261
"""

from __future__ import annotations

import importlib
from typing import Any

from robustbench_local.corruptions.api import (
    corrupt,
    corruption_info,
    corruption_names,
    fits,
    suite_for_channels,
)
from robustbench_local.corruptions.registry import CORRUPTIONS, SEVERITIES, SUITES

_CURVE_EXPORTS = ("corruption_curve", "CorruptionCurve")


def __getattr__(name: str) -> Any:
    """The severity-curve evaluation (``curve.py``), imported on first use."""
    if name in _CURVE_EXPORTS:
        return getattr(importlib.import_module("robustbench_local.corruptions.curve"), name)
    raise AttributeError(f"module 'robustbench_local.corruptions' has no attribute {name!r}")


__all__ = [
    "CORRUPTIONS",
    "SEVERITIES",
    "SUITES",
    "corrupt",
    "corruption_info",
    "corruption_names",
    "fits",
    "suite_for_channels",
]
