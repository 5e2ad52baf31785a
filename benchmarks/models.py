"""Reference models for the benchmarks: torchvision's when installed, else an exact copy.

The fallback ResNet-50 is the standard torchvision ("v1.5") bottleneck network: the
stride-2 sits on the 3×3 convolution of each stage's first block, convolutions have no
bias, ImageNet head with 1000 classes. It has 25,557,032 parameters and costs
4,089,184,256 MACs at 224×224, torchvision's published ``_ops`` of 4.09 GMACs.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["RESNET50_MACS", "RESNET50_PARAMS", "resnet50"]

#: torchvision ``ResNet50_Weights.IMAGENET1K_V1.meta["num_params"]``
RESNET50_PARAMS = 25_557_032
#: torchvision ``_ops`` = 4.09 GMACs; exactly: convolutions + the fc layer at 224×224
RESNET50_MACS = 4_089_184_256


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
    """A bottleneck ResNet with torchvision's module names (``layer1.0.conv1``, ``fc``)."""

    def __init__(self, layers: tuple[int, int, int, int], num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_planes = 64
        stages: list[nn.Sequential] = []
        for i, blocks in enumerate(layers):
            planes = 64 * 2**i
            stride = 1 if i == 0 else 2
            stage = [Bottleneck(in_planes, planes, stride)]
            in_planes = planes * Bottleneck.expansion
            stage += [Bottleneck(in_planes, planes) for _ in range(blocks - 1)]
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
