"""The CIFAR-100 architectures that knowledge-distillation papers compare on, as defined in RepDistiller
(Tian, Krishnan and Isola, "Contrastive Representation Distillation", 2020), written here.

- ``resnet8x4`` / ``resnet32x4``: CIFAR ResNets of depth 6n + 2 with basic blocks, stages of 64, 128 and 256
  channels after a 32-channel stem (RepDistiller's "x4" widths). About 1.2M and 7.4M parameters.
- ``wrn_16_2`` / ``wrn_40_2``: wide ResNets (Zagoruyko and Komodakis) of depth 6n + 4 and widening factor 2, with
  pre-activation blocks. About 0.7M and 2.2M parameters.

Both end in global average pooling, so any input size works (CIFAR's 32x32 gives RepDistiller's 8x8 pool).
"""

from __future__ import annotations

import torch
from torch import nn

from ensemble.models.registry import register_model


def _init(model: nn.Module) -> nn.Module:
    """RepDistiller's initialisation: He-normal convolutions (fan out), unit BN scales, zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
    return model


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the input (a strided 1x1 conv + BN when the shape changes), then ReLU."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, widths: list[int], in_channels: int, num_classes: int):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, previous = [], widths[0]
        for i, width in enumerate(widths[1:]):
            blocks = [BasicBlock(previous if j == 0 else width, width, 2 if i and j == 0 else 1) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            previous = width
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(previous, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class WideBlock(nn.Module):
    """Pre-activation: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus the input (a strided 1x1 conv when the shape changes)."""

    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.equal = in_channels == channels and stride == 1
        self.shortcut = None if self.equal else nn.Conv2d(in_channels, channels, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = torch.relu(self.bn1(x))
        out = self.conv2(torch.relu(self.bn2(self.conv1(activated))))
        return out + (x if self.equal else self.shortcut(activated))


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, in_channels: int, num_classes: int):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        stages = []
        for i in range(3):
            blocks = [WideBlock(widths[i] if j == 0 else widths[i + 1], widths[i + 1], 2 if i and j == 0 else 1)
                      for j in range(n)]
            stages.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = torch.relu(self.bn(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@register_model("resnet8x4")
def resnet8x4(input_shape, num_classes) -> nn.Module:
    return CifarResNet(8, [32, 64, 128, 256], input_shape[0], num_classes)


@register_model("resnet32x4")
def resnet32x4(input_shape, num_classes) -> nn.Module:
    return CifarResNet(32, [32, 64, 128, 256], input_shape[0], num_classes)


@register_model("wrn_16_2")
def wrn_16_2(input_shape, num_classes) -> nn.Module:
    return WideResNet(16, 2, input_shape[0], num_classes)


@register_model("wrn_40_2")
def wrn_40_2(input_shape, num_classes) -> nn.Module:
    return WideResNet(40, 2, input_shape[0], num_classes)
