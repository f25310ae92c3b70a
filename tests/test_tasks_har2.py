"""The HAR-2 task: UCI HAR loading from the archive layout, relabelling, splits, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from uci_har_files import write_uci_har

from prune_gym.pruning import find_prunable_layers
from prune_gym.tasks import MissingResourceError, get_task
from prune_gym.tasks.har2 import HAR2Task, binarize_activities

TRAIN_SUBJECTS = (1, 3, 5, 6, 7, 8)
TEST_SUBJECTS = (2, 4)
WINDOWS = 6



@pytest.fixture(scope="module")
def har_data(tmp_path_factory):
    """(folder, raw arrays) of a miniature UCI HAR Dataset: 36 train and 12 test windows."""
    return write_uci_har(tmp_path_factory.mktemp("har"), TRAIN_SUBJECTS, TEST_SUBJECTS, WINDOWS)


@pytest.fixture
def task(monkeypatch, tmp_path) -> HAR2Task:
    monkeypatch.setenv("PRUNE_GYM_CACHE", str(tmp_path / "cache"))  # no default weights there
    monkeypatch.delenv("PRUNE_GYM_HAR_DIR", raising=False)
    monkeypatch.delenv("PRUNE_GYM_FASTGRNN_HAR2_WEIGHTS", raising=False)
    return get_task("fastgrnn-har2")


def _rows(inputs: torch.Tensor) -> set[bytes]:
    return {window.numpy().tobytes() for window in inputs}


def test_registered_under_its_name_and_env_id():
    task = get_task("PruneFastGRNNHAR2-v1")
    assert task.name == "fastgrnn-har2" and task.family == "har2"
    assert task.input_shape == (128, 9) and task.num_classes == 2


def test_num_prunable_layers_matches_the_built_model(task):
    model = task.build_model()
    layers = find_prunable_layers(model, example_input=torch.zeros(1, *task.input_shape))
    assert len(layers) == task.num_prunable_layers == 5


def test_splits_have_window_shape_and_sizes(task, har_data):
    folder, _ = har_data
    splits = task.load_splits(folder)
    assert not splits.synthetic
    # 3 of the 6 training subjects are held out for the reward: 18 + 18 windows; test: 12.
    assert (len(splits.train), len(splits.reward), len(splits.test)) == (18, 18, 12)
    for split in (splits.train, splits.reward, splits.test):
        inputs, labels = split.tensors
        assert inputs.shape[1:] == (128, 9) and inputs.dtype == torch.float32
        assert labels.dtype == torch.int64 and set(labels.tolist()) <= {0, 1}


def test_labels_are_binarised_as_in_the_fastgrnn_paper(task, har_data):
    folder, raw = har_data
    # {Walking_Upstairs, Sitting, Laying} = UCI ids {2, 4, 6} -> 1; {Walking, Walking_Downstairs, Standing} -> 0.
    assert binarize_activities(torch.arange(1, 7)).tolist() == [0, 1, 0, 1, 0, 1]
    _, test_labels = task.load_splits(folder).test.tensors
    assert test_labels.tolist() == [int(a in (2, 4, 6)) for a in raw["test"]["activities"]]
    with pytest.raises(ValueError, match="1..6"):
        binarize_activities(torch.tensor([0, 7]))


def test_inputs_are_normalised_per_channel_with_uci_train_statistics(task, har_data):
    folder, raw = har_data
    splits = task.load_splits(folder)
    train_raw = raw["train"]["inputs"]
    mean, std = train_raw.mean(axis=(0, 1)), train_raw.std(axis=(0, 1))
    test_inputs, _ = splits.test.tensors
    # The files round to 8 significant digits; the test split uses the train statistics.
    np.testing.assert_allclose(test_inputs.numpy(), (raw["test"]["inputs"] - mean) / std, atol=1e-4)
    all_train = torch.cat([splits.train.tensors[0], splits.reward.tensors[0]])
    torch.testing.assert_close(all_train.mean(dim=(0, 1)), torch.zeros(9), atol=1e-5, rtol=0)
    torch.testing.assert_close(all_train.std(dim=(0, 1), correction=0), torch.ones(9), atol=1e-5, rtol=0)


def test_channels_are_stacked_in_archive_order(task, har_data):
    folder, raw = har_data
    test_inputs, _ = task.load_splits(folder).test.tensors
    # Channel c of the written data has offset 0.1 * c and scale 1 + 0.5 * c before normalising;
    # after normalising, each channel must still correlate perfectly with its own raw file only.
    for channel in range(9):
        normalised = test_inputs[:, :, channel].flatten().numpy()
        original = raw["test"]["inputs"][:, :, channel].flatten()
        assert np.corrcoef(normalised, original)[0, 1] == pytest.approx(1.0, abs=1e-6)


def test_splits_are_deterministic_and_disjoint(task, har_data):
    folder, _ = har_data
    first, second = task.load_splits(folder), task.load_splits(folder)
    for a, b in zip((first.train, first.reward, first.test), (second.train, second.reward, second.test), strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a.tensors, b.tensors, strict=True))
    train, reward, test = (_rows(s.tensors[0]) for s in (first.train, first.reward, first.test))
    assert not (train & reward) and not (train & test) and not (reward & test)


def test_other_seeds_reshuffle_only_the_held_out_windows(task, har_data):
    folder, _ = har_data
    base, other = task.load_splits(folder, seed=0), task.load_splits(folder, seed=1)
    assert torch.equal(base.train.tensors[0], other.train.tensors[0])  # what the model was trained on
    held_out = _rows(base.reward.tensors[0]) | _rows(base.test.tensors[0])
    reward, test = _rows(other.reward.tensors[0]), _rows(other.test.tensors[0])
    assert reward | test == held_out and not (reward & test)
    assert reward != _rows(base.reward.tensors[0])
    assert (len(other.reward), len(other.test)) == (len(base.reward), len(base.test))


def test_data_dir_may_be_the_archive_folder_its_parent_or_the_env_var(task, har_data, monkeypatch):
    folder, _ = har_data
    expected = task.load_splits(folder).test.tensors[0]
    assert torch.equal(task.load_splits(folder.parent).test.tensors[0], expected)
    monkeypatch.setenv("PRUNE_GYM_HAR_DIR", str(folder))
    assert torch.equal(task.load_splits().test.tensors[0], expected)
    assert task.availability().data


def test_missing_data_names_the_kwarg_env_var(task, tmp_path):
    with pytest.raises(MissingResourceError, match=r"data_dir=.*PRUNE_GYM_HAR_DIR"):
        task.load_splits()
    with pytest.raises(MissingResourceError, match="does not exist"):
        task.load_splits(tmp_path / "nowhere")
    assert not task.availability().data


def test_missing_or_malformed_file_is_named(task, tmp_path):
    folder, _ = write_uci_har(tmp_path, (1, 2, 3, 4), (5,), windows_per_subject=2)
    (folder / "train" / "Inertial Signals" / "body_gyro_y_train.txt").unlink()
    with pytest.raises(MissingResourceError, match="body_gyro_y_train.txt"):
        task.load_splits(folder)

    folder, _ = write_uci_har(tmp_path / "short", (1, 2, 3, 4), (5,), windows_per_subject=2)
    signal = folder / "test" / "Inertial Signals" / "total_acc_z_test.txt"
    signal.write_text("".join(" ".join(["1.0"] * 64) + "\n" for _ in range(2)))
    with pytest.raises(ValueError, match=r"total_acc_z_test.txt has 64 columns.*expected 128"):
        task.load_splits(folder)

    folder, _ = write_uci_har(tmp_path / "labels", (1, 2, 3, 4), (5,), windows_per_subject=2)
    (folder / "test" / "y_test.txt").write_text("1\n")
    with pytest.raises(ValueError, match="disagree in their number of windows"):
        task.load_splits(folder)


def test_missing_weights_say_how_to_make_them(task):
    assert task.default_weights_path().name == "fastgrnn-har2.pt"
    with pytest.raises(MissingResourceError) as error:
        task.load_model()
    message = str(error.value)
    for hint in ("weights=", "PRUNE_GYM_FASTGRNN_HAR2_WEIGHTS", "prune-gym pretrain fastgrnn-har2 --data-dir DIR"):
        assert hint in message
    assert not task.availability().weights


def test_load_model_reads_a_state_dict_from_kwarg_or_env_var(task, tmp_path, monkeypatch):
    trained = task.build_model()
    path = tmp_path / "har2.pt"
    torch.save({"state_dict": trained.state_dict()}, path)
    loaded = task.load_model(weights=path)
    assert not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), trained.state_dict().values(), strict=True))
    monkeypatch.setenv("PRUNE_GYM_FASTGRNN_HAR2_WEIGHTS", str(path))
    assert torch.equal(task.load_model().W1.weight, trained.W1.weight)
    monkeypatch.setenv("PRUNE_GYM_FASTGRNN_HAR2_WEIGHTS", str(tmp_path / "missing.pt"))
    with pytest.raises(MissingResourceError, match="PRUNE_GYM_FASTGRNN_HAR2_WEIGHTS"):
        task.load_model()
