"""Replay what a comparison recorded and check it scores what it says (``prune-gym validate``).

A comparison's folder holds two kinds of record of each method at each target: the rows of
``results.json`` and the recipes in ``recipes/`` (a sweep's folder: each finished trial's
``trials/<trial>/recipes/``), each with its per-layer sparsities and the
accuracies the env reported. :func:`validate` prunes the dense model again with each record's
sparsities, through the same env (the env id and kwargs the comparison used, continuous
absolute actions, exactly as ``compare`` replays a recipe), and checks that the reward-split
and test accuracies it gets are the recorded ones, as CompilerGym's ``validate`` replays a
state. A record that was edited, or made with other data or weights, fails with the method,
the target and both accuracies named.

What is replayed is the pruned network before any fine-tuning (``finetuned_test_accuracy``,
when a row has one, depends on the fine-tuning run and is not checked). On the machine and
device the comparison ran on a replay matches to the sample; elsewhere (CPU vs CUDA, AMP) a
few samples may flip, which ``tolerance`` admits.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym

from prune_gym.agents.policies import RecipePolicy
from prune_gym.agents.report import MethodResult
from prune_gym.agents.rollout import run_episode
from prune_gym.errors import ConfigError, MissingResourceError
from prune_gym.io import read_json
from prune_gym.recipes import recipe_from_json
from prune_gym.workflows.methods import reference_env_kwargs

logger = logging.getLogger(__name__)

__all__ = ["Replay", "ReplayRecord", "format_replays", "read_records", "validate"]

RESULTS_FILE = "results.json"
RECIPES_FOLDER = "recipes"
SWEEP_FILE = "sweep.json"


@dataclass(frozen=True)
class ReplayRecord:
    """One recorded method at one target: where it came from, how to rebuild its env, what it scored."""

    source: str
    env_id: str
    env_kwargs: dict[str, Any]
    method: str
    target: float
    layer_sparsities: dict[str, float]
    reward_accuracy: float
    test_accuracy: float | None
    #: False for a recipe that does not record its env kwargs (one written before recipes did,
    #: with no results.json above it): replayed with the env's defaults.
    kwargs_recorded: bool = True

    def env_key(self) -> str:
        return json.dumps([self.env_id, self.env_kwargs], sort_keys=True, default=str)

    def allocation_key(self) -> tuple[Any, ...]:
        return (self.env_key(), self.target, tuple(sorted(self.layer_sparsities.items())))


@dataclass(frozen=True)
class Replay:
    """A record and what replaying it gave."""

    record: ReplayRecord
    reward_accuracy: float
    test_accuracy: float | None
    tolerance: float
    problems: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems


def read_records(paths: Iterable[str | Path]) -> list[ReplayRecord]:
    """Every record in ``paths``: a comparison folder (its ``results.json`` rows and its
    ``recipes/``), a sweep's folder (its trials' recipes), a ``results.json``, a folder of
    recipes, or one recipe file; all read and checked before anything is replayed.

    Raises:
        MissingResourceError: a path that does not exist, or a folder with no record in it.
        ConfigError: a file that is not a comparison's results or a recipe with its env id.
    """
    records: list[ReplayRecord] = []
    comparisons: dict[Path, dict[str, Any] | None] = {}  # each results.json's env kwargs, read once
    for path in map(Path, paths):
        if not path.exists():
            raise MissingResourceError(f"nothing at {path}: give a comparison's folder (`prune-gym compare --output`), "
                                       "its results.json, its recipes/ folder or one recipe file")
        records += _records_in(path, comparisons)
    if not records:
        raise MissingResourceError(f"no record to replay in {', '.join(map(str, paths))}: a comparison's folder holds "
                                   "results.json and recipes/")
    return records


def _records_in(path: Path, comparisons: dict[Path, dict[str, Any] | None]) -> list[ReplayRecord]:
    if path.is_file():
        return _results_records(path, comparisons) if path.name == RESULTS_FILE else [_recipe_record(path, comparisons)]
    if (path / SWEEP_FILE).is_file():  # a sweep: every finished trial's recipes
        return [_recipe_record(file, comparisons) for file in sorted(path.glob(f"trials/*/{RECIPES_FOLDER}/*.json"))]
    records = _results_records(path / RESULTS_FILE, comparisons) if (path / RESULTS_FILE).is_file() else []
    recipes = path / RECIPES_FOLDER if (path / RECIPES_FOLDER).is_dir() else path
    return records + [_recipe_record(file, comparisons) for file in sorted(recipes.glob("*.json"))
                      if file.name != RESULTS_FILE]


def _read_record_file(path: Path) -> Any:
    return read_json(path, "restore the file the comparison wrote")


def _results_records(path: Path, comparisons: dict[Path, dict[str, Any] | None]) -> list[ReplayRecord]:
    """The rows of a comparison's ``results.json`` (its env kwargs kept in ``comparisons``)."""
    data = _read_record_file(path)
    if not isinstance(data, dict) or not isinstance(data.get("results"), list) or "env_id" not in data:
        raise ConfigError(f"{path} is not a comparison's results.json (it needs 'env_id' and 'results')")
    env_kwargs = comparisons[path] = _matched_env_kwargs(data, str(path))
    records = []
    for index, row in enumerate(data["results"]):
        source = f"{path} row {index + 1}"
        row = MethodResult.from_json(row, source)
        records.append(_record(source, data["env_id"], env_kwargs, row.method, row.target_sparsity,
                               row.layer_sparsities, row.reward_accuracy, row.test_accuracy))
    return records


def _matched_env_kwargs(results: Mapping[str, Any], source: str) -> dict[str, Any]:
    matched = results.get("matched", {})
    env_kwargs = matched.get("env_kwargs", {}) if isinstance(matched, dict) else None
    if not isinstance(env_kwargs, dict):
        raise ConfigError(f"{source}: 'matched.env_kwargs' must be the env kwargs the comparison used (a JSON object)")
    return env_kwargs


def _recipe_record(path: Path, comparisons: dict[Path, dict[str, Any] | None]) -> ReplayRecord:
    """A recipe that ``compare`` wrote (its ``meta`` names the env, method, target and accuracies).
    A recipe from before recipes recorded their env kwargs takes them from the ``results.json``
    of its comparison (the folder above ``recipes/``), else the env's defaults."""
    recipe = recipe_from_json(_read_record_file(path), source=str(path))
    meta = recipe.meta
    if "env_id" not in meta or "reward_accuracy" not in meta:
        raise ConfigError(f"{path}: a recipe to replay needs meta.env_id and meta.reward_accuracy (the recipes "
                          "`prune-gym compare` writes have them); this one cannot be checked")
    env_kwargs = meta.get("env_kwargs")
    if env_kwargs is None:
        results = path.parent.parent / RESULTS_FILE
        if results not in comparisons:
            comparisons[results] = _matched_env_kwargs(_read_record_file(results), str(results)) if results.is_file() else None
        env_kwargs = comparisons[results]
    recorded = env_kwargs is not None
    env_kwargs = {} if env_kwargs is None else env_kwargs
    if not isinstance(env_kwargs, dict):
        raise ConfigError(f"{path}: meta.env_kwargs must be a JSON object (the env kwargs of the comparison)")
    record = _record(str(path), meta["env_id"], env_kwargs, meta.get("method", path.stem), meta.get("target_sparsity"),
                     recipe.layers, meta["reward_accuracy"], meta.get("test_accuracy"))
    return record if recorded else dataclasses.replace(record, kwargs_recorded=False)


def _record(source: str, env_id: Any, env_kwargs: dict[str, Any], method: Any, target: Any, layers: Any,
            reward_accuracy: Any, test_accuracy: Any) -> ReplayRecord:
    def number(value: Any, what: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{source}: {what} must be a number, got {value!r}")
        return float(value)

    if not isinstance(env_id, str) or not isinstance(method, str):
        raise ConfigError(f"{source}: the env id and the method must be strings, got {env_id!r} and {method!r}")
    if not isinstance(layers, dict) or not layers:
        raise ConfigError(f"{source}: 'layer_sparsities' must map each layer to its sparsity")
    test = None if test_accuracy is None else number(test_accuracy, "test_accuracy")
    return ReplayRecord(
        source=source, env_id=env_id, env_kwargs=dict(env_kwargs), method=method, target=number(target, "the target"),
        layer_sparsities={str(name): number(value, f"layer {name!r}'s sparsity") for name, value in layers.items()},
        reward_accuracy=number(reward_accuracy, "reward_accuracy"),
        test_accuracy=None if test is None or math.isnan(test) else test,
    )


def validate(
    paths: Sequence[str | Path] | str | Path, *, tolerance: float = 0.0, device: str | None = None,
    log: Callable[[str], None] | None = None,
) -> list[Replay]:
    """Replay every record in ``paths`` (see :func:`read_records`) and check its accuracies.

    Args:
        paths: comparison folders, ``results.json`` files, recipe folders or recipe files.
        tolerance: the largest difference of accuracy (a fraction: 0.01 is one point) that still
            passes; 0 (default) asks for the same result to the sample, as on the machine and
            device that made the record.
        device: replay on this device (None: the recorded env kwargs' device, else the env's
            default, CUDA when present).
        log: where progress lines go (None: the ``prune_gym`` logger).

    Returns:
        One :class:`Replay` per record, in the order read; ``ok`` is False where an accuracy differs.
    """
    say = log or logger.info
    if isinstance(paths, str | Path):
        paths = [paths]
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not 0.0 <= tolerance < 1.0:
        raise ConfigError(f"tolerance is an accuracy difference in [0, 1) (0.01 = one point), got {tolerance!r}")
    records = read_records(paths)
    replayed: dict[tuple[Any, ...], tuple[float, float | None]] = {}
    envs: dict[str, gym.Env] = {}
    try:
        for number, record in enumerate(records, 1):
            key = record.allocation_key()
            if key not in replayed:
                env = envs.get(record.env_key())
                if env is None:
                    env = envs[record.env_key()] = _replay_env(record, device, say)
                row = run_episode(RecipePolicy(env, record.layer_sparsities), env, record.target, method=record.method)
                replayed[key] = (row.reward_accuracy, None if math.isnan(row.test_accuracy) else row.test_accuracy)
            say(f"replayed {number}/{len(records)}: {record.method} at {record.target:g}")
    finally:
        for env in envs.values():
            env.close()
    return [_check(record, *replayed[record.allocation_key()], tolerance) for record in records]


def _replay_env(record: ReplayRecord, device: str | None, say: Callable[[str], None]) -> gym.Env:
    # The reference policies' env, as compare builds it: continuous absolute actions play the
    # recorded sparsities exactly; the test split is scored once per replay by run_episode.
    kwargs = reference_env_kwargs(record.env_kwargs, record.target)
    if device is not None:
        kwargs["device"] = device
    say(f"building {record.env_id} ({', '.join(f'{k}={v}' for k, v in record.env_kwargs.items()) or 'default kwargs'})")
    return gym.make(record.env_id, **kwargs)


def _check(record: ReplayRecord, reward: float, test: float | None, tolerance: float) -> Replay:
    problems = []
    slack = tolerance + 1e-9
    label = f"{record.method} at {record.target:g}"
    if abs(reward - record.reward_accuracy) > slack:
        problems.append(f"{label}: recorded reward-split accuracy {100 * record.reward_accuracy:.2f}%, "
                        f"replayed {100 * reward:.2f}%")
    if record.test_accuracy is not None and test is not None and abs(test - record.test_accuracy) > slack:
        problems.append(f"{label}: recorded test accuracy {100 * record.test_accuracy:.2f}%, replayed {100 * test:.2f}%")
    if problems and not record.kwargs_recorded:
        problems.append(f"{label}: the recipe does not record the env kwargs it was made with, so it was replayed "
                        "with the env's defaults; a recipe from a comparison with other kwargs (budget, "
                        "channel_multiple, max_sparsity...) cannot be checked this way")
    return Replay(record, reward, test, tolerance, tuple(problems))


def format_replays(replays: Sequence[Replay]) -> str:
    """A table of the replays and, below it, every mismatch in full."""
    def cell(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.2f}"

    rows = [("method", "target", "reward rec.", "replayed", "test rec.", "replayed", "", "source")]
    for replay in replays:
        record = replay.record
        rows.append((record.method, f"{record.target:g}", cell(record.reward_accuracy), cell(replay.reward_accuracy),
                     cell(record.test_accuracy), cell(replay.test_accuracy), "ok" if replay.ok else "FAILED",
                     record.source))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    failed = [replay for replay in replays if not replay.ok]
    tolerance = replays[0].tolerance if replays else 0.0
    lines.append("")
    lines.append(f"{len(replays) - len(failed)} of {len(replays)} records replay to their accuracies "
                 f"(accuracies in %, tolerance {100 * tolerance:g} points)")
    lines += [f"FAILED {problem}  ({replay.record.source})" for replay in failed for problem in replay.problems]
    return "\n".join(lines)
