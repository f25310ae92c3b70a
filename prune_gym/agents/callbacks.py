"""Training callbacks: every finished episode recorded, progress that reads in a log, TensorBoard.

- :class:`EpisodeRecorder` keeps one :class:`EpisodeRecord` per finished training episode
  (target, per-layer sparsities, reward-split accuracy, return) and the best one per target,
  chosen on the **reward split only** (the test accuracy in the last step's ``info`` is kept
  for reporting and never read by the selection). As AMC and its successors do, the best
  policy found during the search is a result of its own, beside the final greedy policy. It
  also writes the pruning metrics to TensorBoard (``prune/...``: reward-split and test
  accuracy, sparsity and FLOPs reduction at episode end, the best-found accuracy per target,
  the per-layer sparsities as a histogram).
- :class:`TrainingProgress` shows a progress bar on a terminal, and when the output is not a
  terminal (a log file, a cluster job) prints a plain line every ``log_every`` seconds:
  steps, steps/s, episodes, the best reward-split accuracy so far per target, ETA.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from prune_gym.episode import (
    EpisodeRecord,
    append_episode,
    best_per_target,
    read_episodes,
    target_key,
    write_episodes,
)

__all__ = ["EpisodeRecorder", "TrainingProgress"]


class EpisodeRecorder(BaseCallback):
    """Record every finished training episode; keep the best per target (reward split only).

    Works with single and vectorised envs (SB3 passes the last step's ``info`` of an episode
    even when the vectorised env resets it at once). With ``path``, each record is appended
    to that JSON-lines file as it finishes, so a run cut off keeps what it found. ``on_episode``
    is called with the recorder after each record (a sweep reports to Ray Tune from there).
    """

    def __init__(
        self, path: str | os.PathLike | None = None, tensorboard: bool = True, verbose: int = 0,
        on_episode: Callable[[EpisodeRecorder], None] | None = None,
    ) -> None:
        super().__init__(verbose)
        self.path = Path(path) if path is not None else None
        self.tensorboard = tensorboard
        self.on_episode = on_episode
        self.records: list[EpisodeRecord] = []
        self._returns: np.ndarray | None = None
        self._started = time.perf_counter()

    def _on_training_start(self) -> None:
        self._returns = np.zeros(self.training_env.num_envs)
        self._started = time.perf_counter()

    def _on_step(self) -> bool:
        rewards = np.asarray(self.locals.get("rewards", 0.0), dtype=float).reshape(-1)
        dones = np.asarray(self.locals.get("dones", False)).reshape(-1)
        infos = self.locals.get("infos", [{}] * len(dones))
        if self._returns is None or len(self._returns) != len(dones):
            self._returns = np.zeros(len(dones))
        self._returns += rewards if rewards.size == len(dones) else 0.0
        for index, done in enumerate(dones):
            if not done:
                continue
            info = infos[index]
            if "layer_sparsities" in info:  # a finished pruning episode (not a time-limit cut)
                self._record(info, float(self._returns[index]))
            self._returns[index] = 0.0
        return True

    def _record(self, info: dict[str, Any], episode_return: float) -> None:
        record = EpisodeRecord.from_info(info, episode_return=episode_return, timesteps=int(self.num_timesteps),
                                         seconds=time.perf_counter() - self._started)
        self.records.append(record)
        if self.path is not None:
            append_episode(self.path, record)
        if self.tensorboard:
            self._log(record)
        if self.on_episode is not None:
            self.on_episode(self)

    def _log(self, record: EpisodeRecord) -> None:
        logger = self.logger
        logger.record_mean("prune/reward_accuracy", record.reward_accuracy)
        logger.record_mean("prune/overall_sparsity", record.overall_sparsity)
        logger.record_mean("prune/flops_reduction", record.flops_reduction)
        if record.test_accuracy is not None:
            logger.record_mean("prune/test_accuracy", record.test_accuracy)
        best = self.best().get(target_key(record.target_sparsity))
        if best is not None:
            logger.record(f"prune/best_reward_accuracy/target_{target_key(record.target_sparsity)}", best.reward_accuracy)
        # Only TensorBoard draws a histogram; the text formats cannot hold an array.
        logger.record(
            "prune/layer_sparsity", np.asarray(list(record.layer_sparsities.values()), dtype=np.float32),
            exclude=("stdout", "log", "json", "csv"),
        )

    def restore(self, timesteps: int) -> None:
        """Continue the record of a resumed run: the episodes of ``path`` that finished by the
        checkpoint's ``timesteps`` are kept (and become this recorder's, so the best found
        covers the whole run); those recorded after it are dropped from the file, since the
        resumed training plays those steps again."""
        if self.path is None or not self.path.is_file():
            return
        self.records = [record for record in read_episodes(self.path) if record.timesteps <= timesteps]
        write_episodes(self.path, self.records)

    def best(self) -> dict[str, EpisodeRecord]:
        """The best episode per target so far (see :func:`best_per_target`)."""
        return best_per_target(self.records)

    def best_reward_accuracy(self) -> float | None:
        """The highest reward-split accuracy of any finished episode so far (None before one)."""
        return max((r.reward_accuracy for r in self.records), default=None)

    def best_text(self) -> str | None:
        """The best reward-split accuracy per target, for progress lines:
        ``"best reward acc 0.5: 99.4% 0.9: 77.4%"`` (None before the first episode)."""
        best = self.best()
        if not best:
            return None
        cells = [f"{key}: {100 * record.reward_accuracy:.1f}%" for key, record in sorted(best.items())]
        return "best reward acc " + " ".join(cells)


class TrainingProgress(BaseCallback):
    """A progress bar on a terminal; plain lines every ``log_every`` seconds elsewhere.

    Args:
        recorder: where the best reward-split accuracy so far comes from (optional).
        stream: where to write (default ``sys.stderr``, as tqdm does).
        log_every: seconds between plain lines when ``stream`` is not a terminal.
        bar: force the bar (True) or the plain lines (False); default: the bar on a terminal.
    """

    def __init__(
        self, recorder: EpisodeRecorder | None = None, stream: TextIO | None = None,
        log_every: float = 30.0, bar: bool | None = None,
    ) -> None:
        super().__init__(0)
        self.recorder = recorder
        self.stream = stream
        self.log_every = float(log_every)
        self.bar = bar
        self._pbar = None
        self._start_steps = 0
        self._total = 0
        self._started = 0.0
        self._last_line = 0.0

    def _out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stderr

    def _on_training_start(self) -> None:
        self._start_steps = int(self.model.num_timesteps)
        self._total = int(self.locals["total_timesteps"]) - self._start_steps
        self._started = self._last_line = time.perf_counter()
        use_bar = self.bar if self.bar is not None else _is_terminal(self._out())
        if use_bar:
            from tqdm.auto import tqdm

            # A resumed run's bar starts where the run stands, out of the run's total.
            self._pbar = tqdm(total=self._start_steps + self._total, initial=self._start_steps, unit="step",
                              file=self._out(), dynamic_ncols=True)
        else:
            self._line()

    def _on_step(self) -> bool:
        if self._pbar is not None:
            self._pbar.update(self.model.num_timesteps - self._pbar.n)
            best = self.recorder.best_text() if self.recorder is not None else None
            if best is not None:
                self._pbar.set_postfix_str(best, refresh=False)
        elif time.perf_counter() - self._last_line >= self.log_every:
            self._line()
        return True

    def _on_training_end(self) -> None:
        if self._pbar is not None:
            self._pbar.update(self.model.num_timesteps - self._pbar.n)
            self._pbar.close()
            self._pbar = None
        else:
            self._line(final=True)

    def _line(self, final: bool = False) -> None:
        now = time.perf_counter()
        self._last_line = now
        done = int(self.model.num_timesteps) - self._start_steps
        elapsed = now - self._started
        rate = done / elapsed if elapsed > 0 and done else 0.0
        run_total = self._start_steps + self._total  # of the whole run, a resumed one included
        parts = [f"steps {int(self.model.num_timesteps):,}/{run_total:,}"
                 f" ({100 * int(self.model.num_timesteps) / max(run_total, 1):.0f}%)", f"{rate:.1f} steps/s"]
        if self.recorder is not None:
            parts.append(f"episodes {len(self.recorder.records):,}")
            best = self.recorder.best_text()
            if best is not None:
                parts.append(best)
        if final:
            parts.append(f"done in {_duration(elapsed)}")
        elif rate > 0:
            parts.append(f"ETA {_duration((self._total - done) / rate)}")
        print("[train] " + " | ".join(parts), file=self._out(), flush=True)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
