"""What the image classification tasks (CIFAR-10, ImageNet) share: :class:`ImageClassificationTask`
(weights lookup, splits from a data folder, availability), split indices, lazily transformed
subsets, and the random crops and flips of train batches on the device."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from prune_gym.errors import ConfigError, MissingResourceError
from prune_gym.tasks.base import Availability, Splits, Task, load_state_dict_file, resolve_path


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


class ImageClassificationTask(Task):
    """An image classifier on a dataset read from a folder: the train images minus
    ``reward_size`` held-out ones (chosen by the split seed) form the train split, those the
    reward split, the dataset's test (validation) images the test split. A subclass says where
    the data is (:meth:`locate`), how to read it (:meth:`read`), how to transform an image
    (:meth:`transform`), where default weights may be (:meth:`default_weights_files`) and what to
    say when there are none (:meth:`missing_weights_message`, :attr:`weights_hint`)."""

    reward_size: int = 0
    #: What ``availability`` says when no weights are found.
    weights_hint: str = ""

    def locate(self, data_dir: str | os.PathLike | None) -> Path:
        """The dataset's root folder (``data_dir``, else ``$data_env_var``); MissingResourceError naming the fix."""
        raise NotImplementedError

    def read(self, root: Path) -> tuple[Dataset, Dataset]:
        """The train and test images as ``(PIL image, label)`` datasets."""
        raise NotImplementedError

    def transform(self, augment: bool) -> Callable[[Any], Tensor]:
        """PIL image -> normalised tensor; with ``augment``, the training augmentation."""
        raise NotImplementedError

    def default_weights_files(self) -> list[Path]:
        """Where weights are looked for, in order, when none are named."""
        return [self.default_weights_path()]

    def missing_weights_message(self) -> str:
        raise NotImplementedError

    def weights_file(self, weights: str | os.PathLike | None = None) -> Path | None:
        """The checkpoint ``load_model(weights)`` would read, or None if there is none."""
        explicit = explicit_weights_file(self, weights)
        if explicit is not None:
            return explicit
        return next((path for path in self.default_weights_files() if path.is_file()), None)

    def load_model(self, weights: str | os.PathLike | None = None) -> Any:
        """The trained model (eval mode, CPU) from ``weights``, ``$<weights_env_var>`` or the
        default files; never downloads.

        Raises:
            MissingResourceError: if none of them holds a checkpoint; the message says how to get one.
        """
        path = self.weights_file(weights)
        if path is None:
            raise MissingResourceError(self.missing_weights_message())
        return load_state_dict_file(self.build_model(), path, f"{self.name} weights")

    def load_splits(self, data_dir: str | os.PathLike | None = None, seed: int = 0, augment: bool = False) -> Splits:
        """Train / reward (``reward_size`` held-out training images, picked by ``seed``) / test
        splits; ``augment=True`` augments the train split only (reward and test never are).

        Raises:
            MissingResourceError: if the data folder or a file of it is missing.
        """
        train_set, test_set = self.read(self.locate(data_dir))
        train_indices, reward_indices = held_out_split(len(train_set), self.reward_size, seed)
        plain = self.transform(False)
        return Splits(
            train=TransformedSubset(train_set, train_indices.tolist(), self.transform(augment)),
            reward=TransformedSubset(train_set, reward_indices.tolist(), plain),
            test=TransformedSubset(test_set, range(len(test_set)), plain),
        )

    def availability(self) -> Availability:
        try:
            data, data_detail = True, f"data in {self.locate(None)}"
        except MissingResourceError:
            data, data_detail = False, f"data: set ${self.data_env_var}"
        try:
            path = self.weights_file()
        except MissingResourceError:
            path = None
        weights_detail = f"weights {path}" if path else f"weights: {self.weights_hint}"
        return Availability(data=data, weights=path is not None, detail=f"{data_detail}; {weights_detail}")


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
