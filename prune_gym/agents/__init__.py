"""Agents for prune-gym envs: reference policies, the SB3 agent factory, training, comparison.

- :class:`GlobalMagnitudePolicy` (optionally with Minimum Threshold),
  :class:`UniformMagnitudePolicy`, :class:`RandomPolicy`: reference policies with SB3's
  ``predict`` protocol, so ``evaluate_policy`` treats them like trained agents.
- :func:`make_agent`: a Stable-Baselines3 agent (DQN by default, PuRL-style) with
  hyperparameters from rl-zoo3 style YAML files.
- :func:`train_agent`: training with a progress bar, TensorBoard logs, checkpoints, Ctrl-C
  saving and resuming.
- :func:`prune_gym.agents.compare.compare`: the agent against Global MP, Global MP with MT,
  uniform and random at matched sparsities (``prune-gym compare``).
- :func:`sweep` / :func:`resume_sweep`: the comparison over algorithms and seeds as Ray Tune
  trials, aggregated (``prune-gym sweep``; needs the ``[ray]`` extra only when called).
"""

from prune_gym.agents.factory import (
    ALGORITHMS,
    algorithms_for,
    default_timesteps,
    load_hyperparams,
    make_agent,
)
from prune_gym.agents.policies import (
    GlobalMagnitudePolicy,
    RandomPolicy,
    ReferencePolicy,
    UniformMagnitudePolicy,
)
from prune_gym.agents.sweeps import resume_sweep, sweep
from prune_gym.agents.training import TargetSamplingWrapper, load_agent, train_agent

__all__ = [
    "ALGORITHMS",
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
    "resume_sweep",
    "sweep",
    "train_agent",
]
