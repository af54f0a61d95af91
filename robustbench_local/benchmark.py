"""A local RobustBench: a fixed strong attack suite run on a track, giving a model card.

:func:`benchmark` evaluates a model on a track (dataset, threat model, eps) with the standard
suite (:func:`~robustbench_local.reference.standard_suite`: APGD-CE, APGD-T, FAB-T and Square,
each on the survivors of the previous ones, as AutoAttack "standard"; its "rand" protocol for
random models) through :func:`robustness_curve`, so non-differentiable or random models are also
attacked adaptively (BPDA/EOT/straight-through) and the health checks run. The suite is also the
curve's reference, so it does not run twice. The result is a
:class:`~robustbench_local.card.ModelCard`; :class:`~robustbench_local.leaderboard.Leaderboard`
ranks the cards of a folder among the published reference rows.

Accuracies on cards are percentages (``98.53``), as in RobustBench. A track's data is a
registered dataset or the user's own (any data spec, arrays or a Dataset: :mod:`.tracks`), which
the card identifies by its sha256 digest and origin so that the leaderboard ranks it only among
cards of the same data, threat model and eps.

Example:
    >>> card = benchmark(model, dataset="mnist", threat_model="linf", eps=0.3, n_examples=1000)
    >>> card.save("leaderboard/")
    >>> mine = benchmark(wrap_model(net, logits="logits"), dataset="my_pngs/")  # 8/255 linf
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
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

import attacks as atk_lib
from defenses.data import DataLike
from robustbench_local.benchmark_axes import (
    CertifyArg,
    CorruptionsArg,
    certified_part,
    check_certify,
    corruption_part,
)
from robustbench_local.card import (
    BENCHMARKED,
    REPORTED_BY_PAPER,
    THREAT_MODELS,
    ModelCard,
    percent_interval,
    wilson_interval,
)
from robustbench_local.curve import Curve
from robustbench_local.data import DataSpec
from robustbench_local.evaluate import robustness_curve
from robustbench_local.health import ADAPTIVE_SUFFIX
from robustbench_local.inputs import resolve_device
from robustbench_local.leaderboard import (
    LEADERBOARD_ENV,
    REFERENCE_DIR,
    Leaderboard,
    default_leaderboard_dir,
    reference_cards,
    summary,
)
from robustbench_local.models import WrappedModel, weights_digest
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
from robustbench_local.tracks import (
    TRACK_EPS,
    check_track_threat_model,
    track_data,
    track_eps,
)
from robustbench_local.utils import callable_module

logger = logging.getLogger(__name__)

SUITE_LABEL = "standard_suite"
"""The curve row of the suite in a benchmark run."""


DEFAULT_N_EXAMPLES = 1000
"""Test samples a benchmark evaluates by default (all of them when the split is smaller)."""


def benchmark(
    model: nn.Module,
    dataset: DataSpec | DataLike = "mnist",
    threat_model: str = "linf",
    eps: float | None = None,
    n_examples: int | None = None,
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
    certify: CertifyArg = None,
    corruptions: CorruptionsArg = None,
    severities: Sequence[int | None] = (1, 2, 3, 4, 5),
) -> ModelCard:
    """Evaluate ``model`` on a track with the standard suite and return its model card.

    Args:
        model: A classifier (inputs in [0, 1], logits out), in eval mode; wrap a model with
            other outputs or preprocessing first (:func:`~robustbench_local.wrap_model`).
        dataset: The track's data, whose test split is used: a registered name (``"mnist"``),
            any data spec of :func:`~robustbench_local.load_dataset` (an image folder, an
            ``.npz``/``.pt`` file, ``module:function``), ``(x, y)`` tensors or numpy arrays, or
            a Dataset. The card records a registered name as it is, and the user's data by
            name, sha256 digest and origin, so that the leaderboard ranks it only with cards
            on the same data.
        threat_model: ``"linf"`` or ``"l2"`` (no l1 suite yet: the error says what to use).
        eps: The budget, in input units; default the track's (:data:`~.tracks.TRACK_EPS`:
            0.3 for MNIST linf; 8/255 linf and 0.5 l2 for CIFAR-10 and for the user's data).
        n_examples: Test samples evaluated (a fixed subset chosen by ``seed``); default
            :data:`DEFAULT_N_EXAMPLES`, or every sample of a smaller split.
        name: Card name (default: the architecture and the digest's first 8 characters).
        data_dir: Dataset mirror (default: ``$ROBUSTBENCH_LOCAL_DATA_DIR`` or the cache).
        batch_size: Samples per batch.
        seed: Sample selection and attack seed.
        device: Where to evaluate (default: the model's device; ``"auto"``: CUDA if present).
        reported: Robust accuracy the paper reports for this model, in percent.
        steps: APGD and FAB iterations (default :data:`STANDARD_STEPS`; fewer only for tests,
            and the card then says the suite was reduced).
        n_target_classes: Targets of APGD-T and FAB-T (default :data:`STANDARD_TARGETS`).
        square_queries: Queries of Square (default :data:`SQUARE_QUERIES`).
        checks: Run the preflight and gradient-masking checks (recorded on the card).
        progress: Show a progress bar.
        certify: Also certify the samples at the track's eps: a method (``"ibp"``,
            ``"crown"``, ``"milp"``) or ``{"method": ..., **settings}`` (e.g. smoothing with
            ``sigma`` on an l2 track); the card gets ``certified`` (method, settings, accuracy).
        corruptions: Also measure accuracy under common corruptions on the same samples:
            ``"auto"`` (the suite's benchmark corruptions: MNIST-C for gray images, CIFAR-10-C
            for color) or names; the card gets ``corruptions`` (suite, severities, mean).
        severities: The corruption severities (1-5; None for each corruption's benchmark
            level).

    Returns:
        A :class:`ModelCard` (accuracies in percent).

    Raises:
        ValueError: Unknown dataset or threat model, eps not positive or in the wrong units,
            bad ``n_examples``, a device that is not here, data the model cannot take (the
            checks of :func:`~robustbench_local.inputs.check_eval_inputs`), or a model that
            fails the preflight.
        TypeError: eps is not a number.

    Bad ``certify`` settings (an unknown method, one that does not certify the threat model,
    smoothing without ``sigma``) are a ValueError before anything is evaluated.
    """
    check_track_threat_model(threat_model)
    check_certify(certify, threat_model)
    data = track_data(dataset, data_dir)
    eps = track_eps(data, threat_model, eps)
    budgets = {"steps": steps, "n_target_classes": n_target_classes}
    suite = standard_suite(threat_model, **budgets, square_queries=square_queries, seed=seed)
    evaluation = dict(
        n_examples=_sample_count(n_examples, data.size), batch_size=batch_size, seed=seed,
        device=resolve_device(device, model),
    )  # fmt: skip
    curve = robustness_curve(
        model,
        data.test,
        {SUITE_LABEL: suite},
        [eps],
        checks=checks,
        progress=progress,
        reference=suite,  # the suite is the reference: it runs once
        certify=certify,
        **evaluation,
    )
    corrupted = corruption_part(model, data.test, corruptions, severities, evaluation, progress)
    track = {"dataset": data.name, "threat_model": threat_model, "eps": eps}
    return card_from_curve(
        curve, model, **track, name=name, reported=reported, suite=suite,
        dataset_digest=data.digest, dataset_origin=data.origin, corruptions=corrupted,
    )  # fmt: skip


def _sample_count(n_examples: int | None, size: int) -> int | None:
    """``n_examples``, or the default count capped at the split's size (said in the log)."""
    if n_examples is not None:
        return n_examples
    if size < DEFAULT_N_EXAMPLES:
        logger.info("n_examples: all %d test samples (fewer than %d)", size, DEFAULT_N_EXAMPLES)
        return None
    return DEFAULT_N_EXAMPLES


def _architecture(model: nn.Module) -> str:
    """The card's architecture: the model's ``arch`` (inside a wrapper) or its class name."""
    inner = model.model if isinstance(model, WrappedModel) else model
    arch = str(getattr(inner, "arch", None) or type(inner).__name__)
    return f"{arch} (wrapped)" if inner is not model else arch


def _short(arch: str) -> str:
    """``SmallCNN`` for ``mypkg.nets:SmallCNN (wrapped)``; a registered name as it is."""
    return arch.split(" ")[0].rsplit(":", 1)[-1]


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
    dataset_digest: str | None = None,
    dataset_origin: str | None = None,
    corruptions: dict[str, Any] | None = None,
) -> ModelCard:
    """Turn a one-eps robustness curve of the suite into a :class:`ModelCard`.

    Args:
        curve: The curve (its first eps is the track's).
        model: The evaluated model (its ``arch`` and weights digest go on the card).
        dataset: Track dataset (a registered name or the user data's name).
        threat_model: ``"linf"`` or ``"l2"``.
        eps: The track's budget.
        name: Card name (default: the architecture and the digest's first 8 characters).
        reported: Robust accuracy the paper reports, in percent.
        suite: The attack suite (its configuration goes on the card).
        standard: Whether the suite ran with its standard settings (default: read from a
            :class:`~robustbench_local.reference.ReferenceSuite`, else False); a reduced
            suite's card gets suite version ``"<version>-reduced"`` and a note.
        dataset_digest: sha256 of the user's test split (None for a registered dataset).
        dataset_origin: Where the user's data came from.
        corruptions: The card's ``corruptions`` field
            (:func:`~robustbench_local.benchmark_axes.corruption_fields`), or None. The
            ``certified`` field comes from the curve's certified row, if it has one.
    """
    if standard is None:
        standard = isinstance(suite, ReferenceSuite) and not suite.reduced
    robust = curve.worst_case_robust()[0]
    n, k = int(robust.numel()), int(robust.sum())
    ci_low, ci_high = percent_interval(k, n)
    digest = weights_digest(model)
    arch = _architecture(model)
    return ModelCard(
        name=name or f"{_short(arch)}-{digest[:8]}",
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
        dataset_digest=dataset_digest,
        dataset_origin=dataset_origin,
        certified=certified_part(curve.certified),
        corruptions=corruptions,
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


callable_module(__name__, benchmark)  # rbl.benchmark(...) works even once the module is imported

__all__ = [
    "BENCHMARKED",
    "DEFAULT_N_EXAMPLES",
    "LEADERBOARD_ENV",
    "REFERENCE_DIR",
    "REPORTED_BY_PAPER",
    "SQUARE_QUERIES",
    "STANDARD_STEPS",
    "STANDARD_TARGETS",
    "SUITE_LABEL",
    "SUITE_VERSION",
    "THREAT_MODELS",
    "TRACK_EPS",
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
