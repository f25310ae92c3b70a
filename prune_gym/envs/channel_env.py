"""ChannelPruneEnv: remove a trained network's channels group by group, to a FLOPs (or
parameter) budget, paid a reward at every step; the pruned network exports physically smaller."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from prune_gym.channel_allocation import CHANNEL_METHODS, channel_allocation
from prune_gym.channels import allowed_counts, check_multiple, is_depthwise
from prune_gym.envs.actions import DEFAULT_RELATIVE_RANGE, ActionMap
from prune_gym.envs.channel_engine import ChannelEngine
from prune_gym.envs.render import render_channels_ansi
from prune_gym.envs.rewards import (
    RewardContext,
    RewardFunction,
    checked_reward,
    get_reward,
    reward_label,
)
from prune_gym.envs.settings import (
    EngineView,
    check_data_settings,
    check_settings,
    check_step,
    engine_config,
    episode_end_info,
    reset_target,
    test_at_episode_end,
)
from prune_gym.errors import ConfigError
from prune_gym.evaluation import DataLike
from prune_gym.latency import LatencyTable, resolve_latency_table
from prune_gym.pruning import check_sparsity
from prune_gym.tasks import get_task

__all__ = ["BUDGETS", "CHANNEL_FEATURES", "FEATURE_INDEX", "ChannelPruneEnv"]

BUDGETS = ("flops", "params", "latency")

#: The observation, one name per entry (the docstring lists them with their meaning).
CHANNEL_FEATURES = (
    "position", "is_residual", "has_depthwise", "log_channels", "channel_share", "flops_share", "param_share",
    "kernel_size", "stride", "importance_spread", "reference_sparsity", "flops_reduction_so_far",
    "param_reduction_so_far", "budget_left", "accuracy_ratio", "previous_sparsity", "target_sparsity",
)
#: Each feature's position in the observation (the reference policies read the target and the reference).
FEATURE_INDEX = {name: index for index, name in enumerate(CHANNEL_FEATURES)}


class ChannelPruneEnv(EngineView, gym.Env):
    """Remove a trained network's channels one group at a time, in forward order.

    ## Description

    A *group* is what must lose channels together (``prune_gym.channels``): a layer's output
    channels, the BatchNorm after it and the next layers' inputs, and across residual additions
    every layer writing to the same sum (Torch-Pruning's dependency graph). Each step the agent
    sees the next group and chooses the share of its channels to remove; the least important go
    (group L2 norm, Torch-Pruning's ``GroupMagnitudeImportance``), the network is evaluated on the
    reward split and a reward is paid at once (PuRL's per-step reward). Every finished episode
    meets the budget: ``target_sparsity`` of the network's FLOPs (AMC's constraint), parameters,
    or predicted latency (HAQ's per-layer latency table measured on the machine at hand,
    ``prune_gym.latency``) removed.

    Within an episode removed channels are masked (their producing weights, bias and BatchNorm
    scale and shift zeroed, so they carry exactly 0): at construction the env checks on the
    model that masking gives the outputs of the network with the channels removed, and refuses
    a model where it does not. ``prune_gym.channel_export`` writes the physically smaller
    network, which scores what the env reported.

    ## Action Space

    The share of the group's channels removed, in ``[0, max_sparsity]`` (default 0.8; a group
    always keeps a channel), as in ``PruneEnv``: ``action_mode="relative"`` (default) steps in
    logit space around the *reference* allocation's share for the group (``reference``, a rule of
    ``prune_gym.channel_allocation``: ``"global-norm"`` by default), ``Discrete(n_actions)``
    (default 11, the centre action takes the reference) or ``Box(-1, 1, (1,))``;
    ``action_mode="absolute"``: the share itself (levels, or the interval mapped onto [-1, 1]).
    The request is projected onto what keeps the budget reachable without overshooting it: at
    least what the remaining groups at their caps leave needed, at most what would meet the
    budget with the remaining groups untouched. Every episode ends within one channel above the
    target. A rule that passes the target by its own step (uniform removes one share everywhere)
    is trimmed in its last groups by the same projection, as any policy is.

    ## Observation Space

    ``Box(0, high, (17,), float32)``, ``CHANNEL_FEATURES`` in order; every entry in [0, 1] except
    ``accuracy_ratio`` in [0, 2]:

    - 0. ``position``: group index / (groups - 1)
    - 1. ``is_residual``: 1 if several layers write the group's channels (a residual sum)
    - 2. ``has_depthwise``: 1 if a depthwise convolution is in the group
    - 3. ``log_channels``: log(channels) / log(the largest group's channels)
    - 4. ``channel_share``: the group's channels / all groups' channels
    - 5. ``flops_share``: FLOPs the group's layers cost (outputs and inputs) / all FLOPs
    - 6. ``param_share``: parameters of the group's layers / all parameters
    - 7. ``kernel_size``: the largest kernel area among the group's producing layers / the largest overall
    - 8. ``stride``: 1 if a producing layer downsamples
    - 9. ``importance_spread``: std / mean of the group's channel importance (clipped to 1)
    - 10. ``reference_sparsity``: the reference allocation's share for the group (the relative centre)
    - 11. ``flops_reduction_so_far``, 12. ``param_reduction_so_far``: removed so far
    - 13. ``budget_left``: the reduction still needed / what the remaining groups at their caps can give
    - 14. ``accuracy_ratio``: reward-split accuracy now / dense
    - 15. ``previous_sparsity``: the share removed from the previous group
    - 16. ``target_sparsity``: the episode's target (the share of the budget removed)

    ## Rewards

    As ``PruneEnv``'s (``prune_gym.envs.rewards``), with the budgeted reduction (FLOPs,
    parameters or predicted latency) as the sparsity ``S``: ``"purl"`` (default) pays ``Delta(a/a_0) + beta * Delta S``
    per step, so the return ranks episodes by final reward-split accuracy at the budget.

    ## Episode End

    After the last group; the last step's ``info`` holds the per-group shares and removed
    channel counts, and the test accuracy (``evaluate_test``). ``reset()`` restores the dense
    network bit for bit; ``options={"target_sparsity": t}`` changes the target for later episodes.

    ## Arguments

    ``task`` or ``model`` / ``reward_data`` / ``test_data`` / ``train_data``, ``device``, ``amp``,
    ``channels_last``, ``batch_size``, ``cache_activations``, ``compile``, ``data_dir``,
    ``weights``, ``split_seed``, ``synthetic``, ``input_shape``, ``synthetic_samples``,
    ``bn_recalibration_batches``, ``evaluate_test``: as ``PruneEnv``'s (the model you pass is
    copied, never changed). ``target_sparsity`` (default 0.5) and ``budget`` (``"flops"``,
    ``"params"`` or ``"latency"``): the share of FLOPs, parameters or predicted latency every
    episode removes. ``latency_table`` (``budget="latency"`` only): a ``LatencyTable`` or its JSON
    file; by default the table of this model, input and machine in the cache, measured at
    construction if there is none (batch 1, the env's device; ``prune_gym.latency``). ``exclude_layers``:
    name patterns of layers whose output channels stay; groups whose channels a mask cannot remove
    exactly (they reach a LayerNorm, an attention layer or a bare parameter) stay too, with a
    warning naming them. ``action_type``, ``action_mode``,
    ``n_actions``, ``relative_range``, ``reference``, ``max_sparsity``: the action space.
    ``reward``, ``sparsity_weight``: the reward and its ``beta``. ``channel_multiple`` (default 1):
    every group that loses channels keeps a multiple of this many (Torch-Pruning's ``round_to``);
    the actions and the rules snap to those counts. CPU convolution kernels work on blocks of
    channels: onnxruntime runs a convolution with its fast blocked kernels only when its output
    channels (and its input channels, unless fewer than one block) are multiples of the CPU's
    vector width, 16 floats with AVX-512 and 8 with AVX2. It ran the digits model pruned to 50% of
    its FLOPs with counts such as 9 and 27 at 0.65x the dense speed, and with
    ``channel_multiple=16`` (on an AVX-512 CPU) at 1.53x (batch 1) and 1.72x (batch 256); such coarse
    counts cost one-shot accuracy that 10 epochs of fine-tuning the smaller network won back
    (``benchmarks/results/compare_channels_digits_m16_ft10.md``).

    ## Version History

    - v1: initial release (2026-12-04); ``budget="latency"`` added 2026-12-05 (the defaults unchanged);
      later that day: a model's groups a mask cannot remove keep their channels instead of refusing the
      model, and masks of groups sharing a BatchNorm (DenseNet) no longer undo each other (the
      registered tasks have neither: their episodes are unchanged); the random and uniform rules meet
      targets near what the caps allow, which the random rule could miss (where they met the
      target before, their allocations are unchanged).
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}
    #: The allocation rules that apply here (the reference policies and the search read it).
    allocation_methods = CHANNEL_METHODS
    #: Where each feature sits in the observation.
    feature_index = FEATURE_INDEX
    #: Every group may keep all its channels.
    min_sparsity = 0.0

    def __init__(
        self, task: str | None = None, *, model: nn.Module | None = None, reward_data: DataLike | None = None,
        test_data: DataLike | None = None, train_data: DataLike | None = None, target_sparsity: float = 0.5,
        budget: str = "flops", action_type: str = "discrete", action_mode: str = "relative",
        n_actions: int | None = None, relative_range: float = DEFAULT_RELATIVE_RANGE, reference: str = "global-norm",
        max_sparsity: float = 0.8, channel_multiple: int = 1, reward: str | RewardFunction = "purl",
        sparsity_weight: float = 1.0, latency_table: str | Path | LatencyTable | None = None,
        device: str | torch.device = "auto", amp: bool | None = None, channels_last: bool = True,
        batch_size: int = 1024, cache_activations: bool = True, compile: bool | str = "auto",
        data_dir: str | None = None, weights: str | None = None, split_seed: int = 0, synthetic: bool = False,
        input_shape: Sequence[int] | None = None, synthetic_samples: int = 64, exclude_layers: Sequence[str] = (),
        bn_recalibration_batches: int | None = None, evaluate_test: bool | None = True, render_mode: str | None = None,
    ) -> None:
        super().__init__()
        # Validate everything cheap before loading anything, then load, then build.
        if budget not in BUDGETS:
            raise ConfigError(f"budget must be one of {BUDGETS} (what target counts), got {budget!r}")
        if latency_table is not None and budget != "latency":
            raise ConfigError("latency_table is read only with budget='latency'")
        if reference not in CHANNEL_METHODS:
            raise ConfigError(f"reference must be a channel allocation rule, one of {', '.join(CHANNEL_METHODS)}, "
                              f"got {reference!r}")
        self.max_sparsity = check_sparsity(max_sparsity, "max_sparsity")
        self.channel_multiple = check_multiple(channel_multiple)
        self.actions = ActionMap(action_type, action_mode, n_actions, 0.0, self.max_sparsity, relative_range)
        self.target_sparsity = self._check_target(target_sparsity)
        self.budget, self.reference = budget, reference
        self.task = get_task(task) if task is not None else None
        check_settings(sparsity_weight, render_mode, self.metadata["render_modes"])
        check_data_settings(evaluate_test, synthetic, synthetic_samples, split_seed, input_shape, weights)
        #: The engine's settings, resolved (the task's defaults, the device, compile="auto").
        self.config = engine_config(
            self.task, device=device, amp=amp, compile=compile, batch_size=batch_size, channels_last=channels_last,
            cache_activations=cache_activations, exclude_layers=exclude_layers,
            bn_recalibration_batches=bn_recalibration_batches, split_seed=split_seed)
        self.reward_fn, self.reward_name = get_reward(reward), reward_label(reward)
        self.render_mode, self.action_type, self.action_mode = render_mode, action_type, action_mode
        self.sparsity_weight, self.synthetic = float(sparsity_weight), bool(synthetic)
        self._build_engine(ChannelEngine, model, reward_data, test_data, train_data, data_dir=data_dir, weights=weights,
                           split_seed=split_seed, synthetic=synthetic, input_shape=input_shape,
                           synthetic_samples=synthetic_samples)
        self.latency_table_path = None
        if budget == "latency":
            table, self.latency_table_path = resolve_latency_table(
                latency_table, self.model, self.engine.layers, self.engine.evaluator.sample_shape, self.device,
                channels_last and self.device.type == "cuda")
            self.engine.cost.use_latency_table(table)
        self._set_up_groups(evaluate_test)

    # ------------------------------------------------------------------------------------------
    # Construction helpers

    def _set_up_groups(self, evaluate_test: bool | None) -> None:
        """What the engine's groups give the env: their channels, the counts each allows and its cap,
        the static features, the spaces, and the dense network's reward-split accuracy."""
        self.groups, self.cost, self.evaluator = self.engine.groups, self.engine.cost, self.engine.evaluator
        self.num_groups = self.num_layers = len(self.groups)  # num_layers: the units a step prunes, as PruneEnv's
        self.channels = [group.channels for group in self.groups]
        #: The removed-channel counts each group allows, ascending: 0, and every count up to the
        #: cap (max_sparsity) that keeps a multiple of channel_multiple channels.
        self.allowed = [allowed_counts(c, self.max_sparsity, self.channel_multiple) for c in self.channels]
        self.caps = [int(options[-1]) for options in self.allowed]
        self._check_reachable(self.target_sparsity)
        self.evaluate_test_at_end = test_at_episode_end(self.engine, evaluate_test)
        self._static = self._static_features()
        # Per (method, target, seed): the counts and the seconds computing them took.
        self._allocations: dict[tuple[str, float, int], tuple[list[int], float]] = {}
        self.levels = self.actions.levels
        self._dense_architecture: nn.Module | None = None
        self.action_space = self.actions.space()
        high = np.ones(len(CHANNEL_FEATURES), dtype=np.float32)
        high[CHANNEL_FEATURES.index("accuracy_ratio")] = 2.0
        self.observation_space = spaces.Box(np.zeros_like(high), high, dtype=np.float32)
        self.dense_reward_accuracy = self.evaluator.accuracy()
        self._t: int | None = None
        self._reset_episode_state()

    def _check_target(self, target: float) -> float:
        target = check_sparsity(target, "target_sparsity")
        if target <= 0:
            raise ConfigError(f"target_sparsity must be above 0 (the share of the budget removed), got {target}")
        return target

    def _check_reachable(self, target: float) -> None:
        most = self.cost.reduction(self.budget, self.caps)
        if most < target:
            raise ConfigError(
                f"target_sparsity {target} is beyond what max_sparsity={self.max_sparsity} allows: removing the most channels "
                f"each group may lose cuts {most:.3f} of the {self.budget}; lower the target or raise max_sparsity"
            )

    def _static_features(self) -> np.ndarray:
        groups, cost = self.groups, self.cost
        channels = np.array(self.channels, dtype=np.float64)
        one_each = np.eye(self.num_groups)
        # What removing every channel of a group alone would cut: the FLOPs and parameters it touches.
        flops = np.array([1 - cost.flops(row * channels) / cost.dense_flops for row in one_each])
        params = np.array([1 - cost.params(row * channels) / cost.total_params for row in one_each])
        kernels, strides, residual, depthwise = [], [], [], []
        for group in groups:
            producers = [self.model.get_submodule(name) for name in group.modules("out")]
            convs = [m for m in producers if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d)]
            kernels.append(max((math.prod(m.kernel_size) for m in convs), default=1))
            strides.append(float(any(max(m.stride) > 1 for m in convs)))
            residual.append(float(sum(isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear) for m in producers) > 1))
            depthwise.append(float(any(is_depthwise(m) for m in convs)))
        spread = [float(s.std() / s.mean().clamp_min(1e-12)) if len(s) > 1 else 0.0 for s in self.engine.importance]
        return np.stack([
            np.arange(self.num_groups) / max(self.num_groups - 1, 1), residual, depthwise,
            np.log(channels) / np.log(channels.max()), channels / channels.sum(), np.clip(flops, 0, 1),
            np.clip(params, 0, 1), np.array(kernels) / max(kernels), strides, np.clip(spread, 0, 1),
        ], axis=1).astype(np.float32)

    # ------------------------------------------------------------------------------------------
    # Public helpers

    @property
    def current_group(self) -> int | None:
        """Index of the group the next step prunes (None before reset and after the last step)."""
        return self._t if self._t is not None and self._t < self.num_groups else None

    @property
    def latency_table(self) -> LatencyTable | None:
        """The per-layer latency table the budget predicts from (``budget="latency"``), else None."""
        return self.engine.cost.latency_table

    @property
    def reward_accuracy(self) -> float:
        return self._accuracy

    def group_names(self) -> list[str]:
        return [group.name for group in self.groups]

    def allocation_counts(self, method: str, target: float | None = None, seed: int = 0) -> list[int]:
        """Removed-channel counts per group of a rule of ``prune_gym.channel_allocation`` at
        ``target`` (the env's by default), within the env's caps; cached."""
        return self._allocation(method, target, seed)[0]

    def _allocation(self, method: str, target: float | None, seed: int) -> tuple[list[int], float]:
        target = self._check_target(target) if target is not None else self.target_sparsity
        key = (method, float(target), int(seed))
        if key not in self._allocations:
            started = time.perf_counter()
            counts = channel_allocation(method, self.engine.importance, self.cost, self.allowed, self.budget, target,
                                        seed=seed)
            self._allocations[key] = (counts, time.perf_counter() - started)
        return self._allocations[key]

    def allocation_sparsities(self, method: str, target: float | None = None, min_threshold: float | None = None,
                              seed: int = 0) -> list[float]:
        """Per-group shares of channels removed by a rule at ``target`` (PruneEnv's signature;
        no rule here takes a Minimum Threshold)."""
        if min_threshold is not None:
            raise ConfigError(f"min_threshold applies to weight pruning's global-mp+mt, not to channel rule {method!r}")
        counts = self.allocation_counts(method, target, seed)
        return [count / channels for count, channels in zip(counts, self.channels, strict=True)]

    def allocation_seconds(self, method: str, target: float | None = None, min_threshold: float | None = None,
                           seed: int = 0) -> float:
        """What computing :meth:`allocation_sparsities` took the first time."""
        return self._allocation(method, target, seed)[1]

    def layer_names(self) -> list[str]:
        """The groups' names (their root layers): the units a step prunes, as PruneEnv's layers."""
        return self.group_names()

    def reference_sparsity(self) -> float:
        """The reference allocation's share for the current group (the relative centre action)."""
        index = min(self._t or 0, self.num_groups - 1)
        return self.allocation_counts(self.reference)[index] / self.channels[index]

    def action_to_sparsity(self, action: Any) -> float:
        return self.actions.to_sparsity(action, self.reference_sparsity())

    def sparsity_to_action(self, sparsity: float) -> Any:
        action = self.actions.to_actions(np.array([sparsity]), np.array([self.reference_sparsity()]))[0]
        return int(action) if self.action_type == "discrete" else action

    def feasible_counts(self, index: int) -> tuple[int, int]:
        """Bounds on the channels group ``index`` may lose: at least what keeps the target reachable
        by the remaining groups at their caps, at most what meets it with them untouched."""
        removed = np.array(self._removed, dtype=np.float64)

        def reduction(count: int, rest: Sequence[int]) -> float:
            removed[index] = count
            removed[index + 1:] = rest
            return self.cost.reduction(self.budget, removed)

        options, later_caps, later_none = self.allowed[index], self.caps[index + 1:], [0] * (self.num_groups - index - 1)
        # Binary searches over the counts the group allows (ascending).
        low, high = 0, len(options) - 1  # the fewest that still reach the target with later groups at their caps
        while low < high:
            middle = (low + high) // 2
            meets = reduction(options[middle], later_caps) >= self.target_sparsity
            low, high = (low, middle) if meets else (middle + 1, high)
        least = low
        low, high = 0, len(options) - 1  # the most that does not pass the target with later groups untouched
        while low < high:
            middle = (low + high + 1) // 2
            within = reduction(options[middle], later_none) <= self.target_sparsity
            low, high = (middle, high) if within else (low, middle - 1)
        return int(options[least]), int(options[max(least, low)])

    def nearest_allowed(self, index: int, count: float) -> int:
        """The count group ``index`` allows (``channel_multiple``) nearest to ``count``."""
        options = self.allowed[index]
        return int(options[np.abs(options - count).argmin()])

    def dense_architecture(self) -> nn.Module:
        """A CPU copy of the network in its dense architecture (made once; for latency
        comparisons: dense kernels take as long whatever the weights' values)."""
        if self._dense_architecture is None:
            self._dense_architecture = copy.deepcopy(self.model).to("cpu", memory_format=torch.contiguous_format).eval()
        return self._dense_architecture

    def removed_channels(self) -> list[list[int]]:
        """The removed channel indices of each group now (what the smaller network drops)."""
        return self.engine.masks.removed_channels()

    # ------------------------------------------------------------------------------------------
    # Gymnasium API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        target = reset_target(seed, options, self.target_sparsity, self._check_target)  # nothing changed yet
        self._check_reachable(target)
        super().reset(seed=seed)
        self.target_sparsity = target
        self.engine.restore_dense(seed)
        self._reset_episode_state()
        self._t = 0
        return self._observation(), {"dense_reward_accuracy": self.dense_reward_accuracy, "num_groups": self.num_groups,
                                     "synthetic": self.synthetic}

    def _reset_episode_state(self) -> None:
        self._removed = [0] * self.num_groups
        self._accuracy = self.dense_reward_accuracy
        self.requested: list[float | None] = [None] * self.num_groups
        self.applied: list[float | None] = [None] * self.num_groups

    def step(self, action: Any):
        check_step(self._t, self.num_groups, "group")
        requested = self.action_to_sparsity(action)  # raises before anything changes
        low, high = self.feasible_counts(self._t)
        count = self.nearest_allowed(self._t, requested * self.channels[self._t])
        return self._remove(requested, int(np.clip(count, low, high)))

    def replay(self, counts: Sequence[int]) -> dict[str, Any]:
        """Reset, then remove ``counts[g]`` channels from each group through the same engine steps
        an episode takes (no action mapping, no projection: the counts are taken as they are);
        returns the last step's ``info``. For recipes and export."""
        counts = [int(c) for c in counts]
        if len(counts) != self.num_groups or any(c not in options for c, options in zip(counts, self.allowed, strict=True)):
            raise ConfigError(f"replay needs {self.num_groups} channel counts, each one its group allows (within the "
                              f"caps {self.caps}, keeping a multiple of channel_multiple={self.channel_multiple}), "
                              f"got {counts}")
        self.reset()
        info: dict[str, Any] = {}
        for index, count in enumerate(counts):
            info = self._remove(count / self.channels[index], count)[4]
        return info

    def _remove(self, requested: float, count: int):
        """One step: remove ``count`` channels from the current group, pay, report."""
        index = self._t
        accuracy = self.engine.prune(index, count)
        try:
            removed = [*self._removed[:index], count, *self._removed[index + 1:]]
            before, after = self._reductions(self._removed), self._reductions(removed)
            terminated = index + 1 == self.num_groups
            context = RewardContext(
                accuracy=accuracy, previous_accuracy=self._accuracy, dense_accuracy=self.dense_reward_accuracy,
                sparsity=after[self.budget], previous_sparsity=before[self.budget], flops_reduction=after["flops"],
                previous_flops_reduction=before["flops"], target_sparsity=self.target_sparsity,
                sparsity_weight=self.sparsity_weight, step=index, num_layers=self.num_groups, terminal=terminated,
            )
            reward = checked_reward(self.reward_fn, self.reward_name, context)
            info: dict[str, Any] = {
                "layer": self.groups[index].name, "layer_index": index, "target_sparsity": self.target_sparsity,
                "budget": self.budget, "requested_sparsity": requested, "applied_sparsity": count / self.channels[index],
                "channels_removed": count, "flops_reduction": after["flops"],
                **({"latency_reduction": after["latency"]} if self.budget == "latency" else {}),
                # The whole model's parameters removed (PruneEnv's "overall_sparsity" counts prunable weights).
                "overall_sparsity": after["params"], "reward_accuracy": accuracy,
            }
            if terminated:
                info.update(episode_end_info(self, {g.name: n / g.channels for g, n in zip(self.groups, removed, strict=True)}))
                info["removed_channel_counts"] = dict(zip(self.group_names(), removed, strict=True))
        except BaseException:
            self.engine.rollback()
            raise
        self._removed = removed
        self.requested[index], self.applied[index] = requested, count / self.channels[index]
        self._accuracy = accuracy
        self._t += 1
        return self._observation(), reward, terminated, False, info

    def _reductions(self, removed: Sequence[int]) -> dict[str, float]:
        reductions = {"flops": self.cost.flops_reduction(removed), "params": self.cost.param_reduction(removed)}
        if self.budget == "latency":
            reductions["latency"] = self.cost.latency_reduction(removed)
        return reductions

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode: pass render_mode='ansi'")
            return None
        return render_channels_ansi(self)

    # ------------------------------------------------------------------------------------------
    # Internals

    def _observation(self) -> np.ndarray:
        index = min(self._t or 0, self.num_groups - 1)
        reductions = self._reductions(self._removed)
        done = self._t is not None and self._t >= self.num_groups
        at_caps = [*self._removed[:index], *self.caps[index:]]
        still = self.target_sparsity - reductions[self.budget]
        available = self.cost.reduction(self.budget, at_caps) - reductions[self.budget]
        budget_left = 0.0 if done or available <= 0 else float(np.clip(still / available, 0, 1))
        dynamic = np.array([
            self.reference_sparsity(), reductions["flops"], reductions["params"], budget_left,
            min(self._accuracy / self.dense_reward_accuracy, 2.0) if self.dense_reward_accuracy > 0 else 1.0,
            self.applied[index - 1] if index > 0 and self.applied[index - 1] is not None else 0.0, self.target_sparsity,
        ], dtype=np.float32)
        return np.clip(np.concatenate([self._static[index], dynamic]), 0.0, self.observation_space.high)
