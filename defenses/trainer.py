"""The one training loop every training defense uses.

:class:`Trainer` owns the optimiser, the learning-rate schedule, the progress bar, per-epoch
metrics, callbacks, checkpoints (every epoch, atomic; see :mod:`defenses.checkpoints`) and
``resume=True``. A defense plugs in a per-batch loss ``batch_fn(model, x, y)`` and, where it
needs epoch-level logic (early stopping, catastrophic-overfitting guard), a
:class:`~defenses.plugins.Plugin`. Adversarial training therefore never rewrites the loop.

Example:
    >>> trainer = Trainer(epochs=10, optimizer="adam", lr=5e-3, schedule="cyclic")
    >>> model = trainer.fit(model, train, val, checkpoint_dir="ckpt", resume=True)

"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from attacks.validation import check_number, check_positive_int
from defenses.checkpoints import restore_last, save_last
from defenses.data import check_dataset, make_loader, model_device
from defenses.plugins import Plugin, TrainState
from defenses.schedules import SCHEDULES, LRSchedule

logger = logging.getLogger(__name__)

Callback = Callable[[int, dict[str, float]], Any]
BatchFn = Callable[[nn.Module, Tensor, Tensor], "Tensor | tuple[Tensor, Tensor]"]

OPTIMIZERS = ("sgd", "adam", "adamw")


class FitOptions(TypedDict, total=False):
    """The keyword options of every ``fit`` (see :meth:`Trainer.fit`)."""

    callbacks: Iterable[Callback]
    device: str | torch.device | None
    checkpoint_dir: str | os.PathLike[str] | None
    resume: bool


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
        batch_size: Mini-batch size.
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
        progress: Show a tqdm progress bar with the running loss and accuracy.
        eval_batch_size: Batch size of the clean validation pass.

    Metrics handed to callbacks ``cb(epoch, metrics)`` (epoch is 0-based) after every epoch:
    ``train_loss``, ``train_acc`` (on the inputs the loss saw, e.g. adversarial ones), ``lr``
    (of the epoch's last step),
    ``epoch_time``, ``val_loss`` and ``val_acc`` if a validation set is given, plus whatever
    plug-ins add.

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
        return torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)

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
        resume: bool = False,
    ) -> nn.Module:
        """Train ``model`` on ``train``; return it in eval mode.

        Args:
            model: The model to train (modified in place and returned).
            train: A Dataset of ``(x, y)``.
            val: Optional validation Dataset (clean ``val_loss``/``val_acc`` each epoch).
            batch_fn: ``batch_fn(model, x, y) -> loss`` or ``(loss, logits)``; default mean
                cross-entropy. The model is in train mode when it is called.
            plugins: Epoch-level :class:`~defenses.plugins.Plugin` objects (early stopping,
                guards).
            callbacks: ``cb(epoch, metrics)`` called after each epoch (0-based epoch).
            device: Where to train; default the model's device.
            checkpoint_dir: Save ``last.pt`` (model, optimiser, scheduler, epoch, RNG state,
                plug-in states, history) here after every epoch, atomically.
            resume: Continue from ``checkpoint_dir/last.pt`` if it exists.

        Returns:
            The trained model, in eval mode.

        Raises:
            ValueError: ``resume=True`` without ``checkpoint_dir``, bad data.

        """
        state = self._start(model, train, val, device, checkpoint_dir, resume)
        plugins = list(plugins)
        if not (resume and restore_last(state, plugins, self.epochs)):
            torch.manual_seed(self.seed)
        for plugin in plugins:
            plugin.on_fit_start(state)
        callbacks = list(callbacks)
        batch_fn = batch_fn or cross_entropy_batch
        while state.epoch < self.epochs and not state.stop:
            self._run_epoch(state, batch_fn, plugins, callbacks)
        for plugin in plugins:
            plugin.on_fit_end(state)
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
        model.to(device)
        steps = math.ceil(len(train) / self.batch_size)  # type: ignore[arg-type]
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

    def _run_epoch(
        self,
        state: TrainState,
        batch_fn: BatchFn,
        plugins: Sequence[Plugin],
        callbacks: Sequence[Callback],
    ) -> None:
        """One epoch: train, validate, plug-ins, history, checkpoint, then the callbacks."""
        epoch = state.epoch
        metrics = self._train_epoch(state, batch_fn, epoch)
        if state.val is not None:
            metrics["val_loss"], metrics["val_acc"] = evaluate_clean(
                state.model, state.val, self.eval_batch_size, state.device
            )
        for plugin in plugins:
            plugin.on_epoch_end(state, epoch, metrics)
        state.epoch = epoch + 1
        state.history.append(dict(metrics))
        self._log_epoch(epoch, metrics)
        if state.checkpoint_dir is not None:
            save_last(state, plugins, self.epochs)
        for cb in callbacks:
            cb(epoch, dict(metrics))

    def _train_epoch(self, state: TrainState, batch_fn: BatchFn, epoch: int) -> dict[str, float]:
        """One pass over the (seeded, shuffled) training data; the epoch's training metrics."""
        loader = make_loader(
            state.train,  # type: ignore[arg-type]
            self.batch_size,
            shuffle=True,
            generator=self.epoch_generator(epoch),
        )
        device = state.device
        use_bf16 = self.bf16 and device.type == "cuda"
        if self.bf16 and not use_bf16 and epoch == 0:
            logger.warning("bf16=True only applies on CUDA; training in float32 on %s", device)
        state.model.train()
        start = time.perf_counter()
        meter = _EpochMeter()
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{self.epochs}",
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss, logits, lr = self._step(state, batch_fn, x, y, use_bf16, epoch)
            meter.add(loss, logits, y, lr)
            bar.set_postfix(**meter.postfix())
        bar.close()
        return meter.metrics(time.perf_counter() - start)

    def _step(
        self, state: TrainState, batch_fn: BatchFn, x: Tensor, y: Tensor, bf16: bool, epoch: int
    ) -> tuple[Tensor, Tensor | None, float]:
        """One optimiser step on a batch: the loss, the logits (or None) and the lr it used."""
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            out = batch_fn(state.model, x, y)
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
    "BatchFn",
    "Callback",
    "FitOptions",
    "Trainer",
    "cross_entropy_batch",
    "evaluate_clean",
]
