"""The one training loop every training defense uses.

:class:`Trainer` owns the optimiser, the learning-rate schedule, the progress bar, per-epoch
metrics, callbacks, checkpoints (every epoch, atomic; see :mod:`defenses.checkpoints`) and
``resume=True``. A defense plugs in a per-batch loss ``batch_fn(model, x, y)`` and, where it
needs epoch-level logic (early stopping, catastrophic-overfitting guard), a
:class:`~defenses.plugins.Plugin`. Adversarial training therefore never rewrites the loop.

Inside a ``torch.distributed`` process group of several processes (``torchrun``, or SLURM via
:mod:`defenses.distributed`) the loop is data-parallel: the model is wrapped in
:class:`~defenses.distributed.AttackSafeDDP`, each rank trains on its ``DistributedSampler``
share of every global batch (``batch_size`` is the global batch), rank 0 writes the checkpoints
that every rank resumes from and calls the callbacks (MLflow logging), and every rank returns
the same plain module.

Example:
    >>> trainer = Trainer(epochs=10, optimizer="adam", lr=5e-3, schedule="cyclic")
    >>> model = trainer.fit(model, train, val, checkpoint_dir="ckpt", resume=True)

"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

import defenses.distributed as dist_utils
from attacks.validation import check_number, check_positive_int
from defenses.checkpoints import restore_last, resume_by_default, resume_default, save_last
from defenses.data import check_dataset, make_loader, model_device
from defenses.plugins import Plugin, TrainState
from defenses.schedules import SCHEDULES, LRSchedule

logger = logging.getLogger(__name__)

Callback = Callable[[int, dict[str, float]], Any]
BatchFn = Callable[[nn.Module, Tensor, Tensor], "Tensor | tuple[Tensor, Tensor]"]

OPTIMIZERS = ("sgd", "adam", "adamw")
# epoch e shuffles with seed * SEED_STRIDE + e; rank r starts from seed + RANK_SEED_STRIDE * r
SEED_STRIDE = 1_000_003
RANK_SEED_STRIDE = 100_003


class FitOptions(TypedDict, total=False):
    """The keyword options of every ``fit`` (see :meth:`Trainer.fit`)."""

    callbacks: Iterable[Callback]
    device: str | torch.device | None
    checkpoint_dir: str | os.PathLike[str] | None
    resume: bool | None


@torch.no_grad()
def evaluate_clean(
    model: nn.Module, data: Dataset, batch_size: int = 500, device: torch.device | None = None
) -> tuple[float, float]:
    """Clean ``(loss, accuracy)`` of ``model`` on ``data`` in eval mode (mode restored)."""
    device = device or model_device(model)
    was_training = model.training
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    try:
        for x, y in make_loader(data, batch_size, shuffle=False):
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            n += y.numel()
    finally:
        model.train(was_training)
    return loss_sum / n, correct / n


def cross_entropy_batch(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """The default per-batch loss: mean cross-entropy; also returns the logits."""
    logits = model(x)
    return F.cross_entropy(logits, y), logits


@dataclass
class _EpochMeter:
    """Running loss and accuracy of one epoch (accuracy over the batches that return logits)."""

    loss_sum: float = 0.0
    n: int = 0
    correct: int = 0
    n_acc: int = 0
    lr: float = 0.0

    def add(self, loss: Tensor, logits: Tensor | None, y: Tensor, lr: float) -> None:
        self.loss_sum += float(loss.detach()) * y.shape[0]
        self.n += y.shape[0]
        self.lr = lr
        if logits is not None and logits.shape[0] == y.shape[0]:
            self.correct += int((logits.detach().argmax(1) == y).sum())
            self.n_acc += y.shape[0]

    def reduce(self, device: torch.device) -> None:
        """Sum the counts over ranks, so every rank reports the global epoch metrics."""
        sums = dist_utils.all_reduce_sum([self.loss_sum, self.n, self.correct, self.n_acc], device)
        self.loss_sum, self.n, self.correct, self.n_acc = sums[0], *map(int, sums[1:])

    def postfix(self) -> dict[str, str]:
        return {
            "loss": f"{self.loss_sum / self.n:.4f}",
            "acc": f"{self.correct / max(self.n_acc, 1):.3f}",
        }

    def metrics(self, seconds: float) -> dict[str, float]:
        out = {"train_loss": self.loss_sum / self.n, "lr": self.lr, "epoch_time": seconds}
        if self.n_acc:
            out["train_acc"] = self.correct / self.n_acc
        return out


class Trainer:
    """One training loop: optimiser, LR schedule, progress bar, metrics, checkpoints, resume.

    Args:
        epochs: Number of epochs.
        batch_size: Mini-batch size; under ``torch.distributed`` the global batch, split evenly
            over the ranks (it must divide by the world size).
        optimizer: ``"sgd"``, ``"adam"`` or ``"adamw"``.
        lr: Base (for ``cyclic``/``onecycle``: peak) learning rate.
        momentum: SGD momentum.
        nesterov: Nesterov momentum for SGD.
        weight_decay: L2 penalty (decoupled for ``adamw``).
        schedule: ``"constant"``, ``"piecewise"``, ``"cyclic"`` or ``"onecycle"`` (see
            :class:`LRSchedule`); stepped after every batch.
        milestones: Epochs where ``piecewise`` decays by ``gamma`` (default: 50% and 75% of
            ``epochs``, the schedule of Madry et al. and Rice et al.).
        gamma: ``piecewise`` decay factor.
        peak: Fraction of ``epochs`` where ``cyclic``/``onecycle`` peak (default 0.4, as in
            Wong et al.'s MNIST code).
        grad_clip: Clip the gradient norm to this value (None: no clipping).
        seed: Seeds the global torch RNG at the start of a fresh run and every epoch's
            shuffle, so the same seed, data and model give the same weights, also across resume.
        bf16: Autocast to bfloat16 on CUDA (ignored with a warning on CPU).
        channels_last: Train a 4-d (NCHW) model in the ``channels_last`` memory format on CUDA,
            where convolutions run faster with it (ignored with a warning on CPU, as ``bf16``,
            so one config runs everywhere).
        progress: Show a tqdm progress bar with the running loss and accuracy.
        eval_batch_size: Batch size of the clean validation pass.

    Metrics handed to callbacks ``cb(epoch, metrics)`` (epoch is 0-based) after every epoch:
    ``train_loss``, ``train_acc`` (on the inputs the loss saw, e.g. adversarial ones), ``lr``
    (of the epoch's last step),
    ``epoch_time``, ``val_loss`` and ``val_acc`` if a validation set is given, plus whatever
    plug-ins add.

    Under ``torch.distributed`` (an initialised process group of several processes; under
    ``torchrun`` without one, ``fit`` initialises it from the environment) every rank calls
    ``fit`` with the same arguments. The random streams (dropout, attack starts) are seeded per
    rank; the sample order per epoch is the one of a single process, so with a data size
    divisible by the world size one epoch of standard training matches a single process.

    """

    def __init__(
        self,
        *,
        epochs: int = 10,
        batch_size: int = 128,
        optimizer: str = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        schedule: str = "constant",
        milestones: Sequence[float] | None = None,
        gamma: float = 0.1,
        peak: float = 0.4,
        grad_clip: float | None = None,
        seed: int = 0,
        bf16: bool = False,
        channels_last: bool = False,
        progress: bool = True,
        eval_batch_size: int = 500,
    ) -> None:
        self.epochs = check_positive_int("epochs", epochs)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.eval_batch_size = check_positive_int("eval_batch_size", eval_batch_size)
        if optimizer not in OPTIMIZERS:
            raise ValueError(
                f"Unknown optimizer {optimizer!r}; use one of: {', '.join(OPTIMIZERS)}"
            )
        if schedule not in SCHEDULES:
            raise ValueError(f"Unknown schedule {schedule!r}; use one of: {', '.join(SCHEDULES)}")
        self.optimizer = optimizer
        self.schedule = schedule
        self.lr = check_number("lr", lr, low_open=True)
        self.momentum = check_number("momentum", momentum, high=1.0, high_open=True)
        self.nesterov = bool(nesterov)
        self.weight_decay = check_number("weight_decay", weight_decay)
        self.milestones = sorted(
            check_number("milestone", m)
            for m in (milestones if milestones is not None else (0.5 * epochs, 0.75 * epochs))
        )
        self.gamma = check_number("gamma", gamma, low_open=True, high=1.0)
        self.peak = check_number("peak", peak, low_open=True, high=1.0, high_open=True)
        self.grad_clip = None if grad_clip is None else check_number("grad_clip", grad_clip)
        self.seed = int(seed)
        self.bf16 = bool(bf16)
        self.channels_last = bool(channels_last)
        self.progress = bool(progress)

    def config(self) -> dict[str, Any]:
        """The trainer's settings (JSON-able), for logging."""
        return dict(vars(self))

    # ---- building blocks

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """The configured optimiser over the model's trainable parameters."""
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters (requires_grad=True)")
        if self.optimizer == "sgd":
            return torch.optim.SGD(
                params,
                lr=self.lr,
                momentum=self.momentum,
                nesterov=self.nesterov and self.momentum > 0,
                weight_decay=self.weight_decay,
            )
        cls = torch.optim.Adam if self.optimizer == "adam" else torch.optim.AdamW
        return cls(params, lr=self.lr, weight_decay=self.weight_decay)

    def make_scheduler(
        self, optimizer: torch.optim.Optimizer, steps_per_epoch: int
    ) -> torch.optim.lr_scheduler.LambdaLR:
        """A per-step ``LambdaLR`` following :class:`LRSchedule`."""
        fn = LRSchedule(
            self.schedule,
            self.epochs,
            steps_per_epoch,
            list(self.milestones),
            self.gamma,
            self.peak,
        )
        return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)

    def epoch_generator(self, epoch: int) -> torch.Generator:
        """The shuffle generator of ``epoch``: a function of (seed, epoch) only, resume-safe."""
        return torch.Generator().manual_seed(self.seed * SEED_STRIDE + epoch)

    def rank_seed(self) -> int:
        """The global torch seed of a fresh run on this rank (``seed`` itself on rank 0)."""
        return self.seed + RANK_SEED_STRIDE * dist_utils.rank()

    def epoch_loader(self, train: Dataset, epoch: int) -> DataLoader:
        """The batches of ``epoch`` of this process: all of them, or its rank's share under DDP.

        Both orders come from the same permutation (see
        :func:`~defenses.distributed.sharded_loader`), so the union of the ranks' k-th
        batches is the k-th batch of a single process.
        """
        if dist_utils.is_distributed():
            return dist_utils.sharded_loader(
                train, self.batch_size, seed=self.seed * SEED_STRIDE, epoch=epoch
            )
        gen = self.epoch_generator(epoch)
        return make_loader(train, self.batch_size, shuffle=True, generator=gen)

    # ---- the loop

    def fit(
        self,
        model: nn.Module,
        train: Dataset,
        val: Dataset | None = None,
        *,
        batch_fn: BatchFn | None = None,
        plugins: Sequence[Plugin] = (),
        callbacks: Iterable[Callback] = (),
        device: str | torch.device | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        resume: bool | None = None,
    ) -> nn.Module:
        """Train ``model`` on ``train``; return it in eval mode.

        Args:
            model: The model to train (modified in place and returned).
            train: A Dataset of ``(x, y)``.
            val: Optional validation Dataset (clean ``val_loss``/``val_acc`` each epoch).
            batch_fn: ``batch_fn(model, x, y) -> loss`` or ``(loss, logits)``; default mean
                cross-entropy. The model is in train mode when it is called (under
                ``torch.distributed``: the DDP wrapper, which attacks may call too).
            plugins: Epoch-level :class:`~defenses.plugins.Plugin` objects (early stopping,
                guards).
            callbacks: ``cb(epoch, metrics)`` called after each epoch (0-based epoch); on
                rank 0 only under ``torch.distributed``.
            device: Where to train; default the model's device (under ``torch.distributed``
                a CUDA device without an index is the local rank's GPU).
            checkpoint_dir: Save ``last.pt`` (model, optimiser, scheduler, epoch, RNG state,
                plug-in states, history) here after every epoch, atomically (rank 0 writes;
                under ``torch.distributed`` it must be on a filesystem every rank reads).
            resume: Continue from ``checkpoint_dir/last.pt`` if it exists. ``None`` (default):
                False, or True inside :func:`resume_by_default` when a ``checkpoint_dir`` is given
                (then a missing ``last.pt`` is a fresh run, not mentioned in the log).

        Returns:
            The trained model (the plain module, never the DDP wrapper), in eval mode; the same
            weights on every rank.

        Raises:
            ValueError: ``resume=True`` without ``checkpoint_dir``, bad data, a ``batch_size``
                that does not divide by the world size.

        """
        asked = resume is True
        if resume is None:
            resume = resume_default() and checkpoint_dir is not None
        state = self._start(model, train, val, device, checkpoint_dir, resume)
        plugins = list(plugins)
        if not (resume and restore_last(state, plugins, self.epochs, asked=asked)):
            torch.manual_seed(self.rank_seed())
        if dist_utils.is_distributed():
            state.train_model = dist_utils.wrap_ddp(state.model, state.device)
        for plugin in plugins:
            plugin.on_fit_start(state)
        callbacks = list(callbacks) if dist_utils.is_main() else []
        batch_fn = batch_fn or cross_entropy_batch
        try:
            while state.epoch < self.epochs and not state.stop:
                self._run_epoch(state, batch_fn, plugins, callbacks)
            for plugin in plugins:
                plugin.on_fit_end(state)
            dist_utils.broadcast_module(state.model)
        finally:
            state.train_model = None
        self.history = state.history
        return state.model.eval()

    def _start(
        self,
        model: nn.Module,
        train: Dataset,
        val: Dataset | None,
        device: str | torch.device | None,
        checkpoint_dir: str | os.PathLike[str] | None,
        resume: bool,
    ) -> TrainState:
        """Check the arguments of :meth:`fit`; the state of a fresh run, model on its device."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        train = check_dataset("train", train)
        if val is not None:
            val = check_dataset("val", val)
        if resume and checkpoint_dir is None:
            raise ValueError("resume=True needs checkpoint_dir= (where the last run saved last.pt)")
        device = torch.device(device) if device is not None else model_device(model)
        if dist_utils.init_process_group("nccl" if device.type == "cuda" else "gloo"):
            logger.info("initialised the process group from the torchrun environment")
        device = dist_utils.device_for_rank(device)
        model.to(device)
        if self.channels_last and device.type != "cuda":
            logger.warning("channels_last=True only applies on CUDA; ignored on %s", device)
        if self._channels_last(device):
            model.to(memory_format=torch.channels_last)  # type: ignore[call-arg]
        steps = len(self.epoch_loader(train, 0))
        optimizer = self.make_optimizer(model)
        return TrainState(
            model=model,
            optimizer=optimizer,
            scheduler=self.make_scheduler(optimizer, steps),
            device=device,
            epochs=self.epochs,
            train=train,
            val=val,
            checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir is not None else None,
        )

    def _channels_last(self, device: torch.device) -> bool:
        """Whether ``channels_last`` applies: CUDA only (elsewhere ``fit`` warns and ignores it)."""
        return self.channels_last and device.type == "cuda"

    def _run_epoch(
        self,
        state: TrainState,
        batch_fn: BatchFn,
        plugins: Sequence[Plugin],
        callbacks: Sequence[Callback],
    ) -> None:
        """One epoch: train, validate, plug-ins, history, the callbacks, then the checkpoint.

        The checkpoint comes last, so every epoch it holds was also seen by the callbacks (an
        interrupted run never misses an epoch in its logged metrics; at worst the last one is
        trained and logged again on resume).

        Under ``torch.distributed`` rank 0's weights and buffers (e.g. BatchNorm statistics,
        which each rank updates on its own batches) are copied to every rank before validation
        and after the plug-ins, and rank 0's metrics and stop flag are everyone's, so no two
        ranks decide differently.
        """
        epoch = state.epoch
        metrics = self._train_epoch(state, batch_fn, epoch)
        dist_utils.broadcast_module(state.model)
        if state.val is not None:
            metrics["val_loss"], metrics["val_acc"] = evaluate_clean(
                state.model, state.val, self.eval_batch_size, state.device
            )
        for plugin in plugins:
            plugin.on_epoch_end(state, epoch, metrics)
        if dist_utils.is_distributed():
            dist_utils.broadcast_module(state.model)
            metrics, state.stop = dist_utils.broadcast_object((metrics, state.stop))
        state.epoch = epoch + 1
        state.history.append(dict(metrics))
        if dist_utils.is_main():
            self._log_epoch(epoch, metrics)
        for cb in callbacks:
            cb(epoch, dict(metrics))
        if state.checkpoint_dir is not None:
            save_last(state, plugins, self.epochs)

    def _train_epoch(self, state: TrainState, batch_fn: BatchFn, epoch: int) -> dict[str, float]:
        """One pass over the (seeded, shuffled) training data; the epoch's training metrics."""
        loader = self.epoch_loader(state.train, epoch)  # type: ignore[arg-type]
        device = state.device
        use_bf16 = self.bf16 and device.type == "cuda"
        if self.bf16 and not use_bf16 and epoch == 0:
            logger.warning("bf16=True only applies on CUDA; training in float32 on %s", device)
        channels_last = self._channels_last(device)
        net = state.train_model if state.train_model is not None else state.model
        net.train()
        start = time.perf_counter()
        meter = _EpochMeter()
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{self.epochs}",
            disable=not (self.progress and dist_utils.is_main()),
            leave=False,
            dynamic_ncols=True,
        )
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            loss, logits, lr = self._step(state, net, batch_fn, x, y, use_bf16, epoch)
            meter.add(loss, logits, y, lr)
            bar.set_postfix(**meter.postfix())
        bar.close()
        meter.reduce(device)
        return meter.metrics(time.perf_counter() - start)

    def _step(
        self,
        state: TrainState,
        net: nn.Module,
        batch_fn: BatchFn,
        x: Tensor,
        y: Tensor,
        bf16: bool,
        epoch: int,
    ) -> tuple[Tensor, Tensor | None, float]:
        """One optimiser step on a batch: the loss, the logits (or None) and the lr it used."""
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            out = batch_fn(net, x, y)
        loss, logits = out if isinstance(out, tuple) else (out, None)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {float(loss)} at epoch {epoch}; lower lr or check data"
            )
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(state.model.parameters(), self.grad_clip)
        lr = float(state.optimizer.param_groups[0]["lr"])
        state.optimizer.step()
        state.scheduler.step()
        return loss, logits, lr

    def _log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        text = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        logger.info("epoch %d/%d %s", epoch + 1, self.epochs, text)


__all__ = [
    "OPTIMIZERS",
    "RANK_SEED_STRIDE",
    "SEED_STRIDE",
    "BatchFn",
    "Callback",
    "FitOptions",
    "Trainer",
    "cross_entropy_batch",
    "evaluate_clean",
    "resume_by_default",
]
