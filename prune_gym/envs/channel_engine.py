"""The engine under the channel-pruning env: :class:`PruningEngine` with channel groups as its
units. A step removes a group's least important channels (masks that stand in for removing them,
checked against the smaller network at construction); re-calibration, evaluation from the
changed stage, rollback and reset are the weight engine's."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from torch import nn

from prune_gym.channels import (
    ChannelCost,
    ChannelMasks,
    check_masks_match_slim,
    find_channel_groups,
)
from prune_gym.envs.engine import PruningEngine, _example_input
from prune_gym.envs.settings import EngineConfig
from prune_gym.evaluation import DataLike, stage_of_modules

__all__ = ["ChannelEngine"]

#: Reward-split samples the construction-time check of masks against the smaller network runs on.
CHECK_SAMPLES = 8


class ChannelEngine(PruningEngine):
    """A trained network, its channel groups and the splits it is evaluated on.

    Takes :class:`PruningEngine`'s arguments (no per-step fine-tuning); ``exclude_layers`` keeps
    the output channels of the matching layers. ``groups``, ``importance`` (per channel),
    ``masks`` (``channels.ChannelMasks``) and ``cost`` (``channels.ChannelCost``) are public.
    """

    def __init__(self, model: nn.Module, reward_data: DataLike, test_data: DataLike | None,
                 train_data: DataLike | None, config: EngineConfig, *, stages: Sequence[nn.Module] | None = None) -> None:
        # Every Conv / Linear stays a layer of the base engine (the accounting counts them all);
        # the excluded ones keep their output channels here.
        super().__init__(model, reward_data, test_data, train_data, replace(config, exclude_layers=()), stages=stages)
        self.config = config
        example = _example_input(reward_data, config.device)
        self.groups, self.importance = find_channel_groups(model, example, config.exclude_layers)
        probe = self.evaluator.batches[0][0][:CHECK_SAMPLES] if self.evaluator.batches else example
        check_masks_match_slim(model, self.groups, self.importance, probe, example)
        self.masks = ChannelMasks(model, self.groups, self.importance)
        self.cost = ChannelCost(model, self.groups, self.layers, example)
        stages = self.evaluator.stages
        self.unit_stage = [
            min(stage_of_modules(stages, [model.get_submodule(name) for name in group.modules("out")]))
            for group in self.groups
        ] if stages else [0] * len(self.groups)

    def _build_state(self, model: nn.Module) -> None:
        return None  # no weight masks: ChannelMasks keeps the copies it restores from

    def _mask_unit(self, index: int, count: int) -> None:
        self.masks.set_removed(index, count)

    def _unit_mask(self, index: int) -> int:
        return self.masks.removed[index]

    def _put_unit_mask(self, index: int, count: int) -> None:
        self.masks.set_removed(index, count)

    def _all_masks(self) -> list[int]:
        return list(self.masks.removed)

    def _put_all_masks(self, counts: list[int]) -> None:
        self.masks.removed = list(counts)

    def _restore_units(self) -> None:
        self.masks.restore()
