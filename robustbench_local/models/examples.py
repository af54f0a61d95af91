"""Trained example models: a short named recipe, trained on first use and cached on disk.

The README's examples, a first session in a notebook and the tutorials need a *trained* model,
or every number they print is chance (an untrained MNIST CNN is ~10% accurate and 0% robust).
:func:`example_model` trains one of a few fixed recipes with the project's own training
defenses the first time it is asked for (about a minute on one CPU core for MNIST) and keeps it
in the cache folder (``$ROBUSTBENCH_LOCAL_CACHE``, default ``~/.cache/robustbench_local``) as a
regular checkpoint (:func:`~robustbench_local.models.checkpoints.save_checkpoint`), so later
calls load it in a second. The file name holds a digest of the recipe and of the PyTorch
version, so a changed recipe never loads stale weights.

These models are for examples: short training runs, not benchmark entries.

Example:
    >>> model = example_model("mnist_small_cnn")      # ~98% clean accuracy, not robust
    >>> robust = example_model("mnist_small_cnn_fgsm_at")   # FGSM adversarial training (short)

References:
    Wong, Rice & Kolter, "Fast is better than free: Revisiting adversarial training", ICLR 2020.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustbench_local.data.sources import DEFAULT_CACHE, ENV_CACHE
from robustbench_local.models.checkpoints import load_checkpoint, save_checkpoint
from robustbench_local.models.zoo import create_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExampleRecipe:
    """How an example model is trained: architecture, data set, training defense, settings."""

    arch: str
    dataset: str
    defense: str
    settings: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def digest(self) -> str:
        """12 hex digits of the recipe and the PyTorch version (part of the cache file name)."""
        text = json.dumps({**asdict(self), "torch": torch.__version__}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


EXAMPLE_RECIPES: dict[str, ExampleRecipe] = {
    "digits_mlp": ExampleRecipe("digits_mlp", "digits", "standard", {"epochs": 40}),
    "mnist_small_cnn": ExampleRecipe("mnist_small_cnn", "mnist", "standard", {"epochs": 1}),
    "mnist_small_cnn_fgsm_at": ExampleRecipe(
        "mnist_small_cnn", "mnist", "fgsm_at", {"eps": 0.3, "alpha": 0.375, "epochs": 2}
    ),
}
"""The example models by name (short runs; see the module docstring)."""


def example_model(
    name: str = "mnist_small_cnn",
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> nn.Module:
    """A trained example model, trained on first use and cached (see the module docstring).

    Args:
        name: One of :data:`EXAMPLE_RECIPES`.
        cache_dir: Where the checkpoint is kept (default ``$ROBUSTBENCH_LOCAL_CACHE`` or
            ``~/.cache/robustbench_local``, under ``example_models/``).
        data_dir: A local mirror of the training data (as for ``load_dataset``).

    Returns:
        The model, in eval mode, on the CPU.

    Raises:
        ValueError: An unknown name (the known ones are listed).
    """
    if name not in EXAMPLE_RECIPES:
        raise ValueError(
            f"no example model {name!r}; known: {', '.join(sorted(EXAMPLE_RECIPES))} (for your "
            "own models use create_model, then a defense's fit, or load_checkpoint)"
        )
    recipe = EXAMPLE_RECIPES[name]
    root = Path(cache_dir or os.environ.get(ENV_CACHE) or DEFAULT_CACHE).expanduser()
    path = root / "example_models" / f"{name}-{recipe.digest()}.pt"
    if path.exists():
        return load_checkpoint(path).eval()
    logger.info("training the example model %s once (%s); cached in %s", name, recipe, path)
    model = _train(recipe, data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, path, meta={"example_recipe": asdict(recipe)})
    return model


def _train(recipe: ExampleRecipe, data_dir: str | os.PathLike[str] | None) -> nn.Module:
    """Train ``recipe`` with the project's training defense (seeded)."""
    import defenses
    from robustbench_local.data import load_dataset

    train, _ = load_dataset(recipe.dataset, data_dir=data_dir)
    torch.manual_seed(recipe.seed)
    model = create_model(recipe.arch)
    trained = defenses.create(recipe.defense, **recipe.settings).fit(model, train, device="cpu")
    return trained.eval()


__all__ = ["EXAMPLE_RECIPES", "ExampleRecipe", "example_model"]
