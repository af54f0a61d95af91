"""Fixtures shared by the attack tests."""

from __future__ import annotations

import pytest
import torch
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
def mnist_cnn(mnist_dir):
    """A tiny CNN trained on 5000 MNIST images (a couple of seconds) and 300 test images."""
    import robustbench_local as rbl

    train, test = rbl.load_dataset("mnist", mnist_dir)
    x, y = train.tensors
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 5, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 5, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    )  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(2):
        for idx in torch.randperm(5000).split(100):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    xt, yt = test.tensors
    return model.eval(), xt[:300].clone(), yt[:300].clone()
