"""Model definitions in plain torch (no torchvision): the bundled screening CNN, a small ResNet, and
torchvision-layout ResNet-18/34/50 (their state dicts load by name)."""

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


# -- torchvision's ResNet layout (parameter names match torchvision.models.resnet*, no torchvision needed) --


class TVBasicBlock(nn.Module):
    """torchvision's ``BasicBlock``: conv1/bn1, conv2/bn2, optional downsample."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + skip)


class TVBottleneck(nn.Module):
    """torchvision's ``Bottleneck`` (ResNet v1.5: the stride sits in the 3x3 convolution)."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + skip)


class TorchvisionResNet(nn.Module):
    """A ResNet whose state dict keys are torchvision's (``conv1.weight``, ``layer1.0.bn1.running_mean``, ``fc.bias``).

    Args:
        block: :class:`TVBasicBlock` (ResNet-18/34) or :class:`TVBottleneck` (ResNet-50).
        layers: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
        num_classes: the ``fc`` layer's outputs.
        in_channels: 3 for ImageNet-style models; 1 where ``conv1`` was replaced for gray input.
    """

    def __init__(self, block: type[nn.Module], layers: tuple[int, ...], num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._stage(block, 64, layers[0], 1)
        self.layer2 = self._stage(block, 128, layers[1], 2)
        self.layer3 = self._stage(block, 256, layers[2], 2)
        self.layer4 = self._stage(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _stage(self, block: type[nn.Module], width: int, blocks: int, stride: int) -> nn.Sequential:
        out = width * block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))
        stage = [block(self.inplanes, width, stride, downsample)]
        self.inplanes = out
        stage += [block(out, width) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000, in_channels: int = 3) -> TorchvisionResNet:
    return TorchvisionResNet(TVBasicBlock, (2, 2, 2, 2), num_classes, in_channels)


def resnet34(num_classes: int = 1000, in_channels: int = 3) -> TorchvisionResNet:
    return TorchvisionResNet(TVBasicBlock, (3, 4, 6, 3), num_classes, in_channels)


def resnet50(num_classes: int = 1000, in_channels: int = 3) -> TorchvisionResNet:
    return TorchvisionResNet(TVBottleneck, (3, 4, 6, 3), num_classes, in_channels)


ARCHITECTURES.update(resnet18=resnet18, resnet34=resnet34, resnet50=resnet50)
#: Architectures whose class count and input channels are read from the state dict itself.
SHAPED_BY_WEIGHTS = {"resnet18", "resnet34", "resnet50"}


def load_folded_onnx(model: nn.Module, path: str) -> int:
    """Warm-start ``model`` from an ONNX export of the same architecture whose BatchNorm layers were
    folded into the convolutions (what :mod:`export.to_onnx` writes).

    Each Conv2d gets the folded weight, and its BatchNorm becomes the identity carrying the folded
    bias (scale 1, running mean 0, running variance 1 - eps); the last Linear gets the Gemm's
    weights. Train such a model with frozen BatchNorm statistics (:func:`freeze_batchnorm`).
    Returns the number of layers loaded.

    Raises:
        ValueError: the ONNX graph's convolutions or head do not fit ``model``.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(path).graph
    init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    # A convolution that writes a graph output is an explanation head (export/explain.py's
    # class-activation map), not a layer of the network.
    convs = [n for n in graph.node if n.op_type == "Conv" and not outputs.intersection(n.output)]
    gemms = [n for n in graph.node if n.op_type == "Gemm"]
    pairs, modules = [], list(model.modules())
    for i, m in enumerate(modules):
        if isinstance(m, nn.Conv2d):
            bn = modules[i + 1] if i + 1 < len(modules) and isinstance(modules[i + 1], nn.BatchNorm2d) else None
            pairs.append((m, bn))
    linears = [m for m in modules if isinstance(m, nn.Linear)]
    if len(convs) != len(pairs) or len(gemms) != 1 or len(linears) != 1:
        raise ValueError(f"{path}: {len(convs)} convolutions and {len(gemms)} Gemm for a model with {len(pairs)} and {len(linears)}")
    with torch.no_grad():
        for node, (conv, bn) in zip(convs, pairs):
            w = torch.from_numpy(init[node.input[1]].copy())
            if w.shape != conv.weight.shape:
                raise ValueError(f"{path}: {node.name} has weights {tuple(w.shape)}, the model {tuple(conv.weight.shape)}")
            conv.weight.copy_(w)
            b = torch.from_numpy(init[node.input[2]].copy()) if len(node.input) > 2 else torch.zeros(w.shape[0])
            if bn is None:
                raise ValueError(f"{path}: a convolution without BatchNorm to carry the folded bias")
            bn.weight.fill_(1.0)
            bn.bias.copy_(b)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
        g = gemms[0]
        w = torch.from_numpy(init[g.input[1]].copy())
        trans_b = any(a.name == "transB" and a.i for a in g.attribute)
        linears[0].weight.copy_(w if trans_b else w.T)
        linears[0].bias.copy_(torch.from_numpy(init[g.input[2]].copy()))
    return len(pairs) + 1


def freeze_batchnorm(model: nn.Module) -> None:
    """Put every BatchNorm layer in eval mode (running statistics; call after ``model.train()``)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
