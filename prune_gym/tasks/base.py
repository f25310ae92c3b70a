"""What a task is: a model builder, its trained weights and fixed data splits.

A task never downloads anything by itself at import or construction time. Missing data or
weights raise :class:`MissingResourceError`, whose message names the keyword argument, the
environment variable and the command that fix it.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import struct
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from prune_gym.errors import ConfigError, MissingResourceError
from prune_gym.evaluation import model_stages
from prune_gym.finetune import DEFAULT_FINETUNE_RECIPE, Augment, TrainConfig


@dataclass
class Splits:
    """Fixed data splits of a task.

    ``train`` is for (fine-)tuning, ``reward`` is the held-out split the per-step reward is
    measured on (never the test split), ``test`` is for reporting. Each is a map-style dataset
    of ``(input_tensor, label)`` pairs with preprocessing already applied.
    """

    train: Dataset
    reward: Dataset
    test: Dataset
    synthetic: bool = False


@dataclass(frozen=True)
class Availability:
    """Whether a task's data and weights are present on this machine (for ``prune-gym envs``)."""

    data: bool
    weights: bool
    detail: str = ""


@dataclass
class Task(ABC):
    """A prunable model and its data. Subclasses fill in the class attributes and methods.

    Attributes:
        name: short task name, e.g. ``"resnet50-imagenet"``.
        env_id: the registered Gymnasium id, e.g. ``"PruneResNet50-v1"``.
        family: ``"digits"``, ``"imagenet"``, ``"cifar10"`` or ``"har2"``.
        architecture, dataset: human-readable names for tables and docs.
        input_shape: shape of one input sample at the task's native size.
        num_classes: number of output classes.
        num_prunable_layers: prunable (Conv/Linear) layers of the architecture, which is the
            episode length; a test checks it against the built model.
        data_env_var: environment variable read when no ``data_dir`` is given.
        weights_env_var: environment variable read when no ``weights`` path is given.
        env_defaults: PruneEnv keyword defaults for this task (e.g. BatchNorm re-calibration).
    """

    name: str = ""
    env_id: str = ""
    family: str = ""
    architecture: str = ""
    dataset: str = ""
    input_shape: tuple[int, ...] = ()
    num_classes: int = 0
    num_prunable_layers: int = 0
    data_env_var: str | None = None
    weights_env_var: str | None = None
    description: str = field(default="", repr=False)
    #: PruneEnv keyword defaults for this task (a user's kwargs override them).
    env_defaults: dict = field(default_factory=dict, repr=False)
    #: Whether ``compile="auto"`` compiles the evaluation on CUDA: where a reward-split pass is
    #: long enough to pay back the compilation within a few episodes.
    compile_on_cuda: bool = False
    #: Whether the task has a channel-pruning env (``channel_env_id``): its model is a
    #: convolutional network whose channels Torch-Pruning can remove.
    channel_pruning: bool = True
    #: Masked fine-tuning of a pruned model (``finetune_pruned``, ``prune-gym export
    #: --finetune-epochs``, ``compare --finetune-epochs``): a smaller learning rate and budget
    #: than training from scratch, since a pruned model starts close to a good solution.
    finetune_recipe: TrainConfig = field(default_factory=lambda: dataclasses.replace(DEFAULT_FINETUNE_RECIPE), repr=False)
    #: Training from scratch (``prune-gym pretrain``).
    pretrain_recipe: TrainConfig = field(default_factory=TrainConfig, repr=False)
    #: Augmentation of decoded train batches on the device while pretraining (None: none, or the
    #: task's own streaming loader augments, see ``streams_train_split``).
    train_augment: Augment | None = field(default=None, repr=False)

    @property
    def channel_env_id(self) -> str | None:
        """The id of the task's channel-pruning env (``ChannelPruneEnv``), e.g.
        ``"PruneResNet20DigitsChannels-v1"``; None where it has none."""
        return self.env_id.rsplit("-v", 1)[0] + "Channels-v1" if self.channel_pruning else None

    def recipe(self, purpose: str = "finetune") -> TrainConfig:
        """A fresh copy of the task's ``"finetune"`` or ``"pretrain"`` recipe (change it freely)."""
        if purpose not in ("finetune", "pretrain"):
            raise ConfigError(f"purpose must be 'finetune' or 'pretrain', got {purpose!r}")
        return dataclasses.replace(self.finetune_recipe if purpose == "finetune" else self.pretrain_recipe)

    @property
    def amp(self) -> bool:
        """Whether evaluation on CUDA uses autocast for this task (``env_defaults["amp"]``, else
        on): the env and export read it, so both score the same way."""
        return bool(self.env_defaults.get("amp", True))

    @abstractmethod
    def build_model(self) -> nn.Module:
        """The architecture with freshly initialised weights (no download)."""

    @abstractmethod
    def load_model(self, weights: str | os.PathLike | None = None) -> nn.Module:
        """The trained model in eval mode, on the CPU.

        Raises:
            MissingResourceError: if no trained weights are found.
        """

    @abstractmethod
    def load_splits(self, data_dir: str | os.PathLike | None = None, seed: int = 0) -> Splits:
        """The train / reward / test splits, fixed by ``seed``.

        Raises:
            MissingResourceError: if the data is not found.
        """

    #: True where the train split is too large to decode up front: ``pretrain`` then streams
    #: :meth:`training_splits` through loader workers (ImageNet) instead of decoding it once.
    streams_train_split = False

    def default_weights_path(self) -> Path:
        """Where the trained weights are looked for when none are given, and where ``prune-gym
        pretrain`` writes them: ``<cache>/<task name>.pt``."""
        return cache_dir() / f"{self.name}.pt"

    def training_splits(self, data_dir: str | os.PathLike | None = None, seed: int = 0) -> Splits:
        """The splits ``pretrain`` trains on: :meth:`load_splits` unless the task augments its
        train split itself (then the train split comes augmented)."""
        return self.load_splits(data_dir, seed=seed)

    def availability(self) -> Availability:
        """Whether data and weights are present, without loading them."""
        return Availability(data=False, weights=False)

    def model_stages(self, model: nn.Module) -> list[nn.Module] | None:
        """Modules whose composition in order is ``model.forward`` (the evaluator's activation
        cache and the exact BatchNorm re-calibration start at the first stage a step changed);
        None if unknown. Default: the model's own ``stages()``, or an ``nn.Sequential``'s parts."""

        return model_stages(model)

    def synthetic_model(self, seed: int = 0) -> nn.Module:
        """The architecture with random weights (seeded), in eval mode: for mechanics and speed only."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = self.build_model()
        return model.eval()

    def synthetic_splits(
        self,
        input_shape: tuple[int, ...] | None = None,
        sizes: tuple[int, int, int] = (64, 64, 64),
        seed: int = 0,
    ) -> Splits:
        """Random inputs and labels of the right shape: for mechanics and speed only.

        ``input_shape`` overrides the native sample shape (e.g. ``(3, 32, 32)`` to run an
        ImageNet model at a tiny size on a CPU).
        """
        shape = tuple(input_shape or self.input_shape)
        generator = torch.Generator().manual_seed(seed)

        def make(n: int) -> TensorDataset:
            x = torch.randn((n, *shape), generator=generator)
            y = torch.randint(0, self.num_classes, (n,), generator=generator)
            return TensorDataset(x, y)

        return Splits(*(make(n) for n in sizes), synthetic=True)


# --------------------------------------------------------------------------------------------
# Helpers shared by the task modules


def cache_dir() -> Path:
    """Where trained default weights are cached.

    ``$PRUNE_GYM_CACHE`` if set, else ``$XDG_CACHE_HOME/prune-gym``, else ``~/.cache/prune-gym``.
    """
    if os.environ.get("PRUNE_GYM_CACHE"):
        return Path(os.environ["PRUNE_GYM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "prune-gym"


def missing_data(dataset: str, detail: str, env_var: str, layout: str) -> MissingResourceError:
    """The error for a dataset not found where it was looked for: what was wrong (``detail``), the
    two ways to point at it (``data_dir=`` / ``--data-dir``, the environment variable) and the
    folder ``layout`` expected there."""
    return MissingResourceError(f"{dataset} data not found: {detail}. Pass data_dir=DIR (CLI: --data-dir DIR) or set "
                                f"${env_var} to {layout}.")


def resolve_path(
    value: str | os.PathLike | None, env_var: str | None, default: Path | None = None
) -> Path | None:
    """The first of: an explicit ``value``, ``$env_var``, ``default``; or None."""
    if value is not None:
        return Path(value).expanduser()
    if env_var and os.environ.get(env_var):
        return Path(os.environ[env_var]).expanduser()
    return default


def load_state_dict_file(model: nn.Module, path: Path, what: str) -> nn.Module:
    """Load a checkpoint (a state dict, or a dict with a ``"state_dict"``/``"model"`` entry)."""
    if not path.is_file():
        raise MissingResourceError(f"{what}: no checkpoint file at {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, struct.error, UnicodeDecodeError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError(
            f"{what}: cannot read the checkpoint {path} ({first_line}); it is truncated, empty or not a "
            f"torch checkpoint: pass another weights file, or re-create it (`prune-gym pretrain`)"
        ) from None
    if isinstance(checkpoint, dict):
        for key in ("state_dict", "model"):
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict):
        raise ConfigError(f"{what}: {path} holds a {type(checkpoint).__name__}, not a state dict: pass a weights file "
                         "written by torch.save(model.state_dict(), path)")
    try:
        model.load_state_dict(checkpoint)
    except RuntimeError as error:
        raise ConfigError(f"{what}: checkpoint {path} does not fit the architecture: {error}") from None
    return model.eval()


def split_indices(n: int, fractions: tuple[float, float, float], seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Shuffle ``range(n)`` with ``seed`` and cut it into disjoint train / reward / test indices."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_train = round(fractions[0] * n)
    n_reward = round(fractions[1] * n)
    return order[:n_train], order[n_train : n_train + n_reward], order[n_train + n_reward :]
