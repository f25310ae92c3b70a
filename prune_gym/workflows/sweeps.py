"""Sweeps over algorithms and seeds on Ray Tune (``prune-gym sweep``).

A result in this field is a table over seeds, targets and algorithms. :func:`sweep` runs it as
Ray Tune trials, on this machine or on a cluster (``address=``), and aggregates the
comparison's output over the seeds (``prune_gym.workflows.sweep_report``):

- one trial per (algorithm, seed): ``compare``'s agent part, the same code (train one agent
  across the targets, record every episode, then play its greedy policy and its best-found
  recipe at each target). After every training episode it reports to Tune
  ``best_reward_accuracy`` (the best reward-split accuracy so far, averaged over the targets;
  0 for a target not yet drawn) at ``agent_timesteps``, so a scheduler (``scheduler="asha"``)
  can stop weak trials;
- one trial per seed for the local search at equal cost (as many env episodes per target as
  the largest agent budget holds, ``compare``'s rule);
- one trial for the reference policies (Global MP, Global MP + MT, uniform, random), run
  once per target.

Trials are separate processes with their own env and model; settings reach them as the
trial's parameters, never through module globals. A trial's torch threads are its Tune CPUs
divided by its env processes, and it runs on CUDA when it holds a GPU, else on the CPU. It
saves ``trial.json`` (its rows), its recipes and, for an agent, the run folder as its Tune
checkpoint in the storage path. A failed trial is reported with its error while the others
go on; :func:`resume_sweep` re-runs only what did not finish (Tune's restore).

Output folder (``output_dir``)::

    sweep.json        the settings, the sweep's id and where Tune keeps the experiment
    tune/             Tune's experiment, unless ``storage`` points elsewhere (a folder, s3://...)
    table.txt, results.json, results.csv, trials.csv, accuracy_vs_sparsity.png,
    learning_curves.png   the aggregate (prune_gym.workflows.sweep_report)
    trials/<trial>/   each finished trial's trial.json, recipes/ and agent/ (from its checkpoint)

Ray Tune is an optional extra: ``pip install -e ".[ray]"``.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym

from prune_gym.agents.factory import ALGORITHMS, algo_name, check_algo, resolve_hyperparams
from prune_gym.agents.training import agent_env_kwargs_for
from prune_gym.allocation import allocation_method
from prune_gym.errors import ConfigError, MissingResourceError
from prune_gym.io import atomic_write_json
from prune_gym.pruning import DEFAULT_MIN_THRESHOLD, check_sparsity
from prune_gym.tasks import get_task
from prune_gym.workflows.compare import (
    DEFAULT_SPARSITIES,
)
from prune_gym.workflows.experiment import equal_cost_episodes
from prune_gym.workflows.sweep_report import SweepResult, TrialOutcome, write_sweep
from prune_gym.workflows.sweep_trial import run_trial, trial_label

logger = logging.getLogger(__name__)

__all__ = ["SCHEDULERS", "SweepResult", "TrialOutcome", "resume_sweep", "sweep"]

SCHEDULERS = ("fifo", "asha")
_INSTALL = 'prune-gym sweep runs on Ray Tune, an optional extra: pip install -e ".[ray]" (or pip install "ray[tune]")'


# -- the driver --------------------------------------------------------------------------------


def sweep(
    env_id: str = "PruneResNet20Digits-v1",
    algos: Sequence[str] = ("dqn",),
    seeds: Sequence[int] = (0,),
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    *,
    timesteps: int | None = None,
    hyperparams: Mapping[str, str | os.PathLike | Mapping[str, Any]] | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    min_threshold: float | None = DEFAULT_MIN_THRESHOLD,
    search: bool = True,
    finetune_epochs: int = 0,
    n_envs: int | None = None,
    cpus_per_trial: float | None = None,
    gpus_per_trial: float = 0.0,
    max_concurrent: int | None = None,
    scheduler: str = "fifo",
    address: str | None = None,
    storage: str | None = None,
    output_dir: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
) -> SweepResult:
    """Run ``compare`` over ``algos`` x ``seeds`` as Ray Tune trials and aggregate it.

    Args:
        env_id, sparsities, timesteps, env_kwargs, min_threshold, search, finetune_epochs:
            as in :func:`prune_gym.workflows.compare.compare` (``timesteps`` for every algorithm).
        algos: the agents' algorithms (``prune_gym.agents.ALGORITHMS``).
        seeds: one trial per algorithm and seed (the agent's and the target draws' seed).
        hyperparams: per algorithm, a YAML path or a dict (as in ``make_agent``); read here,
            so the trials on other machines get the settings, not the path.
        n_envs: envs per agent trial, one process each (default: the hyperparameters').
        cpus_per_trial: Tune CPUs of each trial (default: an agent trial's ``n_envs``, 1 for
            the search and reference trials); its torch threads follow.
        gpus_per_trial: Tune GPUs of each trial (fractions share a GPU); trials with a GPU run
            the pruned network on CUDA.
        max_concurrent: at most this many trials at once (default: as resources allow).
        scheduler: ``"fifo"`` (every trial runs to the end) or ``"asha"`` (stops agent trials
            whose ``best_reward_accuracy`` trails at ``agent_timesteps`` milestones).
        address: an existing Ray cluster (``"auto"``, ``"ray://host:10001"``); default: Ray
            starts on this machine and stops at the end.
        storage: where Tune keeps the experiment: a folder or any URI Tune accepts
            (``s3://bucket/sweeps``); default ``<output_dir>/tune``.
        output_dir: the sweep's folder (default ``results/<env_id>-sweep-<time>``); it must
            not hold anything yet.
        log: where progress messages go (default: the ``prune_gym`` logger).

    Returns:
        A :class:`SweepResult`; failed trials are in it (``incomplete``), not raised.
    """
    say = log or logger.info
    settings, output = _check_sweep_options(
        env_id, algos, seeds, sparsities, timesteps, hyperparams, env_kwargs, min_threshold, search,
        finetune_epochs, n_envs, cpus_per_trial, gpus_per_trial, max_concurrent, scheduler, storage, output_dir,
    )
    tune = _import_tune()
    return _run(tune, settings, output, address, restore=False, say=say)


def resume_sweep(
    output_dir: str | os.PathLike, address: str | None = None, log: Callable[[str], None] | None = None,
    storage: str | os.PathLike | None = None,
) -> SweepResult:
    """Go on with the sweep in ``output_dir`` (cut off, or with failed trials): Tune restores
    its experiment and re-runs only the trials that did not finish; the settings are the
    sweep's own (``sweep.json``), so the aggregate never mixes two sweeps.

    Tune's experiment state is pickled, so it is restored only from inside ``output_dir`` or
    from the ``storage`` the caller names again (a sweep run with ``--storage``), never from a
    path that only ``sweep.json`` names."""
    import json

    say = log or logger.info
    output = Path(output_dir)
    record = output / "sweep.json"
    if not record.is_file():
        raise MissingResourceError(f"--resume {output}: no sweep.json there; give the folder a sweep wrote")
    try:
        settings = json.loads(record.read_text())
        experiment = str(settings["experiment"])
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"--resume {output}: {record} is damaged ({type(error).__name__}: {error}); a sweep "
                         "cannot be resumed without its settings") from None
    if "://" not in experiment:
        allowed = [output.resolve()] + ([Path(storage).resolve()] if storage is not None and "://" not in str(storage) else [])
        if not any(Path(experiment).resolve().is_relative_to(root) for root in allowed):
            raise ConfigError(
                f"--resume {output}: sweep.json names Tune's experiment at {experiment}, outside {output}; Tune's state "
                "is pickled (it can run code), so name that storage yourself: --storage FOLDER (the one the sweep used)"
            )
    tune = _import_tune()
    if not tune.Tuner.can_restore(settings["experiment"]):
        raise ConfigError(f"--resume {output}: Tune has no experiment state at {settings['experiment']} to restore")
    say(f"resuming sweep {settings['sweep_id']} from {settings['experiment']}")
    return _run(tune, settings, output, address, restore=True, say=say)


def _import_tune():
    try:
        from ray import tune
    except ImportError as error:
        raise ImportError(f"{_INSTALL} ({error})") from None
    return tune


def _check_sweep_options(
    env_id, algos, seeds, sparsities, timesteps, hyperparams, env_kwargs, min_threshold, search, finetune_epochs,
    n_envs, cpus_per_trial, gpus_per_trial, max_concurrent, scheduler, storage, output_dir,
) -> tuple[dict[str, Any], Path]:
    """Every option checked and resolved before anything starts: (settings, output folder)."""
    spec = gym.spec(env_id)  # an unknown id raises here, naming the registry
    targets = [check_sparsity(s, "sparsity") for s in sparsities]
    if not targets:
        raise ConfigError("give at least one sparsity to sweep over")
    if len(set(targets)) != len(targets):
        raise ConfigError(f"sparsities must differ, got {targets}")
    algos = list(dict.fromkeys(algo_name(a) for a in algos))
    seeds = [_whole(s, "seed", minimum=None) for s in seeds]
    if not algos or not seeds:
        raise ConfigError("give at least one algorithm (--algo) and one seed (--seeds)")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must differ, got {seeds}")
    _check_resources(scheduler, cpus_per_trial, gpus_per_trial)
    shared = dict(env_kwargs or {})
    shared.pop("target_sparsity", None)
    agents = _resolve_agents(env_id, algos, hyperparams, shared, timesteps, n_envs)
    shared.pop("action_type", None)
    output = Path(output_dir) if output_dir is not None else Path("results") / f"{env_id}-sweep-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError(f"{output} exists and is not empty: pass another --output, or --resume {output} to go on with its sweep")
    sweep_id = uuid.uuid4().hex[:12]
    if storage is None:
        storage_path, name = str(output.resolve()), "tune"
    else:
        storage_path = storage if "://" in str(storage) else str(Path(storage).resolve())
        name = f"{output.name}-{sweep_id}"
    settings = {
        "sweep_id": sweep_id,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "env_id": env_id,
        "algos": algos,
        "seeds": seeds,
        "sparsities": targets,
        "agents": agents,
        "env_kwargs": shared,
        "min_threshold": min_threshold,
        "search": bool(search),
        # The search starts where the (first) agent's relative actions are centred.
        "search_start": agents[algos[0]]["reference"],
        "finetune_epochs": _whole(finetune_epochs, "finetune_epochs"),
        "cpus_per_trial": cpus_per_trial,
        "gpus_per_trial": float(gpus_per_trial or 0.0),
        "max_concurrent": None if max_concurrent is None else _whole(max_concurrent, "max_concurrent", minimum=1),
        "scheduler": scheduler,
        "storage_path": storage_path,
        "name": name,
        "experiment": f"{storage_path.rstrip('/')}/{name}",
    }
    # The search at equal cost, by compare's rule over the episodes of the largest agent budget
    # (counted before training: its steps over the episode length).
    episodes = max(a["timesteps"] for a in agents.values()) // (spec.max_episode_steps or 1)
    settings["search_episodes_per_target"] = equal_cost_episodes(episodes, len(targets)) if search else 0
    return settings, output


def _check_resources(scheduler: str, cpus_per_trial: float | None, gpus_per_trial: float | None) -> None:
    if scheduler not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler {scheduler!r}: choose one of {', '.join(SCHEDULERS)}")
    for value, what in ((cpus_per_trial, "cpus_per_trial"), (gpus_per_trial, "gpus_per_trial")):
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool) or value < 0 or math.isnan(value)):
            raise ConfigError(f"{what} must be a number >= 0, got {value!r}")
    if cpus_per_trial is not None and cpus_per_trial <= 0:
        raise ConfigError(f"cpus_per_trial must be > 0, got {cpus_per_trial}")


def _resolve_agents(env_id: str, algos: list[str], hyperparams: Mapping[str, Any] | None, shared: Mapping[str, Any],
                    timesteps: int | None, n_envs: int | None) -> dict[str, dict[str, Any]]:
    """Each algorithm's settings, read here once (the trials on other machines get the settings,
    not the path), with its budget, env count, action type and the reference its actions centre on."""
    hyperparams = dict(hyperparams or {})
    unknown = sorted(set(hyperparams) - set(algos))
    if unknown:
        raise ConfigError(f"hyperparams given for {', '.join(unknown)}, which the sweep does not run ({', '.join(algos)})")
    agents = {}
    for algo in algos:
        action_type = shared.get("action_type", ALGORITHMS[algo][1][0])
        check_algo(algo, action_type)
        resolved = resolve_hyperparams(algo, env_id, hyperparams.get(algo))
        settings = resolved[env_id]
        budget = _whole(timesteps if timesteps is not None else settings.get("n_timesteps", 0), "timesteps")
        envs = _whole(n_envs if n_envs is not None else settings.get("n_envs", 1), "n_envs", minimum=1)
        kwargs = agent_env_kwargs_for(algo, env_id, shared, action_type, resolved)
        agents[algo] = {"hyperparams": resolved, "timesteps": budget, "n_envs": envs, "action_type": action_type,
                        "reference": allocation_method(kwargs.get("reference", "global-mp")).name}
    return agents


def _whole(value: Any, what: str, minimum: int | None = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise ConfigError(f"{what} must be a whole number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{what} must be >= {minimum}, got {value}")
    return int(value)


def _trial_specs(settings: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The trials: the agents first (the long ones), then the searches, then the reference."""
    specs = [{"kind": "agent", "algo": algo, "seed": seed} for algo in settings["algos"] for seed in settings["seeds"]]
    if settings["search_episodes_per_target"]:
        specs += [{"kind": "search", "algo": None, "seed": seed} for seed in settings["seeds"]]
    specs.append({"kind": "reference", "algo": None, "seed": settings["seeds"][0]})
    return specs


def _trial_name(trial: Any) -> str:
    return trial_label(trial.config["trial"])


def trial_resources(settings: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, float]:
    """The Tune resources of a trial: its CPUs (an agent's env processes by default) and GPUs."""
    spec = config["trial"]
    cpus = settings["cpus_per_trial"]
    if cpus is None:
        cpus = settings["agents"][spec["algo"]]["n_envs"] if spec["kind"] == "agent" else 1
    return {"cpu": float(cpus), "gpu": float(settings["gpus_per_trial"])}


def _run(tune, settings: dict[str, Any], output: Path, address: str | None, restore: bool, say) -> SweepResult:
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        # A cluster started here runs the trials at normal priority: Ray's default (nice 15) starves
        # them beside any other work on the machine (a sweep took 8x as long beside two busy processes).
        system = {"worker_niceness": 0} if address is None else None
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, _system_config=system)
    try:
        _check_cluster(ray, settings, local=address is None)
        if not restore:  # everything checked: the sweep's folder is created now, not before
            output.mkdir(parents=True, exist_ok=True)
            atomic_write_json(output / "sweep.json", settings)
            say(f"sweep {settings['sweep_id']}: {len(_trial_specs(settings))} trials, results in {output}")
        if address is None:
            _prepare_local(settings, say)
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, settings=settings), partial(trial_resources, settings)
        )
        started = time.perf_counter()
        if restore:
            tuner = tune.Tuner.restore(settings["experiment"], trainable=trainable, resume_unfinished=True,
                                       restart_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={"trial": tune.grid_search(_trial_specs(settings))},
                tune_config=tune.TuneConfig(
                    scheduler=_scheduler(tune, settings), max_concurrent_trials=settings["max_concurrent"],
                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
                ),
                run_config=tune.RunConfig(
                    name=settings["name"], storage_path=settings["storage_path"],
                    failure_config=tune.FailureConfig(max_failures=0), verbose=1,
                ),
            )
        grid = tuner.fit()
        seconds = time.perf_counter() - started
        trials = _collect(grid, settings, output)
    finally:
        if started_here:
            ray.shutdown()
    result = write_sweep(settings, trials, output, seconds)
    for trial in result.incomplete:
        say(f"trial {trial.name} {trial.status}" + (f": {trial.error}" if trial.error else ""))
    if result.incomplete:
        say(f"{len(result.incomplete)} trial(s) did not finish: `prune-gym sweep --resume {output}` re-runs only those")
    say(f"wrote {output}/: table.txt, results.json, results.csv, trials.csv, accuracy_vs_sparsity.png, "
        "learning_curves.png, trials/")
    return result


def _check_cluster(ray, settings: Mapping[str, Any], local: bool) -> None:
    """A trial that asks for more than the cluster has would wait forever: say so instead."""
    available = ray.cluster_resources()
    wanted_gpus = settings["gpus_per_trial"]
    most_cpus = max(trial_resources(settings, {"trial": s})["cpu"] for s in _trial_specs(settings))
    problems = []
    if wanted_gpus > available.get("GPU", 0):
        problems.append(f"each trial asks for {wanted_gpus:g} GPU but the Ray cluster has {available.get('GPU', 0):g}")
    if most_cpus > available.get("CPU", 0):
        problems.append(f"a trial asks for {most_cpus:g} CPUs but the Ray cluster has {available.get('CPU', 0):g} "
                        "(lower --cpus-per-trial or --n-envs)")
    if problems:
        message = "; ".join(problems)
        if local:
            raise ConfigError(message)
        logger.warning(f"{message}: trials wait until an autoscaler adds them")


def _prepare_local(settings: Mapping[str, Any], say) -> None:
    """On this machine, train and cache a default model once (digits) rather than in every trial."""
    import gymnasium as gym

    if settings["env_kwargs"].get("synthetic") or settings["env_kwargs"].get("weights"):
        return
    task = get_task(gym.spec(settings["env_id"]).kwargs["task"])
    if hasattr(task, "cache_path") and not Path(task.cache_path).is_file():
        say(f"training and caching the {task.name} model once, before the trials start")
        task.load_model()


def _scheduler(tune, settings: Mapping[str, Any]):
    if settings["scheduler"] == "fifo":
        return None
    from ray.tune.schedulers import ASHAScheduler

    budget = max(agent["timesteps"] for agent in settings["agents"].values())
    return ASHAScheduler(time_attr="agent_timesteps", metric="best_reward_accuracy", mode="max",
                         max_t=max(budget, 1), grace_period=max(budget // 8, 1), reduction_factor=2)


def _collect(grid, settings: Mapping[str, Any], output: Path) -> list[TrialOutcome]:
    """Every trial of the Tune result; finished ones copied to ``output/trials/<name>/`` once all
    of them were checked to belong to this sweep."""
    import json

    statuses = {str(trial.path): trial.status for trial in grid._experiment_analysis.trials}  # noqa: SLF001
    outcomes, finished = [], []
    for result in grid:
        spec = result.config["trial"]
        name = trial_label(spec)
        outcome = TrialOutcome(name, spec["kind"], spec["algo"], spec["seed"], "unfinished", metrics=dict(result.metrics or {}))
        if result.error is not None:
            outcome.status, outcome.error = "failed", _error_text(result.error)
        elif result.checkpoint is not None:
            with result.checkpoint.as_directory() as folder:
                record = json.loads((Path(folder) / "trial.json").read_text())
            if record.get("sweep_id") != settings["sweep_id"]:
                raise ConfigError(f"trial {name} in {settings['experiment']} belongs to sweep {record.get('sweep_id')}, "
                                 f"not {settings['sweep_id']}: the aggregate never mixes two sweeps")
            outcome.status, outcome.record, outcome.folder = "finished", record, output / "trials" / name
            finished.append((outcome, result.checkpoint))
        elif statuses.get(str(result.path)) == "TERMINATED":
            outcome.status = "stopped"
        outcomes.append(outcome)
    for outcome, checkpoint in finished:
        if outcome.folder.exists():
            shutil.rmtree(outcome.folder)
        checkpoint.to_directory(str(outcome.folder))
    order = {trial_label(s): i for i, s in enumerate(_trial_specs(settings))}
    return sorted(outcomes, key=lambda t: order.get(t.name, len(order)))


def _error_text(error: BaseException) -> str:
    """The error a trial raised, in one line (Ray wraps it; its cause is the trial's own)."""
    cause = getattr(error, "cause", None) or error
    text = (str(cause).strip().splitlines() or [""])
    return f"{type(cause).__name__}: {text[-1] if type(cause).__name__ == 'RayTaskError' else text[0]}"
