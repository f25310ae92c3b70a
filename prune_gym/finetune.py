"""Training and masked fine-tuning.

``train_classifier`` trains a classifier with SGD + cosine learning rate (optionally label
smoothing). Given masks, it multiplies them back into the weights after every optimiser step, so
pruned weights stay exactly zero (momentum would otherwise revive them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from prune_gym.pruning import PrunableLayer


@dataclass
class TrainConfig:
    """A training recipe: SGD with momentum and a cosine learning-rate schedule."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    seed: int = 0


@torch.no_grad()
def apply_masks(layers: Sequence[PrunableLayer], masks: Sequence[Tensor]) -> None:
    """Multiply each layer's weight by its mask in place."""
    for layer, mask in zip(layers, masks):
        layer.weight.mul_(mask)


def train_classifier(
    model: nn.Module,
    data: Dataset | tuple[Tensor, Tensor],
    config: TrainConfig | None = None,
    device: torch.device | str = "cpu",
    masks: Sequence[Tensor] | None = None,
    layers: Sequence[PrunableLayer] | None = None,
    progress: bool = False,
    description: str = "train",
) -> nn.Module:
    """Train ``model`` on ``data`` in place and return it in eval mode.

    With ``masks`` (and the matching ``layers``), pruned weights are held at zero throughout.
    The run is deterministic for a given ``config.seed`` on a given machine.
    """
    config = config or TrainConfig()
    if config.epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {config.epochs}")
    if (masks is None) != (layers is None):
        raise ValueError("pass masks and layers together (one mask per prunable layer)")
    if isinstance(data, tuple):
        data = TensorDataset(*data)
    device = torch.device(device)
    model.to(device).train()
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(data, batch_size=config.batch_size, shuffle=True, generator=generator, drop_last=False)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=True
    )
    steps = max(1, config.epochs * len(loader))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    if masks is not None:
        masks = [m.to(device) for m in masks]
        apply_masks(layers, masks)
    epochs = range(config.epochs)
    if progress:
        from tqdm.auto import tqdm

        epochs = tqdm(epochs, desc=description, unit="epoch")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        for _ in epochs:
            for x, y in loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                loss_fn(model(x), y).backward()
                optimizer.step()
                scheduler.step()
                if masks is not None:
                    apply_masks(layers, masks)
    return model.eval()
