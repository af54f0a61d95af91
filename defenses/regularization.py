"""Regularised training: dropout, weight decay, label smoothing, noise, robust early stopping.

:class:`RegularizedDefense` is the base of every training defense in this package (standard
training, distillation and the adversarial-training defenses), so each of them accepts
``dropout``, ``weight_decay``, ``label_smoothing``, ``gaussian_noise`` and ``early_stopping``.
The early-stopping plug-in itself is :class:`~defenses.monitors.RobustEarlyStopping`.

Example:
    >>> d = defenses.create("standard", epochs=5, dropout=0.2, weight_decay=5e-4,
    ...                     early_stopping={"eps": 0.1, "patience": 2})
    >>> model = d.fit(model, train, val)

"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from attacks.validation import check_number
from defenses.monitors import BEST_CHECKPOINT, RobustEarlyStopping, RobustMonitor
from defenses.registry import register_defense
from defenses.trainer import Callback, FitOptions
from defenses.training import Plugin, TrainingDefense

if TYPE_CHECKING:
    from typing_extensions import Unpack

logger = logging.getLogger(__name__)

ACTIVATIONS = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
)

# Standard training's and distillation's trainer defaults: 10 epochs of batch 128, Adam at 1e-3.
ADAM_DEFAULTS: dict[str, Any] = {"epochs": 10, "batch_size": 128, "optimizer": "adam", "lr": 1e-3}


# --------------------------------------------------------------------------- dropout


def add_dropout(model: nn.Module, rate: float) -> nn.Module:
    """Put dropout with probability ``rate`` into ``model`` (in place) and return it.

    If the model already has dropout layers (every ``robustbench_local`` zoo model has one
    before its last linear layer), their rate is set to ``rate`` (and a zoo model's
    ``arch_kwargs["dropout"]``, so its checkpoints record it). Otherwise, in every
    ``nn.Sequential`` inside the model, each activation that feeds a ``nn.Linear`` (possibly
    through ``nn.Flatten``) is replaced by ``Sequential(activation, Dropout(rate))``.
    Activations hold no parameters, so parameter names (and checkpoints) stay the same.

    Args:
        model: An ``nn.Sequential`` or any module containing ``nn.Sequential`` blocks.
        rate: Dropout probability in ``[0, 1)``.

    Raises:
        ValueError: ``rate`` outside ``[0, 1)`` or no place to insert dropout was found.

    References:
        Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from
        Overfitting", JMLR 2014.

    """
    rate = check_number("dropout rate", rate, high=1.0, high_open=True)
    existing = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    arch_kwargs = getattr(model, "arch_kwargs", None)
    if isinstance(arch_kwargs, dict) and "dropout" in arch_kwargs:
        arch_kwargs["dropout"] = rate  # zoo models: keep the recorded architecture in sync
    if existing:
        for m in existing:
            m.p = rate
        return model
    inserted = sum(_insert_dropout(seq, rate) for seq in list(model.modules()) if _is_seq(seq))
    if inserted == 0:
        raise ValueError(
            f"add_dropout found no activation feeding a Linear layer in {type(model).__name__}; "
            "build the model with dropout (e.g. create_model(name, dropout=rate)) or add "
            "nn.Dropout layers yourself"
        )
    return model


def _is_seq(module: nn.Module) -> bool:
    return type(module) is nn.Sequential


def _insert_dropout(seq: nn.Sequential, rate: float) -> int:
    names = list(seq._modules)
    count = 0
    for i, name in enumerate(names):
        module = seq._modules[name]
        if not isinstance(module, ACTIVATIONS):
            continue
        following = [seq._modules[n] for n in names[i + 1 :]]
        following = [m for m in following if not isinstance(m, nn.Flatten)]
        if following and isinstance(following[0], nn.Linear):
            seq._modules[name] = nn.Sequential(module, nn.Dropout(rate))
            count += 1
    return count


# --------------------------------------------------------------------------- base defense


class RegularizedDefense(TrainingDefense):
    """Training with the regularisers every training defense here can use.

    Args:
        dropout: Insert dropout with this rate (see :func:`add_dropout`; 0 = unchanged).
        label_smoothing: Label smoothing of the cross-entropy (Szegedy et al. 2016).
        gaussian_noise: Std of Gaussian noise added to each training input (clipped to
            ``bounds`` unless :attr:`clip_noise` is False); 0 = no augmentation.
        early_stopping: None, True, or a dict of :class:`RobustEarlyStopping` settings
            (``eps``, ``patience``, ``n``, ``every``, ``steps``...). Needs ``val``.
        bounds: Valid input range.
        **trainer_kwargs: :class:`~defenses.training.Trainer` settings (``epochs``,
            ``batch_size``, ``optimizer``, ``lr``, ``momentum``, ``weight_decay``,
            ``schedule``, ``seed``, ``progress``...).

    """

    name = "regularized"
    clip_noise = True
    """Clip the noisy inputs of ``gaussian_noise`` to ``bounds`` (``gaussian_augmentation``: no)."""

    def __init__(
        self,
        *,
        dropout: float = 0.0,
        label_smoothing: float = 0.0,
        gaussian_noise: float = 0.0,
        early_stopping: bool | dict[str, Any] | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        **trainer_kwargs: Any,
    ) -> None:
        super().__init__(**trainer_kwargs)
        self.dropout = check_number("dropout", dropout, high=1.0, high_open=True)
        self.label_smoothing = check_number(
            "label_smoothing", label_smoothing, high=1.0, high_open=True
        )
        self.gaussian_noise = check_number("gaussian_noise", gaussian_noise)
        lo, hi = (float(b) for b in bounds)
        if not lo < hi:
            raise ValueError(f"bounds must satisfy lo < hi, got {bounds}")
        self.bounds = (lo, hi)
        if early_stopping is True:
            early_stopping = {}
        elif early_stopping is False:
            early_stopping = None
        if early_stopping is not None and not isinstance(early_stopping, dict):
            raise TypeError(
                "early_stopping must be None, True or a dict of RobustEarlyStopping settings, "
                f"got {early_stopping!r}"
            )
        self.early_stopping = early_stopping
        self.needs_val = self.early_stopping is not None
        if self.early_stopping is not None:
            self.make_early_stopping()  # validate the settings now, not after training

    def default_eps(self) -> float | None:
        """The budget early stopping uses when its settings give none."""
        return None

    def make_early_stopping(self) -> RobustEarlyStopping:
        """A fresh :class:`RobustEarlyStopping` from the ``early_stopping`` settings."""
        cfg = dict(self.early_stopping or {})
        cfg.setdefault("bounds", self.bounds)
        if "eps" not in cfg:
            if self.default_eps() is None:
                raise ValueError(
                    f"early_stopping for {self.name} needs an attack budget: pass "
                    "early_stopping={'eps': 0.3} (eps=0 for clean validation accuracy)"
                )
            cfg["eps"] = self.default_eps()
        return RobustEarlyStopping(**cfg)

    def setup(self, train: Dataset, val: Dataset | None) -> tuple[Dataset, list[Plugin]]:
        """Early stopping as a plug-in when configured."""
        return train, ([self.make_early_stopping()] if self.early_stopping is not None else [])

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Insert dropout if configured."""
        return add_dropout(model, self.dropout) if self.dropout > 0 else model

    def augment(self, x: Tensor) -> Tensor:
        """Gaussian-noise augmentation (identity when ``gaussian_noise`` is 0)."""
        if self.gaussian_noise == 0:
            return x
        noisy = x + self.gaussian_noise * torch.randn_like(x)
        return noisy.clamp(*self.bounds) if self.clip_noise else noisy

    def ce(self, logits: Tensor, y: Tensor) -> Tensor:
        """Mean cross-entropy with the configured label smoothing."""
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """Augment, then the defense's :meth:`objective`."""
        return self.objective(model, self.augment(x), y)

    def objective(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """Plain (label-smoothed) cross-entropy; adversarial defenses override this."""
        logits = model(x)
        return self.ce(logits, y), logits


@register_defense("standard", kind="training")
class StandardTraining(RegularizedDefense):
    """Standard training (empirical risk minimisation) with configurable regularisation.

    Defaults: 10 epochs, batch 128, Adam at 1e-3, constant learning rate. See
    :class:`RegularizedDefense` for ``dropout``, ``weight_decay``, ``label_smoothing``,
    ``gaussian_noise`` and ``early_stopping``.

    Example:
        >>> model = defenses.create("standard", epochs=5, dropout=0.3).fit(model, train)

    """

    name = "standard"
    trainer_defaults = ADAM_DEFAULTS


@register_defense("distillation", kind="training")
class Distillation(RegularizedDefense):
    """Defensive distillation: a teacher and then a student, both trained at temperature T.

    The teacher (a copy of the given model, same initial weights) is trained on hard labels
    with logits divided by ``temperature``; the student (the given model) is trained at the same
    temperature on the teacher's soft labels ``softmax(teacher(x) / T)`` and deployed at
    temperature 1 (its raw logits). It is kept for comparison: its robustness comes from
    saturated softmax outputs (gradient masking) and falls to attacks on logits or margins
    (Carlini & Wagner 2017).

    Args:
        temperature: T (default 100, the paper's setting).
        **kwargs: Trainer and regularisation settings (default 10 epochs of batch 128, Adam at
            1e-3; early stopping applies to the student).

    References:
        Papernot, McDaniel, Wu, Jha & Swami, "Distillation as a Defense to Adversarial
        Perturbations against Deep Neural Networks", IEEE S&P 2016.

    """

    name = "distillation"
    trainer_defaults = ADAM_DEFAULTS

    def __init__(self, *, temperature: float = 100.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.temperature = check_number("temperature", temperature, low_open=True)
        self._teacher: nn.Module | None = None

    def objective(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher phase: hard labels at T; student phase: the teacher's soft labels at T."""
        logits = model(x)
        scaled = logits / self.temperature
        if self._teacher is None:
            return self.ce(scaled, y), logits
        with torch.no_grad():
            soft = F.softmax(self._teacher(x) / self.temperature, dim=1)
        return -(soft * F.log_softmax(scaled, dim=1)).sum(1).mean(), logits

    def fit(
        self,
        model: nn.Module,
        train: Dataset,
        val: Dataset | None = None,
        **options: Unpack[FitOptions],
    ) -> nn.Module:
        """Train the teacher, then the student; return the student in eval mode.

        The teacher's metrics reach the callbacks prefixed ``teacher_``; with a
        ``checkpoint_dir``, each phase checkpoints into its ``teacher``/``student`` subfolder.
        """
        options = {**options, "callbacks": list(options.get("callbacks", ()))}
        self._teacher = None
        with self._without_early_stopping():
            teacher = self._phase("teacher", copy.deepcopy(model), train, val, options)
        self._teacher = teacher.eval()
        try:
            return self._phase("student", model, train, val, options)
        finally:
            self._teacher = None

    def _phase(
        self,
        phase: str,
        model: nn.Module,
        train: Dataset,
        val: Dataset | None,
        options: FitOptions,
    ) -> nn.Module:
        """One :meth:`TrainingDefense.fit` with the phase's callbacks and checkpoint folder."""
        opts: dict[str, Any] = dict(options)
        if phase == "teacher":
            opts["callbacks"] = [_prefixed(cb, "teacher_") for cb in opts.get("callbacks", ())]
        if opts.get("checkpoint_dir"):
            opts["checkpoint_dir"] = os.path.join(opts["checkpoint_dir"], phase)
        return super().fit(model, train, val, **opts)

    @contextlib.contextmanager
    def _without_early_stopping(self) -> Iterator[None]:
        """Switch early stopping off (the teacher trains for its full budget)."""
        saved, self.early_stopping = self.early_stopping, None
        try:
            yield
        finally:
            self.early_stopping = saved


def _prefixed(cb: Callback, prefix: str) -> Callback:
    def wrapped(epoch: int, metrics: dict[str, float]) -> Any:
        return cb(epoch, {prefix + k: v for k, v in metrics.items()})

    return wrapped


__all__ = [
    "BEST_CHECKPOINT",
    "Distillation",
    "RegularizedDefense",
    "RobustEarlyStopping",
    "RobustMonitor",
    "StandardTraining",
    "add_dropout",
]
