"""Trap models: MNIST classifiers on which weak evaluations overstate robustness, and honest ones.

Each trap reproduces one row of issue 10's table, built from scratch on real MNIST (the small
CNN of Wong et al. 2020, trained on CPU in a few minutes) and cached under ``cache`` with
``robustbench_local.save_checkpoint``:

========================  ==========================================================================
``standard``              standard training (2 epochs, Adam): AutoAttack ~0% at linf 0.3
``fgsm_catastrophic``     FGSM training without random start at eps 0.3 (step eps, 3 epochs):
                          catastrophic overfitting, FGSM accuracy far above PGD/AutoAttack (~0)
``pgd_at``                short PGD-AT (5 steps, 2 epochs on 10k images) from the standard network
``fast_at``               honest: the repository's ``mnist_fast_at`` recipe (FGSM-RS, Wong et al.;
                          10 epochs on all 60k images, about 2 minutes on a quiet CPU)
``logits_x1e4``           the standard model with its logits multiplied by 1e4 (softmax saturates)
``hidden_rounding``       ``x = round(4 x) / 4`` inside the user's own ``forward`` (not declared),
                          in front of the ``fast_at`` network: gradients are zero, Square finds some
``gaussian_noise``        Gaussian input noise (std 0.2) at inference, not declared (random)
``bit_depth1``            declared non-differentiable: ``defenses.create("bit_depth", bits=1)`` on
                          the standard model (attacked with its BPDA surrogate)
========================  ==========================================================================

Example:
    >>> train, test = rbl.load_dataset("mnist")
    >>> model = build("fgsm_catastrophic", train, cache="~/.cache/robustbench_local/trap_models")

References:
    Wong, Rice & Kolter, "Fast is better than free: Revisiting adversarial training", ICLR 2020
    (catastrophic overfitting of FGSM training).
    Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018.
    Carlini et al., "On Evaluating Adversarial Robustness", arXiv:1902.06705, 2019.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

import defenses
import robustbench_local as rbl

logger = logging.getLogger(__name__)

DEFAULT_CACHE = "~/.cache/robustbench_local/trap_models"
RECIPE_VERSION = 1
"""Bump when a recipe changes: cached weights of another version are retrained."""


class LogitScale(nn.Module):
    """The model's logits times ``scale``: predictions unchanged, the softmax saturates."""

    def __init__(self, model: nn.Module, scale: float = 1e4) -> None:
        super().__init__()
        self.model, self.scale = model, float(scale)

    def forward(self, x: Tensor) -> Tensor:
        """Scaled logits."""
        return self.model(x) * self.scale


class InputRounding(nn.Module):
    """Rounds its input to ``levels + 1`` grey levels inside ``forward``; declares nothing."""

    def __init__(self, model: nn.Module, levels: int = 4) -> None:
        super().__init__()
        self.model, self.levels = model, int(levels)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of the network on the rounded input."""
        x = torch.round(x * self.levels) / self.levels
        return self.model(x)


class InputNoise(nn.Module):
    """Adds Gaussian noise of std ``sigma`` to its input at inference; declares nothing."""

    def __init__(self, model: nn.Module, sigma: float = 0.2) -> None:
        super().__init__()
        self.model, self.sigma = model, float(sigma)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of the network on a noisy copy of the input."""
        return self.model(x + self.sigma * torch.randn_like(x))


@dataclass(frozen=True)
class Recipe:
    """How one base network is trained: a registered training defense and its settings.

    Attributes:
        defense: A registered training defense.
        kwargs: Its settings.
        train_subset: Train on the first this many training images (default all).
        init: Start from this (cached) base network instead of a fresh ``mnist_small_cnn``.
        seed: Training seed.
    """

    defense: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    train_subset: int | None = None
    init: str | None = None
    seed: int = 0


RECIPES: dict[str, Recipe] = {
    "standard": Recipe("standard", {"epochs": 2}),
    # FGSM without random start, step eps (Goodfellow et al.): PGD-AT with one step.
    "fgsm_catastrophic": Recipe(
        "pgd_at",
        {"steps": 1, "step_size": 0.3, "random_start": False, "epochs": 3, "lr": 1e-3},
    ),
    # Short PGD-AT (5 steps of 0.1 from a random start) fine-tuning the standard network.
    "pgd_at": Recipe(
        "pgd_at",
        {"steps": 5, "step_size": 0.1, "epochs": 2, "lr": 1e-3, "batch_size": 100},
        train_subset=10000,
        init="standard",
    ),
    # The mnist_fast_at recipe, unshortened (fgsm_at's defaults: FGSM-RS at eps 0.3, alpha 0.375,
    # 10 epochs of batch 100, cyclic Adam peaking at 5e-3; ~2 minutes on a quiet CPU). Shortened
    # runs are not honest at eps 0.3: 4 epochs on 20k images leave APGD-CE 20% vs the curve's
    # PGD 43% (apgd_vs_pgd then fires, rightly), robust only up to eps 0.2.
    "fast_at": Recipe("fgsm_at", {"epochs": 10}),
}


@dataclass(frozen=True)
class TrapModel:
    """One model of the table: a base network, how it is wrapped, and what it is."""

    name: str
    base: str
    wrap: Callable[[nn.Module], nn.Module]
    honest: bool
    description: str
    random: bool = False


def _same(model: nn.Module) -> nn.Module:
    return model


def _bit_depth(model: nn.Module) -> nn.Module:
    return defenses.create("bit_depth", bits=1).wrap(model)


TRAPS: dict[str, TrapModel] = {
    t.name: t
    for t in [
        TrapModel("standard", "standard", _same, True, "standard training"),
        TrapModel(
            "fgsm_catastrophic", "fgsm_catastrophic", _same, False, "FGSM-AT, catastrophic overfit"
        ),
        TrapModel("pgd_at", "pgd_at", _same, True, "short PGD-AT"),
        TrapModel("fast_at", "fast_at", _same, True, "mnist_fast_at recipe (FGSM-RS)"),
        TrapModel("logits_x1e4", "standard", LogitScale, False, "standard, logits x 1e4"),
        TrapModel(
            "hidden_rounding", "fast_at", InputRounding, False, "round(4x)/4 in forward, undeclared"
        ),
        TrapModel(
            "gaussian_noise", "standard", InputNoise, False, "N(0, 0.2^2) input noise", random=True
        ),
        TrapModel("bit_depth1", "standard", _bit_depth, True, "bit_depth(1), declared (BPDA)"),
    ]
}


def _cache_path(cache: str | os.PathLike[str], base: str) -> Path:
    return Path(cache).expanduser() / f"{base}-v{RECIPE_VERSION}.pt"


def train_base(
    base: str,
    train: Dataset,
    cache: str | os.PathLike[str] = DEFAULT_CACHE,
    *,
    progress: bool = False,
) -> nn.Module:
    """Train the base network ``base`` by its recipe (``mnist_small_cnn``, or its ``init``).

    Raises:
        ValueError: Unknown base name.
    """
    if base not in RECIPES:
        raise ValueError(f"unknown base network {base!r}; known: {', '.join(RECIPES)}")
    recipe = RECIPES[base]
    data: Dataset = train
    if recipe.train_subset is not None:
        data = Subset(train, list(range(recipe.train_subset)))
    torch.manual_seed(recipe.seed)
    model = rbl.create_model("mnist_small_cnn")
    if recipe.init is not None:
        model.load_state_dict(load_base(recipe.init, train, cache, progress=progress).state_dict())
    defense = defenses.create(recipe.defense, seed=recipe.seed, progress=progress, **recipe.kwargs)
    start = time.perf_counter()
    model = defense.fit(model, data)
    logger.info("trained %s in %.0f s", base, time.perf_counter() - start)
    return model.eval()


def load_base(
    base: str,
    train: Dataset,
    cache: str | os.PathLike[str] = DEFAULT_CACHE,
    *,
    progress: bool = False,
) -> nn.Module:
    """The base network ``base``: from the cache, else trained and cached."""
    path = _cache_path(cache, base)
    if path.exists():
        return rbl.load_checkpoint(path).eval()
    model = train_base(base, train, cache, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"recipe": base, "version": RECIPE_VERSION, "defense": RECIPES[base].defense}
    rbl.save_checkpoint(model, path, meta=meta)
    return model


def build(
    name: str,
    train: Dataset,
    cache: str | os.PathLike[str] = DEFAULT_CACHE,
    *,
    progress: bool = False,
) -> nn.Module:
    """The trap (or honest) model ``name``, in eval mode.

    Raises:
        ValueError: Unknown name.
    """
    if name not in TRAPS:
        raise ValueError(f"unknown trap model {name!r}; known: {', '.join(TRAPS)}")
    trap = TRAPS[name]
    return trap.wrap(load_base(trap.base, train, cache, progress=progress)).eval()


__all__ = [
    "DEFAULT_CACHE",
    "RECIPES",
    "TRAPS",
    "InputNoise",
    "InputRounding",
    "LogitScale",
    "Recipe",
    "TrapModel",
    "build",
    "load_base",
    "train_base",
]
