"""A local RobustBench: a fixed strong attack suite run on a track, giving a model card.

:func:`benchmark` evaluates a model on a track (dataset, threat model, eps) with a fixed suite,
APGD-CE followed by the targeted APGD-DLR on the survivors (the per-sample worst case, as in the
AutoAttack cascade minus FAB and Square), through :func:`robustness_curve`, so non-differentiable
or random models are also attacked adaptively (BPDA/EOT) and the health checks run. The result
is a :class:`~robustbench_local.card.ModelCard`; :class:`~robustbench_local.leaderboard.Leaderboard`
ranks the cards of a folder among the published reference rows.

Accuracies on cards are percentages (``98.53``), as in RobustBench.

Example:
    >>> card = benchmark(model, dataset="mnist", threat_model="linf", eps=0.3, n_examples=1000)
    >>> card.save("leaderboard/")
    >>> print(Leaderboard.load("leaderboard/", dataset="mnist", threat_model="linf").to_text())

References:
    Croce et al., "RobustBench: a standardized adversarial robustness benchmark",
    NeurIPS Datasets and Benchmarks 2021.
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from typing import Any

import torch
from torch import nn

import attacks as atk_lib
from attacks.validation import check_number
from robustbench_local.card import (
    BENCHMARKED,
    REPORTED_BY_PAPER,
    THREAT_MODELS,
    ModelCard,
    check_threat_model,
    percent_interval,
    wilson_interval,
)
from robustbench_local.curve import Curve
from robustbench_local.data import load_dataset
from robustbench_local.evaluate import robustness_curve
from robustbench_local.health import ADAPTIVE_SUFFIX
from robustbench_local.leaderboard import (
    LEADERBOARD_ENV,
    REFERENCE_DIR,
    Leaderboard,
    default_leaderboard_dir,
    reference_cards,
    summary,
)
from robustbench_local.models import weights_digest

logger = logging.getLogger(__name__)

SUITE_VERSION = "1"
"""Bump when the standard suite changes; cards of different versions are not comparable."""
SUITE_LABEL = "apgd_ce+apgd_dlr"
STANDARD_STEPS = 100
STANDARD_TARGETS = 9


def standard_suite(
    threat_model: str = "linf",
    *,
    steps: int = STANDARD_STEPS,
    n_target_classes: int = STANDARD_TARGETS,
    seed: int = 0,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> atk_lib.AttackSuite:
    """APGD-CE, then targeted APGD-DLR on the survivors (AutoAttack's first two attacks).

    Raises:
        ValueError: Unknown threat model or bad attack settings.
    """
    norm = check_threat_model(threat_model)
    common = {"norm": norm, "steps": steps, "seed": seed, "bounds": bounds}
    return atk_lib.AttackSuite(
        [
            atk_lib.create("apgd_ce", **common),
            atk_lib.create("apgd_dlr", n_target_classes=n_target_classes, **common),
        ],
        seed=seed,
    )


def benchmark(
    model: nn.Module,
    dataset: str = "mnist",
    threat_model: str = "linf",
    eps: float = 0.3,
    n_examples: int = 1000,
    *,
    name: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 500,
    seed: int = 0,
    device: str | torch.device | None = None,
    reported: float | None = None,
    steps: int = STANDARD_STEPS,
    n_target_classes: int = STANDARD_TARGETS,
    checks: bool = True,
    progress: bool = False,
) -> ModelCard:
    """Evaluate ``model`` on a track with the standard suite and return its model card.

    Args:
        model: A classifier (inputs in [0, 1], logits out), in eval mode.
        dataset: Track dataset (any of :func:`data.dataset_names`); its test split is used.
        threat_model: ``"linf"`` or ``"l2"``.
        eps: The budget, in input units (0.3 for the MNIST linf track).
        n_examples: Test samples evaluated (a fixed subset chosen by ``seed``).
        name: Card name (default: the architecture and the digest's first 8 characters).
        data_dir: Dataset mirror (default: ``$ROBUSTBENCH_LOCAL_DATA_DIR`` or the cache).
        batch_size: Samples per batch.
        seed: Sample selection and attack seed.
        device: Where to evaluate (default: the model's device).
        reported: Robust accuracy the paper reports for this model, in percent.
        steps: APGD steps per run (default :data:`STANDARD_STEPS`; fewer only for tests, and
            the card then notes the non-standard suite).
        n_target_classes: Targets of APGD-DLR (default :data:`STANDARD_TARGETS`).
        checks: Run the preflight and gradient-masking checks (recorded on the card).
        progress: Show a progress bar.

    Returns:
        A :class:`ModelCard` (accuracies in percent).

    Raises:
        ValueError: Unknown dataset or threat model, eps not positive, bad ``n_examples``, or a
            model that fails the preflight.
        TypeError: eps is not a number.
    """
    eps = _check_track(threat_model, eps)
    _, test = load_dataset(dataset, data_dir)
    suite = standard_suite(threat_model, steps=steps, n_target_classes=n_target_classes, seed=seed)
    evaluation = dict(n_examples=n_examples, batch_size=batch_size, seed=seed, device=device)
    curve = robustness_curve(
        model, test, {SUITE_LABEL: suite}, [eps], checks=checks, progress=progress, **evaluation
    )
    standard = steps == STANDARD_STEPS and n_target_classes == STANDARD_TARGETS
    track = {"dataset": dataset, "threat_model": threat_model, "eps": eps}
    return card_from_curve(
        curve, model, **track, name=name, reported=reported, suite=suite, standard=standard
    )


def _check_track(threat_model: str, eps: float) -> float:
    """Validate a track's threat model and eps; return eps as a float.

    Raises:
        ValueError: Unknown threat model, or eps not positive.
        TypeError: eps is not a number.
    """
    check_threat_model(threat_model)
    return check_number("eps", eps, low=0.0, low_open=True)


def card_from_curve(
    curve: Curve,
    model: nn.Module,
    *,
    dataset: str,
    threat_model: str,
    eps: float,
    name: str | None = None,
    reported: float | None = None,
    suite: atk_lib.Attack | None = None,
    standard: bool = True,
) -> ModelCard:
    """Turn a one-eps robustness curve of the suite into a :class:`ModelCard`.

    Args:
        curve: The curve (its first eps is the track's).
        model: The evaluated model (its ``arch`` and weights digest go on the card).
        dataset: Track dataset.
        threat_model: ``"linf"`` or ``"l2"``.
        eps: The track's budget.
        name: Card name (default: the architecture and the digest's first 8 characters).
        reported: Robust accuracy the paper reports, in percent.
        suite: The attack suite (its configuration goes on the card).
        standard: Whether the suite ran with its standard settings.
    """
    robust = curve.worst_case_robust()[0]
    n, k = int(robust.numel()), int(robust.sum())
    ci_low, ci_high = percent_interval(k, n)
    digest = weights_digest(model)
    arch = str(getattr(model, "arch", None) or type(model).__name__)
    return ModelCard(
        name=name or f"{arch}-{digest[:8]}",
        architecture=arch,
        dataset=dataset,
        threat_model=threat_model,
        eps=eps,
        clean_acc=round(100 * curve.clean_accuracy, 2),
        robust_acc=round(100 * k / n, 2),
        reported=reported,
        n_examples=n,
        ci_low=ci_low,
        ci_high=ci_high,
        seed=int(curve.seed),
        weights_digest=digest,
        suite_version=SUITE_VERSION if standard else f"{SUITE_VERSION}-custom",
        suite=_plain(suite.config()) if suite is not None else {},
        health=_plain([h.to_dict() for h in curve.health]),
        cost={**curve.total_cost(), "n_examples": n},
        source=BENCHMARKED,
        adaptive=any(label.endswith(ADAPTIVE_SUFFIX) for label in curve.attacks),
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        notes="" if standard else "non-standard suite settings: not comparable with the track",
    )


def _plain(value: Any) -> Any:
    """``value`` as plain JSON types (tuples become lists), so cards round-trip exactly."""
    return json.loads(json.dumps(value, default=str))


__all__ = [
    "BENCHMARKED",
    "LEADERBOARD_ENV",
    "REFERENCE_DIR",
    "REPORTED_BY_PAPER",
    "SUITE_LABEL",
    "SUITE_VERSION",
    "THREAT_MODELS",
    "Leaderboard",
    "ModelCard",
    "benchmark",
    "card_from_curve",
    "default_leaderboard_dir",
    "reference_cards",
    "standard_suite",
    "summary",
    "wilson_interval",
]
