"""Per-sample attack losses. Each returns a tensor ``[N]`` that the attacker *maximises*."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def cross_entropy(logits: Tensor, y: Tensor, targeted: bool = False) -> Tensor:
    """Cross-entropy of the true label (untargeted) or its negative for a target label.

    Args:
        logits: ``[N, C]``.
        y: ``[N]`` true labels, or target labels when ``targeted``.
        targeted: Maximise the target's log-probability instead.

    """
    ce = F.cross_entropy(logits, y, reduction="none")
    return -ce if targeted else ce


def _other_max(logits: Tensor, y: Tensor) -> Tensor:
    """Largest logit among the classes other than ``y``: ``[N]``."""
    masked = logits.scatter(1, y.unsqueeze(1), float("-inf"))
    return masked.amax(dim=1)


def cw_margin(
    logits: Tensor, y: Tensor, targeted: bool = False, kappa: float = float("inf")
) -> Tensor:
    """Carlini-Wagner margin, positive once the attack succeeds, capped at ``kappa``.

    Untargeted: ``max_{j != y} z_j - z_y``.
    Targeted (``y`` is the target): ``z_y - max_{j != y} z_j``.

    References:
        Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017.

    """
    z_y = logits.gather(1, y.unsqueeze(1)).squeeze(1)
    margin = z_y - _other_max(logits, y) if targeted else _other_max(logits, y) - z_y
    return margin.clamp(max=kappa)


def dlr(logits: Tensor, y: Tensor) -> Tensor:
    """Difference-of-logits-ratio loss (untargeted), invariant to shifts and scaling of logits.

    ``-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3)`` with ``pi`` the classes sorted by logit.

    References:
        Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
        parameter-free attacks", ICML 2020.

    """
    if logits.shape[1] < 3:
        raise ValueError("DLR needs at least 3 classes; use cross-entropy or the CW margin")
    top = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y.unsqueeze(1)).squeeze(1)
    return -(z_y - _other_max(logits, y)) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Targeted DLR: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``.

    References:
        Croce & Hein, ICML 2020 (APGD-T).

    """
    if logits.shape[1] < 4:
        raise ValueError("targeted DLR needs at least 4 classes; use apgd_ce or pgd")
    top = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y.unsqueeze(1)).squeeze(1)
    z_t = logits.gather(1, target.unsqueeze(1)).squeeze(1)
    return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


LOSSES = {"ce": cross_entropy, "cw": cw_margin}


def get_loss(name: str):
    """Return a loss ``f(logits, y, targeted)`` by name (``ce`` or ``cw``)."""
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}; use one of: {', '.join(sorted(LOSSES))}.")
    return LOSSES[name]


def misclassified(logits: Tensor, y: Tensor, targeted: bool = False) -> Tensor:
    """Boolean ``[N]``: the attack's goal holds (label changed, or target reached)."""
    pred = logits.argmax(dim=1)
    return pred == y if targeted else pred != y


__all__ = ["cross_entropy", "cw_margin", "dlr", "dlr_targeted", "get_loss", "misclassified"]
