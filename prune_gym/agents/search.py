"""Search at equal cost: a black-box local search around an allocation method's per-layer sparsities.

The first question a reviewer asks of a learned pruning policy is whether plain search, given
the same budget, would have done as well. :func:`local_search` is that reference: it starts
from an allocation method's per-layer sparsities at the target (Global MP's by default; the
comparison starts it where the agent's actions are centred, the env's ``reference``), and each
episode perturbs the best
allocation so far with Gaussian noise in logit space, plays it through the env (which projects
it onto the exact target and re-calibrates BatchNorm as for any policy) and keeps it if its
reward-split accuracy is higher. The test split is never read. Its budget is counted in env
episodes, the unit an agent's training spends, so ``prune-gym compare`` gives it the agent's
number of training episodes (split evenly over the targets, as the agent's were drawn).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prune_gym.agents.policies import RecipePolicy, method_of, prune_env_of
from prune_gym.agents.report import MethodResult
from prune_gym.agents.rollout import run_episode
from prune_gym.errors import ConfigError

__all__ = ["DEFAULT_STEP", "SearchResult", "local_search"]

#: Standard deviation of the perturbation of each layer's sparsity, in logit space.
DEFAULT_STEP = 0.3
_EPSILON = 1e-4


@dataclass
class SearchResult:
    """What a :func:`local_search` at one target found (reward split only)."""

    #: The record of the best episode (its per-layer sparsities, reward-split accuracy, ...;
    #: its test accuracy NaN: never scored).
    best: MethodResult
    episodes: int
    #: The best reward-split accuracy after each episode (non-decreasing).
    best_so_far: list[float] = field(default_factory=list)


def _logit(values: np.ndarray) -> np.ndarray:
    values = np.clip(values, _EPSILON, 1.0 - _EPSILON)
    return np.log(values / (1.0 - values))


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values))


def local_search(env: Any, target: float, episodes: int, seed: int = 0, step: float = DEFAULT_STEP,
                 start: str = "global-mp") -> SearchResult:
    """Search ``episodes`` env episodes for the per-layer sparsities with the best reward-split
    accuracy at ``target``, starting from the allocation method ``start`` (the first episode
    plays it as it is).

    Args:
        env: a prune-gym env with continuous absolute actions (every allocation is played exactly).
        target: the overall sparsity; the env's projection keeps every episode at it.
        episodes: the budget in env episodes (>= 1).
        seed: seeds the perturbations.
        step: standard deviation of the perturbation in logit space.
        start: a name of the env's ``allocation_methods`` (Global MP by default).
    """
    prune_env = prune_env_of(env)
    if prune_env.action_type != "continuous" or prune_env.action_mode != "absolute":
        raise ConfigError(
            "local_search plays exact allocations: give it an env with action_type='continuous' and action_mode='absolute'"
        )
    method_of(env, start)  # an unknown name fails here, before any episode
    if isinstance(episodes, bool) or not isinstance(episodes, int | np.integer) or episodes < 1:
        raise ConfigError(f"episodes must be a whole number >= 1, got {episodes!r}")
    names = prune_env.layer_names()
    rng = np.random.default_rng(seed)

    def play(sparsities: np.ndarray) -> MethodResult:
        policy = RecipePolicy(env, dict(zip(names, sparsities.tolist(), strict=True)))
        return run_episode(policy, env, target, score_test=False, method="local search")  # the reward split only

    def applied(row: MethodResult) -> np.ndarray:
        return np.array([row.layer_sparsities[name] for name in names])

    best = play(np.asarray(prune_env.allocation_sparsities(start, target), dtype=np.float64))
    history = [best.reward_accuracy]
    for _ in range(int(episodes) - 1):
        candidate = play(_sigmoid(_logit(applied(best)) + step * rng.standard_normal(len(names))))
        if candidate.reward_accuracy > best.reward_accuracy:
            best = candidate
        history.append(best.reward_accuracy)
    return SearchResult(best, int(episodes), history)
