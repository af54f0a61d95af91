"""Residual networks for 32x32 inputs: PreAct ResNet-18 and Wide ResNets, normalisation inside.

References:
    He, Zhang, Ren & Sun, "Identity Mappings in Deep Residual Networks", ECCV 2016.
    Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from attacks.validation import check_positive_int
from robustbench_local.models.zoo import MODELS, Normalize, normalize_for


class PreActBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus a shortcut.

    The same block serves PreAct ResNets (He et al., ECCV 2016) and Wide ResNets (Zagoruyko &
    Komodakis, BMVC 2016): a 1x1 convolution on the pre-activated input is the shortcut when the
    shape changes.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual output of the block."""
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """Pre-activation ResNet for 32x32 inputs with normalisation inside."""

    def __init__(
        self,
        num_blocks: Sequence[int],
        *,
        num_classes: int,
        dropout: float,
        normalize: Normalize,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.normalize = normalize
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        layers, in_planes = [], 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks, strict=True)):
            blocks = []
            for stride in [1 if i == 0 else 2] + [1] * (n - 1):
                blocks.append(PreActBlock(in_planes, planes, stride))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.bn = nn.BatchNorm2d(512)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, classes]`` for inputs ``[N, 3, 32, 32]`` in ``[0, 1]``."""
        out = self.conv1(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1)
        return self.linear(self.dropout(out))


@MODELS.register("preact_resnet18")
def preact_resnet18(*, num_classes: int, dropout: float, dataset: str = "cifar10") -> nn.Module:
    """PreAct ResNet-18 for CIFAR-10 (``[N, 3, 32, 32]``), as in Wong et al. (2020).

    References:
        He, Zhang, Ren & Sun, "Identity Mappings in Deep Residual Networks", ECCV 2016.

    """
    norm = normalize_for(dataset, (3, 32, 32), "preact_resnet18")
    return PreActResNet((2, 2, 2, 2), num_classes=num_classes, dropout=dropout, normalize=norm)


WideBasicBlock = PreActBlock  # the WRN basic block is the pre-activation block


class WideResNet(nn.Module):
    """WRN-depth-width for 32x32 inputs with normalisation inside."""

    def __init__(
        self,
        depth: int,
        width: int,
        *,
        num_classes: int,
        dropout: float,
        normalize: Normalize,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = (16, 16 * width, 32 * width, 64 * width)
        self.normalize = normalize
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        groups = []
        for i in range(3):
            blocks = [
                WideBasicBlock(widths[i] if j == 0 else widths[i + 1], widths[i + 1], s)
                for j, s in enumerate([1 if i == 0 else 2] + [1] * (n - 1))
            ]
            groups.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = groups
        self.bn = nn.BatchNorm2d(widths[3])
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, classes]`` for inputs ``[N, 3, 32, 32]`` in ``[0, 1]``."""
        out = self.block3(self.block2(self.block1(self.conv1(self.normalize(x)))))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1)
        return self.fc(self.dropout(out))


@MODELS.register("wide_resnet")
def wide_resnet(
    *, num_classes: int, dropout: float, dataset: str = "cifar10", depth: int = 28, width: int = 10
) -> nn.Module:
    """Wide ResNet WRN-``depth``-``width`` for CIFAR-10 (default WRN-28-10).

    ``depth`` must be ``6n + 4`` (10, 16, 22, 28, 34, ...); ``width`` multiplies the channels.
    Dropout here sits before the classifier (the paper's in-block dropout is not used).

    References:
        Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016.

    """
    if check_positive_int("wide_resnet depth", depth) < 10 or (depth - 4) % 6:
        raise ValueError(f"wide_resnet depth must be 6n+4 >= 10 (10, 16, 22, 28, ...), got {depth}")
    check_positive_int("wide_resnet width", width)
    norm = normalize_for(dataset, (3, 32, 32), "wide_resnet")
    return WideResNet(depth, width, num_classes=num_classes, dropout=dropout, normalize=norm)


__all__ = [
    "PreActBlock",
    "PreActResNet",
    "WideBasicBlock",
    "WideResNet",
    "preact_resnet18",
    "wide_resnet",
]
