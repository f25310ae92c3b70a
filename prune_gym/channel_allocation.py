"""Channel allocation rules: how many channels each group loses at a FLOPs (or parameter)
target, with no search and no training (the zero-cost baselines of the channel envs).

- ``global-norm``: Torch-Pruning's global pruning with magnitude importance: every channel of
  every group ranked by its group-normalised L2 norm, the least important removed first until
  the target is met.
- ``lamp``: the same ranking by LAMP scores at group level (Lee et al. 2021: a channel's squared
  norm over the sum of the squared norms of the channels of its group not below it).
- ``uniform``: one share of channels removed from every group.
- ``random``: random shares per group, scaled together until the target is met (seeded).

Each returns removed-channel counts, one per group, each one its group allows (within its cap,
keeping a multiple of the env's ``channel_multiple``), whose reduction is the smallest the rule
reaches at or above the target (exact accounting: ``channels.ChannelCost``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from torch import Tensor

from prune_gym.allocation import AllocationMethod
from prune_gym.channels import ChannelCost
from prune_gym.errors import ConfigError

__all__ = ["CHANNEL_METHODS", "channel_allocation", "lamp_scores"]


def lamp_scores(importance: Tensor) -> np.ndarray:
    """LAMP scores of one group's channels from their importance (scale-free within the group)."""
    squared = importance.double().numpy() ** 2
    order = np.argsort(squared, kind="stable")
    tail = np.cumsum(squared[order][::-1])[::-1]  # sum over the channels not below each one
    scores = np.empty_like(squared)
    scores[order] = squared[order] / np.maximum(tail, 1e-300)
    return scores


def _smallest_meeting(counts_at: Callable[[int], np.ndarray], steps: int, cost: ChannelCost, budget: str,
                      target: float) -> np.ndarray:
    """The counts of the first step in ``0..steps`` (counts grow with the step) whose reduction
    reaches ``target``; the last step's when none does."""
    low, high = 0, steps
    while low < high:
        middle = (low + high) // 2
        if cost.reduction(budget, counts_at(middle)) >= target:
            high = middle
        else:
            low = middle + 1
    return counts_at(low)


def _snap(counts: np.ndarray, allowed: Sequence[np.ndarray]) -> np.ndarray:
    """Each group's count raised to the nearest count it allows (removing at least as many), at
    most its largest."""
    return np.array([options[min(np.searchsorted(options, count), len(options) - 1)]
                     for count, options in zip(counts, allowed, strict=True)], dtype=np.int64)


def _global(scores: Sequence[np.ndarray], allowed: Sequence[np.ndarray], cost: ChannelCost, budget: str,
            target: float) -> np.ndarray:
    """Remove the channels of lowest score across all groups (each group within its cap)."""
    ordered = [np.sort(s) for s in scores]
    thresholds = np.unique(np.concatenate(ordered))

    def counts_at(step: int) -> np.ndarray:
        if step == 0:
            return np.zeros(len(scores), dtype=np.int64)
        below = np.array([np.searchsorted(s, thresholds[step - 1], side="right") for s in ordered])
        return _snap(below, allowed)

    return _smallest_meeting(counts_at, len(thresholds), cost, budget, target)


def _scaled(shares: np.ndarray, allowed: Sequence[np.ndarray], cost: ChannelCost, budget: str, target: float,
            steps: int = 4096) -> np.ndarray:
    """Remove ``scale * shares[g]`` of each group's channels, the smallest scale that meets the target.

    The scale first rises until the largest share's group would lose all its channels; when the
    target is not met by then (unequal shares, a target near what the caps allow), it rises on
    until the smallest share's group would too, every group then at its cap."""

    def path(top: float) -> Callable[[int], np.ndarray]:
        def counts_at(step: int) -> np.ndarray:
            return _snap(np.floor(step / steps * top * shares * cost.channels + 0.5).astype(np.int64), allowed)
        return counts_at

    counts = _smallest_meeting(path(1.0 / max(float(shares.max()), 1e-12)), steps, cost, budget, target)
    if cost.reduction(budget, counts) >= target:
        return counts
    return _smallest_meeting(path(1.0 / max(float(shares.min()), 1e-12)), steps, cost, budget, target)


def _global_norm(importance, cost, allowed, budget, target, seed):
    return _global([s.double().numpy() for s in importance], allowed, cost, budget, target)


def _lamp(importance, cost, allowed, budget, target, seed):
    return _global([lamp_scores(s) for s in importance], allowed, cost, budget, target)


def _uniform(importance, cost, allowed, budget, target, seed):
    return _scaled(np.ones(len(allowed)), allowed, cost, budget, target)


def _random(importance, cost, allowed, budget, target, seed):
    return _scaled(np.random.default_rng(seed).uniform(0.0, 1.0, len(allowed)), allowed, cost, budget, target)


#: The channel allocation rules by name, in table order (the channel envs' registry; the weight
#: envs' is ``prune_gym.allocation.ALLOCATION_METHODS``).
CHANNEL_METHODS: dict[str, AllocationMethod] = {
    method.name: method
    for method in (
        AllocationMethod("global-norm", "global L2 norm",
                         "every channel ranked by its group-normalised L2 norm (Torch-Pruning's global pruning)",
                         _global_norm),
        AllocationMethod("lamp", "LAMP", "one threshold on LAMP scores of the channels' group norms (Lee et al. 2021)",
                         _lamp),
        AllocationMethod("uniform", "uniform", "one share of channels removed from every group", _uniform),
        AllocationMethod("random", "random", "seeded random shares per group, scaled to the target (a control)",
                         _random, heuristic=False),
    )
}


def channel_allocation(method: str, importance: Sequence[Tensor], cost: ChannelCost,
                       allowed: Sequence[Sequence[int]], budget: str, target: float, seed: int = 0) -> list[int]:
    """Removed-channel counts per group of ``method`` at ``target`` (see the module docstring),
    each one of the counts its group allows (``allowed[g]``, ascending: up to the group's cap,
    and with ``channel_multiple`` only those that keep a multiple of it)."""
    if method not in CHANNEL_METHODS:
        raise ConfigError(f"unknown channel allocation {method!r}: choose one of {', '.join(CHANNEL_METHODS)}")
    allowed = [np.asarray(options, dtype=np.int64) for options in allowed]
    counts = CHANNEL_METHODS[method].counts(importance, cost, allowed, budget, target, seed)
    return [int(c) for c in counts]
