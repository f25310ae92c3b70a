"""The allocation registry: each method against a hand-worked example of its paper's definition."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prune_gym.allocation import (
    ALLOCATION_METHODS,
    HEURISTICS,
    allocation_counts,
    allocation_sparsities,
    erk_raw_densities,
    lamp_scores,
)
from prune_gym.pruning import global_magnitude_masks


def test_the_registry_lists_every_method_of_the_field_in_table_order():
    assert list(ALLOCATION_METHODS) == ["global-mp", "global-mp+mt", "lamp", "erk", "uniform", "uniform+", "random"]
    assert [ALLOCATION_METHODS[name].label for name in ALLOCATION_METHODS] == [
        "Global MP", "Global MP + MT", "LAMP", "ERK", "uniform", "uniform+", "random"]
    assert "random" not in HEURISTICS and len(HEURISTICS) == 6


def test_lamp_scores_are_the_square_over_the_sum_of_squares_at_least_as_large():
    # Squares 1, 4, 9, 0.25; sorted 0.25 < 1 < 4 < 9; suffix sums 14.25, 14, 13, 9.
    scores = lamp_scores(torch.tensor([1.0, -2.0, 3.0, 0.5]))
    expected = torch.tensor([1 / 14, 4 / 13, 9 / 9, 0.25 / 14.25], dtype=torch.float64)
    assert torch.allclose(scores, expected)


def test_lamp_prunes_by_one_threshold_on_the_scores_across_layers():
    # Layer A: |w| = 1, 2, 3 (squares 1, 4, 9): scores 1/14, 4/13, 1.
    # Layer B: |w| = 10, 10.5 (squares 100, 110.25): scores 100/210.25 = 0.476, 1.
    # Global MP would remove A's three weights first (smallest magnitudes); LAMP removes the
    # two smallest *scores*: A's 1/14 and A's 4/13 (0.308 < 0.476), then B's 0.476.
    weights = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 10.5])]
    assert allocation_counts("lamp", weights, 0.4) == [2, 0]
    assert allocation_counts("lamp", weights, 0.6) == [2, 1]
    assert allocation_counts("global-mp", weights, 0.6) == [3, 0]


def test_lamp_never_empties_a_layer_since_each_layers_largest_weight_scores_one():
    weights = [torch.randn(100, generator=torch.Generator().manual_seed(0)) * 0.01, torch.randn(50) * 10]
    counts = allocation_counts("lamp", weights, 0.98)
    assert all(count < w.numel() for count, w in zip(counts, weights, strict=True))


def test_erk_densities_follow_the_sum_of_dimensions_over_their_product_and_keep_overflowing_layers_dense():
    assert erk_raw_densities([(4, 2, 3, 3), (10, 4)]) == [12 / 72, 14 / 40]
    # A 2x2 layer (raw 4/4 = 1) and a 10x10 layer (raw 20/100 = 0.2), target 50% of 104 weights
    # (52 kept): eps * (1 * 4 + 0.2 * 100) = 52 gives eps = 2.17 and density 2.17 > 1 for the
    # small layer, so it stays dense and the big one keeps the remaining 48 (density 0.48).
    weights = [torch.randn(2, 2), torch.randn(10, 10)]
    assert allocation_counts("erk", weights, 0.5) == [0, 52]
    # At 90% (10.4 -> 10 kept... round(0.9 * 104) = 94 pruned): eps * 24 = 10 kept, eps = 0.4167:
    # densities 0.4167 (1.67 of 4 weights) and 0.0833 (8.33 of 100) -> counts by largest remainder.
    counts = allocation_counts("erk", weights, 0.9)
    assert sum(counts) == 94 and counts[0] in (2, 3) and counts[1] in (91, 92)


def test_uniform_prunes_every_layer_at_the_target_and_the_total_is_exact():
    weights = [torch.randn(10), torch.randn(30), torch.randn(61)]
    counts = allocation_counts("uniform", weights, 0.5)
    assert sum(counts) == round(0.5 * 101)
    assert counts[:2] == [5, 15] and counts[2] in (30, 31)


def test_uniform_plus_keeps_the_first_layer_dense_and_at_least_20_percent_of_the_last():
    weights = [torch.randn(10), torch.randn(100), torch.randn(100), torch.randn(10)]
    # 80% of 220 = 176 pruned over the 210 weights after the first layer: 83.8% each would leave
    # the last layer 1.6 weights < 2 (20%), so it keeps 2 and the middle layers share 168.
    counts = allocation_counts("uniform+", weights, 0.8)
    assert counts[0] == 0 and counts[3] == 8 and counts[1] + counts[2] == 168 and abs(counts[1] - counts[2]) <= 1
    # At 50%: 110 over 210 = 52.4% each leaves the last layer 4.8 >= 2 weights: one common sparsity.
    counts = allocation_counts("uniform+", weights, 0.5)
    assert counts[0] == 0 and sum(counts) == 110 and counts[3] in (5, 6)
    with pytest.raises(ValueError, match="uniform\\+ cannot reach sparsity 0.97"):
        allocation_counts("uniform+", weights, 0.97)


def test_global_mp_in_the_registry_is_global_mp_and_the_minimum_threshold_is_the_papers():
    generator = torch.Generator().manual_seed(1)
    weights = [torch.randn(5, generator=generator) * 0.01, torch.randn(2000, generator=generator)]
    masks = global_magnitude_masks(weights, 0.9)
    assert allocation_counts("global-mp", weights, 0.9) == [int((~m).sum()) for m in masks]
    # Global MP empties the tiny first layer; with MT (0.05% of 2005 = 1 weight) it keeps one.
    assert allocation_counts("global-mp", weights, 0.9)[0] == 5
    assert allocation_counts("global-mp+mt", weights, 0.9)[0] == 4
    assert allocation_counts("global-mp+mt", weights, 0.9, min_threshold=0.002)[0] == 1  # keeps 4


@pytest.mark.parametrize("name", list(ALLOCATION_METHODS))
@pytest.mark.parametrize("target", [0.0, 0.5, 0.9, 0.95])
def test_every_method_ends_exactly_at_the_target_without_emptying_a_layer(name, target):
    generator = torch.Generator().manual_seed(2)
    weights = [torch.randn(shape, generator=generator) for shape in [(8, 1, 3, 3), (16, 8, 3, 3), (32, 16, 3, 3), (10, 32)]]
    counts = allocation_counts(name, weights, target)
    assert sum(counts) == round(target * sum(w.numel() for w in weights))
    assert all(0 <= count <= w.numel() for count, w in zip(counts, weights, strict=True))
    if name != "global-mp":  # Global MP alone may empty a layer (its Minimum Threshold exists for that)
        assert all(count < w.numel() for count, w in zip(counts, weights, strict=True))
    sparsities = allocation_sparsities(name, weights, target)
    assert np.allclose(sparsities, [c / w.numel() for c, w in zip(counts, weights, strict=True)])


def test_random_is_a_seeded_draw():
    weights = [torch.randn(50), torch.randn(80), torch.randn(30)]
    assert allocation_counts("random", weights, 0.7, seed=3) == allocation_counts("random", weights, 0.7, seed=3)
    assert allocation_counts("random", weights, 0.7, seed=3) != allocation_counts("random", weights, 0.7, seed=4)


def test_bad_input_names_what_to_give():
    weights = [torch.randn(10)]
    with pytest.raises(ValueError, match="unknown allocation method 'magnitude': choose one of global-mp, global-mp\\+mt, lamp"):
        allocation_counts("magnitude", weights, 0.5)
    with pytest.raises(ValueError, match="min_threshold applies to global-mp\\+mt only"):
        allocation_counts("lamp", weights, 0.5, min_threshold=0.001)
    with pytest.raises(ValueError, match="sparsity must be in \\[0, 1\\)"):
        allocation_counts("erk", weights, 1.0)
    with pytest.raises(ValueError, match="NaN or inf"):
        allocation_counts("lamp", [torch.tensor([1.0, math.nan])], 0.5)
