"""An episode's weight budget, built once when the episode's target is set (``PruneEnv`` at
construction and at every reset): the target as a weight count, the layers' sizes, what the
reference allocation prunes in each and the caps. A step asks it three things, each from the
weights pruned so far: the layer's reference sparsity (the relative centre action and an
observation feature), the projection's bounds on what the layer may lose, and the sparsity the
remaining layers still need on average (an observation feature). The target becomes a count
here and nowhere else."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prune_gym.envs.actions import feasible_counts, reference_sparsity

__all__ = ["EpisodeBudget"]


@dataclass(frozen=True)
class EpisodeBudget:
    """The weight budget of one target (see the module docstring)."""

    #: Weights in each layer, in the order the episode visits them.
    numels: tuple[int, ...]
    #: Weights pruned in all at the end of the episode (None: no target).
    target_count: int | None
    #: Weights the reference allocation (Global MP by default) prunes in each layer at the target.
    reference_counts: tuple[int, ...]
    min_sparsity: float
    max_sparsity: float
    #: Relative actions: every later layer keeps within exp(+-relative_range) of the reference's
    #: share (``actions.spread_bounds``); None (absolute actions): the caps and the target only.
    relative_range: float | None

    @classmethod
    def build(cls, numels: Sequence[int], target: float | None, reference_sparsities: Sequence[float],
              min_sparsity: float, max_sparsity: float, relative_range: float | None) -> EpisodeBudget:
        numels = tuple(int(n) for n in numels)
        return cls(
            numels=numels,
            target_count=None if target is None else round(target * sum(numels)),
            reference_counts=tuple(round(s * n) for s, n in zip(reference_sparsities, numels, strict=True)),
            min_sparsity=min_sparsity, max_sparsity=max_sparsity, relative_range=relative_range,
        )

    def reference(self, index: int, pruned: int) -> float:
        """Layer ``index``'s reference sparsity with ``pruned`` weights pruned before it: the
        reference's own where the earlier layers followed it, else the keep budget they left
        spread over the remaining layers (``actions.reference_sparsity``)."""
        return reference_sparsity(index, self.numels, self.reference_counts, pruned, self.target_count)

    def bounds(self, index: int, pruned: int) -> tuple[int, int]:
        """How many weights layer ``index`` may lose, ``(low, high)``: within its caps, the target
        still reachable exactly by the layers after it, and with relative actions the spread
        (``actions.feasible_counts``)."""
        spread = None if self.relative_range is None else (self.reference_counts, self.relative_range)
        return feasible_counts(index, self.numels, pruned, self.target_count, self.min_sparsity, self.max_sparsity,
                               spread)

    def left(self, index: int, pruned: int) -> float:
        """The sparsity layers ``index`` onwards need on average to reach the target (0 with no
        target, or after the last layer)."""
        remaining = sum(self.numels[index:])
        if self.target_count is None or not remaining:
            return 0.0
        return (self.target_count - pruned) / remaining
