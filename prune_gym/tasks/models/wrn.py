"""Wide Residual Networks (Zagoruyko & Komodakis 2016) for 32x32 images: WRN-28-8 and kin.

Pre-activation wide basic blocks (BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3) in three groups
of ``(depth - 4) / 6`` blocks with ``16k``, ``32k`` and ``64k`` channels after a 16-channel
stem. Where a block changes the shape (the first block of every group when ``k > 1``), the
shortcut is a 1x1 convolution of the pre-activated input, as in the authors' code; those
shortcut weights are prunable layers too. WRN-28-8 has ~23.4M parameters and 29 prunable
layers (1 stem conv, 24 block convs, 3 shortcut convs, 1 classifier).
"""

from __future__ import annotations

from torch import Tensor, nn

from prune_gym.errors import ConfigError
from prune_gym.tasks.models.staged import StemBlocksHead


class WideBasicBlock(nn.Module):
    """A pre-activation wide basic block."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, 0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        # bn1 returns a new tensor, so the in-place ReLU never touches the block's input (which
        # the evaluator may hold as a cached activation).
        activated = self.relu1(self.bn1(x))
        out = self.conv1(activated)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        # With a shape change the shortcut sees the pre-activated input (authors' code);
        # otherwise the identity shortcut carries the raw input.
        residual = x if self.shortcut is None else self.shortcut(activated)
        return out + residual


class WideResNet(StemBlocksHead):
    """WRN-``depth``-``widen_factor`` for 32x32 inputs.

    Args:
        depth: total depth ``6n + 4`` (16, 22, 28, 40, ...); ``n`` blocks per group.
        widen_factor: ``k``, the width multiplier of the three groups (16k, 32k, 64k channels).
        num_classes: outputs of the classifier.
        dropout: dropout rate between the two convs of every block (0 disables it).
        in_channels: channels of the input image.

    ``stem``, ``blocks`` and ``head`` compose to ``forward`` (see :meth:`stages`).
    """

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 8,
        num_classes: int = 10,
        dropout: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        if depth < 10 or (depth - 4) % 6:
            raise ConfigError(f"WRN depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40), got {depth}")
        if widen_factor < 1:
            raise ConfigError(f"widen_factor must be a positive integer, got {widen_factor}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        blocks_per_group = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        blocks: list[nn.Module] = []
        in_planes = 16
        for group, planes in enumerate(widths):
            for index in range(blocks_per_group):
                stride = 2 if group > 0 and index == 0 else 1
                blocks.append(WideBasicBlock(in_planes, planes, stride, dropout))
                in_planes = planes
        head = nn.Sequential(
            nn.BatchNorm2d(in_planes),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(in_planes, num_classes),
        )
        super().__init__(stem, blocks, head)
        nn.init.zeros_(head[-1].bias)


def wrn28x8(num_classes: int = 10, dropout: float = 0.0, in_channels: int = 3) -> WideResNet:
    """WRN-28-8: 4 blocks per group, widths 128 / 256 / 512 (~23.4M parameters)."""
    return WideResNet(28, 8, num_classes, dropout, in_channels)
