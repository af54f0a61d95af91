"""Pixel noise: Gaussian, shot (Poisson), impulse (salt and pepper) and speckle noise.

Every draw comes from an :class:`attacks.rng.Stream` (a hash of seed, sample id and the
corruption's key), so a sample's noise does not depend on its batch.

Poisson counts are sampled exactly by inverting the CDF (a vectorised search from 0, on the
pixels whose rate is at most :data:`EXACT_POISSON_MAX`); above that rate a rounded normal
``round(lam + sqrt(lam) z)`` stands in, whose mean, variance and absolute deviation differ from
the Poisson's by well under 1% there.

References:
    Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
    Perturbations", ICLR 2019. https://arxiv.org/abs/1903.12261
    Mu & Gilmer, "MNIST-C: A Robustness Benchmark for Computer Vision", ICML Workshop 2019.
    https://arxiv.org/abs/1906.02337
    Devroye, "Non-Uniform Random Variate Generation", Springer 1986, ch. X.3 (inversion by
    sequential search).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attacks.rng import Stream

EXACT_POISSON_MAX = 64.0
"""Largest Poisson rate sampled exactly; larger rates use a rounded normal."""


def normals(draws: Stream, shape: tuple[int, ...], part: object) -> Tensor:
    """``[n, *shape]`` standard normals, two per pair of uniforms (Box-Muller's cos and sin).

    ``Stream.normal`` keeps only the cosine of each pair; using both halves the hashing,
    which is most of the cost of per-pixel noise.
    """
    numel = math.prod(shape)
    half = (numel + 1) // 2
    u1 = draws.uniform((half,), part=(part, "radius"))
    u2 = draws.uniform((half,), part=(part, "angle"))
    r = torch.sqrt(-2 * torch.log(u1))
    theta = (2 * math.pi) * u2
    z = torch.cat((r * torch.cos(theta), r * torch.sin(theta)), dim=1)
    return z[:, :numel].reshape(-1, *shape)


def _poisson_search(lam: Tensor, u: Tensor) -> Tensor:
    """Exact Poisson counts for 1-D rates ``lam`` from uniforms ``u`` (inversion, float64).

    ``k`` is the number of CDF values ``F(0), F(1), ...`` below ``u``; the search runs over
    the still-undecided elements, compacted whenever fewer than half of them are left.
    """
    lam, u = lam.double(), u.double()
    k = torch.zeros_like(lam)
    p = torch.exp(-lam)
    cdf = p.clone()
    idx = torch.arange(lam.numel(), device=lam.device)
    la, ua, ka = lam, u, torch.zeros_like(lam)
    for i in range(1, int(EXACT_POISSON_MAX * 3 + 60)):
        above = ua > cdf
        ka += above
        if i % 4 == 0:
            left = torch.nonzero(above).squeeze(1)
            if left.numel() == 0:
                break
            if 2 * left.numel() < idx.numel():
                k[idx] = ka
                idx, la, ua, ka, p, cdf = (t[left] for t in (idx, la, ua, ka, p, cdf))
        p = p * la / i
        cdf = cdf + p
    k[idx] = ka
    return k


def poisson(lam: Tensor, draws: Stream, part: object = "poisson") -> Tensor:
    """Poisson counts with rates ``lam`` ``[n, ...]`` (a float tensor of the same shape)."""
    shape = lam.shape[1:]
    u = draws.uniform(shape, part=(part, "u")).to(lam.device)
    out = torch.zeros_like(lam)
    small = (lam > 0) & (lam <= EXACT_POISSON_MAX)
    out[small] = _poisson_search(lam[small], u[small]).to(lam.dtype)
    small |= lam <= 0
    if not bool(small.all()):
        big = ~small
        z = normals(draws, tuple(shape), (part, "z")).to(lam.dtype)
        approx = torch.round(lam + lam.sqrt() * z).clamp_min(0)
        out[big] = approx[big]
    return out


def gaussian_noise(x: Tensor, scale: float, draws: Stream) -> Tensor:
    """``x + N(0, scale^2)`` per element."""
    return x + scale * normals(draws, tuple(x.shape[1:]), "gauss").to(x.dtype)


def shot_noise(x: Tensor, photons: float, draws: Stream) -> Tensor:
    """``Poisson(x * photons) / photons`` per element."""
    return poisson(x * photons, draws) / photons


def impulse_noise(x: Tensor, amount: float, draws: Stream) -> Tensor:
    """Salt and pepper: a fraction ``amount`` of elements set to 0 or 1 with equal odds.

    One uniform ``u`` per element: ``u <= amount / 2`` is salt, ``amount / 2 < u <= amount``
    pepper (scikit-image's ``random_noise(mode='s&p')`` with ``salt_vs_pepper=0.5``).
    """
    u = draws.uniform(x.shape[1:], part="impulse").to(x.dtype)
    salt = (u <= amount / 2).to(x.dtype)
    return torch.where(u <= amount, salt, x)


def speckle_noise(x: Tensor, scale: float, draws: Stream) -> Tensor:
    """``x + x * N(0, scale^2)`` per element."""
    return x + x * scale * normals(draws, tuple(x.shape[1:]), "speckle").to(x.dtype)


__all__ = [
    "EXACT_POISSON_MAX",
    "gaussian_noise",
    "impulse_noise",
    "normals",
    "poisson",
    "shot_noise",
    "speckle_noise",
]
