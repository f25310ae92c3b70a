"""The shape the convolutional models of this package share: a stem, a sequence of blocks, a head."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class StemBlocksHead(nn.Module):
    """``head(blocks(stem(x)))``, its convolutions He-initialised (fan out).

    :meth:`stages` lists the stem, each block and the head, so that evaluation can resume at
    any block boundary (``prune_gym.evaluation``). Subclasses build the three parts and hand
    them over; the parameter names (``stem.*``, ``blocks.N.*``, ``head.*``) are the checkpoints'.
    """

    def __init__(self, stem: nn.Module, blocks: Sequence[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = nn.Sequential(*blocks)
        self.head = head
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def stages(self) -> list[nn.Module]:
        """Modules whose composition in order is ``forward``: evaluation can resume between them."""
        return [self.stem, *self.blocks, self.head]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))
