"""The evaluation engine: one straight path for any per-sample evaluation of a model.

An evaluation is a fixed, ordered list of samples and a *kind* (:class:`Evaluation`) that
computes per-sample results on one batch: attack curves (:mod:`robustbench_local.evaluate`),
certificates (:mod:`robustbench_local.certify`) and corruptions
(:mod:`robustbench_local.corruptions`) are three kinds. :func:`run_evaluation` does everything
else, the same way for every kind::

    plan (the kind, frozen)  ->  batches: fixed sample ids, sharded over ranks, resumed from a
    state dir, progress  ->  one BatchRecord per batch  ->  EvaluationRun (per-sample results
    in sample-list order, cost, counts)  ->  the kind's result, built once

- **Fixed sample ids.** The sample list is given (``indices``) or drawn once
  (:func:`select_samples`); every batch hands the kind the samples' dataset indices, from which
  all its random draws derive, so a sample's result depends on (seed, id) only.
- **Sharding.** Under ``torchrun`` (or an initialised process group) every rank takes one
  contiguous slice of the list (:func:`robustbench_local.distributed.shard_bounds`), and the
  records are gathered back in the original order on every rank.
- **Resume.** With ``state_dir`` every finished batch is saved atomically
  (:mod:`robustbench_local.state`, which only stores); the same call after a kill computes only
  the rest. A state of another evaluation (kind, settings, model weights, sample list, seed) is
  refused with a message naming what differs.
- **Progress and cost.** One bar over (batch, row) pairs on rank 0; the cost of each row is
  summed over the batches this call computed (resumed ones excluded) and over the ranks.

References:
    Rauber et al., "Foolbox Native", JOSS 2020 (one place walks the evaluation).
    Li et al., "PyTorch Distributed: Experiences on Accelerating Data Parallel Training",
    VLDB 2020.
"""

from __future__ import annotations

import contextlib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from attacks.result import Cost
from attacks.rng import key_words
from attacks.validation import check_positive_int
from defenses.data import DataLike, tensors_of
from robustbench_local import distributed
from robustbench_local.data import sample_indices
from robustbench_local.health import Flag, passed
from robustbench_local.inputs import resolve_device
from robustbench_local.state import (
    BatchRecord,
    EvalState,
    PlannedBatch,
    fingerprint,
    plan_batches,
)

logger = logging.getLogger(__name__)

FIRST_SAMPLES = 128
"""The global first samples (whatever the batch size or rank): their bytes identify the data."""


@dataclass(frozen=True)
class Batch:
    """One batch handed to a kind: the samples at positions ``[lo, hi)`` of the sample list.

    Attributes:
        x: ``[n, ...]`` inputs on the evaluation device.
        y: ``[n]`` labels (int64), same device.
        ids: ``[n]`` dataset indices, same device: every random draw derives from (seed, id).
        lo: Position of the first sample in the fixed sample list.
        hi: One past the position of the last sample.
        seed: The evaluation seed.
    """

    x: Tensor
    y: Tensor
    ids: Tensor
    lo: int
    hi: int
    seed: int


@dataclass(frozen=True)
class BatchOutput:
    """What a kind returns for one batch.

    Attributes:
        samples: ``name -> tensor`` whose last dimension is the batch's sample count.
        cost: ``row -> Cost`` of this batch (rows as in :meth:`Evaluation.rows`).
        counts: ``key -> name -> count`` tallies, summed over batches (e.g. which reference
            attack broke how many samples at each eps).
    """

    samples: Mapping[str, Tensor]
    cost: Mapping[str, Cost] = field(default_factory=dict)
    counts: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


class Progress:
    """The progress bar of an evaluation: one step per (batch, row) pair.

    Kinds wrap each row's work of a batch in :meth:`row`.
    """

    def __init__(self, total: int, desc: str, show: bool) -> None:
        self._bar = tqdm(total=total, desc=desc, disable=not show, leave=False)

    @contextlib.contextmanager
    def row(self, label: str) -> Iterator[None]:
        """Show ``label`` while its work runs; count one step when it is done."""
        self._bar.set_postfix_str(label)
        yield
        self._bar.update()

    def close(self) -> None:
        """Remove the bar."""
        self._bar.close()


class Evaluation(ABC):
    """One kind of per-sample evaluation: what runs on a batch, nothing else.

    A kind is a frozen plan: everything it needs (attacks, grids, methods, settings) is decided
    before the first batch, so every batch, rank and resumed call computes the same thing.
    """

    kind: ClassVar[str] = "evaluation"

    @abstractmethod
    def rows(self) -> list[str]:
        """Labels of the units of work done per batch (progress steps and cost rows)."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-able settings the per-sample results depend on (the state fingerprint)."""

    @abstractmethod
    def evaluate(self, model: nn.Module, batch: Batch, progress: Progress) -> BatchOutput:
        """Compute the per-sample results of one batch."""

    def sample_shapes(self, n: int) -> Mapping[str, tuple[int, ...]] | None:
        """``name -> shape`` of a batch of ``n`` samples' results, if known (checks states)."""
        return None


@dataclass(frozen=True)
class EvaluationRun:
    """What :func:`run_evaluation` returns: per-sample results of the whole sample list.

    Attributes:
        indices: ``[N]`` dataset indices of the evaluated samples, in evaluation order.
        samples: ``name -> tensor`` concatenated along the last dimension, in that order (CPU).
        cost: ``row -> Cost`` of this call's own work, summed over the ranks (resumed batches
            excluded; ``wall_time`` is then summed over the processes).
        counts: ``key -> name -> count`` summed over every batch.
        n_resumed: Samples whose results were loaded from the state.
        state_dir: The state folder (None without one).
        flags: Health flags of the run itself (``resumed`` when a state was used).
    """

    indices: Tensor
    samples: dict[str, Tensor]
    cost: dict[str, Cost]
    counts: dict[str, dict[str, int]]
    n_resumed: int = 0
    state_dir: Path | None = None
    flags: tuple[Flag, ...] = ()

    @property
    def n_examples(self) -> int:
        """Number of evaluated samples."""
        return int(self.indices.numel())


def data_size(data: DataLike) -> int:
    """Number of samples in a Dataset or an ``(x, y)`` tuple."""
    return len(data[0]) if isinstance(data, tuple) else len(data)


def select_samples(data: DataLike, n_examples: int | None, seed: int) -> Tensor:
    """Dataset indices to evaluate: all, or a fixed subset of ``n_examples`` chosen by ``seed``.

    Raises:
        ValueError: ``n_examples`` is not in ``[1, len(data)]``.
    """
    total = data_size(data)
    n = total if n_examples is None else int(n_examples)
    if not 0 < n <= total:
        raise ValueError(
            f"n_examples={n_examples} but the data has {total} samples; "
            f"pass 0 < n_examples <= {total}"
        )
    return sample_indices(total, n, seed) if n < total else torch.arange(total)


def load_batch(data: DataLike, ids: Tensor, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """``(x, y, ids)`` of the samples ``ids`` on ``device`` (labels as int64)."""
    x, y = tensors_of(data, ids)
    return x.to(device), y.to(device=device, dtype=torch.long), ids.to(device)


def run_evaluation(
    evaluation: Evaluation,
    model: nn.Module,
    data: DataLike,
    *,
    indices: Tensor | None = None,
    n_examples: int | None = None,
    batch_size: int = 500,
    seed: int = 0,
    device: str | torch.device | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    desc: str | None = None,
) -> EvaluationRun:
    """Run a kind of evaluation over a fixed sample list: sharded, resumable, with progress.

    Args:
        evaluation: The kind (a frozen plan of what runs on each batch).
        model: The evaluated model (its weights identify a stored state).
        data: A Dataset of ``(x, y)`` pairs or a tuple of tensors ``(x, y)``.
        indices: The fixed sample list (dataset indices); default :func:`select_samples`.
        n_examples: Size of the seeded subset when ``indices`` is not given (default: all).
        batch_size: Samples per batch; memory is bounded by it.
        seed: The evaluation seed (sample selection, per-batch global RNG, the kind's draws).
        device: Where to evaluate (default: the model's device).
        state_dir: Persist every finished batch here; the same call after a kill skips them.
        progress: Show a progress bar (rank 0 only).
        desc: The bar's label (default: the kind).

    Returns:
        An :class:`EvaluationRun`, the same on every rank.

    Raises:
        ValueError: A bad ``batch_size`` or ``n_examples``, ranks that disagree on the
            evaluation, or a ``state_dir`` of another evaluation
            (:class:`~robustbench_local.state.StateMismatchError`).
    """
    check_positive_int("batch_size", batch_size)
    indices = select_samples(data, n_examples, seed) if indices is None else indices.cpu()
    dev = resolve_device(device, model)
    world = distributed.setup(dev)
    store = _open_state(evaluation, model, data, indices, seed, state_dir, world)
    batches = plan_batches(*world.shard(len(indices)), batch_size, store)
    steps = sum(b.path is None for b in batches) * len(evaluation.rows())
    bar = Progress(steps, desc or evaluation.kind, progress and world.is_main)
    try:
        mine = []
        for b in batches:
            if b.path is not None and store is not None:
                shapes = evaluation.sample_shapes(b.hi - b.lo)
                mine.append(store.load(b.path, evaluation.rows(), shapes))
            else:
                mine.append(_compute(evaluation, model, data, indices, b, seed, dev, bar, store))
    finally:
        bar.close()
    records = _merge(distributed.gather_objects(mine), len(indices))
    return _collect(records, evaluation.rows(), indices, store)


def _open_state(
    evaluation: Evaluation,
    model: nn.Module,
    data: DataLike,
    indices: Tensor,
    seed: int,
    state_dir: str | os.PathLike[str] | None,
    world: distributed.World,
) -> EvalState | None:
    """The evaluation's resumable state (None without ``state_dir``); ranks checked alike.

    Raises:
        ValueError: The ranks evaluate different models, data or settings, or ``state_dir``
            holds another evaluation's state.
    """
    if state_dir is None and not world.distributed:
        return None
    first = tensors_of(data, indices[:FIRST_SAMPLES])
    fp = fingerprint(
        model, kind=evaluation.kind, total=data_size(data), indices=indices, first=first,
        seed=seed, config=evaluation.config(),
    )  # fmt: skip
    distributed.check_same(f"the {evaluation.kind} evaluation (model, samples, settings)", fp)
    return None if state_dir is None else EvalState.open(state_dir, fp)


def _compute(
    evaluation: Evaluation,
    model: nn.Module,
    data: DataLike,
    indices: Tensor,
    planned: PlannedBatch,
    seed: int,
    device: torch.device,
    bar: Progress,
    store: EvalState | None,
) -> BatchRecord:
    """Evaluate the samples at positions ``[lo, hi)``; save the record if there is a state.

    The global RNG (used by random models) is reseeded from (seed, lo), so the batch gives the
    same result whichever rank or call computes it.
    """
    lo, hi = planned.lo, planned.hi
    x, y, ids = load_batch(data, indices[lo:hi], device)
    torch.manual_seed(key_words(seed, ("batch", lo))[0])
    out = evaluation.evaluate(model, Batch(x, y, ids, lo, hi, seed), bar)
    record = BatchRecord(
        lo,
        hi,
        samples={k: v.detach().cpu() for k, v in out.samples.items()},
        cost={k: Cost.of(v) for k, v in out.cost.items()},
        counts={k: {m: int(c) for m, c in v.items()} for k, v in out.counts.items()},
    )
    record.check(evaluation.rows(), evaluation.sample_shapes(hi - lo))
    if store is not None:
        store.save(record)
    return record


def _merge(parts: Iterable[Sequence[BatchRecord]], n: int) -> list[BatchRecord]:
    """Every rank's records in sample-list order; checks they cover ``[0, n)`` exactly once.

    Raises:
        RuntimeError: Records overlap or leave a gap (a bug, never the user's input).
    """
    merged = sorted((r for part in parts for r in part), key=lambda r: r.lo)
    pos = 0
    for r in merged:
        if r.lo != pos:
            raise RuntimeError(f"gathered batches do not tile the sample list at position {pos}")
        pos = r.hi
    if pos != n:
        raise RuntimeError(f"gathered batches cover {pos} of {n} samples")
    return merged


def add_counts(parts: Iterable[Mapping[str, Mapping[str, int]]]) -> dict[str, dict[str, int]]:
    """Sum ``key -> name -> count`` mappings."""
    out: dict[str, dict[str, int]] = {}
    for part in parts:
        for key, members in part.items():
            into = out.setdefault(key, {})
            for name, n in members.items():
                into[name] = into.get(name, 0) + int(n)
    return out


def _collect(
    records: Sequence[BatchRecord], rows: Sequence[str], indices: Tensor, store: EvalState | None
) -> EvaluationRun:
    """The run of the merged records: results concatenated, this call's cost, the flags."""
    names = records[0].samples if records else {}
    samples = {k: torch.cat([r.samples[k] for r in records], dim=-1) for k in names}
    cost = {row: Cost() for row in rows}
    for r in records:
        if not r.resumed:
            for row, c in r.cost.items():
                cost[row] = cost[row] + c
    n_resumed = sum(r.n for r in records if r.resumed)
    flags = () if store is None else (_resume_flag(n_resumed, len(indices), store),)
    return EvaluationRun(
        indices=indices,
        samples=samples,
        cost=cost,
        counts=add_counts(r.counts for r in records),
        n_resumed=n_resumed,
        state_dir=None if store is None else store.root,
        flags=flags,
    )


def _resume_flag(loaded: int, total: int, store: EvalState) -> Flag:
    """An info flag: how much came from the state (the cost excludes it)."""
    return passed(
        "resumed",
        f"{loaded} of {total} samples were loaded from {store.root}; the cost counts only the "
        f"{total - loaded} samples evaluated by this call",
        loaded=loaded,
        total=total,
        state_dir=str(store.root),
    )


__all__ = [
    "FIRST_SAMPLES",
    "Batch",
    "BatchOutput",
    "Cost",
    "Evaluation",
    "EvaluationRun",
    "Progress",
    "add_counts",
    "data_size",
    "load_batch",
    "run_evaluation",
    "select_samples",
]
