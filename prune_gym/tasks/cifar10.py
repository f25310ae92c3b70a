"""The CIFAR-10 family: ResNet-32, WRN-28-8 and MobileNet-V1 on CIFAR-10 (as in Global MP).

Data: the python version of CIFAR-10 (``cifar-10-python.tar.gz``, extracted), read with
``torchvision.datasets.CIFAR10(root, download=False)`` from ``data_dir`` or
``$PRUNE_GYM_CIFAR10_DIR``: the folder that *contains* ``cifar-10-batches-py``. Nothing is
downloaded. Inputs are normalised with the CIFAR-10 per-channel mean and standard deviation.

Splits, fixed by ``seed``:

- ``reward``: 5,000 images held out of the 50,000 training images (as AMC did on CIFAR),
- ``train``: the other 45,000 training images,
- ``test``: the 10,000 test images.

Weights: a state-dict checkpoint from ``weights=``, from ``$PRUNE_GYM_<TASK>_WEIGHTS`` (e.g.
``PRUNE_GYM_RESNET32_CIFAR10_WEIGHTS``), else ``default_weights_path()`` (``<cache>/<task
name>.pt``), which ``prune-gym pretrain <task name> --data-dir DIR`` writes. Weights should be
trained on the train split of the seed used for pruning, so that the reward split holds only
images the model has not seen.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from torch import nn
from torch.utils.data import Dataset

from prune_gym.errors import MissingResourceError
from prune_gym.finetune import TrainConfig
from prune_gym.tasks.base import missing_data, resolve_path
from prune_gym.tasks.image_data import ImageClassificationTask, crop_flip
from prune_gym.tasks.models.cifar_resnet import resnet32
from prune_gym.tasks.models.mobilenet_v1 import mobilenet_v1
from prune_gym.tasks.models.wrn import wrn28x8

#: Per-channel mean and standard deviation of the 50,000 CIFAR-10 training images.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

CIFAR10_DIR_ENV = "PRUNE_GYM_CIFAR10_DIR"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"

#: Training images held out for the reward (AMC used 5,000 on CIFAR-10).
DEFAULT_REWARD_SIZE = 5000


def cifar10_transform(augment: bool = False) -> Callable:
    """PIL image -> normalised tensor; with ``augment``, random 4-pixel-padded crops and flips."""
    from torchvision import transforms

    steps: list[Callable] = []
    if augment:
        steps += [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
    steps += [transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)]
    return transforms.Compose(steps)


def _missing_data(detail: str) -> MissingResourceError:
    return missing_data("CIFAR-10", detail, CIFAR10_DIR_ENV,
                        f"the folder that contains {CIFAR10_FOLDER}/ (extract {CIFAR10_URL} there)")


def locate_cifar10(data_dir: str | os.PathLike | None) -> Path:
    """The root folder that holds a complete ``cifar-10-batches-py`` (all batches and meta).

    Accepts the ``cifar-10-batches-py`` folder itself too.

    Raises:
        MissingResourceError: naming ``data_dir`` and ``$PRUNE_GYM_CIFAR10_DIR`` if no folder is
            given or files are missing.
    """
    root = resolve_path(data_dir, CIFAR10_DIR_ENV)
    if root is None:
        raise _missing_data("no folder given")
    if root.name == CIFAR10_FOLDER and not (root / CIFAR10_FOLDER).is_dir():
        root = root.parent
    folder = root / CIFAR10_FOLDER
    if not folder.is_dir():
        raise _missing_data(f"{folder} is not a folder")
    missing = [name for name in CIFAR10_FILES if not (folder / name).is_file()]
    if missing:
        raise _missing_data(f"{folder} lacks {', '.join(missing)}")
    return root


def _read_cifar10(root: Path, train: bool) -> Dataset:
    from torchvision.datasets import CIFAR10

    try:
        return CIFAR10(str(root), train=train, download=False)
    except RuntimeError:  # torchvision's md5 check failed; its message suggests download=True
        raise MissingResourceError(
            f"CIFAR-10 files under {root / CIFAR10_FOLDER} fail torchvision's checksum check: "
            f"they are not the original files. Extract {CIFAR10_URL} there again."
        ) from None


class Cifar10Task(ImageClassificationTask):
    """A CIFAR-10 classifier to prune; see the module docstring for data, splits and weights.

    Args:
        name, env_id, architecture: identity of the task.
        builder: module-level function ``builder(num_classes=10) -> nn.Module``.
        num_prunable_layers: prunable layers of the built model (the episode length).
        reward_size: training images held out for the reward (capped at the number present).
    """

    def __init__(
        self,
        name: str,
        env_id: str,
        architecture: str,
        builder: Callable[..., nn.Module],
        num_prunable_layers: int,
        reward_size: int = DEFAULT_REWARD_SIZE,
    ) -> None:
        super().__init__(
            name=name,
            env_id=env_id,
            family="cifar10",
            finetune_recipe=TrainConfig(epochs=30, batch_size=128, lr=0.01, weight_decay=5e-4),
            pretrain_recipe=TrainConfig(epochs=200, batch_size=128, lr=0.1, weight_decay=5e-4),
            # Decoded once; random crops and flips then run on tensor batches on the device.
            train_augment=crop_flip,
            architecture=architecture,
            dataset="CIFAR-10",
            input_shape=(3, 32, 32),
            num_classes=10,
            num_prunable_layers=num_prunable_layers,
            data_env_var=CIFAR10_DIR_ENV,
            weights_env_var=f"PRUNE_GYM_{name.upper().replace('-', '_')}_WEIGHTS",
            description=f"{architecture} on CIFAR-10; weights from `prune-gym pretrain {name}`",
        )
        self.builder = builder
        self.reward_size = reward_size

    def build_model(self) -> nn.Module:
        return self.builder(num_classes=self.num_classes)

    @property
    def weights_hint(self) -> str:
        return f"run `prune-gym pretrain {self.name}`"

    def locate(self, data_dir: str | os.PathLike | None) -> Path:
        return locate_cifar10(data_dir)

    def read(self, root: Path) -> tuple[Dataset, Dataset]:
        return _read_cifar10(root, train=True), _read_cifar10(root, train=False)

    def transform(self, augment: bool) -> Callable:
        return cifar10_transform(augment)

    def missing_weights_message(self) -> str:
        return (f"{self.name}: no trained weights. Train them once with `prune-gym pretrain {self.name} --data-dir DIR` "
                f"(saved to {self.default_weights_path()}), or pass weights=PATH / set ${self.weights_env_var} to a "
                "state-dict checkpoint.")


def resnet32_cifar10(reward_size: int = DEFAULT_REWARD_SIZE) -> Cifar10Task:
    """ResNet-32 (He et al. 2016; 0.46M parameters, 34 prunable layers) on CIFAR-10."""
    return Cifar10Task("resnet32-cifar10", "PruneResNet32CIFAR10-v1", "ResNet-32", resnet32, 34, reward_size)


def wrn28x8_cifar10(reward_size: int = DEFAULT_REWARD_SIZE) -> Cifar10Task:
    """WRN-28-8 (Zagoruyko & Komodakis 2016; 23.4M parameters, 29 prunable layers) on CIFAR-10."""
    return Cifar10Task("wrn28x8-cifar10", "PruneWRN28x8CIFAR10-v1", "WRN-28-8", wrn28x8, 29, reward_size)


def mobilenetv1_cifar10(reward_size: int = DEFAULT_REWARD_SIZE) -> Cifar10Task:
    """MobileNet-V1 (Howard et al. 2017, 32x32 variant; 3.2M parameters, 28 prunable layers)."""
    return Cifar10Task("mobilenetv1-cifar10", "PruneMobileNetV1CIFAR10-v1", "MobileNet-V1", mobilenet_v1, 28, reward_size)
