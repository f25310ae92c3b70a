"""The one place where env ids are generated from the tasks and registered with Gymnasium."""

from __future__ import annotations

import gymnasium as gym

ENTRY_POINT = "prune_gym.envs.prune_env:PruneEnv"


def register_envs() -> list[str]:
    """Register one id per task (``task.env_id``); returns the ids. Safe to call twice."""
    from prune_gym.tasks import list_tasks

    ids = []
    for task in list_tasks():
        if task.env_id not in gym.registry:
            gym.register(
                id=task.env_id,
                entry_point=ENTRY_POINT,
                kwargs={"task": task.name},
                max_episode_steps=task.num_prunable_layers,
            )
        ids.append(task.env_id)
    return ids


ENV_IDS: list[str] = register_envs()
