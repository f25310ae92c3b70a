"""The one place where env ids are generated from the tasks and registered with Gymnasium.

Each task has one id per version (``task.env_id`` is the newest): ``-v1`` takes the default
dynamics, ``-v0`` keeps v0's absolute sparsity levels for scripts and results made with it
(see the Version History in ``PruneEnv``'s docstring).
"""

from __future__ import annotations

import gymnasium as gym

from prune_gym.tasks import list_tasks

ENTRY_POINT = "prune_gym.envs.prune_env:PruneEnv"
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
    return ids


ENV_IDS: list[str] = register_envs()
