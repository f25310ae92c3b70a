"""Gymnasium's and Stable-Baselines3's env checkers on every registered id.

The large tasks run in synthetic mode (random weights and data) at tiny input sizes: the
checkers test the env's mechanics, not the model's accuracy. Any warning fails the test unless
it is on the allow-list below, with its reason.
"""

from __future__ import annotations

import warnings

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import prune_gym

#: (message fragment, why it is acceptable). Empty: no warning is tolerated today.
ALLOWED_WARNINGS: list[tuple[str, str]] = []

#: Tiny per-sample input shapes for synthetic mode (a CPU runs each check in seconds).
TINY_INPUT = {
    "resnet50-imagenet": (3, 32, 32),
    "mobilenetv2-imagenet": (3, 32, 32),
    "resnet32-cifar10": (3, 16, 16),
    "wrn28x8-cifar10": (3, 8, 8),
    "mobilenetv1-cifar10": (3, 32, 32),
    "fastgrnn-har2": (8, 9),
}


def make_kwargs(task) -> dict:
    if task.name == "resnet20-digits":
        return {}
    return {"synthetic": True, "input_shape": TINY_INPUT[task.name], "synthetic_samples": 4, "device": "cpu"}


def test_every_task_has_a_tiny_input_or_is_the_default():
    for task in prune_gym.TASKS.values():
        assert task.name == "resnet20-digits" or task.name in TINY_INPUT, f"add {task.name} to TINY_INPUT"


@pytest.mark.parametrize("env_id", prune_gym.ENV_IDS)
@pytest.mark.parametrize("action_type", ["discrete", "continuous"])
def test_env_checkers_pass_without_warnings(env_id, action_type, digits_model_state):
    task = prune_gym.get_task(env_id)
    env = gym.make(env_id, action_type=action_type, **make_kwargs(task))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped, skip_render_check=True)
        sb3_check_env(env.unwrapped)
    unexpected = [
        str(w.message) for w in caught if not any(fragment in str(w.message) for fragment, _ in ALLOWED_WARNINGS)
    ]
    assert unexpected == []
    if env_id == task.channel_env_id:  # one step per channel group, fewer than the layers
        assert 0 < env.unwrapped.num_layers < task.num_prunable_layers
    else:
        assert env.unwrapped.num_layers == task.num_prunable_layers
    # Every task's model comes in stages (the task supplies them): steps re-evaluate from the
    # changed stage on, never the whole network.
    assert env.unwrapped.evaluator.stages is not None
    if task.name != "resnet20-digits":
        _, info = env.reset(seed=0)
        assert info["synthetic"] is True
