"""The CIFAR-10 tasks, on a tiny CIFAR-10 written in the real on-disk format (pickled batches)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
import torchvision.datasets.utils

from prune_gym.tasks import MissingResourceError, atomic_save, get_task
from prune_gym.tasks.cifar10 import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    Cifar10Task,
    mobilenetv1_cifar10,
    resnet32_cifar10,
    wrn28x8_cifar10,
)

IMAGES_PER_BATCH = 8  # 5 training batches -> 40 training images
TEST_IMAGES = 12
REWARD_SIZE = 10
LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_batch(path: Path, rng: np.random.Generator, n: int, batch_label: str) -> dict:
    """One batch file as the CIFAR-10 python version stores it: a pickled dict, rows of 3072
    uint8 values (1024 red, 1024 green, 1024 blue, each row-major 32x32).

    The real files are Python 2 pickles whose keys are byte strings; torchvision reads them with
    ``encoding="latin1"``, which turns those keys into ``"data"``, ``"labels"``. Protocol 2 with
    ``str`` keys reads back the same way.
    """
    batch = {
        "batch_label": batch_label,
        "labels": rng.integers(0, 10, n).tolist(),
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        "filenames": [f"image_{i}.png" for i in range(n)],
    }
    with open(path, "wb") as handle:
        pickle.dump(batch, handle, protocol=2)
    return batch


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    """A folder holding ``cifar-10-batches-py`` with 5 x 8 training and 12 test images."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        write_batch(folder / f"data_batch_{i}", rng, IMAGES_PER_BATCH, f"training batch {i} of 5")
    write_batch(folder / "test_batch", rng, TEST_IMAGES, "testing batch 1 of 1")
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": LABEL_NAMES, "num_cases_per_batch": IMAGES_PER_BATCH, "num_vis": 3072}, handle, protocol=2)
    return root


@pytest.fixture
def skip_md5(monkeypatch):
    """torchvision compares every CIFAR file with the md5 of the real one; our tiny files cannot
    match. Only that comparison is dropped (files must still exist); torchvision's reading code
    runs unchanged."""
    real_check = torchvision.datasets.utils.check_integrity
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda fpath, md5=None: real_check(fpath))


@pytest.fixture
def task(tmp_path, monkeypatch) -> Cifar10Task:
    """ResNet-32 on CIFAR-10 with a small reward split, an empty weights cache and no weights
    variable set (other tests may pretrain into the session cache)."""
    monkeypatch.setenv("PRUNE_GYM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PRUNE_GYM_RESNET32_CIFAR10_WEIGHTS", raising=False)
    return resnet32_cifar10(reward_size=REWARD_SIZE)


def test_registered_tasks_and_env_ids():
    assert get_task("PruneResNet32CIFAR10-v1").name == "resnet32-cifar10"
    assert get_task("PruneWRN28x8CIFAR10-v1").name == "wrn28x8-cifar10"
    assert get_task("PruneMobileNetV1CIFAR10-v1").name == "mobilenetv1-cifar10"
    for name in ("resnet32-cifar10", "wrn28x8-cifar10", "mobilenetv1-cifar10"):
        task = get_task(name)
        assert task.family == "cifar10" and task.input_shape == (3, 32, 32) and task.num_classes == 10
        assert task.reward_size == 5000  # AMC's held-out CIFAR training images
        assert task.data_env_var == "PRUNE_GYM_CIFAR10_DIR"


def test_splits_have_the_right_sizes_and_shapes(task, cifar_root, skip_md5):
    splits = task.load_splits(cifar_root, seed=0)
    assert (len(splits.train), len(splits.reward), len(splits.test)) == (40 - REWARD_SIZE, REWARD_SIZE, TEST_IMAGES)
    assert not splits.synthetic
    image, label = splits.reward[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert isinstance(label, int) and 0 <= label < 10


def test_reward_images_are_held_out_of_train_and_fixed_by_seed(task, cifar_root, skip_md5):
    first = task.load_splits(cifar_root, seed=0)
    again = task.load_splits(cifar_root, seed=0)
    other = task.load_splits(cifar_root, seed=1)
    assert first.reward.indices == again.reward.indices and first.train.indices == again.train.indices
    assert first.reward.indices != other.reward.indices
    for splits in (first, other):
        assert not set(splits.reward.indices) & set(splits.train.indices)
        assert sorted(splits.reward.indices + splits.train.indices) == list(range(40))
    # The same index gives the same tensor on every load.
    assert torch.equal(first.reward[3][0], again.reward[3][0])


def test_images_are_decoded_in_cifar_layout_and_normalised(task, cifar_root, skip_md5):
    splits = task.load_splits(cifar_root)
    with open(cifar_root / "cifar-10-batches-py" / "test_batch", "rb") as handle:
        raw = pickle.load(handle, encoding="latin1")
    pixels = torch.tensor(raw["data"][5], dtype=torch.float32).reshape(3, 32, 32) / 255
    mean = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(3, 1, 1)
    image, label = splits.test[5]
    assert torch.allclose(image, (pixels - mean) / std, atol=1e-6)
    assert label == raw["labels"][5]


def test_train_index_maps_to_the_right_training_image(task, cifar_root, skip_md5):
    splits = task.load_splits(cifar_root)
    index = splits.train.indices[-1]  # in data_batch_5 at most
    with open(cifar_root / "cifar-10-batches-py" / f"data_batch_{index // IMAGES_PER_BATCH + 1}", "rb") as handle:
        raw = pickle.load(handle, encoding="latin1")
    row = index % IMAGES_PER_BATCH
    pixels = torch.tensor(raw["data"][row], dtype=torch.float32).reshape(3, 32, 32) / 255
    expected = (pixels - torch.tensor(CIFAR10_MEAN).view(3, 1, 1)) / torch.tensor(CIFAR10_STD).view(3, 1, 1)
    image, label = splits.train[len(splits.train) - 1]
    assert torch.allclose(image, expected, atol=1e-6) and label == raw["labels"][row]


def test_augmentation_touches_only_the_train_split(task, cifar_root, skip_md5):
    plain = task.load_splits(cifar_root)
    augmented = task.load_splits(cifar_root, augment=True)
    torch.manual_seed(0)
    draws = [augmented.train[0][0] for _ in range(6)]
    assert any(not torch.equal(draw, plain.train[0][0]) for draw in draws)
    assert torch.equal(augmented.reward[0][0], plain.reward[0][0])
    assert torch.equal(augmented.test[0][0], plain.test[0][0])


def test_data_dir_comes_from_the_environment_variable(task, cifar_root, skip_md5, monkeypatch):
    monkeypatch.setenv("PRUNE_GYM_CIFAR10_DIR", str(cifar_root))
    assert len(task.load_splits().test) == TEST_IMAGES
    assert task.availability().data
    # The cifar-10-batches-py folder itself is accepted too.
    assert len(task.load_splits(cifar_root / "cifar-10-batches-py").test) == TEST_IMAGES


def test_missing_data_names_the_kwarg_and_the_environment_variable(task, tmp_path, monkeypatch):
    monkeypatch.delenv("PRUNE_GYM_CIFAR10_DIR", raising=False)
    with pytest.raises(MissingResourceError, match="data_dir=.*PRUNE_GYM_CIFAR10_DIR"):
        task.load_splits()
    with pytest.raises(MissingResourceError, match="PRUNE_GYM_CIFAR10_DIR"):
        task.load_splits(tmp_path)
    assert not task.availability().data


def test_incomplete_folder_names_the_missing_files(task, cifar_root, tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes((cifar_root / "cifar-10-batches-py" / "data_batch_1").read_bytes())
    with pytest.raises(MissingResourceError, match="data_batch_2.*test_batch.*batches.meta"):
        task.load_splits(tmp_path)


def test_files_that_fail_torchvisions_checksum_give_a_clear_error(task, cifar_root):
    # Without the md5 bypass, our tiny files are rightly rejected as not the original CIFAR-10.
    with pytest.raises(MissingResourceError, match="checksum.*cifar-10-python.tar.gz"):
        task.load_splits(cifar_root)


def test_missing_weights_name_the_pretrain_command(task, monkeypatch):
    monkeypatch.delenv(task.weights_env_var, raising=False)
    assert not task.default_weights_path().exists()
    with pytest.raises(MissingResourceError) as error:
        task.load_model()
    message = str(error.value)
    assert "prune-gym pretrain resnet32-cifar10 --data-dir DIR" in message
    assert "weights=" in message and "PRUNE_GYM_RESNET32_CIFAR10_WEIGHTS" in message
    assert not task.availability().weights


def test_a_weights_path_that_does_not_exist_is_reported(task, tmp_path):
    with pytest.raises(MissingResourceError, match="no checkpoint file at .*nothing.pt.*weights= argument"):
        task.load_model(tmp_path / "nothing.pt")


def test_saved_checkpoints_load_from_every_source(task, tmp_path, monkeypatch):
    trained = task.synthetic_model(seed=3)
    state = trained.state_dict()

    path = tmp_path / "resnet32.pt"
    torch.save(state, path)
    from_kwarg = task.load_model(path)
    assert all(torch.equal(from_kwarg.state_dict()[k], v) for k, v in state.items())
    assert not from_kwarg.training

    monkeypatch.setenv(task.weights_env_var, str(path))
    assert torch.equal(task.load_model().stem[0].weight, trained.stem[0].weight)
    monkeypatch.delenv(task.weights_env_var)

    # The default path is where `prune-gym pretrain` saves (a dict with a "state_dict" entry).
    default = task.default_weights_path()
    assert default.name == "resnet32-cifar10.pt"
    atomic_save({"state_dict": state}, default)
    try:
        assert task.availability().weights
        assert torch.equal(task.load_model().head[-1].weight, trained.head[-1].weight)
    finally:
        default.unlink()


def test_a_checkpoint_of_another_architecture_is_rejected(task, tmp_path):
    path = tmp_path / "mobilenet.pt"
    torch.save(mobilenetv1_cifar10().build_model().state_dict(), path)
    with pytest.raises(ValueError, match="does not fit the architecture"):
        task.load_model(path)


def test_every_cifar_task_has_its_own_weights_names():
    tasks = [resnet32_cifar10(), wrn28x8_cifar10(), mobilenetv1_cifar10()]
    assert len({t.weights_env_var for t in tasks}) == 3
    assert len({t.default_weights_path() for t in tasks}) == 3
    assert wrn28x8_cifar10().weights_env_var == "PRUNE_GYM_WRN28X8_CIFAR10_WEIGHTS"
