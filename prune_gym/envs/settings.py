"""PruneEnv's settings, checked before anything loads, and the task it loads.

Every argument of :class:`prune_gym.envs.prune_env.PruneEnv` is validated here first (a bad one
is a ``ConfigError`` naming it and the fix, with nothing loaded or changed), then the task's
model and splits are loaded.
"""

from __future__ import annotations

import copy
import math

import numpy as np
from torch import nn

from prune_gym.errors import ConfigError
from prune_gym.tasks.base import Splits, Task

__all__ = [
    "check_data_settings", "check_settings", "check_step", "load_task", "model_and_splits", "refuse_torch_pruned",
    "reset_target",
]


def refuse_torch_pruned(model: nn.Module) -> None:
    """ValueError naming the layers if ``model`` holds ``torch.nn.utils.prune`` reparametrisations:
    their ``weight`` is recomputed from ``weight_orig * weight_mask`` in every forward pass, so
    masks the env writes into ``weight`` would never reach the network."""
    pruned = [name for name, module in model.named_modules()
              if any(hasattr(module, f"{param}_orig") and hasattr(module, f"{param}_mask") for param in ("weight", "bias"))]
    if pruned:
        raise ConfigError(
            f"the model is already pruned with torch.nn.utils.prune (layers {pruned[:5]}"
            + (f" and {len(pruned) - 5} more" if len(pruned) > 5 else "") + "): the env's masks would never reach its "
            "forward pass. Make the masks permanent first: torch.nn.utils.prune.remove(module, 'weight') on each "
            "pruned layer, or prune_gym.export.from_torch_prune(model, remove=True)"
        )


def check_settings(sparsity_weight, batch_size, render_mode, render_modes, bn_recalibration_batches, finetune_steps,
                   finetune_lr) -> None:
    """The reward's, batches', rendering's and per-step training's settings, checked before anything loads."""
    if isinstance(sparsity_weight, bool) or not isinstance(sparsity_weight, int | float | np.number) or not math.isfinite(sparsity_weight):
        raise ConfigError(f"sparsity_weight must be a finite number (the reward's beta), got {sparsity_weight!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ConfigError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    if render_mode is not None and render_mode not in render_modes:
        raise ConfigError(f"render_mode must be one of {render_modes} or None, got {render_mode!r}")
    for name, value in (("bn_recalibration_batches", bn_recalibration_batches), ("finetune_steps", finetune_steps)):
        if not isinstance(value, int | np.integer) or value < 0:
            raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
    if isinstance(finetune_lr, bool) or not isinstance(finetune_lr, int | float | np.number) \
            or not (math.isfinite(finetune_lr) and finetune_lr > 0):
        raise ConfigError(f"finetune_lr must be a finite number > 0, got {finetune_lr!r}")


def check_data_settings(amp, channels_last, cache_activations, compile, evaluate_test, synthetic, synthetic_samples,
                        split_seed, input_shape, weights) -> None:
    """The switches, seeds and shapes of the data and evaluation, checked before anything loads."""
    if compile not in ("auto", True, False):
        raise ConfigError(f"compile must be 'auto', True or False, got {compile!r}")
    if evaluate_test not in (None, True, False):
        raise ConfigError(f"evaluate_test must be True, False or None (only where the test split is on the "
                          f"device), got {evaluate_test!r}")
    for name, value in (("amp", amp), ("channels_last", channels_last), ("cache_activations", cache_activations),
                        ("synthetic", synthetic)):
        if not isinstance(value, bool | np.bool_):  # "false" would pass as True
            raise ConfigError(f"{name} must be True or False, got {value!r}")
    if isinstance(synthetic_samples, bool) or not isinstance(synthetic_samples, int | np.integer) or synthetic_samples < 1:
        raise ConfigError(f"synthetic_samples must be a whole number >= 1, got {synthetic_samples!r}")
    if isinstance(split_seed, bool) or not isinstance(split_seed, int | np.integer):
        raise ConfigError(f"split_seed must be a whole number (it fixes the data splits), got {split_seed!r}")
    if input_shape is not None and (isinstance(input_shape, str) or not all(
            isinstance(d, int | np.integer) and not isinstance(d, bool) and d > 0 for d in input_shape)):
        raise ConfigError(f"input_shape must be positive whole numbers, e.g. (3, 32, 32), got {input_shape!r}")
    if synthetic and weights is not None:
        raise ConfigError("weights= has no effect with synthetic=True (random weights): pass one or the other")


def load_task(task: Task, data_dir, weights, split_seed, synthetic, input_shape, synthetic_samples) -> tuple[nn.Module, Splits]:
    """The task's trained model and fixed splits (random weights and data with ``synthetic``)."""
    if synthetic:
        model = task.synthetic_model(seed=split_seed)
        splits = task.synthetic_splits(
            input_shape=tuple(input_shape) if input_shape else None,
            sizes=(int(synthetic_samples),) * 3,
            seed=split_seed,
        )
        return model, splits
    if input_shape is not None:
        raise ConfigError("input_shape only applies with synthetic=True")
    model = task.load_model(weights) if weights is not None else task.load_model()
    splits = task.load_splits(data_dir, seed=split_seed) if data_dir is not None else task.load_splits(seed=split_seed)
    return model, splits


def model_and_splits(task: Task | None, model, reward_data, test_data, train_data, data_dir, weights, split_seed,
                     synthetic, input_shape, synthetic_samples, env_name: str = "PruneEnv"):
    """``(model, reward_data, test_data, train_data)`` an env works on: the task's (loaded), or a
    copy of the model given with its splits (the user's model stays as it was given)."""
    if task is not None:
        if model is not None or reward_data is not None or test_data is not None:
            raise ConfigError("pass either task=... or model=/reward_data=/test_data=, not both")
        model, splits = load_task(task, data_dir, weights, split_seed, synthetic, input_shape, synthetic_samples)
        return model, splits.reward, splits.test, train_data if train_data is not None else splits.train
    if model is None or reward_data is None:
        raise ConfigError(
            f"{env_name} needs task=<name> (see prune_gym.tasks.TASKS) or model= and reward_data= "
            "(plus test_data= for the final test accuracy)"
        )
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    refuse_torch_pruned(model)
    return copy.deepcopy(model), reward_data, test_data, train_data


def reset_target(seed, options, current, check_target):
    """The target of the episodes a ``reset(seed=, options=)`` starts (``current`` unless
    ``options={"target_sparsity": t}``, checked with ``check_target``), after checking the seed and
    the options: a rejected reset leaves the env as it was."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**64):
        raise ConfigError(f"seed must be None or a whole number in [0, 2**64), got {seed!r}")
    if options is not None and not isinstance(options, dict):
        raise ConfigError(f"options must be a dict such as {{'target_sparsity': 0.9}}, got {options!r}")
    options = dict(options or {})
    unknown = sorted(set(options) - {"target_sparsity"})
    if unknown:
        raise ConfigError(f"unknown reset options {unknown}: only 'target_sparsity' is accepted")
    return check_target(options["target_sparsity"]) if "target_sparsity" in options else current


def check_step(step: int | None, steps: int, unit: str) -> int:
    """The index the next step prunes, or RuntimeError when there is none (before ``reset``,
    or after the last ``unit``)."""
    if step is None:
        raise RuntimeError("call reset() before step()")
    if step >= steps:
        raise RuntimeError(f"the episode is over (every {unit} is pruned): call reset() to start a new one")
    return step


def episode_end_info(env, layer_sparsities: dict[str, float]) -> dict:
    """What the last step's ``info`` adds in both envs: each unit's share removed, the dense
    reward-split accuracy, whether the data is synthetic, and the test accuracies (pruned and
    dense) when the env scores the test split at the end."""
    info = {"layer_sparsities": layer_sparsities, "dense_reward_accuracy": env.dense_reward_accuracy,
            "synthetic": env.synthetic}
    if env.evaluate_test_at_end:
        info["test_accuracy"] = env.evaluate_test()
        info["dense_test_accuracy"] = env.measure_dense_test_accuracy()
    return info
