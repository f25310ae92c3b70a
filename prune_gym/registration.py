"""The one place where env ids are generated from the tasks and registered with Gymnasium.

Each task has one id per version (``task.env_id`` is the newest): ``-v1`` takes the default
dynamics, ``-v0`` keeps v0's absolute sparsity levels for scripts and results made with it
(see the Version History in ``PruneEnv``'s docstring). Each convolutional task also has a
channel-pruning id (``task.channel_env_id``, e.g. ``PruneResNet20DigitsChannels-v1``:
``ChannelPruneEnv``).
"""

from __future__ import annotations

import gymnasium as gym

from prune_gym.tasks import list_tasks

ENTRY_POINT = "prune_gym.envs.prune_env:PruneEnv"
#: The channel-pruning envs' entry point (one id per convolutional task, ``task.channel_env_id``).
CHANNEL_ENTRY_POINT = "prune_gym.envs.channel_env:ChannelPruneEnv"
#: The kwargs that give an older version its dynamics, by version suffix.
OLDER_VERSIONS = {"v0": {"action_mode": "absolute"}}


def register_envs() -> list[str]:
    """Register one id per task (``task.env_id``); returns the ids. Safe to call twice."""
    ids = []
    for task in list_tasks():
        base = task.env_id.rsplit("-v", 1)[0]
        # The task's env defaults go into the spec, so gym.spec(id).kwargs and pprint_registry show them.
        defaults = dict(task.env_defaults)
        versions = {task.env_id: defaults, **{f"{base}-{v}": {**defaults, **kw} for v, kw in OLDER_VERSIONS.items()}}
        for env_id, kwargs in versions.items():
            if env_id not in gym.registry:
                gym.register(
                    id=env_id,
                    entry_point=ENTRY_POINT,
                    kwargs={"task": task.name, **kwargs},
                    max_episode_steps=task.num_prunable_layers,
                )
        ids.append(task.env_id)
        if task.channel_env_id is not None and task.channel_env_id not in gym.registry:
            # No max_episode_steps: the episode length is the number of channel groups, known
            # once the model is traced; the env ends its episodes itself.
            gym.register(id=task.channel_env_id, entry_point=CHANNEL_ENTRY_POINT, kwargs={"task": task.name, **defaults})
        if task.channel_env_id is not None:
            ids.append(task.channel_env_id)
    return ids


def is_channel_env(env_id: str) -> bool:
    """Whether ``env_id`` is a registered channel-pruning env."""
    return env_id in gym.registry and gym.spec(env_id).entry_point == CHANNEL_ENTRY_POINT


ENV_IDS: list[str] = register_envs()
