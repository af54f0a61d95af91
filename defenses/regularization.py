"""Regularised training: dropout, weight decay, label smoothing, noise, robust early stopping.

:class:`RegularizedDefense` is the base of every training defense in this package (standard
training, distillation and the adversarial-training defenses), so each of them accepts
``dropout``, ``weight_decay``, ``label_smoothing``, ``gaussian_noise`` and ``early_stopping``.

Example:
    >>> d = defenses.create("standard", epochs=5, dropout=0.2, weight_decay=5e-4,
    ...                     early_stopping={"eps": 0.1, "patience": 2})
    >>> model = d.fit(model, train, val)

"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

import attacks
from attacks.validation import check_number, check_positive_int
from defenses.data import check_dataset, tensors_of
from defenses.storage import atomic_torch_save
from defenses.training import DEFENSES, Callback, Plugin, TrainingDefense, TrainState, state_to_cpu

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
BEST_CHECKPOINT = "best.pt"


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


# --------------------------------------------------------------------------- robust validation


class RobustMonitor(Plugin):
    """Measures PGD accuracy on a fixed validation subset at the end of epochs.

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
        self.best = -1.0
        self.best_epoch = -1
        self.bad_evals = 0
        self.best_state: dict[str, Tensor] | None = None

    def on_epoch_end(self, state: TrainState, epoch: int, metrics: dict[str, float]) -> None:
        """Evaluate, keep the best weights, count evaluations without improvement."""
        if not self.due(state, epoch):
            return
        acc = self.measure(state.model, state.device)
        metrics[self.metric] = acc
        if acc > self.best + self.min_delta:
            self.best, self.best_epoch, self.bad_evals = acc, epoch, 0
            self.best_state = state_to_cpu(state.model)
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
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad_evals": self.bad_evals,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_evals = int(state["bad_evals"])
        self.best_state = state["best_state"]


# --------------------------------------------------------------------------- base defense


class RegularizedDefense(TrainingDefense):
    """Training with the regularisers every training defense here can use.

    Args:
        dropout: Insert dropout with this rate (see :func:`add_dropout`; 0 = unchanged).
        label_smoothing: Label smoothing of the cross-entropy (Szegedy et al. 2016).
        gaussian_noise: Std of Gaussian noise added to each training input (clipped to
            ``bounds``); 0 = no augmentation.
        early_stopping: None, True, or a dict of :class:`RobustEarlyStopping` settings
            (``eps``, ``patience``, ``n``, ``every``, ``steps``...). Needs ``val``.
        bounds: Valid input range.
        **trainer_kwargs: :class:`~defenses.training.Trainer` settings (``epochs``,
            ``batch_size``, ``optimizer``, ``lr``, ``momentum``, ``weight_decay``,
            ``schedule``, ``seed``, ``progress``...).

    """

    name = "regularized"

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
        return (x + self.gaussian_noise * torch.randn_like(x)).clamp(*self.bounds)

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


@DEFENSES.register("standard")
class StandardTraining(RegularizedDefense):
    """Standard training (empirical risk minimisation) with configurable regularisation.

    Defaults: 10 epochs, batch 128, Adam at 1e-3, constant learning rate. See
    :class:`RegularizedDefense` for ``dropout``, ``weight_decay``, ``label_smoothing``,
    ``gaussian_noise`` and ``early_stopping``.

    Example:
        >>> model = defenses.create("standard", epochs=5, dropout=0.3).fit(model, train)

    """

    name = "standard"

    def __init__(
        self,
        *,
        epochs: int = 10,
        batch_size: int = 128,
        optimizer: str = "adam",
        lr: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        super().__init__(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, **kwargs)


@DEFENSES.register("distillation")
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
        **kwargs: Trainer and regularisation settings (epochs, lr, ... ; early stopping
            applies to the student).

    References:
        Papernot, McDaniel, Wu, Jha & Swami, "Distillation as a Defense to Adversarial
        Perturbations against Deep Neural Networks", IEEE S&P 2016.

    """

    name = "distillation"

    def __init__(
        self,
        *,
        temperature: float = 100.0,
        epochs: int = 10,
        batch_size: int = 128,
        optimizer: str = "adam",
        lr: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        super().__init__(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, **kwargs)
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
        *,
        callbacks: Iterable[Callback] = (),
        device: str | torch.device | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        resume: bool = False,
    ) -> nn.Module:
        """Train the teacher, then the student; return the student in eval mode."""
        callbacks = list(callbacks)
        teacher_cbs = [_prefixed(cb, "teacher_") for cb in callbacks]
        sub = (lambda name: os.path.join(checkpoint_dir, name)) if checkpoint_dir else None
        teacher = copy.deepcopy(model)
        self._teacher = None
        saved_es, self.early_stopping = self.early_stopping, None
        try:
            teacher = super().fit(
                teacher,
                train,
                val,
                callbacks=teacher_cbs,
                device=device,
                checkpoint_dir=sub("teacher") if sub else None,
                resume=resume,
            )
        finally:
            self.early_stopping = saved_es
        self._teacher = teacher.eval()
        try:
            return super().fit(
                model,
                train,
                val,
                callbacks=callbacks,
                device=device,
                checkpoint_dir=sub("student") if sub else None,
                resume=resume,
            )
        finally:
            self._teacher = None


def _prefixed(cb: Callback, prefix: str) -> Callback:
    def wrapped(epoch: int, metrics: dict[str, float]) -> Any:
        return cb(epoch, {prefix + k: v for k, v in metrics.items()})

    return wrapped


__all__ = [
    "Distillation",
    "RegularizedDefense",
    "RobustEarlyStopping",
    "RobustMonitor",
    "StandardTraining",
    "add_dropout",
]
