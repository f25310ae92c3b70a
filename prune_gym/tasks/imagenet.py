"""The ImageNet family: torchvision's ResNet-50 and MobileNet-V2 on ImageNet (ILSVRC-2012).

Data: an ImageFolder tree from ``data_dir`` or ``$PRUNE_GYM_IMAGENET_DIR`` with ``train/`` and
``val/`` subfolders, each holding one folder per class (the WordNet ids, ``n01440764/`` ...;
sorted, they give torchvision's class indices), read with ``torchvision.datasets.ImageFolder``.
Inputs get the standard evaluation transform: resize to 256, center crop 224, ImageNet mean and
standard deviation (``image_size`` scales both, e.g. to 32 for quick runs).

Splits, fixed by ``seed``:

- ``reward``: 3,000 training images (as AMC), chosen at random (``reward_size`` changes the
  number; it is capped at the number of training images),
- ``train``: the other training images,
- ``test``: the validation set.

Weights, the first found of: a state-dict checkpoint from ``weights=`` or
``$PRUNE_GYM_<TASK>_WEIGHTS`` (``PRUNE_GYM_RESNET50_IMAGENET_WEIGHTS``,
``PRUNE_GYM_MOBILENETV2_IMAGENET_WEIGHTS``); ``default_weights_path()`` (``<cache>/<task
name>.pt``, where ``prune-gym pretrain`` saves); torchvision's ``IMAGENET1K_V1`` weights, but
only if they already lie in torch's hub cache (``torch.hub.get_dir()/checkpoints``). Nothing is
ever downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from torch import nn
from torch.utils.data import Dataset

from prune_gym.errors import ConfigError, MissingResourceError
from prune_gym.finetune import TrainConfig
from prune_gym.tasks.base import Splits, missing_data, resolve_path
from prune_gym.tasks.image_data import ImageClassificationTask

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_DIR_ENV = "PRUNE_GYM_IMAGENET_DIR"

#: Training images held out for the reward (AMC used 3,000 on ImageNet).
DEFAULT_REWARD_SIZE = 3000
#: The standard evaluation crop; images are first resized to ``crop / 0.875`` (256 for 224).
DEFAULT_IMAGE_SIZE = 224
RESIZE_RATIO = 0.875


def imagenet_transform(image_size: int = DEFAULT_IMAGE_SIZE, augment: bool = False) -> Callable:
    """PIL image -> normalised tensor of ``3 x image_size x image_size``.

    Without ``augment``: resize the short side to ``image_size / 0.875`` (256 for 224), center
    crop. With ``augment`` (training only): random resized crop and horizontal flip.
    """
    from torchvision import transforms

    if augment:
        steps: list[Callable] = [
            transforms.RandomResizedCrop(image_size),
            transforms.RandomHorizontalFlip(),
        ]
    else:
        steps = [transforms.Resize(round(image_size / RESIZE_RATIO)), transforms.CenterCrop(image_size)]
    steps += [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return transforms.Compose(steps)


def _missing_data(detail: str) -> MissingResourceError:
    return missing_data("ImageNet", detail, IMAGENET_DIR_ENV,
                        "a folder with train/ and val/ subfolders, each holding one folder of images per class (the "
                        "ILSVRC-2012 layout that torchvision's ImageFolder reads; sort the flat validation images into "
                        "class folders first)")


def locate_imagenet(data_dir: str | os.PathLike | None) -> Path:
    """The ImageNet root: a folder with ``train/`` and ``val/`` subfolders.

    Raises:
        MissingResourceError: naming ``data_dir`` and ``$PRUNE_GYM_IMAGENET_DIR``.
    """
    root = resolve_path(data_dir, IMAGENET_DIR_ENV)
    if root is None:
        raise _missing_data("no folder given")
    missing = [name for name in ("train", "val") if not (root / name).is_dir()]
    if missing:
        raise _missing_data(f"{root} has no {' or '.join(missing)}/ folder")
    return root


def _image_folder(folder: Path) -> Dataset:
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(str(folder))
    except FileNotFoundError as error:  # no class folders, or no images inside them
        raise _missing_data(f"{folder}: {error}") from None


class ImageNetTask(ImageClassificationTask):
    """A torchvision ImageNet classifier to prune; see the module docstring.

    Args:
        name, env_id, architecture: identity of the task.
        builder_name: the ``torchvision.models`` builder, e.g. ``"resnet50"``.
        weights_enum: the ``torchvision.models`` weights enum, e.g. ``"ResNet50_Weights"``; its
            ``IMAGENET1K_V1`` entry names the hub-cache file.
        num_prunable_layers: prunable layers of the built model (the episode length).
        image_size: side of the square input crop (224 native; smaller for quick runs).
        reward_size: training images held out for the reward (capped at the number present).
    """

    torchvision_weights = "IMAGENET1K_V1"

    def __init__(
        self,
        name: str,
        env_id: str,
        architecture: str,
        builder_name: str,
        weights_enum: str,
        num_prunable_layers: int,
        image_size: int = DEFAULT_IMAGE_SIZE,
        reward_size: int = DEFAULT_REWARD_SIZE,
    ) -> None:
        if image_size < 1:
            raise ConfigError(f"image_size must be a positive number of pixels, got {image_size}")
        super().__init__(
            name=name,
            env_id=env_id,
            family="imagenet",
            # Label smoothing 0.1 as in the Global MP paper's fine-tuning; its 120 epochs are out
            # of reach for most users, so the default is 10 (pass epochs= for more).
            finetune_recipe=TrainConfig(epochs=10, batch_size=256, lr=0.01, weight_decay=1e-4, label_smoothing=0.1),
            pretrain_recipe=TrainConfig(epochs=90, batch_size=256, lr=0.1, weight_decay=1e-4, label_smoothing=0.1),
            architecture=architecture,
            dataset="ImageNet (ILSVRC-2012)",
            input_shape=(3, image_size, image_size),
            num_classes=1000,
            num_prunable_layers=num_prunable_layers,
            data_env_var=IMAGENET_DIR_ENV,
            weights_env_var=f"PRUNE_GYM_{name.upper().replace('-', '_')}_WEIGHTS",
            description=f"torchvision {architecture}, {self.torchvision_weights} weights",
            # ResNet-50's 3,000-image pass: 1.48x faster compiled on an H200, compiled in 17 s.
            compile_on_cuda=True,
        )
        self.builder_name = builder_name
        self.weights_enum = weights_enum
        self.image_size = image_size
        self.reward_size = reward_size

    def model_stages(self, model: nn.Module) -> list[nn.Module] | None:
        """torchvision's ResNet and MobileNet-V2 as stages (stem, every block, head)."""
        from torchvision.models import MobileNetV2, ResNet

        if type(model) is ResNet:
            stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
            blocks = [*model.layer1, *model.layer2, *model.layer3, *model.layer4]
            return [stem, *blocks, nn.Sequential(model.avgpool, nn.Flatten(1), model.fc)]
        if type(model) is MobileNetV2:
            head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), model.classifier)
            return [*model.features, head]
        return super().model_stages(model)

    def build_model(self) -> nn.Module:
        import torchvision.models

        return getattr(torchvision.models, self.builder_name)(weights=None, num_classes=self.num_classes)

    def torchvision_weights_path(self) -> Path:
        """Where torchvision keeps the ``IMAGENET1K_V1`` weights once downloaded (torch hub cache)."""
        import torch.hub
        import torchvision.models

        url = getattr(torchvision.models, self.weights_enum)[self.torchvision_weights].url
        return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)

    def default_weights_files(self) -> list[Path]:
        return [self.default_weights_path(), self.torchvision_weights_path()]

    @property
    def weights_hint(self) -> str:
        return f"torchvision {self.torchvision_weights} not in hub cache"

    def missing_weights_message(self) -> str:
        hub_file = self.torchvision_weights_path()
        return (
            f"{self.name}: no weights found. Either pass weights=PATH (or set "
            f"${self.weights_env_var}) to a state-dict checkpoint, or fetch torchvision's "
            f"{self.torchvision_weights} weights once on a machine with internet:\n"
            f"    python -c \"import torchvision; torchvision.models.{self.builder_name}"
            f"(weights='{self.torchvision_weights}')\"\n"
            f"and copy the file it saves (torch hub cache, checkpoints/{hub_file.name}) to "
            f"{hub_file} on this machine."
        )

    streams_train_split = True

    def training_splits(self, data_dir: str | os.PathLike | None = None, seed: int = 0) -> Splits:
        return self.load_splits(data_dir, seed=seed, augment=True)

    def locate(self, data_dir: str | os.PathLike | None) -> Path:
        return locate_imagenet(data_dir)

    def read(self, root: Path) -> tuple[Dataset, Dataset]:
        return _image_folder(root / "train"), _image_folder(root / "val")

    def transform(self, augment: bool) -> Callable:
        return imagenet_transform(self.image_size, augment)


def resnet50_imagenet(image_size: int = DEFAULT_IMAGE_SIZE, reward_size: int = DEFAULT_REWARD_SIZE) -> ImageNetTask:
    """torchvision ResNet-50 (25.6M parameters, 54 prunable layers) on ImageNet."""
    return ImageNetTask(
        "resnet50-imagenet", "PruneResNet50-v1", "ResNet-50", "resnet50", "ResNet50_Weights", 54,
        image_size=image_size, reward_size=reward_size,
    )


def mobilenetv2_imagenet(image_size: int = DEFAULT_IMAGE_SIZE, reward_size: int = DEFAULT_REWARD_SIZE) -> ImageNetTask:
    """torchvision MobileNet-V2 (3.5M parameters, 53 prunable layers) on ImageNet."""
    return ImageNetTask(
        "mobilenetv2-imagenet", "PruneMobileNetV2-v1", "MobileNet-V2", "mobilenet_v2", "MobileNet_V2_Weights", 53,
        image_size=image_size, reward_size=reward_size,
    )
