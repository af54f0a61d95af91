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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

import attacks as atk_lib
from attacks.base import parse_eps
from attacks.validation import check_positive_int
from defenses.data import DataLike, model_device, tensors_of
from robustbench_local.checks import masking_checks, preflight
from robustbench_local.curve import Curve
from robustbench_local.data import sample_indices
from robustbench_local.health import ADAPTIVE_SUFFIX, Flag, raise_on_errors
from robustbench_local.strategies import CurveStrategy, get_strategy

logger = logging.getLogger(__name__)
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


def _batches(
    data: DataLike, indices: Tensor, batch_size: int, device: torch.device
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Yield ``(x, y, ids)`` batches of the selected samples on ``device``, one at a time.

    ``ids`` are the samples' dataset indices: every random draw of an attack derives from
    (seed, id), so a sample's result does not depend on the batch it lands in.
    """
    for chunk in indices.split(batch_size):
        x, y = tensors_of(data, chunk)
        yield x.to(device), y.to(device=device, dtype=torch.long), chunk.to(device)


@dataclass
class _Tally:
    """What the batches add up to: per-run robustness and cost, clean correctness, health."""

    robust: dict[str, list[Tensor]]
    cost: dict[str, dict[str, float]]
    clean: list[Tensor] = field(default_factory=list)
    health: list[Flag] = field(default_factory=list)
    first: tuple[Tensor, Tensor] | None = None

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
        adaptive: ``"auto"`` adds BPDA/EOT runs for non-differentiable or random models.
        checks: Run the preflight (before attacking) and gradient-masking checks (after).
        progress: Show a progress bar.
        check_kwargs: Extra keyword arguments for ``checks.masking_checks``.
        strategy: How each attack covers the grid (:mod:`robustbench_local.strategies`):
            ``"auto"``, ``"nested"``, ``"descent"`` or a ``CurveStrategy``.

    Returns:
        A :class:`Curve`.

    Raises:
        ValueError: Bad eps grid, ``n_examples`` larger than the data, no attacks, or a model
            that fails the preflight (e.g. it returns probabilities).
    """
    grid = _validate_grid(eps)
    sweep = get_strategy(strategy)
    attack_map = resolve_attacks(attacks, seed)
    check_positive_int("batch_size", batch_size)
    indices = _select_samples(data, n_examples, seed)
    runs = attack_runs(model, attack_map, adaptive)
    dev = torch.device(device) if device is not None else model_device(model)
    torch.manual_seed(seed)
    tally = _Tally.start(runs)
    with _progress_bar(len(indices), batch_size, runs, progress) as bar:
        for x, y, ids in _batches(data, indices, batch_size, dev):
            if tally.first is None:
                tally.first = (x[:100], y[:100])
                tally.health = _preflight(model, x, y, attack_map) if checks else []
            _evaluate_batch(model, runs, x, y, ids, grid, tally, bar, sweep)
    curve = _assemble(tally, runs, grid, indices, seed)
    if checks and tally.first is not None:
        curve.health += masking_checks(
            curve, model, *tally.first, attack_map, **(check_kwargs or {})
        )
    logger.info("robustness curve done:\n%s", curve.table())
    return curve


def _progress_bar(n: int, batch_size: int, runs: Sequence[Run], show: bool) -> tqdm:
    """A bar over every (batch, run) pair of the evaluation."""
    total = -(-n // batch_size) * len(runs)
    return tqdm(total=total, desc="robustness curve", disable=not show, leave=False)


def _preflight(
    model: nn.Module, x: Tensor, y: Tensor, attack_map: Mapping[str, atk_lib.Attack]
) -> list[Flag]:
    """Run the preflight checks on the first batch; raise on an error-level failure."""
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
