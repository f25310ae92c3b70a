"""Train an SB3 agent on a prune-gym env: progress bar, TensorBoard, checkpoints, resume.

``train_agent`` writes everything under one run folder::

    <output>/run.json                     what was trained (env id and kwargs, algo, settings,
                                          status "running" / "interrupted" / "finished")
    <output>/model.zip                    the final agent (plus model_replay_buffer.pkl)
    <output>/episodes.jsonl               every finished training episode (target, per-layer
                                          sparsities, reward-split accuracy), as it finishes
    <output>/best_found.json              the best episode per target, chosen on the reward split
    <output>/checkpoints/<algo>_<N>_steps.zip   periodic checkpoints (+ replay buffers)
    <output>/tensorboard/                 TensorBoard logs (``tensorboard --logdir <output>``),
                                          with the pruning metrics under ``prune/``

Ctrl-C during training saves a checkpoint first; ``resume=True`` continues from the newest
checkpoint with its step count, exploration schedule and replay buffer, so no step is lost.
A folder that already holds a run is never trained into again without ``resume``: runs never
mix.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import CheckpointCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import SubprocVecEnv, VecEnv

from prune_gym.agents.callbacks import EpisodeRecorder, TrainingProgress
from prune_gym.agents.factory import (
    check_algo,
    default_timesteps,
    env_kwargs_from_hyperparams,
    load_hyperparams,
    make_agent,
    resolve_hyperparams,
)
from prune_gym.agents.run_folder import (
    checkpoints_to_resume,
    latest_checkpoint,
    load_newest_readable,
    record_failure,
    refuse_existing_run,
    run_lock,
    save_agent,
)
from prune_gym.episode import write_best_found
from prune_gym.errors import ConfigError
from prune_gym.io import atomic_write_json
from prune_gym.pruning import check_sparsity

logger = logging.getLogger(__name__)

__all__ = [
    "TargetSamplingWrapper", "TrainResult", "agent_env_kwargs_for", "latest_checkpoint", "make_training_env", "train_agent",
]


class TargetSamplingWrapper(gym.Wrapper):
    """Draw the target sparsity of every episode from ``targets`` (uniformly, seeded).

    One agent trained this way serves every target it saw: the target is part of the
    observation (``target_sparsity``, ``budget_left`` and Global MP's sparsity at the target),
    so the policy can condition on it. A ``reset(options={"target_sparsity": s})`` given by the
    caller (e.g. an evaluation at a chosen target) takes precedence over the draw.
    """

    def __init__(self, env: gym.Env, targets: Sequence[float], seed: int | None = 0) -> None:
        super().__init__(env)
        if not targets:
            raise ConfigError("targets must hold at least one target sparsity")
        self.targets = [check_sparsity(t, "target sparsity") for t in targets]
        check_target = getattr(env.unwrapped, "_check_target", None)
        for target in self.targets if check_target is not None else ():
            check_target(target)  # a target the env cannot reach fails now, not when an episode draws it
        self._rng = np.random.default_rng(seed)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        options = dict(options or {})
        if "target_sparsity" not in options:
            options["target_sparsity"] = float(self.targets[self._rng.integers(len(self.targets))])
        return self.env.reset(seed=seed, options=options)


def make_training_env(
    env_id: str,
    targets: Sequence[float] | None = None,
    seed: int | None = 0,
    n_envs: int = 1,
    **env_kwargs: Any,
) -> gym.Env | VecEnv:
    """``gym.make(env_id, **env_kwargs)``, with a target drawn per episode when several are given.

    Training envs score the test split at an episode's end only where it is held on the device
    (``evaluate_test=None`` unless ``env_kwargs`` says otherwise): training never reads it, and
    ImageNet's 50,000 validation JPEGs would cost about 260 s per episode (``benchmarks/README.md``).

    With ``n_envs > 1``: a ``SubprocVecEnv`` of that many such envs, one process each (seeds
    ``seed``, ``seed + 1``, ...; each with this process's torch thread count), so that the
    evaluations of the pruned networks, which dominate the cost of a step, run in parallel.
    """
    env_kwargs = {"evaluate_test": None, **env_kwargs}
    if int(n_envs) > 1:
        factories = [
            partial(_worker_env, env_id, targets, None if seed is None else seed + index, torch.get_num_threads(), env_kwargs)
            for index in range(int(n_envs))
        ]
        return SubprocVecEnv(factories)
    env_kwargs = dict(env_kwargs)
    if targets is not None and len(targets) == 1:
        env_kwargs["target_sparsity"] = check_sparsity(targets[0], "target sparsity")
    env = gym.make(env_id, **env_kwargs)
    if targets is not None and len(targets) > 1:
        env = TargetSamplingWrapper(env, targets, seed=seed)
    return env


def _worker_env(env_id: str, targets, seed, threads: int, env_kwargs: dict[str, Any]) -> gym.Env:
    # Runs in a fresh worker process (importing this module there registered the env ids):
    # match the parent's threads.
    torch.set_num_threads(threads)
    return Monitor(make_training_env(env_id, targets, seed=seed, **env_kwargs))


@dataclass
class TrainResult:
    """What ``train_agent`` produced."""

    model: BaseAlgorithm
    model_path: Path
    output_dir: Path
    num_timesteps: int
    seconds: float
    resumed_from: Path | None = None
    #: Every finished training episode of this run (this process) and the best per target.
    episodes: EpisodeRecorder | None = None


def agent_env_kwargs_for(
    algo: str, env_id: str, shared: Mapping[str, Any], action_type: str,
    hyperparams: str | os.PathLike | Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The agent's ``gym.make`` kwargs: the shared kwargs over the env kwargs its hyperparameters
    were tuned with, in ``action_type``, without a fixed target (the target is drawn per episode)."""
    kwargs = {**env_kwargs_from_hyperparams(algo, env_id, hyperparams), **shared, "action_type": action_type}
    kwargs.pop("target_sparsity", None)
    return kwargs


def train_agent(
    env_id: str,
    algo: str = "dqn",
    timesteps: int | None = None,
    *,
    output_dir: str | os.PathLike | None = None,
    hyperparams: str | os.PathLike | Mapping[str, Any] | None = None,
    targets: Sequence[float] | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    checkpoint_freq: int = 5000,
    resume: bool | str | os.PathLike = False,
    progress_bar: bool = True,
    tensorboard: bool = True,
    verbose: int = 0,
    env: gym.Env | VecEnv | None = None,
    resumable: bool = True,
    n_envs: int | None = None,
    log: Callable[[str], None] | None = None,
    on_episode: Callable[[EpisodeRecorder], None] | None = None,
) -> TrainResult:
    """Train ``algo`` on ``env_id`` for ``timesteps`` steps in total, with checkpoints.

    Args:
        env_id: a registered prune-gym id (``prune-gym envs`` lists them).
        algo: see ``prune_gym.agents.ALGORITHMS``; DQN needs ``action_type="discrete"`` (the
            default), SAC/TD3/DDPG need ``env_kwargs={"action_type": "continuous"}``.
        timesteps: the total number of env steps of the run, counting the steps of a run that
            is resumed (default: the hyperparameters' ``n_timesteps``).
        output_dir: the run folder (default ``runs/<env_id>-<algo>``).
        hyperparams: as in :func:`prune_gym.agents.make_agent`.
        targets: target sparsities; several are drawn per episode (one agent for all), one
            fixes the target; None keeps the env's own target.
        env_kwargs: extra ``gym.make`` kwargs (``action_type``, ``device``, ``reward``...), over
            the ``env_kwargs`` of the hyperparameters.
        seed: seeds the agent and the target draws.
        checkpoint_freq: save a checkpoint every this many steps (0: only at the end).
        resume: True continues from the newest checkpoint in ``output_dir``; a path continues
            from that checkpoint.
        progress_bar: a progress bar on a terminal, a plain line every 30 s in a log file
            (:class:`~prune_gym.agents.callbacks.TrainingProgress`).
        tensorboard: TensorBoard logs, SB3's scalars plus the pruning metrics (``prune/``).
        verbose: SB3's verbosity.
        env: an env to train in instead of building one from ``env_id``; ``targets`` and
            ``env_kwargs`` then only describe it in ``run.json`` (pass the ones it was built with).
        resumable: also save the final agent as a checkpoint, with its replay buffer, so that
            ``resume`` can extend the run (False: only ``model.zip``, without replay buffer).
        n_envs: envs stepping in parallel, one process each (default: the hyperparameters'
            ``n_envs``, else 1); ignored when ``env`` is given. The envs built here are closed
            when training ends.
        log: where the note on what is trained goes (None: the ``prune_gym`` logger).
        on_episode: called with the :class:`EpisodeRecorder` after every finished episode
            (``prune-gym sweep`` reports its metrics to Ray Tune from there).

    Returns:
        A :class:`TrainResult`; the final agent is also saved as ``<output_dir>/model.zip``,
        the best episode per target (reward split) as ``best_found.json``.

    Raises:
        ValueError: if ``output_dir`` already holds a run and ``resume`` is False.
        KeyboardInterrupt: after saving a checkpoint of the steps done so far.
    """
    algo = algo.lower()
    env_kwargs = dict(env_kwargs or {})
    hyperparams = resolve_hyperparams(algo, env_id, hyperparams)  # read once, before anything else
    output = Path(output_dir) if output_dir is not None else Path("runs") / f"{env_id}-{algo}"
    if isinstance(checkpoint_freq, bool) or not isinstance(checkpoint_freq, int) or checkpoint_freq < 0:
        raise ConfigError(f"checkpoint_freq must be a whole number >= 0 (0: only at the end), got {checkpoint_freq!r}")
    if not resume:
        refuse_existing_run(output)  # before the lock, which writes into the folder
    # One training per run folder at a time: a second one refuses at once, naming the holder.
    with run_lock(output):
        # Find the checkpoint (or refuse to overwrite a run) before building anything.
        candidates = checkpoints_to_resume(output, algo, resume) if resume else refuse_existing_run(output)
        owned_env = env is None
        if env is None:
            env, env_kwargs = _build_training_env(env_id, algo, hyperparams, env_kwargs, targets, seed, n_envs)
        if timesteps is None:
            timesteps = default_timesteps(algo, env, hyperparams)
        if int(timesteps) < 0:
            raise ConfigError(f"timesteps must be >= 0, got {timesteps}")
        timesteps = int(timesteps)
        tensorboard_dir = output / "tensorboard" if tensorboard else None
        count = getattr(env, "num_envs", 1)
        (log or logger.info)(
            f"training {algo.upper()} for {timesteps:,} steps ({env_kwargs.get('action_type', 'discrete')} actions, "
            f"{count} env{'s in parallel' if count > 1 else ''}), "
            + (f"one target per episode drawn from {list(targets)}" if targets and len(targets) > 1
           else f"target {targets[0]}" if targets else "the env's own target")
        )
        model, resumed_from = _build_or_resume_agent(
            env, algo, hyperparams, seed, tensorboard_dir, verbose, output, candidates if resume else None
        )

        run_record = _run_record(env_id, algo, env_kwargs, targets, hyperparams, timesteps, seed)
        atomic_write_json(output / "run.json", {**run_record, "status": "running"})
        recorder = EpisodeRecorder(output / "episodes.jsonl", tensorboard=tensorboard, on_episode=on_episode)
        if resumed_from is not None:
            recorder.restore(int(model.num_timesteps))  # one record of the whole run, cut at the checkpoint
        started = time.perf_counter()
        remaining = max(timesteps - model.num_timesteps, 0)
        if remaining:
            callbacks = _callbacks(model, algo, recorder, progress_bar, checkpoint_freq, output / "checkpoints")
            _learn(model, remaining, callbacks, algo, resumed_from is None, output, run_record, recorder)
        seconds = time.perf_counter() - started
        if resumable:
            save_agent(model, output / "checkpoints" / f"{algo}_{model.num_timesteps}_steps.zip")
        model_path = save_agent(model, output / "model.zip", replay_buffer=resumable)
        write_best_found(recorder.records, output / "best_found.json")
        atomic_write_json(output / "run.json", {**run_record, "status": "finished", "num_timesteps": int(model.num_timesteps)})
        if owned_env:
            env.close()
        return TrainResult(model, model_path, output, model.num_timesteps, seconds, resumed_from, recorder)


def _build_training_env(
    env_id: str, algo: str, hyperparams: Any, env_kwargs: dict[str, Any], targets: Sequence[float] | None, seed: int,
    n_envs: int | None,
) -> tuple[VecEnv, dict[str, Any]]:
    """The training env from ``env_id``, the hyperparameters' env settings under ``env_kwargs``."""
    check_algo(algo, env_kwargs.get("action_type", "discrete"))  # fail before loading anything
    env_kwargs = {**env_kwargs_from_hyperparams(algo, env_id, hyperparams), **env_kwargs}
    if n_envs is None:
        n_envs = int(load_hyperparams(algo, env_id, hyperparams).get("n_envs", 1))
    if n_envs > 1:
        # Load (and on first use train and cache) the task's model once, here, rather
        # than in every worker process at the same time.
        gym.make(env_id, **env_kwargs).close()
    return make_training_env(env_id, targets, seed=seed, n_envs=n_envs, **env_kwargs), env_kwargs


def _build_or_resume_agent(
    env: gym.Env | VecEnv, algo: str, hyperparams: Any, seed: int, tensorboard_dir: Path | None, verbose: int,
    output: Path, candidates: list[Path] | None,
) -> tuple[BaseAlgorithm, Path | None]:
    """A new agent, or the newest readable checkpoint of ``candidates``; (agent, resumed from)."""
    created = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    try:
        if candidates is None:
            model, resumed_from = make_agent(env, algo, hyperparams, seed=seed, tensorboard_log=tensorboard_dir,
                                             verbose=verbose), None
        else:
            model, resumed_from = load_newest_readable(candidates, env, algo, output)
            if tensorboard_dir is not None:
                model.tensorboard_log = str(tensorboard_dir)
        if tensorboard_dir is None and not verbose:
            # Without a logger of its own SB3 makes an empty SB3-<time> folder in the system's
            # temporary folder at every learn(): give it one that writes nowhere.
            model.set_logger(Logger(folder=None, output_formats=[]))
        return model, resumed_from
    except BaseException:
        if created and not any(output.iterdir()):
            output.rmdir()  # nothing was written: leave no empty run folder behind
        raise


def _callbacks(
    model: BaseAlgorithm, algo: str, recorder: EpisodeRecorder, progress_bar: bool, checkpoint_freq: int,
    checkpoints: Path,
) -> list:
    callbacks: list = [recorder]
    if progress_bar:
        callbacks.append(TrainingProgress(recorder))
    if checkpoint_freq:
        callbacks.append(
            CheckpointCallback(
                # CheckpointCallback counts calls, one per step of all envs together.
                save_freq=max(int(checkpoint_freq) // model.n_envs, 1), save_path=str(checkpoints), name_prefix=algo,
                save_replay_buffer=isinstance(model, OffPolicyAlgorithm),
            )
        )
    return callbacks


def _learn(
    model: BaseAlgorithm, steps: int, callbacks: list, algo: str, new_run: bool, output: Path,
    run_record: dict[str, Any], recorder: EpisodeRecorder,
) -> None:
    """``model.learn``; on Ctrl-C a checkpoint of the steps done so far, then the interrupt."""
    try:
        model.learn(
            total_timesteps=steps, callback=callbacks, progress_bar=False, reset_num_timesteps=new_run,
            tb_log_name=algo,
        )
    except (KeyboardInterrupt, EOFError, BrokenPipeError, ConnectionResetError):
        # Ctrl-C (a worker process of a parallel env may see it first and close its pipe).
        path = save_agent(model, output / "checkpoints" / f"{algo}_interrupted_{model.num_timesteps}_steps.zip")
        atomic_write_json(output / "run.json", {**run_record, "status": "interrupted"})
        write_best_found(recorder.records, output / "best_found.json")
        logger.warning(f"interrupted: saved {model.num_timesteps} steps to {path}; continue with --resume")
        raise
    except BaseException:
        record_failure(output / "run.json", run_record)
        raise


def _run_record(env_id, algo, env_kwargs, targets, hyperparams, timesteps, seed) -> dict[str, Any]:
    settings = load_hyperparams(algo, env_id, hyperparams)
    return {
        "env_id": env_id,
        "algo": algo,
        "env_kwargs": env_kwargs,
        "targets": [float(t) for t in targets] if targets is not None else None,
        "timesteps": timesteps,
        "seed": seed,
        "hyperparams": {k: (v if isinstance(v, int | float | str | bool | list | type(None)) else str(v)) for k, v in settings.items()},
    }
