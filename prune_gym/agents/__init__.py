"""Agents for prune-gym envs: reference policies, the SB3 agent factory, training, rollouts,
the search baseline and the selection guard (the workflows that use them, ``compare`` and
``sweep``, are in ``prune_gym.workflows``).

- :class:`AllocationPolicy` (any method of ``prune_gym.allocation``: Global MP with or
  without Minimum Threshold, LAMP, ERK, uniform, uniform+, random), with the shorthands
  :class:`GlobalMagnitudePolicy` and :class:`UniformMagnitudePolicy`, and
  :class:`RandomPolicy` (random actions): reference policies with SB3's ``predict``
  protocol, so ``evaluate_policy`` treats them like trained agents.
- :func:`make_agent`: a Stable-Baselines3 agent (DQN by default, PuRL-style) with
  hyperparameters from rl-zoo3 style YAML files.
- :func:`train_agent`: training with a progress bar, TensorBoard logs, checkpoints, Ctrl-C
  saving and resuming.
"""

from prune_gym.agents.factory import (
    ALGORITHMS,
    algorithms_for,
    default_timesteps,
    load_hyperparams,
    make_agent,
)
from prune_gym.agents.policies import (
    AllocationPolicy,
    GlobalMagnitudePolicy,
    RandomPolicy,
    ReferencePolicy,
    UniformMagnitudePolicy,
)
from prune_gym.agents.run_folder import load_agent
from prune_gym.agents.training import TargetSamplingWrapper, train_agent

__all__ = [
    "ALGORITHMS",
    "AllocationPolicy",
    "GlobalMagnitudePolicy",
    "RandomPolicy",
    "ReferencePolicy",
    "TargetSamplingWrapper",
    "UniformMagnitudePolicy",
    "algorithms_for",
    "default_timesteps",
    "load_agent",
    "load_hyperparams",
    "make_agent",
    "train_agent",
]
