"""Certification by bound propagation: ``"ibp"`` and ``"crown"`` (linf by default, l2 when asked).

A sample is certified at ``eps`` when it is correctly classified and every margin
``logit_y - logit_j`` (``j != y``) has a positive lower bound over the ball of radius ``eps``
intersected with the input box (:func:`defenses.bounds.margin_bounds`). The grid is walked from
the largest eps down and a sample proven at ``eps_j`` is not bounded again at smaller radii:
it is certified there by nesting (:func:`~robustbench_local.certify.base.nested`), which also
makes the certified matrix nested when CROWN's bounds are not monotone in eps.

Cost: ``n_forward`` counts per-sample forward-pass units: one clean pass, then IBP's two
interval passes per bounded eps, plus for CROWN its backward passes in units of forward passes
(specification rows times the share of the network's multiply-adds they traverse; see
:mod:`defenses.bounds`).

References:
    Gowal et al., "On the Effectiveness of Interval Bound Propagation for Training Verifiably
    Robust Models", arXiv:1810.12715, 2018.
    Zhang, Weng, Chen, Hsieh & Daniel, "Efficient Neural Network Robustness Certification with
    General Activation Functions" (CROWN), NeurIPS 2018, arXiv:1811.00866.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from attacks.result import Cost
from attacks.validation import check_inputs, check_logits, check_positive_int
from defenses.bounds import MEMORY_BUDGET, BoundedModel, certified_by_margins
from robustbench_local.certify.base import (
    CertifiedBatch,
    Certifier,
    check_eps_grid,
    grid_radius,
    nested,
    register_certifier,
)


def clean_correct(
    model: nn.Module, x: Tensor, y: Tensor, bounds: tuple[float, float]
) -> tuple[Tensor, Tensor]:
    """The checked labels and ``bool [n]`` clean correctness of ``model`` on ``(x, y)``.

    Raises:
        ValueError: Inputs outside ``bounds``, bad labels, outputs that are not logits
            (probabilities, NaN, wrong shape).
    """
    y = check_inputs(x, y, bounds)
    with torch.no_grad():
        logits = model(x)
    check_logits(logits, x.shape[0], [y])
    return y, logits.argmax(dim=1) == y


class BoundCertifier(Certifier):
    """Shared walk over the eps grid of the bound-propagation certifiers.

    Args:
        norm: ``"linf"`` (default) or ``"l2"``.
        bounds: The input box.
        memory_budget: Largest CROWN coefficient tensor (elements) before chunking.
    """

    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")
    method: ClassVar[str] = "ibp"

    def __init__(
        self,
        norm: str | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        memory_budget: int = MEMORY_BUDGET,
    ) -> None:
        super().__init__(norm, bounds)
        self.memory_budget = check_positive_int("memory_budget", memory_budget)

    def settings(self) -> dict[str, Any]:
        """No settings change the result (the memory budget only splits the work)."""
        return {}

    def certify_batch(
        self, model: nn.Module, x: Tensor, y: Tensor, ids: Tensor, eps: Sequence[float], seed: int
    ) -> CertifiedBatch:
        """Certify ``(x, y)`` at every eps (``seed`` and ``ids`` are unused: no randomness)."""
        start = time.perf_counter()
        grid = check_eps_grid(eps)
        bounded = BoundedModel(model, memory_budget=self.memory_budget)
        y, correct = clean_correct(model, x, y, self.bounds)
        proven, units = self._walk(bounded, x, y, correct, grid)
        certified = nested(proven) & correct.unsqueeze(0)
        cost = Cost(time.perf_counter() - start, math.ceil(units))
        return CertifiedBatch(certified, correct, grid_radius(certified, grid).to(x.device), cost)

    def _walk(
        self, bounded: BoundedModel, x: Tensor, y: Tensor, correct: Tensor, grid: list[float]
    ) -> tuple[Tensor, float]:
        """``bool [K, n]`` proven per eps (largest first, skipping proven samples); units."""
        proven = torch.zeros(len(grid), x.shape[0], dtype=torch.bool, device=x.device)
        todo = correct.clone()
        units = float(x.shape[0])  # the clean pass
        for k in reversed(range(len(grid))):
            idx = todo.nonzero().flatten()
            if idx.numel() == 0:
                break
            with torch.no_grad():
                margins = bounded.margins(
                    x[idx], y[idx], grid[k], method=self.method, norm=self.norm,
                    bounds=self.bounds,
                )  # fmt: skip
            ok = certified_by_margins(margins, y[idx])
            units += bounded.units * idx.numel()
            proven[k, idx] = ok
            todo[idx[ok]] = False
        return proven, units


@register_certifier("ibp")
class IBPCertifier(BoundCertifier):
    """Interval bound propagation with the margin folded into the last layer (Gowal et al.).

    References:
        Gowal et al., "On the Effectiveness of Interval Bound Propagation for Training
        Verifiably Robust Models", arXiv:1810.12715, 2018.
    """

    name = "ibp"
    method = "ibp"


@register_certifier("crown")
class CROWNCertifier(BoundCertifier):
    """CROWN linear relaxation (adaptive lower slope), each bound the tighter of CROWN and IBP.

    References:
        Zhang, Weng, Chen, Hsieh & Daniel, "Efficient Neural Network Robustness Certification
        with General Activation Functions", NeurIPS 2018, arXiv:1811.00866.
    """

    name = "crown"
    method = "crown"


__all__ = ["BoundCertifier", "CROWNCertifier", "IBPCertifier", "clean_correct"]
