"""Test models trained once by a named recipe and cached on disk: the tests' one training helper.

A :class:`Recipe` names everything a test model's weights depend on: the architecture, the
training data, the training procedure (a registered training defense run by the project's
:class:`defenses.Trainer`, or the plain full-batch Adam loop of the session's ``digits_model``)
and the seed. :func:`trained_model` trains a recipe for real the first time and stores its state
dict under ``<cache_dir>/<recipe>-<key>.pt``; later calls (and later test sessions) load it. The
key hashes the recipe together with the code the weights depend on (the sources of ``attacks/``,
``defenses/``, ``robustbench_local/models/``, ``robustbench_local/data/`` and this file), the
PyTorch version, the CPU kernel set and the thread count, so a cached model is always the model
that training would give now: change the training code and the next session retrains.

The test session keeps its cache in pytest's cache folder (``.pytest_cache/d/trained_models``;
``pytest --cache-clear`` empties it); a fresh clone, as on CI, trains each recipe once.

Example:
    >>> model = trained_model("digits_mlp_pgd_at", cache_dir=Path(".pytest_cache/d/trained"))

References:
    Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018.
    Wong, Rice & Kolter, "Fast is better than free: Revisiting adversarial training", ICLR 2020.
    Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy", ICML 2019.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.utils.data import TensorDataset

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
# The code the cached weights depend on: any change there retrains every recipe.
CODE_DIRS = ("attacks", "defenses", "robustbench_local/models", "robustbench_local/data")
FULL_BATCH = "full_batch_adam"  # the plain loop of the session's digits_model (not a defense)
# recipe data -> the project's dataset whose train split it is
TRAIN_SPLITS = {"digits_train": "digits", "mnist": "mnist"}
CACHE_FOLDER = "trained_models"  # under pytest's cache folder


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How one test model is trained.

    Attributes:
        arch: ``"plain_mlp"`` or ``"tiny_cnn"`` (:data:`ARCHS`), else a zoo architecture name
            for :func:`robustbench_local.models.create_model`.
        data: ``"digits"`` (scikit-learn's order), ``"digits_train"`` (the project's digits
            train split) or ``"mnist"`` (the MNIST train split of the mirror).
        n_train: The first ``n_train`` training samples (None: all of them).
        defense: A registered training defense (``defenses.create(defense, **settings)``), or
            :data:`FULL_BATCH` for the full-batch Adam loop (settings ``epochs`` and ``lr``).
        settings: The defense's (and its Trainer's) settings; ``progress`` is always off.
        seed: Seeds the initialisation (the Trainer seeds its own shuffles with its ``seed``).
    """

    arch: str
    data: str
    n_train: int | None
    defense: str
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 0


def plain_mlp(hidden: int = 64) -> nn.Sequential:
    """The tests' digits MLP (1x8x8 inputs, no normalisation layer)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def tiny_cnn() -> nn.Sequential:
    """A two-convolution MNIST CNN without normalisation layer (a second or two per epoch)."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 5, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 5, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    )  # fmt: skip


ARCHS: dict[str, Callable[[], nn.Module]] = {"plain_mlp": plain_mlp, "tiny_cnn": tiny_cnn}

# test_adversarial.py's settings: 10 epochs of batch 64 at lr 1e-2; PGD-10 at eps 0.2
DIGITS_TRAINER = {"epochs": 10, "batch_size": 64, "lr": 1e-2}
DIGITS_PGD = {**DIGITS_TRAINER, "eps": 0.2, "steps": 10, "step_size": 0.05}

RECIPES: dict[str, Recipe] = {
    # the session's digits_model: ~100% train accuracy, undefended (conftest.digits_model)
    "digits_mlp": Recipe("plain_mlp", "digits", 1200, FULL_BATCH, {"epochs": 150, "lr": 1e-2}),
    # the zoo's digits_mlp (it has `arch`): gate checkpoints and the benchmark's model
    "digits_zoo_mlp": Recipe(
        "digits_mlp", "digits_train", None, "standard",
        {"epochs": 30, "batch_size": 100, "optimizer": "adam", "lr": 1e-2},
    ),
    # tests/defenses/test_adversarial.py: undefended, then one model per training defense
    "digits_mlp_standard": Recipe("plain_mlp", "digits", 1200, "standard", DIGITS_TRAINER),
    "digits_mlp_pgd_at": Recipe("plain_mlp", "digits", 1200, "pgd_at", DIGITS_PGD),
    "digits_mlp_pgd_at_mix": Recipe(
        "plain_mlp", "digits", 1200, "pgd_at", {**DIGITS_PGD, "mix": 0.5}
    ),
    "digits_mlp_fgsm_at": Recipe(
        "plain_mlp", "digits", 1200, "fgsm_at",
        {**DIGITS_TRAINER, "eps": 0.2, "alpha": 0.25, "guard_n": 200},
    ),
    "digits_mlp_trades": Recipe("plain_mlp", "digits", 1200, "trades", {**DIGITS_PGD, "beta": 6.0}),
    # tests/attacks: the MNIST model the oracle comparisons attack
    "mnist_tiny_cnn": Recipe(
        "tiny_cnn", "mnist", 5000, "standard",
        {"epochs": 2, "batch_size": 100, "optimizer": "adam", "lr": 3e-3},
    ),
    # tests/defenses/test_mnist.py: the standard-trained zoo CNN on 3000 MNIST images
    "mnist_small_cnn_standard": Recipe("mnist_small_cnn", "mnist", 3000, "standard", {"epochs": 3}),
    # tests/gates/robustness_gates.yaml: FGSM-RS (Wong et al. 2020) at eps 0.1
    "mnist_small_cnn_fgsm_at": Recipe(
        "mnist_small_cnn", "mnist", 12000, "fgsm_at",
        {"epochs": 2, "batch_size": 100, "optimizer": "adam", "lr": 1e-3, "schedule": "constant",
         "eps": 0.1, "alpha": 0.125, "guard_n": 500},
    ),
}  # fmt: skip


# ----------------------------------------------------------------------------------- data


def digits_tensors() -> tuple[Tensor, Tensor]:
    """scikit-learn's 8x8 digits as ``x [1797, 1, 8, 8]`` in [0, 1] and ``y [1797]``."""
    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    return x, torch.tensor(d.target, dtype=torch.long)


def training_data(recipe: Recipe) -> tuple[Tensor, Tensor]:
    """The recipe's training tensors ``(x, y)`` (MNIST from $ROBUSTBENCH_LOCAL_DATA_DIR)."""
    if recipe.data == "digits":
        x, y = digits_tensors()
    elif recipe.data in TRAIN_SPLITS:
        from robustbench_local.data import load_dataset

        train, _ = load_dataset(TRAIN_SPLITS[recipe.data])
        x, y = train.tensors
    else:
        known = ", ".join(["digits", *TRAIN_SPLITS])
        raise ValueError(f"unknown recipe data {recipe.data!r}; use one of: {known}")
    n = len(x) if recipe.n_train is None else recipe.n_train
    return x[:n].clone(), y[:n].clone()


# ---------------------------------------------------------------------------------- training


def build(recipe: Recipe) -> nn.Module:
    """A fresh model of the recipe's architecture, initialised from its seed."""
    torch.manual_seed(recipe.seed)
    if recipe.arch in ARCHS:
        return ARCHS[recipe.arch]()
    from robustbench_local.models import create_model

    return create_model(recipe.arch)


def train(recipe: Recipe) -> nn.Module:
    """Train the recipe for real (no cache); the model in eval mode."""
    model = build(recipe)
    x, y = training_data(recipe)
    if recipe.defense == FULL_BATCH:
        return _full_batch_adam(model, x, y, **recipe.settings)
    import defenses

    defense = defenses.create(recipe.defense, **recipe.settings, progress=False)
    return defense.fit(model, TensorDataset(x, y)).eval()


def _full_batch_adam(
    model: nn.Module, x: Tensor, y: Tensor, *, epochs: int, lr: float
) -> nn.Module:
    """Full-batch Adam on cross-entropy (the session digits_model's loop, weights unchanged)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


# ------------------------------------------------------------------------------------- cache


@functools.cache
def code_digest() -> str:
    """SHA-256 of the sources the weights depend on (:data:`CODE_DIRS` and this file)."""
    h = hashlib.sha256()
    files = [p for d in CODE_DIRS for p in sorted((REPO / d).rglob("*.py"))]
    for path in [*files, Path(__file__).resolve()]:
        h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def recipe_key(recipe: Recipe) -> str:
    """The cache key: the recipe, the code version, PyTorch, the CPU kernel set and threads."""
    doc = {
        "recipe": dataclasses.asdict(recipe),
        "code": code_digest(),
        "torch": torch.__version__,
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def pytest_cache_dir(config: Any) -> Path | None:
    """The session's model cache: ``trained_models`` in pytest's cache (None if it is off).

    Args:
        config: The ``pytest.Config`` of the session (``-p no:cacheprovider`` turns caching off).
    """
    cache = getattr(config, "cache", None)
    return None if cache is None else Path(cache.mkdir(CACHE_FOLDER))


def trained_model(name: str, cache_dir: str | os.PathLike[str] | None = None) -> nn.Module:
    """The model of recipe ``name``, trained once and then loaded from ``cache_dir``.

    Args:
        name: A key of :data:`RECIPES`.
        cache_dir: Where trained state dicts are kept (None: train every time, cache nothing).

    Returns:
        A new model instance in eval mode (callers may modify it). The global torch RNG is left
        as it was, whether the model was trained or loaded.

    Raises:
        ValueError: ``name`` is not a known recipe.
    """
    if name not in RECIPES:
        raise ValueError(f"unknown test model recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
    recipe = RECIPES[name]
    with torch.random.fork_rng(devices=[]):  # a cache hit and a miss leave the same global RNG
        if cache_dir is None:
            return train(recipe)
        path = Path(cache_dir) / f"{name}-{recipe_key(recipe)}.pt"
        model = _load(recipe, path)
        if model is None:
            model = train(recipe)
            _store(model, path)
    return model


def _load(recipe: Recipe, path: Path) -> nn.Module | None:
    """The cached model at ``path``; None when there is none (or it cannot be read)."""
    if not path.is_file():
        return None
    from defenses.storage import load_trusted

    model = build(recipe)
    try:
        model.load_state_dict(load_trusted(path))
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as err:  # damaged: retrain
        logger.warning("retraining %s: cannot read the cached weights (%s)", path.name, err)
        return None
    return model.eval()


def _store(model: nn.Module, path: Path) -> None:
    """Save the state dict atomically and remove older versions of the same recipe."""
    from defenses.storage import atomic_torch_save

    atomic_torch_save(model.state_dict(), path)
    name = path.name.rsplit("-", 1)[0]
    for old in path.parent.glob(f"{name}-*.pt"):
        if old != path and old.name.rsplit("-", 1)[0] == name:
            old.unlink(missing_ok=True)


__all__ = [
    "ARCHS",
    "FULL_BATCH",
    "RECIPES",
    "Recipe",
    "code_digest",
    "digits_tensors",
    "plain_mlp",
    "pytest_cache_dir",
    "recipe_key",
    "tiny_cnn",
    "train",
    "trained_model",
    "training_data",
]
