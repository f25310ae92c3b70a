"""Named, pluggable reward functions.

A reward function takes a :class:`RewardContext` (what happened at this step) and returns a
float. Choose one by name (``reward="purl"``) or pass any callable ``f(context) -> float``.

Notation: ``a_t`` is the reward-split accuracy after step *t* (``a_0`` the dense accuracy),
``S_t`` the overall sparsity of the prunable weights, ``F_t`` the fraction of the prunable
layers' FLOPs removed, ``beta`` the env's ``sparsity_weight``. The per-step rewards are
differences of a potential ``Phi``, so an episode's return is ``Phi_L - Phi_0``: the return
ranks policies exactly as their final ``Phi`` does, however the reward is spread over steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from prune_gym.errors import ConfigError


@dataclass(frozen=True)
class RewardContext:
    """What a reward function may use at one step."""

    accuracy: float
    previous_accuracy: float
    dense_accuracy: float
    sparsity: float
    previous_sparsity: float
    flops_reduction: float
    previous_flops_reduction: float
    target_sparsity: float | None
    sparsity_weight: float
    step: int
    num_layers: int
    terminal: bool


RewardFunction = Callable[[RewardContext], float]


def _relative(accuracy: float, context: RewardContext) -> float:
    return accuracy / context.dense_accuracy if context.dense_accuracy > 0 else accuracy


def purl_reward(context: RewardContext) -> float:
    """PuRL-style dense reward, paid at every step (the default).

    ``r_t = (a_t - a_{t-1}) / a_0 + beta * (S_t - S_{t-1})``, i.e. ``Phi = a / a_0 + beta * S``.
    The return is ``a_L / a_0 - 1 + beta * S_L``. With a target sparsity every episode ends at
    the same ``S_L``, so the return ranks policies by final reward-split accuracy at the target;
    with no target, ``beta`` trades accuracy against sparsity.
    """
    accuracy_gain = _relative(context.accuracy, context) - _relative(context.previous_accuracy, context)
    return accuracy_gain + context.sparsity_weight * (context.sparsity - context.previous_sparsity)


def terminal_reward(context: RewardContext) -> float:
    """AMC-style: zero until the last step, then ``a_L / a_0 - 1 + beta * S_L``.

    Same return as ``purl``, paid all at once: the credit-assignment baseline the per-step
    reward is compared against.
    """
    if not context.terminal:
        return 0.0
    return _relative(context.accuracy, context) - 1.0 + context.sparsity_weight * context.sparsity


def accuracy_sparsity_reward(context: RewardContext) -> float:
    """For ``target_sparsity=None``: ``Phi = (a / a_0) * (1 + beta * S)``, paid per step.

    Multiplicative, so sparsity is worth little once accuracy has collapsed (an additive
    reward can be gamed by pruning everything when ``beta`` is large).
    """

    def potential(accuracy: float, sparsity: float) -> float:
        return _relative(accuracy, context) * (1.0 + context.sparsity_weight * sparsity)

    return potential(context.accuracy, context.sparsity) - potential(context.previous_accuracy, context.previous_sparsity)


def flops_reward(context: RewardContext) -> float:
    """FLOPs-aware: ``Phi = a / a_0 + beta * F``, paid per step.

    Rewards removing weights where they cost the most compute (early, high-resolution convs),
    rather than where they are most numerous.
    """
    accuracy_gain = _relative(context.accuracy, context) - _relative(context.previous_accuracy, context)
    return accuracy_gain + context.sparsity_weight * (context.flops_reduction - context.previous_flops_reduction)


REWARDS: dict[str, RewardFunction] = {
    "purl": purl_reward,
    "terminal": terminal_reward,
    "accuracy-sparsity": accuracy_sparsity_reward,
    "flops": flops_reward,
}


def get_reward(reward: str | RewardFunction) -> RewardFunction:
    """A reward function by name, or ``reward`` itself if it is callable."""
    if callable(reward):
        return reward
    if isinstance(reward, str) and reward in REWARDS:
        return REWARDS[reward]
    raise ConfigError(
        f"unknown reward {reward!r}: use one of {sorted(REWARDS)} or pass a callable f(RewardContext) -> float"
    )


def reward_label(reward: str | RewardFunction) -> str:
    """The name a reward is reported under: its name, or a callable's ``__name__``."""
    return reward if isinstance(reward, str) else getattr(reward, "__name__", "custom")


def checked_reward(reward_fn: RewardFunction, name: str, context: RewardContext) -> float:
    """``reward_fn(context)`` as a finite float, or ConfigError naming the reward (the envs then
    take the step back)."""
    value = reward_fn(context)
    try:
        reward = float(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"the reward function {name!r} returned {value!r}, not a number: it must return a finite "
            "float for a RewardContext (the step was taken back)"
        ) from None
    if not math.isfinite(reward):
        raise ConfigError(
            f"the reward function {name!r} returned {reward}, not a finite number: an agent cannot "
            "learn from it (the step was taken back)"
        )
    return reward
