"""Sharding a fixed sample list over ``torch.distributed`` ranks, gathering, deciding once.

An evaluation is a fixed, ordered list of samples. Under ``torchrun`` (or any initialised
process group) every rank takes one contiguous slice of it (:func:`shard_bounds`: the slices
are disjoint, cover the list exactly and differ in length by at most one, so there are no
padded duplicates for any ``N``, including ``N`` not divisible by the world size and
``N < world size``, where some ranks get nothing), attacks it, and the per-sample results are
gathered back in the original order on every rank (:func:`gather_objects`, or
:func:`gather_rows` for large tensors). Decisions that depend on data (preflight, health
checks, fallbacks) are taken once, by rank 0, and broadcast (:func:`decide_once`), so no two
ranks choose differently; :func:`check_same` verifies that every rank holds the same model and
sample list.

Every helper also works without an initialised process group (one process: rank 0 of a world
of size 1), so code written against them runs unchanged in a plain ``python`` process.

A plain ``DistributedSampler`` pads the last slice with repeated samples so that every rank gets
the same count; that biases an evaluation (Lightning issue #11479), which is why the slices here
are computed directly.

Example:
    >>> # torchrun --nproc_per_node=2 script.py
    >>> world = init_distributed()             # gloo on CPU, NCCL on CUDA (from the env)
    >>> lo, hi = shard_bounds(len(samples), world.rank, world.size)
    >>> mine = evaluate(samples[lo:hi])
    >>> results = [r for part in gather_objects(mine) for r in part]   # same on every rank

References:
    Li et al., "PyTorch Distributed: Experiences on Accelerating Data Parallel Training",
    VLDB 2020 (torch.distributed and its collectives).
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from defenses.distributed import (
    BACKENDS,
    DEFAULT_TIMEOUT_S,
    barrier,
    broadcast_object,
    gather_objects,
    init_process_group,
    is_main,
    rank,
    resolve_backend,
    world_size,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """Where this process stands: its rank, the world size and the backend (None: no group).

    Attributes:
        rank: This process's rank (0 without a process group).
        size: Number of processes (1 without a process group).
        backend: The process group's backend (``"gloo"``, ``"nccl"``), None without one.
    """

    rank: int = 0
    size: int = 1
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the one that writes files, logs to MLflow and takes decisions)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.size > 1

    def shard(self, n: int) -> tuple[int, int]:
        """The slice ``[lo, hi)`` of ``n`` items this rank takes (see :func:`shard_bounds`)."""
        return shard_bounds(n, self.rank, self.size)


def world() -> World:
    """The current process group's rank, size and backend (``World()`` when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), str(dist.get_backend()))
    return World()


def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """The contiguous slice ``[lo, hi)`` of ``n`` items that ``rank`` of ``size`` processes takes.

    The first ``n % size`` ranks take ``n // size + 1`` items, the others ``n // size``: the
    slices are disjoint, in rank order, cover ``0..n-1`` exactly once and never repeat an item.

    Raises:
        ValueError: ``n < 0``, ``size < 1`` or ``rank`` outside ``[0, size)``.
    """
    if n < 0 or size < 1 or not 0 <= rank < size:
        raise ValueError(f"need n >= 0, size >= 1 and 0 <= rank < size; got {n=}, {rank=}, {size=}")
    base, extra = divmod(n, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def init_distributed(
    backend: str = "auto",
    *,
    device: torch.device | str | None = None,
    timeout_s: float | None = None,
) -> World:
    """Start the default process group from the environment ``torchrun`` sets; the world after.

    The project's one starter, :func:`defenses.distributed.init_process_group`, with its one
    behaviour: nothing happens in a single process or when a group exists; half a launch
    environment is an error; with NCCL the local rank's GPU becomes the current device; a
    group started here is destroyed at interpreter exit.

    Args:
        backend: ``"auto"`` (NCCL for a CUDA ``device``, else gloo), ``"gloo"`` or ``"nccl"``.
        device: The device the evaluation runs on (chooses the ``"auto"`` backend).
        timeout_s: Collective timeout in seconds (default: 30 minutes, PyTorch's).

    Returns:
        The :class:`World` after initialisation.

    Raises:
        ValueError: An unknown backend, NCCL requested without CUDA, or ``WORLD_SIZE > 1``
            without the other launch variables.
    """
    timeout = DEFAULT_TIMEOUT_S if timeout_s is None else float(timeout_s)
    if dist.is_available():
        init_process_group(backend, timeout, device=device)
    else:
        resolve_backend(backend, device)
    return world()


def setup(device: torch.device | str | None = None) -> World:
    """The world an evaluation on ``device`` runs in; joins the ``torchrun`` job if needed.

    Under ``torchrun`` without a process group, one is started (NCCL for a CUDA device, gloo
    otherwise; :func:`init_distributed`), so that ``robustness_curve`` shards by itself.
    """
    return init_distributed("auto", device=device)


def _comm_device() -> torch.device:
    """Where collectives' tensors must live: the current CUDA device under NCCL, else CPU."""
    if world().backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(t: Tensor) -> Tensor:
    """Concatenate every rank's ``t`` along dim 0, in rank order (row counts may differ).

    The ranks exchange their row counts first, then tensors padded to the longest; the padding
    is cut off again, so nothing is duplicated. The trailing shapes and dtypes must agree.
    """
    here = world()
    if not here.distributed:
        return t
    dev = _comm_device()
    wire = t.to(torch.uint8) if t.dtype == torch.bool else t
    sizes = gather_objects(int(t.shape[0]))
    padded = torch.zeros((max(sizes), *t.shape[1:]), dtype=wire.dtype, device=dev)
    padded[: t.shape[0]] = wire.to(dev)
    parts = [torch.empty_like(padded) for _ in range(here.size)]
    dist.all_gather(parts, padded)
    out = torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)]).to(t.device)
    return out.to(torch.bool) if t.dtype == torch.bool else out


@dataclass(frozen=True)
class _Outcome:
    """What rank 0 broadcasts: a value, or the exception it raised (pickled, or its text)."""

    value: Any = None
    error: bytes | None = None
    error_text: str = ""


def _pack_error(err: Exception) -> _Outcome:
    try:
        return _Outcome(error=pickle.dumps(err), error_text=f"{type(err).__name__}: {err}")
    except (pickle.PicklingError, TypeError, AttributeError):
        return _Outcome(error_text=f"{type(err).__name__}: {err}")


def decide_once(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` on rank 0 only and return its result on every rank.

    If ``fn`` raises on rank 0, every rank raises: the same exception where it can be pickled,
    else a ``RuntimeError`` carrying its text. Without a process group this is ``fn(*args)``.
    """
    here = world()
    if not here.distributed:
        return fn(*args, **kwargs)
    outcome = _Outcome()
    if here.is_main:
        try:
            outcome = _Outcome(value=fn(*args, **kwargs))
        except Exception as err:  # re-raised below on every rank, rank 0 included
            outcome = _pack_error(err)
            broadcast_object(outcome)
            raise
    outcome = broadcast_object(outcome)
    if outcome.error is not None:
        raise pickle.loads(outcome.error)  # bytes pickled by rank 0 of this very job
    if outcome.error_text:
        raise RuntimeError(f"rank 0 failed: {outcome.error_text}")
    return outcome.value


def check_same(what: str, value: Any) -> None:
    """Raise on every rank unless every rank passes an equal ``value``.

    Raises:
        ValueError: Naming ``what`` and the ranks that differ from rank 0.
    """
    values = gather_objects(value)
    differ = [r for r, v in enumerate(values) if v != values[0]]
    if differ:
        raise ValueError(
            f"the ranks disagree on {what}: ranks {differ} differ from rank 0. Every rank must "
            "evaluate the same model on the same data with the same settings (load the same "
            "checkpoint and seed on every rank)"
        )


__all__ = [
    "BACKENDS",
    "World",
    "barrier",
    "broadcast_object",
    "check_same",
    "decide_once",
    "gather_objects",
    "gather_rows",
    "init_distributed",
    "is_main",
    "rank",
    "resolve_backend",
    "setup",
    "shard_bounds",
    "world",
    "world_size",
]
