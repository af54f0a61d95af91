"""Input-denoising defenses: the trained denoising autoencoder, and the input preprocessors.

:class:`DenoisingAutoencoder` is fitted on data (noisy and adversarial inputs) and then wraps a
classifier. The fixed input transformations (``bit_depth``, ``median_filter``, ``jpeg``...) live in
:mod:`defenses.preprocessors` and the wrapper that puts any of them in front of a classifier in
:mod:`defenses.inference`; both stay importable from here.

Example:
    >>> dae = defenses.create("denoising_autoencoder", eps=0.3)
    >>> guarded = dae.wrap(dae.fit(model, train, val))

References:
    Meng & Chen, "MagNet: a Two-Pronged Defense against Adversarial Examples", CCS 2017.
    Liao et al., "Defense against Adversarial Attacks Using High-Level Representation Guided
    Denoiser", CVPR 2018.

"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

import attacks
from attacks.base import model_guard
from attacks.validation import check_number, check_positive_int
from defenses.data import check_dataset, make_loader, model_device
from defenses.inference import InputDefense, Preprocessed, register_input_defense
from defenses.plugins import Plugin, TrainState
from defenses.preprocessors import (
    JPEG,
    BitDepth,
    GaussianBlur,
    GaussianNoise,
    MedianFilter,
    Preprocessor,
    TVSmoothing,
    dct_matrix,
    quality_table,
)
from defenses.registry import register_defense
from defenses.trainer import FitOptions, Trainer

if TYPE_CHECKING:
    from typing_extensions import Unpack

logger = logging.getLogger(__name__)


class ConvAutoencoder(Preprocessor):
    """A small fully convolutional residual denoiser (any image size), output in ``[0, 1]``.

    Like Liao et al.'s denoiser it predicts the noise: ``D(x) = clip(x + r(x))``. The last
    layer starts at zero, so an untrained denoiser is the identity and the protected model
    keeps its accuracy from the first epoch.

    Args:
        channels: Image channels.
        width: Feature maps per hidden layer.

    """

    def __init__(self, channels: int = 1, width: int = 32) -> None:
        super().__init__()
        c, w = check_positive_int("channels", channels), check_positive_int("width", width)
        self.net = nn.Sequential(
            nn.Conv2d(c, w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, c, 3, padding=1),
        )
        last = self.net[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: Tensor) -> Tensor:
        """The denoised image."""
        return (x + self.net(x)).clamp(0, 1)


class _DenoiserMonitor(Plugin):
    """Validation metrics of the autoencoder: reconstruction error and denoised accuracy."""

    def __init__(self, val: Dataset, classifier: nn.Module | None, noise_std: float) -> None:
        self.val, self.classifier, self.noise_std = val, classifier, noise_std

    @torch.no_grad()
    def on_epoch_end(self, state: TrainState, epoch: int, metrics: dict[str, float]) -> None:
        ae = state.model
        ae.eval()
        mse_sum, correct, n = 0.0, 0, 0
        for x, y in make_loader(self.val, 500, shuffle=False):
            x, y = x.to(state.device), y.to(state.device)
            noisy = (x + self.noise_std * torch.randn_like(x)).clamp(0, 1)
            mse_sum += float(F.mse_loss(ae(noisy), x, reduction="sum")) / x[0].numel()
            if self.classifier is not None:
                correct += int((self.classifier(ae(x)).argmax(1) == y).sum())
            n += y.numel()
        ae.train()
        metrics["val_recon_mse"] = mse_sum / n
        if self.classifier is not None:
            metrics["val_acc_denoised"] = correct / n


@register_defense("denoising_autoencoder", kind=("training", "inference"))
class DenoisingAutoencoder:
    """A convolutional denoising autoencoder trained on noisy and adversarial inputs.

    ``fit(model, train, val)`` trains the autoencoder to map noisy inputs (Gaussian,
    ``noise_std``; Meng & Chen 2017) and adversarial inputs crafted by PGD against ``model``
    (Liao et al. 2018) back to the clean image, optionally adding a logit-guided term (Liao
    et al. use an L1 distance between logits; a KL divergence between the softmax outputs is
    used here because it does not depend on the logits' scale). It returns ``model``
    unchanged; ``wrap(model)`` then puts the trained autoencoder in front of it. The wrapped
    model is differentiable, so ordinary (and adaptive) attacks apply directly.

    Args:
        noise_std: Std of the training noise (default 0.1, as MagNet on MNIST).
        eps: Budget of the training adversarial examples (default 0.3; 0 = noise only).
        attack_steps: PGD steps for them (default 10).
        logit_weight: Weight of a logit-guided term ``KL(f(x) || f(D(x_adv)))`` in the spirit of
            Liao et al.'s guided denoiser (default 0: pixel losses only, as MagNet).
        width: Hidden feature maps of the autoencoder.
        **trainer_kwargs: :class:`~defenses.trainer.Trainer` settings (default 5 epochs,
            batch 128, Adam 1e-3).

    References:
        Meng & Chen, "MagNet: a Two-Pronged Defense against Adversarial Examples", CCS 2017.
        Liao et al., "Defense against Adversarial Attacks Using High-Level Representation
        Guided Denoiser", CVPR 2018.

    """

    name = "denoising_autoencoder"
    trainer_defaults: ClassVar[dict[str, Any]] = {
        "epochs": 5,
        "batch_size": 128,
        "optimizer": "adam",
        "lr": 1e-3,
    }

    def __init__(
        self,
        *,
        noise_std: float = 0.1,
        eps: float = 0.3,
        attack_steps: int = 10,
        logit_weight: float = 0.0,
        width: int = 32,
        **trainer_kwargs: Any,
    ) -> None:
        self.noise_std = check_number("noise_std", noise_std)
        self.eps = check_number("eps", eps)
        self.logit_weight = check_number("logit_weight", logit_weight)
        self.width = check_positive_int("width", width)
        self.attack = attacks.create(
            "pgd", steps=check_positive_int("attack_steps", attack_steps), early_stop=False
        )
        self.trainer = Trainer(**{**self.trainer_defaults, **trainer_kwargs})
        self.autoencoder: ConvAutoencoder | None = None

    def _loss(self, classifier: nn.Module | None) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
        def loss(ae: nn.Module, x: Tensor, y: Tensor) -> Tensor:
            noisy = (x + self.noise_std * torch.randn_like(x)).clamp(0, 1)
            total = F.mse_loss(ae(noisy), x)
            if classifier is None or self.eps == 0:
                return total
            x_adv = self.attack.perturb(classifier, x, y, self.eps)
            denoised = ae(x_adv)
            total = total + F.mse_loss(denoised, x)
            if self.logit_weight > 0:
                with torch.no_grad():
                    target = F.softmax(classifier(x), dim=1)
                log_p = F.log_softmax(classifier(denoised), dim=1)
                guided = F.kl_div(log_p, target, reduction="batchmean")
                total = total + self.logit_weight * guided
            return total

        return loss

    def fit(
        self,
        model: nn.Module | None,
        train: Dataset,
        val: Dataset | None = None,
        **options: Unpack[FitOptions],
    ) -> nn.Module | None:
        """Train the autoencoder; return ``model`` unchanged (call :meth:`wrap` next).

        Args:
            model: The classifier to protect (frozen during training; used to craft the
                adversarial training inputs), or None to train on noisy inputs only.
            train: Dataset of ``(x, y)`` images in ``[0, 1]``.
            val: Optional validation set (``val_recon_mse``, ``val_acc_denoised`` metrics).
            **options: ``callbacks``, ``device`` (default the classifier's, else CPU),
                ``checkpoint_dir`` (the autoencoder's trainer checkpoints), ``resume``.

        """
        channels = _image_channels(model, train)
        if options.get("device") is None and model is not None:
            options = {**options, "device": model_device(model)}
        self.autoencoder = ConvAutoencoder(channels, self.width)
        plugins = [_DenoiserMonitor(val, model, self.noise_std)] if val is not None else []
        batch_fn = self._loss(model)
        with model_guard(model) if model is not None else contextlib.nullcontext():
            self.trainer.fit(
                self.autoencoder, train, None, batch_fn=batch_fn, plugins=plugins, **options
            )
        return model.eval() if model is not None else None

    def wrap(self, model: nn.Module) -> Preprocessed:
        """``Preprocessed(autoencoder, model)`` (differentiable, not random).

        Raises:
            RuntimeError: :meth:`fit` has not been called.

        """
        if self.autoencoder is None:
            raise RuntimeError(
                "denoising_autoencoder must be trained first: call .fit(model, train) then "
                ".wrap(model)"
            )
        return InputDefense(self.name, self.autoencoder.eval()).wrap(model)


def _image_channels(model: nn.Module | None, train: Dataset) -> int:
    """The channels of the training images, after checking the arguments of ``fit``."""
    train = check_dataset("train", train)
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module or None, got {type(model).__name__}")
    x0 = train[0][0]
    if x0.dim() != 3:
        raise ValueError(f"denoising_autoencoder needs images [C, H, W], got {tuple(x0.shape)}")
    return int(x0.shape[0])


__all__ = [
    "JPEG",
    "BitDepth",
    "ConvAutoencoder",
    "DenoisingAutoencoder",
    "GaussianBlur",
    "GaussianNoise",
    "InputDefense",
    "MedianFilter",
    "Preprocessed",
    "Preprocessor",
    "TVSmoothing",
    "dct_matrix",
    "quality_table",
    "register_input_defense",
]
