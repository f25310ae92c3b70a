"""A comparison's settings, resolved once: :class:`Experiment`.

Everything a comparison of an agent against the allocation rules depends on, checked before
anything loads and converted once: the env id and the kwargs every method shares, the targets,
the agent's algorithm, action type and hyperparameters (read once from their YAML), its training
budget and env count, the seed, the Minimum Threshold of Global MP + MT, the fine-tuning epochs
and whether the search at equal cost runs, with its one budget rule. ``compare`` builds it from
its arguments and hands it on whole; a sweep's trial builds one per algorithm and seed from the
sweep's settings (:meth:`Experiment.from_sweep`), so both play the same methods on the same terms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from prune_gym.agents.factory import ALGORITHMS, algo_name, check_algo, resolve_hyperparams
from prune_gym.agents.training import agent_env_kwargs_for
from prune_gym.errors import ConfigError
from prune_gym.pruning import DEFAULT_MIN_THRESHOLD, check_sparsity
from prune_gym.registration import is_channel_env

__all__ = ["DEFAULT_CHANNEL_TARGETS", "DEFAULT_LATENCY_TARGETS", "DEFAULT_SPARSITIES", "Experiment", "equal_cost_episodes"]

DEFAULT_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)
#: A channel env's default targets: the share of FLOPs removed.
DEFAULT_CHANNEL_TARGETS = (0.3, 0.5, 0.7)
#: With ``budget="latency"``: the share of the predicted latency removed (on small inputs most of
#: a network's time is per-layer overhead, so half of it is often beyond the caps).
DEFAULT_LATENCY_TARGETS = (0.2, 0.3, 0.4)


@dataclass(frozen=True)
class Experiment:
    """One agent against every allocation rule (and the search at equal cost) on one env, at
    each target. Build it with :meth:`resolve`; its fields are checked and final."""

    env_id: str
    targets: tuple[float, ...]
    algo: str
    #: The agent's action type (the first its algorithm allows unless the env kwargs set one).
    action_type: str
    #: The agent's settings, read once, in the rl-zoo3 form ``{env_id: settings}`` that
    #: ``make_agent`` and ``train_agent`` take as they are.
    hyperparams: dict[str, Any]
    #: The ``gym.make`` kwargs every method shares (no action type, no target).
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    #: The agent's training budget (None: its hyperparameters' ``n_timesteps``).
    timesteps: int | None = None
    #: Envs the agent trains in, one process each (None: its hyperparameters' ``n_envs``, else 1).
    n_envs: int | None = None
    seed: int = 0
    min_threshold: float | None = DEFAULT_MIN_THRESHOLD
    finetune_epochs: int = 0
    search: bool = True

    @classmethod
    def resolve(
        cls, env_id: str, sparsities: Sequence[float] | None = None, algo: str = "dqn", *,
        timesteps: int | None = None, hyperparams: Any = None, env_kwargs: Mapping[str, Any] | None = None,
        seed: int = 0, n_envs: int | None = None, min_threshold: float | None = DEFAULT_MIN_THRESHOLD,
        finetune_epochs: int = 0, search: bool = True,
    ) -> Experiment:
        """Check and resolve ``compare``'s arguments (see :func:`prune_gym.workflows.compare.compare`):
        a bad one is a ``ConfigError`` naming it, before anything loads; the hyperparameters'
        file is read here, once."""
        targets = _targets(env_id, sparsities, env_kwargs)
        if isinstance(finetune_epochs, bool) or int(finetune_epochs) < 0:
            raise ConfigError(f"finetune_epochs must be >= 0, got {finetune_epochs}")
        algo = algo_name(algo)
        shared = dict(env_kwargs or {})
        action_type = shared.pop("action_type", ALGORITHMS[algo][1][0])
        check_algo(algo, action_type)
        shared.pop("target_sparsity", None)
        return cls(
            env_id=env_id, targets=tuple(targets), algo=algo, action_type=action_type,
            hyperparams=resolve_hyperparams(algo, env_id, hyperparams), env_kwargs=shared,
            timesteps=None if timesteps is None else int(timesteps), n_envs=None if n_envs is None else int(n_envs),
            seed=int(seed), min_threshold=min_threshold, finetune_epochs=int(finetune_epochs), search=bool(search),
        )

    @classmethod
    def from_sweep(cls, settings: Mapping[str, Any], algo: str, seed: int) -> Experiment:
        """The experiment of one sweep trial: the sweep's settings (``sweep.json``), resolved when
        the sweep started, for ``algo`` (its agent settings) and ``seed``."""
        agent = settings["agents"][algo]
        return cls(
            env_id=settings["env_id"], targets=tuple(settings["sparsities"]), algo=algo,
            action_type=agent["action_type"], hyperparams=agent["hyperparams"], env_kwargs=dict(settings["env_kwargs"]),
            timesteps=agent["timesteps"], n_envs=agent["n_envs"], seed=int(seed),
            min_threshold=settings["min_threshold"], finetune_epochs=settings["finetune_epochs"],
            search=settings.get("search", settings.get("search_episodes_per_target", 0) > 0),
        )

    def with_env_kwargs(self, env_kwargs: Mapping[str, Any]) -> Experiment:
        """The same experiment with other shared env kwargs (``compare`` raises ``max_sparsity``
        where a rule needs more)."""
        return replace(self, env_kwargs=dict(env_kwargs))

    def agent_env_kwargs(self) -> dict[str, Any]:
        """The agent's ``gym.make`` kwargs: the shared ones over those its hyperparameters were
        tuned with, in its action type, with no fixed target (one is drawn per episode)."""
        return agent_env_kwargs_for(self.algo, self.env_id, self.env_kwargs, self.action_type, self.hyperparams)

    def search_episodes(self, agent_episodes: int) -> int:
        """The search's episodes per target (:func:`equal_cost_episodes`; 0 when it is off)."""
        return equal_cost_episodes(agent_episodes, len(self.targets)) if self.search else 0


def equal_cost_episodes(agent_episodes: int, targets: int) -> int:
    """The search at equal cost: as many env episodes as the agent trained, split evenly over the
    targets (at least one each); 0 when the agent trained none here."""
    return max(agent_episodes // targets, 1) if agent_episodes > 0 else 0


def _targets(env_id: str, sparsities: Sequence[float] | None, env_kwargs: Mapping[str, Any] | None) -> list[float]:
    """The targets, checked: the env's defaults when None (weights: overall sparsity; a channel
    env: the share of FLOPs, or of the predicted latency with ``budget="latency"``, removed)."""
    if sparsities is None:
        if not is_channel_env(env_id):
            sparsities = DEFAULT_SPARSITIES
        else:
            latency = (env_kwargs or {}).get("budget") == "latency"
            sparsities = DEFAULT_LATENCY_TARGETS if latency else DEFAULT_CHANNEL_TARGETS
    targets = [check_sparsity(s, "sparsity") for s in sparsities]
    if not targets:
        raise ConfigError("give at least one sparsity to compare at")
    repeated = sorted({t for t in targets if targets.count(t) > 1})
    if repeated:
        raise ConfigError(f"sparsity {', '.join(f'{t:g}' for t in repeated)} given more than once: each target is compared "
                          "once (its recipes would overwrite each other)")
    return targets
