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

:func:`robustness_curve` is one straight path: check the arguments and select the samples, run
the preflight and the gradient probe on the first samples, freeze the plan (:class:`CurvePlan`:
the rows, the grid, the strategy and the reference), hand it to the evaluation engine
(:func:`robustbench_local.engine.run_evaluation`: batches with fixed sample ids, sharded over
the ranks, resumed from ``state_dir``, with progress and cost), and build the
:class:`~robustbench_local.curve.Curve` once from the engine's per-sample results, its health
(preflight, resume, the reference flag, the masking checks) included.

References:
    Carlini et al., "On Evaluating Adversarial Robustness", arXiv:1902.06705, 2019.
    Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018.
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

import attacks as atk_lib
from attacks.base import parse_eps
from attacks.result import Cost
from attacks.validation import check_positive_int
from defenses.data import DataLike
from robustbench_local import distributed
from robustbench_local.checks import masking_checks, preflight
from robustbench_local.checks.certificates import check_certificates
from robustbench_local.checks.gradients import gradient_probe
from robustbench_local.checks.reference import check_weaker_than_reference
from robustbench_local.curve import Curve
from robustbench_local.engine import (
    FIRST_SAMPLES,
    Batch,
    BatchOutput,
    Evaluation,
    EvaluationRun,
    Progress,
    load_batch,
    run_evaluation,
    select_samples,
)
from robustbench_local.health import ADAPTIVE_SUFFIX, Flag, raise_on_errors
from robustbench_local.inputs import check_eval_inputs, resolve_device
from robustbench_local.planning import Run, attack_runs, plan_runs, reference_model
from robustbench_local.reference import (
    ReferenceArg,
    ReferenceRecord,
    reference_rows,
    resolve_reference,
)
from robustbench_local.strategies import CurveStrategy, get_strategy

if TYPE_CHECKING:
    from robustbench_local.certify.curve import CertifiedCurve

logger = logging.getLogger(__name__)
MASKING_SAMPLES = 100
"""The gradient probe and the masking checks use the first this many samples."""
CLEAN = "clean"
ROBUST = "robust/"
"""Per-sample result names of a curve's batches: ``clean`` and ``robust/<row>``."""
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


@dataclass(frozen=True)
class CurvePlan(Evaluation):
    """What a robustness curve runs on every batch: the engine's attack kind, frozen.

    Attributes:
        runs: The rows: the chosen attacks and their derived runs (:mod:`.planning`).
        grid: The eps grid, strictly increasing.
        strategy: How each attack covers the grid (:mod:`.strategies`).
        reference: The reference suite's record (its ``suite`` runs unless off or shared).
        reference_model: The model the reference attacks.
    """

    kind: ClassVar[str] = "attacks"
    runs: tuple[Run, ...]
    grid: tuple[float, ...]
    strategy: CurveStrategy
    reference: ReferenceRecord
    reference_model: nn.Module

    def rows(self) -> list[str]:
        """Every row label, the reference's last (when it runs)."""
        ref = self.reference
        return [r.label for r in self.runs] + ([ref.label] if ref.runs and ref.label else [])

    def configs(self) -> dict[str, Any]:
        """Every row's configuration (the one home: the state and the curve both record it)."""
        how = self.strategy.config()
        out: dict[str, Any] = {r.label: {**r.attack.config(), "strategy": how} for r in self.runs}
        if self.reference.runs and self.reference.label is not None:
            out[self.reference.label] = self.reference.config
        return out

    def config(self) -> dict[str, Any]:
        """The eps grid and every row's configuration (the state fingerprint)."""
        return {"eps": list(self.grid), "attacks": self.configs()}

    def sample_shapes(self, n: int) -> dict[str, tuple[int, ...]]:
        """``clean`` ``[n]`` and ``robust/<row>`` ``[K, n]``."""
        k = len(self.grid)
        return {CLEAN: (n,), **{f"{ROBUST}{label}": (k, n) for label in self.rows()}}

    def evaluate(self, model: nn.Module, batch: Batch, progress: Progress) -> BatchOutput:
        """Clean correctness, every row over the whole grid, then the reference on survivors."""
        x, y, ids = batch.x, batch.y, batch.ids
        with atk_lib.model_guard(model, eval_mode=True), torch.no_grad():
            clean = model(x).argmax(1) == y
        robust: dict[str, Tensor] = {}
        cost: dict[str, Cost] = {}
        for run in self.runs:
            with progress.row(run.label):
                res = self.strategy(run.attack, run.model, x, y, list(self.grid), ids)
            robust[run.label], cost[run.label] = ~res.success, Cost.of(res)
        counts: dict[str, dict[str, int]] = {}
        ref = self.reference
        if ref.runs and ref.suite is not None and ref.label is not None:
            alive = clean.unsqueeze(0) & torch.stack(list(robust.values())).all(0)
            with progress.row(ref.label):
                rows = reference_rows(
                    ref.suite, self.reference_model, x, y, ids, self.grid, ref.ran, alive
                )
            robust[ref.label], cost[ref.label], counts = rows.robust, rows.cost, rows.broken_by
        samples = {CLEAN: clean, **{f"{ROBUST}{k}": v for k, v in robust.items()}}
        return BatchOutput(samples, cost, counts)

    def curve(self, run: EvaluationRun, seed: int, health: Sequence[Flag]) -> Curve:
        """The curve of the engine's results (its health as given)."""
        why = {r.label: r.why for r in self.runs}
        ref = self.reference
        if ref.runs and ref.label is not None:
            why[ref.label] = "the reference suite, on the samples every run left standing"
        return Curve(
            eps=torch.tensor(self.grid, dtype=torch.float64),
            attacks=self.rows(),
            robust={label: run.samples[f"{ROBUST}{label}"] for label in self.rows()},
            clean_correct=run.samples[CLEAN],
            indices=run.indices,
            cost={label: c.to_dict() for label, c in run.cost.items()},
            seed=seed,
            norm=self.runs[0].attack.norm.value,
            health=list(health),
            attack_configs=self.configs(),
            reference=dataclasses.replace(ref, broken_by=run.counts),
            why=why,
        )


def robustness_curve(
    model: nn.Module,
    data: Dataset | tuple[Any, Any],
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
    certify: str | Mapping[str, Any] | None = None,
) -> Curve:
    """Evaluate robust accuracy over an eps grid for each attack and their worst case.

    Args:
        model: A classifier obeying the model contract (inputs in [0, 1], logits out).
        data: A dataset of ``(x, y)`` pairs, or ``(x, y)`` tensors or numpy arrays (e.g.
            ``load_dataset(...)[1]``, ``(x_test, y_test)``).
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
        certify: Also certify the same samples on the same grid and norm: a method name
            (``"ibp"``, ``"crown"``, ``"milp"``, ``"smoothing"``) or a mapping
            ``{"method": ..., **settings}`` (e.g. ``{"method": "smoothing", "sigma": 0.25}``);
            the curve gets a ``certified (<method>)`` row (:attr:`Curve.certified`), a lower
            bound beside the attacks' upper bound, and the ``certificate_violated`` flag
            (an error) where a certified sample is broken by an attack. Smoothing certifies
            the smoothed classifier, not the model, and its row says so.

    Under ``torchrun`` (or an initialised process group) every rank attacks its contiguous
    slice of the sample list and every rank returns the same merged curve: per-sample results
    in the original order, costs summed over the ranks (``wall_time`` is then the attack time
    summed over the processes, not the elapsed time). The preflight, the gradient probe and
    the masking checks run once, on rank 0, on the global first samples, and are broadcast.

    Returns:
        A :class:`Curve`; its ``reference`` row holds the worst case with the reference.

    Raises:
        ValueError: Inputs the model cannot take or in the wrong units (uint8 or float64
            images, another layout or channel count, float or out-of-range labels, outputs
            that are not logits, ``eps=8`` on [0, 1] inputs: the message says what to do; see
            :func:`robustbench_local.inputs.check_eval_inputs`), a device that is not here,
            bad eps grid or headline eps, ``n_examples`` larger than the data, no
            attacks, a bad ``reference``, a model that fails the preflight (e.g. it returns
            probabilities), ranks that disagree on the evaluation, or a ``state_dir`` of
            another evaluation.
    """
    grid = _validate_grid(eps)
    sweep = get_strategy(strategy)
    attack_map = resolve_attacks(attacks, seed)
    check_positive_int("batch_size", batch_size)
    dev = resolve_device(device, model)
    first_attack = next(iter(attack_map.values()))
    data = check_eval_inputs(model, data, grid, first_attack.norm, first_attack.bounds).data
    indices = select_samples(data, n_examples, seed)
    record = resolve_reference(reference, attack_map, grid, headline_eps, seed)
    world = distributed.setup(dev)
    torch.manual_seed(seed)
    first = load_batch(data, indices[:FIRST_SAMPLES], dev)[:2]
    x0, y0 = (t[:MASKING_SAMPLES] for t in first)
    health = distributed.decide_once(_preflight, model, *first, attack_map) if checks else []
    plan = plan_curve(model, attack_map, adaptive, record, x0, y0, sweep, grid)
    run = run_evaluation(
        plan, model, data, indices=indices, batch_size=batch_size, seed=seed, device=dev,
        state_dir=state_dir, progress=progress, desc="robustness curve",
    )  # fmt: skip
    certified = _certified_row(
        certify, model, data, indices, grid, first_attack, seed, batch_size, dev, state_dir,
        progress,
    )  # fmt: skip
    draft = dataclasses.replace(plan.curve(run, seed, [*health, *run.flags]), certified=certified)
    health = [*draft.health, check_weaker_than_reference(draft)]
    if certified is not None:
        health.append(check_certificates(draft))
    if checks:
        kw = check_kwargs or {}
        health += distributed.decide_once(masking_checks, draft, model, x0, y0, attack_map, **kw)
    curve = dataclasses.replace(draft, health=health)
    if world.is_main:
        logger.info("robustness curve done:\n%s", curve.table())
    return curve


def _certified_row(
    spec: str | Mapping[str, Any] | None,
    model: nn.Module,
    data: DataLike,
    indices: Tensor,
    grid: Sequence[float],
    attack: atk_lib.Attack,
    seed: int,
    batch_size: int,
    device: torch.device,
    state_dir: str | os.PathLike[str] | None,
    progress: bool,
) -> CertifiedCurve | None:
    """The certificates of the curve's samples on its grid and norm (None without ``spec``).

    Raises:
        ValueError: A spec that is neither a method name nor a mapping with ``method``, or a
            method that does not certify the curve's norm (the message names one that does).
    """
    if spec is None or spec is False:
        return None
    from robustbench_local.certify.api import CertifyEvaluation, curve_of_run
    from robustbench_local.certify.base import create_certifier

    if isinstance(spec, str):
        method, settings = spec, {}
    elif isinstance(spec, Mapping) and "method" in spec:
        method, settings = str(spec["method"]), {k: v for k, v in spec.items() if k != "method"}
    else:
        raise ValueError(
            "certify must be a method name ('ibp', 'crown', 'milp', 'smoothing') or a mapping "
            f"such as {{'method': 'smoothing', 'sigma': 0.25}}, got {spec!r}"
        )
    certifier = create_certifier(method, norm=attack.norm.value, bounds=attack.bounds, **settings)
    kind = CertifyEvaluation(certifier, grid)
    run = run_evaluation(
        kind, model, data, indices=indices, batch_size=batch_size, seed=seed, device=device,
        state_dir=None if state_dir is None else Path(state_dir) / "certify",
        progress=progress, desc=f"certify ({method})",
    )  # fmt: skip
    return curve_of_run(run, kind, seed)


def plan_curve(
    model: nn.Module,
    attack_map: Mapping[str, atk_lib.Attack],
    adaptive: bool | str,
    reference: ReferenceRecord,
    x: Tensor,
    y: Tensor,
    strategy: CurveStrategy,
    grid: Sequence[float],
) -> CurvePlan:
    """Probe the gradients on the first samples (once, on rank 0) and freeze the curve's plan."""
    report = distributed.decide_once(gradient_probe, model, x, y)
    logger.debug("gradient probe: %s", report)
    runs = plan_runs(model, attack_map, adaptive, report)
    ref_model, target = reference_model(model, adaptive, report)
    record = dataclasses.replace(reference, model=target)
    return CurvePlan(tuple(runs), tuple(float(e) for e in grid), strategy, record, ref_model)


def _preflight(
    model: nn.Module, x: Tensor, y: Tensor, attack_map: Mapping[str, atk_lib.Attack]
) -> list[Flag]:
    """Run the preflight checks on the global first samples; raise on an error-level failure."""
    flags = preflight(model, x, y, next(iter(attack_map.values())).bounds)
    raise_on_errors(flags)
    return flags


__all__ = [
    "ADAPTIVE_SUFFIX",
    "Curve",
    "CurvePlan",
    "DataLike",
    "Run",
    "attack_runs",
    "plan_curve",
    "plan_runs",
    "resolve_attacks",
    "robustness_curve",
]
