"""Tasks: what an environment prunes (a model builder, trained weights, fixed data splits).

``TASKS`` maps each task name to its :class:`Task`; ``get_task`` accepts a task name or an
env id.
"""

from __future__ import annotations

from prune_gym.errors import ConfigError
from prune_gym.io import atomic_save
from prune_gym.tasks.base import (
    Availability,
    MissingResourceError,
    Splits,
    Task,
    cache_dir,
)
from prune_gym.tasks.cifar10 import mobilenetv1_cifar10, resnet32_cifar10, wrn28x8_cifar10
from prune_gym.tasks.digits import DigitsTask
from prune_gym.tasks.har2 import HAR2Task
from prune_gym.tasks.imagenet import mobilenetv2_imagenet, resnet50_imagenet

TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add ``task`` to ``TASKS`` (its name and env id must be new)."""
    if task.name in TASKS or any(t.env_id == task.env_id for t in TASKS.values()):
        raise ConfigError(f"task {task.name!r} / {task.env_id!r} is already registered")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The task with this name (``"resnet20-digits"``) or env id (``"PruneResNet20Digits-v1"``,
    ``"PruneResNet20DigitsChannels-v1"``)."""
    if name in TASKS:
        return TASKS[name]
    for task in TASKS.values():
        if name in (task.env_id, task.env_id.rsplit("-v", 1)[0], task.channel_env_id):
            return task
    known = ", ".join(sorted(TASKS))
    raise ConfigError(f"unknown task {name!r}; known tasks: {known}")


def list_tasks() -> list[Task]:
    return list(TASKS.values())


register_task(DigitsTask())
register_task(HAR2Task())
register_task(resnet50_imagenet())
register_task(mobilenetv2_imagenet())
register_task(resnet32_cifar10())
register_task(wrn28x8_cifar10())
register_task(mobilenetv1_cifar10())

__all__ = [
    "TASKS",
    "Availability",
    "MissingResourceError",
    "Splits",
    "Task",
    "atomic_save",
    "cache_dir",
    "get_task",
    "list_tasks",
    "register_task",
]
