"""The trainer's checkpoint, ``last.pt``: written atomically after every epoch, read on resume.

A checkpoint holds the model, optimiser and scheduler states, the epoch count and stop flag, the
RNG state, every plug-in's ``state_dict`` and the metrics history, so an interrupted run resumed
from it ends with the same weights as a straight run. Files are written with
:func:`defenses.storage.atomic_torch_save` and read with :func:`defenses.storage.load_trusted`
(tensors and plain data only, never code).

Under ``torch.distributed`` rank 0 writes the file (with every rank's RNG state) while the
others wait at a barrier, and every rank restores from the same file, which must therefore be
on a filesystem all ranks read.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import defenses.distributed as dist_utils
from defenses.plugins import Plugin, TrainState
from defenses.storage import atomic_torch_save, load_trusted

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.pt"

_RESUME_BY_DEFAULT: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "resume_by_default", default=False
)


@contextlib.contextmanager
def resume_by_default(enabled: bool = True) -> Iterator[None]:
    """Inside this block, ``fit(checkpoint_dir=...)`` without ``resume=`` resumes from it.

    What a preemptible job wants for every training it runs (base training and the defense's),
    without threading the flag through each call: ``experiments.run`` wraps a run in it, so
    rerunning a killed job in the same output folder continues from the last epoch.
    """
    token = _RESUME_BY_DEFAULT.set(bool(enabled))
    try:
        yield
    finally:
        _RESUME_BY_DEFAULT.reset(token)


def resume_default() -> bool:
    """Whether ``fit`` calls without ``resume=`` resume (inside :func:`resume_by_default`)."""
    return _RESUME_BY_DEFAULT.get()


def state_to_cpu(model: nn.Module) -> dict[str, Tensor]:
    """A detached CPU copy of ``model.state_dict()``."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def rng_state(device: torch.device) -> dict[str, Tensor]:
    """The global torch RNG state (and the CUDA one when training on CUDA)."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Tensor], device: torch.device) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_last(state: TrainState, plugins: Sequence[Plugin], epochs: int) -> Path:
    """Write ``state.checkpoint_dir / last.pt`` atomically; return its path.

    Under ``torch.distributed`` every rank must call it (the ranks' RNG states are gathered);
    rank 0 writes and the others wait until the file is complete.
    """
    if state.checkpoint_dir is None:
        raise ValueError("save_last needs a TrainState with a checkpoint_dir")
    path = state.checkpoint_dir / LAST_CHECKPOINT
    rngs = dist_utils.gather_objects(rng_state(state.device))
    if dist_utils.is_main():
        ckpt = {
            "epoch": state.epoch,
            "stop": state.stop,
            "model": state.model.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "rng": rngs[0],
            "rng_ranks": rngs,
            "plugins": [p.state_dict() for p in plugins],
            "history": state.history,
            "epochs": epochs,
        }
        atomic_torch_save(ckpt, path)
    dist_utils.barrier()
    return path


def restore_last(
    state: TrainState, plugins: Sequence[Plugin], epochs: int, *, asked: bool = True
) -> bool:
    """Restore ``last.pt`` into ``state`` and ``plugins``; False (fresh start) if there is none.

    Under ``torch.distributed`` rank 0 decides whether there is a checkpoint and every rank
    loads it; each rank gets back its own RNG state when the world size is unchanged. A
    missing checkpoint is said in the log only when the caller ``asked`` to resume
    (``resume=True``): a fresh run that resumes by default has nothing to say.

    Raises:
        ValueError: The checkpoint was saved with a different number of plug-ins.
        FileNotFoundError: Rank 0 sees the checkpoint but this rank does not (the checkpoint
            folder is not on a shared filesystem).

    """
    if state.checkpoint_dir is None:
        raise ValueError("restore_last needs a TrainState with a checkpoint_dir")
    path = state.checkpoint_dir / LAST_CHECKPOINT
    if not dist_utils.broadcast_object(path.exists()):
        if asked:
            logger.info("resume=True but %s does not exist: starting from epoch 0", path)
        return False
    if not path.exists():
        raise FileNotFoundError(
            f"rank {dist_utils.rank()} cannot read {path}, which rank 0 sees: put the "
            "checkpoint folder on a filesystem every rank reads (the run's output folder)"
        )
    ckpt = load_trusted(path)
    if len(ckpt["plugins"]) != len(plugins):
        raise ValueError(
            f"{path} was saved with {len(ckpt['plugins'])} plug-ins but this run has "
            f"{len(plugins)}: resume with the same defense settings or use a new checkpoint_dir"
        )
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    restore_scheduler(state.scheduler, state.optimizer, ckpt["scheduler"])
    for plugin, pstate in zip(plugins, ckpt["plugins"], strict=True):
        plugin.load_state_dict(pstate)
    set_rng_state(rank_rng_state(ckpt), state.device)
    state.epoch, state.stop = int(ckpt["epoch"]), bool(ckpt["stop"])
    state.history = list(ckpt["history"])
    if int(ckpt["epochs"]) != epochs:
        logger.info("resuming a run planned for %d epochs with epochs=%d", ckpt["epochs"], epochs)
    logger.info("resumed from %s after epoch %d", path, state.epoch)
    return True


def rank_rng_state(ckpt: dict[str, Any]) -> dict[str, Tensor]:
    """The calling rank's RNG state in a checkpoint (rank 0's if saved by another world size).

    A rank without its own saved state continues from rank 0's, then reseeds from it and its
    rank so that ranks keep distinct random streams.
    """
    ranks = ckpt.get("rng_ranks") or [ckpt["rng"]]
    r, world = dist_utils.rank(), dist_utils.world_size()
    if len(ranks) == world:
        return ranks[r]
    logger.info("checkpoint saved by %d process(es), resumed by %d", len(ranks), world)
    if r == 0:
        return ranks[0]
    gen = torch.Generator().set_state(ranks[0]["torch"])
    seed = int(torch.randint(2**62, (1,), generator=gen)) + r
    return {"torch": torch.Generator().manual_seed(seed).get_state()}


def restore_scheduler(
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    optimizer: torch.optim.Optimizer,
    saved: dict[str, Any],
) -> None:
    """Restore the step count and base rates but keep this run's schedule function.

    ``LambdaLR.load_state_dict`` would also restore the saved schedule's settings (e.g. the
    old number of epochs), which is wrong when a run is resumed with more epochs.
    """
    fns = scheduler.lr_lambdas
    settings = [dict(vars(fn)) for fn in fns]
    scheduler.load_state_dict(dict(saved))
    for fn, cfg in zip(fns, settings, strict=True):
        vars(fn).update(cfg)
    step = scheduler.last_epoch
    for group, base, fn in zip(optimizer.param_groups, scheduler.base_lrs, fns, strict=True):
        group["lr"] = base * fn(step)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


__all__ = [
    "LAST_CHECKPOINT",
    "rank_rng_state",
    "restore_last",
    "restore_scheduler",
    "resume_by_default",
    "resume_default",
    "rng_state",
    "save_last",
    "set_rng_state",
    "state_to_cpu",
]
