"""Gaussian-noise augmentation: train the base classifier of randomized smoothing.

Randomized smoothing certifies ``g(x) = argmax_c P(f(x + e) = c)``, ``e ~ N(0, sigma^2 I)``;
it certifies large radii only if the base classifier ``f`` is right on noisy inputs, so Cohen
et al. train ``f`` on ``x + e``, drawn afresh per batch, with the sigma they certify at.

The noise is the ``gaussian_noise`` augmentation every
:class:`~defenses.regularization.RegularizedDefense` has (one home for it), with
``clip_noise=False`` by default: Cohen et al. do not clip the noisy inputs to ``[0, 1]``, and the
certificate is about exactly the unclipped distribution (the certifier adds unclipped noise,
:mod:`robustbench_local.certify.smoothing`), so the base classifier is trained on what it is
queried on. ``clip=True`` gives the clipped variant of the plain ``gaussian_noise`` regulariser.

Defaults: the MNIST recipe of the randomized-smoothing literature, Cohen et al.'s training
code run on MNIST by Jeong & Shin (2020) with a LeNet: 90 epochs, batch 256, SGD with
momentum 0.9, learning rate 0.01 divided by 10 every 30 epochs (here at 1/3 and 2/3 of
``epochs``), weight decay 1e-4; sigma 0.25.

Example:
    >>> d = defenses.create("gaussian_augmentation", sigma=0.25, epochs=30)
    >>> model = d.fit(model, train)
    >>> rbl.certify(model, test, "smoothing", eps=[0, 0.25, 0.5], sigma=0.25)

"""

from __future__ import annotations

from typing import Any

from attacks.validation import check_bool, check_number, check_positive_int
from defenses.registry import register_defense
from defenses.regularization import RegularizedDefense

# Cohen et al.'s train.py (CIFAR-10/ImageNet) with Jeong & Shin's MNIST learning rate.
COHEN_MNIST_DEFAULTS: dict[str, Any] = {
    "epochs": 90,
    "batch_size": 256,
    "optimizer": "sgd",
    "lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "schedule": "piecewise",
}


@register_defense("gaussian_augmentation", kind="training")
class GaussianAugmentation(RegularizedDefense):
    """Training on Gaussian-noise-augmented inputs, the base classifier of randomized smoothing.

    Args:
        sigma: Noise standard deviation (default 0.25); certify with the same sigma.
        clip: Clip the noisy inputs to ``bounds`` (default False, as Cohen et al.).
        **kwargs: Trainer and regularisation settings (see
            :class:`~defenses.regularization.RegularizedDefense`); defaults: 90 epochs, batch
            256, SGD lr 0.01 momentum 0.9, weight decay 1e-4, learning rate / 10 at
            ``milestones`` = 1/3 and 2/3 of ``epochs``.

    Raises:
        ValueError: ``sigma`` not > 0, or ``gaussian_noise`` given (the noise is ``sigma``).

    References:
        Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized
        Smoothing", ICML 2019, arXiv:1902.02918 (training with Gaussian data augmentation).
        Jeong & Shin, "Consistency Regularization for Certified Robustness of Smoothed
        Classifiers", NeurIPS 2020 (the MNIST recipe and LeNet baseline).

    """

    name = "gaussian_augmentation"
    trainer_defaults = COHEN_MNIST_DEFAULTS

    def __init__(self, *, sigma: float = 0.25, clip: bool = False, **kwargs: Any) -> None:
        if "gaussian_noise" in kwargs:
            raise ValueError(
                "gaussian_augmentation sets the noise with sigma=, not gaussian_noise= "
                f"(got gaussian_noise={kwargs['gaussian_noise']!r})"
            )
        sigma = check_number("sigma", sigma, low_open=True)
        epochs = check_positive_int("epochs", kwargs.get("epochs", self.trainer_defaults["epochs"]))
        kwargs.setdefault("milestones", [epochs / 3, 2 * epochs / 3])
        super().__init__(gaussian_noise=sigma, **kwargs)
        self.sigma = sigma
        self.clip_noise = check_bool("clip", clip)


__all__ = ["COHEN_MNIST_DEFAULTS", "GaussianAugmentation"]
