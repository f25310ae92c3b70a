"""Reference policies: Global MP (optionally with Minimum Threshold), uniform and random.

Each policy implements Stable-Baselines3's ``predict(observation, state, episode_start,
deterministic)`` protocol, so ``stable_baselines3.common.evaluation.evaluate_policy`` and the
comparison workflow run them exactly like trained agents, through the same environment. They
are stateless: the layer to prune is read from the observation's ``position`` feature and the
target from its ``target_sparsity`` feature, so one policy serves single observations, batches
from vectorised envs, and targets changed by ``reset(options={"target_sparsity": s})``.

With ``action_type="discrete"`` a policy can only request the nearest sparsity level (the env's
target projection still makes the overall sparsity exact); with ``action_type="continuous"``
it requests its per-layer sparsities exactly. Compare against Global MP through a continuous
env to get Global MP itself, not its quantised version.

Example::

    import gymnasium as gym
    import prune_gym
    from prune_gym.agents import GlobalMagnitudePolicy
    from stable_baselines3.common.evaluation import evaluate_policy

    env = gym.make("PruneResNet20Digits-v1", action_type="continuous", target_sparsity=0.8)
    policy = GlobalMagnitudePolicy(env)
    mean_return, _ = evaluate_policy(policy, env, n_eval_episodes=1)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from prune_gym.allocation import ALLOCATION_METHODS
from prune_gym.envs.channel_env import ChannelPruneEnv
from prune_gym.envs.prune_env import PruneEnv
from prune_gym.errors import ConfigError
from prune_gym.pruning import check_sparsity

__all__ = [
    "AllocationPolicy",
    "GlobalMagnitudePolicy",
    "RandomPolicy",
    "RecipePolicy",
    "ReferencePolicy",
    "REFERENCE_POLICIES",
    "UniformMagnitudePolicy",
    "method_of",
    "prune_env_of",
    "reference_policies",
    "reference_policy",
]

#: The reference policies by name (``prune-gym baseline --policy``, ``export --policy``,
#: ``compare``'s rows): the allocation methods of ``prune_gym.allocation``, in table order.
REFERENCE_POLICIES = tuple(ALLOCATION_METHODS)


def prune_env_of(env: Any) -> PruneEnv | ChannelPruneEnv:
    """The prune-gym env (a :class:`PruneEnv` or a :class:`ChannelPruneEnv`) inside ``env``: a
    (wrapped) Gymnasium env or a ``DummyVecEnv``.

    Raises:
        ValueError: if ``env`` holds no prune-gym env (or is a vectorised env whose sub-envs
            live in other processes, such as ``SubprocVecEnv``).
    """
    inner = env
    if hasattr(env, "envs") and not isinstance(env, gym.Env):  # DummyVecEnv and friends
        if not env.envs:
            raise ConfigError("the vectorised env has no sub-envs")
        inner = env.envs[0]
    unwrapped = getattr(inner, "unwrapped", None)
    if isinstance(unwrapped, PruneEnv | ChannelPruneEnv):
        return unwrapped
    raise ConfigError(
        f"expected a prune-gym env (gym.make('PruneResNet20Digits-v1'), a PruneEnv, or a DummyVecEnv "
        f"of them), got {type(env).__name__}; for a SubprocVecEnv, build the policy with a local "
        f"gym.make(...) of the same env id and kwargs"
    )


def method_of(env: Any, name: str):
    """The allocation method called ``name`` in the registry that applies to ``env``
    (``allocation_methods``: weight rules for PruneEnv, channel rules for ChannelPruneEnv)."""
    methods = prune_env_of(env).allocation_methods
    if name not in methods:
        raise ConfigError(f"unknown allocation method {name!r} for this env: choose one of {', '.join(methods)}")
    return methods[name]


class ReferencePolicy:
    """Base of the reference policies: maps per-layer sparsities to the env's actions.

    Subclasses implement :meth:`layer_sparsities`, the sparsity to request for each
    observation of a batch.
    """

    def __init__(self, env: Any) -> None:
        prune_env = prune_env_of(env)
        self.env = prune_env
        self.num_layers = prune_env.num_layers
        self.action_space = prune_env.action_space
        self.observation_space = prune_env.observation_space
        self.action_type = prune_env.action_type
        self.min_sparsity = prune_env.min_sparsity
        self.max_sparsity = prune_env.max_sparsity
        self.actions = prune_env.actions
        self.levels = None if prune_env.levels is None else np.asarray(prune_env.levels, dtype=np.float64)
        self.features = prune_env.feature_index

    # -- SB3 protocol ----------------------------------------------------------------------------

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """Actions for one observation ``(features,)`` or a batch ``(n_envs, features)``.

        Returns ``(actions, None)`` shaped as SB3 agents return them: a 0-d integer array (one
        observation) or ``(n_envs,)`` integers for discrete actions; ``(1,)`` or ``(n_envs, 1)``
        float32 for continuous actions. ``state``, ``episode_start`` and (except for
        :class:`RandomPolicy`) ``deterministic`` are accepted for the protocol and unused.
        """
        if isinstance(observation, dict):
            raise ConfigError("prune-gym observations are flat vectors; got a dict observation")
        observation = np.asarray(observation, dtype=np.float32)
        single = observation.ndim == 1
        batch = observation[None] if single else observation
        size = len(self.features)
        if batch.ndim != 2 or batch.shape[1] != size:
            raise ConfigError(f"observation must have shape ({size},) or (n_envs, {size}), got {observation.shape}")
        actions = self.actions_for(batch, deterministic)
        return (actions[0] if single else actions), None

    def __call__(self, observation: np.ndarray) -> np.ndarray:
        """Just the action for ``observation`` (handy in a hand-written Gymnasium loop)."""
        return self.predict(observation, deterministic=True)[0]

    # -- helpers -----------------------------------------------------------------------------

    def layer_sparsities(self, observations: np.ndarray, deterministic: bool) -> np.ndarray:
        raise NotImplementedError

    def actions_for(self, observations: np.ndarray, deterministic: bool) -> np.ndarray:
        """The actions for a batch of observations: the policy's sparsities, mapped."""
        sparsities = np.asarray(self.layer_sparsities(observations, deterministic), dtype=np.float64)
        return self.sparsities_to_actions(sparsities, observations)

    def sparsities_to_actions(self, sparsities: np.ndarray, observations: np.ndarray) -> np.ndarray:
        """Vectorised ``PruneEnv.sparsity_to_action`` (nearest level for discrete actions); the
        relative action mode reads each layer's reference sparsity from its observation."""
        references = observations[:, self.features["reference_sparsity"]].astype(np.float64)
        return self.actions.to_actions(sparsities, references)

    def layer_indices(self, observations: np.ndarray) -> np.ndarray:
        """The layer (group) of each observation, from its ``position`` feature."""
        position = observations[:, self.features["position"]]
        return np.clip(np.rint(position * max(self.num_layers - 1, 1)).astype(np.int64), 0, self.num_layers - 1)

    def targets(self, observations: np.ndarray, sparsity: float | None) -> np.ndarray:
        """The target of each observation, or ``sparsity`` where one was given to the policy.

        The observation stores the target as float32: rounding to 6 decimals recovers the
        value the env was given (so Global MP's cache is hit and its sparsities are exact).
        """
        if sparsity is not None:
            return np.full(len(observations), sparsity)
        targets = np.round(observations[:, self.features["target_sparsity"]].astype(np.float64), 6)
        if np.any(targets == 0.0) and self.env.target_sparsity is None:
            raise ConfigError(
                f"{type(self).__name__} needs a target: the env has target_sparsity=None, so pass "
                f"sparsity=... to the policy (or make the env with target_sparsity=...)"
            )
        return targets


class AllocationPolicy(ReferencePolicy):
    """An allocation method of ``prune_gym.allocation`` as a policy: each layer gets the
    sparsity the method gives it on the dense model at the target (Global MP, LAMP, ERK,
    uniform, uniform+, random...).

    Args:
        env: the prune-gym env (or a wrapper / ``DummyVecEnv`` of it) the policy will act in.
        method: a name of ``prune_gym.allocation.ALLOCATION_METHODS``.
        min_threshold: the Minimum Threshold of ``"global-mp+mt"`` (None: the paper's 0.05%).
        sparsity: the overall sparsity to prune to when the env has no target (otherwise the
            target is read from each observation).
        seed: the draw of ``"random"``.
    """

    def __init__(self, env: Any, method: str = "global-mp", min_threshold: float | None = None,
                 sparsity: float | None = None, seed: int = 0) -> None:
        super().__init__(env)
        self.method = method_of(self.env, method).name
        if min_threshold is not None:
            if self.method != "global-mp+mt":
                raise ConfigError(f"min_threshold applies to global-mp+mt only, not to {self.method!r}")
            if not (0.0 <= float(min_threshold) < 1.0):
                raise ConfigError(f"min_threshold must be a fraction in [0, 1) (0.0005 = 0.05%), got {min_threshold!r}")
            min_threshold = float(min_threshold)
        self.min_threshold = min_threshold
        self.sparsity = None if sparsity is None else check_sparsity(sparsity, "sparsity")
        self.seed = int(seed)

    def allocation(self, target: float) -> list[float]:
        """The method's per-layer sparsities at ``target`` (cached by the env, per seed)."""
        return self.env.allocation_sparsities(self.method, target, self.min_threshold, seed=self.seed)

    def allocation_seconds(self, target: float) -> float:
        """What computing the allocation at ``target`` costs: the env's first computation of it
        (later calls hit its cache, which would time a look-up)."""
        return self.env.allocation_seconds(self.method, target, self.min_threshold, seed=self.seed)

    def layer_sparsities(self, observations: np.ndarray, deterministic: bool) -> np.ndarray:
        indices = self.layer_indices(observations)
        targets = self.targets(observations, self.sparsity)
        return np.array([self.allocation(float(target))[index] for target, index in zip(targets, indices, strict=True)])

    def __repr__(self) -> str:
        return f"AllocationPolicy({self.method!r}, min_threshold={self.min_threshold}, sparsity={self.sparsity})"


class GlobalMagnitudePolicy(AllocationPolicy):
    """Global Magnitude Pruning as a policy: each layer gets the sparsity that one global
    magnitude threshold (over all prunable weights of the dense model) gives it at the target.

    Args:
        env: the prune-gym env (or a wrapper / ``DummyVecEnv`` of it) the policy will act in.
        min_threshold: Minimum Threshold (Gupta et al. 2022): every layer keeps at least this
            fraction of all prunable weights (``prune_gym.pruning.DEFAULT_MIN_THRESHOLD`` =
            0.0005 is the paper's default); None for plain Global MP.
        sparsity: the overall sparsity to prune to when the env has no target (otherwise the
            target is read from each observation).
    """

    def __init__(self, env: Any, min_threshold: float | None = None, sparsity: float | None = None) -> None:
        # AllocationPolicy checks the threshold (any non-zero one, valid or not, asks for + MT).
        method = "global-mp+mt" if min_threshold else "global-mp"
        super().__init__(env, method, min_threshold or None, sparsity)

    def __repr__(self) -> str:
        return f"GlobalMagnitudePolicy(min_threshold={self.min_threshold}, sparsity={self.sparsity})"


class UniformMagnitudePolicy(AllocationPolicy):
    """Uniform magnitude pruning: every layer at the target sparsity.

    With discrete actions the nearest level is requested and the env's projection absorbs the
    difference in the last layers, so the overall sparsity is still the target.

    Args:
        env: the prune-gym env (or a wrapper / ``DummyVecEnv`` of it).
        sparsity: the per-layer sparsity when the env has no target (otherwise the target is
            read from each observation).
    """

    def __init__(self, env: Any, sparsity: float | None = None) -> None:
        super().__init__(env, "uniform", sparsity=sparsity)

    def __repr__(self) -> str:
        return f"UniformMagnitudePolicy(sparsity={self.sparsity})"


class RecipePolicy(ReferencePolicy):
    """Replay fixed per-layer sparsities (a recipe, e.g. the best episode an agent found).

    Through a continuous-action env the recipe is replayed exactly; the env's target
    projection still applies, so a recipe made for the env's target ends there.

    Args:
        env: the prune-gym env (or a wrapper / ``DummyVecEnv`` of it).
        layer_sparsities: ``{layer_name: sparsity}`` for every layer the env visits (the
            ``layer_sparsities`` of a last step's ``info``, or a recipe's ``layers``).
    """

    def __init__(self, env: Any, layer_sparsities: dict[str, float]) -> None:
        super().__init__(env)
        names = self.env.layer_names()
        missing = [name for name in names if name not in layer_sparsities]
        unknown = [name for name in layer_sparsities if name not in names]
        if missing or unknown:
            raise ConfigError(
                f"the recipe does not fit this env's layers (missing {missing}, unknown {unknown}): "
                f"was it made for another model or exclude_layers?"
            )
        self.sparsities = np.array([float(layer_sparsities[name]) for name in names])

    def layer_sparsities(self, observations: np.ndarray, deterministic: bool) -> np.ndarray:
        return self.sparsities[self.layer_indices(observations)]

    def __repr__(self) -> str:
        return f"RecipePolicy({len(self.sparsities)} layers)"


class RandomPolicy(ReferencePolicy):
    """Random per-layer sparsities: uniform over the action space, whatever ``deterministic``.

    Each layer takes an action drawn uniformly from the action space (a random level, or a
    number in [-1, 1]), like an untrained agent that explores with epsilon = 1: with
    ``action_mode="relative"`` random steps around Global MP's allocation, with ``"absolute"``
    random sparsities, where the env's projection then pushes the last layers towards whatever
    budget the random early choices left. Draws come from a NumPy generator seeded by ``seed`` (reproducible).
    """

    def __init__(self, env: Any, seed: int | None = 0) -> None:
        super().__init__(env)
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def actions_for(self, observations: np.ndarray, deterministic: bool) -> np.ndarray:
        count = len(observations)
        if self.action_type == "discrete":
            return self.rng.integers(0, self.action_space.n, size=count).astype(np.int64)
        return self.rng.uniform(-1.0, 1.0, size=(count, 1)).astype(np.float32)

    def __repr__(self) -> str:
        return f"RandomPolicy(seed={self.seed})"


def reference_policy(
    name: str, env: Any, *, seed: int = 0, min_threshold: float | None = None
) -> tuple[str, ReferencePolicy, bool]:
    """``(label, policy, deterministic)`` for a name of :data:`REFERENCE_POLICIES`: the label
    is the method's name in tables ("Global MP", "Global MP + MT", "LAMP", ...); every
    allocation is deterministic (``random`` is a seeded draw, ``seed``). ``min_threshold``
    applies to ``global-mp+mt`` (None: the paper's 0.05%); ``"global-mp"`` with a
    ``min_threshold`` is Global MP + MT, as ``prune-gym baseline --min-threshold`` says."""
    methods = prune_env_of(env).allocation_methods
    method = method_of(env, name).name
    if method == "global-mp" and min_threshold:
        method = "global-mp+mt"
    elif min_threshold is not None and method != "global-mp+mt":
        raise ConfigError(f"--min-threshold applies to --policy global-mp / global-mp+mt only, not {name!r}")
    policy = AllocationPolicy(env, method, min_threshold=min_threshold or None, seed=seed)
    return methods[method].label, policy, True


def reference_policies(
    env: Any, *, seed: int = 0, min_threshold: float | None = None, methods: Sequence[str] | None = None,
) -> list[tuple[str, ReferencePolicy, bool]]:
    """Every allocation method of a comparison, in table order (``methods``: all of the env's
    registry, ``allocation_methods``); ``min_threshold`` is Global MP + MT's (None or 0 leaves that
    method out); ``random`` is drawn with ``seed``."""
    names = list(prune_env_of(env).allocation_methods if methods is None else methods)
    chosen = []
    for name in names:
        if name == "global-mp+mt":
            if not min_threshold:
                continue
            chosen.append(reference_policy(name, env, min_threshold=min_threshold))
        else:
            chosen.append(reference_policy(name, env, seed=seed))
    return chosen
