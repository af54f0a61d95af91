"""Fixtures shared by the attack tests."""

from __future__ import annotations

import pytest
from torch import nn


def art_classifier(model: nn.Module, input_shape: tuple[int, ...] = (1, 8, 8)):
    """ART's PyTorchClassifier around ``model`` (10 classes, inputs in [0, 1], CPU)."""
    import art.estimators.classification as art_classification

    return art_classification.PyTorchClassifier(
        model=model,
        loss=nn.CrossEntropyLoss(),
        input_shape=input_shape,
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )


@pytest.fixture(scope="session")
def mnist_cnn(mnist_dir, trained):
    """A tiny CNN trained on 5000 MNIST images (tests/trained.py's ``mnist_tiny_cnn``) and the
    first 300 test images."""
    import robustbench_local as rbl

    _, test = rbl.load_dataset("mnist", mnist_dir)
    xt, yt = test.tensors
    return trained("mnist_tiny_cnn"), xt[:300].clone(), yt[:300].clone()
