"""Which target classes a targeted-loss attack (APGD-T, FAB-T) tries, in which order.

``"logits"`` is AutoAttack's order: the other classes by decreasing clean logit. ``"linear"``
ranks them by the distance to their linearised decision boundary at the clean point,
``(z_y - z_t) / ||grad_x (z_y - z_t)||_*`` (``*`` the dual norm of the threat model), closest
first, as MALT does: a class the model is close to in input space comes first even when its
logit is not the second highest.

References:
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020 (targets by logit).
    Melamed, Yehudai & Shamir, "MALT Powers Up Adversarial Attacks", NeurIPS 2023 (targets
    by linearised distance).
    Moosavi-Dezfooli, Fawzi & Frossard, "DeepFool: a simple and accurate method to fool deep
    neural networks", CVPR 2016 (the linearised distance).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from attacks.base import AttackContext
from attacks.threat import dual_norm_of
from attacks.validation import check_choice

TARGET_ORDERS = ("logits", "linear")
CANDIDATES = 20
"""``"linear"`` ranks at most this many classes, the highest-logit ones (a backward pass each)."""


def check_target_order(value: str) -> str:
    """``value`` if it is one of :data:`TARGET_ORDERS`.

    Raises:
        ValueError: Any other value.
    """
    return check_choice("target_order", value, TARGET_ORDERS)


def without_default_order(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` without ``target_order`` when it is the default ``"logits"``.

    Configs (and the gate baselines recorded with them) stay those of versions before the
    option existed unless another order is chosen.
    """
    if cfg.get("target_order") == "logits":
        cfg = {k: v for k, v in cfg.items() if k != "target_order"}
    return cfg


def rank_targets(ctx: AttackContext, x: Tensor, y: Tensor, k: int, order: str) -> Tensor:
    """``[n, k']`` target classes per sample, best first (``k' = min(k, C - 1)``).

    ``"linear"`` costs one forward pass and one backward pass per candidate class (counted in
    ``ctx``); ``"logits"`` one forward pass.
    """
    if order == "logits":
        clean = ctx.logits(x).scatter(1, y.unsqueeze(1), -math.inf)
        return clean.topk(min(k, clean.shape[1] - 1), dim=1).indices
    z = x.detach().requires_grad_(True)
    logits = ctx.model(z)
    n, c = logits.shape
    m = min(max(k, CANDIDATES), c - 1)
    cand = logits.detach().scatter(1, y.unsqueeze(1), -math.inf).topk(m, dim=1).indices
    ctx.n_forward += n
    ctx.n_backward += n * m
    gap = logits.gather(1, y.unsqueeze(1)) - logits.gather(1, cand)  # [n, m], > 0 if correct
    dist = torch.empty(n, m, dtype=x.dtype, device=x.device)
    for j in range(m):
        (g,) = torch.autograd.grad(gap[:, j].sum(), z, retain_graph=j < m - 1)
        dist[:, j] = gap[:, j].detach() / (dual_norm_of(g.flatten(1), ctx.norm) + 1e-12)
    pick = dist.topk(min(k, m), dim=1, largest=False).indices
    return cand.gather(1, pick)


__all__ = [
    "CANDIDATES",
    "TARGET_ORDERS",
    "check_target_order",
    "rank_targets",
    "without_default_order",
]
