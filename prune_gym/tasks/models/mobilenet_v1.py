"""MobileNet-V1 (Howard et al. 2017) adapted to 32x32 images, as in common CIFAR ports.

A 3x3 stem convolution (stride 1 instead of 2) and the paper's 13 depthwise-separable blocks
(depthwise 3x3 conv-BN-ReLU, pointwise 1x1 conv-BN-ReLU) with 64, 128, 128, 256, 256, 512 (x6)
and 1024 (x2) output channels. The strides are 1,2,1,2,1,2,1,1,1,1,1,2,1, so a 32x32 input
ends at 2x2 before global average pooling and the classifier. With ``width_multiplier=1`` and
10 classes it has ~3.2M parameters and 28 prunable layers (1 stem, 13 depthwise, 13 pointwise,
1 classifier); the depthwise convs have ``groups == in_channels``, which
``prune_gym.pruning.PrunableLayer.kind`` reports as ``"depthwise"``.
"""

from __future__ import annotations

from torch import Tensor, nn

from prune_gym.errors import ConfigError
from prune_gym.tasks.models.staged import StemBlocksHead

#: (output channels, stride) of the 13 depthwise-separable blocks, at width multiplier 1.
CIFAR_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


class DepthwiseSeparableBlock(nn.Module):
    """Depthwise 3x3 conv-BN-ReLU followed by pointwise 1x1 conv-BN-ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_planes, in_planes, 3, stride, 1, groups=in_planes, bias=False)
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.pointwise = nn.Conv2d(in_planes, planes, 1, 1, 0, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.depthwise(x)))
        return self.relu(self.bn2(self.pointwise(out)))


class MobileNetV1(StemBlocksHead):
    """MobileNet-V1 for 32x32 inputs.

    Args:
        num_classes: outputs of the classifier.
        width_multiplier: the paper's alpha; every layer's channel count is scaled by it
            (at least 8 channels per layer).
        in_channels: channels of the input image.

    ``stem``, ``blocks`` and ``head`` compose to ``forward`` (see :meth:`stages`).
    """

    def __init__(self, num_classes: int = 10, width_multiplier: float = 1.0, in_channels: int = 3) -> None:
        if not width_multiplier > 0:
            raise ConfigError(f"width_multiplier must be > 0 (e.g. 1.0, 0.75, 0.5, 0.25), got {width_multiplier}")

        def scaled(channels: int) -> int:
            return max(8, int(channels * width_multiplier))

        stem_planes = scaled(32)
        stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_planes, 3, 1, 1, bias=False),
            nn.BatchNorm2d(stem_planes),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        in_planes = stem_planes
        for channels, stride in CIFAR_BLOCKS:
            planes = scaled(channels)
            blocks.append(DepthwiseSeparableBlock(in_planes, planes, stride))
            in_planes = planes
        head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_planes, num_classes))
        super().__init__(stem, blocks, head)


def mobilenet_v1(num_classes: int = 10, width_multiplier: float = 1.0, in_channels: int = 3) -> MobileNetV1:
    """MobileNet-V1 for CIFAR (~3.2M parameters at width 1 with 10 classes)."""
    return MobileNetV1(num_classes, width_multiplier, in_channels)
