"""``corrupt`` and the look-ups around it: names, suites, what fits an image batch.

References:
    Mu & Gilmer, "MNIST-C: A Robustness Benchmark for Computer Vision", ICML Workshop 2019.
    https://arxiv.org/abs/1906.02337
    Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
    Perturbations", ICLR 2019. https://arxiv.org/abs/1903.12261
"""

from __future__ import annotations

import difflib
import math
import numbers
from typing import Any

import torch
from torch import Tensor

import robustbench_local.corruptions.cifar10_c as cifar10_c  # noqa: F401  (registration)
import robustbench_local.corruptions.mnist_c as mnist_c  # noqa: F401  (registration)
from attacks.rng import Stream
from attacks.validation import BOUNDS_TOL, check_ids
from robustbench_local.corruptions.registry import (
    CORRUPTIONS,
    SEVERITIES,
    SUITE_CHANNELS,
    SUITES,
    key,
)


def suite_for_channels(channels: int) -> str:
    """The suite that ``suite="auto"`` picks for images with ``channels`` channels.

    Raises:
        ValueError: Neither 1 (MNIST-C) nor 3 (CIFAR-10-C) channels.

    """
    for suite, c in SUITE_CHANNELS.items():
        if c == channels:
            return suite
    raise ValueError(
        f"no corruption suite for {channels}-channel images: MNIST-C takes gray images "
        "[N, 1, H, W] and CIFAR-10-C color images [N, 3, H, W]; convert the images "
        "(e.g. x.mean(1, keepdim=True) or x.expand(-1, 3, -1, -1))"
    )


def _check_suite(suite: Any, channels: int) -> str:
    if suite == "auto":
        return suite_for_channels(channels)
    if suite not in SUITES:
        raise ValueError(f"suite={suite!r}; use 'auto' or one of: {', '.join(SUITES)}")
    want = SUITE_CHANNELS[suite]
    if channels != want:
        other = suite_for_channels(channels) if channels in SUITE_CHANNELS.values() else None
        hint = f", or use suite={other!r}" if other else ""
        raise ValueError(
            f"suite {suite!r} corrupts {want}-channel images, got {channels} channels; "
            f"pass images [N, {want}, H, W]{hint}"
        )
    return suite


def corruption_names(suite: str | None = None) -> list[str]:
    """The corruptions of ``suite`` in the paper's order, or every name when ``suite`` is None.

    Raises:
        ValueError: An unknown suite.

    """
    if suite is None:
        return sorted({CORRUPTIONS.metadata(k)["corruption"] for k in CORRUPTIONS.names()})
    if suite not in SUITES:
        raise ValueError(f"suite={suite!r}; use None or one of: {', '.join(SUITES)}")
    keys = CORRUPTIONS.names(suite=suite)
    keys.sort(key=lambda k: CORRUPTIONS.metadata(k)["order"])
    return [CORRUPTIONS.metadata(k)["corruption"] for k in keys]


def corruption_info(name: str, suite: str) -> dict[str, Any]:
    """The registry metadata of ``name`` in ``suite`` (params, default, min_size, note, ...).

    Raises:
        ValueError: An unknown suite or corruption (the known ones listed, the closest named).

    """
    if suite not in SUITES:
        raise ValueError(f"suite={suite!r}; use one of: {', '.join(SUITES)}")
    return CORRUPTIONS.metadata(_check_name(name, suite))


def _check_name(name: Any, suite: str) -> str:
    if not isinstance(name, str):
        raise ValueError(f"corruption name must be a string, got {name!r}")
    k = key(suite, name.lower())
    if k in CORRUPTIONS:
        return k
    known = corruption_names(suite)
    close = difflib.get_close_matches(name.lower(), known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    elsewhere = [s for s in SUITES if s != suite and key(s, name.lower()) in CORRUPTIONS]
    where = f" It exists in suite {elsewhere[0]!r}." if elsewhere else ""
    raise ValueError(
        f"Unknown corruption {name!r} in suite {suite!r}.{hint}{where} "
        f"Known {suite} corruptions: {', '.join(known)}."
    )


def _check_severity(severity: Any, default: int) -> int:
    if severity is None:
        return default
    ok = isinstance(severity, numbers.Integral) and not isinstance(severity, bool)
    if not ok or int(severity) not in SEVERITIES:
        raise ValueError(
            f"severity must be an integer from 1 to 5 (or None for the benchmark setting), "
            f"got {severity!r}"
        )
    return int(severity)


def _check_images(x: Any) -> bool:
    """Check a batch of images; True when values need clipping (within float tolerance)."""
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a torch.Tensor of images, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(
            f"x must be a float tensor in [0, 1], got dtype {x.dtype}; divide uint8 images by 255"
        )
    if x.dim() != 4 or x.shape[0] == 0:
        raise ValueError(
            f"x must be a non-empty batch of images [N, C, H, W], got shape {tuple(x.shape)}; "
            "add a batch axis with x.unsqueeze(0) for a single image"
        )
    lo, hi = (float(v) for v in torch.aminmax(x.detach()))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("x contains NaN or infinite values")
    if lo < -BOUNDS_TOL or hi > 1 + BOUNDS_TOL:
        raise ValueError(
            f"x has values in [{lo:.4g}, {hi:.4g}]; corruptions take images in [0, 1]: "
            "divide 0-255 images by 255 and undo any mean/std normalisation first"
        )
    return lo < 0 or hi > 1


def _check_size(x: Tensor, name: str, suite: str, min_size: int) -> None:
    h, w = x.shape[-2:]
    if min(h, w) < min_size:
        raise ValueError(
            f"{suite} {name} needs images of at least {min_size}x{min_size} pixels, got "
            f"{h}x{w}; upsample the images first (e.g. F.interpolate(x, size={min_size}))"
        )


def fits(name: str, suite: str, x: Tensor) -> bool:
    """Whether corruption ``name`` of ``suite`` applies to images shaped like ``x``."""
    if x.dim() != 4 or suite not in SUITES or int(x.shape[1]) != SUITE_CHANNELS[suite]:
        return False
    k = key(suite, name.lower())
    return k in CORRUPTIONS and min(x.shape[-2:]) >= CORRUPTIONS.metadata(k)["min_size"]


def corrupt(
    x: Tensor,
    name: str,
    severity: int | None = None,
    *,
    suite: str = "auto",
    seed: int = 0,
    ids: Tensor | None = None,
) -> Tensor:
    """Corrupt a batch of images with one corruption of MNIST-C or CIFAR-10-C.

    A sample's corrupted image depends on (seed, its id, corruption, severity) only: not on
    the batch it comes in, its position or other samples. Runs on the device of ``x``, without
    gradients.

    Args:
        x: Images ``[N, C, H, W]`` in [0, 1], float; gray (C = 1) for MNIST-C, color (C = 3)
            for CIFAR-10-C; at least 28 pixels a side.
        name: A corruption of the suite (:func:`corruption_names`).
        severity: 1 to 5, or None for the benchmark setting (MNIST-C: the reference's one
            level per corruption; CIFAR-10-C: 3).
        suite: ``"mnist_c"``, ``"cifar10_c"`` or ``"auto"`` (from the channels).
        seed: Seed of the random draws.
        ids: ``[N]`` non-negative sample ids (default ``0..N-1``).

    Returns:
        The corrupted images: same shape, dtype and device, values in [0, 1].

    Raises:
        ValueError: Bad images (not 4-D, not float, outside [0, 1], too small), a suite that
            does not fit the channels, an unknown name or a severity outside 1-5.

    Example:
        >>> x = torch.rand(4, 1, 28, 28)
        >>> corrupt(x, "shot_noise").shape
        torch.Size([4, 1, 28, 28])

    """
    needs_clip = _check_images(x)
    suite = _check_suite(suite, int(x.shape[1]))
    k = _check_name(name, suite)
    meta = CORRUPTIONS.metadata(k)
    level = _check_severity(severity, meta["default"])
    _check_size(x, meta["corruption"], suite, meta["min_size"])
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    sample_ids = check_ids(ids, x.shape[0], x.device)
    draws = Stream(int(seed), sample_ids, ("corruption", suite, meta["corruption"], level))
    with torch.no_grad():
        return _apply(CORRUPTIONS.get(k), meta["params"][level - 1], x.detach(), draws, needs_clip)


def _apply(fn: Any, params: Any, x: Tensor, draws: Stream, needs_clip: bool) -> Tensor:
    """Run ``fn`` chunk by chunk, writing the clipped result straight into the output."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    step = _chunk(x)
    for i in range(0, x.shape[0], step):
        xc = x[i : i + step].to(dtype)
        if needs_clip:
            xc = xc.clamp(0, 1)
        part = Stream(draws.seed, draws.ids[i : i + step], draws.key)
        y = fn(xc, params, part)
        if y.dtype == out.dtype:
            torch.clamp(y, 0, 1, out=out[i : i + step])  # clip and copy in one pass
        else:
            out[i : i + step] = y.clamp(0, 1)
    return out


CPU_CHUNK_VALUES = 1 << 20
"""Values per chunk of a batch on the CPU: chains of element-wise operations stay in the
cache (measured 1.3-2x faster than whole MNIST batches)."""
MIN_CHUNK_IMAGES = 64
"""Images per chunk at least, so that per-position loops (glass blur) run for many at once."""


def _chunk(x: Tensor) -> int:
    """Images per chunk: about :data:`CPU_CHUNK_VALUES` values on the CPU, all on accelerators."""
    if x.device.type != "cpu":
        return x.shape[0]
    return max(MIN_CHUNK_IMAGES, CPU_CHUNK_VALUES // max(1, x[0].numel()))


__all__ = [
    "corrupt",
    "corruption_info",
    "corruption_names",
    "fits",
    "suite_for_channels",
]
