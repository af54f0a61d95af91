"""What the :class:`~defenses.trainer.Trainer` loop shares with its epoch-level plug-ins.

A :class:`Plugin` (early stopping, the catastrophic-overfitting guard, a denoiser's validation
metrics) sees the :class:`TrainState` at the start and end of training and after every epoch; its
``state_dict`` travels in every checkpoint so a resumed run continues where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset


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
        train_model: What the training step calls: the DDP wrapper of ``model`` under
            ``torch.distributed``, else None (``model`` itself). Plug-ins use ``model``.

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
    train_model: nn.Module | None = None


class Plugin:
    """Epoch-level logic that rides on the :class:`~defenses.trainer.Trainer` loop (e.g. guards).

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


__all__ = ["Plugin", "TrainState"]
