"""The steps of one experiment: validate, load data, build the model, defend, evaluate.

Each step is a plain function of the composed config so it can be tested without Hydra's main.
Everything that can be checked before training (eps grids, sample counts, the model contract)
is checked first, so a bad config fails in seconds, not after an hour of training:
:func:`validate` returns the :class:`~experiments.plan.EvalPlan` (the attacks, built once, and
the headline, checked once) that :func:`evaluate_plan` then runs. The steps return plain data
(an :class:`Evaluation`: curves, headline, tags); they never log: the run hands what they
return to the tracking layer (:mod:`experiments.tracking`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

import attacks as atk_lib
import defenses
import robustbench_local as rbl
from experiments.instantiate import build
from experiments.plan import (
    EvalPlan,
    build_attacks,
    eps_grids,
    headline_eps,
    headline_setting,
    reference_of,
)
from robustbench_local.utils import tensor_digest

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


def validate(cfg: DictConfig) -> EvalPlan:
    """Check what can be checked without data: grids, headline eps, attacks, sizes, defenses.

    Returns:
        The run's evaluation plan (:meth:`EvalPlan.from_config`): its attacks, grids,
        references and headline, built and checked here once.

    Raises:
        ValueError: The first problem found, with what to change.
    """
    plan = EvalPlan.from_config(cfg)
    defense_kinds(cfg.defense, "defense")
    base = cfg.train.get("base")
    if base is not None and "training" not in defense_kinds(base, "train.base"):
        raise ValueError(
            f"train.base.name={base.name!r} does not train a model; base training needs a "
            f"training defense: one of {', '.join(defenses.names(kind='training'))}"
        )
    check_optimized_metric(cfg.get("optimized_metric"))
    return plan


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


def reference_tags(curves: dict[str, rbl.Curve]) -> dict[str, str]:
    """``reference.<norm>`` tags: ``auto``, ``all``, ``off``, or ``reduced`` (a chosen one)."""
    tags = {}
    for norm, curve in curves.items():
        ref = curve.reference
        mode = "off" if ref is None else ("reduced" if ref.reduced else ref.mode)
        tags[f"reference.{norm}"] = mode
    return tags


@dataclass(frozen=True)
class Evaluation:
    """What the evaluation step returns for the run to record.

    Attributes:
        curves: ``norm -> Curve``, one per norm of the plan's attacks.
        headline: Worst-case robust accuracy at the headline eps (None without a curve in the
            headline norm).
        tags: The run tags the curves call for (``reference.<norm>``, :func:`reference_tags`).
    """

    curves: dict[str, rbl.Curve]
    headline: float | None
    tags: dict[str, str] = field(default_factory=dict)


def evaluate_plan(
    plan: EvalPlan, cfg: DictConfig, model: nn.Module, data: Data, device: torch.device
) -> Evaluation:
    """One robustness curve per norm of the plan's attacks, each with its reference.

    The reference runs at the headline eps on the headline norm (else at the largest eps) as
    ``eval.reference`` says. The run settings (sample count, batch size, state folder,
    progress...) are read from ``cfg.eval``; the attacks, grids, references and headline come
    from ``plan``.
    """
    curves = {}
    for norm, group in plan.attacks.items():
        grid = list(plan.grids[norm])
        logger.info("evaluating %s attacks %s on eps %s", norm, list(group), grid)
        curves[norm] = rbl.robustness_curve(
            model,
            data.test,
            dict(group),
            grid,
            n_examples=cfg.eval.get("n_examples"),
            batch_size=cfg.eval.batch_size,
            seed=cfg.seed,
            device=device,
            adaptive=cfg.eval.adaptive,
            checks=cfg.eval.checks,
            progress=cfg.progress,
            state_dir=Path(cfg.eval.state_dir) / norm if cfg.eval.get("state_dir") else None,
            reference=plan.references[norm],
            strategy=cfg.eval.get("strategy", "auto"),
            headline_eps=plan.headline_eps_of(norm),
        )
    return Evaluation(curves, plan.headline(curves), reference_tags(curves))


def evaluate(
    cfg: DictConfig, model: nn.Module, data: Data, device: torch.device
) -> dict[str, rbl.Curve]:
    """The curves of :func:`evaluate_plan` on the plan of ``cfg``, for a caller without a run.

    The run itself uses :func:`evaluate_plan`, whose tags (:func:`reference_tags`) its logger
    records; nothing here writes to MLflow.
    """
    return evaluate_plan(EvalPlan.from_config(cfg), cfg, model, data, device).curves


def headline(cfg: DictConfig, curves: dict[str, rbl.Curve]) -> float | None:
    """Worst-case robust accuracy at ``eval.headline`` (``None`` without curves in that norm).

    For callers without a plan; the run reads it from its :class:`EvalPlan`.
    """
    norm, eps = headline_setting(cfg)
    curve = curves.get(norm)
    if curve is None:
        return None
    k = min(range(len(curve.eps)), key=lambda i: abs(float(curve.eps[i]) - eps))
    return float(curve.worst_case()[k])


__all__ = [
    "RUN_METRICS",
    "Data",
    "EvalPlan",
    "Evaluation",
    "apply_defense",
    "build_attacks",
    "build_model",
    "check_optimized_metric",
    "defense_kinds",
    "eps_grids",
    "evaluate",
    "evaluate_plan",
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
