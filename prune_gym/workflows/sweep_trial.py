"""One trial of a sweep, inside its Ray worker process (``prune_gym.workflows.sweeps`` drives them).

:func:`run_trial` builds the trial's own env and model from the sweep's resolved settings (its
parameters, never module globals), plays ``compare``'s pieces (an agent trained across the
targets, the search at equal cost, or every allocation rule), guards the searched rows against
the strongest rule as ``compare`` does, and saves ``trial.json``, its recipes and its agent as its
Tune checkpoint. :class:`TuneReporter` reports an agent's learning to Tune after every episode.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch

from prune_gym.agents.policies import prune_env_of
from prune_gym.agents.report import MethodResult, write_recipes
from prune_gym.episode import target_key
from prune_gym.io import atomic_write_json
from prune_gym.workflows import methods  # compare's pieces, played here one trial kind at a time
from prune_gym.workflows.experiment import Experiment

logger = logging.getLogger(__name__)

__all__ = ["TuneReporter", "run_trial", "trial_label"]


def trial_label(spec: Mapping[str, Any]) -> str:
    """``dqn-seed0``, ``search-seed0``, ``reference``."""
    if spec["kind"] == "agent":
        return f"{spec['algo']}-seed{spec['seed']}"
    return f"search-seed{spec['seed']}" if spec["kind"] == "search" else "reference"


def run_trial(config: Mapping[str, Any], settings: Mapping[str, Any]) -> None:
    """One trial: its env and model built here, its result saved as its Tune checkpoint."""
    from ray import tune  # the optional extra, present wherever a trial runs

    _show_messages()
    spec = config["trial"]
    resources = tune.get_context().get_trial_resources().required_resources
    cpus, gpus = float(resources.get("CPU", 1)), float(resources.get("GPU", 0))
    envs = settings["agents"][spec["algo"]]["n_envs"] if spec["kind"] == "agent" else 1
    torch.set_num_threads(max(1, int(cpus) // envs))
    env_kwargs = dict(settings["env_kwargs"])
    if env_kwargs.get("device", "auto") == "auto":
        env_kwargs["device"] = "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"
    targets, say = settings["sparsities"], logger.info
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="prune-gym-trial-") as scratch:
        folder = Path(scratch)
        reference_env, shared, note = methods.make_reference_env(settings["env_id"], targets, env_kwargs, settings["min_threshold"])
        reference = prune_env_of(reference_env)
        try:
            if spec["kind"] == "agent":
                rows, extra = _agent_trial(spec, settings, shared, reference_env, folder, say)
            elif spec["kind"] == "search":
                episodes = settings["search_episodes_per_target"]
                rows = [row for t in targets for row in _play_guarded(
                    [methods.search_entry(reference_env, t, episodes, spec["seed"], say, start=settings.get("search_start", "global-mp"))],
                    reference_env, t, settings, spec["seed"])]
                extra = {"episodes_per_target": episodes}
            else:
                rows = [row for t in targets for row in methods.play(
                    methods.reference_entries(reference_env, spec["seed"], settings["min_threshold"]), t,
                    settings["finetune_epochs"], spec["seed"])]
                extra = {}
            dense = reference.measure_dense_test_accuracy() if reference.test_data is not None else None
            record = {
                "sweep_id": settings["sweep_id"], "trial": dict(spec), "name": trial_label(spec), **extra,
                "rows": [row.to_json() for row in rows],
                "dense_test_accuracy": float("nan") if dense is None else dense,
                "dense_reward_accuracy": reference.dense_reward_accuracy,
                "max_sparsity": reference.max_sparsity, "max_sparsity_note": note,
                "bn_recalibration_batches": reference.bn_recalibration_batches,
                "resources": {"cpus": cpus, "gpus": gpus, "torch_threads": torch.get_num_threads(),
                              "device": str(reference.device), "host": os.uname().nodename,
                              "niceness": os.nice(0)},
                "seconds": time.perf_counter() - started,
            }
        finally:
            reference_env.close()
        atomic_write_json(folder / "trial.json", record)
        write_recipes(rows, folder / "recipes", settings["env_id"], record["bn_recalibration_batches"], shared)
        metrics = {"best_reward_accuracy": _best_mean(rows, targets), "trial_seconds": record["seconds"]}
        if spec["kind"] == "agent":
            metrics["agent_timesteps"] = extra["timesteps"]
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(scratch))


def _play_guarded(entries: list[methods.Entry], reference_env, target: float, settings: Mapping[str, Any],
                  seed: int) -> list[MethodResult]:
    """The entries' rows at ``target``, the searched ones guarded as in ``compare``: the zero-cost
    rules are played beside them (their rows are the reference trial's to report, not this one's)."""
    rules = methods.reference_entries(reference_env, seed, settings["min_threshold"])
    return methods.play([*entries, *rules], target, settings["finetune_epochs"], seed)[: len(entries)]


def _agent_trial(spec, settings, shared, reference_env, folder: Path, say) -> tuple[list[MethodResult], dict[str, Any]]:
    """``compare``'s agent part: train across the targets, then greedy and best found at each."""
    algo, seed, targets = spec["algo"], spec["seed"], settings["sparsities"]
    experiment = Experiment.from_sweep(settings, algo, seed).with_env_kwargs(shared)
    kwargs = experiment.agent_env_kwargs()
    agent_env = gym.make(experiment.env_id, target_sparsity=targets[0], **kwargs)
    try:
        agent = methods.train_or_load_agent(experiment, agent_env, kwargs, None, folder / "agent", True, True, say,
                                    on_episode=TuneReporter(targets, experiment.timesteps))
        rows = [row for t in targets for row in _play_guarded(
            methods.agent_entries(algo, agent, t, agent_env, reference_env), reference_env, t, settings, seed)]
    finally:
        agent_env.close()
    return rows, {"timesteps": agent.timesteps, "episodes": agent.episodes, "train_seconds": agent.seconds,
                  "n_envs": agent.n_envs, "env_kwargs": kwargs}


class TuneReporter:
    """Reports an agent's training to Tune after each finished episode: ``agent_timesteps``,
    ``episodes``, ``best_reward_accuracy`` (mean over the targets of the best so far, 0 for a
    target not yet drawn) and ``best_reward_accuracy/<target>``. The step that ends the budget
    is reported with the trial's evaluation instead."""

    def __init__(self, targets: Sequence[float], timesteps: int) -> None:
        self.keys = [target_key(t) for t in targets]
        self.timesteps = int(timesteps)

    def __call__(self, recorder: Any) -> None:
        from ray import tune

        steps = recorder.records[-1].timesteps
        if steps >= self.timesteps:
            return
        best = recorder.best()
        values = {key: best[key].reward_accuracy if key in best else 0.0 for key in self.keys}
        tune.report({"agent_timesteps": steps, "episodes": len(recorder.records),
                     "best_reward_accuracy": statistics.fmean(values.values()),
                     **{f"best_reward_accuracy/{key}": value for key, value in values.items()}})


def _best_mean(rows: Sequence[MethodResult], targets: Sequence[float]) -> float:
    """Per target the best reward-split accuracy among the trial's rows, averaged."""
    best = [max((r.reward_accuracy for r in rows if math.isclose(r.target_sparsity, t)), default=0.0) for t in targets]
    return statistics.fmean(best)


def _show_messages() -> None:
    """The package's messages on this worker's stderr, which Ray forwards to the driver."""
    package = logging.getLogger("prune_gym")
    if not package.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        package.addHandler(handler)
        package.setLevel(logging.INFO)
