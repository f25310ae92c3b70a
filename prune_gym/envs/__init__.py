"""The environment classes (weights: PruneEnv; channels: ChannelPruneEnv), their reward
functions and rendering."""

from prune_gym.envs.channel_env import ChannelPruneEnv
from prune_gym.envs.prune_env import PruneEnv
from prune_gym.envs.rewards import REWARDS, RewardContext, get_reward

__all__ = ["REWARDS", "ChannelPruneEnv", "PruneEnv", "RewardContext", "get_reward"]
