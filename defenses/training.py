"""The one training loop every training defense uses, and the base class of training defenses.

:class:`Trainer` owns the optimiser, the learning-rate schedule, the progress bar, per-epoch
metrics, callbacks, checkpoints (every epoch, atomic) and ``resume=True``. A defense plugs in a
per-batch loss ``batch_fn(model, x, y)`` and, where it needs epoch-level logic (early stopping,
catastrophic-overfitting guard), a :class:`Plugin`. Adversarial training therefore never rewrites
the loop.

Example:
    >>> trainer = Trainer(epochs=10, optimizer="adam", lr=5e-3, schedule="cyclic")
    >>> model = trainer.fit(model, train, val, checkpoint_dir="ckpt", resume=True)

"""

from __future__ import annotations

import bisect
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import (
    Dataset,
)
from tqdm.auto import tqdm

from attacks.registry import Registry
from attacks.validation import check_number, check_positive_int
from defenses.data import check_dataset, make_loader, model_device
from defenses.storage import atomic_torch_save, load_trusted

logger = logging.getLogger(__name__)

DEFENSES: Registry[Any] = Registry("defense")

Callback = Callable[[int, dict[str, float]], Any]
BatchFn = Callable[[nn.Module, Tensor, Tensor], "Tensor | tuple[Tensor, Tensor]"]

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "piecewise", "cyclic", "onecycle")
LAST_CHECKPOINT = "last.pt"


# --------------------------------------------------------------------------- LR schedules


@dataclass
class LRSchedule:
    """Multiplicative factor of the base learning rate after ``step`` optimiser steps.

    A callable object (not a lambda) so ``LambdaLR.state_dict`` records it. The factor for the
    ``k``-th step is taken at fractional epoch ``t = (k + 1) / steps_per_epoch``, as in
    Wong et al.'s code, so the first step of a cyclic schedule has a non-zero rate.

    Args:
        kind: ``constant``, ``piecewise`` (times ``gamma`` at each milestone epoch),
            ``cyclic`` (triangular: 0 -> 1 at ``peak * epochs`` -> 0 at the end; Wong et al.
            2020), or ``onecycle`` (cosine warm-up to 1 over ``peak * epochs`` then cosine
            decay to ~0; Smith & Topin 2019).
        epochs: Total epochs.
        steps_per_epoch: Optimiser steps per epoch.
        milestones: Epochs at which ``piecewise`` multiplies by ``gamma``.
        gamma: ``piecewise`` decay factor.
        peak: Where ``cyclic``/``onecycle`` peak, as a fraction of ``epochs``.

    """

    kind: str
    epochs: int
    steps_per_epoch: int
    milestones: list[float] = field(default_factory=list)
    gamma: float = 0.1
    peak: float = 0.4

    def __call__(self, step: int) -> float:
        """The factor for the ``step``-th optimiser step (0-based)."""
        t = (step + 1) / self.steps_per_epoch
        t_peak = self.peak * self.epochs
        if self.kind == "constant":
            return 1.0
        if self.kind == "piecewise":
            return self.gamma ** bisect.bisect_right(self.milestones, t - 1e-9)
        if self.kind == "cyclic":
            if t <= t_peak:
                return t / t_peak
            return max(0.0, (self.epochs - t) / (self.epochs - t_peak))
        # onecycle: cosine from 1/25 up to 1, then down to 1/25e4 (torch's OneCycleLR defaults)
        start, end = 1 / 25, 1 / 25e4
        if t <= t_peak:
            frac = t / t_peak
            return start + (1 - start) * (1 - math.cos(math.pi * frac)) / 2
        frac = min(1.0, (t - t_peak) / (self.epochs - t_peak))
        return end + (1 - end) * (1 + math.cos(math.pi * frac)) / 2


# --------------------------------------------------------------------------- plug-ins and state


@dataclass
class TrainState:
    """What the loop shares with plug-ins.

    Attributes:
        model: The model being trained.
        optimizer: Its optimiser.
        scheduler: The per-step ``LambdaLR`` scheduler.
        device: Where training runs.
        epochs: Total epochs planned.
        epoch: Epochs completed so far.
        train: Training data; ``val`` the validation data (or None).
        checkpoint_dir: Where checkpoints go (or None).
        stop: Set by a plug-in to end training after the current epoch.
        history: One metrics dict per completed epoch.

    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    device: torch.device
    epochs: int
    epoch: int = 0
    train: Dataset | None = None
    val: Dataset | None = None
    checkpoint_dir: Path | None = None
    stop: bool = False
    history: list[dict[str, float]] = field(default_factory=list)


class Plugin:
    """Epoch-level logic that rides on the :class:`Trainer` loop (early stopping, guards).

    Plug-ins run before callbacks, so metrics they add (e.g. ``val_robust_acc``) reach the
    callbacks; their ``state_dict`` is saved in every checkpoint and restored on resume.
    """

    def on_fit_start(self, state: TrainState) -> None:
        """Called once before the first (or first resumed) epoch."""

    def on_epoch_end(self, state: TrainState, epoch: int, metrics: dict[str, float]) -> None:
        """Called after each epoch with its (mutable) metrics; may set ``state.stop``."""

    def on_fit_end(self, state: TrainState) -> None:
        """Called once after the last epoch (e.g. to restore the best weights)."""

    def state_dict(self) -> dict[str, Any]:
        """Whatever must survive an interruption (tensors, numbers, strings, lists, dicts)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


# --------------------------------------------------------------------------- checkpoints


def state_to_cpu(model: nn.Module) -> dict[str, Tensor]:
    """A detached CPU copy of ``model.state_dict()``."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _rng_state(device: torch.device) -> dict[str, Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


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


# --------------------------------------------------------------------------- the trainer


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
            plugins: Epoch-level :class:`Plugin` objects (early stopping, guards).
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
        state = TrainState(
            model=model,
            optimizer=optimizer,
            scheduler=self.make_scheduler(optimizer, steps),
            device=device,
            epochs=self.epochs,
            train=train,
            val=val,
            checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir is not None else None,
        )
        plugins = list(plugins)
        if not (resume and self._resume(state, plugins)):
            torch.manual_seed(self.seed)
        for plugin in plugins:
            plugin.on_fit_start(state)
        callbacks = list(callbacks)
        batch_fn = batch_fn or cross_entropy_batch
        while state.epoch < self.epochs and not state.stop:
            epoch = state.epoch
            metrics = self._train_epoch(state, batch_fn, epoch)
            if val is not None:
                metrics["val_loss"], metrics["val_acc"] = evaluate_clean(
                    model, val, self.eval_batch_size, device
                )
            for plugin in plugins:
                plugin.on_epoch_end(state, epoch, metrics)
            state.epoch = epoch + 1
            state.history.append(dict(metrics))
            self._log_epoch(epoch, metrics)
            if state.checkpoint_dir is not None:
                self._save(state, plugins)
            for cb in callbacks:
                cb(epoch, dict(metrics))
        for plugin in plugins:
            plugin.on_fit_end(state)
        self.history = state.history
        return model.eval()

    def _train_epoch(self, state: TrainState, batch_fn: BatchFn, epoch: int) -> dict[str, float]:
        model, optimizer, device = state.model, state.optimizer, state.device
        loader = make_loader(
            state.train,  # type: ignore[arg-type]
            self.batch_size,
            shuffle=True,
            generator=self.epoch_generator(epoch),
        )
        use_bf16 = self.bf16 and device.type == "cuda"
        if self.bf16 and not use_bf16 and epoch == 0:
            logger.warning("bf16=True only applies on CUDA; training in float32 on %s", device)
        model.train()
        start = time.perf_counter()
        loss_sum, correct, n_acc, n, lr = 0.0, 0, 0, 0, 0.0
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{self.epochs}",
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
                out = batch_fn(model, x, y)
            loss, logits = out if isinstance(out, tuple) else (out, None)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training loss became {float(loss)} at epoch {epoch}; lower lr or check data"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
            lr = float(optimizer.param_groups[0]["lr"])
            optimizer.step()
            state.scheduler.step()
            loss_sum += float(loss.detach()) * y.shape[0]
            n += y.shape[0]
            if logits is not None and logits.shape[0] == y.shape[0]:
                correct += int((logits.detach().argmax(1) == y).sum())
                n_acc += y.shape[0]
            bar.set_postfix(loss=f"{loss_sum / n:.4f}", acc=f"{correct / max(n_acc, 1):.3f}")
        bar.close()
        metrics = {
            "train_loss": loss_sum / n,
            "lr": lr,
            "epoch_time": time.perf_counter() - start,
        }
        if n_acc:
            metrics["train_acc"] = correct / n_acc
        return metrics

    def _log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        text = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        logger.info("epoch %d/%d %s", epoch + 1, self.epochs, text)

    # ---- checkpoints

    def _save(self, state: TrainState, plugins: Sequence[Plugin]) -> None:
        ckpt = {
            "epoch": state.epoch,
            "stop": state.stop,
            "model": state.model.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "rng": _rng_state(state.device),
            "plugins": [p.state_dict() for p in plugins],
            "history": state.history,
            "epochs": self.epochs,
        }
        atomic_torch_save(ckpt, state.checkpoint_dir / LAST_CHECKPOINT)  # type: ignore[operator]

    def _resume(self, state: TrainState, plugins: Sequence[Plugin]) -> bool:
        """Restore ``last.pt`` into ``state``; False (fresh start) if there is none."""
        path = state.checkpoint_dir / LAST_CHECKPOINT  # type: ignore[operator]
        if not path.exists():
            logger.info("resume=True but %s does not exist: starting from epoch 0", path)
            return False
        ckpt = load_trusted(path)
        if len(ckpt["plugins"]) != len(plugins):
            raise ValueError(
                f"{path} was saved with {len(ckpt['plugins'])} plug-ins but this run has "
                f"{len(plugins)}: resume with the same defense settings or use a new checkpoint_dir"
            )
        state.model.load_state_dict(ckpt["model"])
        state.optimizer.load_state_dict(ckpt["optimizer"])
        self._load_scheduler(state, ckpt["scheduler"])
        for plugin, pstate in zip(plugins, ckpt["plugins"], strict=True):
            plugin.load_state_dict(pstate)
        _set_rng_state(ckpt["rng"], state.device)
        state.epoch, state.stop = int(ckpt["epoch"]), bool(ckpt["stop"])
        state.history = list(ckpt["history"])
        if int(ckpt["epochs"]) != self.epochs:
            logger.info(
                "resuming a run planned for %d epochs with epochs=%d", ckpt["epochs"], self.epochs
            )
        logger.info("resumed from %s after epoch %d", path, state.epoch)
        return True

    @staticmethod
    def _load_scheduler(state: TrainState, saved: dict[str, Any]) -> None:
        """Restore the step count and base rates but keep this run's schedule function.

        ``LambdaLR.load_state_dict`` would also restore the saved schedule's settings (e.g. the
        old number of epochs), which is wrong when a run is resumed with more epochs.
        """
        sched = state.scheduler
        fns = sched.lr_lambdas
        settings = [dict(vars(fn)) for fn in fns]
        sched.load_state_dict(dict(saved))
        for fn, cfg in zip(fns, settings, strict=True):
            vars(fn).update(cfg)
        step = sched.last_epoch
        for group, base, fn in zip(state.optimizer.param_groups, sched.base_lrs, fns, strict=True):
            group["lr"] = base * fn(step)
        sched._last_lr = [group["lr"] for group in state.optimizer.param_groups]


# --------------------------------------------------------------------------- defenses


class TrainingDefense:
    """Base of training defenses: a :class:`Trainer` plus a per-batch loss and plug-ins.

    Subclasses implement :meth:`loss` and may override :meth:`setup` and
    :meth:`prepare_model`. Trainer settings are plain keyword arguments (see :class:`Trainer`).
    """

    name = "training"
    needs_val = False

    def __init__(self, **trainer_kwargs: Any) -> None:
        self.trainer = Trainer(**trainer_kwargs)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """The per-batch training loss (and optionally the logits for train accuracy)."""
        return cross_entropy_batch(model, x, y)

    def setup(self, train: Dataset, val: Dataset | None) -> tuple[Dataset, list[Plugin]]:
        """The data to train on and fresh epoch-level plug-ins for one ``fit`` call.

        A defense may hold out part of ``train`` here (e.g. for an overfitting guard).
        """
        return train, []

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Change the model before training (e.g. insert dropout); default unchanged."""
        return model

    def fit(
        self,
        model: nn.Module,
        train: Dataset,
        val: Dataset | None = None,
        *,
        callbacks: Iterable[Callback] = (),
        device: str | torch.device | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        resume: bool = False,
    ) -> nn.Module:
        """Train ``model`` with this defense; return it in eval mode (see :meth:`Trainer.fit`).

        Raises:
            ValueError: The defense needs a validation set and ``val`` is None.

        """
        if self.needs_val and val is None:
            raise ValueError(
                f"{self.name} needs a validation set: pass val= to fit() (e.g. a held-out "
                "slice of the training data)"
            )
        train = check_dataset("train", train)
        train, plugins = self.setup(train, val)
        model = self.prepare_model(model)
        return self.trainer.fit(
            model,
            train,
            val,
            batch_fn=self.loss,
            plugins=plugins,
            callbacks=callbacks,
            device=device,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(epochs={self.trainer.epochs})"
