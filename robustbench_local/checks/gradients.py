"""The gradient probe: tells whether the input gradients an attack follows are informative.

:func:`gradient_probe` looks at the first samples of an evaluation, before or after any attack,
and reports what makes gradient-based cross-entropy attacks blind (Athalye et al. 2018's
*obfuscated gradients*, Carlini et al. 2019, Section 5): all-zero gradients, gradients that
vanish only because the softmax saturates (the margin loss still has a gradient: attack with
the CW/DLR margin), NaN/inf gradients, rounding-like operations hidden in the model's own
``forward`` (attack with straight-through gradients:
:func:`attacks.straight_through.straight_through_model`) and a random forward pass (attack with
EOT). The evaluation runs it whether or not the health checks are on and picks its fallbacks
from the :class:`GradientReport`; the ``gradients_nonzero`` masking check reads the same report.

Cost: two forward and two backward passes on at most ``max_samples`` samples.

Example:
    >>> report = gradient_probe(model, x, y)
    >>> report.masked, report.reasons
    (True, ['saturated'])

References:
    Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018.
    Carlini et al., "On Evaluating Adversarial Robustness", arXiv:1902.06705, 2019.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from attacks.context import model_guard
from attacks.losses import cw_margin
from attacks.straight_through import StraightThroughMode

MAX_FRACTION = 0.1
"""Fraction of samples with zero or saturated gradients above which CE attacks count as blind."""


@dataclass
class GradientReport:
    """What the probe found on the samples it looked at.

    Fractions are over the probed samples the model classifies correctly (the ones an attack
    works on), or over all probed samples when it gets none right.

    Attributes:
        zero: Fraction of samples whose CE input gradient is all zero (saturated ones included).
        saturated: Fraction whose CE gradient vanishes because the softmax saturates while the
            CW margin's gradient is nonzero and finite (e.g. logits multiplied by 1e4): margin
            losses (CW, DLR) still work there.
        nonfinite: Fraction whose CE input gradient has a NaN or inf.
        hidden_ops: :func:`attacks.straight_through.find_rounding_ops` of the model on ``x``.
        random: Two forward passes on the same input differ, or the model declares
            ``random=True``.
        n: Samples the fractions are over.
        max_fraction: Threshold of :attr:`masked` for ``zero`` and ``saturated``.
        max_diff: Largest logit difference between the two forward passes.
    """

    zero: float
    saturated: float
    nonfinite: float
    hidden_ops: list[str] = field(default_factory=list)
    random: bool = False
    n: int = 0
    max_fraction: float = MAX_FRACTION
    max_diff: float = 0.0

    @property
    def reasons(self) -> list[str]:
        """Why gradient-based CE attacks are blind here (empty if they are not)."""
        out = []
        if self.zero - self.saturated > self.max_fraction:
            out.append("zero")  # zero gradients that saturation does not explain
        if self.saturated > self.max_fraction:
            out.append("saturated")
        if self.nonfinite > 0:
            out.append("nonfinite")
        if self.hidden_ops:
            out.append("hidden_ops")
        if self.random:
            out.append("random")
        return out

    @property
    def masked(self) -> bool:
        """Anything above says gradient-based CE attacks are blind (or need EOT)."""
        return bool(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (with ``masked`` and ``reasons``)."""
        return {**dataclasses.asdict(self), "masked": self.masked, "reasons": self.reasons}


def _tolerance(out: Tensor) -> float:
    """Logit difference that counts as two passes differing (as the ``deterministic`` check)."""
    return 1e-4 * max(1.0, float(out.abs().max())) if out.numel() else 0.0


def _gradients(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample CE and CW-margin input gradients ``[n, d]`` and the logits (no swap)."""
    xg = x.detach().clone().requires_grad_(True)
    logits = model(xg)
    ce = F.cross_entropy(logits, y, reduction="sum")
    (g_ce,) = torch.autograd.grad(ce, xg, retain_graph=True, allow_unused=True)
    (g_cw,) = torch.autograd.grad(-cw_margin(logits, y).sum(), xg, allow_unused=True)
    zeros = torch.zeros_like(x)
    g_ce = zeros if g_ce is None else g_ce
    g_cw = zeros if g_cw is None else g_cw
    return g_ce.detach().flatten(1), g_cw.detach().flatten(1), logits.detach()


def gradient_probe(
    model: nn.Module, x: Tensor, y: Tensor, max_samples: int = 100
) -> GradientReport:
    """Probe the input gradients of ``model`` on the first ``max_samples`` samples.

    The model runs as attacks run it (eval mode, parameters frozen; both restored afterwards):
    one forward and backward for the CE and CW-margin gradients, and one forward under
    :class:`~attacks.straight_through.StraightThroughMode` (bitwise the same logits) that
    finds the hidden rounding-like operations and, compared with the first, randomness.

    Args:
        model: The model as the attacks attack it (pass the BPDA/EOT wrapper to judge an
            adaptive evaluation, the model itself to judge a naive one).
        x: ``[N, ...]`` inputs in the model's bounds.
        y: ``[N]`` labels.
        max_samples: Samples probed (the first ones).

    Returns:
        A :class:`GradientReport`.

    Raises:
        ValueError: No samples, ``max_samples < 1``, or ``x`` and ``y`` of different lengths.
        TypeError: ``x`` is not a float tensor.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError("gradient_probe needs float inputs x [N, ...]")
    if int(max_samples) < 1 or x.shape[0] == 0 or x.shape[0] != len(y):
        raise ValueError(
            f"gradient_probe needs max_samples >= 1 and matching non-empty x and y, got "
            f"max_samples={max_samples}, {x.shape[0]} inputs and {len(y)} labels"
        )
    x = x[: int(max_samples)]
    y = torch.as_tensor(y[: int(max_samples)]).to(device=x.device, dtype=torch.long)
    mode = StraightThroughMode()
    with model_guard(model, eval_mode=True):
        g_ce, g_cw, logits = _gradients(model, x, y)
        with mode:
            again = model(x.detach().clone().requires_grad_(True)).detach()
    diff = float((logits - again).abs().max()) if logits.numel() else 0.0
    rows = logits.argmax(1) == y
    if not bool(rows.any()):
        rows = torch.ones_like(rows)
    g_ce, g_cw = g_ce[rows], g_cw[rows]
    zero = (g_ce == 0).all(dim=1)
    cw_ok = torch.isfinite(g_cw).all(dim=1) & (g_cw != 0).any(dim=1)
    declared = bool(getattr(model, "random", False))
    return GradientReport(
        zero=float(zero.float().mean()),
        saturated=float((zero & cw_ok).float().mean()),
        nonfinite=float((~torch.isfinite(g_ce).all(dim=1)).float().mean()),
        hidden_ops=list(mode.found),
        random=declared or diff > _tolerance(logits),
        n=int(rows.sum()),
        max_diff=diff,
    )


__all__ = ["MAX_FRACTION", "GradientReport", "gradient_probe"]
