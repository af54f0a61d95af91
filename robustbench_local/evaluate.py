"""Robustness curves: accuracy vs. perturbation budget, per attack and per-sample worst case.

Fixed-budget attacks (FGSM, PGD, APGD) run over the eps grid in increasing order and only on the
samples still robust at the previous eps: the balls are nested, so a sample broken at ``eps_i``
is broken at every larger eps. Minimum-norm attacks (CW) run once and are thresholded at every
eps. The data streams through in batches, so memory is bounded by the batch size; only boolean
robustness matrices are kept. A model whose forward pass is non-differentiable or random is
attacked twice, as it is (naive) and through BPDA/EOT (adaptive); the worst case takes both.

Honest by default: a gradient probe on the first samples decides the derived runs (margin loss,
straight-through, EOT: :mod:`robustbench_local.planning`), and the reference suite
(:mod:`robustbench_local.reference`) attacks the samples every run left standing, at the
headline eps (``reference="auto"``) or at every eps (``"all"``); its row and the
``weaker_than_reference`` flag (:mod:`robustbench_local.checks.reference`) say whether the
chosen attacks overestimate robustness. ``reference=False`` opts out, and the health says so.

:func:`robustness_curve` runs in four steps, each its own helper: select the samples and plan
the runs, evaluate every run (then the reference) per batch, assemble the
:class:`~robustbench_local.curve.Curve` (defined in :mod:`robustbench_local.curve`, re-exported
here), then the reference flag and the masking checks. Under ``torchrun`` the sample list is
sharded over the ranks (:mod:`robustbench_local.distributed`) and with ``state_dir`` every
finished batch is persisted (:mod:`robustbench_local.state`).

References:
    Carlini et al., "On Evaluating Adversarial Robustness", arXiv:1902.06705, 2019.
    Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018.
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

import attacks as atk_lib
from attacks.base import parse_eps
from attacks.rng import key_words
from attacks.validation import check_positive_int
from defenses.data import DataLike, model_device, tensors_of
from robustbench_local import distributed
from robustbench_local.checks import masking_checks, preflight
from robustbench_local.checks.gradients import gradient_probe
from robustbench_local.checks.reference import check_weaker_than_reference
from robustbench_local.curve import Curve, ReferenceRecord
from robustbench_local.data import sample_indices
from robustbench_local.health import ADAPTIVE_SUFFIX, Flag, raise_on_errors
from robustbench_local.planning import Run, attack_runs, plan_runs, reference_model
from robustbench_local.reference import (
    ReferenceArg,
    ReferenceSetting,
    reference_rows,
    resolve_reference,
)
from robustbench_local.state import (
    BatchResult,
    EvalState,
    PlannedBatch,
    add_counts,
    cost_of,
    fingerprint,
    merge_parts,
    plan_batches,
    resume_flag,
    run_plan,
)
from robustbench_local.strategies import CurveStrategy, get_strategy

logger = logging.getLogger(__name__)
FIRST_SAMPLES = 128
"""The global first samples (whatever the batch size or rank): the preflight checks them."""
MASKING_SAMPLES = 100
"""The gradient probe and the masking checks use the first this many of them."""
AttackSpec = Sequence[str | atk_lib.Attack] | Mapping[str, atk_lib.Attack | str]


def resolve_attacks(spec: AttackSpec, seed: int = 0) -> dict[str, atk_lib.Attack]:
    """Turn names, Attack instances or a ``label -> attack`` mapping into ``label -> Attack``.

    Raises:
        ValueError: An empty list, an unknown name (the registry lists the known ones), a
            duplicate label, or attacks with different norms.
    """
    items = spec.items() if isinstance(spec, Mapping) else [(None, a) for a in spec]
    out: dict[str, atk_lib.Attack] = {}
    for label, a in items:
        attack = atk_lib.create(a, seed=seed) if isinstance(a, str) else a
        if not isinstance(attack, atk_lib.Attack):
            raise TypeError(f"attacks must be names or Attack instances, got {type(a).__name__}")
        key = label or attack.name
        if key in out:
            raise ValueError(f"attack label {key!r} appears twice; pass a dict label -> attack")
        out[key] = attack
    if not out:
        raise ValueError("no attacks given: pass e.g. attacks=['fgsm', 'pgd']")
    if len({a.norm for a in out.values()}) > 1:
        raise ValueError("all attacks of one curve must share a norm; make one curve per norm")
    return out


def _validate_grid(eps: Any) -> list[float]:
    grid = parse_eps(eps)
    if any(b <= a for a, b in itertools.pairwise(grid)):
        raise ValueError(f"the eps grid must be strictly increasing, got {grid}")
    return grid


def _select_samples(data: DataLike, n_examples: int | None, seed: int) -> Tensor:
    """Dataset indices to evaluate: all, or a fixed subset of ``n_examples`` chosen by ``seed``.

    Raises:
        ValueError: ``n_examples`` is not in ``[1, len(data)]``.
    """
    total = len(data[0]) if isinstance(data, tuple) else len(data)
    n = total if n_examples is None else int(n_examples)
    if not 0 < n <= total:
        raise ValueError(
            f"n_examples={n_examples} but the data has {total} samples; "
            f"pass 0 < n_examples <= {total}"
        )
    return sample_indices(total, n, seed) if n < total else torch.arange(total)


def _load_batch(data: DataLike, ids: Tensor, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """``(x, y, ids)`` of the samples ``ids`` on ``device``.

    ``ids`` are the samples' dataset indices: every random draw of an attack derives from
    (seed, id), so a sample's result does not depend on the batch, rank or call it lands in.
    """
    x, y = tensors_of(data, ids)
    return x.to(device), y.to(device=device, dtype=torch.long), ids.to(device)


@dataclass
class _Tally:
    """What one batch adds up to: per-row robustness and cost, clean correctness, health.

    ``robust[label]`` is a list with one CPU ``bool [K, n_b]`` tensor per batch (True: still
    robust), ``clean`` one CPU ``bool [n_b]`` per batch, ``cost[label]`` sums ``wall_time``/
    ``n_forward``/``n_backward``, and ``broken_by`` sums the reference's
    ``eps -> member -> samples`` counts. :meth:`batch` turns it into the plain
    :class:`~robustbench_local.state.BatchResult` that is saved and gathered across ranks.
    """

    robust: dict[str, list[Tensor]]
    cost: dict[str, dict[str, float]]
    clean: list[Tensor] = field(default_factory=list)
    health: list[Flag] = field(default_factory=list)
    broken_by: dict[str, dict[str, int]] = field(default_factory=dict)

    @classmethod
    def start(cls, labels: Sequence[str]) -> _Tally:
        zero = {"wall_time": 0.0, "n_forward": 0, "n_backward": 0}
        return cls({label: [] for label in labels}, {label: dict(zero) for label in labels})

    def add(self, label: str, res: atk_lib.AttackResult) -> None:
        """Record one run's result on one batch."""
        self.record(label, ~res.success, res)

    def record(self, label: str, robust: Tensor, cost: Any) -> None:
        """Record a row's ``bool [K, n_b]`` robustness on one batch and its cost."""
        self.robust[label].append(robust.cpu())
        acc = self.cost[label]
        for key in acc:
            acc[key] += cost[key] if isinstance(cost, Mapping) else getattr(cost, key)

    def alive(self, labels: Sequence[str]) -> Tensor:
        """``bool [K, n_b]`` of the last batch: clean-correct and robust under every row."""
        out = self.clean[-1].unsqueeze(0).clone()
        for label in labels:
            out = out & self.robust[label][-1]
        return out

    def batch(self, lo: int, hi: int) -> BatchResult:
        """The tally of one batch (positions ``[lo, hi)``) as the plain per-batch structure."""
        robust = {k: torch.cat(v, dim=1) for k, v in self.robust.items()}
        return BatchResult(lo, hi, torch.cat(self.clean), robust, self.cost, counts=self.broken_by)

    @classmethod
    def of(
        cls, results: Sequence[BatchResult], labels: Sequence[str], health: list[Flag]
    ) -> _Tally:
        """The tally of every batch of the curve, in sample-list order."""
        robust = {k: [r.robust[k] for r in results] for k in labels}
        clean = [r.clean for r in results]
        counts = add_counts(r.counts for r in results)
        return cls(robust, cost_of(results, labels), clean, list(health), counts)


@dataclass
class _Plan:
    """What a curve runs: its rows, the reference (if it runs) and the model it attacks."""

    runs: list[Run]
    reference: ReferenceSetting
    reference_model: nn.Module
    reference_target: str
    strategy: CurveStrategy

    @property
    def labels(self) -> list[str]:
        """Every row label, the reference's last."""
        ref = self.reference
        extra = [ref.label] if ref.suite is not None and ref.label is not None else []
        return [r.label for r in self.runs] + extra

    def configs(self) -> dict[str, Any]:
        """Every row's attack configuration (the reference's included)."""
        how = self.strategy.config()
        out: dict[str, Any] = {r.label: {**r.attack.config(), "strategy": how} for r in self.runs}
        if self.reference.suite is not None and self.reference.label is not None:
            out[self.reference.label] = self.reference.config
        return out


def robustness_curve(
    model: nn.Module,
    data: Dataset | tuple[Tensor, Tensor],
    attacks: AttackSpec,
    eps: Sequence[float] | float,
    *,
    n_examples: int | None = None,
    batch_size: int = 500,
    seed: int = 0,
    device: str | torch.device | None = None,
    adaptive: bool | str = "auto",
    checks: bool = True,
    progress: bool = True,
    check_kwargs: Mapping[str, Any] | None = None,
    reference: ReferenceArg = "auto",
    headline_eps: float | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    strategy: str | CurveStrategy = "auto",
) -> Curve:
    """Evaluate robust accuracy over an eps grid for each attack and their worst case.

    Args:
        model: A classifier obeying the model contract (inputs in [0, 1], logits out).
        data: A dataset of ``(x, y)`` pairs or a tuple of tensors ``(x, y)``.
        attacks: Attack names, Attack instances, or a ``label -> attack`` mapping.
        eps: The budget grid, strictly increasing.
        n_examples: Evaluate a fixed seeded subset of this size (default: all samples).
        batch_size: Samples per batch; memory is bounded by it.
        seed: Seeds the sample selection, attacks built from names, and global RNGs.
        device: Where to evaluate (default: the model's device).
        adaptive: ``"auto"`` adds BPDA/EOT runs for non-differentiable or random models and
            the runs the gradient probe calls for (margin loss, straight-through, EOT);
            ``False`` runs the chosen attacks only.
        checks: Run the preflight (before attacking) and gradient-masking checks (after).
        progress: Show a progress bar.
        check_kwargs: Extra keyword arguments for ``checks.masking_checks``.
        strategy: How each attack covers the grid (:mod:`robustbench_local.strategies`):
            ``"auto"``, ``"nested"``, ``"descent"`` or a ``CurveStrategy``.
        reference: ``"auto"`` (default): the reference suite, at its full budgets, on the
            samples every run left standing at the headline eps; ``"all"``: at every eps;
            ``False``: none (the health says so); an Attack (e.g. a reduced
            ``standard_suite(...)``): that attack as the reference, labelled "reduced" unless
            it is the full suite.
        headline_eps: The eps of the headline number (on the grid; default the largest).
        state_dir: Persist every finished batch here; the same call after a kill skips them
            (:mod:`robustbench_local.state`). A state of another evaluation is refused.

    Under ``torchrun`` (or an initialised process group) every rank attacks its contiguous
    slice of the sample list and every rank returns the same merged curve: per-sample results
    in the original order, costs summed over the ranks (``wall_time`` is then the attack time
    summed over the processes, not the elapsed time). The preflight, the gradient probe and
    the masking checks run once, on rank 0, on the global first samples, and are broadcast.

    Returns:
        A :class:`Curve`; its ``reference`` row holds the worst case with the reference.

    Raises:
        ValueError: Bad eps grid or headline eps, ``n_examples`` larger than the data, no
            attacks, a bad ``reference``, a model that fails the preflight (e.g. it returns
            probabilities), ranks that disagree on the evaluation, or a ``state_dir`` of
            another evaluation.
    """
    grid = _validate_grid(eps)
    sweep = get_strategy(strategy)
    attack_map = resolve_attacks(attacks, seed)
    check_positive_int("batch_size", batch_size)
    indices = _select_samples(data, n_examples, seed)
    setting = resolve_reference(reference, attack_map, grid, headline_eps, seed)
    dev = torch.device(device) if device is not None else model_device(model)
    world = distributed.setup(dev)
    torch.manual_seed(seed)
    first = _load_batch(data, indices[:FIRST_SAMPLES], dev)[:2]
    x0, y0 = (t[:MASKING_SAMPLES] for t in first)
    health = distributed.decide_once(_preflight, model, *first, attack_map) if checks else []
    plan = _plan(model, attack_map, adaptive, setting, x0, y0, sweep)
    store = _open_state(state_dir, world, model, data, indices, first, grid, plan, seed)
    batches = plan_batches(*world.shard(len(indices)), batch_size, store)
    with _progress_bar(batches, plan.labels, progress and world.is_main) as bar:
        attack = partial(_attack_batch, model, plan, data, indices, grid, dev, seed, bar)
        mine = run_plan(batches, attack, store, plan.labels, len(grid))
    results = merge_parts(distributed.gather_objects(mine), len(indices))
    curve = _assemble(_Tally.of(results, plan.labels, health), plan, grid, indices, seed)
    if store is not None:
        curve.health.append(resume_flag(results, store))
    curve.health.append(check_weaker_than_reference(curve))
    if checks:
        kw = check_kwargs or {}
        curve.health += distributed.decide_once(
            masking_checks, curve, model, x0, y0, attack_map, **kw
        )
    if world.is_main:
        logger.info("robustness curve done:\n%s", curve.table())
    return curve


def _plan(
    model: nn.Module,
    attack_map: Mapping[str, atk_lib.Attack],
    adaptive: bool | str,
    setting: ReferenceSetting,
    x: Tensor,
    y: Tensor,
    strategy: CurveStrategy,
) -> _Plan:
    """Probe the gradients on the first samples (once, on rank 0) and plan the rows."""
    report = distributed.decide_once(gradient_probe, model, x, y)
    logger.debug("gradient probe: %s", report)
    runs = plan_runs(model, attack_map, adaptive, report)
    ref_model, target = reference_model(model, adaptive, report)
    return _Plan(runs, setting, ref_model, target, strategy)


def _open_state(
    state_dir: str | os.PathLike[str] | None,
    world: distributed.World,
    model: nn.Module,
    data: DataLike,
    indices: Tensor,
    first: Sequence[Tensor],
    grid: list[float],
    plan: _Plan,
    seed: int,
) -> EvalState | None:
    """The evaluation's resumable state (None without ``state_dir``); ranks checked alike.

    Raises:
        ValueError: The ranks evaluate different models, data or settings, or ``state_dir``
            holds another evaluation's state.
    """
    if state_dir is None and not world.distributed:
        return None
    total = len(data[0]) if isinstance(data, tuple) else len(data)
    fp = fingerprint(
        model, total=total, indices=indices, first=first, eps=grid, configs=plan.configs(),
        seed=seed,
    )  # fmt: skip
    distributed.check_same("the evaluation (model weights, samples, eps, attacks, seed)", fp)
    return None if state_dir is None else EvalState.open(state_dir, fp)


def _progress_bar(batches: Sequence[PlannedBatch], labels: Sequence[str], show: bool) -> tqdm:
    """A bar over every (batch, row) pair this process attacks."""
    total = sum(b.path is None for b in batches) * len(labels)
    return tqdm(total=total, desc="robustness curve", disable=not show, leave=False)


def _attack_batch(
    model: nn.Module,
    plan: _Plan,
    data: DataLike,
    indices: Tensor,
    grid: list[float],
    device: torch.device,
    seed: int,
    bar: tqdm,
    lo: int,
    hi: int,
) -> BatchResult:
    """Attack the samples at positions ``[lo, hi)`` of the sample list with every row.

    The global RNG (used by random models and EOT) is reseeded from (seed, lo), so the batch
    gives the same result whichever rank or call attacks it.
    """
    x, y, ids = _load_batch(data, indices[lo:hi], device)
    torch.manual_seed(key_words(seed, ("batch", lo))[0])
    tally = _Tally.start(plan.labels)
    _evaluate_batch(model, plan.runs, x, y, ids, grid, tally, bar, plan.strategy)
    _reference_batch(plan, x, y, ids, grid, tally, bar)
    return tally.batch(lo, hi)


def _reference_batch(
    plan: _Plan,
    x: Tensor,
    y: Tensor,
    ids: Tensor,
    grid: list[float],
    tally: _Tally,
    bar: tqdm,
) -> None:
    """The reference suite on the samples every run of this batch left standing."""
    ref = plan.reference
    if ref.suite is None or ref.label is None:
        return
    bar.set_postfix_str(ref.label)
    alive = tally.alive([r.label for r in plan.runs])
    rows = reference_rows(ref.suite, plan.reference_model, x, y, ids, grid, ref.ran, alive)
    tally.record(ref.label, rows.robust, rows.cost)
    tally.broken_by = add_counts([tally.broken_by, rows.broken_by])
    bar.update()


def _preflight(
    model: nn.Module, x: Tensor, y: Tensor, attack_map: Mapping[str, atk_lib.Attack]
) -> list[Flag]:
    """Run the preflight checks on the global first samples; raise on an error-level failure."""
    flags = preflight(model, x, y, next(iter(attack_map.values())).bounds)
    raise_on_errors(flags)
    return flags


def _evaluate_batch(
    model: nn.Module,
    runs: Sequence[Run],
    x: Tensor,
    y: Tensor,
    ids: Tensor,
    grid: list[float],
    tally: _Tally,
    bar: tqdm,
    sweep: CurveStrategy | str = "auto",
) -> None:
    """Clean correctness and every run's attack over the whole grid on one batch."""
    with atk_lib.model_guard(model, eval_mode=True), torch.no_grad():
        tally.clean.append((model(x).argmax(1) == y).cpu())
    for run in runs:
        bar.set_postfix_str(run.label)
        tally.add(run.label, get_strategy(sweep)(run.attack, run.model, x, y, grid, ids))
        bar.update()


def _assemble(tally: _Tally, plan: _Plan, grid: list[float], indices: Tensor, seed: int) -> Curve:
    """The curve of the batches' results (health: the preflight's flags so far)."""
    ref = plan.reference
    configs = {r.label: r.attack.config() for r in plan.runs}
    why = {r.label: r.why for r in plan.runs}
    if ref.suite is not None and ref.label is not None:
        configs[ref.label] = ref.config
        why[ref.label] = "the reference suite, on the samples every run left standing"
    record = ReferenceRecord(
        label=ref.label,
        mode=ref.mode,
        reduced=ref.reduced,
        ran=list(ref.ran),
        shared=ref.shared,
        model=plan.reference_target,
        config=ref.config,
        broken_by=tally.broken_by,
    )
    return Curve(
        eps=torch.tensor(grid, dtype=torch.float64),
        attacks=plan.labels,
        robust={k: torch.cat(v, dim=1) for k, v in tally.robust.items()},
        clean_correct=torch.cat(tally.clean),
        indices=indices,
        cost=tally.cost,
        seed=seed,
        norm=plan.runs[0].attack.norm.value,
        health=list(tally.health),
        attack_configs=configs,
        reference=record,
        why=why,
    )


__all__ = [
    "ADAPTIVE_SUFFIX",
    "Curve",
    "Run",
    "attack_runs",
    "plan_runs",
    "resolve_attacks",
    "robustness_curve",
]
