"""The architectures: output shapes, published parameter counts, prunable layers, stages."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prune_gym.pruning import find_prunable_layers
from prune_gym.tasks import TASKS
from prune_gym.tasks.models import MobileNetV1, WideResNet, mobilenet_v1, resnet32, wrn28x8


@pytest.fixture(scope="module")
def task_models() -> dict[str, nn.Module]:
    """Every registered task's architecture, built once (seeded) for the whole module."""
    return {name: task.synthetic_model(seed=0) for name, task in TASKS.items()}


@pytest.fixture(scope="module")
def wrn(task_models) -> nn.Module:
    return task_models["wrn28x8-cifar10"]


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


#: The tasks of the CIFAR-10 and ImageNet families, whose architectures this module covers.
IMAGE_TASKS = [name for name, task in TASKS.items() if task.family in ("cifar10", "imagenet")]


def example_input(task) -> torch.Tensor:
    """A batch of 2 at the native size, or at 32x32 for ImageNet models (CPU-friendly)."""
    shape = (3, 32, 32) if task.family == "imagenet" else task.input_shape
    return torch.randn((2, *shape), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def reference_logits(task_models) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``(input, forward(input))`` of every image task's model, computed once."""
    results = {}
    for name in IMAGE_TASKS:
        x = example_input(TASKS[name])
        with torch.inference_mode():
            results[name] = (x, task_models[name](x))
    return results


@pytest.mark.parametrize(
    ("task_name", "published", "tolerance"),
    [
        ("resnet32-cifar10", 0.46e6, 0.02),  # He et al. 2016, table 6
        ("wrn28x8-cifar10", 23.4e6, 0.01),  # Zagoruyko & Komodakis 2016
        ("mobilenetv1-cifar10", 3.2e6, 0.02),  # Howard et al. 2017 (CIFAR head: 10 classes)
        ("resnet50-imagenet", 25.557e6, 0.001),  # torchvision
        ("mobilenetv2-imagenet", 3.505e6, 0.001),  # torchvision
    ],
)
def test_parameter_counts_match_published_values(task_models, task_name, published, tolerance):
    count = parameter_count(task_models[task_name])
    assert abs(count - published) / published < tolerance, f"{task_name}: {count:,} parameters"


def test_every_registered_task_declares_its_prunable_layer_count(task_models):
    for name, task in TASKS.items():
        layers = find_prunable_layers(task_models[name])
        assert task.num_prunable_layers == len(layers), name


def test_the_image_families_are_all_covered():
    assert set(IMAGE_TASKS) == {
        "resnet32-cifar10",
        "wrn28x8-cifar10",
        "mobilenetv1-cifar10",
        "resnet50-imagenet",
        "mobilenetv2-imagenet",
    }


@pytest.mark.parametrize("task_name", IMAGE_TASKS)
def test_registration_order_is_forward_order(task_models, task_name):
    # The env prunes in find_prunable_layers order without an example input; it must be the
    # order in which forward calls the layers.
    model, task = task_models[task_name], TASKS[task_name]
    registered = [layer.name for layer in find_prunable_layers(model)]
    called = [layer.name for layer in find_prunable_layers(model, example_input=example_input(task))]
    assert registered == called


@pytest.mark.parametrize("task_name", IMAGE_TASKS)
def test_forward_gives_one_logit_per_class_for_a_tiny_batch(reference_logits, task_name):
    _, logits = reference_logits[task_name]
    assert logits.shape == (2, TASKS[task_name].num_classes)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("task_name", IMAGE_TASKS)
def test_composing_the_stages_equals_forward(task_models, reference_logits, task_name):
    # Every architecture of the two families supports the evaluator's activation cache: its
    # task supplies the stages.
    stages = TASKS[task_name].model_stages(task_models[task_name])
    assert stages is not None
    x, expected = reference_logits[task_name]
    with torch.inference_mode():
        for stage in stages:
            x = stage(x)
    assert torch.equal(x, expected)


@pytest.mark.parametrize("task_name", ["resnet32-cifar10", "wrn28x8-cifar10", "mobilenetv1-cifar10"])
def test_stages_leave_their_input_untouched(task_models, task_name):
    # The evaluator caches a stage's input and reuses it: no stage may modify it in place.
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        for stage in task_models[task_name].stages():
            before = x.clone()
            out = stage(x)
            assert torch.equal(x, before)
            x = out


def test_wrn28x8_structure(wrn):
    assert isinstance(wrn, WideResNet) and TASKS["wrn28x8-cifar10"].builder is wrn28x8
    assert len(wrn.blocks) == 12  # (28 - 4) / 6 = 4 blocks in each of 3 groups
    widths = [block.conv2.out_channels for block in wrn.blocks]
    assert widths == [128] * 4 + [256] * 4 + [512] * 4
    shortcuts = [i for i, block in enumerate(wrn.blocks) if block.shortcut is not None]
    assert shortcuts == [0, 4, 8]  # 1x1 convs only where the shape changes
    assert [block.conv1.stride[0] for block in wrn.blocks[::4]] == [1, 2, 2]


def test_wide_resnet_generic_depth_and_width():
    model = WideResNet(depth=16, widen_factor=2, num_classes=7).eval()
    assert len(model.blocks) == 6
    with torch.inference_mode():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    with pytest.raises(ValueError, match="6n \\+ 4"):
        WideResNet(depth=27)


def test_wrn_dropout_is_off_by_default_and_optional():
    assert not any(isinstance(m, nn.Dropout) for m in WideResNet(depth=10, widen_factor=1).modules())
    assert any(isinstance(m, nn.Dropout) for m in WideResNet(depth=10, widen_factor=1, dropout=0.3).modules())


def test_mobilenet_v1_depthwise_layers_are_reported_as_depthwise(task_models):
    layers = find_prunable_layers(task_models["mobilenetv1-cifar10"])
    kinds = [layer.kind for layer in layers]
    assert kinds == ["conv"] + ["depthwise", "conv"] * 13 + ["linear"]
    assert all(layer.module.kernel_size == (3, 3) for layer in layers if layer.kind == "depthwise")


def test_mobilenet_v1_downsamples_32x32_to_2x2(task_models):
    model = task_models["mobilenetv1-cifar10"]
    assert isinstance(model, MobileNetV1) and TASKS["mobilenetv1-cifar10"].builder is mobilenet_v1
    strides = [block.depthwise.stride[0] for block in model.blocks]
    assert strides == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    with torch.inference_mode():
        features = model.blocks(model.stem(torch.randn(1, 3, 32, 32)))
    assert features.shape == (1, 1024, 2, 2)


def test_mobilenet_v1_width_multiplier_scales_every_layer(task_models):
    half = MobileNetV1(width_multiplier=0.5)
    assert half.stem[0].out_channels == 16
    assert half.blocks[-1].pointwise.out_channels == 512
    # Pointwise convs dominate, and their size goes with the square of the width.
    assert 0.2 < parameter_count(half) / parameter_count(task_models["mobilenetv1-cifar10"]) < 0.35
    with pytest.raises(ValueError, match="width_multiplier"):
        MobileNetV1(width_multiplier=0)


def test_resnet32_has_three_stages_of_five_blocks():
    model = resnet32()
    assert len(model.blocks) == 15
