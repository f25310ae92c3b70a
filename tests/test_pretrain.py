"""``pretrain`` and ``prune-gym pretrain``: training from scratch, saving, resuming, augmentation."""

from __future__ import annotations

import pytest
import torch
from uci_har_files import write_uci_har

from prune_gym.cli import main
from prune_gym.tasks import get_task
from prune_gym.tasks.image_data import crop_flip
from prune_gym.workflows.pretrain import (
    default_output,
    partial_path,
    pretrain,
    pretrain_recipe,
)


@pytest.fixture(scope="module")
def har_dir(tmp_path_factory):
    folder, _ = write_uci_har(tmp_path_factory.mktemp("har"), (1, 3, 5, 6, 7, 8), (2, 4), windows_per_subject=6)
    return folder


@pytest.fixture
def har_task(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNE_GYM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PRUNE_GYM_HAR_DIR", raising=False)
    monkeypatch.delenv("PRUNE_GYM_FASTGRNN_HAR2_WEIGHTS", raising=False)
    return get_task("fastgrnn-har2")


def _count_training_batches(task, monkeypatch, interrupt_at: int | None = None) -> list[int]:
    """Make ``task.build_model`` count training forward passes (and raise Ctrl-C at one)."""
    calls: list[int] = []
    build = type(task).build_model

    def counting_build(self=task):
        model = build(self)

        def hook(module, _inputs):
            if module.training:
                calls.append(1)
                if interrupt_at is not None and len(calls) == interrupt_at:
                    raise KeyboardInterrupt

        model.register_forward_pre_hook(hook)
        return model

    monkeypatch.setattr(task, "build_model", counting_build)
    return calls


def _weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def test_pretrain_writes_weights_the_task_loads_by_default(har_task, har_dir):
    path = pretrain("fastgrnn-har2", data_dir=har_dir, epochs=2, progress=False, device="cpu")
    assert path == har_task.default_weights_path() and path.is_file()
    saved = torch.load(path, weights_only=True)
    assert saved["task"] == "fastgrnn-har2" and saved["recipe"]["epochs"] == 2
    assert 0.0 <= saved["test_accuracy"] <= 1.0
    assert not partial_path(path).exists()  # removed once the final weights are saved
    model = har_task.load_model()
    assert torch.equal(model.U2.weight, saved["state_dict"]["U2.weight"])
    torch.manual_seed(0)  # pretrain's default seed: the same initial weights
    assert not torch.equal(model.U2.weight, har_task.build_model().U2.weight)  # it trained


def test_the_har2_recipe_learns_the_miniature_task(har_task, har_dir, tmp_path):
    # Class-1 windows oscillate 3x faster: 30 one-batch epochs are enough to tell them apart.
    path = pretrain("fastgrnn-har2", har_dir, epochs=30, output=tmp_path / "w.pt", progress=False, device="cpu")
    assert torch.load(path, weights_only=True)["test_accuracy"] >= 0.75


def test_resume_after_ctrl_c_continues_and_equals_an_uninterrupted_run(har_task, har_dir, tmp_path, monkeypatch):
    straight = pretrain("fastgrnn-har2", har_dir, epochs=2, output=tmp_path / "straight.pt", progress=False, device="cpu")

    output = tmp_path / "resumed.pt"
    # 18 training windows = one batch per epoch: the 2nd training batch is in epoch 2.
    _count_training_batches(har_task, monkeypatch, interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        pretrain("fastgrnn-har2", har_dir, epochs=2, output=output, progress=False, device="cpu")
    assert not output.exists()
    checkpoint = torch.load(partial_path(output), weights_only=True)
    assert checkpoint["epochs_done"] == 1

    calls = _count_training_batches(har_task, monkeypatch)
    pretrain("fastgrnn-har2", har_dir, epochs=2, output=output, resume=True, progress=False, device="cpu")
    assert len(calls) == 1  # only epoch 2 ran again
    assert not partial_path(output).exists()
    expected, resumed = _weights(straight), _weights(output)
    assert expected.keys() == resumed.keys()
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name], rtol=0, atol=0, msg=name)


def test_without_resume_an_old_partial_checkpoint_is_discarded(har_task, har_dir, tmp_path, monkeypatch):
    output = tmp_path / "weights.pt"
    _count_training_batches(har_task, monkeypatch, interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        pretrain("fastgrnn-har2", har_dir, epochs=2, output=output, progress=False, device="cpu")
    calls = _count_training_batches(har_task, monkeypatch)
    pretrain("fastgrnn-har2", har_dir, epochs=2, output=output, progress=False, device="cpu")
    assert len(calls) == 2  # both epochs, from scratch


def test_resuming_with_another_number_of_epochs_is_refused(har_task, har_dir, tmp_path, monkeypatch):
    output = tmp_path / "weights.pt"
    _count_training_batches(har_task, monkeypatch, interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        pretrain("fastgrnn-har2", har_dir, epochs=2, output=output, progress=False, device="cpu")
    _count_training_batches(har_task, monkeypatch)  # no more interrupts
    with pytest.raises(ValueError, match="another run"):
        pretrain("fastgrnn-har2", har_dir, epochs=3, output=output, resume=True, progress=False, device="cpu")


def test_bad_arguments_are_rejected(har_dir):
    with pytest.raises(ValueError, match="epochs"):
        pretrain("fastgrnn-har2", har_dir, epochs=0, progress=False)
    with pytest.raises(ValueError, match="unknown task"):
        pretrain("no-such-task", progress=False)
    with pytest.raises(ValueError, match="device"):
        pretrain("fastgrnn-har2", har_dir, epochs=1, device="tpu", progress=False)


def test_digits_uses_its_own_recipe_and_cache_path():
    from prune_gym.tasks.digits import TRAIN_RECIPE

    digits = get_task("resnet20-digits")
    assert pretrain_recipe(digits) == TRAIN_RECIPE
    assert default_output(digits) == digits.cache_path
    assert pretrain_recipe(get_task("fastgrnn-har2")).epochs >= 1


def test_crop_flip_takes_padded_crops_and_flips_reproducibly():
    images = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6) + 1
    torch.manual_seed(0)
    out = crop_flip(images, padding=2)
    torch.manual_seed(0)
    assert torch.equal(crop_flip(images, padding=2), out)
    assert out.shape == images.shape
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for image, result in zip(padded, out, strict=True):
        candidates = [
            view
            for dy in range(5)
            for dx in range(5)
            for view in (image[:, dy : dy + 6, dx : dx + 6], image[:, dy : dy + 6, dx : dx + 6].flip(-1))
        ]
        assert any(torch.equal(result, candidate) for candidate in candidates)
    # Over many draws both flips and several offsets occur.
    torch.manual_seed(1)
    many = crop_flip(images[:1].expand(64, -1, -1, -1), padding=2)
    assert len({m.numpy().tobytes() for m in many}) > 10


def test_cli_pretrain_end_to_end(har_task, har_dir, tmp_path, capsys):
    output = tmp_path / "cli.pt"
    argv = ["pretrain", "fastgrnn-har2", "--data-dir", str(har_dir), "--epochs", "1", "--output", str(output)]
    assert main([*argv, "--device", "cpu", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == str(output)
    assert har_task.load_model(weights=output).classifier.weight.shape == (2, 80)


def test_cli_pretrain_reports_missing_data(har_task, capsys):
    assert main(["pretrain", "fastgrnn-har2", "--epochs", "1", "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "prune-gym pretrain: error:" in error and "PRUNE_GYM_HAR_DIR" in error


def test_an_output_that_cannot_be_written_fails_before_the_first_epoch(har_task, har_dir, tmp_path, capsys, monkeypatch):
    import prune_gym.workflows.pretrain as pretrain_module

    def no_training(*args, **kwargs):
        raise AssertionError("training started although the output cannot be written")

    monkeypatch.setattr(pretrain_module, "train_classifier", no_training)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    argv = ["pretrain", "fastgrnn-har2", "--data-dir", str(har_dir), "--epochs", "1", "--output", str(blocker / "w.pt")]
    assert main([*argv, "--device", "cpu", "--no-progress"]) == 2
    assert "which is a file: choose another path" in capsys.readouterr().err
    assert not (tmp_path / "file.partial").exists()
