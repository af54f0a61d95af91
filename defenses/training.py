"""Training defenses: the base class every one of them extends, and the registry they join.

A training defense maps ``(model, data)`` to a trained model with ``fit``; it is a per-batch
loss (and optional epoch-level plug-ins) on top of the shared :class:`~defenses.trainer.Trainer`.
The loop's public names (``Trainer``, ``LRSchedule``, ``TrainState``, ``Plugin``...) live in
:mod:`defenses.trainer`, :mod:`defenses.schedules`, :mod:`defenses.plugins` and
:mod:`defenses.checkpoints`, and stay importable from here.

Example:
    >>> @register_defense("my_defense", kind="training")
    ... class MyDefense(TrainingDefense):
    ...     trainer_defaults = {"epochs": 5, "optimizer": "adam", "lr": 1e-3}
    ...     def loss(self, model, x, y):
    ...         return cross_entropy_batch(model, x, y)

"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor, nn
from torch.utils.data import Dataset

from defenses.checkpoints import LAST_CHECKPOINT, state_to_cpu
from defenses.data import check_dataset
from defenses.plugins import Plugin, TrainState
from defenses.registry import DEFENSES, KINDS, kinds, register_defense
from defenses.schedules import SCHEDULES, LRSchedule
from defenses.trainer import (
    OPTIMIZERS,
    BatchFn,
    Callback,
    FitOptions,
    Trainer,
    cross_entropy_batch,
    evaluate_clean,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack


class TrainingDefense:
    """Base of training defenses: a :class:`~defenses.trainer.Trainer` plus a per-batch loss.

    Subclasses implement :meth:`loss` and may override :meth:`setup` and :meth:`prepare_model`.
    Trainer settings are plain keyword arguments (see :class:`~defenses.trainer.Trainer`); a
    subclass states its own defaults in ``trainer_defaults`` and the keyword arguments override
    them.
    """

    name = "training"
    needs_val = False
    trainer_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **trainer_kwargs: Any) -> None:
        self.trainer = Trainer(**{**self.trainer_defaults, **trainer_kwargs})

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
        **options: Unpack[FitOptions],
    ) -> nn.Module:
        """Train ``model`` with this defense; return it in eval mode.

        Args:
            model: The model to train (modified in place and returned).
            train: A Dataset of ``(x, y)``.
            val: Optional validation Dataset.
            **options: ``callbacks``, ``device``, ``checkpoint_dir``, ``resume`` (see
                :meth:`~defenses.trainer.Trainer.fit`).

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
        return self.trainer.fit(model, train, val, batch_fn=self.loss, plugins=plugins, **options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(epochs={self.trainer.epochs})"


__all__ = [
    "DEFENSES",
    "KINDS",
    "LAST_CHECKPOINT",
    "OPTIMIZERS",
    "SCHEDULES",
    "BatchFn",
    "Callback",
    "FitOptions",
    "LRSchedule",
    "Plugin",
    "TrainState",
    "Trainer",
    "TrainingDefense",
    "cross_entropy_batch",
    "evaluate_clean",
    "kinds",
    "register_defense",
    "state_to_cpu",
]
