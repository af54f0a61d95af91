"""A cheap probe of a model's input gradients: zero, saturated, non-finite, hidden rounding, random.

PLACEHOLDER (engineer "reference"): the "ste" engineer writes the real probe with exactly this
interface; theirs replaces this file at the merge. This stand-in computes the fractions of
samples whose cross-entropy input gradient is all zero, zero where the CW margin's is not
(saturated softmax) or non-finite, asks :func:`attacks.straight_through.find_rounding_ops` for
hidden rounding ops, and compares two forward passes to detect randomness.

References:
    Carlini et al., "On Evaluating Adversarial Robustness", arXiv:1902.06705, 2019.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

import attacks as atk_lib
from attacks.straight_through import find_rounding_ops
from robustbench_local.checks.masking import input_gradients

MASKED_FRACTION = 0.1
"""Share of probe samples with a zero or saturated gradient above which gradients are masked."""


@dataclass
class GradientReport:
    """What the probe found on its samples.

    Attributes:
        zero: Fraction of samples whose cross-entropy input gradient is all zero.
        saturated: Fraction whose cross-entropy gradient is zero but the CW margin's is not.
        nonfinite: Fraction whose gradient has a NaN or inf.
        hidden_ops: Rounding-like operations found in the forward pass.
        random: Two forward passes on the same input differ.
    """

    zero: float
    saturated: float
    nonfinite: float
    hidden_ops: list[str] = field(default_factory=list)
    random: bool = False

    @property
    def masked(self) -> bool:
        """Whether plain gradient attacks are likely blind on this model."""
        return (
            self.zero > MASKED_FRACTION
            or self.saturated > MASKED_FRACTION
            or self.nonfinite > 0
            or bool(self.hidden_ops)
        )


def gradient_probe(
    model: nn.Module, x: Tensor, y: Tensor, max_samples: int = 100
) -> GradientReport:
    """Probe the input gradients of ``model`` on (at most ``max_samples`` of) ``x``, ``y``."""
    x, y = x[:max_samples], y[:max_samples].to(device=x.device, dtype=torch.long)
    ce = input_gradients(model, x, y, "ce").flatten(1)
    cw = input_gradients(model, x, y, "cw").flatten(1)
    zero = (ce == 0).all(dim=1)
    with atk_lib.model_guard(model, eval_mode=True), torch.no_grad():
        first, second = model(x), model(x)
    return GradientReport(
        zero=float(zero.float().mean()),
        saturated=float((zero & (cw != 0).any(dim=1)).float().mean()),
        nonfinite=float((~torch.isfinite(ce).all(dim=1)).float().mean()),
        hidden_ops=find_rounding_ops(model, x),
        random=not torch.allclose(first, second, rtol=1e-4, atol=1e-5),
    )


__all__ = ["MASKED_FRACTION", "GradientReport", "gradient_probe"]
