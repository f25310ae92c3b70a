"""The ImageNet tasks, on a tiny ImageFolder tree of PNGs written by the test (no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prune_gym.tasks import MissingResourceError, atomic_save, get_task
from prune_gym.tasks.imagenet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageNetTask,
    mobilenetv2_imagenet,
    resnet50_imagenet,
)

CLASSES = ["n01440764", "n01443537", "n01484850"]  # the first three ILSVRC-2012 wnids
TRAIN_PER_CLASS = 4
VAL_PER_CLASS = 2
REWARD_SIZE = 5
IMAGE_SIZE = 32


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory) -> Path:
    """``train/<wnid>/*.png`` (3 x 4 images) and ``val/<wnid>/*.png`` (3 x 2), 40x48 pixels.

    The first validation image of every class is one solid colour, to check normalisation.
    """
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for wnid in CLASSES:
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                if split == "val" and i == 0:
                    pixels[:] = (200, 100, 50)
                Image.fromarray(pixels).save(folder / f"{wnid}_{i}.png")
    return root


@pytest.fixture
def task() -> ImageNetTask:
    return mobilenetv2_imagenet(image_size=IMAGE_SIZE, reward_size=REWARD_SIZE)


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """Empty torch hub and prune-gym caches, so that nothing cached elsewhere leaks in."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("PRUNE_GYM_CACHE", str(tmp_path / "prune-gym-cache"))
    for name in ("PRUNE_GYM_RESNET50_IMAGENET_WEIGHTS", "PRUNE_GYM_MOBILENETV2_IMAGENET_WEIGHTS"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "torch-home"


def test_registered_tasks_and_env_ids():
    resnet, mobilenet = get_task("PruneResNet50-v1"), get_task("PruneMobileNetV2-v1")
    assert (resnet.name, mobilenet.name) == ("resnet50-imagenet", "mobilenetv2-imagenet")
    for task in (resnet, mobilenet):
        assert task.family == "imagenet" and task.num_classes == 1000
        assert task.input_shape == (3, 224, 224)
        assert task.reward_size == 3000  # AMC's held-out ImageNet training images
        assert task.data_env_var == "PRUNE_GYM_IMAGENET_DIR"


def test_splits_have_the_right_sizes_and_shapes(task, imagenet_root):
    splits = task.load_splits(imagenet_root)
    train_images = len(CLASSES) * TRAIN_PER_CLASS
    assert (len(splits.train), len(splits.reward), len(splits.test)) == (
        train_images - REWARD_SIZE,
        REWARD_SIZE,
        len(CLASSES) * VAL_PER_CLASS,
    )
    image, label = splits.reward[0]
    assert image.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and image.dtype == torch.float32
    assert label in range(len(CLASSES))


def test_test_split_is_the_validation_folder_with_sorted_class_indices(task, imagenet_root):
    splits = task.load_splits(imagenet_root)
    labels = [splits.test[i][1] for i in range(len(splits.test))]
    assert labels == [0, 0, 1, 1, 2, 2]  # class index = position of the wnid in sorted order


def test_evaluation_transform_normalises_with_imagenet_statistics(task, imagenet_root):
    splits = task.load_splits(imagenet_root)
    solid, label = splits.test[VAL_PER_CLASS]  # first image of the second class
    assert label == 1
    expected = (torch.tensor([200, 100, 50]) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(solid, expected.view(3, 1, 1).expand_as(solid), atol=1e-5)


def test_reward_images_are_held_out_of_train_and_fixed_by_seed(task, imagenet_root):
    first = task.load_splits(imagenet_root, seed=0)
    again = task.load_splits(imagenet_root, seed=0)
    others = [task.load_splits(imagenet_root, seed=seed) for seed in (1, 2)]
    assert first.reward.indices == again.reward.indices and first.train.indices == again.train.indices
    assert any(other.reward.indices != first.reward.indices for other in others)
    for splits in (first, *others):
        assert not set(splits.reward.indices) & set(splits.train.indices)
        assert sorted(splits.reward.indices + splits.train.indices) == list(range(12))
    assert torch.equal(first.reward[2][0], again.reward[2][0])


def test_reward_size_is_capped_at_the_training_images(imagenet_root):
    task = resnet50_imagenet(image_size=IMAGE_SIZE, reward_size=100)
    splits = task.load_splits(imagenet_root)
    assert len(splits.reward) == len(CLASSES) * TRAIN_PER_CLASS and len(splits.train) == 0


def test_image_size_sets_the_input_shape():
    assert resnet50_imagenet(image_size=64).input_shape == (3, 64, 64)
    with pytest.raises(ValueError, match="image_size"):
        resnet50_imagenet(image_size=0)


def test_data_dir_comes_from_the_environment_variable(task, imagenet_root, monkeypatch):
    monkeypatch.setenv("PRUNE_GYM_IMAGENET_DIR", str(imagenet_root))
    assert len(task.load_splits().test) == len(CLASSES) * VAL_PER_CLASS
    assert task.availability().data


def test_missing_data_names_the_kwarg_and_the_environment_variable(task, tmp_path, monkeypatch):
    monkeypatch.delenv("PRUNE_GYM_IMAGENET_DIR", raising=False)
    with pytest.raises(MissingResourceError, match="data_dir=.*PRUNE_GYM_IMAGENET_DIR"):
        task.load_splits()
    assert not task.availability().data
    (tmp_path / "train").mkdir()
    with pytest.raises(MissingResourceError, match="no val/ folder"):
        task.load_splits(tmp_path)


def test_a_validation_folder_without_class_folders_is_explained(task, imagenet_root, tmp_path):
    (tmp_path / "train").symlink_to(imagenet_root / "train")
    (tmp_path / "val").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "ILSVRC2012_val_00000001.png")  # flat layout
    with pytest.raises(MissingResourceError, match="one folder of images per class"):
        task.load_splits(tmp_path)


def test_builders_run_at_32x32():
    for task in (resnet50_imagenet(), mobilenetv2_imagenet()):
        model = task.synthetic_model(seed=0)
        with torch.inference_mode():
            assert model(torch.randn(2, 3, 32, 32)).shape == (2, 1000)


def test_missing_weights_explain_how_to_fetch_them_once(torch_home):
    task = resnet50_imagenet()
    with pytest.raises(MissingResourceError) as error:
        task.load_model()
    message = str(error.value)
    assert "torchvision.models.resnet50(weights='IMAGENET1K_V1')" in message
    assert str(torch_home / "hub" / "checkpoints" / "resnet50-0676ba61.pth") in message
    assert "weights=" in message and "PRUNE_GYM_RESNET50_IMAGENET_WEIGHTS" in message
    assert not task.availability().weights


def test_torchvision_weights_load_from_the_hub_cache_only(task, torch_home):
    state = task.synthetic_model(seed=1).state_dict()
    hub_file = torch_home / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"
    assert task.torchvision_weights_path() == hub_file
    hub_file.parent.mkdir(parents=True)
    torch.save(state, hub_file)
    model = task.load_model()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert not model.training and task.availability().weights


def test_checkpoint_paths_load_and_take_precedence(task, torch_home, tmp_path, monkeypatch):
    hub_file = task.torchvision_weights_path()
    hub_file.parent.mkdir(parents=True)
    torch.save(task.synthetic_model(seed=1).state_dict(), hub_file)
    own = task.synthetic_model(seed=2)
    path = tmp_path / "finetuned.pt"
    torch.save({"state_dict": own.state_dict()}, path)

    assert torch.equal(task.load_model(path).classifier[-1].weight, own.classifier[-1].weight)
    monkeypatch.setenv(task.weights_env_var, str(path))
    assert torch.equal(task.load_model().classifier[-1].weight, own.classifier[-1].weight)
    monkeypatch.delenv(task.weights_env_var)

    # Weights saved by `prune-gym pretrain` come before torchvision's.
    atomic_save(own.state_dict(), task.default_weights_path())
    try:
        assert torch.equal(task.load_model().classifier[-1].weight, own.classifier[-1].weight)
    finally:
        task.default_weights_path().unlink()
    assert not torch.equal(task.load_model().classifier[-1].weight, own.classifier[-1].weight)


def test_a_weights_path_that_does_not_exist_is_reported(task, tmp_path, monkeypatch):
    monkeypatch.setenv(task.weights_env_var, str(tmp_path / "missing.pt"))
    with pytest.raises(MissingResourceError, match="missing.pt.*PRUNE_GYM_MOBILENETV2_IMAGENET_WEIGHTS"):
        task.load_model()
