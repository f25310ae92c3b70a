"""Build a Stable-Baselines3 agent for a prune-gym env, with hyperparameters from YAML files.

The files in ``prune_gym/agents/hyperparams/<algo>.yml`` follow rl-zoo3's format: one top-level
entry per env id (or ``default``), each holding ``n_timesteps``, ``policy`` and the keyword
arguments of the algorithm. ``policy_kwargs`` may be a dict or a string such as
``"dict(net_arch=[64, 64], activation_fn=nn.ReLU)"`` (parsed safely, never ``eval``-ed), and a
learning rate (or PPO ``clip_range``) may be ``"lin_3e-4"`` for a linear decay to 0, as in
rl-zoo3. ``n_envs`` (as in rl-zoo3: that many envs step in parallel, one process each) and
one prune-gym extension, ``env_kwargs`` (the ``gym.make`` kwargs of the agent's env that the
settings were tuned with, e.g. ``n_actions``), are applied by ``train_agent`` and the
comparison when they build the env (kwargs given explicitly win); ``make_agent`` gets a ready
env and leaves it as it is.

Example::

    env = gym.make("PruneResNet20Digits-v1")
    agent = make_agent(env, "dqn")            # PuRL-style DQN defaults
    agent.learn(total_timesteps=default_timesteps("dqn", env))
"""

from __future__ import annotations

import ast
import copy
import functools
import os
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from stable_baselines3 import A2C, DDPG, DQN, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv
from torch import nn

from prune_gym.agents.policies import prune_env_of
from prune_gym.errors import ConfigError, MissingResourceError

__all__ = [
    "ALGORITHMS",
    "algo_name",
    "algorithms_for",
    "check_algo",
    "default_timesteps",
    "env_id_of",
    "env_kwargs_from_hyperparams",
    "load_hyperparams",
    "make_agent",
    "parse_policy_kwargs",
]

#: Every supported algorithm: its SB3 class and the action types it can act in.
ALGORITHMS: dict[str, tuple[type[BaseAlgorithm], tuple[str, ...]]] = {
    "dqn": (DQN, ("discrete",)),
    "ppo": (PPO, ("discrete", "continuous")),
    "a2c": (A2C, ("discrete", "continuous")),
    "sac": (SAC, ("continuous",)),
    "td3": (TD3, ("continuous",)),
    "ddpg": (DDPG, ("continuous",)),
}

#: rl-zoo3 keys that configure its own training script, not the algorithm: the factory builds
#: one env exactly as given, so it refuses them rather than silently ignoring them.
_ZOO_ONLY_KEYS = ("normalize", "frame_stack", "env_wrapper", "vec_env_wrapper", "callback", "monitor_kwargs")

#: Names a ``policy_kwargs`` string may use for torch modules (``nn.ReLU``, ``th.nn.Tanh``...).
_MODULE_PREFIXES = {("nn",), ("th", "nn"), ("torch", "nn")}


def algorithms_for(action_type: str) -> list[str]:
    """The algorithms that can act in an env with this ``action_type``."""
    return [name for name, (_, types) in ALGORITHMS.items() if action_type in types]


def algo_name(algo: str) -> str:
    """The algorithm's name as ``ALGORITHMS`` keys it (lower case); ValueError naming the choices."""
    name = str(algo).lower()
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {algo!r}: choose one of {', '.join(ALGORITHMS)}")
    return name


def check_algo(algo: str, action_type: str) -> type[BaseAlgorithm]:
    name = algo_name(algo)
    cls, types = ALGORITHMS[name]
    if action_type not in types:
        needed = types[0]
        raise ConfigError(
            f"{name.upper()} needs {' or '.join(types)} actions but the env has action_type={action_type!r}: "
            f"make the env with action_type={needed!r} (gym.make(..., action_type={needed!r}) or "
            f"--action-type {needed}), or pick one of {', '.join(algorithms_for(action_type))}"
        )
    return cls


def env_id_of(env: Any) -> str | None:
    """The registered id of ``env`` (a gym env or a vectorised env of them), or None."""
    if isinstance(env, VecEnv) and not hasattr(env, "envs"):  # sub-envs in other processes
        spec = env.get_attr("spec", indices=[0])[0]
    else:
        inner = env.envs[0] if hasattr(env, "envs") and env.envs else env
        spec = getattr(inner, "spec", None)
    return spec.id if spec is not None else None


def _action_type_of(env: Any) -> str:
    if isinstance(env, VecEnv) and not hasattr(env, "envs"):  # e.g. SubprocVecEnv
        return env.get_attr("action_type", indices=[0])[0]
    return prune_env_of(env).action_type


# ------------------------------------------------------------------------------------------------
# Hyperparameter files


def _hyperparams_file(algo: str) -> Path:
    return Path(str(resources.files("prune_gym.agents") / "hyperparams" / f"{algo.lower()}.yml"))


def _read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MissingResourceError(f"hyperparameter file {path} does not exist (pass an rl-zoo3 style YAML file)")
    with path.open() as handle:
        data = yaml.safe_load(handle)
    if not isinstance(data, dict):
        raise ConfigError(f"hyperparameter file {path} must map env ids (or 'default') to settings")
    return data


def _entry(data: Mapping[str, Any], env_id: str | None, source: str) -> dict[str, Any]:
    """The entry for ``env_id``; a file with a single entry is used whatever its key."""
    if env_id is not None and env_id in data:
        entry = data[env_id]
    elif "default" in data:
        entry = data["default"]
    elif len(data) == 1:
        entry = next(iter(data.values()))
    else:
        raise ConfigError(f"{source} has no entry for {env_id!r} and no 'default' entry; keys: {sorted(data)}")
    if not isinstance(entry, dict):
        raise ConfigError(f"{source}: the entry for {env_id!r} must be a mapping of settings")
    return dict(entry)


def load_hyperparams(
    algo: str = "dqn",
    env_id: str | None = None,
    hyperparams: str | os.PathLike | Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The settings for ``algo`` on ``env_id``, as a fresh dict.

    Args:
        algo: algorithm name (``ALGORITHMS``).
        env_id: the env id to look up; falls back to the file's ``default`` entry.
        hyperparams: None for the shipped defaults; a path to an rl-zoo3 style YAML file; or a
            dict, either of settings (``{"learning_rate": 1e-3}``, applied over the shipped
            defaults) or rl-zoo3 style (``{"PruneResNet20Digits-v1": {...}}``).
    """
    name = algo_name(algo)
    if isinstance(hyperparams, str | os.PathLike):
        return _entry(_read_yaml(hyperparams), env_id, str(hyperparams))
    if hyperparams is not None and not isinstance(hyperparams, Mapping):
        raise ConfigError(f"hyperparams must be None, a YAML path or a dict, got {type(hyperparams).__name__}")
    nested = hyperparams and all(isinstance(v, Mapping) for v in hyperparams.values()) and "policy_kwargs" not in hyperparams
    if nested:
        return copy.deepcopy(_entry(hyperparams, env_id, "the hyperparams dict"))
    merged = _entry(_shipped_hyperparams(name), env_id, f"the shipped {name}.yml")
    merged.update(dict(hyperparams or {}))
    return copy.deepcopy(merged)


def resolve_hyperparams(algo: str, env_id: str, hyperparams: str | os.PathLike | Mapping[str, Any] | None) -> dict[str, Any]:
    """The settings read and checked once, in the rl-zoo3 form ``{env_id: settings}``, which every
    later :func:`load_hyperparams` takes as it is: a workflow resolves them at its start, and no
    file is read or merged again on the way to the agent."""
    return {env_id: load_hyperparams(algo, env_id, hyperparams)}


@functools.cache
def _shipped_hyperparams(algo: str) -> dict[str, Any]:
    """The shipped ``<algo>.yml``, parsed once per process (callers copy what they take)."""
    return _read_yaml(_hyperparams_file(algo))


def default_timesteps(algo: str = "dqn", env: Any = None, hyperparams: Any = None) -> int:
    """``n_timesteps`` of the settings ``make_agent`` would use (the training budget)."""
    settings = load_hyperparams(algo, env_id_of(env) if env is not None else None, hyperparams)
    if "n_timesteps" not in settings:
        raise ConfigError(f"the {algo} settings have no n_timesteps: add one or pass the number of timesteps")
    return int(float(settings["n_timesteps"]))


def env_kwargs_from_hyperparams(algo: str = "dqn", env_id: str | None = None, hyperparams: Any = None) -> dict[str, Any]:
    """The ``env_kwargs`` of the settings (the agent's env as they were tuned), or ``{}``."""
    env_kwargs = load_hyperparams(algo, env_id, hyperparams).get("env_kwargs") or {}
    if not isinstance(env_kwargs, Mapping):
        raise ConfigError(f"env_kwargs in the {algo} settings must be a mapping of gym.make kwargs, got {env_kwargs!r}")
    return dict(env_kwargs)


# ------------------------------------------------------------------------------------------------
# Safe parsing of rl-zoo3 strings


def parse_policy_kwargs(value: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """``policy_kwargs`` from a dict or an rl-zoo3 string like ``"dict(net_arch=[64, 64])"``.

    The string is parsed, not evaluated: it may hold ``dict(...)`` calls, dict/list/tuple
    literals, numbers, strings, booleans, None, and torch module classes written as ``nn.X``
    (or ``th.nn.X`` / ``torch.nn.X``).
    """
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    if not isinstance(value, str):
        raise ConfigError(f"policy_kwargs must be a dict or a string, got {type(value).__name__}")
    try:
        tree = ast.parse(value.strip(), mode="eval")
    except SyntaxError as error:
        raise ConfigError(f"policy_kwargs {value!r} is not a valid expression: {error.msg}") from None
    result = _literal(tree.body, value)
    if not isinstance(result, dict):
        raise ConfigError(f"policy_kwargs {value!r} must describe a dict, e.g. \"dict(net_arch=[64, 64])\"")
    return result


def _literal(node: ast.AST, source: str) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_literal(node.operand, source)
    if isinstance(node, ast.List):
        return [_literal(item, source) for item in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_literal(item, source) for item in node.elts)
    if isinstance(node, ast.Dict):
        return {_literal(k, source): _literal(v, source) for k, v in zip(node.keys, node.values, strict=True)}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        return {kw.arg: _literal(kw.value, source) for kw in node.keywords}
    if isinstance(node, ast.Attribute):
        parts = []
        inner: ast.AST = node
        while isinstance(inner, ast.Attribute):
            parts.append(inner.attr)
            inner = inner.value
        if isinstance(inner, ast.Name):
            parts.append(inner.id)
            parts.reverse()
            prefix, attr = tuple(parts[:-1]), parts[-1]
            module = getattr(nn, attr, None)
            if prefix in _MODULE_PREFIXES and isinstance(module, type) and issubclass(module, nn.Module):
                return module
    raise ConfigError(
        f"policy_kwargs {source!r}: unsupported expression {ast.unparse(node)!r} (use dict(...), lists, "
        f"numbers, strings and nn.<Module> names only)"
    )


def _linear_schedule(initial: float) -> Callable[[float], float]:
    def schedule(progress_remaining: float) -> float:
        return progress_remaining * initial

    return schedule


def _schedule(value: Any, key: str) -> Any:
    if isinstance(value, str):
        if value.startswith("lin_"):
            return _linear_schedule(float(value[len("lin_") :]))
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key} {value!r}: give a number or 'lin_<number>' for a linear decay") from None
    return value


def _algorithm_kwargs(settings: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    settings = dict(settings)
    settings.pop("n_timesteps", None)
    # Applied where the env is built (train_agent, compare): make_agent gets a ready env.
    settings.pop("env_kwargs", None)
    settings.pop("n_envs", None)
    refused = [key for key in _ZOO_ONLY_KEYS if key in settings]
    if refused:
        raise ConfigError(
            f"hyperparameters {refused} configure rl-zoo3's training script, which prune-gym does not use: "
            f"remove them (wrap or vectorise the env yourself before make_agent)"
        )
    policy = settings.pop("policy", "MlpPolicy")
    if "policy_kwargs" in settings:
        settings["policy_kwargs"] = parse_policy_kwargs(settings["policy_kwargs"])
    for key in ("learning_rate", "clip_range", "clip_range_vf"):
        if key in settings:
            settings[key] = _schedule(settings[key], key)
    if isinstance(settings.get("train_freq"), list):
        settings["train_freq"] = tuple(settings["train_freq"])
    return policy, settings


def _action_noise(settings: dict[str, Any], env: Any) -> None:
    """rl-zoo3's ``noise_type``/``noise_std`` for TD3/DDPG/SAC, turned into an action-noise object."""
    noise_type = settings.pop("noise_type", None)
    noise_std = float(settings.pop("noise_std", 0.1))
    if noise_type is None:
        return
    import numpy as np
    from stable_baselines3.common.noise import NormalActionNoise, OrnsteinUhlenbeckActionNoise

    size = env.action_space.shape[0]
    if noise_type == "normal":
        settings["action_noise"] = NormalActionNoise(np.zeros(size), noise_std * np.ones(size))
    elif noise_type == "ornstein-uhlenbeck":
        settings["action_noise"] = OrnsteinUhlenbeckActionNoise(np.zeros(size), noise_std * np.ones(size))
    else:
        raise ConfigError(f"noise_type {noise_type!r}: use 'normal' or 'ornstein-uhlenbeck'")


# ------------------------------------------------------------------------------------------------
# The factory


def make_agent(
    env: Any,
    algo: str = "dqn",
    hyperparams: str | os.PathLike | Mapping[str, Any] | None = None,
    seed: int | None = 0,
    tensorboard_log: str | os.PathLike | None = None,
    verbose: int = 0,
    device: str = "cpu",
) -> BaseAlgorithm:
    """A fresh Stable-Baselines3 agent for a prune-gym env.

    Args:
        env: the env to train in (``gym.make(...)``, possibly wrapped, or a ``DummyVecEnv``).
        algo: ``"dqn"`` (default, PuRL-style; discrete actions), ``"ppo"``, ``"a2c"`` (either
            action type), ``"sac"``, ``"td3"``, ``"ddpg"`` (continuous actions).
        hyperparams: None for the shipped defaults (``prune_gym/agents/hyperparams/<algo>.yml``,
            the entry for the env id or ``default``), a path to an rl-zoo3 style YAML file, or
            a dict (see :func:`load_hyperparams`).
        seed: seeds the agent (its network, exploration and replay sampling).
        tensorboard_log: folder for TensorBoard logs (None: no logs).
        verbose: SB3 verbosity (0 silent, 1 info).
        device: device of the agent's networks. The default is the CPU because the policy is a
            small MLP, for which a GPU is slower; the env keeps its own device for the model
            it prunes.

    Raises:
        ValueError: unknown algorithm, an algorithm the env's action type does not allow (the
            message says which ``action_type`` to choose), or malformed hyperparameters.
    """
    cls = check_algo(algo, _action_type_of(env))
    settings = load_hyperparams(algo, env_id_of(env), hyperparams)
    policy, kwargs = _algorithm_kwargs(settings)
    _action_noise(kwargs, env)
    try:
        return cls(
            policy, env, seed=seed, verbose=verbose, device=device,
            tensorboard_log=None if tensorboard_log is None else str(tensorboard_log), **kwargs,
        )
    except TypeError as error:
        # An unknown key in the YAML surfaces as a TypeError from the SB3 constructor.
        raise ConfigError(f"bad {algo} hyperparameters: {error}") from None
