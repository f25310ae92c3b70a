"""Masked fine-tuning, resumable training, the short env retraining and gradual Global MP."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch

from prune_gym.calibration import capture_state, recalibrate_batchnorm, restore_state
from prune_gym.finetune import (
    TrainConfig,
    apply_masks,
    finetune_pruned,
    finetune_steps,
    train_classifier,
)
from prune_gym.gradual import cubic_sparsity_schedule, gradual_global_magnitude_pruning
from prune_gym.pruning import find_prunable_layers, global_magnitude_masks, minimum_keep
from prune_gym.tasks import get_task, list_tasks


@pytest.fixture(scope="module")
def small_train(digits_task) -> tuple[torch.Tensor, torch.Tensor]:
    """96 training digits: enough to move the weights, few enough to train in a blink."""
    train = digits_task.load_splits().train
    inputs, labels = train.tensors
    return inputs[:96], labels[:96]


def pruned_count(masks) -> int:
    return sum(m.numel() - int(m.sum()) for m in masks)


def assert_pruned_weights_zero(layers, masks) -> None:
    for layer, mask in zip(layers, masks, strict=True):
        assert torch.count_nonzero(layer.weight.detach()[~mask]) == 0, layer.name


# --------------------------------------------------------------------------------------------
# Masked fine-tuning


def test_pruned_weights_stay_exactly_zero_through_finetuning(digits_model, small_train):
    layers = find_prunable_layers(digits_model)
    masks = global_magnitude_masks([layer.weight for layer in layers], 0.8)
    kept_before = [layer.weight.detach()[mask].clone() for layer, mask in zip(layers, masks, strict=True)]
    # Strong momentum and weight decay: either would revive pruned weights without the masks.
    config = TrainConfig(epochs=2, batch_size=32, lr=0.05, momentum=0.9, weight_decay=5e-3)
    returned = finetune_pruned(digits_model, layers, masks, small_train, config=config)

    assert returned is digits_model and not digits_model.training
    assert_pruned_weights_zero(layers, masks)
    # ...and it did train: the surviving weights moved.
    moved = [not torch.equal(layer.weight.detach()[mask], before)
             for layer, mask, before in zip(layers, masks, kept_before, strict=True)]
    assert all(moved)


def test_finetune_pruned_uses_the_tasks_recipe_and_overrides(digits_model, small_train, monkeypatch):
    import prune_gym.finetune as finetune

    seen = {}

    def fake_train(model, data, config, **kwargs):
        seen["config"] = config
        return model

    monkeypatch.setattr(finetune, "train_classifier", fake_train)
    layers = find_prunable_layers(digits_model)
    masks = [torch.ones_like(layer.weight, dtype=torch.bool) for layer in layers]
    imagenet = get_task("resnet50-imagenet")
    finetune_pruned(digits_model, layers, masks, small_train, 3, config=imagenet.finetune_recipe, lr=0.002)
    assert seen["config"].epochs == 3 and seen["config"].lr == 0.002
    assert seen["config"].label_smoothing == imagenet.finetune_recipe.label_smoothing == 0.1
    assert imagenet.finetune_recipe.epochs != 3  # the recipe itself was not changed


def test_every_task_has_recipes_that_finetune_gently():
    for task in list_tasks():
        finetune, pretrain = task.recipe("finetune"), task.recipe("pretrain")
        assert finetune.lr < pretrain.lr and finetune.epochs < pretrain.epochs, task.name
    copy = get_task("resnet20-digits").recipe()
    copy.lr = 123.0
    assert get_task("resnet20-digits").recipe().lr != 123.0
    with pytest.raises(ValueError, match="purpose"):
        get_task("resnet20-digits").recipe("distill")


@pytest.mark.parametrize("epochs", [-1, 1.5, True])
def test_bad_epochs_are_clear_errors(digits_model, small_train, epochs):
    layers = find_prunable_layers(digits_model)
    masks = [torch.ones_like(layer.weight, dtype=torch.bool) for layer in layers]
    with pytest.raises(ValueError, match="epochs must be a whole number >= 0"):
        finetune_pruned(digits_model, layers, masks, small_train, epochs)


def test_wrong_masks_are_clear_errors(digits_model, small_train):
    layers = find_prunable_layers(digits_model)
    masks = [torch.ones_like(layer.weight, dtype=torch.bool) for layer in layers]
    bad_shape = [*masks[:-1], torch.ones(3, 3, dtype=torch.bool)]
    with pytest.raises(ValueError, match=f"mask for layer '{layers[-1].name}' has shape"):
        finetune_pruned(digits_model, layers, bad_shape, small_train, 1)
    with pytest.raises(ValueError, match="one mask per prunable layer"):
        finetune_pruned(digits_model, layers, masks[:-1], small_train, 1)
    with pytest.raises(ValueError, match="masks and layers together"):
        train_classifier(digits_model, small_train, TrainConfig(epochs=1), masks=masks)


# --------------------------------------------------------------------------------------------
# Resumable training


class Interrupt:
    """An augment that adds noise from torch's global generator and can stop the run mid-epoch."""

    def __init__(self, stop_at_call: int | None = None) -> None:
        self.calls = 0
        self.stop_at_call = stop_at_call

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.stop_at_call:
            raise KeyboardInterrupt
        return x + 0.05 * torch.randn_like(x)


def test_resumed_run_ends_identical_to_uninterrupted(digits_task, digits_model_state, small_train, tmp_path):
    def fresh():
        model = digits_task.build_model()
        model.load_state_dict(digits_model_state)
        layers = find_prunable_layers(model)
        return model, layers, global_magnitude_masks([layer.weight for layer in layers], 0.5)

    # 3 epochs of 3 batches each; the interruption comes in the second batch of epoch 2.
    config = TrainConfig(epochs=3, batch_size=32, lr=0.05, seed=7)

    model, layers, masks = fresh()
    train_classifier(model, small_train, config, masks=masks, layers=layers,
                     checkpoint_path=tmp_path / "straight.pt", augment=Interrupt())
    expected = model.state_dict()

    model, layers, masks = fresh()
    path = tmp_path / "interrupted.pt"
    with pytest.raises(KeyboardInterrupt):
        train_classifier(model, small_train, config, masks=masks, layers=layers,
                         checkpoint_path=path, augment=Interrupt(stop_at_call=5))
    assert torch.load(path, weights_only=True)["epochs_done"] == 1

    torch.manual_seed(12345)  # the caller's global random state must not matter
    model, layers, masks = fresh()
    augment = Interrupt()
    train_classifier(model, small_train, config, masks=masks, layers=layers, checkpoint_path=path, augment=augment)
    assert augment.calls == 6  # epochs 2 and 3 only: nothing repeated
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name

    # A finished checkpoint only loads: no further epoch runs.
    model, layers, masks = fresh()
    augment = Interrupt()
    train_classifier(model, small_train, config, masks=masks, layers=layers, checkpoint_path=path, augment=augment)
    assert augment.calls == 0
    assert all(torch.equal(t, expected[n]) for n, t in model.state_dict().items())


def test_checkpoint_of_another_run_is_refused(digits_model, small_train, tmp_path):
    path = tmp_path / "run.pt"
    train_classifier(digits_model, small_train, TrainConfig(epochs=1, batch_size=48), checkpoint_path=path)
    with pytest.raises(ValueError, match="written by another run.*delete it"):
        train_classifier(digits_model, small_train, TrainConfig(epochs=2, batch_size=48), checkpoint_path=path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read the training checkpoint"):
        train_classifier(digits_model, small_train, TrainConfig(epochs=1, batch_size=48), checkpoint_path=path)


def test_training_is_deterministic_and_leaves_global_rng_alone(digits_task, digits_model_state, small_train):
    results = []
    for _ in range(2):
        model = digits_task.build_model()
        model.load_state_dict(digits_model_state)
        torch.manual_seed(0)
        train_classifier(model, small_train, TrainConfig(epochs=1, batch_size=32, seed=3))
        results.append(model.state_dict())
        assert torch.equal(torch.rand(3), (torch.manual_seed(0), torch.rand(3))[1])
    assert all(torch.equal(results[0][n], results[1][n]) for n in results[0])


def test_sgd_without_momentum_works(digits_model, small_train):
    last = find_prunable_layers(digits_model)[-1]
    before = last.weight.detach().clone()
    train_classifier(digits_model, small_train, TrainConfig(epochs=1, batch_size=48, momentum=0.0))
    assert torch.isfinite(last.weight).all() and not torch.equal(before, last.weight)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_masked_finetuning_on_cuda_with_amp_resumes(digits_model, small_train, tmp_path):
    layers = find_prunable_layers(digits_model.cuda())
    masks = global_magnitude_masks([layer.weight for layer in layers], 0.8)
    config = TrainConfig(epochs=2, batch_size=32, lr=0.05)
    path = tmp_path / "cuda.pt"
    with pytest.raises(KeyboardInterrupt):
        finetune_pruned(digits_model, layers, masks, small_train, config=config, device="cuda", amp=True,
                        checkpoint_path=path, augment=Interrupt(stop_at_call=5))
    augment = Interrupt()
    finetune_pruned(digits_model, layers, masks, small_train, config=config, device="cuda", amp=True,
                    checkpoint_path=path, augment=augment)
    assert augment.calls == 3
    assert_pruned_weights_zero(layers, masks)


# --------------------------------------------------------------------------------------------
# Short retraining for the env


def test_finetune_steps_keeps_masks_and_restore_undoes_it(digits_model, small_train):
    layers = find_prunable_layers(digits_model)
    masks = global_magnitude_masks([layer.weight for layer in layers], 0.7)
    apply_masks(layers, masks)
    snapshot = capture_state(digits_model)
    generator = torch.Generator().manual_seed(0)

    loss = finetune_steps(digits_model, layers, masks, small_train, steps=3, lr=0.05, generator=generator)
    assert math.isfinite(loss)
    assert not digits_model.training  # left in eval mode, ready for the next evaluation
    assert_pruned_weights_zero(layers, masks)
    changed = [n for n, t in digits_model.state_dict().items() if not torch.equal(t, snapshot[n])]
    assert any(n.endswith("running_mean") for n in changed)  # BatchNorm statistics were updated
    assert any(n.endswith("conv1.weight") for n in changed)

    restore_state(digits_model, snapshot)
    assert all(torch.equal(t, snapshot[n]) for n, t in digits_model.state_dict().items())


def test_finetune_steps_can_leave_batchnorm_alone(digits_model, small_train):
    layers = find_prunable_layers(digits_model)
    masks = [torch.ones_like(layer.weight, dtype=torch.bool) for layer in layers]
    buffers = {n: b.clone() for n, b in digits_model.named_buffers()}
    finetune_steps(digits_model, layers, masks, small_train, steps=2, update_batchnorm=False)
    assert all(torch.equal(b, buffers[n]) for n, b in digits_model.named_buffers())
    assert math.isnan(finetune_steps(digits_model, layers, masks, small_train, steps=0))
    with pytest.raises(ValueError, match="steps must be a whole number"):
        finetune_steps(digits_model, layers, masks, small_train, steps=-2)


def test_batchnorm_recalibration_recovers_accuracy_without_touching_weights(digits_task, digits_model):
    from prune_gym.evaluation import evaluate_accuracy

    splits = digits_task.load_splits()
    layers = find_prunable_layers(digits_model)
    masks = global_magnitude_masks([layer.weight for layer in layers], 0.8)
    apply_masks(layers, masks)
    pruned_accuracy = evaluate_accuracy(digits_model, splits.reward, device="cpu")
    parameters = {n: p.clone() for n, p in digits_model.named_parameters()}

    recalibrate_batchnorm(digits_model, splits.train.tensors[0])
    assert evaluate_accuracy(digits_model, splits.reward, device="cpu") > pruned_accuracy + 0.3
    assert all(torch.equal(p, parameters[n]) for n, p in digits_model.named_parameters())
    assert not any(m.training for m in digits_model.modules())
    assert all(m.momentum == 0.1 for m in digits_model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_restore_state_rejects_another_models_state(digits_model):
    with pytest.raises(ValueError, match="capture_state"):
        restore_state(digits_model, {"weight": torch.zeros(1)})


# --------------------------------------------------------------------------------------------
# Gradual Global MP


def test_cubic_schedule_rises_and_ends_exactly_at_the_target():
    schedule = cubic_sparsity_schedule(0.9, 5)
    assert len(schedule) == 5 and schedule[-1] == 0.9
    assert all(a < b for a, b in pairwise(schedule))
    assert schedule[0] == pytest.approx(0.9 * (1 - (1 - 1 / 5) ** 3))
    # Steps shrink: pruning is fastest at the start.
    increments = [b - a for a, b in pairwise([0.0, *schedule])]
    assert all(a > b for a, b in pairwise(increments))
    assert cubic_sparsity_schedule(0.8, 1) == [0.8]
    assert cubic_sparsity_schedule(0.8, 3, initial=0.5)[0] > 0.5
    for args in [(1.0, 3), (0.8, 0), (0.8, 2.5), (0.5, 3, 0.6)]:
        with pytest.raises(ValueError):
            cubic_sparsity_schedule(*args)


def test_gradual_global_mp_hits_the_target_exactly_with_min_threshold(digits_model):
    layers = find_prunable_layers(digits_model)
    total = sum(layer.numel for layer in layers)
    masks, history = gradual_global_magnitude_pruning(
        digits_model, layers, data=None, final_sparsity=0.9, steps=4, epochs_per_step=0, min_threshold=0.0005
    )
    assert pruned_count(masks) == round(0.9 * total)
    assert [h.target_sparsity for h in history] == cubic_sparsity_schedule(0.9, 4)
    assert history[-1].sparsity == pruned_count(masks) / total
    floor = minimum_keep([layer.weight for layer in layers], 0.0005)
    assert all(int(m.sum()) >= min(floor, m.numel()) for m in masks)
    assert_pruned_weights_zero(layers, masks)
    # A layer's sparsity never falls from one step to the next (pruned weights stay pruned).
    for before, after in pairwise(history):
        assert all(b <= a for b, a in zip(before.layer_sparsities, after.layer_sparsities, strict=True))


def test_gradual_global_mp_finetunes_between_steps(digits_model, small_train):
    layers = find_prunable_layers(digits_model)
    total = sum(layer.numel for layer in layers)
    config = TrainConfig(epochs=1, batch_size=48, lr=0.02)
    masks, history = gradual_global_magnitude_pruning(
        digits_model, layers, small_train, 0.8, steps=2, epochs_per_step=1, config=config,
        eval_data=small_train,
    )
    assert pruned_count(masks) == round(0.8 * total)
    assert_pruned_weights_zero(layers, masks)
    assert all(h.accuracy_pruned is not None and h.accuracy_finetuned is not None for h in history)
    assert not digits_model.training


def test_gradual_global_mp_refuses_an_unreachable_target_before_training(digits_model):
    layers = find_prunable_layers(digits_model)
    with pytest.raises(ValueError, match="unreachable"):
        gradual_global_magnitude_pruning(digits_model, layers, None, 0.99, 3, 1, min_threshold=0.01)


def test_pruned_weights_stay_pruned_from_step_to_step(digits_model, monkeypatch):
    # Stand-in fine-tuning that rescales surviving weights at random and sets many to exactly
    # zero (tying with the pruned ones), so every step re-ranks very different magnitudes; the
    # masks of each step must still shrink monotonically.
    import prune_gym.gradual as gradual

    generator = torch.Generator().manual_seed(0)
    masks_per_step = []

    def shuffling_train(model, data, config, masks, layers, **kwargs):
        masks_per_step.append([m.clone() for m in masks])
        with torch.no_grad():
            for layer in layers:
                noise = torch.rand(layer.weight.shape, generator=generator)
                layer.weight.mul_(torch.where(noise < 0.3, 0.0, 2 * noise))
        return model

    monkeypatch.setattr(gradual, "train_classifier", shuffling_train)
    layers = find_prunable_layers(digits_model)
    masks, _ = gradual_global_magnitude_pruning(digits_model, layers, None, 0.9, 5, 1, min_threshold=0.0005)
    assert len(masks_per_step) == 5
    for earlier, later in pairwise(masks_per_step):
        assert all(not (b & ~a).any() for a, b in zip(earlier, later, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(masks_per_step[-1], masks, strict=True))
    assert pruned_count(masks) == round(0.9 * sum(layer.numel for layer in layers))
