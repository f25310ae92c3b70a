"""A training run's folder: its lock, its record, its agent files, and what a resume reads.

``prune_gym.agents.training.train_agent`` writes the folder (its layout is described there);
this module owns the rules every reader and writer of it shares: the checkpoint names and when
a checkpoint is complete, saving and loading an agent (only the files named are unpickled), the
exclusive lock a training holds, the refusal to train into a folder that holds another run, and
marking a run "failed" even when the disk is full.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from prune_gym.agents.factory import ALGORITHMS
from prune_gym.errors import ConfigError, MissingResourceError
from prune_gym.io import atomic_write_json, json_text

logger = logging.getLogger(__name__)

__all__ = [
    "checkpoints_newest_first", "checkpoints_to_resume", "holds_run", "is_complete_checkpoint", "latest_checkpoint",
    "load_agent", "load_newest_readable", "record_failure", "refuse_existing_run", "run_lock", "save_agent",
]


_CHECKPOINT_NAME = re.compile(r"^(?P<algo>[a-z0-9]+)_(?:interrupted_)?(?P<steps>\d+)_steps\.zip$")


def checkpoints_newest_first(output_dir: str | os.PathLike, algo: str | None = None) -> list[Path]:
    """The checkpoints in ``<output_dir>/checkpoints``, most steps first."""
    folder = Path(output_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _CHECKPOINT_NAME.match(path.name)
        if match is not None and (algo is None or match["algo"] == algo):
            found.append((int(match["steps"]), path))
    return [path for _, path in sorted(found, key=lambda item: item[0], reverse=True)]


def is_complete_checkpoint(path: Path) -> bool:
    """A whole zip file and, for an off-policy algorithm, its replay buffer beside it.

    A kill between the two writes (or during one) leaves an incomplete checkpoint; resuming
    from it would silently start with an empty replay buffer.
    """
    if not zipfile.is_zipfile(path):
        return False
    match = _CHECKPOINT_NAME.match(path.name)
    algo = match["algo"] if match else None
    off_policy = algo in ALGORITHMS and issubclass(ALGORITHMS[algo][0], OffPolicyAlgorithm)
    buffer = _replay_buffer_path(path)
    return not off_policy or (buffer.is_file() and buffer.stat().st_size > 0 and _ends_like_a_pickle(buffer))


def _ends_like_a_pickle(path: Path) -> bool:
    """Whether the file ends with pickle's STOP opcode, as every whole pickle does: a buffer cut
    off by a kill or a full disk does not (checked without unpickling anything)."""
    with path.open("rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == pickle.STOP


def latest_checkpoint(output_dir: str | os.PathLike, algo: str | None = None) -> Path | None:
    """The complete checkpoint with the most steps in ``<output_dir>/checkpoints`` (None if none)."""
    return next((path for path in checkpoints_newest_first(output_dir, algo) if is_complete_checkpoint(path)), None)


def _replay_buffer_path(model_path: Path) -> Path:
    # CheckpointCallback's naming: <prefix>_replay_buffer_<N>_steps.pkl next to <prefix>_<N>_steps.zip
    match = _CHECKPOINT_NAME.match(model_path.name)
    if match is not None:
        interrupted = "interrupted_" if "_interrupted_" in model_path.name else ""
        return model_path.with_name(f"{match['algo']}_{interrupted}replay_buffer_{match['steps']}_steps.pkl")
    return model_path.with_name(model_path.stem + "_replay_buffer.pkl")


def save_agent(model: BaseAlgorithm, path: str | os.PathLike, replay_buffer: bool = True) -> Path:
    """Save ``model`` (and, for off-policy agents, its replay buffer next to it, which a resumed
    run needs to continue exactly where it stopped)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    if replay_buffer and isinstance(model, OffPolicyAlgorithm) and model.replay_buffer is not None:
        model.save_replay_buffer(_replay_buffer_path(path))
    return path


def load_agent(path: str | os.PathLike, env: Any | None = None, algo: str | None = None, device: str = "cpu",
               replay_buffer: bool = False) -> BaseAlgorithm:
    """Load an agent saved by ``train_agent``/``compare`` (the algorithm is read from the file name
    when ``algo`` is None). Only ``path`` is unpickled unless ``replay_buffer=True`` (resuming a
    run, which needs it): then the replay buffer saved next to it is restored too. Both are
    pickles that can run code: load only files you made or trust."""
    path = Path(path)
    if not path.is_file():
        raise MissingResourceError(f"no agent file at {path}: train one with `prune-gym train ENV` first")
    if algo is None:
        match = _CHECKPOINT_NAME.match(path.name)
        algo = match["algo"] if match else _algo_from_run_json(path)
    if algo is None or algo.lower() not in ALGORITHMS:
        raise ConfigError(f"cannot tell the algorithm of {path}: pass algo= (one of {', '.join(ALGORITHMS)})")
    cls = ALGORITHMS[algo.lower()][0]
    try:
        model = cls.load(path, env=env, device=device)
    except (TypeError, AttributeError, KeyError) as error:  # the file holds another algorithm's agent
        saved = _saved_policy(path)
        raise ConfigError(
            f"{path} does not load as a {algo.upper()} agent ({type(error).__name__}: {error})"
            + (f"; the file holds an {saved}" if saved else "")
            + f": pass the algorithm it was trained with (--algo / algo=, one of {', '.join(ALGORITHMS)})"
        ) from None
    buffer = _replay_buffer_path(path)
    if replay_buffer and isinstance(model, OffPolicyAlgorithm) and buffer.is_file():
        model.load_replay_buffer(buffer)
    return model


#: Which algorithms save a policy of each SB3 module.
_POLICY_ALGOS = {"dqn": "dqn", "sac": "sac", "td3": "td3 or ddpg", "common": "ppo or a2c"}


def _saved_policy(path: Path) -> str | None:
    """What an SB3 zip's ``data`` entry (plain JSON) says of its policy: ``"ActorCriticPolicy
    (trained with ppo or a2c)"``; None if unreadable."""
    try:
        with zipfile.ZipFile(path) as archive:
            policy = json.loads(archive.read("data"))["policy_class"]
        name = re.match(r"<function (\w+)\.", policy.get("__init__", ""))
        family = policy["__module__"].split(".")[1]
    except (OSError, KeyError, IndexError, ValueError, TypeError, AttributeError, zipfile.BadZipFile):
        return None
    return f"{name.group(1) if name else 'policy'} (trained with {_POLICY_ALGOS.get(family, family)})"


def _algo_from_run_json(path: Path) -> str | None:
    record = path.parent / "run.json"
    if record.is_file():
        try:
            return json.loads(record.read_text()).get("algo")
        except (ValueError, AttributeError):
            return None  # unreadable: the caller then asks for algo=
    return None


@contextmanager
def run_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on a run folder while a training writes into it (``fcntl.flock`` on
    ``<folder>/.lock``, released when the training ends, however its process ends).

    Raises:
        ValueError: naming the holder's process id, if another training holds the folder.
    """
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / ".lock", "a+")  # noqa: SIM115  (held open for the whole training)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(
            f"{folder} is being trained into by process {holder}: wait for it to finish, or pass another --output "
            "(output_dir=)"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def refuse_existing_run(output: Path) -> None:
    if holds_run(output):
        raise ConfigError(
            f"{output} already holds a training run ({', '.join(holds_run(output))}): pass --resume "
            f"(resume=True) to continue it, or another --output (output_dir=) to start a new run"
        )


def record_failure(path: Path, run_record: dict[str, Any]) -> None:
    """Mark the run "failed" in ``run.json``, also when the failure is the machine's: on a full
    disk the atomic write (a new file) fails, so the file is rewritten in place (its blocks are
    already allocated, and "failed" is shorter than "running"). On a read-only disk nothing can
    be written: say so rather than hide the training's own error."""
    record = {**run_record, "status": "failed"}
    try:
        atomic_write_json(path, record)
        return
    except OSError:
        pass
    try:
        with open(path, "r+", encoding="utf-8") as handle:
            handle.write(json_text(record))
            handle.truncate()
    except OSError as error:
        logger.warning(f"could not mark {path} as failed ({error.strerror or error}): it still says \"running\"")


def checkpoints_to_resume(output: Path, algo: str, resume: bool | str | os.PathLike) -> list[Path]:
    """The checkpoints to try, best first: the one named, or the complete ones newest first."""
    if resume is not True:
        path = Path(resume)
        if not path.is_file():
            raise MissingResourceError(f"--resume {path}: no such checkpoint file")
        if not is_complete_checkpoint(path):
            raise ConfigError(f"--resume {path}: the checkpoint is incomplete (a damaged zip, or its replay buffer is missing)")
        return [path]
    found = checkpoints_newest_first(output, algo)
    complete = [path for path in found if is_complete_checkpoint(path)]
    if not complete:
        raise MissingResourceError(
            f"--resume: no complete {algo} checkpoint in {output / 'checkpoints'}"
            + (f" ({len(found)} incomplete: a damaged zip or a missing replay buffer)" if found else "")
            + "; train without --resume into a new --output (or pass a checkpoint's path)"
        )
    if found[0] != complete[0]:
        logger.warning(f"resume: the newest checkpoint {found[0].name} is incomplete (a kill while it was "
                       f"written); resuming from {complete[0].name}, the newest complete one")
    return complete


def load_newest_readable(candidates: list[Path], env, algo: str, output: Path) -> tuple[BaseAlgorithm, Path]:
    """Load the first checkpoint of ``candidates`` that reads; say which were skipped and why."""
    unreadable = (EOFError, pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, KeyError, OSError)
    for index, path in enumerate(candidates):
        try:
            return load_agent(path, env=env, algo=algo, replay_buffer=True), path
        except ValueError as error:
            raise ConfigError(
                f"cannot resume from {path}: {error}. Resume with the env kwargs of the run "
                f"(see {output / 'run.json'})"
            ) from None
        except unreadable as error:
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            if index + 1 == len(candidates):
                raise ConfigError(f"cannot read the checkpoint {path} ({type(error).__name__}: {reason}); "
                                 "no older complete checkpoint is left to resume from") from None
            logger.warning(f"resume: cannot read {path.name} ({type(error).__name__}: {reason}); trying "
                           f"{candidates[index + 1].name}")
    raise MissingResourceError("no checkpoint to resume from")


#: Files whose presence marks a folder as holding a training run.
_RUN_MARKERS = ("run.json", "model.zip", "checkpoints", "episodes.jsonl")


def holds_run(folder: str | os.PathLike) -> list[str]:
    """The run files in ``folder`` (empty if it holds no training run)."""
    folder = Path(folder)
    return [name for name in _RUN_MARKERS if (folder / name).exists()]
