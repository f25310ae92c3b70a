"""Tests of the evaluator: exact accuracy, exact activation cache, input kinds and bad input."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prune_gym.evaluation import (
    Evaluator,
    as_tensors,
    evaluate_accuracy,
    model_stages,
    resolve_device,
    stage_of_modules,
)
from prune_gym.pruning import PruningState, find_prunable_layers
from prune_gym.tasks.models.cifar_resnet import resnet20


def loop_accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    """The straightforward reference: one sample at a time, full forward."""
    with torch.no_grad():
        correct = sum(int(model(x[None]).argmax(1).item() == int(y)) for x, y in zip(inputs, labels, strict=True))
    return correct / len(labels)


def full_forward_accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(inputs).argmax(1) == labels).sum().item() / len(labels)


def small_classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4)).eval()


def small_split(n: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 4, 4, generator=generator), torch.randint(0, 4, (n,), generator=generator)


@pytest.fixture
def calibrated_resnet20_split():
    """A ResNet-20 on 8x8 inputs with non-trivial BN statistics, and a split labelled by the
    dense model's own predictions: dense accuracy is 1.0 and any pruning mistake shows."""
    torch.manual_seed(2)
    model = resnet20(num_classes=10, in_channels=1)
    with torch.no_grad():
        model.train()
        for _ in range(3):
            model(torch.randn(64, 1, 8, 8))
    model.eval()
    inputs = torch.randn(96, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        labels = model(inputs).argmax(1)
    return model, inputs, labels


# --------------------------------------------------------------------------------------------
# Plain accuracy


def test_accuracy_equals_a_per_sample_loop_with_uneven_batches():
    model = small_classifier()
    inputs, labels = small_split()
    expected = loop_accuracy(model, inputs, labels)
    assert 0.0 < expected < 1.0
    for batch_size in (1, 7, 50, 1024):
        evaluator = Evaluator(model, (inputs, labels), batch_size=batch_size)
        assert evaluator.accuracy() == expected
        assert evaluator.num_samples == 50
    assert evaluate_accuracy(model, (inputs, labels), device="cpu", batch_size=9) == expected
    logits = Evaluator(model, (inputs, labels), batch_size=7).logits()
    with torch.no_grad():
        assert torch.allclose(logits, model(inputs), atol=1e-6)


def test_a_one_off_accuracy_gives_the_model_back_in_its_memory_format():
    """The evaluation runs channels_last; a latency measured afterwards must not compare a
    channels_last network with a contiguous one (the channel export once did: 1.5x that was 1.3x)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 4)).eval()
    inputs, labels = small_split()
    evaluate_accuracy(model, (inputs, labels), device="cpu")
    assert all(param.is_contiguous() for param in model.parameters())
    already = model.to(memory_format=torch.channels_last)  # given channels_last: it stays so
    evaluate_accuracy(already, (inputs, labels), device="cpu")
    assert already[2].weight.is_contiguous(memory_format=torch.channels_last) and not already[2].weight.is_contiguous()


def test_tensors_dataset_dataloader_and_streamed_inputs_agree():
    model = small_classifier()
    inputs, labels = small_split()
    expected = loop_accuracy(model, inputs, labels)
    dataset = TensorDataset(inputs, labels)
    sources = [
        (inputs, labels),
        [inputs, labels],
        dataset,
        DataLoader(dataset, batch_size=8, shuffle=True),
    ]
    for source in sources:
        assert Evaluator(model, source, batch_size=16).accuracy() == expected
    for source in sources[2:]:  # a Dataset or DataLoader can also be streamed from the host
        streamed = Evaluator(model, source, batch_size=16, resident=False)
        assert streamed.loader is not None and streamed.accuracy() == expected
    decoded_inputs, decoded_labels = as_tensors(DataLoader(dataset, batch_size=8))
    assert torch.equal(decoded_inputs, inputs) and torch.equal(decoded_labels, labels)
    assert decoded_labels.dtype == torch.long


def test_empty_split_and_bad_arguments_are_clear_errors():
    model = small_classifier()
    inputs, labels = small_split()
    empty = (torch.empty(0, 1, 4, 4), torch.empty(0, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        Evaluator(model, empty)
    with pytest.raises(ValueError, match="empty"):
        Evaluator(model, TensorDataset(*empty))
    with pytest.raises(ValueError, match="empty"):
        Evaluator(model, TensorDataset(*empty), resident=False)
    for bad in (0, -3):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            Evaluator(model, (inputs, labels), batch_size=bad)
    with pytest.raises(ValueError, match="differ in length"):
        Evaluator(model, (inputs, labels[:-1]))
    with pytest.raises(ValueError, match="data must be"):
        Evaluator(model, {"inputs": inputs, "labels": labels})


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when no GPU is visible")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="no GPU is visible.*device='cpu'"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="no GPU is visible"):
        Evaluator(small_classifier(), small_split(), device="cuda:0")
    with pytest.raises(ValueError, match="no GPU is visible"):
        evaluate_accuracy(small_classifier(), small_split(), device="cuda")
    assert Evaluator(small_classifier(), small_split(), device="auto").device.type == "cpu"


# --------------------------------------------------------------------------------------------
# Stages and the activation cache


def assert_stages_compose_to_forward(model: nn.Module, stages: list[nn.Module], x: torch.Tensor) -> None:
    """Running the stages one after another gives exactly the model's forward pass."""
    with torch.no_grad():
        h = x
        for stage in stages:
            h = stage(h)
        assert torch.equal(h, model(x))


@pytest.mark.parametrize("builder", [torchvision.models.resnet18, torchvision.models.mobilenet_v2])
def test_the_imagenet_tasks_stages_compose_to_forward_for_torchvision_models(builder):
    from prune_gym.tasks import get_task

    torch.manual_seed(4)
    model = builder(num_classes=10).eval()
    assert model_stages(model) is None  # the evaluator alone does not know torchvision's models
    stages = get_task("resnet50-imagenet").model_stages(model)
    assert stages is not None and len(stages) > 3
    assert len(get_task("mobilenetv2-imagenet").model_stages(model)) == len(stages)  # by the model's type
    assert_stages_compose_to_forward(model, stages, torch.randn(3, 3, 32, 32))
    layers = find_prunable_layers(model)
    owners = stage_of_modules(stages, [layer.module for layer in layers])
    assert owners[0] == 0 and owners[-1] == len(stages) - 1
    assert owners == sorted(owners)  # forward order never goes back to an earlier stage


def test_model_stages_of_cifar_resnet_sequential_and_unknown_models():
    model = resnet20(in_channels=1).eval()
    stages = model_stages(model)
    assert len(stages) == 1 + 9 + 1
    assert_stages_compose_to_forward(model, stages, torch.randn(2, 1, 8, 8))
    sequential = small_classifier()
    assert model_stages(sequential) == list(sequential)

    class Opaque(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(1))

    opaque = Opaque().eval()
    assert model_stages(opaque) is None
    inputs, labels = small_split()
    evaluator = Evaluator(opaque, (inputs, labels), batch_size=8)
    assert evaluator.stages is None
    assert evaluator.accuracy(keep_stage=4) == loop_accuracy(opaque, inputs, labels)
    with pytest.raises(ValueError, match="not inside any stage"):
        stage_of_modules(stages, [opaque.fc])


def test_activation_cache_is_exact_through_episodes(calibrated_resnet20_split):
    """Prune layer by layer as an environment does; each accuracy must equal a full forward."""
    model, inputs, labels = calibrated_resnet20_split
    layers = find_prunable_layers(model, example_input=inputs[:2])
    state = PruningState(model, layers)
    evaluator = Evaluator(model, (inputs, labels), batch_size=40)  # 3 batches, the last short
    stages = evaluator.stages
    assert stages is not None
    layer_stage = stage_of_modules(stages, [layer.module for layer in layers])
    stem_calls = []
    stages[0].register_forward_hook(lambda *_: stem_calls.append(1))

    generator = torch.Generator().manual_seed(5)
    accuracies = []
    for _episode in range(2):
        state.restore()
        evaluator.mark_changed(0)
        assert evaluator.cached_stage is None
        assert evaluator.accuracy() == full_forward_accuracy(model, inputs, labels) == 1.0
        for index in range(len(layers)):
            sparsity = float(torch.rand((), generator=generator)) * 0.5 + 0.45
            state.prune_layer(index, sparsity)
            stage = layer_stage[index]
            evaluator.mark_changed(stage)
            next_stage = layer_stage[index + 1] if index + 1 < len(layers) else None
            calls_before = len(stem_calls)
            accuracy = evaluator.accuracy(keep_stage=next_stage)
            if index > 0 and stage > 0:
                assert len(stem_calls) == calls_before  # really resumed from the cache
            assert accuracy == full_forward_accuracy(model, inputs, labels), (index, layers[index].name)
            accuracies.append(accuracy)
    # The check is only meaningful if pruning moved the accuracy around.
    assert len(set(accuracies)) >= 5 and min(accuracies) < 0.7


def test_the_last_scored_samples_are_kept_until_the_weights_change(calibrated_resnet20_split, monkeypatch):
    """last_correct() hands back what the last accuracy() scored, sample by sample, without a
    second pass; once the evaluator is told of a change it runs a full pass instead."""
    model, inputs, labels = calibrated_resnet20_split
    layers = find_prunable_layers(model)
    state = PruningState(model, layers)
    evaluator = Evaluator(model, (inputs, labels), batch_size=40)
    layer_stage = stage_of_modules(evaluator.stages, [layer.module for layer in layers])
    state.prune_layer(len(layers) - 2, 0.95)
    evaluator.mark_changed(layer_stage[-2])
    accuracy = evaluator.accuracy(keep_stage=layer_stage[-1])
    full = evaluator.correct()
    passes = []
    monkeypatch.setattr(evaluator, "correct", lambda: passes.append(1) or full)
    kept = evaluator.last_correct()
    assert not passes and kept.dtype == torch.bool and kept.device.type == "cpu"
    assert torch.equal(kept, full) and int(kept.sum()) / len(kept) == accuracy < 1.0
    state.prune_layer(0, 0.95)
    evaluator.mark_changed(layer_stage[0])  # the weights changed: the kept result is stale
    assert evaluator.last_correct() is full and passes == [1]


@pytest.fixture
def staged_evaluation(calibrated_resnet20_split):
    """The split's model with its layers' mask state, an Evaluator over the split and each layer's stage."""
    model, inputs, labels = calibrated_resnet20_split
    layers = find_prunable_layers(model)
    evaluator = Evaluator(model, (inputs, labels), batch_size=32)
    return model, inputs, labels, layers, PruningState(model, layers), evaluator, stage_of_modules(
        evaluator.stages, [layer.module for layer in layers])


def test_changing_an_earlier_layer_drops_the_cache(staged_evaluation):
    model, inputs, labels, layers, state, evaluator, layer_stage = staged_evaluation
    late = layer_stage[-2]
    assert evaluator.accuracy(keep_stage=late) == 1.0
    assert evaluator.cached_stage == late

    evaluator.mark_changed(late)  # a change inside the cached stage keeps its input valid
    assert evaluator.cached_stage == late
    state.prune_layer(len(layers) - 2, 0.9)
    assert evaluator.accuracy(keep_stage=late) == full_forward_accuracy(model, inputs, labels)

    state.prune_layer(0, 0.95)  # the stem changes: the cached input of `late` is stale
    evaluator.mark_changed(layer_stage[0])
    assert evaluator.cached_stage is None
    # The next evaluation runs the whole network (and caches `late` again).
    assert evaluator.accuracy(keep_stage=late) == full_forward_accuracy(model, inputs, labels)
    assert evaluator.accuracy() < 0.9

    state.restore()  # a reset: the cache goes, accuracy is the dense one again
    evaluator.mark_changed(0)
    assert evaluator.accuracy(keep_stage=late) == 1.0
    assert evaluator.accuracy() == 1.0


def test_a_change_after_the_cached_stage_resumes_from_the_cached_stage(staged_evaluation):
    model, inputs, labels, layers, state, evaluator, layer_stage = staged_evaluation
    stem_calls = []
    evaluator.stages[0].register_forward_hook(lambda *_: stem_calls.append(1))
    assert evaluator.accuracy(keep_stage=1) == 1.0
    # A layer of stage 2 changes; the cache holds the input of stage 1, still valid.
    state.prune_layer(layer_stage.index(2), 0.9)
    evaluator.mark_changed(2)
    assert evaluator.cached_stage == 1
    expected = full_forward_accuracy(model, inputs, labels)
    calls = len(stem_calls)
    for _ in range(2):  # the second call resumes from the cache the first one kept
        assert evaluator.accuracy(keep_stage=2) == expected
        assert evaluator.cached_stage == 2
    assert len(stem_calls) == calls  # never the whole network


def test_keep_stage_past_the_last_stage_is_ignored(calibrated_resnet20_split):
    model, inputs, labels = calibrated_resnet20_split
    evaluator = Evaluator(model, (inputs, labels), batch_size=50)
    count = len(evaluator.stages)
    assert evaluator.accuracy(keep_stage=count) == 1.0
    assert evaluator.cached_stage is None
    assert evaluator.accuracy(keep_stage=count) == 1.0
