"""The corruption registry: one entry per (suite, corruption), with its five severities.

Every corruption is registered under ``"<suite>/<name>"`` in :data:`CORRUPTIONS` with the
metadata its callers need:

* ``suite`` and ``corruption`` (the name within the suite);
* ``params``: the five parameter settings, severity 1 to 5, as in the suite's reference code;
* ``default``: the severity that ``severity=None`` means (MNIST-C's benchmark setting, which
  is one level per corruption; 3 for CIFAR-10-C, which has no single setting);
* ``min_size``: the smallest image side it accepts;
* ``held_out``: CIFAR-10-C's four extra corruptions (speckle noise, Gaussian blur, spatter,
  saturate), meant for validation rather than for the benchmark's mean;
* ``note``: how the implementation departs from the reference, if it does;
* ``order``: its place in the suite's canonical order (the order of registration, which is the
  order of the papers' tables).

The registered function has the signature ``fn(x, p, draws) -> Tensor``: images
``[n, C, H, W]`` in [0, 1] (float32 or float64), the severity's parameter setting ``p``, and an
:class:`attacks.rng.Stream` keyed by (suite, corruption, severity) for its random draws; the
result is clipped to [0, 1] by the caller.

References:
    Mu & Gilmer, "MNIST-C: A Robustness Benchmark for Computer Vision", ICML Workshop 2019.
    https://arxiv.org/abs/1906.02337
    Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
    Perturbations", ICLR 2019. https://arxiv.org/abs/1903.12261
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from attacks.registry import Registry
from attacks.rng import Stream

CorruptionFn = Callable[[Tensor, Any, Stream], Tensor]

CORRUPTIONS: Registry[Tensor] = Registry("corruption")
SUITES = ("mnist_c", "cifar10_c")
SUITE_CHANNELS = {"mnist_c": 1, "cifar10_c": 3}
MIN_SIZE = 28
SEVERITIES = (1, 2, 3, 4, 5)


def key(suite: str, name: str) -> str:
    """The registry key of corruption ``name`` in ``suite``."""
    return f"{suite}/{name}"


def corruption(
    suite: str,
    name: str,
    params: Sequence[Any],
    *,
    default: int = 3,
    min_size: int = MIN_SIZE,
    held_out: bool = False,
    note: str = "",
) -> Callable[[CorruptionFn], CorruptionFn]:
    """Register ``fn(x, p, draws)`` as corruption ``name`` of ``suite`` with five ``params``.

    Raises:
        ValueError: An unknown suite, not five parameter settings or a default outside 1-5
            (mistakes in a registration, caught at import).

    """
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {SUITES}, got {suite!r}")
    if len(params) != len(SEVERITIES) or default not in SEVERITIES:
        raise ValueError(f"{suite}/{name}: need 5 parameter settings and a default in 1-5")
    order = len(CORRUPTIONS.names(suite=suite))
    return CORRUPTIONS.register(
        key(suite, name),
        order=order,
        suite=suite,
        corruption=name,
        params=tuple(params),
        default=default,
        min_size=min_size,
        held_out=held_out,
        note=note,
    )


__all__ = [
    "CORRUPTIONS",
    "MIN_SIZE",
    "SEVERITIES",
    "SUITES",
    "SUITE_CHANNELS",
    "CorruptionFn",
    "corruption",
    "key",
]
