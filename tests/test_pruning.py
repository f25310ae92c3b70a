"""Tests of the pruning engine: discovery, masks, Global MP (+ Minimum Threshold), state, accounting."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.utils import prune as torch_prune

from prune_gym.accounting import accounting, flops_removed, layer_flops
from prune_gym.pruning import (
    DEFAULT_MIN_THRESHOLD,
    PruningState,
    check_sparsity,
    find_prunable_layers,
    global_magnitude_masks,
    global_magnitude_sparsities,
    keep_top_mask,
    magnitude_mask,
    mask_sparsity,
    minimum_keep,
    random_masks,
    uniform_magnitude_masks,
)


def removed(mask: torch.Tensor) -> int:
    return mask.numel() - int(mask.sum())


def total_removed(masks) -> int:
    return sum(removed(m) for m in masks)


def assert_removes_smallest_with_index_ties(weight: torch.Tensor, mask: torch.Tensor) -> None:
    """Every kept weight is at least as large as every removed one, and at the threshold
    magnitude every removed weight has a lower flat index than every kept one."""
    scores = weight.abs().flatten()
    keep = mask.flatten()
    if keep.all() or not keep.any():
        return
    largest_removed = scores[~keep].max()
    assert scores[keep].min() >= largest_removed
    at_threshold = torch.nonzero(scores == largest_removed).flatten()
    kept_at_threshold = at_threshold[keep[at_threshold]]
    removed_at_threshold = at_threshold[~keep[at_threshold]]
    if len(kept_at_threshold):
        assert removed_at_threshold.max() < kept_at_threshold.min()


# --------------------------------------------------------------------------------------------
# Discovery


class RegisteredOutOfOrder(nn.Module):
    """Registers head, unused, body but calls body then head: forward order differs."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 3)
        self.unused = nn.Linear(3, 3)
        self.body = nn.Conv2d(2, 8, 3, bias=True)
        self.norm = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.body(x)).mean((2, 3)))


def test_registration_order_without_example_input():
    names = [layer.name for layer in find_prunable_layers(RegisteredOutOfOrder())]
    assert names == ["head", "unused", "body"]


def test_forward_order_with_example_input_and_uncalled_layers_last():
    model = RegisteredOutOfOrder()
    layers = find_prunable_layers(model, example_input=torch.randn(2, 2, 6, 6))
    assert [layer.name for layer in layers] == ["body", "head", "unused"]
    assert layers[0].module is model.body
    assert layers[0].weight is model.body.weight


def test_discovery_forward_pass_leaves_train_mode_batchnorm_untouched():
    model = RegisteredOutOfOrder().train()
    model.norm.running_mean.fill_(0.25)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    find_prunable_layers(model, example_input=torch.randn(1, 2, 3, 3))  # batch of one: fine
    assert model.training and model.norm.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_torchvision_resnet18_layers_are_every_conv_and_linear_weight_never_bias_or_norm():
    model = torchvision.models.resnet18()
    layers = find_prunable_layers(model, example_input=torch.randn(1, 3, 32, 32))
    expected = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert len(layers) == 21
    assert {id(layer.weight) for layer in layers} == {id(w) for w in expected}
    assert layers[0].name == "conv1" and layers[-1].name == "fc"
    bias_and_norm = {id(p) for n, p in model.named_parameters() if not n.endswith("weight")}
    bias_and_norm |= {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    assert not bias_and_norm & {id(layer.weight) for layer in layers}
    assert all(isinstance(layer.module, nn.Conv2d | nn.Linear) for layer in layers)


def test_exclusion_by_name_pattern_and_type():
    model = torchvision.models.resnet18()
    names = [layer.name for layer in find_prunable_layers(model, exclude_names=["layer4.*", "fc"])]
    assert "fc" not in names and not any(n.startswith("layer4.") for n in names)
    assert "layer3.1.conv2" in names and len(names) == 21 - 1 - 5
    no_linear = find_prunable_layers(model, exclude_types=[nn.Linear])
    assert [layer.name for layer in no_linear if isinstance(layer.module, nn.Linear)] == []
    assert len(no_linear) == 20


def test_excluding_everything_or_no_prunable_layer_is_a_clear_error():
    with pytest.raises(ValueError, match="no prunable layer"):
        find_prunable_layers(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)))
    with pytest.raises(ValueError, match="exclude fewer"):
        find_prunable_layers(nn.Sequential(nn.Linear(2, 2)), exclude_names=["*"])
    with pytest.raises(ValueError, match="no prunable layer"):
        PruningState(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)))


def test_layer_kinds_conv_depthwise_linear():
    model = nn.Sequential(
        nn.Conv2d(4, 4, 3, groups=4),  # depthwise
        nn.Conv2d(4, 8, 3, groups=2),  # grouped, not depthwise
        nn.Conv1d(6, 6, 3, groups=6),  # depthwise 1-d
        nn.Conv1d(6, 6, 1),
        nn.Linear(3, 3),
    )
    assert [layer.kind for layer in find_prunable_layers(model)] == [
        "depthwise", "conv", "depthwise", "conv", "linear",
    ]
    mobilenet = find_prunable_layers(torchvision.models.mobilenet_v2())
    kinds = [layer.kind for layer in mobilenet]
    assert kinds.count("depthwise") == 17 and kinds.count("linear") == 1
    assert kinds[1] == "depthwise" and mobilenet[1].name == "features.1.conv.0.0"


# --------------------------------------------------------------------------------------------
# Per-layer magnitude masks


def test_magnitude_mask_exact_counts_property():
    generator = torch.Generator().manual_seed(0)
    shapes = [(1,), (2,), (3,), (7,), (10,), (64,), (1000,), (3, 5, 7), (8, 4, 3, 3)]
    sparsities = [0.0, 0.1, 0.25, 0.5, 0.5001, 0.9, 0.99, 0.999]
    sparsities += torch.rand(10, generator=generator).mul(0.999).tolist()
    for shape in shapes:
        for duplicates in (False, True):
            weight = torch.randn(shape, generator=generator)
            if duplicates:  # many exact ties in magnitude, with both signs
                weight = torch.randint(-3, 4, shape, generator=generator).float()
            for sparsity in sparsities:
                mask = magnitude_mask(weight, sparsity)
                assert mask.dtype == torch.bool and mask.shape == weight.shape
                assert removed(mask) == round(sparsity * weight.numel()), (shape, sparsity)
                assert_removes_smallest_with_index_ties(weight, mask)


def test_magnitude_mask_ties_remove_lowest_indices_first_deterministically():
    weight = torch.full((4, 5), 0.5)
    weight[1::2] *= -1  # equal magnitude, both signs
    for sparsity in (0.1, 0.35, 0.5, 0.95):
        count = round(sparsity * 20)
        mask = magnitude_mask(weight, sparsity)
        expected = torch.ones(20, dtype=torch.bool)
        expected[:count] = False
        assert torch.equal(mask.flatten(), expected)
        assert all(torch.equal(magnitude_mask(weight, sparsity), mask) for _ in range(3))
    # Smaller weights go first; ties at the threshold by index.
    weight = torch.tensor([3.0, -1.0, 2.0, 1.0, 0.5, -1.0, 1.0])
    assert magnitude_mask(weight, 3 / 7).tolist() == [True, False, True, False, False, True, True]


def test_keep_top_mask_keeps_exactly_the_largest():
    weight = torch.tensor([0.1, -5.0, 2.0, 2.0, -2.0, 0.0])
    assert keep_top_mask(weight, 2).tolist() == [False, True, False, False, True, False]
    assert int(keep_top_mask(weight, 0).sum()) == 0 and keep_top_mask(weight, 6).all()


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), float("inf"), "half", None])
def test_sparsity_outside_unit_interval_is_rejected(bad):
    with pytest.raises(ValueError, match=r"sparsity must be"):
        check_sparsity(bad)
    with pytest.raises(ValueError, match=r"sparsity must be"):
        magnitude_mask(torch.randn(10), bad)
    with pytest.raises(ValueError, match=r"sparsity must be"):
        global_magnitude_masks([torch.randn(10)], bad)


def test_non_finite_weights_are_rejected():
    weight = torch.randn(10)
    weight[3] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        magnitude_mask(weight, 0.5)
    with pytest.raises(ValueError, match=r"'#1' has NaN or inf"):
        global_magnitude_masks([torch.randn(4), torch.tensor([1.0, float("inf")])], 0.5)
    with pytest.raises(ValueError, match="at least one weight"):
        global_magnitude_masks([], 0.5)


# --------------------------------------------------------------------------------------------
# Global magnitude pruning


def torch_global_l1_masks(layers, sparsity: float) -> list[torch.Tensor]:
    """Masks of torch.nn.utils.prune.global_unstructured(L1Unstructured); weights left unchanged."""
    dense = [layer.weight.detach().clone() for layer in layers]
    parameters = [(layer.module, "weight") for layer in layers]
    torch_prune.global_unstructured(parameters, pruning_method=torch_prune.L1Unstructured, amount=sparsity)
    masks = [layer.module.weight_mask.bool().clone() for layer in layers]
    for layer, weight in zip(layers, dense, strict=True):
        torch_prune.remove(layer.module, "weight")
        with torch.no_grad():
            layer.module.weight.copy_(weight)
    return masks


def assert_equals_torch_global_l1(model: nn.Module, sparsities) -> None:
    layers = find_prunable_layers(model)
    weights = [layer.weight for layer in layers]
    total = sum(w.numel() for w in weights)
    for sparsity in sparsities:
        ours = global_magnitude_masks(weights, sparsity)
        assert total_removed(ours) == round(sparsity * total)
        reference = torch_global_l1_masks(layers, sparsity)
        for layer, mine, theirs in zip(layers, ours, reference, strict=True):
            assert torch.equal(mine, theirs), (layer.name, sparsity)


@pytest.mark.slow
def test_global_equals_torch_global_unstructured_on_resnet50():
    torch.manual_seed(0)
    assert_equals_torch_global_l1(torchvision.models.resnet50(), [0.5, 0.9])


def test_global_equals_torch_global_unstructured_on_mobilenet_v2():
    torch.manual_seed(1)
    assert_equals_torch_global_l1(torchvision.models.mobilenet_v2(), [0.5, 0.95])


def test_global_is_one_threshold_with_exact_count_and_index_ties_across_layers():
    generator = torch.Generator().manual_seed(2)
    for _ in range(20):
        weights = [
            torch.randint(-4, 5, (int(n),), generator=generator).float()
            for n in torch.randint(1, 40, (4,), generator=generator)
        ]
        sparsity = float(torch.rand((), generator=generator)) * 0.99
        masks = global_magnitude_masks(weights, sparsity)
        assert total_removed(masks) == round(sparsity * sum(w.numel() for w in weights))
        assert_removes_smallest_with_index_ties(torch.cat(weights), torch.cat(masks))
    # Ties across layers: earlier layers (lower flat index) lose theirs first.
    masks = global_magnitude_masks([torch.ones(10), torch.ones(10)], 0.3)
    assert removed(masks[0]) == 6 and removed(masks[1]) == 0
    assert masks[0].tolist() == [False] * 6 + [True] * 4


def test_global_magnitude_sparsities_match_masks():
    weights = [torch.randn(50) * scale for scale in (0.1, 1.0, 10.0)]
    sparsities = global_magnitude_sparsities(weights, 0.6)
    masks = global_magnitude_masks(weights, 0.6)
    assert sparsities == [mask_sparsity(m) for m in masks]
    assert sparsities[0] > sparsities[1] > sparsities[2]


# --------------------------------------------------------------------------------------------
# Minimum Threshold


def check_minimum_threshold(weights, sparsity: float, min_threshold: float) -> list[torch.Tensor]:
    masks = global_magnitude_masks(weights, sparsity, min_threshold)
    total = sum(w.numel() for w in weights)
    floor = int(min_threshold * total)  # the official code rounds the minimum down
    assert floor == minimum_keep(weights, min_threshold)
    assert total_removed(masks) == round(sparsity * total)
    for weight, mask in zip(weights, masks, strict=True):
        assert int(mask.sum()) >= min(floor, weight.numel())
        if weight.numel() <= floor:
            assert mask.all()  # layers no larger than the minimum are not pruned
        assert_removes_smallest_with_index_ties(weight, mask)  # within a layer: magnitude order
    # Layers above their floor keep Global MP's proportions: their counts are one common multiple
    # of their Global MP counts, up to the rounding to whole weights.
    plain = [removed(m) for m in global_magnitude_masks(weights, sparsity)]
    free = [(removed(m), count) for w, m, count in zip(weights, masks, plain, strict=True)
            if int(m.sum()) > min(floor, w.numel()) and w.numel() > floor and count > 0]
    if free:
        scale = sum(c for c, _ in free) / sum(g for _, g in free)
        for count, global_count in free:
            assert abs(count - scale * global_count) <= 1.0 + 1e-6 * global_count
    return masks


def test_minimum_threshold_follows_the_official_procedure_on_a_hand_worked_example():
    """prune_withMT.py, step 2, by hand: N = 2000, minimum int(0.01 * 2000) = 20 weights,
    Global MP sparsities [0.5, 0.9, 0.8, 0.6] for layers of [10, 100, 890, 1000] weights, target 0.7.
    Layer 0 (10 <= 20 weights) stays dense; the rest are rescaled to the target; layer 1 would keep
    fewer than 20, so it keeps exactly 20 (sparsity 0.8); rescaling and clamping repeat, which
    converges to layers 2 and 3 sharing the remaining 1400 - 80 = 1320 pruned weights in proportion
    to their Global MP counts (712 and 600): 0.8 * 1320 / 1312 and 0.6 * 1320 / 1312."""
    from prune_gym.pruning import minimum_threshold_sparsities, sparsities_to_counts

    numels, gmp = [10, 100, 890, 1000], [0.5, 0.9, 0.8, 0.6]
    got = minimum_threshold_sparsities(numels, gmp, 0.7, minimum=20)
    expected = [0.0, 0.8, 0.8 * 1320 / 1312, 0.6 * 1320 / 1312]
    assert got == pytest.approx(expected, abs=1e-9)
    # Integer counts: floors 0, 80, 716, 603 (1399); the one missing weight goes to the largest
    # remainder (layer 3: 603.66), so exactly round(0.7 * 2000) = 1400 are removed.
    assert sparsities_to_counts(numels, got, 0.7, keep_at_least=[10, 20, 20, 20]) == [0, 80, 716, 604]


def test_minimum_threshold_caps_small_magnitude_layer_and_spares_tiny_layer():
    generator = torch.Generator().manual_seed(3)
    weights = [
        torch.randn(1000, generator=generator) * 0.01,  # plain global would empty it
        torch.randn(10_000, generator=generator),
        torch.randn(5, generator=generator) * 0.001,  # smaller than the minimum
    ]
    plain = global_magnitude_masks(weights, 0.5)
    assert int(plain[0].sum()) == 0 and int(plain[2].sum()) == 0
    masks = check_minimum_threshold(weights, 0.5, 0.01)
    floor = int(0.01 * 11_005)
    assert int(masks[0].sum()) == floor
    assert torch.equal(masks[0], keep_top_mask(weights[0], floor))
    assert masks[2].all()
    assert removed(masks[1]) == round(0.5 * 11_005) - (1000 - floor)


def test_minimum_threshold_property_over_random_networks():
    generator = torch.Generator().manual_seed(4)
    checked = 0
    for _ in range(40):
        sizes = torch.randint(1, 400, (int(torch.randint(2, 7, (1,), generator=generator)),), generator=generator)
        weights = [torch.randn(int(n), generator=generator) * float(torch.rand((), generator=generator) * 5 + 0.01)
                   for n in sizes]
        sparsity = float(torch.rand((), generator=generator)) * 0.99
        min_threshold = float(torch.rand((), generator=generator)) * 0.2
        total = sum(w.numel() for w in weights)
        floor = int(min_threshold * total)
        if sum(min(floor, w.numel()) for w in weights) > total - round(sparsity * total):
            with pytest.raises(ValueError, match="unreachable"):
                global_magnitude_masks(weights, sparsity, min_threshold)
            continue
        check_minimum_threshold(weights, sparsity, min_threshold)
        checked += 1
    assert checked >= 15


def test_minimum_threshold_default_on_mobilenet_v2_at_high_sparsity():
    torch.manual_seed(5)
    weights = [layer.weight for layer in find_prunable_layers(torchvision.models.mobilenet_v2())]
    masks = check_minimum_threshold(weights, 0.95, DEFAULT_MIN_THRESHOLD)
    floor = minimum_keep(weights, DEFAULT_MIN_THRESHOLD)
    # The stem and the depthwise layers are smaller than the minimum: kept whole.
    assert masks[0].all() and weights[0].numel() < floor
    assert any(int(m.sum()) == floor for m in masks)  # some layer was capped at the minimum


def test_unreachable_target_names_the_reachable_sparsity():
    weights = [torch.randn(100), torch.randn(100), torch.randn(100)]
    # Every layer keeps int(0.2 * 300) = 60 weights: at most 1 - 180/300 = 0.4 sparsity.
    with pytest.raises(ValueError, match=r"unreachable.*at most 0\.4000 sparsity"):
        global_magnitude_masks(weights, 0.5, 0.2)
    masks = global_magnitude_masks(weights, 0.4, 0.2)
    assert [int(m.sum()) for m in masks] == [60, 60, 60]


def test_minimum_threshold_zero_or_none_is_plain_global():
    weights = [torch.randn(30) * 0.01, torch.randn(70)]
    plain = global_magnitude_masks(weights, 0.7)
    for off in (None, 0, 0.0):
        assert all(torch.equal(a, b) for a, b in zip(global_magnitude_masks(weights, 0.7, off), plain, strict=True))


@pytest.mark.parametrize("bad", [-0.01, 1.0, float("nan")])
def test_bad_min_threshold_is_rejected(bad):
    with pytest.raises(ValueError, match="min_threshold"):
        global_magnitude_masks([torch.randn(10)], 0.5, bad)


# --------------------------------------------------------------------------------------------
# Baselines


def test_uniform_masks_prune_every_layer_to_the_same_exact_sparsity():
    weights = [torch.randn(n) for n in (1, 7, 33, 100)]
    masks = uniform_magnitude_masks(weights, 0.4)
    assert [removed(m) for m in masks] == [round(0.4 * n) for n in (1, 7, 33, 100)]
    assert all(torch.equal(m, magnitude_mask(w, 0.4)) for m, w in zip(masks, weights, strict=True))


def test_random_masks_exact_counts_and_seeded_determinism():
    weights = [torch.randn(n) for n in (5, 64, 1000)]
    first = random_masks(weights, 0.7, torch.Generator().manual_seed(11))
    again = random_masks(weights, 0.7, torch.Generator().manual_seed(11))
    other = random_masks(weights, 0.7, torch.Generator().manual_seed(12))
    assert [removed(m) for m in first] == [round(0.7 * n) for n in (5, 64, 1000)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[2], other[2])
    assert not torch.equal(first[2], magnitude_mask(weights[2], 0.7))  # ignores magnitude
    with pytest.raises(ValueError, match="sparsity"):
        random_masks(weights, 1.0)


# --------------------------------------------------------------------------------------------
# PruningState


def small_net() -> nn.Module:
    torch.manual_seed(6)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=True), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )


def test_prune_layer_is_in_place_from_dense_and_exact():
    model = small_net()
    state = PruningState(model)
    weight = model[0].weight
    pointer, dense = weight.data_ptr(), weight.detach().clone()
    mask = state.prune_layer(0, 0.9)
    assert weight.data_ptr() == pointer and model[0].weight is weight
    assert removed(mask) == round(0.9 * 216) and torch.equal(state.masks[0], mask)
    assert torch.equal(weight.detach(), dense * mask)
    state.prune_layer(0, 0.1)  # starts again from the dense weights
    assert int((weight == 0).sum()) == round(0.1 * 216)
    assert torch.equal(weight.detach(), dense * magnitude_mask(dense, 0.1))
    assert model[0].bias.grad is None and torch.equal(state.dense[0], dense)
    assert state.sparsities()[0] == pytest.approx(round(0.1 * 216) / 216)
    assert state.sparsities()[1:] == [0.0, 0.0]


def test_set_mask_in_place_and_accounting_of_state():
    model = small_net()
    state = PruningState(model)
    pointers = [layer.weight.data_ptr() for layer in state.layers]
    masks = global_magnitude_masks(state.dense, 0.75)
    state.set_masks(masks)
    assert [layer.weight.data_ptr() for layer in state.layers] == pointers
    for layer, dense, mask in zip(state.layers, state.dense, masks, strict=True):
        assert torch.equal(layer.weight.detach(), dense * mask)
    assert state.pruned_count() == round(0.75 * state.total)
    assert state.overall_sparsity() == round(0.75 * state.total) / state.total
    assert state.numels == [216, 72, 40]


def test_restore_is_bit_exact_for_weights_and_whole_state_dict():
    model = small_net()
    with torch.no_grad():  # non-trivial BN buffers and biases
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = PruningState(model)
    pointers = [layer.weight.data_ptr() for layer in state.layers]
    for sparsity in (0.5, 0.95):
        state.set_masks(global_magnitude_masks(state.dense, sparsity))
        state.prune_layer(1, 0.3)
        assert not torch.equal(model[0].weight, before["0.weight"])
        state.restore()
        for layer, dense in zip(state.layers, state.dense, strict=True):
            assert torch.equal(layer.weight, dense)
        after = model.state_dict()
        assert after.keys() == before.keys()
        for key in before:
            assert torch.equal(after[key], before[key]), key
        assert [layer.weight.data_ptr() for layer in state.layers] == pointers
        assert state.sparsities() == [0.0, 0.0, 0.0] and state.pruned_count() == 0


def test_restore_does_not_touch_masks_the_caller_holds():
    state = PruningState(small_net())
    masks = global_magnitude_masks(state.dense, 0.8)
    kept = [int(m.sum()) for m in masks]
    state.set_masks(masks)
    state.restore()
    assert [int(m.sum()) for m in masks] == kept  # e.g. a cached Global MP result stays valid
    state.set_masks(masks)
    assert state.pruned_count() == round(0.8 * state.total)


def test_wrong_shape_mask_is_rejected_and_nothing_changes():
    model = small_net()
    state = PruningState(model)
    before = [layer.weight.detach().clone() for layer in state.layers]
    with pytest.raises(ValueError, match=r"mask for layer '3' has shape \(8, 1, 3\)"):
        state.set_mask(1, torch.ones(8, 1, 3, dtype=torch.bool))
    good = global_magnitude_masks(state.dense, 0.5)
    bad = [good[0], good[1], torch.ones(5, 7, dtype=torch.bool)]
    with pytest.raises(ValueError, match=r"mask for layer '8'"):
        state.set_masks(bad)  # the first two are valid: still nothing may change
    with pytest.raises(ValueError, match="expected 3 masks"):
        state.set_masks(good[:2])
    with pytest.raises(ValueError, match="must be a tensor"):
        state.set_mask(0, [[True]])
    for layer, weight in zip(state.layers, before, strict=True):
        assert torch.equal(layer.weight, weight)
    assert state.pruned_count() == 0


def test_nan_weight_is_rejected_naming_the_layer():
    model = small_net()
    with torch.no_grad():
        model[3].weight[0, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"layer '3' has NaN or inf"):
        PruningState(model)


# --------------------------------------------------------------------------------------------
# FLOPs and accounting


class ConvLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, bias=True)  # 9x9 -> 4x4
        self.fc = nn.Linear(64, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_layer_flops_of_conv_and_linear_by_hand():
    model = ConvLinear()
    layers = find_prunable_layers(model)
    batch = 3
    conv_macs = 4 * 4 * 4 * (3 * 3 * 3)  # out channels x out positions x (in x kernel)
    fc_macs = 64 * 5
    flops = layer_flops(model, torch.randn(batch, 3, 9, 9), layers)
    assert flops == [2 * batch * conv_macs, 2 * batch * fc_macs]


def test_layer_flops_counts_a_module_called_twice_twice():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = nn.Linear(6, 6)
            self.out = nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.cell(torch.tanh(self.cell(x))))

    model = Twice()
    assert layer_flops(model, torch.randn(4, 6), find_prunable_layers(model)) == [2 * 2 * 4 * 36, 2 * 4 * 12]


def test_layer_flops_of_train_mode_model_with_one_sample_leaves_it_unchanged():
    model = torchvision.models.mobilenet_v2().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layers = find_prunable_layers(model)
    flops = layer_flops(model, torch.randn(1, 3, 32, 32), layers)
    assert len(flops) == len(layers) and all(f > 0 for f in flops)
    assert flops[0] == 2 * 32 * 16 * 16 * 27  # stem: 3x3 stride-2 conv, 3 -> 32 channels
    assert model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_accounting_after_a_known_mask():
    model = ConvLinear()
    layers = find_prunable_layers(model)
    flops = layer_flops(model, torch.randn(1, 3, 9, 9), layers)
    conv_mask = torch.ones(4, 3, 3, 3, dtype=torch.bool)
    conv_mask.view(-1)[:27] = False  # 27 of 108 removed: density 0.75
    fc_mask = torch.ones(5, 64, dtype=torch.bool)
    fc_mask.view(-1)[:240] = False  # 240 of 320 removed: density 0.25

    dense = accounting(model, layers, [torch.ones_like(conv_mask), torch.ones_like(fc_mask)], flops)
    assert (dense.total_params, dense.prunable_params, dense.remaining_params) == (108 + 4 + 320 + 5, 428, 437)
    assert dense.dense_flops == dense.remaining_flops == 2 * (1728 + 320)
    assert dense.param_sparsity == 0.0 and dense.flops_reduction == 0.0

    pruned = accounting(model, layers, [conv_mask, fc_mask], flops)
    assert pruned.total_params == 437 and pruned.prunable_params == 428
    assert pruned.remaining_params == 437 - 27 - 240
    assert pruned.dense_flops == 4096
    assert pruned.remaining_flops == 2 * 1728 * 3 // 4 + 2 * 320 // 4  # 2592 + 160
    assert pruned.param_sparsity == pytest.approx(267 / 428)
    assert pruned.flops_reduction == pytest.approx(1 - 2752 / 4096)
    # The env's running figure: the same share from per-layer sparsities (None: not pruned yet).
    assert flops_removed(flops, [0.25, 0.75]) == pytest.approx(pruned.flops_reduction)
    assert flops_removed(flops, [None, 0.75]) == pytest.approx(2 * 320 * 0.75 / 4096)


@pytest.mark.parametrize("path", ["part_by_part", "concatenated"])
@pytest.mark.parametrize("kind", ["uniform", "ties", "zeros", "heavy-tailed"])
def test_bracketed_selection_equals_one_kthvalue_over_everything(kind, path):
    """Global MP's threshold comes from a sampled bracket and a kthvalue over the values inside
    it; the masks must equal the plain selection over the concatenation, ties (broken by index
    in concatenated order) included, for every count. Both paths (the CPU's part by part, the
    GPU's concatenated) are checked here on the CPU; tests/test_cuda.py checks them on a GPU."""
    from prune_gym import selection
    from prune_gym.selection import remove_smallest

    select = getattr(selection, f"remove_smallest_{path}")

    generator = torch.Generator().manual_seed(7)
    for trial in range(40):
        parts = []
        for _ in range(int(torch.randint(1, 6, (1,), generator=generator))):
            n = int(torch.randint(1, 5000, (1,), generator=generator))
            values = {
                "uniform": lambda n: torch.rand(n, generator=generator),
                "ties": lambda n: torch.randint(0, 4, (n,), generator=generator).float(),
                "zeros": lambda n: torch.zeros(n),
                "heavy-tailed": lambda n: torch.randn(n, generator=generator).abs() ** 6,
            }[kind](n)
            parts.append(values)
        total = sum(part.numel() for part in parts)
        for count in (0, 1, total // 3, total // 2, total - 1, total, int(torch.randint(0, total + 1, (1,), generator=generator))):
            expected = remove_smallest(torch.cat(parts), count)
            got = torch.cat(select(parts, count))
            assert torch.equal(got, expected), (trial, count)
            assert int((~got).sum()) == count


@pytest.mark.parametrize("path", ["part_by_part", "concatenated"])
def test_bracketed_selection_from_a_strided_sample_is_exact(path):
    """Past 65,536 scores the bracket comes from a strided sample (here every 6th score): still
    the plain selection's masks, with heavy ties at the threshold."""
    from prune_gym import selection

    generator = torch.Generator().manual_seed(3)
    sizes = (1728, 147_456, 9, 250_000, 36_864)
    parts = [torch.randint(0, 2000, (n,), generator=generator).float() / 2000 for n in sizes]
    total = sum(sizes)
    for count in (1, total // 10, total // 2, round(0.9 * total), total - 1):
        expected = selection.remove_smallest(torch.cat(parts), count)
        got = getattr(selection, f"remove_smallest_{path}")(parts, count)
        assert [m.numel() for m in got] == list(sizes)
        assert torch.equal(torch.cat(got), expected), count


def test_non_finite_weights_are_refused_wherever_they_are():
    from prune_gym.pruning import global_magnitude_masks

    for bad in (float("nan"), float("inf"), -float("inf")):
        weights = [torch.randn(10, 10), torch.randn(50)]
        weights[1][17] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            global_magnitude_masks(weights, 0.5)
    huge = [torch.full((4,), 3e38), torch.randn(8)]  # a finite sum overflows; the weights are finite
    assert sum(int((~m).sum()) for m in global_magnitude_masks(huge, 0.5)) == 6
