"""Shared pieces of the image task families (CIFAR-10, ImageNet): split indices, lazily
transformed subsets and the lookup of a task's weights file."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from prune_gym.errors import ConfigError
from prune_gym.tasks.base import MissingResourceError, Task, resolve_path


class TransformedSubset(Dataset):
    """The samples ``indices`` of ``base`` with ``transform`` applied to each input.

    ``base`` yields ``(image, label)`` pairs without a transform (PIL images), so one decoded
    dataset can serve splits with different transforms (augmented train, plain reward).
    """

    def __init__(self, base: Dataset, indices: Sequence[int], transform: Callable[[Any], Tensor]) -> None:
        self.base = base
        self.indices = list(indices)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image, label = self.base[self.indices[index]]
        return self.transform(image), label


def held_out_split(n: int, reward_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """Train and reward indices of ``range(n)``: ``reward_size`` (capped at ``n``) random ones,
    fixed by ``seed``, go to the reward split and the rest to train. Both come sorted (reads
    in file order)."""
    if reward_size < 1:
        raise ConfigError(f"reward_size must be a positive number of images, got {reward_size}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    reward_size = min(reward_size, n)
    reward, train = order[:reward_size], order[reward_size:]
    return train.sort().values, reward.sort().values


def explicit_weights_file(task: Task, weights: str | os.PathLike | None) -> Path | None:
    """The checkpoint named by ``weights`` or ``$task.weights_env_var``; None if neither is set.

    Raises:
        MissingResourceError: if a path is given but no file is there (the message says where
            the path came from).
    """
    path = resolve_path(weights, task.weights_env_var)
    if path is None:
        return None
    if not path.is_file():
        source = "the weights= argument" if weights is not None else f"${task.weights_env_var}"
        raise MissingResourceError(
            f"{task.name} weights: no checkpoint file at {path} (from {source}). Pass an existing "
            "state-dict file, or leave it unset to use the default weights."
        )
    return path


#: Padding of the random crops of ``crop_flip`` (the standard CIFAR recipe).
CROP_PADDING = 4


def crop_flip(images: Tensor, padding: int = CROP_PADDING) -> Tensor:
    """Random crops from zero-padded images and random horizontal flips, per image.

    ``images`` is an ``(N, C, H, W)`` batch on any device; the randomness comes from torch's
    global generator (so a resumed training run draws the same crops). Zero padding of
    normalised images pads with the dataset mean, as padding the raw image with black would
    up to a shift.
    """
    if images.dim() != 4:
        raise ConfigError(f"crop_flip expects (N, C, H, W) images, got shape {tuple(images.shape)}")
    n, _, height, width = images.shape
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    # Offsets and flips are drawn on the CPU so the stream does not depend on the device.
    offset_y = torch.randint(0, 2 * padding + 1, (n,)).to(images.device)
    offset_x = torch.randint(0, 2 * padding + 1, (n,)).to(images.device)
    flip = (torch.rand(n) < 0.5).to(images.device)
    rows = offset_y[:, None] + torch.arange(height, device=images.device)  # (N, H)
    columns = torch.arange(width, device=images.device).expand(n, width)
    columns = torch.where(flip[:, None], columns.flip(1), columns) + offset_x[:, None]  # (N, W)
    batch = torch.arange(n, device=images.device)[:, None, None]
    cropped = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], columns[:, None, :]]  # (N, H, W, C)
    return cropped.permute(0, 3, 1, 2).contiguous()
