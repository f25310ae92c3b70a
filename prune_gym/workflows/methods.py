"""The methods a comparison plays at each target, through matched envs (``compare`` and the
sweep's trials share them):

- :func:`make_reference_env`: the env the reference policies, the replayed recipes and the
  search play through (continuous absolute actions, so every allocation is exact), its
  ``max_sparsity`` raised where a rule needs more; :func:`reference_env_kwargs` its kwargs.
- :class:`ComparedAgent` / :func:`train_or_load_agent`: the agent, trained across the targets or
  loaded with its best-found episodes.
- :class:`Entry`: one method to play at a target and what choosing its allocation cost;
  :func:`agent_entries` (greedy, best found), :func:`search_entry` (the search at equal cost),
  :func:`reference_entries` (every allocation rule).
- :func:`play`: one episode of each entry at a target, the searched ones passed through the
  selection guard against the strongest rule.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym

from prune_gym.agents.policies import (
    AllocationPolicy,
    RecipePolicy,
    prune_env_of,
    reference_policies,
)
from prune_gym.agents.report import MethodResult
from prune_gym.agents.rollout import finetune_and_test, run_episode
from prune_gym.agents.run_folder import load_agent
from prune_gym.agents.search import local_search
from prune_gym.agents.training import train_agent
from prune_gym.agents.verdict import guard_selection, strongest_heuristic
from prune_gym.channel_export import latency_side_by_side, slim_model
from prune_gym.envs.channel_env import ChannelPruneEnv
from prune_gym.episode import EpisodeRecord, read_best_found, target_key
from prune_gym.workflows.experiment import Experiment

__all__ = [
    "MAX_SPARSITY_CEILING", "ComparedAgent", "Entry", "agent_entries", "make_reference_env", "play",
    "reference_entries", "reference_env_kwargs", "search_entry", "train_or_load_agent",
]

#: The highest max_sparsity the workflow raises the env's range to (a layer is never emptied).
MAX_SPARSITY_CEILING = 0.999


def _required_max_sparsity(reference_env: gym.Env, sparsities: Sequence[float], min_threshold: float | None) -> float:
    """The highest layer sparsity any zero-cost rule asks for at any of ``sparsities`` (the random
    control may be clipped: it would otherwise push every method's range to the ceiling)."""
    needed = 0.0
    registry = prune_env_of(reference_env).allocation_methods
    rules = [name for name, method in registry.items() if method.heuristic]
    for _, policy, _ in reference_policies(reference_env, min_threshold=min_threshold, methods=rules):
        for target in sparsities:
            needed = max(needed, *policy.allocation(target))
    return needed


def make_reference_env(
    env_id: str, targets: Sequence[float], shared: Mapping[str, Any], min_threshold: float | None,
) -> tuple[gym.Env, dict[str, Any], str]:
    """The reference policies' env (continuous absolute actions) at ``targets[0]``, the shared kwargs and
    a note on ``max_sparsity``.

    Where a zero-cost rule (Global MP with or without the Minimum Threshold, LAMP, ERK...)
    needs a layer sparser than the env's ``max_sparsity`` at some target, ``max_sparsity`` is
    raised to cover it (and set in the returned kwargs, so the agent's env gets it too), unless
    the caller chose ``max_sparsity`` or the need exceeds ``MAX_SPARSITY_CEILING``; then the
    note says that the methods are clipped.
    """
    shared = dict(shared)
    reference_env = gym.make(env_id, **reference_env_kwargs(shared, targets[0]))
    max_sparsity = prune_env_of(reference_env).max_sparsity
    needed = _required_max_sparsity(reference_env, targets, min_threshold)
    note = f"the allocation methods need at most {needed:.4f} per layer; env max_sparsity {max_sparsity}"
    if needed > max_sparsity:
        if "max_sparsity" in shared or needed > MAX_SPARSITY_CEILING:
            note += f": per-layer sparsities above {max_sparsity} are clipped by the env"
        else:
            max_sparsity = math.ceil(needed * 1000) / 1000
            note += f", raised to {max_sparsity} so no method is clipped"
            shared["max_sparsity"] = max_sparsity
            reference_env.close()
            reference_env = gym.make(env_id, **reference_env_kwargs(shared, targets[0]))
    return reference_env, shared, note


def reference_env_kwargs(shared: Mapping[str, Any], target: float) -> dict[str, Any]:
    """The reference policies play exact sparsities: continuous actions, absolute mode. The test
    split is scored by ``run_episode`` for the rows reported, not at the end of every search
    episode (``evaluate_test=None``, unless ``shared`` says otherwise)."""
    return {"evaluate_test": None, **shared, "action_type": "continuous", "action_mode": "absolute",
            "target_sparsity": target}



@dataclass
class ComparedAgent:
    """The compared agent: the model, whether it was trained here, and its best-found episodes."""

    model: Any
    trained: bool
    timesteps: int
    seconds: float
    n_envs: int | None
    path: Path | None
    best_found: dict[str, EpisodeRecord]
    episodes: int


def train_or_load_agent(
    experiment: Experiment, agent_env: gym.Env, agent_env_kwargs: dict[str, Any], agent_path: str | Path | None,
    run_dir: Path | None, progress_bar: bool, tensorboard: bool, say: Callable[[str], None],
    on_episode: Callable[..., None] | None = None,
) -> ComparedAgent:
    """``experiment``'s agent: loaded from ``agent_path``, or trained with :func:`train_agent` into
    ``run_dir`` (a scratch folder when None) across its targets, in ``agent_env_kwargs``."""
    if agent_path is not None:
        say(f"loading the agent from {agent_path} (an SB3 file: load only files you trust)")
        model = load_agent(agent_path, env=agent_env, algo=experiment.algo)
        best_file = Path(agent_path).parent / "best_found.json"
        best, episodes = read_best_found(best_file) if best_file.is_file() else ({}, 0)
        return ComparedAgent(model, False, int(model.num_timesteps), 0.0, None, Path(agent_path), best, episodes)
    with tempfile.TemporaryDirectory(prefix="prune-gym-agent-") as scratch:
        run = train_agent(
            experiment.env_id, experiment.algo, experiment.timesteps,
            output_dir=run_dir if run_dir is not None else Path(scratch) / "agent", hyperparams=experiment.hyperparams,
            targets=experiment.targets, env_kwargs=agent_env_kwargs, seed=experiment.seed, checkpoint_freq=0,
            progress_bar=progress_bar, tensorboard=tensorboard, resumable=False, n_envs=experiment.n_envs, log=say,
            on_episode=on_episode,
        )
    say(f"trained {run.num_timesteps:,} steps ({len(run.episodes.records):,} episodes) in {run.seconds:.0f} s")
    n_envs = run.model.n_envs
    return ComparedAgent(run.model, True, int(run.num_timesteps), run.seconds, n_envs,
                         run.model_path if run_dir is not None else None, run.episodes.best(), len(run.episodes.records))


class Entry(NamedTuple):
    """One method to play at a target, and what choosing its allocation cost."""

    label: str
    policy: Any
    env: gym.Env
    deterministic: bool
    #: Network evaluations spent choosing the allocation (0 for a zero-cost rule).
    evaluations: int = 0
    cost_seconds: float = 0.0
    #: Chosen as the best of many on the reward split (kept only if it beats the strongest rule
    #: there by more than noise: ``prune_gym.agents.verdict.guard_selection``).
    searched: bool = False


def agent_entries(algo: str, agent: ComparedAgent, target: float, agent_env: gym.Env, reference_env: gym.Env) -> list[Entry]:
    """The agent's methods at ``target``: its greedy policy (in its own env) and, when training
    recorded an episode at this target, its best found (the best episode on the reward split,
    replayed exactly through the reference env). Their cost is the agent's training."""
    name = algo.upper()
    cost = {"evaluations": agent.timesteps, "cost_seconds": agent.seconds}
    entries = [Entry(f"{name} (greedy)", agent.model, agent_env, True, **cost)]
    best = agent.best_found.get(target_key(target))
    if best is not None:
        policy = RecipePolicy(reference_env, best.layer_sparsities)
        entries.append(Entry(f"{name} (best found)", policy, reference_env, True, **cost, searched=True))
    return entries


def search_entry(reference_env: gym.Env, target: float, episodes: int, seed: int, say: Callable[[str], None],
                 start: str = "global-mp") -> Entry:
    """Run the local search at ``target`` for ``episodes`` env episodes from the allocation method
    ``start``; its best allocation, to replay."""
    started = time.perf_counter()
    found = local_search(reference_env, target, episodes, seed=seed, start=start)
    seconds = time.perf_counter() - started
    say(f"local search at {target}: {episodes} episodes from {start}, best reward-split accuracy "
        f"{100 * found.best.reward_accuracy:.1f}% (the start's: {100 * found.best_so_far[0]:.1f}%)")
    policy = RecipePolicy(reference_env, found.best.layer_sparsities)
    return Entry("local search", policy, reference_env, True, episodes * prune_env_of(reference_env).num_layers, seconds,
                 searched=True)


def reference_entries(reference_env: gym.Env, seed: int, min_threshold: float | None) -> list[Entry]:
    """Every allocation method of the registry (Global MP, + MT, LAMP, ERK, uniform, uniform+,
    random), through the reference env; zero-cost rules: no evaluation chooses them."""
    return [Entry(label, policy, reference_env, deterministic)
            for label, policy, deterministic in reference_policies(reference_env, seed=seed, min_threshold=min_threshold)]


def play(entries: Sequence[Entry], target: float, finetune_epochs: int = 0, seed: int = 0) -> list[MethodResult]:
    """One episode of each method at ``target`` (and its fine-tuned test accuracy when asked),
    in the order given; the searched entries' rows then pass the selection guard against the
    strongest rule among the entries (rules are zero-cost, so an entry list has them all)."""
    results = []
    for entry in entries:
        # A rule's cost: computing its allocation (measured where the env first computed it).
        cost_seconds = entry.policy.allocation_seconds(target) if isinstance(entry.policy, AllocationPolicy) \
            else entry.cost_seconds
        row = run_episode(entry.policy, entry.env, target, deterministic=entry.deterministic, method=entry.label)
        row.evaluations, row.cost_seconds = entry.evaluations, cost_seconds
        prune_env = prune_env_of(entry.env)
        if isinstance(prune_env, ChannelPruneEnv):  # what the smaller network saves a deployer
            _, row.latency_ms, row.speedup = latency_side_by_side(
                prune_env.dense_architecture(), slim_model(prune_env), prune_env.evaluator.sample_shape)
        if finetune_epochs:
            finetuned = finetune_and_test(entry.env, int(finetune_epochs), seed)
            row.finetuned_test_accuracy, row.finetune_seconds = finetuned.test_accuracy, finetuned.seconds
            row.finetuned_reward_correct = finetuned.reward_correct
            row.finetuned_reward_accuracy = float(finetuned.reward_correct.mean())
        results.append(row)
    rule = strongest_heuristic(results, target)
    if rule is not None:
        results = [guard_selection(row, rule) if entry.searched else row
                   for entry, row in zip(entries, results, strict=True)]
    return results
