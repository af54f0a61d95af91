"""The steps of one experiment: validate, load data, build the model, defend, evaluate.

Each step is a plain function of the composed config so it can be tested without Hydra's main.
Everything that can be checked before training (eps grids, sample counts, the model contract)
is checked first, so a bad config fails in seconds, not after an hour of training.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

import attacks as atk_lib
import defenses
import robustbench_local as rbl
from experiments.instantiate import build
from experiments.resolvers import parse_number
from robustbench_local.reference import ReferenceArg, reference_from_config

logger = logging.getLogger(__name__)

Callback = Callable[[int, dict[str, float]], Any]

# The scalar metrics every run has; ``cost/<norm>/<label>/<key>`` names are known after the run.
RUN_METRICS = ("headline_robust_acc", "clean_acc")


@dataclass
class Data:
    """Train, optional validation and test splits."""

    train: TensorDataset
    val: TensorDataset | None
    test: TensorDataset


def resolve_device(spec: str | None) -> torch.device:
    """``"auto"`` (CUDA if available, else CPU) or an explicit device string.

    Raises:
        ValueError: CUDA requested but not available.
    """
    if spec in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={spec!r} but CUDA is not available here; use device=cpu")
    return dev


def eps_grids(cfg: DictConfig) -> dict[str, list[float]]:
    """The per-norm eps grids of ``eval.eps``, validated.

    Raises:
        ValueError: A grid that is empty, not a list, negative or not strictly increasing.
    """
    grids: dict[str, list[float]] = {}
    for norm, values in cfg.eval.eps.items():
        if isinstance(values, str | int | float):
            values = [values]
        grid = [parse_number(v) for v in values]
        if not grid:
            raise ValueError(f"eval.eps.{norm} is empty; give at least one eps")
        bad = [e for e in grid if not math.isfinite(e) or e < 0]
        if bad:
            raise ValueError(f"eval.eps.{norm} has negative or non-finite values {bad}")
        if any(b <= a for a, b in itertools.pairwise(grid)):
            raise ValueError(
                f"eval.eps.{norm}={grid} must be strictly increasing, e.g. [0.1, 0.2, 0.3]"
            )
        grids[str(norm)] = grid
    return grids


def build_attacks(cfg: DictConfig) -> dict[str, dict[str, atk_lib.Attack]]:
    """The configured attacks, grouped by norm: ``norm -> label -> Attack``.

    Raises:
        ValueError: No attack selected, or an attack whose norm has no eps grid.
    """
    if not cfg.get("attack"):
        raise ValueError("no attack selected: add e.g. attack=pgd or 'attack=[fgsm,pgd]'")
    groups: dict[str, dict[str, atk_lib.Attack]] = {}
    for label, node in cfg.attack.items():
        factory = build(node, f"attack.{label}")
        attack = factory(seed=cfg.seed)
        groups.setdefault(attack.norm.value, {})[str(label)] = attack
    suite = cfg.eval.get("suite")
    if suite:
        logger.warning(
            "eval.suite is deprecated: the reference suite runs on every evaluation "
            "(eval.reference; eval=strong runs it at every eps)"
        )
        norm = str(cfg.eval.headline.norm)
        members = [atk_lib.create(name, norm=norm, seed=cfg.seed) for name in suite]
        groups.setdefault(norm, {})["suite"] = atk_lib.AttackSuite(members)
    grids = eps_grids(cfg)
    missing = sorted(set(groups) - set(grids))
    if missing:
        raise ValueError(
            f"attacks in norm(s) {missing} but eval.eps has grids only for {sorted(grids)}; "
            f"add e.g. eval.eps.{missing[0]}=[0.5,1.0]"
        )
    return groups


def validate(cfg: DictConfig) -> None:
    """Check what can be checked without data: grids, headline eps, attacks, sizes."""
    grids = eps_grids(cfg)
    norm, eps = str(cfg.eval.headline.norm), parse_number(cfg.eval.headline.eps)
    if norm in grids and not any(math.isclose(eps, e, rel_tol=1e-6) for e in grids[norm]):
        raise ValueError(
            f"eval.headline.eps={eps} is not on the {norm} grid {grids[norm]}; add it to "
            f"eval.eps.{norm} or change eval.headline.eps"
        )
    n = cfg.eval.get("n_examples")
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"eval.n_examples must be a positive integer or null, got {n!r}")
    build_attacks(cfg)
    for norm in grids:
        reference_of(cfg, norm)
    defense_kinds(cfg.defense, "defense")
    base = cfg.train.get("base")
    if base is not None and "training" not in defense_kinds(base, "train.base"):
        raise ValueError(
            f"train.base.name={base.name!r} does not train a model; base training needs a "
            f"training defense: one of {', '.join(defenses.names(kind='training'))}"
        )
    check_optimized_metric(cfg.get("optimized_metric"))


def defense_kinds(node: DictConfig | None, key: str) -> tuple[str, ...]:
    """The kinds the defense of config node ``key`` registered with (``()`` when it has none).

    Raises:
        ValueError: The node builds something that is not a registered defense.
    """
    if node is None or node.get("_target_") is None:
        return ()
    name = node.get("name")
    if not isinstance(name, str) or name not in defenses.DEFENSES:
        raise ValueError(
            f"{key}.name={name!r} is not a registered defense, so the pipeline cannot tell how "
            "to use it; register it with @defenses.register_defense(name, kind=...) or pick "
            f"one of: {', '.join(defenses.names())}"
        )
    return defenses.kinds(name)


def check_optimized_metric(name: Any) -> None:
    """Check ``optimized_metric`` names a scalar metric of the run (or is null).

    Raises:
        ValueError: Any other value; the message lists the valid names.
    """
    if name is None or name in RUN_METRICS or (isinstance(name, str) and name.startswith("cost/")):
        return
    raise ValueError(
        f"optimized_metric={name!r} is not a scalar metric of the run; use one of "
        f"{', '.join(RUN_METRICS)}, cost/<norm>/<attack>/<wall_time|n_forward|n_backward> "
        "or null"
    )


def load_data(cfg: DictConfig) -> Data:
    """Load the dataset, take the training subset and hold out the validation split.

    Raises:
        ValueError: ``train_subset``, ``val_size`` or ``eval.n_examples`` larger than the data.
    """
    ds = cfg.dataset
    train, test = rbl.load_dataset(ds.name, data_dir=ds.get("data_dir"))
    if ds.get("train_subset"):
        train = rbl.subset(train, _check_size("dataset.train_subset", ds.train_subset, train))
    val = None
    if ds.get("val_size"):
        n_val = _check_size("dataset.val_size", ds.val_size, train, strict=True)
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))
        x, y = train.tensors
        val = TensorDataset(x[order[:n_val]], y[order[:n_val]])
        train = TensorDataset(x[order[n_val:]], y[order[n_val:]])
    if cfg.eval.get("n_examples"):
        _check_size("eval.n_examples", cfg.eval.n_examples, test)
    return Data(train, val, test)


def _check_size(key: str, n: int, data: Dataset, strict: bool = False) -> int:
    limit = len(data) - 1 if strict else len(data)
    if not 0 < int(n) <= limit:
        raise ValueError(f"{key}={n} but the data has {len(data)} samples; use 1..{limit}")
    return int(n)


def build_model(cfg: DictConfig, data: Data, device: torch.device) -> nn.Module:
    """Build (or load) the model and check it obeys the model contract before any training.

    Raises:
        ValueError: The model fails the preflight (e.g. returns probabilities or the wrong
            number of outputs).
    """
    torch.manual_seed(cfg.seed)
    model = build(cfg.model, "model")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model._target_ must build an nn.Module, got {type(model).__name__}")
    model = model.to(device)
    x, y = data.test.tensors
    preflight(model, x[:64].to(device), y[:64].to(device))
    return model


def preflight(model: nn.Module, x: Tensor, y: Tensor) -> None:
    """Run robustbench_local's preflight on an eval-mode copy of the model's state.

    Raises:
        ValueError: Wrong output shape, or any error-level preflight flag.
    """
    from robustbench_local.checks import preflight as rbl_preflight
    from robustbench_local.checks import raise_on_errors

    num_classes = int(y.max()) + 1
    with atk_lib.model_guard(model, eval_mode=True), torch.no_grad():
        out = model(x)
        if out.ndim != 2 or out.shape[1] < num_classes:
            raise ValueError(
                f"the model returns shape {tuple(out.shape)} for input {tuple(x.shape)}; it "
                f"must return logits [N, num_classes>={num_classes}]"
            )
        raise_on_errors(rbl_preflight(model, x, y, (0.0, 1.0)))


def apply_defense(
    cfg: DictConfig,
    model: nn.Module,
    data: Data,
    device: torch.device,
    out_dir: Path,
    callbacks: Sequence[Callback] = (),
) -> nn.Module:
    """Train the model and put the inference defense in front of it, as the defense's kind says.

    A defense of kind ``training`` alone trains the model instead of the base training
    (``train.base``). Otherwise the base training runs (unless ``train=none``); a defense that is
    also of kind ``training`` (the denoising autoencoder) then fits its own part on the data, and
    a defense of kind ``inference`` wraps the model.
    """
    kinds = defense_kinds(cfg.defense, "defense")
    defense = build(cfg.defense, "defense")
    fit_kw = {"device": device, "callbacks": list(callbacks)}
    if kinds == ("training",):
        logger.info("training with defense %s", cfg.defense.name)
        return defense.fit(
            model, data.train, data.val, checkpoint_dir=out_dir / "defense", **fit_kw
        )
    base = build(cfg.train.get("base"), "train.base")
    if base is not None:
        logger.info("base training (%s)", cfg.train.base.name)
        model = base.fit(model, data.train, data.val, checkpoint_dir=out_dir / "base", **fit_kw)
    if "training" in kinds:
        logger.info("fitting the %s defense on the base-trained model", cfg.defense.name)
        defense.fit(model, data.train, data.val, checkpoint_dir=out_dir / "defense", **fit_kw)
    if "inference" in kinds:
        return defense.wrap(model).eval()
    return model.eval()


def reference_of(cfg: DictConfig, norm: str) -> ReferenceArg:
    """The ``reference`` argument of a norm's curve from ``eval.reference``.

    Raises:
        ValueError: A value other than auto, all, false or a mapping of reduced settings.
    """
    value = cfg.eval.get("reference", "auto")
    if isinstance(value, DictConfig):
        value = OmegaConf.to_container(value, resolve=True)
    try:
        return reference_from_config(value, norm, seed=cfg.seed)
    except ValueError as err:
        raise ValueError(f"eval.reference: {err}") from err


def headline_eps(cfg: DictConfig, norm: str) -> float | None:
    """``eval.headline.eps`` for the headline norm's curve, else None (its largest eps)."""
    if str(cfg.eval.headline.norm) != norm:
        return None
    return parse_number(cfg.eval.headline.eps)


def reference_tags(curves: dict[str, rbl.Curve]) -> dict[str, str]:
    """``reference.<norm>`` tags: ``auto``, ``all``, ``off``, or ``reduced`` (a chosen one)."""
    tags = {}
    for norm, curve in curves.items():
        ref = curve.reference
        mode = "off" if ref is None else ("reduced" if ref.reduced else ref.mode)
        tags[f"reference.{norm}"] = mode
    return tags


def evaluate(
    cfg: DictConfig, model: nn.Module, data: Data, device: torch.device
) -> dict[str, rbl.Curve]:
    """One robustness curve per norm of the configured attacks, each with its reference.

    The reference runs at ``eval.headline.eps`` on the headline norm (else at the largest eps)
    as ``eval.reference`` says; its mode is tagged on the active MLflow run
    (:func:`reference_tags`).
    """
    grids = eps_grids(cfg)
    curves = {}
    for norm, group in build_attacks(cfg).items():
        logger.info("evaluating %s attacks %s on eps %s", norm, list(group), grids[norm])
        curves[norm] = rbl.robustness_curve(
            model,
            data.test,
            group,
            grids[norm],
            n_examples=cfg.eval.get("n_examples"),
            batch_size=cfg.eval.batch_size,
            seed=cfg.seed,
            device=device,
            adaptive=cfg.eval.adaptive,
            checks=cfg.eval.checks,
            progress=cfg.progress,
            state_dir=Path(cfg.eval.state_dir) / norm if cfg.eval.get("state_dir") else None,
            reference=reference_of(cfg, norm),
            strategy=cfg.eval.get("strategy", "auto"),
            headline_eps=headline_eps(cfg, norm),
        )
    _tag_active_run(reference_tags(curves))
    return curves


def _tag_active_run(tags: dict[str, str]) -> None:
    """Set ``tags`` on the active MLflow run, if there is one (tracking may be off)."""
    import mlflow

    if tags and mlflow.active_run() is not None:
        mlflow.set_tags(tags)


def headline(cfg: DictConfig, curves: dict[str, rbl.Curve]) -> float | None:
    """Worst-case robust accuracy at ``eval.headline`` (``None`` without curves in that norm)."""
    curve = curves.get(str(cfg.eval.headline.norm))
    if curve is None:
        return None
    eps = parse_number(cfg.eval.headline.eps)
    k = min(range(len(curve.eps)), key=lambda i: abs(float(curve.eps[i]) - eps))
    return float(curve.worst_case()[k])


def tensor_digest(*tensors: Tensor) -> str:
    """SHA-256 of the tensors' bytes (identifies the exact data evaluated)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


__all__ = [
    "RUN_METRICS",
    "Data",
    "apply_defense",
    "build_attacks",
    "build_model",
    "check_optimized_metric",
    "defense_kinds",
    "eps_grids",
    "evaluate",
    "headline",
    "headline_eps",
    "load_data",
    "preflight",
    "reference_of",
    "reference_tags",
    "resolve_device",
    "tensor_digest",
    "validate",
]
