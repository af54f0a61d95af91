"""Defenses for PyTorch classifiers: adversarial training, input denoising, regularisation.

Training defenses have ``fit(model, train, val=None, *, callbacks=(), device=None,
checkpoint_dir=None, resume=False) -> model``; inference defenses have ``wrap(model)``, which
returns a :class:`Preprocessed` model exposing the adaptive protocol of :mod:`attacks.adaptive`
(``denoising_autoencoder`` needs ``fit`` first, then ``wrap``).

Example:
    >>> import defenses
    >>> model = defenses.create("fgsm_at", eps=0.3, alpha=0.375, epochs=10).fit(model, train)
    >>> guarded = defenses.create("median_filter", size=3).wrap(model)
    >>> defenses.names()

"""

from __future__ import annotations

from typing import Any

from defenses.adversarial import FGSMAT, PGDAT, TRADES, AdversarialTraining, OverfitGuard
from defenses.denoising import (
    JPEG,
    BitDepth,
    DenoisingAutoencoder,
    GaussianBlur,
    GaussianNoise,
    InputDefense,
    MedianFilter,
    Preprocessed,
    Preprocessor,
    TVSmoothing,
)
from defenses.detection import FeatureSqueezing
from defenses.regularization import (
    Distillation,
    RegularizedDefense,
    RobustEarlyStopping,
    StandardTraining,
    add_dropout,
)
from defenses.training import DEFENSES, Plugin, Trainer, TrainingDefense, TrainState


def create(name: str, **kwargs: Any) -> Any:
    """Build a registered defense by name, e.g. ``create("pgd_at", eps=0.3)``.

    Raises:
        ValueError: Unknown name (the message lists the known ones) or bad settings.

    """
    return DEFENSES.create(name, **kwargs)


def names(pattern: str = "*") -> list[str]:
    """Names of every registered defense (optionally filtered by a shell-style pattern)."""
    return DEFENSES.names(pattern)


__all__ = [
    "DEFENSES",
    "FGSMAT",
    "JPEG",
    "PGDAT",
    "TRADES",
    "AdversarialTraining",
    "BitDepth",
    "DenoisingAutoencoder",
    "Distillation",
    "FeatureSqueezing",
    "GaussianBlur",
    "GaussianNoise",
    "InputDefense",
    "MedianFilter",
    "OverfitGuard",
    "Plugin",
    "Preprocessed",
    "Preprocessor",
    "RegularizedDefense",
    "RobustEarlyStopping",
    "StandardTraining",
    "TVSmoothing",
    "TrainState",
    "Trainer",
    "TrainingDefense",
    "add_dropout",
    "create",
    "names",
]
