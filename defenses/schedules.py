"""Learning-rate schedules of the :class:`~defenses.trainer.Trainer`, stepped after every batch."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

SCHEDULES = ("constant", "piecewise", "cyclic", "onecycle")


@dataclass
class LRSchedule:
    """Multiplicative factor of the base learning rate after ``step`` optimiser steps.

    A callable object (not a lambda) so ``LambdaLR.state_dict`` records it. The factor for the
    ``k``-th step is taken at fractional epoch ``t = (k + 1) / steps_per_epoch``, as in
    Wong et al.'s code, so the first step of a cyclic schedule has a non-zero rate.

    Args:
        kind: ``constant``, ``piecewise`` (times ``gamma`` at each milestone epoch),
            ``cyclic`` (triangular: 0 -> 1 at ``peak * epochs`` -> 0 at the end; Wong et al.
            2020), or ``onecycle`` (cosine warm-up to 1 over ``peak * epochs`` then cosine
            decay to ~0; Smith & Topin 2019).
        epochs: Total epochs.
        steps_per_epoch: Optimiser steps per epoch.
        milestones: Epochs at which ``piecewise`` multiplies by ``gamma``.
        gamma: ``piecewise`` decay factor.
        peak: Where ``cyclic``/``onecycle`` peak, as a fraction of ``epochs``.

    References:
        Wong, Rice & Kolter, "Fast is better than free: Revisiting adversarial training",
        ICLR 2020 (cyclic). Smith & Topin, "Super-Convergence: Very Fast Training of Neural
        Networks Using Large Learning Rates", 2019 (one-cycle).

    """

    kind: str
    epochs: int
    steps_per_epoch: int
    milestones: list[float] = field(default_factory=list)
    gamma: float = 0.1
    peak: float = 0.4

    def __call__(self, step: int) -> float:
        """The factor for the ``step``-th optimiser step (0-based)."""
        t = (step + 1) / self.steps_per_epoch
        t_peak = self.peak * self.epochs
        if self.kind == "constant":
            return 1.0
        if self.kind == "piecewise":
            return self.gamma ** bisect.bisect_right(self.milestones, t - 1e-9)
        if self.kind == "cyclic":
            if t <= t_peak:
                return t / t_peak
            return max(0.0, (self.epochs - t) / (self.epochs - t_peak))
        # onecycle: cosine from 1/25 up to 1, then down to 1/25e4 (torch's OneCycleLR defaults)
        start, end = 1 / 25, 1 / 25e4
        if t <= t_peak:
            frac = t / t_peak
            return start + (1 - start) * (1 - math.cos(math.pi * frac)) / 2
        frac = min(1.0, (t - t_peak) / (self.epochs - t_peak))
        return end + (1 - end) * (1 + math.cos(math.pi * frac)) / 2


__all__ = ["SCHEDULES", "LRSchedule"]
