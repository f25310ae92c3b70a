"""FastGRNN on HAR-2: the binary version of UCI HAR used in the FastGRNN paper.

Data: the raw inertial signals of the "UCI HAR Dataset" archive (Anguita et al. 2013), read
from the archive's own layout. ``data_dir`` (or ``$PRUNE_GYM_HAR_DIR``) is the extracted
``UCI HAR Dataset`` folder or the folder that holds it::

    train/Inertial Signals/{body_acc,body_gyro,total_acc}_{x,y,z}_train.txt
    train/y_train.txt, train/subject_train.txt
    test/...  (the same with ``_test``)

Each signal file has one 128-step window per line (whitespace-separated floats, 2.56 s at
50 Hz); the nine files of a part are stacked into inputs of shape ``(N, 128, 9)`` in the
order ``body_acc_{x,y,z}, body_gyro_{x,y,z}, total_acc_{x,y,z}``. Labels are the activity ids
1..6 of ``y_*.txt``.

HAR-2 labels: the FastGRNN paper (Kusupati et al., NeurIPS 2018, appendix "Dataset
information") merges the six activities into two classes, {Sitting, Laying,
Walking_Upstairs} and {Standing, Walking, Walking_Downstairs}. This module maps them to
class 1 = {Walking_Upstairs, Sitting, Laying} (UCI ids 2, 4, 6) and class 0 = {Walking,
Walking_Downstairs, Standing} (UCI ids 1, 3, 5). (It is *not* "moving vs. still".)

Normalisation: zero mean, unit variance per channel, with the mean and standard deviation of
the whole UCI training part (all windows and time steps). They never depend on ``seed``, so
trained weights stay valid for every split.

Splits (7,352 training and 2,947 test windows in the full archive):

- reward: every window of 3 of the 21 training subjects (about 1,000 windows), chosen with a
  fixed seed. Held out by subject, because consecutive UCI windows overlap by 50%: a random
  subset of windows would share half of its samples with the training windows.
- train: the other training subjects' windows (what ``prune-gym pretrain`` trains on).
- test: the UCI test part (9 other subjects).

As in the digits task, the train part never changes; ``seed != 0`` reshuffles the held-out
windows (reward + test) into a reward and a test split of the same sizes, so no seed ever
measures the model on its own training windows.

Weights: ``weights=`` or ``$PRUNE_GYM_FASTGRNN_HAR2_WEIGHTS``, else
``cache_dir()/fastgrnn-har2.pt`` as written by ``prune-gym pretrain fastgrnn-har2 --data-dir DIR``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from prune_gym.errors import ConfigError, MissingResourceError
from prune_gym.finetune import TrainConfig
from prune_gym.tasks.base import (
    Availability,
    Splits,
    Task,
    load_state_dict_file,
    missing_data,
    resolve_path,
)
from prune_gym.tasks.models.fastgrnn import fastgrnn_har2

#: Folder name inside the UCI archive.
ARCHIVE_FOLDER = "UCI HAR Dataset"
#: The nine raw signals, in channel order.
SIGNALS = tuple(
    f"{sensor}_{axis}" for sensor in ("body_acc", "body_gyro", "total_acc") for axis in ("x", "y", "z")
)
TIME_STEPS = 128
#: UCI activity ids (1..6) that form HAR-2 class 1: Walking_Upstairs, Sitting, Laying.
CLASS_ONE_ACTIVITIES = (2, 4, 6)
#: Training subjects held out as the reward split (chosen with this seed, never with ``seed``).
REWARD_SUBJECTS = 3
SUBJECT_SPLIT_SEED = 0

PRETRAIN_COMMAND = "prune-gym pretrain fastgrnn-har2 --data-dir DIR"


def binarize_activities(activities: Tensor) -> Tensor:
    """UCI activity ids 1..6 -> HAR-2 classes (1 for Walking_Upstairs/Sitting/Laying, else 0)."""
    if activities.numel() and (int(activities.min()) < 1 or int(activities.max()) > 6):
        raise ConfigError(
            f"UCI HAR activity labels must be 1..6, got values from {int(activities.min())} "
            f"to {int(activities.max())}"
        )
    return torch.isin(activities, torch.tensor(CLASS_ONE_ACTIVITIES)).long()


def find_archive_root(data_dir: str | os.PathLike) -> Path:
    """The folder holding ``train/`` and ``test/``: ``data_dir`` itself or its ``UCI HAR Dataset``.

    Raises:
        MissingResourceError: if neither exists.
    """
    data_dir = Path(data_dir).expanduser()
    for candidate in (data_dir, data_dir / ARCHIVE_FOLDER):
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return candidate
    if not data_dir.is_dir():
        problem = f"the folder {data_dir} does not exist"
    else:
        problem = f"{data_dir} holds neither train/ and test/ nor a '{ARCHIVE_FOLDER}' folder with them"
    raise MissingResourceError(
        f"UCI HAR data: {problem}. Extract the UCI HAR Dataset archive and pass its folder as "
        f"data_dir= or set $PRUNE_GYM_HAR_DIR."
    )


def _read_table(path: Path, columns: int | None) -> np.ndarray:
    if not path.is_file():
        raise MissingResourceError(
            f"UCI HAR data: missing file {path}; the folder must keep the archive's layout "
            f"(train/ and test/ with 'Inertial Signals/', y_*.txt and subject_*.txt)."
        )
    try:
        table = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as error:
        raise ConfigError(f"UCI HAR data: {path} is not a table of whitespace-separated numbers: {error}") from None
    if columns is not None and table.shape[1] != columns:
        raise ConfigError(f"UCI HAR data: {path} has {table.shape[1]} columns per line, expected {columns}")
    return table


@functools.lru_cache(maxsize=4)
def _load_part_cached(
    root: str, part: str, _versions: tuple[tuple[int, int], ...]
) -> tuple[Tensor, Tensor, Tensor]:
    base = Path(root) / part
    signals = [
        _read_table(base / "Inertial Signals" / f"{signal}_{part}.txt", TIME_STEPS) for signal in SIGNALS
    ]
    activities = _read_table(base / f"y_{part}.txt", 1)[:, 0]
    subjects = _read_table(base / f"subject_{part}.txt", 1)[:, 0]
    for name, ids in (("y", activities), ("subject", subjects)):
        if not np.array_equal(ids, np.round(ids)):
            raise ConfigError(f"UCI HAR data: {base / f'{name}_{part}.txt'} must hold whole numbers, one per line")
    counts = {len(table) for table in signals} | {len(activities), len(subjects)}
    if len(counts) != 1:
        raise ConfigError(
            f"UCI HAR data: the files of {base} disagree in their number of windows "
            f"({sorted(counts)}); re-extract the archive."
        )
    if len(activities) == 0:
        raise ConfigError(f"UCI HAR data: {base} has no windows")
    inputs = torch.from_numpy(np.stack(signals, axis=-1).astype(np.float32))
    return inputs, torch.from_numpy(activities.astype(np.int64)), torch.from_numpy(subjects.astype(np.int64))


def _part_files(root: Path, part: str) -> list[Path]:
    base = root / part
    return [base / "Inertial Signals" / f"{s}_{part}.txt" for s in SIGNALS] + [
        base / f"y_{part}.txt",
        base / f"subject_{part}.txt",
    ]


def load_uci_har_part(root: str | os.PathLike, part: str) -> tuple[Tensor, Tensor, Tensor]:
    """One part (``"train"`` or ``"test"``) of the archive at ``root``, unnormalised.

    Returns ``(inputs (N, 128, 9) float32, activities (N,) int64 in 1..6, subjects (N,) int64)``.
    Parsed parts are kept in memory while their files are unchanged.
    """
    if part not in ("train", "test"):
        raise ConfigError(f"part must be 'train' or 'test', got {part!r}")
    root = find_archive_root(root)
    files = _part_files(root, part)
    # Keyed by modification time and size, so edited files are read again.
    versions = tuple((p.stat().st_mtime_ns, p.stat().st_size) if p.is_file() else (-1, -1) for p in files)
    inputs, activities, subjects = _load_part_cached(str(root.resolve()), part, versions)
    return inputs.clone(), activities.clone(), subjects.clone()


def held_out_subjects(subjects: Tensor, count: int = REWARD_SUBJECTS, seed: int = SUBJECT_SPLIT_SEED) -> Tensor:
    """The ``count`` training subjects whose windows form the reward split (fixed by ``seed``)."""
    unique = torch.unique(subjects)
    if len(unique) <= count:
        raise ConfigError(
            f"UCI HAR data: the training part has {len(unique)} subject(s); at least {count + 1} are "
            f"needed to hold {count} out for the reward split"
        )
    order = torch.randperm(len(unique), generator=torch.Generator().manual_seed(seed))
    return unique[order[:count]].sort().values


class HAR2Task(Task):
    """FastGRNN (80 hidden units, rank-8 ``W`` and ``U``; 5 prunable layers) on HAR-2."""

    def __init__(self) -> None:
        super().__init__(
            name="fastgrnn-har2",
            env_id="PruneFastGRNNHAR2-v1",
            family="har2",
            finetune_recipe=TrainConfig(epochs=20, batch_size=64, lr=0.01, weight_decay=1e-4),
            pretrain_recipe=TrainConfig(epochs=100, batch_size=64, lr=0.05, weight_decay=1e-4),
            architecture="FastGRNN",
            dataset="HAR-2 (UCI HAR, 2 classes)",
            input_shape=(TIME_STEPS, len(SIGNALS)),
            num_classes=2,
            num_prunable_layers=5,
            data_env_var="PRUNE_GYM_HAR_DIR",
            weights_env_var="PRUNE_GYM_FASTGRNN_HAR2_WEIGHTS",
            description="UCI HAR raw inertial signals, binarised as in the FastGRNN paper",
            # A recurrent cell's hidden units feed back into themselves: no channel env (weights only).
            channel_pruning=False,
        )

    def build_model(self) -> nn.Module:
        return fastgrnn_har2(num_classes=self.num_classes)

    def _data_dir(self, data_dir: str | os.PathLike | None) -> Path:
        path = resolve_path(data_dir, self.data_env_var)
        if path is None:
            raise missing_data("HAR-2", "no folder given", self.data_env_var,
                               f"the extracted '{ARCHIVE_FOLDER}' folder (its raw inertial signals are read) or its parent")
        return path

    def _weights_path(self, weights: str | os.PathLike | None) -> Path:
        return resolve_path(weights, self.weights_env_var, self.default_weights_path())

    def availability(self) -> Availability:
        path = resolve_path(None, self.data_env_var)
        try:
            data = path is not None and find_archive_root(path) is not None
        except MissingResourceError:
            data = False
        weights = self._weights_path(None).is_file()
        detail = "" if data and weights else (
            f"set ${self.data_env_var}" + ("" if weights else f"; then {PRETRAIN_COMMAND}")
        )
        return Availability(data=data, weights=weights, detail=detail)

    def load_model(self, weights: str | os.PathLike | None = None) -> nn.Module:
        """The trained FastGRNN from ``weights`` / ``$PRUNE_GYM_FASTGRNN_HAR2_WEIGHTS`` / the cache.

        Raises:
            MissingResourceError: if the file is not there (says how to make it).
        """
        explicit = resolve_path(weights, self.weights_env_var)
        if explicit is not None and not explicit.is_file():
            source = "the weights= argument" if weights is not None else f"${self.weights_env_var}"
            raise MissingResourceError(
                f"FastGRNN HAR-2 weights: no checkpoint file at {explicit} (from {source}); pass an "
                f"existing state-dict file, or leave it unset to use {self.default_weights_path()}."
            )
        path = explicit or self.default_weights_path()
        if not path.is_file():
            raise MissingResourceError(
                f"FastGRNN HAR-2 weights: no file at {path}. Pass weights= or set "
                f"${self.weights_env_var} to a trained checkpoint, or train one with "
                f"`{PRETRAIN_COMMAND}`."
            )
        return load_state_dict_file(self.build_model(), path, "FastGRNN HAR-2 weights")

    def load_splits(self, data_dir: str | os.PathLike | None = None, seed: int = 0) -> Splits:
        """Train / reward / test splits of HAR-2 (see the module docstring).

        Raises:
            MissingResourceError: if the data folder or one of its files is missing.
            ValueError: if a file is malformed.
        """
        root = self._data_dir(data_dir)
        train_inputs, train_activities, train_subjects = load_uci_har_part(root, "train")
        test_inputs, test_activities, _ = load_uci_har_part(root, "test")

        mean = train_inputs.mean(dim=(0, 1))
        std = train_inputs.std(dim=(0, 1), correction=0).clamp_min(1e-8)

        def normalise(inputs: Tensor) -> Tensor:
            return (inputs - mean) / std

        train_inputs, test_inputs = normalise(train_inputs), normalise(test_inputs)
        train_labels, test_labels = binarize_activities(train_activities), binarize_activities(test_activities)

        in_reward = torch.isin(train_subjects, held_out_subjects(train_subjects))
        train = TensorDataset(train_inputs[~in_reward], train_labels[~in_reward])
        reward_inputs, reward_labels = train_inputs[in_reward], train_labels[in_reward]
        if seed != 0:
            pooled_inputs = torch.cat([reward_inputs, test_inputs])
            pooled_labels = torch.cat([reward_labels, test_labels])
            order = torch.randperm(len(pooled_labels), generator=torch.Generator().manual_seed(seed))
            reward_index, test_index = order[: len(reward_labels)], order[len(reward_labels) :]
            reward_inputs, reward_labels = pooled_inputs[reward_index], pooled_labels[reward_index]
            test_inputs, test_labels = pooled_inputs[test_index], pooled_labels[test_index]
        return Splits(train, TensorDataset(reward_inputs, reward_labels), TensorDataset(test_inputs, test_labels))
