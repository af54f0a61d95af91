"""Input transformations used as inference-time defenses, each registered once by its name.

Each preprocessor is an ``nn.Module`` that maps inputs in ``[0, 1]`` to inputs in ``[0, 1]`` and
declares, as class attributes, whether gradients through it are meaningful (``differentiable``)
and whether it draws random numbers (``random``); its :meth:`Preprocessor.surrogate` is the
differentiable approximation BPDA uses in the backward pass (identity unless stated).
``defenses.create(name).wrap(model)`` puts one in front of a classifier
(:class:`~defenses.inference.Preprocessed`).

Example:
    >>> guarded = defenses.create("median_filter", size=3).wrap(model)
    >>> attacks.create("pgd")(attacks.adaptive.BPDA(guarded), x, y, eps=0.3)

References:
    Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018.
    Guo, Rana, Cisse & van der Maaten, "Countering Adversarial Images using Input
    Transformations", ICLR 2018.

"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attacks.validation import check_number, check_positive_int
from defenses.inference import register_input_defense


class Preprocessor(nn.Module):
    """Base of input preprocessors (maps ``[N, C, H, W]`` in ``[0, 1]`` to the same range)."""

    differentiable: bool = True
    random: bool = False

    def surrogate(self) -> nn.Module:
        """The BPDA backward-pass approximation of this preprocessor (identity by default)."""
        return nn.Identity()


def _check_images(x: Tensor, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} expects images [N, C, H, W], got shape {tuple(x.shape)}")


@register_input_defense("bit_depth")
class BitDepth(Preprocessor):
    """Bit-depth reduction: round each value to ``2**bits`` levels (Xu et al. 2018).

    Non-differentiable (zero gradient almost everywhere); BPDA surrogate: identity.

    Args:
        bits: Bits per value, 1 to 16 (Xu et al. use 1 on MNIST).

    References:
        Xu, Evans & Qi, "Feature Squeezing: Detecting Adversarial Examples in Deep Neural
        Networks", NDSS 2018.

    """

    differentiable = False

    def __init__(self, bits: int = 1) -> None:
        super().__init__()
        bits = check_positive_int("bits", bits)
        if bits > 16:
            raise ValueError(f"bits must be between 1 and 16, got {bits}")
        self.bits = bits

    def forward(self, x: Tensor) -> Tensor:
        """Quantise ``x`` to ``2**bits`` levels."""
        levels = 2**self.bits - 1
        return torch.round(x * levels) / levels

    def extra_repr(self) -> str:
        """Settings shown in ``repr``."""
        return f"bits={self.bits}"


@register_input_defense("median_filter")
class MedianFilter(Preprocessor):
    """Per-channel ``size x size`` median filter (replicate padding; unfold-based).

    Median filtering is differentiable almost everywhere in torch (like max-pooling, the
    gradient reaches the one pixel that is each window's median). It is declared
    non-differentiable, with an identity BPDA surrogate, so evaluations run both the naive
    and the BPDA attack: on digits and on MNIST (small CNN, PGD-40) naive PGD through torch's
    median gradient was measured as strong as or slightly stronger than BPDA-identity, so the
    worst case over both is the number to report.

    Args:
        size: Window size (2 or more; Xu et al. use 2x2 on MNIST, 2x2 and 3x3 on CIFAR-10).

    """

    differentiable = False

    def __init__(self, size: int = 3) -> None:
        super().__init__()
        self.size = check_positive_int("size", size)
        if self.size < 2:
            raise ValueError(f"median filter size must be >= 2, got {size}")

    def forward(self, x: Tensor) -> Tensor:
        """Median of each window, same spatial size as ``x``."""
        _check_images(x, "median_filter")
        k = self.size
        lo, hi = (k - 1) // 2, k // 2
        padded = F.pad(x, (lo, hi, lo, hi), mode="replicate")
        windows = padded.unfold(2, k, 1).unfold(3, k, 1)
        return windows.reshape(*x.shape, k * k).median(dim=-1).values

    def extra_repr(self) -> str:
        """Settings shown in ``repr``."""
        return f"size={self.size}"


@register_input_defense("gaussian_blur")
class GaussianBlur(Preprocessor):
    """Gaussian blur (depthwise convolution, replicate padding). Differentiable.

    Args:
        sigma: Standard deviation in pixels (> 0).
        size: Odd kernel size (default ``2 * ceil(3 sigma) + 1``).

    """

    def __init__(self, sigma: float = 1.0, size: int | None = None) -> None:
        super().__init__()
        self.sigma = check_number("sigma", sigma, low_open=True)
        k = 2 * math.ceil(3 * self.sigma) + 1 if size is None else check_positive_int("size", size)
        if k % 2 == 0:
            raise ValueError(f"Gaussian blur kernel size must be odd, got {size}")
        self.size = k
        r = torch.arange(k, dtype=torch.float32) - k // 2
        g = torch.exp(-(r**2) / (2 * self.sigma**2))
        self.register_buffer("kernel1d", g / g.sum(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Separable blur of every channel."""
        _check_images(x, "gaussian_blur")
        c, k = x.shape[1], self.size
        g = self.kernel1d.to(x.dtype)
        x = F.pad(x, (k // 2, k // 2, k // 2, k // 2), mode="replicate")
        x = F.conv2d(x, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
        return F.conv2d(x, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)

    def extra_repr(self) -> str:
        """Settings shown in ``repr``."""
        return f"sigma={self.sigma}, size={self.size}"


# Annex K tables of the JPEG standard (ITU-T T.81), row-major.
_LUMA_Q = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
]  # fmt: skip
_CHROMA_Q = [
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
    *([99] * 32),
]  # fmt: skip
_RGB_TO_YCBCR = [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]


def quality_table(base: list[int], quality: int) -> Tensor:
    """The IJG (libjpeg) scaling of a base quantisation table to ``quality`` (1-100)."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    q = torch.floor((torch.tensor(base, dtype=torch.float64) * scale + 50) / 100)
    return q.clamp(1, 255).view(8, 8).float()


def dct_matrix(n: int = 8) -> Tensor:
    """Orthonormal DCT-II matrix ``D`` (``D @ block @ D.T`` is the 2-D DCT)."""
    i = torch.arange(n, dtype=torch.float64)
    d = torch.cos(math.pi * (2 * i[None, :] + 1) * i[:, None] / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d.float()


@register_input_defense("jpeg")
class JPEG(Preprocessor):
    """JPEG compression in torch: 8x8 block DCT, quantisation by the quality-scaled tables.

    Colour images (3 channels) are converted to YCbCr and the chroma channels use the chroma
    table (no chroma subsampling); other channel counts are coded as luminance. The decoded image
    is rounded to 8-bit levels. Entropy coding is lossless and omitted. Non-differentiable (the
    rounding has zero gradient); BPDA surrogate: identity.

    Args:
        quality: JPEG quality 1-100 (default 75).

    References:
        Wallace, "The JPEG still picture compression standard", 1992; Dziugaite et al. 2016 and
        Guo et al. 2018 use JPEG as a defense.

    """

    differentiable = False

    def __init__(self, quality: int = 75) -> None:
        super().__init__()
        quality = check_positive_int("quality", quality)
        if quality > 100:
            raise ValueError(f"JPEG quality must be between 1 and 100, got {quality}")
        self.quality = quality
        self.register_buffer("dct", dct_matrix(), persistent=False)
        q = torch.stack([quality_table(_LUMA_Q, quality), quality_table(_CHROMA_Q, quality)])
        self.register_buffer("tables", q, persistent=False)
        self.register_buffer("rgb2ycc", torch.tensor(_RGB_TO_YCBCR), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Compress and decompress ``x``."""
        _check_images(x, "jpeg")
        n, c, h, w = x.shape
        colour = c == 3
        z = x * 255.0
        if colour:
            z = torch.einsum("ij,njhw->nihw", self.rgb2ycc.to(z.dtype), z)
            z = z + torch.tensor([0.0, 128.0, 128.0], dtype=z.dtype, device=z.device).view(3, 1, 1)
        ph, pw = (-h) % 8, (-w) % 8
        z = F.pad(z, (0, pw, 0, ph), mode="replicate") - 128.0
        blocks = z.unfold(2, 8, 8).unfold(3, 8, 8)  # [n, c, H/8, W/8, 8, 8]
        d = self.dct.to(z.dtype)
        coef = d @ blocks @ d.T
        table = self.tables[[0, 1, 1]] if colour else self.tables[[0] * c]
        table = table.to(z.dtype).view(c, 1, 1, 8, 8)
        coef = torch.round(coef / table) * table
        blocks = d.T @ coef @ d
        z = blocks.permute(0, 1, 2, 4, 3, 5).reshape(n, c, h + ph, w + pw)[..., :h, :w] + 128.0
        if colour:
            z = z - torch.tensor([0.0, 128.0, 128.0], dtype=z.dtype, device=z.device).view(3, 1, 1)
            z = torch.einsum("ij,njhw->nihw", torch.linalg.inv(self.rgb2ycc.to(z.dtype)), z)
        return torch.round(z.clamp(0, 255)) / 255.0

    def extra_repr(self) -> str:
        """Settings shown in ``repr``."""
        return f"quality={self.quality}"


@register_input_defense("tv_smoothing")
class TVSmoothing(Preprocessor):
    """Total-variation smoothing: a few gradient steps on ``0.5 ||z - x||^2 + weight TV(z)``.

    ``TV`` is the isotropic total variation, smoothed as ``sqrt(dx^2 + dy^2 + smooth^2)`` so it
    has a gradient; ``z`` starts at ``x`` and is clipped to ``[0, 1]`` after every step. The
    steps are ordinary torch operations, so the whole module is differentiable (unrolled) and is
    declared so; the identity surrogate is still available for BPDA.

    Args:
        weight: TV weight (default 0.1).
        steps: Gradient steps (default 20).
        step_size: Step size (default 0.2).
        smooth: Smoothing of the TV norm (default 0.05).

    References:
        Rudin, Osher & Fatemi, "Nonlinear total variation based noise removal algorithms",
        1992; Guo et al., "Countering Adversarial Images using Input Transformations", ICLR 2018.

    """

    def __init__(
        self, weight: float = 0.1, steps: int = 20, step_size: float = 0.2, smooth: float = 0.05
    ) -> None:
        super().__init__()
        self.weight = check_number("weight", weight)
        self.steps = check_positive_int("steps", steps)
        self.step_size = check_number("step_size", step_size, low_open=True)
        self.smooth = check_number("smooth", smooth, low_open=True)

    def tv_gradient(self, z: Tensor) -> Tensor:
        """Gradient of the smoothed isotropic TV of ``z`` (forward differences)."""
        dx = F.pad(z[..., :, 1:] - z[..., :, :-1], (0, 1))
        dy = F.pad(z[..., 1:, :] - z[..., :-1, :], (0, 0, 0, 1))
        mag = torch.sqrt(dx**2 + dy**2 + self.smooth**2)
        px, py = dx / mag, dy / mag
        div = px - F.pad(px[..., :, :-1], (1, 0)) + py - F.pad(py[..., :-1, :], (0, 0, 1, 0))
        return -div

    def forward(self, x: Tensor) -> Tensor:
        """The smoothed image."""
        _check_images(x, "tv_smoothing")
        z = x
        for _ in range(self.steps):
            z = (z - self.step_size * ((z - x) + self.weight * self.tv_gradient(z))).clamp(0, 1)
        return z

    def extra_repr(self) -> str:
        """Settings shown in ``repr``."""
        return f"weight={self.weight}, steps={self.steps}, step_size={self.step_size}"


@register_input_defense("random_noise")
class GaussianNoise(Preprocessor):
    """Random Gaussian noise added to the input (clipped to ``[0, 1]``): a random defense.

    Differentiable but random, so it must be attacked with EOT; a fresh draw per forward pass
    from the global torch RNG.

    Args:
        sigma: Noise standard deviation (default 0.25).

    References:
        Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized Smoothing",
        ICML 2019 (smoothing without the certificate: one noisy draw per prediction).

    """

    random = True

    def __init__(self, sigma: float = 0.25) -> None:
        super().__init__()
        self.sigma = check_number("sigma", sigma, low_open=True)

    def forward(self, x: Tensor) -> Tensor:
        """``clip(x + sigma * N(0, 1))``."""
        return (x + self.sigma * torch.randn_like(x)).clamp(0, 1)

    def extra_repr(self) -> str:
        """Settings shown in ``repr``."""
        return f"sigma={self.sigma}"


__all__ = [
    "JPEG",
    "BitDepth",
    "GaussianBlur",
    "GaussianNoise",
    "MedianFilter",
    "Preprocessor",
    "TVSmoothing",
    "dct_matrix",
    "quality_table",
]
