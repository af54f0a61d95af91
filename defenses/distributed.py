"""torch.distributed for the project: the launch environment, the process group and DDP.

Everything here is a no-op in a single process, so callers write one code path:

- :func:`slurm_environment` / :func:`apply_slurm_environment`: the ``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` variables ``torch.distributed`` reads,
  derived from SLURM's (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``, the node list)
  when a job runs under ``srun``/submitit without ``torchrun``.
- :func:`init_process_group` / :func:`distributed_session`: the process group from that
  environment (gloo on CPU, NCCL on CUDA), the CUDA device of the local rank, and the teardown.
- :func:`rank`, :func:`world_size`, :func:`is_main`, :func:`barrier`, :func:`broadcast_object`,
  :func:`broadcast_module`, :func:`all_reduce_sum`, :func:`gather_objects`: small collectives.
- :class:`AttackSafeDDP`: ``DistributedDataParallel`` whose forward leaves the wrapper out while
  every parameter is frozen, as an attack's ``model_guard`` leaves them, so the attack's forward
  and backward passes inside a training step start no collective (no gradient all-reduce, no
  buffer broadcast) and ranks may run different numbers of them.

References:
    Li et al., "PyTorch Distributed: Experiences on Accelerating Data Parallel Training",
    VLDB 2020. https://arxiv.org/abs/2006.15704

"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import os
import re
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, TensorDataset

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "gloo", "nccl")
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
"""What a multi-process launch must set (``LOCAL_RANK`` defaults to 0)."""
DEFAULT_TIMEOUT_S = 1800.0


# ------------------------------------------------------------------ where this process stands


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """The global rank of this process (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of processes in the group (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one that writes files and logs runs."""
    return rank() == 0


def local_rank(env: Mapping[str, str] | None = None) -> int:
    """``$LOCAL_RANK`` (set by torchrun or :func:`apply_slurm_environment`), else 0."""
    env = os.environ if env is None else env
    return int(env.get("LOCAL_RANK", "0"))


# ------------------------------------------------------------------------------- SLURM


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list, e.g. ``"gpu[03-05,9],cpu1"`` -> ``"gpu03"``.

    Raises:
        ValueError: An empty or malformed list.
    """
    text = nodelist.strip()
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", text)
    if not text or match is None:
        raise ValueError(f"cannot read a host name from the SLURM node list {nodelist!r}")
    prefix, ranges = match.group(1), match.group(2)
    if ranges is None:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    if not first.isdigit():
        raise ValueError(f"cannot read a host name from the SLURM node list {nodelist!r}")
    return prefix + first


def slurm_port(job_id: str | None, base: int = 20000, span: int = 20000) -> int:
    """A port for the rendezvous that every task of one SLURM job agrees on (from the job id)."""
    digits = re.sub(r"\D", "", job_id or "")
    return base + (int(digits) % span if digits else 9500)


def slurm_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The torch.distributed variables of a SLURM task that was not started by ``torchrun``.

    Args:
        env: The environment to read (default ``os.environ``).

    Returns:
        ``RANK`` (``SLURM_PROCID``), ``WORLD_SIZE`` (``SLURM_NTASKS``), ``LOCAL_RANK``
        (``SLURM_LOCALID``), ``MASTER_ADDR`` (the first host of ``SLURM_JOB_NODELIST``) and
        ``MASTER_PORT`` (``$MASTER_PORT`` or one derived from ``SLURM_JOB_ID``); empty outside a
        SLURM task or when ``RANK`` is already set (torchrun's variables win).
    """
    env = os.environ if env is None else env
    if "RANK" in env or "SLURM_PROCID" not in env or "SLURM_NTASKS" not in env:
        return {}
    nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1"
    return {
        "RANK": str(int(env["SLURM_PROCID"])),
        "WORLD_SIZE": str(int(env["SLURM_NTASKS"])),
        "LOCAL_RANK": str(int(env.get("SLURM_LOCALID", "0"))),
        "MASTER_ADDR": env.get("MASTER_ADDR") or first_host(nodes),
        "MASTER_PORT": env.get("MASTER_PORT") or str(slurm_port(env.get("SLURM_JOB_ID"))),
    }


def apply_slurm_environment(env: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the variables of :func:`slurm_environment` in ``env`` (default ``os.environ``).

    Returns:
        What was set (empty when not under SLURM or already under torchrun).
    """
    env = os.environ if env is None else env
    values = slurm_environment(env)
    env.update(values)
    if values:
        logger.info("torch.distributed environment from SLURM: %s", values)
    return values


# ------------------------------------------------------------------------ the process group


def resolve_backend(backend: str = "auto", device: torch.device | str | None = None) -> str:
    """The backend to initialise: ``"auto"`` is NCCL for CUDA, else gloo.

    Args:
        backend: ``"auto"``, ``"gloo"`` or ``"nccl"``.
        device: The device the process computes on; with ``"auto"``, NCCL only for a CUDA
            device (default: whether CUDA is available).

    Raises:
        ValueError: An unknown backend, or NCCL where CUDA is not available.
    """
    if backend not in BACKENDS:
        raise ValueError(
            f"unknown distributed backend {backend!r}; use one of {', '.join(BACKENDS)}"
        )
    if backend == "auto":
        cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
        backend = "nccl" if cuda and torch.cuda.is_available() else "gloo"
    if backend == "nccl" and not (torch.cuda.is_available() and dist.is_nccl_available()):
        raise ValueError(
            "backend 'nccl' needs CUDA GPUs and a CUDA build of PyTorch, but this process has "
            f"none (torch {torch.__version__}, torch.cuda.is_available()="
            f"{torch.cuda.is_available()}); use backend='gloo' for CPU processes (or 'auto'), or "
            "run on GPU nodes"
        )
    return backend


def init_process_group(
    backend: str = "auto",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    env: Mapping[str, str] | None = None,
    *,
    device: torch.device | str | None = None,
) -> bool:
    """Start the default process group when the environment names several processes.

    The one starter of the project (training, evaluation, experiments and
    ``robustbench_local.init_distributed`` all call it), with one behaviour:

    - the backend is checked first, also in a single process (an unknown backend, or NCCL
      without CUDA, is an error);
    - nothing happens when a group exists already or ``WORLD_SIZE`` is missing or 1;
    - ``WORLD_SIZE > 1`` without ``RANK``, ``MASTER_ADDR`` or ``MASTER_PORT`` is an error (half
      a launch environment is never taken for a single process);
    - with NCCL, ``cuda:$LOCAL_RANK`` becomes the current device;
    - a group started here is destroyed at interpreter exit, or earlier when the
      :func:`distributed_session` block that started it ends.

    Args:
        backend: ``"auto"``, ``"gloo"`` or ``"nccl"`` (see :func:`resolve_backend`).
        timeout_s: Timeout of the group's collectives.
        env: The environment (default ``os.environ``; torchrun or SLURM set it).
        device: The device this process computes on (chooses the ``"auto"`` backend).

    Returns:
        True if this call started the group.

    Raises:
        ValueError: A bad backend, or ``WORLD_SIZE > 1`` without the other variables.
    """
    name = resolve_backend(backend, device)
    env = os.environ if env is None else env
    if dist.is_initialized() or int(env.get("WORLD_SIZE", "1")) <= 1:
        return False
    missing = [k for k in LAUNCH_VARS if k not in env]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={env['WORLD_SIZE']} but {', '.join(missing)} not set: launch with "
            "torchrun (or srun, whose SLURM variables apply_slurm_environment translates)"
        )
    if name == "nccl":
        set_local_device(env)
    dist.init_process_group(name, timeout=timedelta(seconds=timeout_s))
    atexit.register(destroy_process_group)
    logger.info("process group: %s, rank %d of %d", name, dist.get_rank(), dist.get_world_size())
    return True


def destroy_process_group() -> None:
    """Destroy the default process group, if there is one (idempotent)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def set_local_device(env: Mapping[str, str] | None = None) -> torch.device:
    """Make ``cuda:$LOCAL_RANK`` the current CUDA device; return it.

    Raises:
        ValueError: The local rank has no GPU.
    """
    index = local_rank(env)
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(
            f"LOCAL_RANK={index} but this node has {count} CUDA device(s): start at most "
            f"{count} processes per node (torchrun --nproc_per_node / SLURM --gpus-per-node)"
        )
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def device_for_rank(device: torch.device) -> torch.device:
    """``device``; inside a process group a CUDA device becomes the current one.

    A CUDA device without an index is the local rank's GPU (``cuda:$LOCAL_RANK``), so one
    config (``device: auto`` or ``cuda``) runs on every rank; NCCL collectives of Python
    objects use the current device.
    """
    if device.type != "cuda" or not dist.is_initialized():
        return device
    if device.index is None:
        return set_local_device()
    torch.cuda.set_device(device)
    return device


@contextlib.contextmanager
def distributed_session(
    backend: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S
) -> Iterator[bool]:
    """The process group of one job: SLURM variables applied, group set up, torn down at the end.

    Yields True when the job runs on several processes. A group that already existed is left
    alone (and not destroyed).
    """
    apply_slurm_environment()
    started = init_process_group(backend, timeout_s)
    try:
        yield is_distributed()
    finally:
        if started:
            destroy_process_group()


# ----------------------------------------------------------------------------- collectives


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (picklable objects; ``obj`` itself in one process)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in one process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into ``module`` on every rank, in place."""
    if not is_distributed():
        return
    with torch.no_grad():
        for t in itertools.chain(module.parameters(), module.buffers()):
            dist.broadcast(t.data, src=src)


def all_reduce_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """The sums over ranks of ``values`` (float64; NCCL needs ``device`` to be the rank's GPU)."""
    if not is_distributed():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# --------------------------------------------------------------------------------- DDP


class AttackSafeDDP(DistributedDataParallel):
    """``DistributedDataParallel`` that steps aside while every parameter is frozen.

    An attack run inside a training step (``attack.perturb`` in an adversarial-training loss)
    freezes the parameters and differentiates with respect to the input only. Through plain
    DDP each of its forward passes would prepare a gradient reduction and broadcast the
    buffers, a collective per pass that deadlocks as soon as two ranks run different numbers
    of attack steps (early stopping). Here such passes (no parameter requires grad, or grad mode
    off) call the wrapped module directly; the training loss's forward goes through DDP as
    usual, so its backward averages the gradients over ranks.
    """

    def __init__(self, module: nn.Module, **kwargs: Any) -> None:
        super().__init__(module, **kwargs)
        self._trainable = [p for p in module.parameters() if p.requires_grad]

    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        """DDP's forward, or the module's own while the attack has the parameters frozen."""
        if not torch.is_grad_enabled() or not any(p.requires_grad for p in self._trainable):
            return self.module(*inputs, **kwargs)
        return super().forward(*inputs, **kwargs)


def wrap_ddp(model: nn.Module, device: torch.device) -> AttackSafeDDP:
    """``model`` in :class:`AttackSafeDDP` on ``device`` (rank 0's weights broadcast to all).

    Raises:
        ValueError: An NCCL group with a model on the CPU.
    """
    if dist.get_backend() == "nccl" and device.type != "cuda":
        raise ValueError(
            f"the process group uses NCCL but the model is on {device}: train on the rank's "
            "GPU (device='cuda') or use the gloo backend on CPU"
        )
    if device.type != "cuda":
        return AttackSafeDDP(model)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return AttackSafeDDP(model, device_ids=[index], output_device=index)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (``model`` itself otherwise)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def sharded_loader(
    data: Dataset, global_batch: int, *, seed: int, epoch: int, shuffle: bool = True
) -> DataLoader:
    """The calling rank's share of an epoch: ``DistributedSampler`` batches of ``batch / W``.

    The sampler's permutation is ``torch.randperm(n)`` seeded with ``seed + epoch``, the same
    as ``RandomSampler`` with a generator seeded so; rank ``r`` takes positions ``r, r + W,
    ...``, so the ranks' k-th batches together are the k-th batch of ``global_batch`` of a
    single process with that generator. When ``len(data)`` does not divide by ``W`` the
    sampler repeats a few samples to even the ranks out (fine for training, never for
    evaluation).

    Raises:
        ValueError: ``global_batch`` does not divide by the world size.
    """
    n_ranks = world_size()
    if global_batch % n_ranks:
        raise ValueError(
            f"batch_size={global_batch} is the global batch and must divide by the world size "
            f"{n_ranks}; use e.g. batch_size={global_batch - global_batch % n_ranks or n_ranks}"
        )
    per_rank = global_batch // n_ranks
    sampler = DistributedSampler(
        data, num_replicas=n_ranks, rank=rank(), shuffle=shuffle, seed=seed, drop_last=False
    )
    sampler.set_epoch(epoch)
    if isinstance(data, TensorDataset):
        batches = BatchSampler(sampler, per_rank, drop_last=False)
        return DataLoader(data, sampler=batches, batch_size=None)
    return DataLoader(data, batch_size=per_rank, sampler=sampler)


__all__ = [
    "BACKENDS",
    "DEFAULT_TIMEOUT_S",
    "ENV_VARS",
    "AttackSafeDDP",
    "all_reduce_sum",
    "apply_slurm_environment",
    "barrier",
    "broadcast_module",
    "broadcast_object",
    "device_for_rank",
    "distributed_session",
    "first_host",
    "gather_objects",
    "init_process_group",
    "is_distributed",
    "is_main",
    "local_rank",
    "rank",
    "resolve_backend",
    "set_local_device",
    "sharded_loader",
    "slurm_environment",
    "slurm_port",
    "unwrap",
    "wrap_ddp",
]
