"""A small model zoo with normalisation inside, and safe checkpoint I/O.

Every model takes float ``[N, C, H, W]`` inputs in ``[0, 1]`` and returns logits ``[N, classes]``;
its first layer is a :class:`Normalize` holding the dataset's mean and std. The registry and
builder live in :mod:`.zoo`, the architectures in :mod:`.small` (digits, MNIST) and
:mod:`.resnets` (CIFAR-10), checkpoints in :mod:`.checkpoints`. A user's own architecture is
registered with :func:`register_model` or named by import path (``"mypkg.nets:Net"``);
:func:`wrap_model` (:mod:`.wrap`) adapts a model's outputs and preprocessing to the contract;
:func:`example_model` (:mod:`.examples`) is a small trained model for examples, cached on disk.

Example:
    >>> model = create_model("digits_mlp")
    >>> model(torch.rand(2, 1, 8, 8)).shape
    torch.Size([2, 10])

References:
    Wong, Rice & Kolter, "Fast is better than free: Revisiting adversarial training", ICLR 2020.
    Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018.
    He, Zhang, Ren & Sun, "Identity Mappings in Deep Residual Networks", ECCV 2016.
    Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016.
"""

from __future__ import annotations

from robustbench_local.models.checkpoints import (
    FORMAT_VERSION,
    arch_name,
    load_checkpoint,
    save_checkpoint,
    weights_digest,
)
from robustbench_local.models.examples import EXAMPLE_RECIPES, example_model
from robustbench_local.models.resnets import (
    PreActBlock,
    PreActResNet,
    WideBasicBlock,
    WideResNet,
    preact_resnet18,
    wide_resnet,
)
from robustbench_local.models.small import digits_mlp, mnist_cnn, mnist_small_cnn
from robustbench_local.models.wrap import WrappedModel, wrap_model
from robustbench_local.models.zoo import (
    MODELS,
    Normalize,
    create_model,
    model_names,
    register_model,
)

__all__ = [
    "EXAMPLE_RECIPES",
    "FORMAT_VERSION",
    "MODELS",
    "Normalize",
    "PreActBlock",
    "PreActResNet",
    "WideBasicBlock",
    "WideResNet",
    "WrappedModel",
    "arch_name",
    "create_model",
    "digits_mlp",
    "example_model",
    "load_checkpoint",
    "mnist_cnn",
    "mnist_small_cnn",
    "model_names",
    "preact_resnet18",
    "register_model",
    "save_checkpoint",
    "weights_digest",
    "wide_resnet",
    "wrap_model",
]
