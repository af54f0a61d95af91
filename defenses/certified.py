"""Certified training: minimise an upper bound of the worst-case loss over the eps-ball.

Both defenses train on ``kappa * CE(z(x), y) + (1 - kappa) * CE(-m(x, eps), y)``, where ``m``
are lower bounds of the margins ``z_y - z_j`` over the ball (0 for ``j = y``;
:mod:`defenses.bounds`), so the second term bounds the cross-entropy of every point of the
ball. Training starts clean and ramps ``eps`` (and ``kappa``, and CROWN-IBP's ``beta``)
linearly with the optimiser step:

- ``warmup``: the first fraction of the steps trains at ``eps = 0`` (``kappa`` at its start);
- ``ramp``: over the next fraction ``eps`` rises linearly to its target and ``kappa`` (and
  ``beta``) move from their start to their end value; afterwards they stay there.

Fractions rather than step counts scale the papers' MNIST schedules to any number of epochs:
Gowal et al. train 60k steps (batch 100), warm up 2k and ramp 10k, and divide the learning
rate by 10 at 15k and 25k steps; Zhang et al. (2020) ramp over 18% of their epochs after 3%,
with decays at 25% and 42%. Both use Adam and train at ``eps = 0.4`` for an evaluation at 0.3
(pass ``eps=0.2`` for 0.1). The defaults here keep those proportions and the project's shorter
epoch counts.

The ramp follows the scheduler's step count, which the Trainer checkpoints, so a resumed run
continues on the same schedule. Under ``torch.distributed`` the clean pass goes through the DDP
wrapper (so the backward averages the gradients over the ranks) and the bounds through the
module inside it. Models need a deterministic forward pass in train mode: no BatchNorm, dropout
rate 0 (the zoo's MNIST models qualify).

References:
    Gowal et al., "On the Effectiveness of Interval Bound Propagation for Training Verifiably
    Robust Models", arXiv:1810.12715, 2018.
    Zhang et al., "Towards Stable and Efficient Training of Verifiably Robust Neural Networks"
    (CROWN-IBP), ICLR 2020, arXiv:1906.06316.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from attacks.validation import check_choice, check_number
from defenses.bounds import NORMS, BoundedModel
from defenses.distributed import unwrap
from defenses.plugins import Plugin, TrainState
from defenses.registry import register_defense
from defenses.regularization import RegularizedDefense

logger = logging.getLogger(__name__)

LR_MILESTONES = (0.25, 0.4167)
"""Where the learning rate drops by 10, as fractions of training (Gowal et al.: 15k and 25k
of 60k steps; Zhang et al. 2020: epochs 25 and 42 of 100)."""


@dataclass(frozen=True)
class Ramp:
    """Where a schedule stands after a fraction of the training steps.

    Attributes:
        warmup: Fraction of the steps before the ramp starts.
        length: Fraction of the steps the ramp lasts.
    """

    warmup: float
    length: float

    def progress(self, t: float) -> float:
        """``0`` before the ramp, ``1`` after it, linear in between (``t`` in ``[0, 1]``)."""
        if self.length == 0:
            return float(t >= self.warmup)
        return min(1.0, max(0.0, (t - self.warmup) / self.length))


class _StepClock(Plugin):
    """Hands the defense the Trainer's scheduler, whose step count drives the ramp."""

    def __init__(self, defense: CertifiedTraining) -> None:
        self.defense = defense

    def on_fit_start(self, state: TrainState) -> None:
        self.defense.bind_clock(state.scheduler)

    def on_fit_end(self, state: TrainState) -> None:
        self.defense.bind_clock(None)


class CertifiedTraining(RegularizedDefense):
    """Shared schedule and loss of the bound-based certified training defenses.

    Args:
        eps: Target training radius (default 0.4, the papers' MNIST choice for eps 0.3).
        norm: ``"linf"`` or ``"l2"``.
        kappa: ``(start, end)`` weight of the clean cross-entropy.
        warmup: Fraction of the steps trained clean before the ramp.
        ramp: Fraction of the steps over which eps (and kappa) reach their targets.
        **kwargs: Regularisation and Trainer settings (``epochs``, ``lr``, ``milestones``...);
            by default the learning rate drops by 10 at 25% and 42% of the epochs.
    """

    name = "certified"
    trainer_defaults: ClassVar[dict[str, Any]] = {
        "epochs": 20,
        "batch_size": 100,
        "optimizer": "adam",
        "lr": 1e-3,
        "schedule": "piecewise",
        "gamma": 0.1,
    }
    default_kappa: ClassVar[tuple[float, float]] = (1.0, 0.5)
    default_ramp: ClassVar[tuple[float, float]] = (2 / 60, 10 / 60)

    def __init__(
        self,
        *,
        eps: float = 0.4,
        norm: str = "linf",
        kappa: Sequence[float] | None = None,
        warmup: float | None = None,
        ramp: float | None = None,
        **kwargs: Any,
    ) -> None:
        self.eps = check_number("eps", eps, low_open=True)
        self.norm = check_choice("norm", norm, NORMS)
        self.kappa = _pair("kappa", self.default_kappa if kappa is None else kappa)
        self.ramp = Ramp(
            check_number("warmup", self.default_ramp[0] if warmup is None else warmup, high=1.0),
            check_number("ramp", self.default_ramp[1] if ramp is None else ramp, high=1.0),
        )
        epochs = kwargs.get("epochs", self.trainer_defaults["epochs"])
        if "milestones" not in kwargs and isinstance(epochs, int):
            kwargs["milestones"] = [f * epochs for f in LR_MILESTONES]
        super().__init__(**kwargs)
        self._scheduler: Any = None

    def default_eps(self) -> float:
        """Early stopping validates at the training radius by default."""
        return self.eps

    def bind_clock(self, scheduler: Any) -> None:
        """Follow ``scheduler``'s step count (None: training is over)."""
        self._scheduler = scheduler

    def setup(self, train: Dataset, val: Dataset | None) -> tuple[Dataset, list[Plugin]]:
        """The step clock, plus early stopping when configured."""
        train, plugins = super().setup(train, val)
        return train, [_StepClock(self), *plugins]

    def progress(self) -> float:
        """Where the ramp stands (0 before it, 1 after it); 1 outside a ``fit``."""
        if self._scheduler is None:
            return 1.0
        fn = self._scheduler.lr_lambdas[0]
        total = max(1, fn.epochs * fn.steps_per_epoch)
        return self.ramp.progress(self._scheduler.last_epoch / total)

    def schedule(self) -> dict[str, float]:
        """The current ``eps`` and ``kappa`` (subclasses add their own)."""
        p = self.progress()
        return {"eps": p * self.eps, "kappa": _lerp(self.kappa, p), "p": p}

    def objective(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``kappa * CE(clean) + (1 - kappa) * CE(-margin bounds)``; also the clean logits."""
        now = self.schedule()
        logits = model(x)  # through the DDP wrapper, if any: it averages the gradients
        loss = now["kappa"] * self.ce(logits, y)
        if now["kappa"] < 1.0:
            margins = self.margins(unwrap(model), x, y, now)
            loss = loss + (1.0 - now["kappa"]) * F.cross_entropy(-margins, y)
        return loss, logits

    def margins(self, model: nn.Module, x: Tensor, y: Tensor, now: dict[str, float]) -> Tensor:
        """Lower bounds ``[B, classes]`` of the margins at the current radius."""
        raise NotImplementedError

    def bounded(self, model: nn.Module) -> BoundedModel:
        """``model`` ready for bound propagation in train mode."""
        return BoundedModel(model, allow_train=True)


@register_defense("ibp", kind="training")
class IBPTraining(CertifiedTraining):
    """Interval bound propagation training (Gowal et al. 2018).

    Defaults: their MNIST recipe in proportion: train radius 0.4, 1/30 of the steps clean, eps
    and ``kappa`` (1 -> 0.5) ramped over the next 1/6; Adam at 1e-3, batch 100, learning rate
    divided by 10 at 25% and 42% of training; 20 epochs here (they train 100).

    Args:
        eps: Target training radius (0.4; 0.2 for an evaluation at 0.1).
        **kwargs: ``norm``, ``kappa``, ``warmup``, ``ramp``, regularisation and Trainer
            settings.

    References:
        Gowal et al., "On the Effectiveness of Interval Bound Propagation for Training
        Verifiably Robust Models", arXiv:1810.12715, 2018.
    """

    name = "ibp"

    def margins(self, model: nn.Module, x: Tensor, y: Tensor, now: dict[str, float]) -> Tensor:
        """IBP margin bounds (specification folded into the last layer)."""
        return self.bounded(model).margins(
            x, y, now["eps"], method="ibp", norm=self.norm, bounds=self.bounds
        )


@register_defense("crown_ibp", kind="training")
class CROWNIBPTraining(CertifiedTraining):
    """CROWN-IBP training (Zhang et al. 2020): IBP forward, CROWN backward, mixed with IBP.

    The margin bound is ``beta * m_CROWN-IBP + (1 - beta) * m_IBP``, ``beta`` moving from 1 to 0
    with the eps ramp (the tight CROWN-IBP bound stabilises the start, pure IBP ends). Defaults:
    their MNIST recipe in proportion: radius 0.4, 3% of the steps clean, an 18% ramp, ``kappa``
    1 -> 0, Adam at 5e-4, batch 256, learning rate / 10 at 25% and 42% of training.

    Args:
        beta: ``(start, end)`` weight of the CROWN-IBP bound (default ``(1, 0)``).
        **kwargs: ``eps``, ``norm``, ``kappa``, ``warmup``, ``ramp``, regularisation and Trainer
            settings.

    References:
        Zhang et al., "Towards Stable and Efficient Training of Verifiably Robust Neural
        Networks", ICLR 2020, arXiv:1906.06316.
    """

    name = "crown_ibp"
    trainer_defaults: ClassVar[dict[str, Any]] = {
        **CertifiedTraining.trainer_defaults,
        "batch_size": 256,
        "lr": 5e-4,
    }
    default_kappa: ClassVar[tuple[float, float]] = (1.0, 0.0)
    default_ramp: ClassVar[tuple[float, float]] = (0.03, 0.18)

    def __init__(self, *, beta: Sequence[float] = (1.0, 0.0), **kwargs: Any) -> None:
        self.beta = _pair("beta", beta)
        super().__init__(**kwargs)

    def schedule(self) -> dict[str, float]:
        """Adds ``beta``."""
        now = super().schedule()
        return {**now, "beta": _lerp(self.beta, now["p"])}

    def margins(self, model: nn.Module, x: Tensor, y: Tensor, now: dict[str, float]) -> Tensor:
        """``beta`` CROWN-IBP plus ``1 - beta`` IBP margin bounds (one IBP pass for both)."""
        return self.bounded(model).mixed_margins(
            x, y, now["eps"], now["beta"], norm=self.norm, bounds=self.bounds
        )


def _pair(name: str, value: Sequence[float]) -> tuple[float, float]:
    """A ``(start, end)`` pair of weights in ``[0, 1]``."""
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{name} must be a (start, end) pair such as (1.0, 0.5), got {value!r}")
    start, end = (check_number(name, v, high=1.0) for v in value)
    return start, end


def _lerp(pair: tuple[float, float], p: float) -> float:
    return pair[0] + p * (pair[1] - pair[0])


__all__ = ["LR_MILESTONES", "CROWNIBPTraining", "CertifiedTraining", "IBPTraining", "Ramp"]
