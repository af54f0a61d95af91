"""A local RobustBench: a fixed strong attack suite run on a track, giving a model card.

:func:`benchmark` evaluates a model on a track (dataset, threat model, eps) with the standard
suite (:func:`~robustbench_local.reference.standard_suite`: APGD-CE, APGD-T, FAB-T and Square,
each on the survivors of the previous ones, as AutoAttack "standard"; its "rand" protocol for
random models) through :func:`robustness_curve`, so non-differentiable or random models are also
attacked adaptively (BPDA/EOT/straight-through) and the health checks run. The suite is also the
curve's reference, so it does not run twice. The result is a
:class:`~robustbench_local.card.ModelCard`; :class:`~robustbench_local.leaderboard.Leaderboard`
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
import logging
import os

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
from robustbench_local.planning import EOT_SUFFIX, STE_SUFFIX
from robustbench_local.reference import (
    SQUARE_QUERIES,
    STANDARD_STEPS,
    STANDARD_TARGETS,
    SUITE_VERSION,
    ReferenceSuite,
    plain,
    standard_suite,
)

logger = logging.getLogger(__name__)

SUITE_LABEL = "standard_suite"
"""The curve row of the suite in a benchmark run."""


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
    square_queries: int = SQUARE_QUERIES,
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
        steps: APGD and FAB iterations (default :data:`STANDARD_STEPS`; fewer only for tests,
            and the card then says the suite was reduced).
        n_target_classes: Targets of APGD-T and FAB-T (default :data:`STANDARD_TARGETS`).
        square_queries: Queries of Square (default :data:`SQUARE_QUERIES`).
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
    budgets = {"steps": steps, "n_target_classes": n_target_classes}
    suite = standard_suite(threat_model, **budgets, square_queries=square_queries, seed=seed)
    evaluation = dict(n_examples=n_examples, batch_size=batch_size, seed=seed, device=device)
    curve = robustness_curve(
        model,
        test,
        {SUITE_LABEL: suite},
        [eps],
        checks=checks,
        progress=progress,
        reference=suite,  # the suite is the reference: it runs once
        **evaluation,
    )
    track = {"dataset": dataset, "threat_model": threat_model, "eps": eps}
    return card_from_curve(curve, model, **track, name=name, reported=reported, suite=suite)


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
    standard: bool | None = None,
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
        standard: Whether the suite ran with its standard settings (default: read from a
            :class:`~robustbench_local.reference.ReferenceSuite`, else False); a reduced
            suite's card gets suite version ``"<version>-reduced"`` and a note.
    """
    if standard is None:
        standard = isinstance(suite, ReferenceSuite) and not suite.reduced
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
        suite_version=SUITE_VERSION if standard else f"{SUITE_VERSION}-reduced",
        suite=plain(suite.config()) if suite is not None else {},
        health=plain([h.to_dict() for h in curve.health]),
        cost={**curve.total_cost(), "n_examples": n},
        source=BENCHMARKED,
        adaptive=any(label.endswith(ADAPTIVE_SUFFIXES) for label in curve.attacks),
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        notes=_notes(suite, standard),
    )


ADAPTIVE_SUFFIXES = (ADAPTIVE_SUFFIX, STE_SUFFIX, EOT_SUFFIX)
"""Rows attacked through BPDA, straight-through gradients or EOT (the card's ``adaptive``)."""


def _notes(suite: atk_lib.Attack | None, standard: bool) -> str:
    """What makes a card not comparable with its track: a reduced suite, missing members."""
    notes = []
    if not standard:
        budgets = getattr(suite, "budgets", None)
        settings = f" ({', '.join(f'{k}={v}' for k, v in budgets.items())})" if budgets else ""
        notes.append(f"reduced suite{settings}: not comparable with the track")
    missing = getattr(suite, "missing", None)
    if missing:
        notes.append(f"suite without {', '.join(missing)} (not installed)")
    return "; ".join(notes)


__all__ = [
    "BENCHMARKED",
    "LEADERBOARD_ENV",
    "REFERENCE_DIR",
    "REPORTED_BY_PAPER",
    "SQUARE_QUERIES",
    "STANDARD_STEPS",
    "STANDARD_TARGETS",
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
