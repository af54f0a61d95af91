"""Adversarial training: PGD-AT (Madry et al.), FGSM-RS fast AT (Wong et al.) and TRADES.

Each defense is a :class:`~defenses.regularization.RegularizedDefense` whose per-batch
objective crafts adversarial examples with ``attacks`` and trains on them; the loop itself is
the shared :class:`~defenses.training.Trainer`.

Inner maximisation. PGD-AT and FGSM-AT call the registered ``pgd``/``fgsm`` attack's
``perturb`` (``early_stop=False``) on **every** sample of the batch, as the papers do: the
sealed ``Attack.__call__`` would skip clean-misclassified samples (right for evaluation, wrong
for training) and spend two extra forward passes on bookkeeping. The examples are crafted with the
model in eval mode (``eval_mode=True``): batch-norm uses its running statistics, the attack's
forward passes do not pollute them, and dropout does not randomise the attack's gradients. Pass
``eval_mode=False`` to attack the model in train mode as Wong et al.'s and Rice et al.'s code do.
Each batch's random start draws its seed from the global torch RNG, which the Trainer seeds and
checkpoints, so runs are reproducible and resumable.

TRADES' inner maximisation (PGD on the KL divergence to the clean prediction) is the registered
``trades_kl`` attack, called through ``perturb`` like the others.

Example:
    >>> d = defenses.create("fgsm_at", eps=0.3, alpha=0.375, epochs=10)
    >>> model = d.fit(model, train, val)

"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

import attacks
from attacks.base import check_inputs
from attacks.threat import Norm
from attacks.validation import check_number, check_positive_int
from defenses.monitors import OverfitGuard
from defenses.registry import register_defense
from defenses.regularization import RegularizedDefense
from defenses.training import Plugin

logger = logging.getLogger(__name__)


def perturb(
    attack: attacks.Attack,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    bounds: tuple[float, float] | None = None,
) -> Tensor:
    """Adversarial examples for every sample of ``(x, y)``: ``attack.perturb(...)``.

    A thin alias of :meth:`attacks.FixedBudgetAttack.perturb`, which guards the model, draws
    fresh randomness from the global torch RNG (seeded and checkpointed by the Trainer) and
    returns examples inside the eps-ball and ``bounds`` (default ``attack.bounds``).

    Raises:
        TypeError: ``attack`` is not a fixed-budget attack.
        ValueError: ``x`` outside ``bounds``, bad labels.

    """
    if not isinstance(attack, attacks.FixedBudgetAttack):
        raise TypeError(
            "adversarial training needs a fixed-budget attack (pgd, fgsm, apgd_ce, trades_kl), "
            f"got {type(attack).__name__}"
        )
    return attack.perturb(model, x, y, eps, bounds)


# --------------------------------------------------------------------------- base class


class AdversarialTraining(RegularizedDefense):
    """Shared settings of the adversarial-training defenses.

    Trainer defaults: 10 epochs of batch 100, Adam at 1e-3 (subclasses may change them).

    Args:
        eps: Training budget in input units (> 0; default 0.3, the MNIST budget).
        norm: ``"linf"`` or ``"l2"``.
        mix: Fraction of each batch replaced by adversarial examples (``1.0``: all, as Madry
            et al.; ``0.5``: half, like Goodfellow et al.'s mixed objective).
        eval_mode: Craft the examples with the model in eval mode (see the module docstring).
        **kwargs: Regularisation and Trainer settings (see :class:`RegularizedDefense`).

    """

    name = "adversarial"
    trainer_defaults: ClassVar[dict[str, Any]] = {
        "epochs": 10,
        "batch_size": 100,
        "optimizer": "adam",
        "lr": 1e-3,
    }

    def __init__(
        self,
        *,
        eps: float = 0.3,
        norm: str = "linf",
        mix: float = 1.0,
        eval_mode: bool = True,
        **kwargs: Any,
    ) -> None:
        self.eps = check_number("eps", eps, low_open=True)
        self.norm = Norm.parse(norm)
        self.mix = check_number("mix", mix, low_open=True, high=1.0)
        self.eval_mode = bool(eval_mode)
        if self.norm is Norm.LINF and self.eps >= 1.0:
            raise ValueError(f"linf eps={eps} covers the whole [0, 1] input range; use eps < 1")
        super().__init__(**kwargs)
        self.attack = self.make_attack()

    def default_eps(self) -> float:
        """Early stopping validates at the training budget by default."""
        return self.eps

    def make_attack(self) -> attacks.Attack | None:
        """The inner-maximisation attack (None for defenses that write their own loop)."""
        return None

    def objective(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-entropy on the batch with its first ``ceil(mix * n)`` samples perturbed."""
        k = math.ceil(self.mix * x.shape[0])
        if self.attack is None:
            raise NotImplementedError(f"{type(self).__name__} must define make_attack")
        x_adv = self.attack.perturb(model, x[:k], y[:k], self.eps, self.bounds)
        if k < x.shape[0]:
            x_adv = torch.cat([x_adv, x[k:]])
        logits = model(x_adv)
        return self.ce(logits, y), logits


# --------------------------------------------------------------------------- PGD-AT


@register_defense("pgd_at", kind="training")
class PGDAT(AdversarialTraining):
    """PGD adversarial training: minimise the loss on PGD examples (Madry et al. 2018).

    Defaults follow the paper's MNIST setting for the attack (eps 0.3, 40 steps of 0.01, random
    start) with Adam. The paper trains 100k iterations of batch 50 (~83 epochs) at lr 1e-4;
    the defaults here are 10 epochs of batch 100 at lr 1e-3 so a default run finishes in
    reasonable time.

    Args:
        eps: Budget (default 0.3).
        steps: PGD steps (default 40).
        step_size: Absolute PGD step (default 0.01); ``None`` uses ``rel_step_size * eps``.
        rel_step_size: Step as a fraction of eps when ``step_size`` is None.
        random_start: Start PGD at a random point of the ball (default True).
        **kwargs: ``norm``, ``mix``, ``eval_mode``, regularisation and Trainer settings.

    References:
        Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models Resistant to
        Adversarial Attacks", ICLR 2018. https://arxiv.org/abs/1706.06083

    """

    name = "pgd_at"

    def __init__(
        self,
        *,
        steps: int = 40,
        step_size: float | None = 0.01,
        rel_step_size: float | None = None,
        random_start: bool = True,
        **kwargs: Any,
    ) -> None:
        self.steps = check_positive_int("steps", steps)
        self.step_size = None if step_size is None else check_number("step_size", step_size)
        if self.step_size is not None and self.step_size <= 0:
            raise ValueError(f"step_size (alpha) must be > 0, got {step_size!r}")
        self.rel_step_size = rel_step_size
        self.random_start = bool(random_start)
        super().__init__(**kwargs)

    def make_attack(self) -> attacks.Attack:
        """PGD with ``early_stop=False`` (full-strength examples)."""
        return attacks.create(
            "pgd",
            norm=self.norm,
            steps=self.steps,
            step_size=self.step_size,
            rel_step_size=self.rel_step_size,
            random_start=self.random_start,
            early_stop=False,
            bounds=self.bounds,
            eval_mode=self.eval_mode,
        )


# --------------------------------------------------------------------------- FGSM-AT


@register_defense("fgsm_at", kind="training")
class FGSMAT(AdversarialTraining):
    """Fast adversarial training with FGSM and a random start (FGSM-RS, Wong et al. 2020).

    Defaults are the paper's MNIST recipe: eps 0.3, step ``alpha = 0.375`` (1.25 eps) from a
    uniform random start, Adam with a cyclic learning rate rising linearly from 0 to 5e-3 at
    40% of training and back to 0, 10 epochs of batch 100.

    Random start: as in the authors' MNIST code, the start ``x + U(-eps, eps)`` is *not*
    clipped to the input bounds before the gradient is taken (the FGSM attack runs with its
    box widened by eps); the training example is clipped into the bounds after the step. This
    matters: with a clipped start (``clip_start=True``) half of MNIST's zero background pixels
    start exactly at 0 and, in our runs, training fell into catastrophic overfitting (PGD-50
    accuracy 13% instead of 89% after the 10-epoch recipe).

    Catastrophic-overfitting guard (``guard=True``): after every epoch an
    :class:`OverfitGuard` runs PGD on a fixed batch of ``guard_n`` samples from ``val`` if
    given, else from a slice of ``train`` held out from training; on a collapse it restores the
    best weights and stops (``guard_action="stop"``) or lowers the learning rate
    (``"reduce_lr"``).

    Args:
        eps: Budget (default 0.3).
        alpha: Absolute FGSM step (default 0.375); must be > 0.
        clip_start: Clip the random start into the input bounds (default False, see above).
        guard: Enable the overfitting guard.
        guard_n: Size of the guard's PGD batch (default 512).
        guard_steps: The guard's PGD steps (default 10).
        guard_drop: Accuracy drop below the best that counts as a collapse (default 0.2).
        guard_action: ``"stop"`` or ``"reduce_lr"``.
        **kwargs: ``norm``, ``mix``, ``eval_mode``, regularisation and Trainer settings.

    References:
        Wong, Rice & Kolter, "Fast is better than free: Revisiting adversarial training",
        ICLR 2020. https://arxiv.org/abs/2001.03994

    """

    name = "fgsm_at"
    trainer_defaults: ClassVar[dict[str, Any]] = {
        **AdversarialTraining.trainer_defaults,
        "lr": 5e-3,
        "schedule": "cyclic",
        "peak": 0.4,
    }

    def __init__(
        self,
        *,
        alpha: float = 0.375,
        clip_start: bool = False,
        guard: bool = True,
        guard_n: int = 512,
        guard_steps: int = 10,
        guard_drop: float = 0.2,
        guard_action: str = "stop",
        **kwargs: Any,
    ) -> None:
        self.alpha = check_number("alpha", alpha, low_open=True)
        self.clip_start = bool(clip_start)
        self.guard = bool(guard)
        self.guard_n = check_positive_int("guard_n", guard_n)
        self.guard_kwargs = {
            "steps": check_positive_int("guard_steps", guard_steps),
            "drop": guard_drop,
            "action": guard_action,
        }
        super().__init__(**kwargs)
        OverfitGuard(self.eps, **self.guard_kwargs)  # validate the guard settings now

    def make_attack(self) -> attacks.Attack:
        """FGSM with a random start and absolute step ``alpha``.

        Its box is widened by eps unless ``clip_start``; :func:`perturb` clips the result into
        the real bounds.
        """
        lo, hi = self.bounds
        bounds = self.bounds if self.clip_start else (lo - self.eps, hi + self.eps)
        return attacks.create(
            "fgsm",
            norm=self.norm,
            random_start=True,
            step_size=self.alpha,
            bounds=bounds,
            eval_mode=self.eval_mode,
        )

    def setup(self, train: Dataset, val: Dataset | None) -> tuple[Dataset, list[Plugin]]:
        """Add the overfitting guard; hold out its batch from ``train`` if there is no ``val``."""
        train, plugins = super().setup(train, val)
        if not self.guard:
            return train, plugins
        data = val
        if data is None:
            n = len(train)  # type: ignore[arg-type]
            if n <= 2 * self.guard_n:
                raise ValueError(
                    f"fgsm_at's overfitting guard needs a validation set: train has only {n} "
                    f"samples, too few to hold out guard_n={self.guard_n}. Pass val=, a smaller "
                    "guard_n, or guard=False"
                )
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.trainer.seed))
            data = Subset(train, perm[: self.guard_n].sort().values.tolist())
            train = Subset(train, perm[self.guard_n :].sort().values.tolist())
        guard = OverfitGuard(
            self.eps,
            data=data,
            n=self.guard_n,
            norm=self.norm.value,
            bounds=self.bounds,
            seed=self.trainer.seed,
            **self.guard_kwargs,
        )
        return train, [*plugins, guard]


# --------------------------------------------------------------------------- TRADES


@register_defense("trades", kind="training")
class TRADES(AdversarialTraining):
    """TRADES: clean cross-entropy plus ``beta`` times the KL divergence to adversarial outputs.

    Outer loss: ``CE(f(x), y) + beta * KL(f(x) || f(x'))``; the inner maximisation finds
    ``x'`` in the eps-ball maximising ``KL(f(x) || f(x'))`` by PGD from a small random start
    (radius 0.001), with the model in eval mode as in the authors' code. Defaults: the paper's
    MNIST attack (eps 0.3, 40 steps of 0.01) and ``beta = 6`` (its headline trade-off).

    Args:
        eps: Budget (default 0.3).
        beta: Weight of the robustness term (default 6.0).
        steps: Inner PGD steps (default 40).
        step_size: Inner step (default 0.01).
        **kwargs: ``norm``, ``eval_mode``, regularisation and Trainer settings.

    References:
        Zhang, Yu, Jiao, Xing, El Ghaoui & Jordan, "Theoretically Principled Trade-off between
        Robustness and Accuracy", ICML 2019. https://arxiv.org/abs/1901.08573

    """

    name = "trades"

    def __init__(
        self, *, beta: float = 6.0, steps: int = 40, step_size: float = 0.01, **kwargs: Any
    ) -> None:
        if "mix" in kwargs:
            raise ValueError("trades has no mix ratio: beta already weighs clean vs robust loss")
        self.beta = check_number("beta", beta)
        self.steps = check_positive_int("steps", steps)
        self.step_size = check_number("step_size", step_size, low_open=True)
        super().__init__(**kwargs)

    def make_attack(self) -> attacks.Attack:
        """The inner maximisation: ``trades_kl`` (PGD on ``KL(f(x) || f(x'))``)."""
        return attacks.create(
            "trades_kl",
            norm=self.norm,
            steps=self.steps,
            step_size=self.step_size,
            bounds=self.bounds,
            eval_mode=self.eval_mode,
        )

    def adversarial(self, model: nn.Module, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Adversarial inputs of the inner maximisation.

        ``y`` is only checked (the KL loss needs no labels); without it, ``x`` is checked alone.
        """
        labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device) if y is None else y
        return self.attack.perturb(model, x, labels, self.eps)

    def objective(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``CE(f(x), y) + beta * KL(f(x) || f(x_adv))`` (batch mean)."""
        check_inputs(x, y, self.bounds)
        x_adv = self.adversarial(model, x, y)
        logits = model(x)
        logits_adv = model(x_adv)
        robust = F.kl_div(
            F.log_softmax(logits_adv, dim=1), F.softmax(logits, dim=1), reduction="batchmean"
        )
        return self.ce(logits, y) + self.beta * robust, logits_adv


__all__ = ["FGSMAT", "PGDAT", "TRADES", "AdversarialTraining", "OverfitGuard", "perturb"]
