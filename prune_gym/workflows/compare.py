"""The comparison workflow: a trained agent against Global MP, Global MP with MT, uniform and
random pruning, at matched sparsities, through the same environment (``prune-gym compare``).

Matched conditions: every method prunes the same model (same task, weights, split seed,
device, reward function and sparsity range) to the same overall target, and is scored on the
same reward split and test split. The agent acts in its own action type (discrete for DQN);
the reference policies act through a continuous-action env built with the same kwargs, so
Global MP's exact per-layer sparsities are reachable (a discrete env could only approximate
them by the nearest level). The env's ``max_sparsity`` is raised where Global MP needs more
at a requested sparsity, so no reference policy is clipped (the JSON records the value used).

One agent serves all targets: the target of each training episode is drawn from the requested
sparsities (``TargetSamplingWrapper``), the target is part of the observation, and the agent is
then evaluated deterministically at each target ("DQN (greedy)"). This costs one training
budget instead of one per sparsity, which keeps the default run on ``PruneResNet20Digits-v1``
within minutes on a 2-core CPU. Every finished training episode is recorded, and the best one
per target on the reward split (as AMC reports the best policy its search found) is replayed
through the reference env as its own method ("DQN (best found)"). "local search" answers the
reviewer's first question, whether search does as well at equal cost: it gets as many env
episodes as the agent trained (``prune_gym.agents.search``). Both are the best of many on the
reward split, so each passes a selection guard: it is kept only if it beats the strongest rule
there by more than noise, else that rule's allocation stands in its row, marked
(``prune_gym.agents.verdict``). The test split only reports.

Outputs (``output_dir``, written to ``<output_dir>.partial`` and renamed when complete):
``results.json`` (everything, including per-layer sparsities), ``results.csv`` (one row per
target and method), ``table.txt``, ``accuracy_vs_sparsity.png``, ``layer_sparsity.png`` (the
agent vs Global MP per layer at each target), the agent's run folder (``agent/``: model,
``episodes.jsonl``, ``best_found.json``, TensorBoard logs), and
``recipes/<method>-<target>.json``: each method's per-layer sparsities as a recipe for
``prune-gym export --recipe``, with the env's post-pruning steps (see ``prune_gym.agents.report``).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym

from prune_gym.agents.policies import (
    prune_env_of,
)
from prune_gym.agents.report import (
    Comparison,
    MethodResult,
    format_table,
    write_figures,
    write_tables,
)
from prune_gym.agents.search import DEFAULT_STEP
from prune_gym.agents.verdict import fastest_within_noise, paired_tests, strongest_heuristic
from prune_gym.channel_export import granularity_record
from prune_gym.episode import target_key
from prune_gym.errors import ConfigError, MissingResourceError
from prune_gym.pruning import DEFAULT_MIN_THRESHOLD
from prune_gym.workflows.experiment import (
    DEFAULT_CHANNEL_TARGETS,
    DEFAULT_LATENCY_TARGETS,
    DEFAULT_SPARSITIES,
    Experiment,
)
from prune_gym.workflows.methods import (
    ComparedAgent,
    agent_entries,
    make_reference_env,
    play,
    reference_entries,
    search_entry,
    train_or_load_agent,
)

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from prune_gym.envs.prune_env import PruneEnv

__all__ = [
    "DEFAULT_CHANNEL_TARGETS", "DEFAULT_LATENCY_TARGETS", "DEFAULT_SPARSITIES", "Comparison", "Experiment",
    "MethodResult", "compare", "format_table", "run_comparison",
]

def compare(
    env_id: str = "PruneResNet20Digits-v1",
    sparsities: Sequence[float] | None = None,
    algo: str = "dqn",
    *,
    timesteps: int | None = None,
    hyperparams: str | os.PathLike | Mapping[str, Any] | None = None,
    agent_path: str | os.PathLike | None = None,
    min_threshold: float | None = DEFAULT_MIN_THRESHOLD,
    output_dir: str | os.PathLike | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    n_envs: int | None = None,
    finetune_epochs: int = 0,
    search: bool = True,
    progress_bar: bool = True,
    tensorboard: bool = True,
    write_files: bool = True,
    log: Callable[[str], None] | None = None,
) -> Comparison:
    """Train (or load) an agent and compare it with the reference policies at each sparsity.

    On a channel env (``ChannelPruneEnv``) the rules are the channel rules, and every row also
    gets the measured CPU latency of its physically smaller network (the dense one's in the
    metadata).

    Args:
        env_id: a registered prune-gym id (weights, or channels: ``...Channels-v1``).
        sparsities: the targets to compare at (None: ``DEFAULT_SPARSITIES``, the overall
            sparsity of the weights; for a channel env ``DEFAULT_CHANNEL_TARGETS``, the share of
            FLOPs removed, or with ``budget="latency"`` ``DEFAULT_LATENCY_TARGETS``).
        algo: the agent's algorithm (``prune_gym.agents.ALGORITHMS``); its action type is the
            first it allows unless ``env_kwargs`` sets ``action_type``.
        timesteps: the agent's training budget (default: the hyperparameters' ``n_timesteps``).
        hyperparams: as in :func:`prune_gym.agents.make_agent`.
        agent_path: a saved agent to evaluate instead of training one.
        min_threshold: Minimum Threshold of the "Global MP + MT" method (None leaves it out).
        output_dir: where to write the files (default ``results/<env_id>-<time>``).
        env_kwargs: extra ``gym.make`` kwargs shared by all methods (``device``, ``reward``,
            ``split_seed``, ``max_sparsity``...).
        seed: seeds the agent, the target draws and the random policy.
        n_envs: envs the agent trains in, in parallel, one process each (default: the
            hyperparameters' ``n_envs``, else 1).
        finetune_epochs: if > 0, every method's pruned model is also fine-tuned with masks for
            this many epochs (same recipe for all) and its test accuracy reported.
        search: also run the search baseline at equal cost ("local search",
            :func:`prune_gym.agents.search.local_search`): as many env episodes as the agent's
            training took, split evenly over the targets, best chosen on the reward split.
        progress_bar, tensorboard: for the agent's training.
        write_files: write JSON, CSV, plots and the agent (False: only return the results).
        log: where progress messages go (None: the ``prune_gym`` logger at INFO level, which
            the CLI shows on stderr; ``print`` to see them in a notebook).
    """
    started = time.perf_counter()
    experiment = Experiment.resolve(
        env_id, sparsities, algo, timesteps=timesteps, hyperparams=hyperparams, env_kwargs=env_kwargs, seed=seed,
        n_envs=n_envs, min_threshold=min_threshold, finetune_epochs=finetune_epochs, search=search)
    output = _check_output(env_id, agent_path, output_dir, write_files)
    return run_comparison(experiment, output, agent_path=agent_path, progress_bar=progress_bar,
                          tensorboard=tensorboard, write_files=write_files, log=log, started=started)


def run_comparison(
    experiment: Experiment, output: Path, *, agent_path: str | os.PathLike | None = None, progress_bar: bool = True,
    tensorboard: bool = True, write_files: bool = True, log: Callable[[str], None] | None = None,
    started: float | None = None,
) -> Comparison:
    """:func:`compare` on a resolved :class:`Experiment`, into the folder ``output`` (checked)."""
    say = log or logger.info
    started = time.perf_counter() if started is None else started
    env_id, targets = experiment.env_id, list(experiment.targets)
    # Files go to <output>.partial until everything is written, then the folder is renamed: a
    # failed or interrupted run leaves no folder that looks finished.
    staging = output.with_name(output.name + ".partial")
    if write_files and staging.exists():
        shutil.rmtree(staging)

    # -- the reference env, and a sparsity range that admits Global MP at every target -------
    say(f"building {env_id} (reference policies: continuous actions)")
    reference_env, shared, max_sparsity_note = make_reference_env(
        env_id, targets, experiment.env_kwargs, experiment.min_threshold)
    say(max_sparsity_note)
    experiment = experiment.with_env_kwargs(shared)  # max_sparsity raised where a rule needs more
    agent_env_kwargs = experiment.agent_env_kwargs()
    agent_env = gym.make(env_id, target_sparsity=targets[0], **agent_env_kwargs)
    reference = prune_env_of(reference_env)
    try:
        agent = train_or_load_agent(experiment, agent_env, agent_env_kwargs, agent_path,
                                    staging / "agent" if write_files else None, progress_bar,
                                    tensorboard and write_files, say)
        search_start = prune_env_of(agent_env).reference  # where the agent's relative steps are centred
        search_record = _search_record(experiment, agent, search_start, say)
        results = _evaluate_methods(experiment, agent, agent_env, reference_env, search_record["episodes_per_target"],
                                    search_start, say)
        metadata = _metadata(experiment, reference, agent, agent_env, agent_env_kwargs, max_sparsity_note)
        metadata["search"] = search_record
        metadata["strongest_heuristic"] = {
            target_key(t): getattr(strongest_heuristic(results, t), "method", None) for t in targets}
        metadata["paired_tests"] = paired_tests(results, targets)
        picks = {target_key(t): pick for t in targets if (pick := fastest_within_noise(results, t)) is not None}
        if picks:  # a channel env: the rows' latency was measured
            metadata["export_picks"] = picks
        comparison = Comparison(env_id, results, metadata, output if write_files else None, table="")
        if write_files:  # the table says the total time, the plots included: formatted there
            _write_comparison(comparison, agent, reference, staging, output, started)
            say(f"wrote {output}/: results.json, results.csv, table.txt, accuracy_vs_sparsity.png, "
                f"layer_sparsity.png, recipes/, agent/")
        else:
            metadata["total_seconds"] = time.perf_counter() - started
            comparison.table = format_table(results, metadata)
    except BaseException:
        if write_files and staging.exists():
            say(f"the comparison did not finish: what it wrote so far is in {staging}")
        raise
    finally:
        reference_env.close()
        agent_env.close()
    return comparison


def _search_record(experiment: Experiment, agent: ComparedAgent, start: str,
                   say: Callable[[str], None]) -> dict[str, Any]:
    """The search at equal cost (``Experiment.search_episodes``; ``episodes_per_target`` 0: off,
    and ``budget`` says why)."""
    search, episodes = experiment.search, experiment.search_episodes(agent.episodes)
    off = None if episodes else ("off (search=False)" if not search else "off: the agent's run records no training "
                                 "episodes (no best_found.json beside --agent), so no equal cost")
    if search and not episodes:
        say(f"local search {off}")
    return {
        "method": f"local search around {start}'s per-layer sparsities (logit-space Gaussian steps, "
                  f"sd {DEFAULT_STEP}), best on the reward split, replayed",
        "start": start,
        "episodes_per_target": episodes,
        "budget": "the agent's training episodes, split evenly over the targets" if episodes else off,
    }


def _check_output(env_id: str, agent_path: str | os.PathLike | None, output_dir: str | os.PathLike | None,
                  write_files: bool) -> Path:
    """The agent file and the output folder, checked before anything loads: the folder to write."""
    if agent_path is not None and not Path(agent_path).is_file():
        raise MissingResourceError(f"no agent file at {agent_path}: train one with `prune-gym train ENV` first")
    if output_dir is None:
        output_dir = Path("results") / f"{env_id}-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    output = Path(output_dir)
    if write_files and output.exists() and any(output.iterdir()):
        raise ConfigError(f"{output} exists and is not empty: pass another --output (output_dir=) so results never mix")
    return output


def _write_comparison(
    comparison: Comparison, agent: ComparedAgent, reference: PruneEnv, staging: Path, output: Path, started: float
) -> None:
    """Every file into ``staging``, then renamed to ``output`` at once."""
    staging.mkdir(parents=True, exist_ok=True)
    if agent.path is not None and not agent.trained:
        # Keep a copy of the compared agent next to the results.
        (staging / "agent").mkdir(exist_ok=True)
        agent.model.save(staging / "agent" / "model.zip")
    write_figures(comparison, staging, reference)
    comparison.metadata["total_seconds"] = time.perf_counter() - started  # the plots included
    comparison.table = format_table(comparison.results, comparison.metadata)
    write_tables(comparison, staging)
    staging.rename(output)


def _evaluate_methods(experiment: Experiment, agent: ComparedAgent, agent_env, reference_env, search_episodes: int,
                      start: str, say: Callable[[str], None]) -> list[MethodResult]:
    """Every method at every target: the agent greedy, its best-found recipe, the search at
    equal cost (from ``start``, the agent's reference allocation), every allocation method."""
    results: list[MethodResult] = []
    seed = experiment.seed
    for target in experiment.targets:
        entries = agent_entries(experiment.algo, agent, target, agent_env, reference_env)
        if search_episodes:
            entries.append(search_entry(reference_env, target, search_episodes, seed, say, start=start))
        entries += reference_entries(reference_env, seed, experiment.min_threshold)
        results += play(entries, target, experiment.finetune_epochs, seed)
        say(f"evaluated every method at sparsity {target}")
    return results


def _metadata(experiment: Experiment, reference, agent: ComparedAgent, agent_env, agent_env_kwargs: dict[str, Any],
              max_sparsity_note: str) -> dict[str, Any]:
    env_id, algo, targets, shared = experiment.env_id, experiment.algo, list(experiment.targets), experiment.env_kwargs
    dense_test = reference.measure_dense_test_accuracy() if reference.test_data is not None else float("nan")
    levels = prune_env_of(agent_env).levels
    registry = reference.allocation_methods
    return {
        "env_id": env_id,
        **granularity_record(reference),
        "anchor_rule": next(iter(registry.values())).label,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "sparsities": targets,
        "dense_test_accuracy": dense_test,
        "dense_reward_accuracy": reference.dense_reward_accuracy,
        "agent": {
            "algo": algo,
            "action_type": experiment.action_type,
            "action_mode": prune_env_of(agent_env).action_mode,
            "env_kwargs": agent_env_kwargs,
            "levels": None if levels is None else len(levels),
            "timesteps": agent.timesteps,
            "trained_here": agent.trained,
            "n_envs": agent.n_envs,
            "train_seconds": agent.seconds if agent.trained else None,
            "episodes": agent.episodes,
            "trained_on_targets": targets,
            "evaluation": "greedy: deterministic, one episode per target; best found: the training episode "
                          "with the highest reward-split accuracy at the target, replayed, kept only if it beats "
                          "the strongest rule on the reward split by more than noise (else that rule's allocation)",
            "path": None if agent.path is None else str(agent.path),
        },
        "reference_policies": {
            "action_type": "continuous",
            "action_mode": "absolute",
            "why": "every policy's exact per-layer sparsities (recipes, search allocations) are played as they are",
            "random": registry["random"].description,
            "min_threshold": experiment.min_threshold,
        },
        "matched": {
            "task": reference.task.name if reference.task is not None else None,
            "split_seed": shared.get("split_seed", 0),
            "device": str(reference.device),
            "reward": reference.reward_name,
            "min_sparsity": reference.min_sparsity,
            "max_sparsity": reference.max_sparsity,
            "max_sparsity_note": max_sparsity_note,
            "bn_recalibration_batches": reference.bn_recalibration_batches,
            "env_kwargs": dict(shared),
            "same model, reward split, test split and target for every method": True,
        },
        "finetune_epochs": experiment.finetune_epochs,
        "total_seconds": None,
    }
