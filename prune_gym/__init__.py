"""prune-gym: Gymnasium environments for learning to prune neural networks layer by layer.

Importing the package registers every env id (``prune_gym.ENV_IDS``), so
``gym.make("PruneResNet20Digits-v1")`` works after ``import prune_gym``, and
``gym.make("prune_gym:PruneResNet20Digits-v1")`` works without it.
"""

from prune_gym import errors
from prune_gym.envs import ChannelPruneEnv, PruneEnv, RewardContext
from prune_gym.registration import ENV_IDS
from prune_gym.tasks import TASKS, get_task

__version__ = "0.1.0"

__all__ = ["ENV_IDS", "TASKS", "ChannelPruneEnv", "PruneEnv", "RewardContext", "errors", "get_task", "__version__"]
