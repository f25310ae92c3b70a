"""The envs' settings, checked before anything loads, and the task they load.

Every argument of :class:`prune_gym.envs.prune_env.PruneEnv` (and of the channel env) is
validated here first (a bad one is a ``ConfigError`` naming it and the fix, with nothing loaded
or changed); the engine's settings are resolved once into an :class:`EngineConfig` (the task's
defaults, the device, ``compile="auto"``); then the task's model and splits are loaded.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from prune_gym.errors import ConfigError
from prune_gym.evaluation import resolve_device
from prune_gym.tasks.base import Splits, Task

__all__ = [
    "EngineConfig", "EngineView", "check_data_settings", "check_settings", "check_step", "engine_config", "load_task",
    "model_and_splits", "refuse_torch_pruned", "reset_target", "test_at_episode_end",
]


@dataclass(frozen=True)
class EngineConfig:
    """How an engine evaluates the network and what follows each pruning step, resolved once
    from the env's kwargs by :func:`engine_config` (the engines take it as it is)."""

    device: torch.device
    #: Autocast on CUDA (the task's choice when the env's ``amp`` is None).
    amp: bool
    #: Evaluation through ``torch.compile`` (``"auto"`` resolved for the device and the task).
    compile: bool
    batch_size: int = 1024
    channels_last: bool = True
    cache_activations: bool = True
    exclude_layers: tuple[str, ...] = ()
    bn_recalibration_batches: int = 0
    finetune_steps: int = 0
    finetune_lr: float = 0.01
    #: Seeds the per-step fine-tuning's batches (the env's ``split_seed``).
    seed: int = 0

    def evaluator_options(self) -> dict:
        """The keyword arguments every :class:`~prune_gym.evaluation.Evaluator` of the engine shares."""
        return {"batch_size": self.batch_size, "amp": self.amp, "channels_last": self.channels_last,
                "compile": self.compile}


def _read_only(owner: str, name: str, doc: str) -> property:
    """A read-only attribute that is ``self.<owner>.<name>``."""
    return property(lambda self: getattr(getattr(self, owner), name), doc=doc)


class EngineView:
    """What both envs show of their engine (``self.engine``, built from ``self.config``): the
    resolved settings, read-only, and the test split's evaluation."""

    config: EngineConfig
    engine: Any
    task: Task | None

    def _build_engine(self, engine_type: type, model, reward_data, test_data, train_data, *, data_dir, weights,
                      split_seed, synthetic, input_shape, synthetic_samples) -> None:
        """What both envs do once every kwarg is checked and ``self.task`` / ``self.config`` are
        resolved: load the model and splits (the task's, or a copy of the model given), move the
        model to the device, and build the engine (``engine_type``) from ``self.config``."""
        model, reward_data, test_data, train_data = model_and_splits(
            self.task, model, reward_data, test_data, train_data, data_dir, weights, split_seed, synthetic, input_shape,
            synthetic_samples, type(self).__name__)
        trains = [name for name in ("bn_recalibration_batches", "finetune_steps") if getattr(self.config, name)]
        if trains and train_data is None:
            raise ConfigError(f"{' and '.join(trains)} need{'s' if len(trains) == 1 else ''} train_data= (or a task) "
                              "to draw its batches from")
        self.model = model.to(self.device).eval()
        self.engine = engine_type(self.model, reward_data, test_data, train_data, self.config,
                                  stages=self.task.model_stages(self.model) if self.task is not None else None)
        self.train_data, self.test_data = train_data, test_data

    def evaluate_test(self) -> float:
        """Test-split accuracy of the model as it is now (pruned or dense)."""
        return self.engine.test_accuracy()

    def measure_dense_test_accuracy(self) -> float:
        """Test accuracy of the dense model (measured once, then the pruned state is put back)."""
        return self.engine.measure_dense_test_accuracy()

    dense_test_accuracy = _read_only("engine", "dense_test_accuracy",
                                     "The dense model's test accuracy once measured (every episode's last step does).")
    calibrator = _read_only("engine", "calibrator", "The BatchNorm re-calibration after each step (None when off).")
    device = _read_only("config", "device", "Where the pruned model runs (``device='auto'`` resolved).")
    amp = _read_only("config", "amp", "Whether evaluation on CUDA uses autocast (the task's choice when ``amp=None``).")
    compiled = _read_only("config", "compile", "Whether evaluation runs through torch.compile (``compile='auto'`` resolved).")
    bn_recalibration_batches = _read_only("config", "bn_recalibration_batches",
                                          "Batches of train data that re-estimate BatchNorm after each step (0: off).")
    finetune_steps = _read_only("config", "finetune_steps", "Masked fine-tuning steps after each step (0: off).")
    finetune_lr = _read_only("config", "finetune_lr", "The learning rate of those fine-tuning steps.")


def engine_config(task: Task | None, *, device, amp, compile, batch_size, channels_last, cache_activations,
                  exclude_layers, bn_recalibration_batches, finetune_steps=0, finetune_lr=0.01,
                  split_seed=0) -> EngineConfig:
    """The env kwargs an engine reads, checked (``ConfigError`` naming the bad one) and resolved:
    ``bn_recalibration_batches=None`` and ``amp=None`` take the task's defaults, ``device="auto"``
    CUDA when present, ``compile="auto"`` on for CUDA on the tasks whose passes pay the
    compilation back."""
    if bn_recalibration_batches is None:
        bn_recalibration_batches = task.env_defaults.get("bn_recalibration_batches", 0) if task else 0
    for name, value in (("bn_recalibration_batches", bn_recalibration_batches), ("finetune_steps", finetune_steps)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
    if isinstance(finetune_lr, bool) or not isinstance(finetune_lr, int | float | np.number) \
            or not (math.isfinite(finetune_lr) and finetune_lr > 0):
        raise ConfigError(f"finetune_lr must be a finite number > 0, got {finetune_lr!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ConfigError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    if compile not in ("auto", True, False):
        raise ConfigError(f"compile must be 'auto', True or False, got {compile!r}")
    amp = (task.amp if task else True) if amp is None else amp
    for name, value in (("amp", amp), ("channels_last", channels_last), ("cache_activations", cache_activations)):
        if not isinstance(value, bool | np.bool_):  # "false" would pass as True
            raise ConfigError(f"{name} must be True or False, got {value!r}")
    # A single string is one pattern; the patterns themselves are checked with the layers.
    if exclude_layers is None or isinstance(exclude_layers, str):
        exclude_layers = () if exclude_layers is None else (exclude_layers,)
    if not isinstance(exclude_layers, Iterable):
        raise ConfigError(f"exclude_layers must be name patterns, e.g. ['fc', 'layer4.*'], got {exclude_layers!r}")
    device = resolve_device(device)
    compiled = compile if isinstance(compile, bool) else (device.type == "cuda" and task is not None and task.compile_on_cuda)
    return EngineConfig(
        device=device, amp=bool(amp), compile=compiled, batch_size=int(batch_size), channels_last=bool(channels_last),
        cache_activations=bool(cache_activations), exclude_layers=tuple(exclude_layers),
        bn_recalibration_batches=int(bn_recalibration_batches), finetune_steps=int(finetune_steps),
        finetune_lr=float(finetune_lr), seed=int(split_seed),
    )


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


def check_settings(sparsity_weight, render_mode, render_modes) -> None:
    """The reward's and rendering's settings, checked before anything loads."""
    if isinstance(sparsity_weight, bool) or not isinstance(sparsity_weight, int | float | np.number) or not math.isfinite(sparsity_weight):
        raise ConfigError(f"sparsity_weight must be a finite number (the reward's beta), got {sparsity_weight!r}")
    if render_mode is not None and render_mode not in render_modes:
        raise ConfigError(f"render_mode must be one of {render_modes} or None, got {render_mode!r}")


def check_data_settings(evaluate_test, synthetic, synthetic_samples, split_seed, input_shape, weights) -> None:
    """The test evaluation's switch and the data's seeds and shapes, checked before anything loads."""
    if evaluate_test not in (None, True, False):
        raise ConfigError(f"evaluate_test must be True, False or None (only where the test split is on the "
                          f"device), got {evaluate_test!r}")
    if not isinstance(synthetic, bool | np.bool_):  # "false" would pass as True
        raise ConfigError(f"synthetic must be True or False, got {synthetic!r}")
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


def test_at_episode_end(engine, evaluate_test: bool | None) -> bool:
    """Whether each episode's last step scores the test split: ``evaluate_test``, where None means
    only where the test split is held on the device (the engine has one)."""
    evaluator = engine.test_evaluator
    return evaluator is not None and (evaluate_test if evaluate_test is not None else evaluator.resident)


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
