"""AugMix: training on mixtures of augmentation chains with a Jensen-Shannon consistency loss.

Each training image gets two AugMix views. A view mixes ``width`` augmentation chains, each a
random sequence of ``depth`` (1 to 3 when ``depth=-1``) operations of
:mod:`defenses.augmix_ops` at levels up to ``severity``, with Dirichlet(``alpha``) weights, and
then interpolates with the clean image by a Beta(``alpha``, ``alpha``) factor. The loss is the
cross-entropy on the clean images plus ``js_weight`` times the Jensen-Shannon divergence between
the predictions on the clean image and on its two views. Everything runs batched on the device
of the data; the random draws come from the global torch RNG, which the
:class:`~defenses.trainer.Trainer` seeds and checkpoints, so a run is reproducible and
resumable.

Example:
    >>> model = defenses.create("augmix", epochs=5).fit(model, train)
    >>> views = augment_and_mix(x)  # one AugMix view per image of x [N, C, H, W] in [0, 1]

References:
    Hendrycks, Mu, Cubuk, Zoph, Gilmer & Lakshminarayanan, "AugMix: A Simple Data Processing
    Method to Improve Robustness and Uncertainty", ICLR 2020. https://arxiv.org/abs/1912.02781
"""

from __future__ import annotations

import numbers
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attacks.validation import check_bool, check_inputs, check_number, check_positive_int
from defenses.augmix_ops import LEVEL_MAX, LEVEL_MIN, OPERATIONS, apply_operations
from defenses.registry import register_defense
from defenses.regularization import ADAM_DEFAULTS, RegularizedDefense

MAX_RANDOM_DEPTH = 3
"""With ``depth=-1`` a chain has 1 to this many operations (the paper's stochastic depth)."""
MIXTURE_FLOOR = 1e-7
"""The mixture distribution of the JS loss is clamped here, as in the authors' code."""


def check_augmix_settings(width: Any, depth: Any, severity: Any, alpha: Any) -> None:
    """Validate AugMix's mixing settings.

    Raises:
        ValueError: ``width`` not a positive integer, ``depth`` neither -1 nor a positive
            integer, ``severity`` outside ``[1, 10]`` or ``alpha`` not positive.
    """
    check_positive_int("width", width)
    integer = isinstance(depth, numbers.Integral) and not isinstance(depth, bool)
    if not integer or not (depth == -1 or depth >= 1):
        raise ValueError(f"depth must be -1 (random 1 to 3) or a positive integer, got {depth!r}")
    check_number("severity", severity, low=1.0, high=LEVEL_MAX)
    check_number("alpha", alpha, low_open=True)


def augment_chain(x: Tensor, depth: int = -1, severity: float = 3.0) -> Tensor:
    """One augmentation chain per image: ``depth`` random operations at random levels.

    Every sample draws, per step, an operation (uniformly among :data:`OPERATIONS`), a level
    uniform in ``[0.1, severity]`` and a direction; with ``depth=-1`` each sample's chain length
    is uniform in 1 to 3 (shorter chains skip the later steps).

    Args:
        x: ``[n, C, H, W]`` images in [0, 1].
        depth: Operations per chain, or -1 for a random 1 to 3.
        severity: The largest level (out of 10).

    Returns:
        The augmented images, same shape, dtype and device.
    """
    n, dev = x.shape[0], x.device
    steps = MAX_RANDOM_DEPTH if depth < 0 else depth
    if depth < 0:
        length = torch.randint(1, MAX_RANDOM_DEPTH + 1, (n,), device=dev)
    else:
        length = torch.full((n,), depth, device=dev)
    out = x
    for step in range(steps):
        op = torch.randint(0, len(OPERATIONS), (n,), device=dev)
        level = LEVEL_MIN + (severity - LEVEL_MIN) * torch.rand(n, device=dev, dtype=x.dtype)
        sign = torch.where(torch.rand(n, device=dev) < 0.5, 1.0, -1.0).to(x.dtype)
        op = torch.where(length > step, op, torch.full_like(op, -1))
        out = apply_operations(out, op, level, sign)
    return out


def augment_and_mix(
    x: Tensor, *, width: int = 3, depth: int = -1, severity: float = 3.0, alpha: float = 1.0
) -> Tensor:
    """One AugMix view of every image of ``x`` (the paper's Algorithm 1, batched).

    ``x_augmix = (1 - m) x + m sum_i w_i chain_i(x)`` with ``w ~ Dirichlet(alpha, ..., alpha)``
    and ``m ~ Beta(alpha, alpha)`` drawn per image, from the global torch RNG on ``x``'s device.

    Args:
        x: ``[N, C, H, W]`` float images in [0, 1] (gray or color).
        width: Augmentation chains mixed per image (default 3).
        depth: Operations per chain; -1 (default) draws 1 to 3 per chain and image.
        severity: The largest operation level, out of 10 (default 3).
        alpha: The Dirichlet and Beta concentration (default 1).

    Returns:
        The mixed images, same shape, dtype and device, in [0, 1].

    Raises:
        ValueError: ``x`` is not a float ``[N, C, H, W]`` batch in [0, 1], or bad settings.
    """
    check_augmix_settings(width, depth, severity, alpha)
    _check_images(x)
    n, dev = x.shape[0], x.device
    conc = torch.full((n, width), float(alpha), device=dev)
    weights = torch.distributions.Dirichlet(conc).sample().to(x.dtype)
    beta = torch.distributions.Beta(conc[:, 0], conc[:, 0])
    m = beta.sample().to(x.dtype).view(n, 1, 1, 1)
    mix = torch.zeros_like(x)
    for i in range(width):
        mix += weights[:, i].view(n, 1, 1, 1) * augment_chain(x, depth, float(severity))
    return ((1 - m) * x + m * mix).clamp_(0.0, 1.0)


def _check_images(x: Tensor) -> None:
    """Raise unless ``x`` is a float ``[N, C, H, W]`` batch with values in [0, 1]."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"AugMix needs images [N, C, H, W], got {shape}")
    check_inputs(x, torch.zeros(x.shape[0], dtype=torch.long, device=x.device), (0.0, 1.0))


def jensen_shannon(*logits: Tensor) -> Tensor:
    """The Jensen-Shannon divergence of the softmax distributions of ``logits`` (batch mean).

    ``JS(p_1, ..., p_k) = mean_i KL(p_i || M)`` with ``M = mean_i p_i`` clamped to
    ``[1e-7, 1]`` before its log (as in the authors' code, so the loss cannot explode).

    Args:
        *logits: Two or more ``[N, K]`` logit tensors.

    Returns:
        A scalar: 0 when every distribution is the same.

    Raises:
        ValueError: Fewer than two tensors, or tensors of different shapes.
    """
    if len(logits) < 2 or any(t.shape != logits[0].shape for t in logits):
        raise ValueError("jensen_shannon needs two or more logit tensors of the same shape [N, K]")
    probs = [F.softmax(t, dim=1) for t in logits]
    log_mixture = torch.stack(probs).mean(0).clamp(MIXTURE_FLOOR, 1.0).log()
    kls = [F.kl_div(log_mixture, p, reduction="batchmean") for p in probs]
    return torch.stack(kls).mean()


@register_defense("augmix", kind="training")
class AugMix(RegularizedDefense):
    """AugMix training (Hendrycks et al. 2020) with the Jensen-Shannon consistency loss.

    Per batch: two AugMix views of every image (:func:`augment_and_mix`), one forward pass on
    ``[clean, view_1, view_2]``, loss ``CE(clean) + js_weight * JS(clean, view_1, view_2)``
    (:func:`jensen_shannon`). With ``jsd=False`` the model trains on one view per image with
    plain cross-entropy (the paper's ablation without the consistency loss). Training accuracy
    is reported on the clean images.

    The AugMix settings are the paper's defaults. The paper trains CIFAR models for 100
    epochs with SGD and a cosine schedule; it has no MNIST recipe, so the trainer defaults here
    are those of standard training (10 epochs of batch 128, Adam at 1e-3).

    Args:
        width: Chains mixed per view (default 3).
        depth: Operations per chain; -1 (default) draws 1 to 3.
        severity: The largest operation level, out of 10 (default 3).
        alpha: Dirichlet and Beta concentration (default 1).
        js_weight: Weight of the Jensen-Shannon term (default 12).
        jsd: Use the consistency loss (default True).
        **kwargs: Regularisation and Trainer settings (see :class:`RegularizedDefense`);
            ``bounds`` must be (0, 1), the range the operations work in.

    References:
        Hendrycks, Mu, Cubuk, Zoph, Gilmer & Lakshminarayanan, "AugMix: A Simple Data
        Processing Method to Improve Robustness and Uncertainty", ICLR 2020.
        https://arxiv.org/abs/1912.02781
    """

    name = "augmix"
    trainer_defaults: ClassVar[dict[str, Any]] = ADAM_DEFAULTS

    def __init__(
        self,
        *,
        width: int = 3,
        depth: int = -1,
        severity: float = 3.0,
        alpha: float = 1.0,
        js_weight: float = 12.0,
        jsd: bool = True,
        **kwargs: Any,
    ) -> None:
        check_augmix_settings(width, depth, severity, alpha)
        self.width, self.depth = int(width), int(depth)
        self.severity, self.alpha = float(severity), float(alpha)
        self.js_weight = check_number("js_weight", js_weight)
        self.jsd = check_bool("jsd", jsd)
        super().__init__(**kwargs)
        if self.bounds != (0.0, 1.0):
            raise ValueError(
                f"augmix works on images in [0, 1], got bounds={self.bounds}; scale the data "
                "to [0, 1] and put any normalisation inside the model"
            )

    def view(self, x: Tensor) -> Tensor:
        """One AugMix view of the batch with this defense's settings (no gradient)."""
        with torch.no_grad():
            return augment_and_mix(
                x, width=self.width, depth=self.depth, severity=self.severity, alpha=self.alpha
            )

    def objective(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``CE(f(x), y) + js_weight * JS(f(x), f(view_1), f(view_2))`` and the clean logits."""
        if not self.jsd:
            logits = model(self.view(x))
            return self.ce(logits, y), logits
        n = x.shape[0]
        logits_all = model(torch.cat([x, self.view(x), self.view(x)]))
        clean, aug1, aug2 = logits_all.split(n)
        return self.ce(clean, y) + self.js_weight * jensen_shannon(clean, aug1, aug2), clean

    def __repr__(self) -> str:
        return (
            f"AugMix(width={self.width}, depth={self.depth}, severity={self.severity:g}, "
            f"alpha={self.alpha:g}, js_weight={self.js_weight:g}, epochs={self.trainer.epochs})"
        )


__all__ = ["AugMix", "augment_and_mix", "augment_chain", "jensen_shannon"]
