"""One episode of a policy through a prune-gym env, as a result row: the rollout every
workflow shares (the comparison, the search's candidates, ``prune-gym baseline``, the
benchmarks), and the fine-tuning of the pruned model it leaves behind."""

from __future__ import annotations

import copy
import time
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch

from prune_gym.agents.policies import prune_env_of
from prune_gym.agents.report import MethodResult
from prune_gym.channel_export import slim_model
from prune_gym.envs.channel_env import ChannelPruneEnv
from prune_gym.errors import ConfigError
from prune_gym.evaluation import evaluate_accuracy
from prune_gym.finetune import finetune_pruned
from prune_gym.pruning import PrunableLayer, find_prunable_layers

__all__ = ["Finetuned", "finetune_and_test", "run_episode"]


def run_episode(
    policy: Any, env: gym.Env, target: float | None, deterministic: bool = True, method: str = "",
    score_test: bool = True,
) -> MethodResult:
    """Prune with ``policy`` (anything with SB3's ``predict``) for one episode of ``env``.

    A loop of its own rather than SB3's ``evaluate_policy``, which can neither reset with
    ``options`` (the target) nor hand back the last step's ``info`` (the per-layer sparsities
    and test accuracy); the policies work with ``evaluate_policy`` too (a test runs them).

    Args:
        policy: an SB3 agent or a reference policy.
        env: a prune-gym env (``gym.make(...)``), reset here with ``target``.
        target: the episode's target sparsity (None keeps the env's).
        deterministic: passed to ``predict`` (greedy actions for trained agents).
        method: the label of the result.
        score_test: a reported row: score the test split when the env's last step did not (its
            ``evaluate_test`` is off for this split), and keep each sample's correctness on both
            splits (for paired tests and the selection guard). False leaves ``test_accuracy`` NaN
            then (the search's candidates, which select on the reward split).
    """
    options = {"target_sparsity": target} if target is not None else None
    started = time.perf_counter()
    observation, _ = env.reset(options=options)
    episode_return, done, info = 0.0, False, {}
    while not done:
        action, _ = policy.predict(observation, deterministic=deterministic)
        observation, reward, terminated, truncated, info = env.step(action)
        episode_return += float(reward)
        done = terminated or truncated
    prune_env = prune_env_of(env)
    if score_test and "test_accuracy" not in info and prune_env.test_data is not None:  # a report needs it
        info = {**info, "test_accuracy": prune_env.evaluate_test()}
    seconds = time.perf_counter() - started
    correct = prune_env.engine.last_test_correct if "test_accuracy" in info else None
    # Reported rows keep their reward-split correctness too (for the selection guard).
    reward_correct = prune_env.engine.reward_correct().numpy().copy() if score_test else None
    return MethodResult.from_info(
        info, target_sparsity=float(target if target is not None else prune_env.target_sparsity or 0.0),
        test_accuracy=float(info.get("test_accuracy", float("nan"))), seconds=seconds, episode_return=episode_return,
        method=method, action_type=prune_env.action_type,
        test_correct=None if correct is None else correct.numpy().copy(), reward_correct=reward_correct,
    )


class Finetuned(NamedTuple):
    """What :func:`finetune_and_test` measured on the fine-tuned network."""

    test_accuracy: float
    #: Whether each reward-split sample was classified right (for the export pick).
    reward_correct: np.ndarray
    seconds: float


def finetune_and_test(env: gym.Env, epochs: int, seed: int) -> Finetuned:
    """Fine-tune a copy of the env's pruned model (masks held; for a channel env, the physically
    smaller network) and score it on the test split and, per sample, on the reward split. The
    env and its model are not changed."""
    prune_env = prune_env_of(env)
    train_data, test_data = prune_env.train_data, prune_env.test_data
    if train_data is None or test_data is None:
        raise ConfigError("--finetune-epochs needs an env with train and test splits (a task env)")
    started = time.perf_counter()
    if isinstance(prune_env, ChannelPruneEnv):
        # The removed channels are gone from the smaller network: every weight left trains freely.
        model = slim_model(prune_env)
        layers = find_prunable_layers(model)
        masks = [torch.ones_like(layer.weight, dtype=torch.bool) for layer in layers]
    else:
        model = copy.deepcopy(prune_env.model)
        layers = [PrunableLayer(layer.name, model.get_submodule(layer.name)) for layer in prune_env.layers]
        masks = [mask.clone() for mask in prune_env.state.masks]
    config = prune_env.task.recipe("finetune") if prune_env.task is not None else None  # None: the default recipe
    finetune_pruned(model, layers, masks, train_data, epochs, config=config, device=prune_env.device, seed=seed)
    accuracy = evaluate_accuracy(model, test_data, prune_env.device, amp=prune_env.amp)
    reward_correct = prune_env.engine.evaluator.correct(model.to(prune_env.device).eval()).numpy().copy()
    return Finetuned(accuracy, reward_correct, time.perf_counter() - started)
