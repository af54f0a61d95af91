"""The model as an attack sees it: counted passes, the rows' sample ids and their random draws.

:class:`AttackContext` is what the sealed call hands to an attack's ``run``: model access that
counts forward and backward passes, the threat model, and the random draws of the rows being
attacked. Draws come from :mod:`attacks.rng`, keyed by (attack seed, sample id, stream key), so
a sample's draws never depend on its batch. :func:`model_guard` freezes the model during an
attack and restores it afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from attacks.losses import misclassified
from attacks.rng import Key, Stream
from attacks.threat import Norm


class AttackContext:
    """Counted model access, the threat model and per-sample random draws for one attack run.

    The sealed call sets :attr:`ids` to the sample ids of the rows it passes to ``run`` and
    :attr:`scope` to the key prefix of the current budget, so ``run`` only names its draws:
    ``ctx.uniform(rows, shape, ("start", restart))``, where ``rows`` indexes the ``x`` that
    ``run`` received (``None``: all of them). An attack that compacts its set of survivors
    passes the rows it still holds, and each sample gets the numbers it would get alone.

    Args:
        model: The classifier (returns logits).
        norm: The threat model's norm.
        bounds: Valid input range.
        targeted: Whether labels passed to :meth:`success` are targets.
        seed: The attack's seed.
        ids: ``[n]`` int64 sample ids of the rows ``run`` attacks.
        scope: Key prefix of every draw (the sealed call sets the attack's name and budget).
        dtype: Float dtype of the draws (that of ``x``).

    """

    def __init__(
        self,
        model: Callable[[Tensor], Tensor],
        norm: Norm,
        bounds: tuple[float, float],
        targeted: bool,
        *,
        seed: int,
        ids: Tensor,
        scope: Key = (),
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.model = model
        self.norm = norm
        self.bounds = bounds
        self.targeted = targeted
        self.seed = int(seed)
        self.ids = ids
        self.scope: Key = tuple(scope)
        self.dtype = dtype
        self.n_forward = 0
        self.n_backward = 0
        self.details: dict[str, Any] = {}

    def focus(self, ids: Tensor, scope: Key) -> None:
        """Point the context at the rows ``ids`` and the draw scope of the next ``run``."""
        self.ids, self.scope = ids, tuple(scope)

    def stream(self, rows: Tensor | None, key: Key) -> Stream:
        """The random stream ``key`` of ``rows`` (indices into the current rows; None: all)."""
        ids = self.ids if rows is None else self.ids[rows]
        return Stream(self.seed, ids, (*self.scope, *key), self.dtype)

    def uniform(self, rows: Tensor | None, shape: Sequence[int], key: Key) -> Tensor:
        """``[len(rows), *shape]`` uniforms in (0, 1) for the draw named ``key``."""
        return self.stream(rows, key).uniform(shape)

    def normal(self, rows: Tensor | None, shape: Sequence[int], key: Key) -> Tensor:
        """``[len(rows), *shape]`` standard normals for the draw named ``key``."""
        return self.stream(rows, key).normal(shape)

    def randint(
        self, rows: Tensor | None, shape: Sequence[int], key: Key, low: int, high: int
    ) -> Tensor:
        """``[len(rows), *shape]`` integers in ``[low, high)`` for the draw named ``key``."""
        return self.stream(rows, key).randint(low, high, shape)

    def logits(self, x: Tensor) -> Tensor:
        """Forward pass without gradients."""
        self.n_forward += x.shape[0]
        with torch.no_grad():
            return self.model(x)

    def loss_and_grad(
        self, x: Tensor, loss_fn: Callable[[Tensor], Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One forward+backward: per-sample loss ``[n]``, its input gradient and the logits."""
        self.n_forward += x.shape[0]
        self.n_backward += x.shape[0]
        x = x.detach().requires_grad_(True)
        logits = self.model(x)
        loss = loss_fn(logits)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        return loss.detach(), grad.detach(), logits.detach()

    def success(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Boolean ``[n]``: the attack goal holds for these logits."""
        return misclassified(logits, labels, self.targeted)


@contextlib.contextmanager
def model_guard(model: nn.Module, eval_mode: bool = True) -> Iterator[None]:
    """Run the attack on a frozen (and by default eval-mode) model; restore it afterwards.

    Parameters get ``requires_grad=False`` during the attack, so no weight gradients are computed,
    and every module's ``training`` flag and every parameter's ``requires_grad`` are restored on
    exit, even when the attack raises.
    """
    if not isinstance(model, nn.Module):
        with torch.enable_grad():
            yield
        return
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        if eval_mode:
            model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        with torch.enable_grad():
            yield
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)


__all__ = ["AttackContext", "model_guard"]
