"""Reference CNN architectures for zapopt experiments.

Why these shapes: the ZAP method predicts the zeros a ReLU leaves in a conv's output, so
every model here is built from plain ops that export to a flat ONNX graph
(Conv/BatchNormalization/Relu/Add/MaxPool/Resize/Gemm) with one non-inplace ``nn.ReLU``
module per activation, which also makes the activations easy to hook in PyTorch.

Fashion-MNIST models take ``[N, 1, 28, 28]`` float32 pixels in [0, 1] (pixel / 255) and do
the bilinear upsampling and the dataset normalization inside the model, so an exported
ONNX file needs no preprocessing beyond the division by 255.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

#: Fashion-MNIST training-set pixel mean and standard deviation (pixels scaled to [0, 1]).
FASHION_MEAN = 0.2860
FASHION_STD = 0.3530
#: Side of a Fashion-MNIST image; the models' input is always 28x28.
FASHION_SIDE = 28


def _check_positive_int(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class FashionInput(nn.Module):
    """Upsample (optional, bilinear, 28 -> upsample_to) and normalize ``[N, 1, 28, 28]`` pixels.

    Kept inside the model so the ONNX file is self-contained: callers only divide by 255.
    """

    def __init__(self, upsample_to: int | None) -> None:
        super().__init__()
        if upsample_to is not None:
            _check_positive_int("upsample_to", upsample_to)
        self.upsample_to = upsample_to
        self.register_buffer("mean", torch.tensor(FASHION_MEAN))
        self.register_buffer("std", torch.tensor(FASHION_STD))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample_to is not None and self.upsample_to != FASHION_SIDE:
            # A constant scale (not a size) keeps the exported Resize free of Shape/Concat ops.
            scale = self.upsample_to / FASHION_SIDE
            x = F.interpolate(x, scale_factor=(scale, scale), mode="bilinear",
                              align_corners=False, recompute_scale_factor=False)
        return (x - self.mean) / self.std


def _kaiming_init(module: nn.Module, linear_std: float | None = None) -> None:
    """He initialization for ReLU nets; matters for the BN-free VGG to train at all.
    ``linear_std``: draw Linear weights from N(0, std) instead (torchvision's MobileNetV2)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is None:
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
            else:
                nn.init.normal_(m.weight, 0, linear_std)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- VGG-16

#: Convs per block in VGG-16 (13 convs in 5 blocks).
VGG16_BLOCKS = (2, 2, 3, 3, 3)


class VGG16Style(nn.Module):
    """VGG-16's conv stack (13 3x3 convs, 5 blocks, max-pool between blocks), narrowed.

    Channels per block are ``width * (1, 2, 4, 8, 8)``. Four 2x2 max-pools between the five
    blocks leave 4x4 maps in the last block at 64x64 input. The classifier is global
    average pooling + dropout + one Linear layer, which keeps the parameter count small
    and the last conv layers (where ZAP saves most) large relative to the whole model.
    ``bn=False`` is the paper's setting (and gives much sparser activations).
    """

    def __init__(self, num_classes: int = 10, width: int = 16, upsample_to: int | None = 64,
                 bn: bool = False, dropout: float = 0.3, in_channels: int = 1) -> None:
        super().__init__()
        _check_positive_int("num_classes", num_classes)
        _check_positive_int("width", width)
        _check_positive_int("in_channels", in_channels)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.prep = FashionInput(upsample_to)
        layers: list[nn.Module] = []
        c_in = in_channels
        for block, (n_convs, mult) in enumerate(zip(VGG16_BLOCKS, (1, 2, 4, 8, 8))):
            if block > 0:
                layers.append(nn.MaxPool2d(2, 2))
            c_out = width * mult
            for _ in range(n_convs):
                layers.append(nn.Conv2d(c_in, c_out, 3, padding=1, bias=not bn))
                if bn:
                    layers.append(nn.BatchNorm2d(c_out))
                layers.append(nn.ReLU())
                c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(c_in, num_classes))
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.prep(x))
        return self.classifier(torch.flatten(self.pool(x), 1))


# --------------------------------------------------------------------------- ResNet-18


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus shortcut (1x1 conv + BN when the shape changes), ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet18Style(nn.Module):
    """CIFAR-style ResNet-18: stem conv3x3, four stages of two basic blocks, GAP, Linear.

    Channels per stage are ``width * (1, 2, 4, 8)``; stages 2-4 halve the resolution.
    """

    def __init__(self, num_classes: int = 10, width: int = 16, upsample_to: int | None = 32,
                 in_channels: int = 1) -> None:
        super().__init__()
        _check_positive_int("num_classes", num_classes)
        _check_positive_int("width", width)
        _check_positive_int("in_channels", in_channels)
        self.prep = FashionInput(upsample_to)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        stages: list[nn.Module] = []
        c_in = width
        for stage, mult in enumerate((1, 2, 4, 8)):
            c_out = width * mult
            stride = 1 if stage == 0 else 2
            stages.append(nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)))
            c_in = c_out
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(self.prep(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


# --------------------------------------------------------------------------- AlexNet


class AlexNetStyle(nn.Module):
    """The CIFAR AlexNet analogue: 5x5, 5x5, 3x3, 3x3, 3x3 convs with ReLU, 3 max-pools, 3 FCs.

    Channels are ``width * (1, 2, 3, 3, 2)`` (AlexNet's 64-192-384-256-256 ratio, roughly).
    At 32x32 input the pools leave 4x4 maps for the classifier.
    """

    def __init__(self, num_classes: int = 10, width: int = 32, upsample_to: int | None = 32,
                 hidden: int = 256, dropout: float = 0.3, in_channels: int = 1) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("width", width),
                            ("hidden", hidden), ("in_channels", in_channels)):
            _check_positive_int(name, value)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        c1, c2, c3, c4, c5 = (width * m for m in (1, 2, 3, 3, 2))
        self.prep = FashionInput(upsample_to)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c3, c4, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c4, c5, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
        )
        side = 28 if upsample_to is None else upsample_to
        side = side // 2 // 2 // 2
        if side < 1:
            raise ValueError(f"upsample_to={upsample_to} is too small for three 2x2 max-pools")
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(c5 * side * side, hidden), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.prep(x))
        return self.classifier(torch.flatten(x, 1))


# --------------------------------------------------------------------------- MobileNetV2
# A faithful copy of torchvision.models.mobilenetv2 (module names included) so that
# torchvision's ImageNet state_dict loads with strict=True; torchvision itself does not
# import in this environment.


def _make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    """torchvision's channel rounding: nearest multiple of divisor, never 10 % below v."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class Conv2dNormActivation(nn.Sequential):
    """Conv2d + BatchNorm2d + ReLU6 (indices 0, 1, 2 as in torchvision)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1) -> None:
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU6(),
        )
        self.out_channels = c_out


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection (+ identity)."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride should be 1 or 2 instead of {stride}")
        hidden_dim = int(round(inp * expand_ratio))
        self.stride = stride
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(Conv2dNormActivation(inp, hidden_dim, kernel_size=1))
        layers.extend([
            Conv2dNormActivation(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ])
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup
        self._is_cn = stride > 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2 (width 1.0, ImageNet): expects ImageNet-normalized RGB."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0,
                 dropout: float = 0.2, round_nearest: int = 8) -> None:
        super().__init__()
        _check_positive_int("num_classes", num_classes)
        input_channel = 32
        last_channel = 1280
        settings = [
            # t, c, n, s
            [1, 16, 1, 1],
            [6, 24, 2, 2],
            [6, 32, 3, 2],
            [6, 64, 4, 2],
            [6, 96, 3, 1],
            [6, 160, 3, 2],
            [6, 320, 1, 1],
        ]
        input_channel = _make_divisible(input_channel * width_mult, round_nearest)
        self.last_channel = _make_divisible(last_channel * max(1.0, width_mult), round_nearest)
        features: list[nn.Module] = [Conv2dNormActivation(3, input_channel, stride=2)]
        for t, c, n, s in settings:
            output_channel = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(InvertedResidual(input_channel, output_channel,
                                                 s if i == 0 else 1, expand_ratio=t))
                input_channel = output_channel
        features.append(Conv2dNormActivation(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout),
                                        nn.Linear(self.last_channel, num_classes))
        _kaiming_init(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


# --------------------------------------------------------------------------- registry

MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "vgg16": VGG16Style,
    "resnet18": ResNet18Style,
    "alexnet": AlexNetStyle,
    "mobilenet_v2": MobileNetV2,
}


def build_model(name: str, **kwargs: object) -> nn.Module:
    """Build a model by registry name; keyword arguments go to its constructor."""
    try:
        builder = MODEL_BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODEL_BUILDERS)}") from None
    return builder(**kwargs)
