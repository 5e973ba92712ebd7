"""Model definitions in plain torch (no torchvision): the bundled screening CNN and a small ResNet."""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Stage(nn.Module):
    """A strided conv followed by a residual conv."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.down = conv_bn(cin, cout, 2)
        self.body = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        return self.act(x + self.body(x))


class ScreeningCNN(nn.Module):
    """The compact CNN edgedx ships: a stride-2 stem, residual stages, global pooling, one linear head.

    Outputs logits (N, num_classes); the manifest says softmax.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        widths: tuple[int, ...] = (24, 32, 64, 128, 256),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.stem = conv_bn(in_channels, widths[0], 2)
        self.stages = nn.Sequential(*(_Stage(a, b) for a, b in zip(widths, widths[1:])))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(widths[-1], num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(cin, cout, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(self.conv1(x)) + self.skip(x))


class ResNet(nn.Module):
    """ResNet-18 layout (two basic blocks a stage) at any width; ``ResNet()`` is ResNet-18."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1000, width: int = 64, blocks: tuple[int, ...] = (2, 2, 2, 2)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        )
        layers, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2**i
            for j in range(n):
                layers.append(_BasicBlock(cin, cout, 2 if j == 0 and i > 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)))


ARCHITECTURES = {"screening_cnn": ScreeningCNN, "resnet": ResNet}
