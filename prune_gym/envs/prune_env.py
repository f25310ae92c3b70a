"""PruneEnv: prune a trained network layer by layer, paid a reward at every step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from prune_gym.accounting import flops_removed
from prune_gym.allocation import ALLOCATION_METHODS, AllocationCache, allocation_method
from prune_gym.envs.actions import DEFAULT_RELATIVE_RANGE, ActionMap
from prune_gym.envs.budget import EpisodeBudget
from prune_gym.envs.engine import PruningEngine
from prune_gym.envs.render import render_ansi, render_rgb_array
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
from prune_gym.pruning import check_sparsity
from prune_gym.stats import FEATURE_INDEX, observation, observation_bounds, static_features
from prune_gym.tasks import get_task


class PruneEnv(EngineView, gym.Env):
    """Prune a trained network one layer at a time, in forward order.

    ## Description

    Each step the agent sees statistics of the next prunable layer (every Conv and Linear
    weight; biases and norms are never pruned) and chooses its sparsity; the layer is
    magnitude-pruned to that sparsity (exactly ``round(s * n)`` of its smallest weights), the
    network is evaluated on the reward split, and a reward is paid at once (the per-step reward
    of PuRL, Gupta et al. 2020, rather than AMC's single end-of-episode reward). One episode
    prunes every layer once.

    ## Action Space

    The sparsity of the current layer, in ``[min_sparsity, max_sparsity]`` (a layer is never
    emptied: ``max_sparsity < 1``), chosen through one of two parametrisations
    (``prune_gym.envs.actions``):

    - ``action_mode="relative"`` (default): a step in logit space away from the layer's
      *reference sparsity*, the reference allocation's sparsity for the layer (``reference``:
      Global MP by default, or any method of ``prune_gym.allocation``: LAMP, ERK, uniform+...)
      with the keep budget earlier layers left spread over the remaining ones in proportion to
      what the reference keeps there.
      Discrete: ``Discrete(n_actions)`` (default 11, odd) steps evenly spaced in
      ``[-relative_range, relative_range]`` (default 1.0); the centre action ``n_actions // 2``
      takes the reference exactly, so playing it at every step *is* the reference allocation
      (Global MP by default), weight for weight. Continuous:
      ``Box(-1, 1, (1,))`` times ``relative_range``; 0 takes the reference.
    - ``action_mode="absolute"`` (v0's): the sparsity itself, ``Discrete(n_actions)`` (default
      12) evenly spaced levels ``0, 0.09, ..., 0.99``, or ``Box(-1, 1, (1,))`` mapped linearly
      onto the range (continuous absolute actions replay any allocation exactly).

    With a ``target_sparsity``, the requested sparsity is then projected onto the interval that
    keeps the target reachable by the remaining layers without overshooting it (each within
    ``[min_sparsity, max_sparsity]``), so every finished episode ends at the target exactly
    (``round(target * weights)`` weights pruned). In the relative mode the interval is narrowed,
    where the target allows, so that every layer after this one can still keep between
    ``exp(-relative_range)`` and ``exp(relative_range)`` times what the reference keeps in it, within
    its own cap: no choice can leave the last, small layers to be emptied
    (``actions.spread_bounds``). ``info`` reports both the requested and the applied sparsity;
    the ``reference_sparsity`` feature tells the agent where the spread budget stands.

    ## Observation Space

    ``Box(0, high, (21,), float32)``: statistics of the current layer (0-12, fixed) and the state
    of the episode (13-20), as ``prune_gym.stats.FEATURES`` lists them (a test keeps this list and
    that one equal). Every feature lies in [0, 1] except ``accuracy_ratio``, in [0, 2]. After the
    last step the observation is the last layer's, with the episode features updated.

    - 0. ``position``: index of the layer in forward order / (layers - 1)
    - 1. ``is_conv``: 1 for a dense convolution
    - 2. ``is_depthwise``: 1 for a depthwise convolution (groups == in_channels > 1)
    - 3. ``is_linear``: 1 for a Linear layer
    - 4. ``log_size``: log(weights in the layer) / log(weights in the largest layer)
    - 5. ``param_share``: weights in the layer / all prunable weights
    - 6. ``flops_share``: dense FLOPs of the layer / dense FLOPs of all prunable layers
    - 7. ``in_channels``: input channels (features) / the largest over layers
    - 8. ``out_channels``: output channels (features) / the largest over layers
    - 9. ``kernel_size``: kernel area (1 for Linear) / the largest over layers
    - 10. ``stride``: 1 if the layer downsamples (stride > 1), else 0
    - 11. ``weight_mean_abs``: mean absolute weight of the dense layer / the largest over layers
    - 12. ``weight_std``: std of w of the dense layer / the largest over layers
    - 13. ``global_mp_sparsity``: sparsity Global MP gives this layer at the target (at 0.5 with no target)
    - 14. ``reference_sparsity``: the reference allocation's sparsity for the layer (Global MP's by default) with the budget earlier layers left spread (the relative centre action)
    - 15. ``sparsity_so_far``: overall sparsity of all prunable weights before this step
    - 16. ``budget_left``: sparsity the remaining layers (this one included) need on average to reach the target; 0 with no target
    - 17. ``accuracy_ratio``: reward-split accuracy after the previous step / dense accuracy (clipped to [0, 2])
    - 18. ``previous_sparsity``: sparsity applied to the previous layer (0 at the first step)
    - 19. ``target_sparsity``: the episode's target sparsity (0 with no target)
    - 20. ``flops_reduction_so_far``: fraction of the prunable layers' FLOPs removed so far

    ## Rewards

    Chosen by ``reward`` (see ``prune_gym.envs.rewards``): ``"purl"`` (default, per step:
    ``Delta(a/a_0) + beta * Delta S``), ``"terminal"`` (AMC-style, at the last step only),
    ``"accuracy-sparsity"`` (for ``target_sparsity=None``), ``"flops"``, or any callable
    ``f(RewardContext) -> float``. Accuracy ``a`` is measured on the held-out reward split, never
    on the test split.

    ## Starting State

    The dense trained network. ``reset()`` restores it bit for bit from a copy kept on the
    device; ``options={"target_sparsity": s}`` changes the target for the episodes that follow.

    ## Episode End

    Terminates after the last prunable layer (episode length = number of prunable layers); the
    last step's ``info`` holds the per-layer sparsities and the test accuracy (``evaluate_test``
    says when; ``evaluate_test()`` scores the test split at any time). The env itself
    never truncates; ``gym.make`` adds a ``TimeLimit`` of the same length, which also reports
    ``truncated=True`` on that last step (``terminated`` is True there too: treat the episode
    as ended, not cut off).

    ## Episode state (public, read-only)

    ``current_layer`` (the index the next step prunes), ``requested`` / ``applied`` /
    ``accuracies`` (per layer, None until pruned), ``reward_accuracy`` (now),
    ``reference_sparsity()``, ``state`` (``PruningState``: the masks and dense weights),
    ``layers``, ``dense_reward_accuracy``, ``measure_dense_test_accuracy()``, ``train_data``
    and ``test_data`` (the splits as given), ``global_mp_sparsities(target, min_threshold)``,
    ``engine`` (``prune_gym.envs.engine.PruningEngine``: what a step does to the network).

    ## Arguments

    - ``task``: a task name or env id from ``prune_gym.tasks`` (set by the registered ids).
    - ``model``, ``reward_data``, ``test_data``: your own network and splits instead of a task
      (tensors ``(x, y)``, a Dataset or a DataLoader). ``train_data`` is only needed for BN
      re-calibration. The env prunes a copy of ``model`` (``env.model``); the model you pass keeps
      its weights and memory format. A model already pruned with ``torch.nn.utils.prune``
      (``weight_orig`` and ``weight_mask``) is refused: make its masks permanent first.
    - ``target_sparsity``: overall sparsity every episode ends at (default 0.8), or None.
    - ``action_type`` (``"discrete"``, ``"continuous"``), ``action_mode`` (``"relative"``,
      ``"absolute"``), ``n_actions`` (None = 11 relative / 12 absolute), ``relative_range``,
      ``min_sparsity``, ``max_sparsity``: the action space (see above).
    - ``reference``: the allocation the relative actions step around and the spread follows
      (``"global-mp"``, the default; ``"lamp"``, ``"erk"``, ``"uniform+"``... any name of
      ``prune_gym.allocation.ALLOCATION_METHODS``).
    - ``reward``, ``sparsity_weight``: the reward function and its ``beta``.
    - ``device``: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``; ``amp``,
      ``channels_last``: bf16/fp16 autocast on CUDA (None = the task's choice: off for digits,
      where it bought no speed and changed the reward on a third of the steps; on elsewhere,
      and for your own model), and the channels-last memory format for
      image models (on every device: faster on the CPU too, see benchmarks); ``batch_size``;
      ``cache_activations``: resume evaluation from the first changed block (exact);
      ``compile``: evaluate through ``torch.compile``, each model stage compiled on its own
      (``"auto"``: on CUDA for the tasks whose passes pay the compilation back, the ImageNet
      ones; off on the CPU and for your own model; True or False to choose).
    - ``data_dir``, ``weights``, ``split_seed``: passed to the task's loaders.
    - ``synthetic``, ``input_shape``, ``synthetic_samples``: random weights and random data of
      this sample shape and split size (for mechanics and speed only; never a result).
    - ``exclude_layers``: name patterns of layers never pruned (and not visited).
    - ``bn_recalibration_batches``: re-estimate BatchNorm statistics on this many train
      batches of 256 after each step (0 = off; None = the task's default, which is 1 for the digits
      task and 0 elsewhere); only the statistics from the pruned layer's stage on are re-estimated
      (earlier ones cannot change: the result equals a full re-calibration), and they are
      restored on reset. ``export`` repeats it on the same images, so a recipe exports to a
      model that scores what the env reported.
    - ``finetune_steps``, ``finetune_lr``: a short masked retraining (this many SGD steps on
      train batches) after each pruning step, the PuRL-style schedule (0 = off). Later layers
      are then pruned by the magnitude of their retrained weights. Reset restores every
      parameter and buffer from a device copy.
    - ``evaluate_test``: score the test split at the end of each episode (``info["test_accuracy"]``
      and ``info["dense_test_accuracy"]``; default True). None: only where the test split is
      held on the device (up to 20,000 samples: digits, HAR-2, CIFAR-10), not ImageNet's 50,000
      validation JPEGs, which every pass decodes again: about 260 s per episode against 4 s for
      the episode's 54 reward-split steps on an H100 (``benchmarks/README.md``). Training never
      reads the test split, so the agents' training envs use None
      (``prune_gym.agents.training.make_training_env``); pass None or False when you train your
      own agent on an ImageNet env, and call ``env.unwrapped.evaluate_test()`` at the end of the
      episodes you report (``prune-gym compare`` and ``sweep`` do).
    - ``render_mode``: ``"ansi"`` (a per-layer table) or ``"rgb_array"`` (a bar chart).

    ## Version History

    - v1: ``action_mode="relative"`` is the default (steps around Global MP's allocation with
      the keep budget spread, the remaining layers kept within ``exp(+-relative_range)`` of
      Global MP's share; 11 discrete actions) and the observation gains
      ``reference_sparsity`` (21 features). Under v0's absolute levels, an under-pruned start
      was paid back by the last layers alone (the 640-weight classifier of the digits model
      ended at 0.99 at target 0.9) and Global MP's allocation could not be expressed.
      ``gym.make("...-v0")`` still gives v0's absolute actions (with the 21-feature
      observation: agents saved under v0 need retraining). Fixed on 2026-11-22, before any
      release of v1: the spread bounds count each later layer's cap (until then, at targets
      where Global MP takes large layers close to ``max_sparsity``, e.g. 0.95 on the digits
      model, a deficit those layers could not absorb still emptied the classifier); results
      recorded before that date differ at such targets. Also on 2026-11-22: ``evaluate_test``
      (False, or None where the test split is not held on the device, leaves the test accuracy
      out of the last step's ``info``; the default, True, keeps it). On 2026-12-04:
      ``reference`` (any allocation method as the centre of the relative actions; the default,
      ``"global-mp"``, keeps v1's dynamics), and ``amp=None`` (the task's choice): the digits
      ids evaluate in fp32 on CUDA from then on (CPU results are unchanged: AMP is CUDA only);
      ``compile`` (``"auto"``: compiled evaluation on CUDA for the ImageNet ids).
    - v0: initial release.
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}
    #: The allocation methods that apply here (the reference policies and the search read it).
    allocation_methods = ALLOCATION_METHODS
    #: Where each feature sits in the observation.
    feature_index = FEATURE_INDEX

    def __init__(
        self, task: str | None = None, *, model: nn.Module | None = None, reward_data: DataLike | None = None,
        test_data: DataLike | None = None, train_data: DataLike | None = None, target_sparsity: float | None = 0.8,
        action_type: str = "discrete", action_mode: str = "relative", n_actions: int | None = None,
        relative_range: float = DEFAULT_RELATIVE_RANGE, reference: str = "global-mp", min_sparsity: float = 0.0,
        max_sparsity: float = 0.99, reward: str | RewardFunction = "purl", sparsity_weight: float = 1.0,
        device: str | torch.device = "auto", amp: bool | None = None, channels_last: bool = True,
        batch_size: int = 1024, cache_activations: bool = True, compile: bool | str = "auto",
        data_dir: str | None = None, weights: str | None = None, split_seed: int = 0, synthetic: bool = False,
        input_shape: Sequence[int] | None = None, synthetic_samples: int = 64, exclude_layers: Sequence[str] = (),
        bn_recalibration_batches: int | None = None, finetune_steps: int = 0, finetune_lr: float = 0.01,
        evaluate_test: bool | None = True, render_mode: str | None = None,
    ) -> None:
        super().__init__()
        # Validate everything cheap before loading anything, then load, then build.
        self.min_sparsity = check_sparsity(min_sparsity, "min_sparsity")
        self.max_sparsity = check_sparsity(max_sparsity, "max_sparsity")
        if self.min_sparsity >= self.max_sparsity:
            raise ConfigError(f"min_sparsity ({min_sparsity}) must be below max_sparsity ({max_sparsity})")
        self.actions = ActionMap(action_type, action_mode, n_actions, self.min_sparsity, self.max_sparsity, relative_range)
        self.target_sparsity = self._check_target(target_sparsity)
        #: The allocation method the relative actions step around (``prune_gym.allocation``).
        self.reference = allocation_method(reference).name
        self.task = get_task(task) if task is not None else None  # resolved once (no loading yet)
        check_settings(sparsity_weight, render_mode, self.metadata["render_modes"])
        check_data_settings(evaluate_test, synthetic, synthetic_samples, split_seed, input_shape, weights)
        #: The engine's settings, resolved (the task's defaults, the device, compile="auto").
        self.config = engine_config(
            self.task, device=device, amp=amp, compile=compile, batch_size=batch_size, channels_last=channels_last,
            cache_activations=cache_activations, exclude_layers=exclude_layers,
            bn_recalibration_batches=bn_recalibration_batches, finetune_steps=finetune_steps, finetune_lr=finetune_lr,
            split_seed=split_seed)
        self.reward_fn, self.reward_name = get_reward(reward), reward_label(reward)
        self.render_mode, self.action_type, self.action_mode = render_mode, action_type, action_mode
        self.sparsity_weight, self.synthetic = float(sparsity_weight), bool(synthetic)

        self._build_engine(PruningEngine, model, reward_data, test_data, train_data, data_dir=data_dir, weights=weights,
                           split_seed=split_seed, synthetic=synthetic, input_shape=input_shape,
                           synthetic_samples=synthetic_samples)
        #: Whether each episode's last step scores the test split (see ``evaluate_test``).
        self.evaluate_test_at_end = test_at_episode_end(self.engine, evaluate_test)
        self._set_up_layers()

    # ------------------------------------------------------------------------------------------
    # Construction helpers

    def _set_up_layers(self) -> None:
        """What the engine's layers give the env: the static features, the spaces, Global MP's
        allocation and the dense network's reward-split accuracy."""
        # The engine's parts a user reads (see "Episode state").
        self.layers, self.state, self.evaluator = self.engine.layers, self.engine.state, self.engine.evaluator
        self.num_layers, self.layer_flops = len(self.layers), self.engine.layer_flops
        self._static = static_features(self.layers, self.state.dense, self.layer_flops)
        self._allocations = AllocationCache(self.state.dense)

        self.levels = self.actions.levels  # sparsities (absolute) or logit steps (relative)
        self.action_space = self.actions.space()
        low, high = observation_bounds()
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self.global_mp_sparsities()  # observation features: computed here, not on the first reset
        self.dense_reward_accuracy = self.evaluator.accuracy()
        self._t: int | None = None
        self._reset_episode_state()

    def _check_target(self, target_sparsity: float | None) -> float | None:
        """The target as a float, or ValueError unless the action range can reach it exactly."""
        if target_sparsity is None:
            return None
        target = check_sparsity(target_sparsity, "target_sparsity")
        if not self.min_sparsity <= target <= self.max_sparsity:
            raise ConfigError(
                f"target_sparsity {target} is outside [min_sparsity, max_sparsity] = "
                f"[{self.min_sparsity}, {self.max_sparsity}]: every layer's sparsity lies in that range, so "
                f"the episode could not end at the target; "
                + ("raise max_sparsity" if target > self.max_sparsity else "lower min_sparsity")
            )
        return target

    # ------------------------------------------------------------------------------------------
    # Public helpers (used by reference policies, the comparison workflow and tests)

    @property
    def current_layer(self) -> int | None:
        """Index of the layer the next step prunes (None before reset and after the last step)."""
        return self._t if self._t is not None and self._t < self.num_layers else None

    @property
    def reward_accuracy(self) -> float:
        """Reward-split accuracy of the network as it is now (dense after reset)."""
        return self._accuracy

    def action_to_sparsity(self, action: Any) -> float:
        """The sparsity an action requests for the current layer (see ``action_mode``);
        ValueError if the action is not in the action space."""
        return self.actions.to_sparsity(action, self.reference_sparsity())

    def sparsity_to_action(self, sparsity: float) -> Any:
        """The action that requests ``sparsity`` for the current layer (the nearest level for
        discrete actions): an int, or an array of shape (1,) for continuous actions."""
        action = self.actions.to_actions(np.array([sparsity]), np.array([self.reference_sparsity()]))[0]
        return int(action) if self.action_type == "discrete" else action

    def reference_sparsity(self) -> float:
        """The current layer's reference sparsity: the reference allocation's (``reference``,
        Global MP by default), with the keep budget the earlier layers left spread over the
        remaining ones (``prune_gym.envs.actions.reference_sparsity``). The centre action of
        ``action_mode="relative"`` takes it; an observation feature."""
        index = min(self._t or 0, self.num_layers - 1)
        pruned = self._pruned
        if self._t == self.num_layers:  # after the last step: the state before it
            pruned -= round(self.applied[index] * self.state.numels[index])
        return self.episode_budget.reference(index, pruned)

    def allocation_sparsities(self, method: str, target: float | None = None,
                              min_threshold: float | None = None, seed: int = 0) -> list[float]:
        """Per-layer sparsities of an allocation method (``prune_gym.allocation``) on the dense
        model at ``target`` (the env's, else 0.5), cached per method, target, Minimum Threshold
        and seed (the draw of ``random``)."""
        return self._allocation(method, target, min_threshold, seed)[0]

    def allocation_seconds(self, method: str, target: float | None = None, min_threshold: float | None = None,
                           seed: int = 0) -> float:
        """What computing :meth:`allocation_sparsities` took (the first time; later calls are cached)."""
        return self._allocation(method, target, min_threshold, seed)[1]

    def _allocation(self, method: str, target: float | None, min_threshold: float | None,
                    seed: int) -> tuple[list[float], float]:
        target = target if target is not None else (self.target_sparsity if self.target_sparsity is not None else 0.5)
        return self._allocations.get(method, target, min_threshold, seed)

    def global_mp_sparsities(self, target: float | None = None, min_threshold: float | None = None) -> list[float]:
        """Per-layer sparsities of Global MP on the dense model (with the Minimum Threshold
        ``min_threshold`` when given), cached per target."""
        if min_threshold:
            return self.allocation_sparsities("global-mp+mt", target, float(min_threshold))
        return self.allocation_sparsities("global-mp", target)

    def reference_sparsities(self, target: float | None = None) -> list[float]:
        """Per-layer sparsities of the reference allocation (``reference``) at ``target``."""
        return self.allocation_sparsities(self.reference, target)

    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    # ------------------------------------------------------------------------------------------
    # Gymnasium API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        # Validate everything first, then change state: a rejected reset leaves the env as it was.
        target = reset_target(seed, options, self.target_sparsity, self._check_target)
        super().reset(seed=seed)
        self.target_sparsity = target
        self.engine.restore_dense(seed)
        self._reset_episode_state()
        self._t = 0
        info = {"dense_reward_accuracy": self.dense_reward_accuracy, "num_layers": self.num_layers,
                "synthetic": self.synthetic}
        return self._observation(), info

    def _reset_episode_state(self) -> None:
        #: The target as a weight count, the reference's counts and the caps (``envs.budget``).
        self.episode_budget = EpisodeBudget.build(
            self.state.numels, self.target_sparsity, self.reference_sparsities(), self.min_sparsity, self.max_sparsity,
            self.actions.relative_range if self.action_mode == "relative" else None)
        self._pruned = 0
        self._accuracy = self.dense_reward_accuracy
        self._previous_sparsity_applied = 0.0
        self._flops_removed = 0.0
        self.requested: list[float | None] = [None] * self.num_layers
        self.applied: list[float | None] = [None] * self.num_layers
        self.accuracies: list[float | None] = [None] * self.num_layers

    def step(self, action: Any):
        check_step(self._t, self.num_layers, "layer")
        requested = self.action_to_sparsity(action)  # raises before anything changes
        index = self._t
        numel = self.state.numels[index]
        low, high = self.episode_budget.bounds(index, self._pruned)
        count = int(np.clip(round(requested * numel), low, high))
        accuracy = self.engine.prune(index, count)  # a failed step leaves the network as it was
        # Everything the step reports is computed before the episode state changes: a reward
        # function or a test evaluation that fails takes the pruning back, so the step never
        # happened and may be retried.
        try:
            pruned = self._pruned + count
            applied = count / numel
            applied_now = [*self.applied[:index], applied, *self.applied[index + 1:]]
            flops = flops_removed(self.layer_flops, applied_now)
            terminated = index + 1 == self.num_layers
            sparsity = pruned / self.state.total
            context = RewardContext(
                accuracy=accuracy, previous_accuracy=self._accuracy, dense_accuracy=self.dense_reward_accuracy,
                sparsity=sparsity, previous_sparsity=self._pruned / self.state.total, flops_reduction=flops,
                previous_flops_reduction=self._flops_removed, target_sparsity=self.target_sparsity,
                sparsity_weight=self.sparsity_weight, step=index, num_layers=self.num_layers, terminal=terminated,
            )
            reward = checked_reward(self.reward_fn, self.reward_name, context)
            info: dict[str, Any] = {
                "layer": self.layers[index].name, "layer_index": index, "target_sparsity": self.target_sparsity,
                "requested_sparsity": requested, "applied_sparsity": applied, "overall_sparsity": sparsity,
                "flops_reduction": flops, "reward_accuracy": accuracy,
            }
            if terminated:
                info.update(episode_end_info(self, dict(zip(self.layer_names(), applied_now, strict=True))))
        except BaseException:
            self.engine.rollback()
            raise
        self._pruned = pruned
        self.requested[index], self.applied[index], self.accuracies[index] = requested, applied, accuracy
        self._flops_removed = flops
        self._accuracy = accuracy
        self._previous_sparsity_applied = applied
        self._t += 1
        return self._observation(), reward, terminated, False, info

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode: pass render_mode='ansi' or 'rgb_array'")
            return None
        if self.render_mode == "ansi":
            return render_ansi(self)
        return render_rgb_array(self)

    # ------------------------------------------------------------------------------------------
    # Internals

    def _observation(self) -> np.ndarray:
        index = min(self._t or 0, self.num_layers - 1)
        total = self.state.total
        target = {}
        if self.target_sparsity is not None:
            at = self._t if self._t is not None else self.num_layers  # before reset: nothing left to prune
            target = {"budget_left": self.episode_budget.left(at, self._pruned), "target_sparsity": self.target_sparsity}
        return observation(
            self._static[index],
            global_mp_sparsity=self.global_mp_sparsities()[index],
            reference_sparsity=self.reference_sparsity(),
            sparsity_so_far=self._pruned / total,
            accuracy_ratio=self._accuracy / self.dense_reward_accuracy if self.dense_reward_accuracy > 0 else 1.0,
            previous_sparsity=self._previous_sparsity_applied,
            flops_reduction_so_far=self._flops_removed,
            **target,
        )
