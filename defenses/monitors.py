"""Epoch-level plug-ins that watch robust validation accuracy during training.

:class:`RobustMonitor` measures PGD accuracy on a fixed, seeded validation subset;
:class:`RobustEarlyStopping` keeps the best-robust weights and stops when they no longer improve
(Rice et al. 2020); :class:`OverfitGuard` rolls single-step adversarial training back when its
robustness collapses (Wong et al. 2020).

Example:
    >>> es = RobustEarlyStopping(0.3, patience=2, n=500)
    >>> model = Trainer(epochs=20).fit(model, train, val, batch_fn=loss, plugins=[es])

"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

import attacks
from attacks.validation import check_number, check_positive_int
from defenses.checkpoints import state_to_cpu
from defenses.data import check_dataset, tensors_of
from defenses.plugins import Plugin, TrainState
from defenses.storage import atomic_torch_save

logger = logging.getLogger(__name__)

BEST_CHECKPOINT = "best.pt"


class RobustMonitor(Plugin):
    """Measures PGD accuracy on a fixed validation subset at the end of epochs; keeps the best.

    Subclasses decide when to measure and what to do with the result; :meth:`keep_best` records
    the best accuracy and weights, which :meth:`state_dict` carries through checkpoints.

    Args:
        eps: linf (or l2) budget; ``0`` measures clean accuracy.
        data: The validation Dataset; default the ``val`` passed to ``fit``.
        n: Size of the fixed subset (seeded; default 1000, as Rice et al.).
        steps: PGD steps (default 10).
        rel_step_size: PGD step as a fraction of eps (default ``2.5 / steps``).
        norm: ``"linf"`` or ``"l2"``.
        bounds: Input bounds.
        every: Evaluate every ``every`` epochs (and after the last one).
        batch_size: Evaluation batch size.
        seed: Seeds the subset choice and the attack's random start.

    """

    metric = "val_robust_acc"

    def __init__(
        self,
        eps: float,
        *,
        data: Dataset | None = None,
        n: int = 1000,
        steps: int = 10,
        rel_step_size: float | None = None,
        norm: str = "linf",
        bounds: tuple[float, float] = (0.0, 1.0),
        every: int = 1,
        batch_size: int = 500,
        seed: int = 0,
    ) -> None:
        self.eps = check_number("eps", eps)
        self.data = data if data is None else check_dataset("validation data", data)
        self.n = check_positive_int("n", n)
        self.every = check_positive_int("every", every)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.seed = int(seed)
        self.attack = attacks.create(
            "pgd",
            norm=norm,
            steps=check_positive_int("steps", steps),
            rel_step_size=rel_step_size,
            bounds=bounds,
            seed=seed,
        )
        self._x: Tensor | None = None
        self._y: Tensor | None = None
        self.best = -1.0
        self.best_epoch = -1
        self.best_state: dict[str, Tensor] | None = None

    def on_fit_start(self, state: TrainState) -> None:
        """Fix the validation subset (needs a validation set)."""
        data = self.data if self.data is not None else state.val
        if data is None:
            raise ValueError(
                f"{type(self).__name__} measures robust accuracy on validation data: pass val= "
                "to fit() (Rice et al. hold out 1,000 training images) or data= to the plug-in"
            )
        n_total = len(data)  # type: ignore[arg-type]
        g = torch.Generator().manual_seed(self.seed)
        idx = torch.randperm(n_total, generator=g)[: min(self.n, n_total)].sort().values
        self._x, self._y = tensors_of(data, idx)

    def due(self, state: TrainState, epoch: int) -> bool:
        """Whether to evaluate after ``epoch`` (0-based)."""
        return (epoch + 1) % self.every == 0 or epoch + 1 == state.epochs

    def measure(self, model: nn.Module, device: torch.device) -> float:
        """PGD (or clean, for eps 0) accuracy of ``model`` on the fixed subset."""
        if self._x is None or self._y is None:
            raise RuntimeError("on_fit_start must run before measure")
        correct = 0
        for i in range(0, self._x.shape[0], self.batch_size):
            x = self._x[i : i + self.batch_size].to(device)
            y = self._y[i : i + self.batch_size].to(device)
            res = self.attack(model, x, y, eps=self.eps)
            correct += int((~res.success).sum())
        return correct / self._x.shape[0]

    def keep_best(self, state: TrainState, epoch: int, acc: float) -> None:
        """Record ``acc`` after ``epoch`` as the best so far, with a CPU copy of the weights."""
        self.best, self.best_epoch = acc, epoch
        self.best_state = state_to_cpu(state.model)

    def state_dict(self) -> dict[str, Any]:
        """The best accuracy, its epoch and its weights."""
        return {"best": self.best, "best_epoch": self.best_epoch, "best_state": self.best_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.best_state = state["best_state"]


class RobustEarlyStopping(RobustMonitor):
    """Early stopping on robust validation accuracy (Rice et al. 2020) as a Trainer plug-in.

    Every ``every`` epochs it runs PGD on a fixed validation subset, logs ``val_robust_acc``
    and ``best_val_robust_acc``, keeps the best weights (in memory, and as ``best.pt`` next to
    the trainer's ``last.pt`` when a ``checkpoint_dir`` is given), stops after ``patience``
    evaluations without improvement, and restores the best weights at the end.

    Args:
        eps: Budget of the validation attack (``0``: clean validation accuracy).
        patience: Evaluations without improvement before stopping (None: never stop early,
            only keep the best checkpoint).
        min_delta: Smallest accuracy gain counted as an improvement.
        restore_best: Load the best weights into the model when training ends.
        **kwargs: See :class:`RobustMonitor` (``n``, ``steps``, ``every``, ``data``...).

    References:
        Rice, Wong & Kolter, "Overfitting in adversarially robust deep learning", ICML 2020.

    """

    def __init__(
        self,
        eps: float,
        *,
        patience: int | None = None,
        min_delta: float = 0.0,
        restore_best: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(eps, **kwargs)
        self.patience = None if patience is None else check_positive_int("patience", patience)
        self.min_delta = check_number("min_delta", min_delta)
        self.restore_best = bool(restore_best)
        self.bad_evals = 0

    def on_epoch_end(self, state: TrainState, epoch: int, metrics: dict[str, float]) -> None:
        """Evaluate, keep the best weights, count evaluations without improvement."""
        if not self.due(state, epoch):
            return
        acc = self.measure(state.model, state.device)
        metrics[self.metric] = acc
        if acc > self.best + self.min_delta:
            self.keep_best(state, epoch, acc)
            self.bad_evals = 0
            if state.checkpoint_dir is not None:
                payload = {"model": self.best_state, "epoch": epoch, self.metric: acc}
                atomic_torch_save(payload, state.checkpoint_dir / BEST_CHECKPOINT)
        else:
            self.bad_evals += 1
        metrics["best_" + self.metric] = self.best
        if self.patience is not None and self.bad_evals >= self.patience:
            logger.info(
                "early stopping after epoch %d: %s has not improved on %.4f (epoch %d) for %d "
                "evaluations",
                epoch + 1,
                self.metric,
                self.best,
                self.best_epoch + 1,
                self.bad_evals,
            )
            state.stop = True

    def on_fit_end(self, state: TrainState) -> None:
        """Restore the best-robust weights."""
        if self.restore_best and self.best_state is not None:
            state.model.load_state_dict(self.best_state)
            logger.info(
                "restored the best checkpoint: epoch %d, %s=%.4f",
                self.best_epoch + 1,
                self.metric,
                self.best,
            )

    def state_dict(self) -> dict[str, Any]:
        """Best accuracy, its epoch and weights, and the patience counter."""
        return {**super().state_dict(), "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        super().load_state_dict(state)
        self.bad_evals = int(state["bad_evals"])


class OverfitGuard(RobustMonitor):
    """Catastrophic-overfitting guard for single-step adversarial training.

    After every epoch it measures PGD accuracy on a fixed held-out batch. FGSM training can
    suddenly lose all robustness to PGD within an epoch ("catastrophic overfitting"); when the
    accuracy drops more than ``drop`` below the best seen (or to ``floor`` or less after having
    been above it), the guard restores the best weights and then either stops training
    (``action="stop"``, Wong et al.'s early stopping) or multiplies the learning rate by
    ``lr_factor`` and continues (``action="reduce_lr"``).

    Metrics added: ``guard_pgd_acc``, ``guard_best_pgd_acc`` and ``guard_rollback`` (1 on the
    epoch a rollback happened, else 0).

    Args:
        eps: Budget of the guard's PGD.
        drop: Collapse threshold below the best accuracy (default 0.2 = 20 points).
        floor: Accuracy at or below which robustness counts as collapsed (default 0.05).
        action: ``"stop"`` or ``"reduce_lr"``.
        lr_factor: Learning-rate multiplier for ``"reduce_lr"``.
        **kwargs: :class:`RobustMonitor` settings (``data``, ``n``,
            ``steps``...).

    References:
        Wong, Rice & Kolter, "Fast is better than free: Revisiting adversarial training",
        ICLR 2020, Section 5.

    """

    metric = "guard_pgd_acc"

    def __init__(
        self,
        eps: float,
        *,
        drop: float = 0.2,
        floor: float = 0.05,
        action: str = "stop",
        lr_factor: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(eps, **kwargs)
        if action not in ("stop", "reduce_lr"):
            raise ValueError(f"guard action must be 'stop' or 'reduce_lr', got {action!r}")
        self.drop = check_number("drop", drop, high=1.0)
        self.floor = check_number("floor", floor, high=1.0)
        self.action = action
        self.lr_factor = check_number("lr_factor", lr_factor, low_open=True, high=1.0)
        self.rollbacks = 0

    def collapsed(self, acc: float) -> bool:
        """True when ``acc`` is a collapse relative to the best accuracy so far."""
        if self.best < 0:
            return False
        return acc < self.best - self.drop or (acc <= self.floor < self.best)

    def on_epoch_end(self, state: TrainState, epoch: int, metrics: dict[str, float]) -> None:
        """Measure, then keep the best weights or roll back to them."""
        acc = self.measure(state.model, state.device)
        metrics[self.metric] = acc
        metrics["guard_rollback"] = 0.0
        if self.collapsed(acc):
            self._rollback(state, epoch, acc)
            metrics["guard_rollback"] = 1.0
        elif acc > self.best:
            self.keep_best(state, epoch, acc)
        metrics["guard_best_pgd_acc"] = self.best

    def _rollback(self, state: TrainState, epoch: int, acc: float) -> None:
        self.rollbacks += 1
        logger.warning(
            "catastrophic overfitting at epoch %d: PGD accuracy %.3f vs best %.3f (epoch %d); "
            "rolling back to the best weights and %s",
            epoch + 1,
            acc,
            self.best,
            self.best_epoch + 1,
            "stopping" if self.action == "stop" else f"scaling the lr by {self.lr_factor}",
        )
        state.model.load_state_dict(self.best_state)  # type: ignore[arg-type]
        if self.action == "stop":
            state.stop = True
            return
        sched = state.scheduler
        sched.base_lrs = [lr * self.lr_factor for lr in sched.base_lrs]
        for group in state.optimizer.param_groups:
            group["lr"] *= self.lr_factor

    def state_dict(self) -> dict[str, Any]:
        """Best accuracy, epoch and weights, and the rollback count."""
        return {**super().state_dict(), "rollbacks": self.rollbacks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        super().load_state_dict(state)
        self.rollbacks = int(state["rollbacks"])


__all__ = ["BEST_CHECKPOINT", "OverfitGuard", "RobustEarlyStopping", "RobustMonitor"]
