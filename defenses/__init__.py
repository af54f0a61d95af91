"""Defenses for PyTorch classifiers: adversarial training, input denoising, regularisation.

Every defense registers with its kind (:func:`kinds`). Training defenses (kind ``"training"``)
have ``fit(model, train, val=None, *, callbacks=(), device=None, checkpoint_dir=None,
resume=False) -> model``; inference defenses (kind ``"inference"``) have ``wrap(model)``, which
returns a :class:`Preprocessed` model exposing the adaptive protocol of :mod:`attacks.adaptive`;
``denoising_autoencoder`` is both: ``fit`` first, then ``wrap``.

Example:
    >>> import defenses
    >>> model = defenses.create("fgsm_at", eps=0.3, alpha=0.375, epochs=10).fit(model, train)
    >>> guarded = defenses.create("median_filter", size=3).wrap(model)
    >>> defenses.names(kind="training")
    ['denoising_autoencoder', 'distillation', 'fgsm_at', 'pgd_at', 'standard', 'trades']

"""

from __future__ import annotations

from typing import Any

from defenses.adversarial import FGSMAT, PGDAT, TRADES, AdversarialTraining
from defenses.augmix import AugMix
from defenses.certified import CROWNIBPTraining, IBPTraining
from defenses.denoising import DenoisingAutoencoder
from defenses.detection import FeatureSqueezing
from defenses.inference import InputDefense, Preprocessed, register_input_defense
from defenses.monitors import OverfitGuard, RobustEarlyStopping
from defenses.noise import GaussianAugmentation
from defenses.plugins import Plugin, TrainState
from defenses.preprocessors import (
    JPEG,
    BitDepth,
    GaussianBlur,
    GaussianNoise,
    MedianFilter,
    Preprocessor,
    TVSmoothing,
)
from defenses.registry import DEFENSES, KINDS, kinds, register_defense
from defenses.regularization import Distillation, RegularizedDefense, StandardTraining, add_dropout
from defenses.trainer import Trainer
from defenses.training import TrainingDefense


def create(name: str, **kwargs: Any) -> Any:
    """Build a registered defense by name, e.g. ``create("pgd_at", eps=0.3)``.

    Raises:
        ValueError: Unknown name (the message lists the known ones) or bad settings.

    """
    return DEFENSES.create(name, **kwargs)


def names(pattern: str = "*", *, kind: str | None = None) -> list[str]:
    """Sorted names of the registered defenses, optionally filtered.

    Args:
        pattern: A shell-style pattern, e.g. ``"*_at"``.
        kind: Keep only the defenses of this kind (``"training"`` or ``"inference"``); a
            defense of both kinds matches either.

    Raises:
        ValueError: ``kind`` is not a defense kind.

    """
    if kind is None:
        return DEFENSES.names(pattern)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return DEFENSES.names(pattern, kind=kind)


__all__ = [
    "DEFENSES",
    "FGSMAT",
    "JPEG",
    "KINDS",
    "PGDAT",
    "TRADES",
    "AdversarialTraining",
    "AugMix",
    "BitDepth",
    "CROWNIBPTraining",
    "DenoisingAutoencoder",
    "Distillation",
    "FeatureSqueezing",
    "GaussianAugmentation",
    "GaussianBlur",
    "GaussianNoise",
    "IBPTraining",
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
    "kinds",
    "names",
    "register_defense",
    "register_input_defense",
]
