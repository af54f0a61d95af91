"""Small models for the 8x8 digits and MNIST-sized inputs, as in the papers they come from.

References:
    Wong, Rice & Kolter, "Fast is better than free: Revisiting adversarial training", ICLR 2020.
    Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from robustbench_local.models.zoo import MODELS, normalize_for


@MODELS.register("digits_mlp")
def digits_mlp(
    *, num_classes: int, dropout: float, dataset: str = "digits", hidden: int = 64
) -> nn.Module:
    """Two-hidden-layer MLP for scikit-learn's 8x8 digits (``[N, 1, 8, 8]``)."""
    return nn.Sequential(
        OrderedDict(
            normalize=normalize_for(dataset, (1, 8, 8), "digits_mlp"),
            flatten=nn.Flatten(),
            fc1=nn.Linear(64, hidden),
            relu1=nn.ReLU(),
            fc2=nn.Linear(hidden, hidden),
            relu2=nn.ReLU(),
            dropout=nn.Dropout(dropout),
            fc3=nn.Linear(hidden, num_classes),
        )
    )


@MODELS.register("mnist_small_cnn")
def mnist_small_cnn(*, num_classes: int, dropout: float, dataset: str = "mnist") -> nn.Module:
    """The 2-conv CNN Wong et al. (2020) train on MNIST (FGSM-RS "fast" adversarial training).

    conv 16 4x4/2 pad 1, ReLU, conv 32 4x4/2 pad 1, ReLU, flatten, fc 100, ReLU, fc classes.

    References:
        Wong, Rice & Kolter, "Fast is better than free: Revisiting adversarial training",
        ICLR 2020 (github.com/locuslab/fast_adversarial, ``mnist_net``).

    """
    return nn.Sequential(
        OrderedDict(
            normalize=normalize_for(dataset, (1, 28, 28), "mnist_small_cnn"),
            conv1=nn.Conv2d(1, 16, 4, stride=2, padding=1),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(16, 32, 4, stride=2, padding=1),
            relu2=nn.ReLU(),
            flatten=nn.Flatten(),
            fc1=nn.Linear(32 * 7 * 7, 100),
            relu3=nn.ReLU(),
            dropout=nn.Dropout(dropout),
            fc2=nn.Linear(100, num_classes),
        )
    )


@MODELS.register("mnist_cnn")
def mnist_cnn(*, num_classes: int, dropout: float, dataset: str = "mnist") -> nn.Module:
    """The MNIST CNN of Madry et al. (2018) (the MNIST challenge model).

    conv 32 5x5 (same), ReLU, maxpool 2, conv 64 5x5 (same), ReLU, maxpool 2, fc 1024, ReLU,
    fc classes.

    References:
        Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models Resistant to
        Adversarial Attacks", ICLR 2018 (github.com/MadryLab/mnist_challenge).

    """
    return nn.Sequential(
        OrderedDict(
            normalize=normalize_for(dataset, (1, 28, 28), "mnist_cnn"),
            conv1=nn.Conv2d(1, 32, 5, padding=2),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(32, 64, 5, padding=2),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(64 * 7 * 7, 1024),
            relu3=nn.ReLU(),
            dropout=nn.Dropout(dropout),
            fc2=nn.Linear(1024, num_classes),
        )
    )


__all__ = ["digits_mlp", "mnist_cnn", "mnist_small_cnn"]
