"""The environment class, its reward functions and rendering."""

from prune_gym.envs.prune_env import PruneEnv
from prune_gym.envs.rewards import REWARDS, RewardContext, get_reward

__all__ = ["REWARDS", "PruneEnv", "RewardContext", "get_reward"]
