"""Allocation methods: how many weights each layer loses at an overall target sparsity.

One registry (:data:`ALLOCATION_METHODS`) of the zero-cost layer-wise sparsity rules of the
field, each a *score* (what ranks weights, within or across layers) and an *allocation* (the
per-layer counts that follow), the seam Torch-Pruning draws between ``Importance`` and the
pruner. Every method returns per-layer counts of weights to remove that sum to exactly
``round(target * N)``; within a layer the smallest magnitudes go (ties by flat index, as in
:mod:`prune_gym.pruning`), so an allocation is all a method needs to hand the env, a policy or
``export``.

- ``global-mp``: Global Magnitude Pruning, one magnitude threshold for all layers (Gupta et al.
  2022; ``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured``).
- ``global-mp+mt``: the same with the Minimum Threshold of the official code (every layer keeps
  at least ``min_threshold`` of all weights, 0.05% by default; ``prune_withMT.py``).
- ``lamp``: LAMP (Lee et al., ICLR 2021). Within each layer, sort the squared weights
  ascending; a weight's score is its square over the sum of the squares at least as large in
  the same layer (ties counted in sorted order, as the authors' code does). One global
  threshold on the scores. Every layer's largest weight scores 1, so no layer is emptied.
- ``erk``: Erdos-Renyi-Kernel (Evci et al., RigL 2020): a layer's density is proportional to
  (sum of its weight's dimensions) / (their product); layers whose density would exceed 1 stay
  dense and the rest are rescaled until the densities meet the target.
- ``uniform``: every layer at the target sparsity.
- ``uniform+``: Gale et al. 2019 as the LAMP paper uses it: the first layer stays dense, the
  last layer keeps at least 20% of its weights, every other layer at one common sparsity.
- ``random``: a seeded random allocation (each layer's density proportional to a uniform draw,
  capped at 1 and rescaled as for ERK): a control, not a rule.

Pure functions of the dense weights (torch tensors) and the target; nothing here knows the env.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from prune_gym.errors import ConfigError
from prune_gym.pruning import (
    DEFAULT_MIN_THRESHOLD,
    check_finite,
    check_sparsity,
    global_magnitude_masks,
    sparsities_to_counts,
)
from prune_gym.selection import remove_smallest_in_parts

__all__ = [
    "ALLOCATION_METHODS",
    "AllocationMethod",
    "HEURISTICS",
    "UNIFORM_PLUS_LAST_LAYER_KEEP",
    "allocation_counts",
    "allocation_method",
    "allocation_sparsities",
    "erk_raw_densities",
    "lamp_scores",
]

#: uniform+ keeps at least this fraction of the last layer (the LAMP authors' code).
UNIFORM_PLUS_LAST_LAYER_KEEP = 0.2


@dataclass(frozen=True)
class AllocationMethod:
    """One allocation rule: its name (CLI and files), its label (tables, plots) and the
    function that gives the pruned count of each layer (here: of the dense weights, the target,
    the Minimum Threshold and a seed; a channel rule's, ``prune_gym.channel_allocation``: of the
    channel importance, the cost model, the caps, the budget, the target and a seed)."""

    name: str
    label: str
    description: str
    counts: Callable[..., list[int]]
    #: A rule a researcher would compare against (False for the random control).
    heuristic: bool = True


def lamp_scores(weight: Tensor) -> Tensor:
    """LAMP scores of one layer, flat: ``w_i^2 / sum_{j >= i} w_j^2`` over the squares sorted
    ascending (equal squares are ordered by flat index, so the score never depends on the sort)."""
    squares = weight.detach().flatten().double() ** 2
    order = torch.argsort(squares, stable=True)
    ascending = squares[order]
    # Sum of the squares at least as large: the total minus what comes before in sorted order.
    suffix = torch.flip(torch.cumsum(torch.flip(ascending, [0]), 0), [0])
    scores = torch.empty_like(squares)
    scores[order] = torch.where(suffix > 0, ascending / suffix.clamp_min(1e-300), torch.zeros_like(ascending))
    return scores


def erk_raw_densities(shapes: Sequence[Sequence[int]]) -> list[float]:
    """ERK's unnormalised density of each layer: (sum of the weight's dimensions) / (their
    product); for a conv ``(out, in, kh, kw)`` that is ``(out + in + kh + kw) / (out*in*kh*kw)``."""
    return [sum(shape) / math.prod(shape) for shape in shapes]


def _counts_from_masks(masks: Sequence[Tensor]) -> list[int]:
    return [m.numel() - int(m.sum()) for m in masks]


def _global_mp_counts(weights: Sequence[Tensor], sparsity: float, min_threshold: float | None, seed: int) -> list[int]:
    return _counts_from_masks(global_magnitude_masks(weights, sparsity))


def _global_mp_mt_counts(weights: Sequence[Tensor], sparsity: float, min_threshold: float | None, seed: int) -> list[int]:
    threshold = DEFAULT_MIN_THRESHOLD if min_threshold is None else min_threshold
    return _counts_from_masks(global_magnitude_masks(weights, sparsity, threshold or None))


def _lamp_counts(weights: Sequence[Tensor], sparsity: float, min_threshold: float | None, seed: int) -> list[int]:
    total = sum(w.numel() for w in weights)
    keeps = remove_smallest_in_parts([lamp_scores(w).float() for w in weights], round(sparsity * total))
    return _counts_from_masks(keeps)


def _scaled_densities(numels: Sequence[int], raw: Sequence[float], sparsity: float) -> list[float]:
    """Densities ``eps * raw`` (capped at 1) whose weighted sum keeps ``(1 - sparsity) * N``
    weights: layers that would exceed density 1 are kept dense and the rest rescaled (RigL's
    loop, the LAMP authors' ``_compute_erks``)."""
    total = sum(numels)
    keep_total = (1.0 - sparsity) * total
    dense = [False] * len(numels)
    while True:
        budget = keep_total - sum(n for n, d in zip(numels, dense) if d)
        mass = sum(r * n for r, n, d in zip(raw, numels, dense) if not d)
        if mass <= 0:
            return [1.0 if d else 0.0 for d in dense]
        epsilon = budget / mass
        over = [i for i, (r, d) in enumerate(zip(raw, dense)) if not d and epsilon * r > 1.0]
        if not over:
            return [1.0 if d else epsilon * r for r, d in zip(raw, dense)]
        for i in over:
            dense[i] = True


def _density_counts(numels: Sequence[int], densities: Sequence[float], sparsity: float) -> list[int]:
    # Every layer keeps at least one weight (no empty layers); the counts are exact overall.
    return sparsities_to_counts(numels, [1.0 - d for d in densities], sparsity, keep_at_least=[1] * len(numels))


def _erk_counts(weights: Sequence[Tensor], sparsity: float, min_threshold: float | None, seed: int) -> list[int]:
    numels = [w.numel() for w in weights]
    densities = _scaled_densities(numels, erk_raw_densities([tuple(w.shape) for w in weights]), sparsity)
    return _density_counts(numels, densities, sparsity)


def _random_counts(weights: Sequence[Tensor], sparsity: float, min_threshold: float | None, seed: int) -> list[int]:
    numels = [w.numel() for w in weights]
    raw = np.random.default_rng(seed).uniform(0.0, 1.0, len(numels)).tolist()
    return _density_counts(numels, _scaled_densities(numels, raw, sparsity), sparsity)


def _uniform_counts(weights: Sequence[Tensor], sparsity: float, min_threshold: float | None, seed: int) -> list[int]:
    numels = [w.numel() for w in weights]
    return sparsities_to_counts(numels, [sparsity] * len(numels), sparsity)


def _uniform_plus_counts(weights: Sequence[Tensor], sparsity: float, min_threshold: float | None, seed: int) -> list[int]:
    numels = [w.numel() for w in weights]
    if len(numels) < 3:
        return _uniform_counts(weights, sparsity, min_threshold, seed)
    to_prune = round(sparsity * sum(numels))
    last_keep = round(UNIFORM_PLUS_LAST_LAYER_KEEP * numels[-1])
    middle = sum(numels[1:])
    fraction = to_prune / middle  # the first layer is dense: the others share the target
    if fraction > 1.0 or (numels[-1] - last_keep) + sum(numels[1:-1]) < to_prune:
        raise ConfigError(
            f"uniform+ cannot reach sparsity {sparsity}: with the first layer dense and the last keeping "
            f"{UNIFORM_PLUS_LAST_LAYER_KEEP:.0%}, at most {((numels[-1] - last_keep) + sum(numels[1:-1])) / sum(numels):.4f} "
            "is possible; lower the target or use another method"
        )
    sparsities = [0.0] + [fraction] * (len(numels) - 1)
    if round((1.0 - fraction) * numels[-1]) < last_keep:
        last_pruned = numels[-1] - last_keep
        middle_fraction = (to_prune - last_pruned) / sum(numels[1:-1])
        sparsities = [0.0] + [middle_fraction] * (len(numels) - 2) + [last_pruned / numels[-1]]
    keep_at_least = [numels[0]] + [0] * (len(numels) - 2) + [last_keep]
    return sparsities_to_counts(numels, sparsities, sparsity, keep_at_least=keep_at_least)


#: Every allocation method by name, in table order.
ALLOCATION_METHODS: dict[str, AllocationMethod] = {
    method.name: method
    for method in (
        AllocationMethod("global-mp", "Global MP", "one magnitude threshold for all layers", _global_mp_counts),
        AllocationMethod("global-mp+mt", "Global MP + MT",
                         "Global MP, every layer keeping at least the Minimum Threshold (0.05% of all weights)",
                         _global_mp_mt_counts),
        AllocationMethod("lamp", "LAMP", "one threshold on layer-adaptive magnitude scores (Lee et al. 2021)",
                         _lamp_counts),
        AllocationMethod("erk", "ERK", "densities proportional to (sum of dims) / (product of dims) (Evci et al. 2020)",
                         _erk_counts),
        AllocationMethod("uniform", "uniform", "every layer at the target", _uniform_counts),
        AllocationMethod("uniform+", "uniform+", "first layer dense, last keeps >= 20%, the rest uniform (Gale et al. 2019)",
                         _uniform_plus_counts),
        AllocationMethod("random", "random", "seeded random densities (a control)", _random_counts, heuristic=False),
    )
}

#: The zero-cost rules a learned allocation is measured against (every method but the control).
HEURISTICS = tuple(name for name, method in ALLOCATION_METHODS.items() if method.heuristic)


def allocation_method(name: str) -> AllocationMethod:
    """The method called ``name``, or ValueError listing the names."""
    try:
        return ALLOCATION_METHODS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown allocation method {name!r}: choose one of {', '.join(ALLOCATION_METHODS)}") from None


def allocation_counts(
    name: str, weights: Sequence[Tensor], sparsity: float, *, min_threshold: float | None = None, seed: int = 0
) -> list[int]:
    """Weights each layer loses under method ``name`` at overall ``sparsity`` (they sum to
    exactly ``round(sparsity * N)``).

    Args:
        name: a key of :data:`ALLOCATION_METHODS`.
        weights: the dense weights of the prunable layers, in forward order.
        sparsity: the overall target in [0, 1).
        min_threshold: the Minimum Threshold of ``global-mp+mt`` (None: the paper's 0.05%).
        seed: the draw of ``random``.

    Raises:
        ValueError: for an unknown method, a sparsity outside [0, 1), NaN/inf weights, or a
            target the method cannot reach (the message says the highest reachable one).
    """
    method = allocation_method(name)
    sparsity = check_sparsity(sparsity)
    if not weights:
        raise ConfigError("an allocation needs at least one weight tensor")
    for index, weight in enumerate(weights):
        check_finite(weight, f"#{index}")
    if min_threshold is not None and name != "global-mp+mt":
        raise ConfigError(f"min_threshold applies to global-mp+mt only, not to {name!r}")
    return method.counts(weights, sparsity, min_threshold, int(seed))


def allocation_sparsities(
    name: str, weights: Sequence[Tensor], sparsity: float, *, min_threshold: float | None = None, seed: int = 0
) -> list[float]:
    """Per-layer sparsities of :func:`allocation_counts` (count / weights in the layer)."""
    counts = allocation_counts(name, weights, sparsity, min_threshold=min_threshold, seed=seed)
    return [count / w.numel() for count, w in zip(counts, weights, strict=True)]


class AllocationCache:
    """The allocations of one dense model, each computed once per (method, target, Minimum
    Threshold, seed) with the seconds the first computation took (a rule's cost in a comparison)."""

    def __init__(self, weights: Sequence[Tensor]) -> None:
        self.weights = weights
        self._cache: dict[tuple[str, float, float | None, int], tuple[list[float], float]] = {}

    def get(self, method: str, target: float, min_threshold: float | None = None,
            seed: int = 0) -> tuple[list[float], float]:
        """``(per-layer sparsities, seconds)`` of ``method`` at ``target`` (:func:`allocation_sparsities`)."""
        key = (method, float(target), min_threshold, int(seed))
        if key not in self._cache:
            started = time.perf_counter()
            sparsities = allocation_sparsities(method, self.weights, float(target), min_threshold=min_threshold,
                                               seed=seed)
            self._cache[key] = (sparsities, time.perf_counter() - started)
        return self._cache[key]
