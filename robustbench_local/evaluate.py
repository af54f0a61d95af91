"""Robustness curves: accuracy vs. perturbation budget, per attack and per-sample worst case.

Fixed-budget attacks (FGSM, PGD, APGD) run over the eps grid in increasing order and only on the
samples still robust at the previous eps: the balls are nested, so a sample broken at ``eps_i``
is broken at every larger eps. Minimum-norm attacks (CW) run once and are thresholded at every
eps. The data streams through in batches, so memory is bounded by the batch size; only boolean
robustness matrices are kept. A model whose forward pass is non-differentiable or random is
attacked twice, as it is (naive) and through BPDA/EOT (adaptive); the worst case takes both.

:func:`robustness_curve` runs in four steps, each its own helper: select the samples, evaluate
every attack run per batch, assemble the :class:`~robustbench_local.curve.Curve` (defined in
:mod:`robustbench_local.curve`, re-exported here), then the masking checks.

References:
    Carlini et al., "On Evaluating Adversarial Robustness", arXiv:1902.06705, 2019.
    Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

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
from robustbench_local.curve import Curve
from robustbench_local.data import sample_indices
from robustbench_local.health import ADAPTIVE_SUFFIX, Flag, raise_on_errors
from robustbench_local.state import (
    BatchResult,
    EvalState,
    PlannedBatch,
    cost_of,
    fingerprint,
    merge_parts,
    plan_batches,
    resume_flag,
    run_plan,
)

logger = logging.getLogger(__name__)
FIRST_SAMPLES = 128
"""The global first samples (whatever the batch size or rank): the preflight checks them."""
MASKING_SAMPLES = 100
"""The masking checks attack the first this many of them."""
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


class Run(NamedTuple):
    """One row of a curve: an attack and the model it attacks (the BPDA/EOT one if adaptive)."""

    label: str
    attack: atk_lib.Attack
    model: nn.Module


def attack_runs(
    model: nn.Module, attacks: Mapping[str, atk_lib.Attack], adaptive: bool | str = "auto"
) -> list[Run]:
    """The runs of a curve: every attack on the model, plus adaptive runs where needed.

    Raises:
        ValueError: ``adaptive`` is not True, False or ``"auto"``.
    """
    if adaptive not in (True, False, "auto"):
        raise ValueError(f"adaptive must be True, False or 'auto', got {adaptive!r}")
    use = adaptive is True or (adaptive == "auto" and atk_lib.needs_adaptive(model))
    out = [Run(label, a, model) for label, a in attacks.items()]
    if use:
        wrapped = atk_lib.adaptive_model(model)
        out += [Run(f"{label}{ADAPTIVE_SUFFIX}", a, wrapped) for label, a in attacks.items()]
    return out


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
    """What the batches add up to: per-run robustness and cost, clean correctness, health."""

    robust: dict[str, list[Tensor]]
    cost: dict[str, dict[str, float]]
    clean: list[Tensor] = field(default_factory=list)
    health: list[Flag] = field(default_factory=list)

    @classmethod
    def start(cls, runs: Sequence[Run]) -> _Tally:
        zero = {"wall_time": 0.0, "n_forward": 0, "n_backward": 0}
        return cls({r.label: [] for r in runs}, {r.label: dict(zero) for r in runs})

    def add(self, label: str, res: atk_lib.AttackResult) -> None:
        """Record one run's result on one batch."""
        self.robust[label].append((~res.success).cpu())
        acc = self.cost[label]
        acc["wall_time"] += res.wall_time
        acc["n_forward"] += res.n_forward
        acc["n_backward"] += res.n_backward

    def batch(self, lo: int, hi: int) -> BatchResult:
        """The tally of one batch (positions ``[lo, hi)``) as the plain per-batch structure."""
        robust = {k: torch.cat(v, dim=1) for k, v in self.robust.items()}
        return BatchResult(lo, hi, torch.cat(self.clean), robust, self.cost)

    @classmethod
    def of(cls, results: Sequence[BatchResult], runs: Sequence[Run], health: list[Flag]) -> _Tally:
        """The tally of every batch of the curve, in sample-list order."""
        labels = [r.label for r in runs]
        robust = {k: [r.robust[k] for r in results] for k in labels}
        clean = [r.clean for r in results]
        return cls(robust, cost_of(results, labels), clean, list(health))


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
    state_dir: str | os.PathLike[str] | None = None,
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
        adaptive: ``"auto"`` adds BPDA/EOT runs for non-differentiable or random models.
        checks: Run the preflight (before attacking) and gradient-masking checks (after).
        progress: Show a progress bar.
        check_kwargs: Extra keyword arguments for ``checks.masking_checks``.
        state_dir: Persist every finished batch here; the same call after a kill skips them
            (:mod:`robustbench_local.state`). A state of another evaluation is refused.

    Under ``torchrun`` (or an initialised process group) every rank attacks its contiguous
    slice of the sample list and every rank returns the same merged curve: per-sample results
    in the original order, costs summed over the ranks (``wall_time`` is then the attack time
    summed over the processes, not the elapsed time). The preflight and the masking checks run
    once, on rank 0, on the global first samples, and are broadcast.

    Returns:
        A :class:`Curve`.

    Raises:
        ValueError: Bad eps grid, ``n_examples`` larger than the data, no attacks, a model
            that fails the preflight (e.g. it returns probabilities), ranks that disagree on
            the evaluation, or a ``state_dir`` of another evaluation.
    """
    grid = _validate_grid(eps)
    attack_map = resolve_attacks(attacks, seed)
    check_positive_int("batch_size", batch_size)
    indices = _select_samples(data, n_examples, seed)
    runs = attack_runs(model, attack_map, adaptive)
    dev = torch.device(device) if device is not None else model_device(model)
    world = distributed.setup(dev)
    torch.manual_seed(seed)
    first = _load_batch(data, indices[:FIRST_SAMPLES], dev)[:2]
    health = distributed.decide_once(_preflight, model, *first, attack_map) if checks else []
    store = _open_state(state_dir, world, model, data, indices, first, grid, runs, seed)
    plan = plan_batches(*world.shard(len(indices)), batch_size, store)
    with _progress_bar(plan, runs, progress and world.is_main) as bar:
        attack = partial(_attack_batch, model, runs, data, indices, grid, dev, seed, bar)
        mine = run_plan(plan, attack, store, [r.label for r in runs], len(grid))
    results = merge_parts(distributed.gather_objects(mine), len(indices))
    curve = _assemble(_Tally.of(results, runs, health), runs, grid, indices, seed)
    if store is not None:
        curve.health.append(resume_flag(results, store))
    if checks:
        x0, y0 = (t[:MASKING_SAMPLES] for t in first)
        kw = check_kwargs or {}
        curve.health += distributed.decide_once(
            masking_checks, curve, model, x0, y0, attack_map, **kw
        )
    if world.is_main:
        logger.info("robustness curve done:\n%s", curve.table())
    return curve


def _open_state(
    state_dir: str | os.PathLike[str] | None,
    world: distributed.World,
    model: nn.Module,
    data: DataLike,
    indices: Tensor,
    first: Sequence[Tensor],
    grid: list[float],
    runs: Sequence[Run],
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
    configs = {r.label: r.attack.config() for r in runs}
    fp = fingerprint(
        model, total=total, indices=indices, first=first, eps=grid, configs=configs, seed=seed
    )
    distributed.check_same("the evaluation (model weights, samples, eps, attacks, seed)", fp)
    return None if state_dir is None else EvalState.open(state_dir, fp)


def _progress_bar(plan: Sequence[PlannedBatch], runs: Sequence[Run], show: bool) -> tqdm:
    """A bar over every (batch, run) pair this process attacks."""
    total = sum(b.path is None for b in plan) * len(runs)
    return tqdm(total=total, desc="robustness curve", disable=not show, leave=False)


def _attack_batch(
    model: nn.Module,
    runs: Sequence[Run],
    data: DataLike,
    indices: Tensor,
    grid: list[float],
    device: torch.device,
    seed: int,
    bar: tqdm,
    lo: int,
    hi: int,
) -> BatchResult:
    """Attack the samples at positions ``[lo, hi)`` of the sample list with every run.

    The global RNG (used by random models and EOT) is reseeded from (seed, lo), so the batch
    gives the same result whichever rank or call attacks it.
    """
    x, y, ids = _load_batch(data, indices[lo:hi], device)
    torch.manual_seed(key_words(seed, ("batch", lo))[0])
    tally = _Tally.start(runs)
    _evaluate_batch(model, runs, x, y, ids, grid, tally, bar)
    return tally.batch(lo, hi)


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
) -> None:
    """Clean correctness and every run's attack over the whole grid on one batch."""
    with atk_lib.model_guard(model, eval_mode=True), torch.no_grad():
        tally.clean.append((model(x).argmax(1) == y).cpu())
    for run in runs:
        bar.set_postfix_str(run.label)
        tally.add(run.label, run.attack(run.model, x, y, eps=grid, ids=ids))
        bar.update()


def _assemble(
    tally: _Tally, runs: Sequence[Run], grid: list[float], indices: Tensor, seed: int
) -> Curve:
    """The curve of the batches' results (health: the preflight's flags so far)."""
    return Curve(
        eps=torch.tensor(grid, dtype=torch.float64),
        attacks=[r.label for r in runs],
        robust={k: torch.cat(v, dim=1) for k, v in tally.robust.items()},
        clean_correct=torch.cat(tally.clean),
        indices=indices,
        cost=tally.cost,
        seed=seed,
        norm=runs[0].attack.norm.value,
        health=list(tally.health),
        attack_configs={r.label: r.attack.config() for r in runs},
    )


__all__ = ["ADAPTIVE_SUFFIX", "Curve", "Run", "attack_runs", "resolve_attacks", "robustness_curve"]
