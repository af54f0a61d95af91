"""Monte-Carlo class counts of a base classifier under Gaussian noise, seeded per sample.

Draw ``j`` of sample ``id`` in a named stream (``"select"``, ``"estimate"``, ``"predict"``) is a
pure function of ``(seed, stream, id, j)``: the draws of a sample are cut into blocks of
:data:`BLOCK`, and block ``b`` is ``torch.randn`` of a fixed shape from a generator seeded with a
63-bit word hashed from ``(seed, stream, id, b)`` by the counter-based hash of
:mod:`attacks.rng`. Neither the number of draws per forward pass, nor the other samples of the
batch, nor the rank changes a sample's noise. The generator lives on the device of the data.

Why generators per block rather than the counter-based normals of :mod:`attacks.rng`: those
cost a few dozen integer and float passes per number, and on this CPU they drew standard
normals about 6x slower than ``torch.randn`` from a seeded generator (``benchmarks/
certify_smoothing.py`` prints the measurement); at 100,000 draws of a 784-pixel image the noise
would cost as much as the forward passes. Hashing one seed per block keeps the same guarantee
(a pure function of seed and id) at ``torch.randn``'s speed.

The noisy inputs ``x + sigma * z`` are not clipped to the input box, as in Cohen et al. (the
certificate is about exactly this distribution). They are packed into forward passes of
``batch_size`` inputs across samples, so small stages (the ``n0`` selection draws, the looks of
early stopping) still fill whole passes.

References:
    Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized Smoothing",
    ICML 2019, arXiv:1902.02918 (the Monte-Carlo counts of ``f(x + e)``).
    Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011
    (counter-based seeding).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from attacks import rng

BLOCK = 256
"""Noise draws per seeded block: the unit a sample's draws are generated in."""

_LOW31 = 0x7FFFFFFF


def block_seeds(seed: int, ids: Tensor, stream: str, n_blocks: int) -> list[list[int]]:
    """Generator seeds of blocks ``0..n_blocks-1`` for each sample id: ``[n][n_blocks]`` ints.

    Block ``b``'s seed is a pure function of ``(seed, stream, id, b)`` (it does not depend on
    ``n_blocks``).
    """
    words = rng.random_bits(seed, ids, ("smoothing", stream), 2 * n_blocks)
    seeds = ((words[:, 1::2] & _LOW31) << 32) | words[:, 0::2]
    return seeds.tolist()


class _Passes:
    """Noisy inputs packed into forward passes of ``capacity`` rows; top-class counts per owner."""

    def __init__(
        self, model: Callable[[Tensor], Tensor], counts: Tensor, capacity: int, like: Tensor
    ) -> None:
        self.model = model
        self.counts = counts
        self.n_classes = counts.shape[1]
        self.buf = torch.empty((capacity, *like.shape[1:]), dtype=like.dtype, device=like.device)
        self.owner = torch.empty(capacity, dtype=torch.long, device=like.device)
        self.fill = 0

    def add(self, owner: int, x: Tensor, z: Tensor, sigma: float) -> None:
        """Queue ``x + sigma * z`` (``z``: ``[m, ...]``) for sample row ``owner``."""
        pos = 0
        while pos < z.shape[0]:
            take = min(self.buf.shape[0] - self.fill, z.shape[0] - pos)
            rows = slice(self.fill, self.fill + take)
            torch.add(x, z[pos : pos + take], alpha=sigma, out=self.buf[rows])
            self.owner[rows] = owner
            self.fill += take
            pos += take
            if self.fill == self.buf.shape[0]:
                self.flush()

    def flush(self) -> None:
        """Forward the queued inputs and add their top classes to the counts."""
        if self.fill == 0:
            return
        pred = self.model(self.buf[: self.fill]).argmax(dim=1)
        cells = self.owner[: self.fill] * self.n_classes + pred
        ones = torch.ones_like(cells)
        self.counts.view(-1).index_add_(0, cells, ones)
        self.fill = 0


def noise_counts(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    ids: Tensor,
    *,
    sigma: float,
    seed: int,
    stream: str,
    draws: tuple[int, int],
    n_classes: int,
    batch_size: int,
) -> Tensor:
    """How often the model predicts each class on draws ``[start, stop)`` of ``x + N(0, sigma^2)``.

    Call it under ``torch.no_grad()`` with the model in eval mode.

    Args:
        model: The base classifier (returns logits).
        x: ``[n, ...]`` clean inputs.
        ids: ``[n]`` int64 sample ids (the noise of a sample depends on its id, not its row).
        sigma: Noise standard deviation.
        seed: The evaluation's seed.
        stream: Name of the draws (``"select"``, ``"estimate"``, ``"predict"``).
        draws: ``(start, stop)``: the draw indices of every sample, ``0 <= start <= stop``.
        n_classes: Number of logits the model returns.
        batch_size: Noisy inputs per forward pass.

    Returns:
        ``[n, n_classes]`` int64 counts on ``x``'s device; each row sums to ``stop - start``.

    """
    start, stop = draws
    counts = torch.zeros(x.shape[0], n_classes, dtype=torch.long, device=x.device)
    if stop <= start or x.shape[0] == 0:
        return counts
    first, last = start // BLOCK, (stop - 1) // BLOCK + 1
    seeds = block_seeds(seed, ids, stream, last)
    passes = _Passes(model, counts, min(batch_size, x.shape[0] * (stop - start)), x)
    gen = torch.Generator(device=x.device)
    shape = (BLOCK, *x.shape[1:])
    for row in range(x.shape[0]):
        for b in range(first, last):
            gen.manual_seed(seeds[row][b])
            z = torch.randn(shape, generator=gen, dtype=x.dtype, device=x.device)
            lo, hi = max(start - b * BLOCK, 0), min(stop - b * BLOCK, BLOCK)
            passes.add(row, x[row], z[lo:hi], sigma)
    passes.flush()
    return counts


__all__ = ["BLOCK", "block_seeds", "noise_counts"]
