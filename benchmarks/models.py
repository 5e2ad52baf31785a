"""Reference models for the benchmarks: torchvision's when installed, else an exact copy.

The fallback ResNet-50 is the standard torchvision ("v1.5") bottleneck network: the
stride-2 sits on the 3×3 convolution of each stage's first block, convolutions have no
bias, ImageNet head with 1000 classes. It has 25,557,032 parameters and costs
4,089,184,256 MACs at 224×224, torchvision's published ``_ops`` of 4.09 GMACs.

The fallback MobileNetV3-small is torchvision's ``mobilenet_v3_small`` block for block (its
``_mobilenet_v3_conf`` table, ``_make_divisible`` squeeze widths, hard-sigmoid SE gates,
BatchNorm eps 1e-3, 1024-wide classifier, module names and initialisation): 2,542,856
parameters and 56,510,400 MACs at 224×224, torchvision's published ``num_params`` and
``_ops`` of 0.057 GMACs. Many small tensors: 43 of its 54 conv + linear weights hold fewer
than 2**15 entries.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = [
    "MOBILENET_V3_SMALL_MACS",
    "MOBILENET_V3_SMALL_PARAMS",
    "RESNET50_MACS",
    "RESNET50_PARAMS",
    "mobilenet_v3_small",
    "resnet50",
]

#: torchvision ``ResNet50_Weights.IMAGENET1K_V1.meta["num_params"]``
RESNET50_PARAMS = 25_557_032
#: torchvision ``_ops`` = 4.09 GMACs; exactly: convolutions + the fc layer at 224×224
RESNET50_MACS = 4_089_184_256
#: torchvision ``MobileNet_V3_Small_Weights.IMAGENET1K_V1.meta["num_params"]``
MOBILENET_V3_SMALL_PARAMS = 2_542_856
#: torchvision ``_ops`` = 0.057 GMACs; exactly: convolutions + linear layers at 224×224
MOBILENET_V3_SMALL_MACS = 56_510_400


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (carrying the stride), 1×1 expand ×4, plus the shortcut."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != out_planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A ResNet of ``block`` s (bottlenecks by default) with torchvision's module names."""

    def __init__(
        self,
        layers: tuple[int, int, int, int],
        num_classes: int = 1000,
        block: type[nn.Module] = Bottleneck,
    ) -> None:
        super().__init__()
        expansion: int = block.expansion  # type: ignore[assignment]
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_planes = 64
        stages: list[nn.Sequential] = []
        for i, blocks in enumerate(layers):
            planes = 64 * 2**i
            stride = 1 if i == 0 else 2
            stage = [block(in_planes, planes, stride)]
            in_planes = planes * expansion
            stage += [block(in_planes, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def resnet50() -> nn.Module:
    """ResNet-50 for ImageNet, randomly initialised (torchvision's if it is importable)."""
    try:
        from torchvision.models import resnet50 as tv_resnet50
    except ImportError:
        return ResNet((3, 4, 6, 3))
    return tv_resnet50(weights=None)


# ----------------------------------------------------------------------------- MobileNetV3


def _make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's ``_make_divisible``: round to a multiple of 8, never 10% below ``value``."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


def _conv_bn_act(
    c_in: int,
    c_out: int,
    kernel: int,
    stride: int = 1,
    groups: int = 1,
    activation: type[nn.Module] | None = None,
) -> nn.Sequential:
    """torchvision's ``Conv2dNormActivation``: conv without bias, BN (eps 1e-3), activation."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out, eps=0.001, momentum=0.01),
    ]
    if activation is not None:
        layers.append(activation(inplace=True))
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """torchvision's ``SqueezeExcitation`` with a hard-sigmoid gate, as MobileNetV3 uses it."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: Tensor) -> Tensor:
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return self.scale_activation(scale) * x


class InvertedResidual(nn.Module):
    """1×1 expand (if wider), depthwise k×k (carrying the stride), squeeze-excite, 1×1 project."""

    def __init__(
        self, c_in: int, kernel: int, expanded: int, c_out: int, se: bool, hs: bool, stride: int
    ) -> None:
        super().__init__()
        act: type[nn.Module] = nn.Hardswish if hs else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != c_in:
            layers.append(_conv_bn_act(c_in, expanded, 1, activation=act))
        layers.append(_conv_bn_act(expanded, expanded, kernel, stride, expanded, act))
        if se:
            layers.append(SqueezeExcitation(expanded, _make_divisible(expanded // 4)))
        layers.append(_conv_bn_act(expanded, c_out, 1))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


#: torchvision's ``mobilenet_v3_small`` blocks: (in, kernel, expanded, out, SE, hardswish, stride)
_MOBILENET_V3_SMALL = (
    (16, 3, 16, 16, True, False, 2),
    (16, 3, 72, 24, False, False, 2),
    (24, 3, 88, 24, False, False, 1),
    (24, 5, 96, 40, True, True, 2),
    (40, 5, 240, 40, True, True, 1),
    (40, 5, 240, 40, True, True, 1),
    (40, 5, 120, 48, True, True, 1),
    (48, 5, 144, 48, True, True, 1),
    (48, 5, 288, 96, True, True, 2),
    (96, 5, 576, 96, True, True, 1),
    (96, 5, 576, 96, True, True, 1),
)


class MobileNetV3(nn.Module):
    """MobileNetV3 with torchvision's module names (``features.1.block.0.0``, ``classifier``)."""

    def __init__(
        self,
        blocks: tuple[tuple[int, int, int, int, bool, bool, int], ...],
        last_channel: int,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_act(3, blocks[0][0], 3, 2, activation=nn.Hardswish)]
        layers += [InvertedResidual(*b) for b in blocks]
        last_in = blocks[-1][3]
        layers.append(_conv_bn_act(last_in, 6 * last_in, 1, activation=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(6 * last_in, last_channel),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=0.2, inplace=True),
            nn.Linear(last_channel, num_classes),
        )
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def mobilenet_v3_small() -> nn.Module:
    """MobileNetV3-small for ImageNet, randomly initialised (torchvision's if importable)."""
    try:
        from torchvision.models import mobilenet_v3_small as tv_mobilenet_v3_small
    except ImportError:
        return MobileNetV3(_MOBILENET_V3_SMALL, 1024)
    return tv_mobilenet_v3_small(weights=None)
