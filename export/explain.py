"""Extra graph outputs for trust checks: penultimate features (out-of-distribution score) and a
class-activation map (CAM), plus optional horizontal-flip test-time augmentation, all inside the
exported graph so every backend computes the same thing.

CAM (Zhou et al. 2016) needs a network that ends in global average pooling followed by one linear
layer: the class score is then the spatial mean of ``W_c . f(y, x)``, so the map ``W_c . f(y, x)``
says exactly where the score came from, at the cost of one 1x1 convolution on the last feature map.
For other heads (several dense layers, attention pooling, a flattening classifier) that identity
does not hold and a map would need gradients (Grad-CAM), which an inference graph does not carry;
:func:`gap_linear_parts` then returns the reason and the export has no map.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

FEATURES_NAME = "features"
CAM_NAME = "cam"


def gap_linear_parts(model: nn.Module) -> tuple[nn.Module, nn.Linear] | str:
    """(backbone, linear) of a model shaped ``backbone -> head = [AdaptiveAvgPool2d(1), Flatten, (Dropout), Linear]``,
    or why it is not (a sentence for the export log and docs)."""
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Sequential):
        return _torchvision_parts(model)
    layers = [m for m in head if not isinstance(m, (nn.Flatten, nn.Dropout, nn.Identity))]
    pool_ok = len(layers) == 2 and isinstance(layers[0], (nn.AdaptiveAvgPool2d,)) and layers[0].output_size in (1, (1, 1))
    if not pool_ok or not isinstance(layers[1], nn.Linear):
        return f"{type(model).__name__}'s head is {[type(m).__name__ for m in head]}, not global average pooling + one linear layer"
    children = [m for name, m in model.named_children() if name != "head"]
    return nn.Sequential(*children), layers[1]


def _torchvision_parts(model: nn.Module) -> tuple[nn.Module, nn.Linear] | str:
    """The torchvision layout (ResNet and alike): children applied in order, the last two
    ``avgpool = AdaptiveAvgPool2d(1)`` and ``fc`` (or ``classifier``) one Linear, flattened between.
    :func:`explainable` checks the result against the model itself, since ``forward`` may do more."""
    children = list(model.named_children())
    names = [n for n, _ in children]
    if len(children) >= 3 and names[-2] == "avgpool" and names[-1] in ("fc", "classifier"):
        pool, linear = children[-2][1], children[-1][1]
        if isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size in (1, (1, 1)) and isinstance(linear, nn.Linear):
            return nn.Sequential(*(m for _, m in children[:-2])), linear
    return (f"{type(model).__name__} has neither a `head` of global average pooling and one linear layer nor torchvision's "
            "`avgpool` + `fc`; CAM needs that shape")


class Explained(nn.Module):
    """``x -> (logits, features, cam)`` for a GAP + linear model.

    ``features`` (N, C) are the pooled penultimate activations; ``cam`` (N, K, h, w) the per-class
    maps without bias, whose spatial mean plus the bias is the logit. With ``flip_tta`` the
    backbone also sees the mirrored image and its feature map, mirrored back, is averaged in: the
    logits are then the mean of both views' logits.
    """

    def __init__(self, backbone: nn.Module, linear: nn.Linear, flip_tta: bool = False) -> None:
        super().__init__()
        self.backbone, self.flip_tta = backbone, flip_tta
        self.linear = linear
        k, c = linear.weight.shape
        self.cam = nn.Conv2d(c, k, 1, bias=False)
        with torch.no_grad():
            self.cam.weight.copy_(linear.weight.detach().reshape(k, c, 1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = self.backbone(x)
        if self.flip_tta:
            f = 0.5 * (f + torch.flip(self.backbone(torch.flip(x, dims=[3])), dims=[3]))
        pooled = f.mean(dim=(2, 3))
        return self.linear(pooled), pooled, self.cam(f)


class FlipTTA(nn.Module):
    """Mean of the logits of ``x`` and its mirror image, for models without a CAM-able head."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.model(x) + self.model(torch.flip(x, dims=[3])))


def explainable(model: nn.Module, flip_tta: bool = False, example: torch.Tensor | None = None) -> tuple[nn.Module, list[str], str | None]:
    """The module to export, its output names, and why there is no CAM/features output (or None).

    With an ``example`` input, the rebuilt module's logits must equal the model's own (a
    ``forward`` that does more than apply its children in order, say a final ReLU or a second
    pooling, would otherwise give a different model); when they do not, the model is exported as
    it is, with the reason.
    """
    parts = gap_linear_parts(model)
    if not isinstance(parts, str) and example is not None:
        with torch.inference_mode():
            want = first_output(model(example)).float()
            got = Explained(*parts)(example)[0].float()
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, float(want.abs().max()))):
            parts = (f"{type(model).__name__}'s forward is not its children in order then pooling and the linear layer "
                     "(the rebuilt logits differ); CAM needs that shape")
    if isinstance(parts, str):
        return (FlipTTA(model) if flip_tta else model).eval(), ["logits"], parts
    return Explained(*parts, flip_tta=flip_tta).eval(), ["logits", FEATURES_NAME, CAM_NAME], None


def first_output(out: Any) -> Any:
    """The logits of a module that may return several outputs."""
    return out[0] if isinstance(out, (tuple, list)) else out
