"""The steps of one experiment: load data, validate, build the model, defend, evaluate.

Each step is a plain function of the composed config so it can be tested without Hydra's main.
Everything that can be checked before training (eps grids, sample counts, the model contract,
the data against the model) is checked first, so a bad config fails in seconds, not after an
hour of training: :func:`load_data` reads any data spec (:mod:`experiments.data_spec`: a
registered name, the user's files or function) and fills in the eps grids left to the data,
:func:`validate` returns the :class:`~experiments.plan.EvalPlan` (the attacks, built once, and
the headline, checked once) that :func:`evaluate_plan` then runs, and :func:`build_model`
(:mod:`experiments.model_spec`: the zoo, a checkpoint, the user's class, wrapped) runs the
input checks every entry point shares (:func:`robustbench_local.inputs.check_eval_inputs`).
The steps return plain data (an :class:`Evaluation`: curves, headline, tags); they never log:
the run hands what they return to the tracking layer (:mod:`experiments.tracking`).
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
from experiments import data_spec
from experiments.instantiate import build
from experiments.model_spec import build_model_node
from experiments.plan import (
    EvalPlan,
    build_attacks,
    eps_grids,
    headline_eps,
    headline_setting,
    reference_of,
)
from robustbench_local.data import DatasetInfo
from robustbench_local.inputs import check_eps_scale, check_eval_inputs
from robustbench_local.inputs import resolve_device as resolve_input_device
from robustbench_local.utils import tensor_digest

logger = logging.getLogger(__name__)

Callback = Callable[[int, dict[str, float]], Any]

# The scalar metrics every run has; ``cost/<norm>/<label>/<key>`` names are known after the run.
RUN_METRICS = ("headline_robust_acc", "clean_acc")
# The scalar metrics of a run with corruptions (``eval.corruptions``).
CORRUPTION_METRICS = ("corruption_acc/mean", "corruption_acc/clean")


@dataclass
class Data:
    """Train, optional validation and test splits, and what is known about the data.

    Attributes:
        train: The training split (empty for user data without one; nothing trains then).
        val: The validation split held out of it (``dataset.val_size``), or None.
        test: The test split, the one evaluated.
        info: Classes, input shape and source (:class:`robustbench_local.DatasetInfo`).
    """

    train: TensorDataset
    val: TensorDataset | None
    test: TensorDataset
    info: DatasetInfo | None = None


def resolve_device(spec: str | None) -> torch.device:
    """``cfg.device``: ``"auto"`` or None (CUDA if available, else CPU), or a device string.

    A thin alias of :func:`robustbench_local.inputs.resolve_device`, the check every entry
    point runs.

    Raises:
        ValueError: Not a device, or one this machine does not have (CUDA without CUDA).
    """
    return resolve_input_device("auto" if spec is None else spec)


def validate(cfg: DictConfig, info: DatasetInfo | None = None) -> EvalPlan:
    """Check what can be checked without a model: grids, headline eps, attacks, defenses.

    Grids left to the data (``eval.eps.<norm>: auto``) are filled in first
    (:func:`experiments.data_spec.resolve_auto_eps`); with the data's ``info`` (from
    :func:`load_data`) the eps are also checked to be in input units (``eps=8`` on data in
    [0, 1] asks whether 8/255 was meant) before the headline is looked up on the grid.

    Returns:
        The run's evaluation plan (:meth:`EvalPlan.from_config`): its attacks, grids,
        references and headline, built and checked here once.

    Raises:
        ValueError: The first problem found, with what to change.
    """
    data_spec.resolve_auto_eps(cfg, info)
    if info is not None:
        for norm, grid in eps_grids(cfg).items():
            check_eps_scale(grid, norm, (0.0, 1.0), info.shape)
    plan = EvalPlan.from_config(cfg, info)
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
    known = (*RUN_METRICS, *CORRUPTION_METRICS)
    if name is None or name in known or (isinstance(name, str) and name.startswith("cost/")):
        return
    raise ValueError(
        f"optimized_metric={name!r} is not a scalar metric of the run; use one of "
        f"{', '.join(known)} (with eval.corruptions), "
        "cost/<norm>/<attack>/<wall_time|n_forward|n_backward> or null"
    )


def load_data(cfg: DictConfig) -> Data:
    """Load the data the ``dataset`` node names; take the training subset; hold out validation.

    Any data spec works (:mod:`experiments.data_spec`): a registered name, the user's image
    folder or ``.npz``/``.pt`` file (``dataset=files``), or a function (``dataset=custom``).
    A null ``dataset.name`` becomes the data's own, and the eps grids left to the data
    (``auto``) are filled in.

    Raises:
        ValueError: A bad spec or bad data (the message says what to fix), a run that trains
            on data without a training split, or ``train_subset``, ``val_size`` or
            ``eval.n_examples`` larger than the data.
        FileNotFoundError: The file or folder does not exist.
    """
    ds = cfg.dataset
    resolved = data_spec.resolve(ds)
    data_spec.fill_name(cfg, resolved.info)
    data_spec.resolve_auto_eps(cfg, resolved.info)
    train = _training_split(cfg, resolved)
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
        _check_size("eval.n_examples", cfg.eval.n_examples, resolved.test)
    return Data(train, val, resolved.test, resolved.info)


def trains(cfg: DictConfig) -> bool:
    """Whether the run trains: a base training (``train.base``) or a training defense."""
    return cfg.train.get("base") is not None or "training" in defense_kinds(cfg.defense, "defense")


def _training_split(cfg: DictConfig, resolved: rbl.ResolvedDataset) -> TensorDataset:
    """The training split; data without one is fine as long as nothing trains.

    Raises:
        ValueError: The run trains and the data has no training split.
    """
    if resolved.has_train or not trains(cfg):
        return resolved.train
    try:
        return resolved.require_train("the run's training (train.base or a training defense)")
    except ValueError as err:
        raise ValueError(
            f"{err}; or evaluate the model as it is: train=none defense=none (e.g. with "
            "model=checkpoint model.path=...)"
        ) from err


def _check_size(key: str, n: int, data: Dataset, strict: bool = False) -> int:
    limit = len(data) - 1 if strict else len(data)
    if not 0 < int(n) <= limit:
        raise ValueError(f"{key}={n} but the data has {len(data)} samples; use 1..{limit}")
    return int(n)


def build_model(cfg: DictConfig, data: Data, device: torch.device) -> nn.Module:
    """Build (or load) the model and check it and the data before any training.

    The model comes from the ``model`` node (:func:`experiments.model_spec.build_model_node`:
    the zoo, a checkpoint or the user's class, wrapped by ``model.wrap``), with the data's
    number of classes where its factory takes ``num_classes``. Then the input checks every
    entry point runs (:func:`check_inputs`) and the preflight (:func:`preflight`).

    Raises:
        ValueError: The model does not build, does not take the data (layout, channels,
            dtype), returns something else than logits (the message names the
            ``model.wrap`` setting that fixes it), has fewer outputs than the data's classes,
            or fails the preflight (e.g. returns probabilities).
    """
    torch.manual_seed(cfg.seed)
    num_classes = data.info.num_classes if data.info is not None else None
    model = build_model_node(cfg.model, num_classes).to(device)
    check_inputs(cfg, model, data)
    x, y = data.test.tensors
    preflight(model, x[:64].to(device), y[:64].to(device))
    return model


def check_inputs(cfg: DictConfig, model: nn.Module, data: Data) -> None:
    """The shared input checks on the model, the test data and every eps grid of the run.

    :func:`robustbench_local.inputs.check_eval_inputs` per norm of ``eval.eps`` (the data's
    dtype and layout, the channels the model takes, its output type, labels against its
    outputs, the eps units), then the model's outputs against the data's classes.

    Raises:
        ValueError: The first problem, with what to do; a ``wrap_model`` fix is named as the
            ``model.wrap`` setting it is in a run.
    """
    found = None
    for norm, grid in eps_grids(cfg).items():
        try:
            found = check_eval_inputs(model, data.test, grid, norm)
        except ValueError as err:
            raise ValueError(_as_config_advice(str(err))) from err
    info = data.info
    if found is not None and info is not None and found.num_classes < info.num_classes:
        raise ValueError(
            f"the model returns {found.num_classes} logits but dataset {info.name!r} has "
            f"{info.num_classes} classes (labels 0..{info.num_classes - 1}); build it for "
            f"{info.num_classes} classes (e.g. +model.num_classes={info.num_classes})"
        )


def _as_config_advice(message: str) -> str:
    """A message naming a ``wrap_model(model, k=v)`` fix, plus the ``model.wrap`` overrides."""
    call = "wrap_model(model, "
    start = message.find(call)
    if start < 0:
        return message
    args = message[start + len(call) : message.find(")", start)]
    if "(" in args or "<" in args:
        return message
    overrides = " ".join(f"+model.wrap.{a.strip()}" for a in args.split(", ") if "=" in a)
    return f"{message} (in a run: {overrides})" if overrides else message


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
        tags: The run tags the curves call for (``reference.<norm>``, :func:`reference_tags`;
            ``certify`` and ``corruptions`` when the run has them).
        corruptions: The corruption curve on the same test samples (``eval.corruptions``;
            None when off).
        example: The first evaluated test image ``[1, C, H, W]`` (the corruptions' example
            grid shows it corrupted as evaluated); None without corruptions.
    """

    curves: dict[str, rbl.Curve]
    headline: float | None
    tags: dict[str, str] = field(default_factory=dict)
    corruptions: rbl.CorruptionCurve | None = None
    example: Tensor | None = None


def evaluate_plan(
    plan: EvalPlan, cfg: DictConfig, model: nn.Module, data: Data, device: torch.device
) -> Evaluation:
    """One robustness curve per norm of the plan's attacks, each with its reference.

    The reference runs at the headline eps on the headline norm (else at the largest eps) as
    ``eval.reference`` says. With ``eval.certify`` each curve the method certifies gets its
    certified row (state in ``<state_dir>/<norm>/certify``); with ``eval.corruptions`` a
    corruption curve runs on the same test samples (same ``eval.n_examples`` and seed; state
    in ``<state_dir>/corruptions``). The run settings (sample count, batch size, state folder,
    progress...) are read from ``cfg.eval``; the attacks, grids, references, headline,
    certification and corruptions come from ``plan``.
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
            certify=plan.certify_of(norm),
        )
    tags = reference_tags(curves)
    if plan.certify is not None:
        tags["certify"] = plan.certify.method
    corruptions = corruption_curve(plan, cfg, model, data, device)
    example = None
    if corruptions is not None:
        tags["corruptions"] = corruptions.suite
        example = data.test[int(corruptions.indices[0])][0].unsqueeze(0)
    return Evaluation(curves, plan.headline(curves), tags, corruptions, example)


def corruption_curve(
    plan: EvalPlan, cfg: DictConfig, model: nn.Module, data: Data, device: torch.device
) -> rbl.CorruptionCurve | None:
    """The corruption curve of ``eval.corruptions`` on the curves' test samples (or None).

    The sample list is the curves' (the same ``eval.n_examples``, seed and data), so each
    sample's corrupted accuracy sits beside its adversarial robustness.
    """
    setting = plan.corruptions
    if setting is None:
        return None
    logger.info("evaluating corruptions %s at severities %s", setting.argument,
                list(setting.severities))  # fmt: skip
    state = cfg.eval.get("state_dir")
    return rbl.corruption_curve(
        model,
        data.test,
        setting.argument,
        setting.severities,
        n_examples=cfg.eval.get("n_examples"),
        batch_size=cfg.eval.batch_size,
        seed=cfg.seed,
        device=device,
        state_dir=Path(state) / "corruptions" if state else None,
        progress=cfg.progress,
    )


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
    "CORRUPTION_METRICS",
    "RUN_METRICS",
    "Data",
    "EvalPlan",
    "Evaluation",
    "apply_defense",
    "build_attacks",
    "build_model",
    "check_inputs",
    "check_optimized_metric",
    "corruption_curve",
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
    "trains",
    "validate",
]
