"""Random restarts, written once: later runs attack only the samples still robust.

An attack with restarts supplies one run, ``single_run(rows, restart)``, that attacks the rows
``rows`` of its inputs and returns candidates, their losses and a success mask.
:func:`run_restarts` calls it ``restarts`` times, each time on the samples no earlier run broke,
and :class:`BestOf` keeps, per sample, the first success or else the candidate of highest loss.
Several loops (APGD-T's target classes) can share one :class:`BestOf`.

References:
    Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018
    (restarts of PGD); Croce & Hein, "Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks", ICML 2020 (restarts on survivors only).

"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from attacks.rows import take_rows
from attacks.validation import check_number

# single_run(rows, restart) -> (x_adv [len(rows), ...], loss [len(rows)], hit [len(rows)])
SingleRun = Callable[[Tensor, int], tuple[Tensor, Tensor, Tensor]]
NormRun = tuple[Tensor, Tensor]  # (examples [n, ...], their norms [n], inf where none)


class BestOf:
    """Per-sample best candidate over several runs: a success wins, else the highest loss.

    Args:
        x: ``[n, ...]`` clean inputs; every sample starts at its clean input, loss ``-inf``.

    """

    def __init__(self, x: Tensor) -> None:
        n = x.shape[0]
        self.x = x.clone()
        self.loss = torch.full((n,), -math.inf, dtype=x.dtype, device=x.device)
        self.done = torch.zeros(n, dtype=torch.bool, device=x.device)

    def pending(self) -> Tensor:
        """Indices of the samples no run has broken yet."""
        return (~self.done).nonzero().squeeze(1)

    def update(self, rows: Tensor, x_adv: Tensor, loss: Tensor, hit: Tensor) -> None:
        """Keep the new candidates of ``rows`` that succeed or raise the loss."""
        better = hit | (loss > self.loss[rows])
        mask = better.view(-1, *([1] * (x_adv.dim() - 1)))
        self.x[rows] = torch.where(mask, x_adv, take_rows(self.x, rows))
        self.loss[rows] = torch.where(better, loss, self.loss[rows])
        self.done[rows] = hit


def run_restarts(
    x: Tensor, restarts: int, single_run: SingleRun, best: BestOf | None = None
) -> BestOf:
    """Run ``single_run`` up to ``restarts`` times, each on the samples still robust.

    Args:
        x: ``[n, ...]`` clean inputs (used only to start a new :class:`BestOf`).
        restarts: Number of runs (``>= 1``).
        single_run: ``single_run(rows, restart)`` attacks ``x[rows]``; ``restart`` counts from
            0 and belongs in the key of the run's random draws.
        best: State to continue (e.g. across APGD-T's target classes); a new one if None.

    Returns:
        The updated :class:`BestOf`.

    """
    best = BestOf(x) if best is None else best
    for restart in range(restarts):
        rows = best.pending()
        if rows.numel() == 0:
            break
        best.update(rows, *single_run(rows, restart))
    return best


def per_run_values(name: str, value: float | Sequence[float], steps: int) -> tuple[float, ...]:
    """A setting given once or once per run, as a non-empty tuple of positive numbers.

    Raises:
        ValueError: An empty sequence, a value that is not a positive number, or fewer
            ``steps`` than runs.
    """
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if not values:
        raise ValueError(f"{name} needs at least one value")
    if steps < len(values):
        raise ValueError(f"steps={steps} cannot be split between {len(values)} runs ({name})")
    return tuple(check_number(name, v, low_open=True) for v in values)


def scalar_if_single(values: tuple[float, ...]) -> float | tuple[float, ...]:
    """How a per-run setting is stored and reported: the value itself if there is one run."""
    return values if len(values) > 1 else values[0]


def smallest_over_runs(
    x: Tensor, settings: float | Sequence[float], steps: int, run: Callable[[int, float], NormRun]
) -> Tensor:
    """Run a minimum-norm attack once per setting, ``steps`` split evenly between the runs.

    ``run(steps_k, setting_k)`` returns the run's examples (``x`` where none was found) and
    their norms (``inf`` where none); per sample, the example of smallest norm is kept.
    """
    settings = tuple(settings) if isinstance(settings, (list, tuple)) else (settings,)
    best = x
    best_norm = torch.full((x.shape[0],), math.inf, dtype=x.dtype, device=x.device)
    for k, value in enumerate(settings):
        adv, size = run(steps // len(settings) + int(k < steps % len(settings)), value)
        better = size < best_norm
        best = torch.where(better.view(-1, *([1] * (x.dim() - 1))), adv, best)
        best_norm = torch.where(better, size, best_norm)
    return best


__all__ = ["BestOf", "NormRun", "SingleRun", "per_run_values", "run_restarts", "smallest_over_runs"]
