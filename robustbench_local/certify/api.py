"""``certify(model, data, method, eps)``: a certifier run over a data set on the evaluation engine.

The certifier (:data:`~robustbench_local.certify.base.CERTIFIERS`) is wrapped in
:class:`CertifyEvaluation`, the engine's ``"certify"`` kind, so a certification gets what every
evaluation of the project gets from :func:`robustbench_local.engine.run_evaluation`: a fixed
sample list, sharding over ``torchrun`` ranks, resume from ``state_dir``, a progress bar and
the cost; the per-sample results are then built once into a
:class:`~robustbench_local.certify.curve.CertifiedCurve`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from defenses.data import DataLike
from robustbench_local.certify.base import Certifier, check_eps_grid, create_certifier
from robustbench_local.certify.curve import CertifiedCurve
from robustbench_local.engine import (
    Batch,
    BatchOutput,
    Evaluation,
    EvaluationRun,
    Progress,
    run_evaluation,
)
from robustbench_local.inputs import check_eval_inputs

BASE_SAMPLES = ("certified", "correct", "radius")
"""Per-sample results every certifier returns (its ``extra`` come beside them)."""


class CertifyEvaluation(Evaluation):
    """The engine's ``"certify"`` kind: one certifier at every eps of a grid, per batch.

    Args:
        certifier: A built certifier (:func:`~robustbench_local.certify.create_certifier`).
        eps: The radius grid (non-negative, strictly increasing).
    """

    kind: ClassVar[str] = "certify"

    def __init__(self, certifier: Certifier, eps: Sequence[float]) -> None:
        self.certifier = certifier
        self.eps = check_eps_grid(eps)

    def rows(self) -> list[str]:
        """One unit of work per batch: the method."""
        return [self.certifier.name]

    def config(self) -> dict[str, Any]:
        """The grid and the certifier's configuration (they fix the per-sample results)."""
        return {"eps": list(self.eps), "certifier": self.certifier.config()}

    def evaluate(self, model: nn.Module, batch: Batch, progress: Progress) -> BatchOutput:
        """Certify one batch at every eps."""
        with progress.row(self.certifier.name):
            out = self.certifier.certify_batch(
                model, batch.x, batch.y, batch.ids, self.eps, batch.seed
            )
        samples = {"certified": out.certified, "correct": out.correct, "radius": out.radius}
        clash = sorted(set(out.extra) & set(samples))
        if clash:
            raise ValueError(f"{self.certifier.name}'s extra results reuse the names {clash}")
        return BatchOutput({**samples, **out.extra}, cost={self.certifier.name: out.cost})


def certify(
    model: nn.Module,
    data: DataLike,
    method: str,
    eps: Sequence[float] | float,
    *,
    norm: str | None = None,
    n_examples: int | None = None,
    batch_size: int = 500,
    seed: int = 0,
    device: str | torch.device | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    **method_kwargs: Any,
) -> CertifiedCurve:
    """Certified accuracy of ``model`` on ``data`` over a radius grid.

    Args:
        model: A classifier (inputs in ``bounds``, logits out), in eval mode.
        data: A Dataset of ``(x, y)`` pairs or a tuple of tensors ``(x, y)``.
        method: ``"ibp"``, ``"crown"``, ``"milp"`` or ``"smoothing"`` (see
            :data:`~robustbench_local.certify.CERTIFIERS`).
        eps: The radius grid (or one radius), non-negative and strictly increasing.
        norm: The ball's norm; None: the method's own (linf for the bound methods and milp,
            l2 for smoothing).
        n_examples: Certify a fixed seeded subset of this size (default: all samples).
        batch_size: Samples per batch.
        seed: Seeds the sample selection and every random draw (per sample id).
        device: Where to certify (default: the model's device).
        state_dir: Persist finished batches here; the same call after a kill resumes.
        progress: Show a progress bar.
        **method_kwargs: The method's settings (e.g. ``sigma=0.25`` for smoothing,
            ``time_limit=10`` for milp, ``bounds=(0, 1)``).

    Returns:
        A :class:`~robustbench_local.certify.curve.CertifiedCurve`.

    Raises:
        ValueError: An unknown method (the known ones listed), a norm the method does not
            certify, a bad grid or settings, a model the method cannot certify (random, in
            train mode, an unsupported layer, probabilities instead of logits).

    Example:
        >>> curve = certify(model.eval(), test, "crown", [0.05, 0.1], n_examples=100)
        >>> print(curve.table())
    """
    certifier = create_certifier(method, norm=norm, **method_kwargs)
    grid = check_eps_grid(eps)
    data = check_eval_inputs(model, data, grid, certifier.norm, certifier.bounds).data
    evaluation = CertifyEvaluation(certifier, grid)
    run = run_evaluation(
        evaluation, model, data, n_examples=n_examples, batch_size=batch_size, seed=seed,
        device=device, state_dir=state_dir, progress=progress, desc=f"certify ({method})",
    )  # fmt: skip
    return curve_of_run(run, evaluation, seed)


def curve_of_run(run: EvaluationRun, evaluation: CertifyEvaluation, seed: int) -> CertifiedCurve:
    """Build the :class:`CertifiedCurve` of a finished run (once; never changed afterwards)."""
    certifier = evaluation.certifier
    samples = run.samples
    extra = {k: v for k, v in samples.items() if k not in BASE_SAMPLES}
    certified = samples["certified"].bool()
    health = (*run.flags, *certifier.health(extra, certified))
    return CertifiedCurve(
        eps=torch.tensor(evaluation.eps, dtype=torch.float64),
        norm=certifier.norm,
        method=certifier.name,
        settings=certifier.config(),
        certified=certified,
        clean_correct=samples["correct"].bool(),
        radius=samples["radius"].float(),
        indices=run.indices,
        cost=run.cost[certifier.name],
        seed=seed,
        certifies=certifier.certifies,
        health=health,
        extra=extra,
    )


__all__ = ["CertifyEvaluation", "certify", "curve_of_run"]
