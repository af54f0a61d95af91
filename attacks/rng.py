"""Counter-based random numbers: every draw is a pure function of (seed, sample id, key, element).

A ``torch.Generator`` hands out numbers in order, so what a sample receives depends on how many
numbers the samples before it took: on the batch size, on the sample's position and on which
other samples are still being attacked. Here a draw is a hash instead. For sample id ``i``,
stream key ``k`` (a tuple naming the draw, e.g. ``("start", restart)``) and element index ``c``
of the per-sample shape, the 32 random bits are

    ``w0, w1 = blake2b(repr((seed, k)))``  (two 32-bit words, computed once per draw in Python)
    ``s = F(F(lo(i) ^ w0) ^ hi(i))``  (per sample), ``t = F(c ^ w1)``  (per element index)
    ``bits = F(t ^ s)``

with ``F`` the 32-bit finaliser of MurmurHash3. The words are held as int32 (two's complement),
where a multiplication keeps the low 32 bits of the product, i.e. it is exact modulo ``2**32``,
and the right shifts are masked to be logical: the hash is a handful of elementwise int32 ops
on the device of the attack (vectorised on CPU: about a tenth of the cost of the same hash in
int64, measured), and the same (seed, id, key) gives bitwise the same numbers for any batch
size, batch position or set of neighbours. ``F`` is a bijection, so distinct ids below
``2**32`` always get distinct per-sample states.

Uniforms use 23 bits, ``(bits >> 9 + 0.5) / 2**23``, exact in float32 and strictly inside
(0, 1); normals come from two uniforms by Box-Muller.

References:
    Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011
    (counter-based generators).
    Appleby, MurmurHash3 (the ``fmix32`` finaliser), 2011.
    Box & Muller, "A Note on the Generation of Random Normal Deviates", Ann. Math. Stat. 1958.

"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

Key = tuple[Any, ...]
_M32 = 0xFFFFFFFF
_C1, _C2 = 0x85EBCA6B, 0xC2B2AE35  # MurmurHash3 fmix32 constants
_UNIFORM_BITS = 23


def key_words(seed: int, key: Key) -> tuple[int, int]:
    """Two 32-bit words hashing ``(seed, key)``; ``key`` holds ints, floats, strings, tuples."""
    text = repr((int(seed), tuple(key))).encode()
    value = int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")
    return value & _M32, value >> 32


def _signed(c: int) -> int:
    """The 32-bit word ``c`` as the int32 with the same bits."""
    return c - (1 << 32) if c >= 1 << 31 else c


_C1S, _C2S = _signed(_C1), _signed(_C2)


def _to_int32(h: Tensor) -> Tensor:
    """int64 words in ``[0, 2**32)`` as int32 with the same bits."""
    return (h - ((h >> 31) << 32)).to(torch.int32)


def _to_words(h: Tensor) -> Tensor:
    """int32 values as int64 words in ``[0, 2**32)`` (the same bits)."""
    return h.to(torch.int64).bitwise_and_(_M32)


def _mix32_(h: Tensor) -> Tensor:
    """MurmurHash3's finaliser, in place, on int32 words (multiplications wrap mod ``2**32``)."""
    h.bitwise_xor_((h >> 16).bitwise_and_(0xFFFF))
    h.mul_(_C1S)
    h.bitwise_xor_((h >> 13).bitwise_and_(0x7FFFF))
    h.mul_(_C2S)
    return h.bitwise_xor_((h >> 16).bitwise_and_(0xFFFF))


def fmix32(h: Tensor) -> Tensor:
    """MurmurHash3's finaliser on int64 values in ``[0, 2**32)`` (a bijection of 32-bit words)."""
    return _to_words(_mix32_(_to_int32(h)))


def _words32(seed: int, ids: Tensor, key: Key, numel: int) -> Tensor:
    """``[n, numel]`` int32 random words (the bits of :func:`random_bits`)."""
    w0, w1 = key_words(seed, key)
    ids = ids.to(torch.int64)
    lo, hi = ids & _M32, (ids >> 32) & _M32
    s0 = _to_int32(fmix32(fmix32(lo ^ w0) ^ hi))
    counter = torch.arange(numel, device=ids.device, dtype=torch.int64) ^ w1
    t = _mix32_(_to_int32(counter))
    return _mix32_(t.unsqueeze(0) ^ s0.unsqueeze(1))


def random_bits(seed: int, ids: Tensor, key: Key, numel: int) -> Tensor:
    """``[n, numel]`` int64 random words in ``[0, 2**32)`` for the samples ``ids`` ``[n]``."""
    return _to_words(_words32(seed, ids, key, numel))


def _numel(shape: Sequence[int]) -> int:
    return math.prod(int(s) for s in shape)


def uniform(
    seed: int, ids: Tensor, key: Key, shape: Sequence[int], dtype: torch.dtype = torch.float32
) -> Tensor:
    """``[n, *shape]`` uniforms in the open interval (0, 1), one row per sample id."""
    words = _words32(seed, ids, (*key, "uniform"), _numel(shape))
    top = (words >> (32 - _UNIFORM_BITS)).bitwise_and_((1 << _UNIFORM_BITS) - 1)
    u = top.to(torch.float32).add_(0.5).mul_(2.0**-_UNIFORM_BITS)
    return u.to(dtype).view(ids.shape[0], *shape)


def normal(
    seed: int, ids: Tensor, key: Key, shape: Sequence[int], dtype: torch.dtype = torch.float32
) -> Tensor:
    """``[n, *shape]`` standard normals (Box-Muller on two uniform streams)."""
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    u1 = uniform(seed, ids, (*key, "normal", 0), shape, compute)
    u2 = uniform(seed, ids, (*key, "normal", 1), shape, compute)
    z = u1.log_().mul_(-2.0).sqrt_().mul_(torch.cos(u2.mul_(2 * math.pi)))
    return z.to(dtype)


def randint(seed: int, ids: Tensor, key: Key, shape: Sequence[int], low: int, high: int) -> Tensor:
    """``[n, *shape]`` int64 integers in ``[low, high)`` (``high - low <= 2**32``)."""
    span = int(high) - int(low)
    if not 0 < span <= 2**32:
        raise ValueError(f"randint needs low < high <= low + 2**32, got [{low}, {high})")
    bits = random_bits(seed, ids, (*key, "randint"), _numel(shape))
    return (bits % span + int(low)).view(ids.shape[0], *shape)


def draw_seed() -> int:
    """A fresh seed from the global torch RNG: new each call, reproducible under manual_seed."""
    return int(torch.randint(0, 2**62, (1,)).item())


@dataclass(frozen=True)
class Stream:
    """The draws of one named stream for a set of samples: ``[n, *shape]`` per call.

    Attributes:
        seed: The attack's seed.
        ids: ``[n]`` int64 ids of the samples, on the attack's device.
        key: The stream's name; each kind of draw (uniform, normal, randint) and each ``part``
            is an independent sub-stream.
        dtype: Float dtype of :meth:`uniform` and :meth:`normal`.

    """

    seed: int
    ids: Tensor
    key: Key
    dtype: torch.dtype = torch.float32

    def uniform(self, shape: Sequence[int], part: Any = 0) -> Tensor:
        """Uniforms in (0, 1) of shape ``[n, *shape]``."""
        return uniform(self.seed, self.ids, (*self.key, part), shape, self.dtype)

    def normal(self, shape: Sequence[int], part: Any = 0) -> Tensor:
        """Standard normals of shape ``[n, *shape]``."""
        return normal(self.seed, self.ids, (*self.key, part), shape, self.dtype)

    def randint(self, low: int, high: int, shape: Sequence[int], part: Any = 0) -> Tensor:
        """Integers in ``[low, high)`` of shape ``[n, *shape]``."""
        return randint(self.seed, self.ids, (*self.key, part), shape, low, high)


__all__ = [
    "Key",
    "Stream",
    "draw_seed",
    "fmix32",
    "key_words",
    "normal",
    "randint",
    "random_bits",
    "uniform",
]
