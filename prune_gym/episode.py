"""One finished pruning episode as a record, and the one reader and writer of its files.

An env's last step of an episode says everything about it in ``info`` (the target, each
layer's sparsity, the reward-split accuracy, the share of weights and of FLOPs removed, the
test accuracy when the env scored it). :meth:`EpisodeRecord.from_info` parses that once;
training (``episodes.jsonl``, ``best_found.json``), the search, the comparison (its
``results.json`` rows are :class:`prune_gym.agents.report.MethodResult`, a record with the
method's name and costs), recipes and ``prune-gym validate`` all read and write this one form.

Field names are the env's ``info`` keys. Files written before this record existed named two of
them ``param_sparsity`` and ``flops_sparsity`` (a comparison's rows); :meth:`EpisodeRecord.from_json`
reads those names too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from prune_gym.errors import ConfigError
from prune_gym.io import atomic_write_json, atomic_write_text, read_json

__all__ = ["EpisodeRecord", "best_per_target", "read_best_found", "read_episodes", "target_key", "write_best_found",
           "write_episodes", "append_episode"]

#: Names older files used for fields of the record.
_OLD_NAMES = {"param_sparsity": "overall_sparsity", "flops_sparsity": "flops_reduction"}


def target_key(target: float | None) -> str:
    """A target as the short string that keys records by target (``"0.8"``; ``"none"``)."""
    return "none" if target is None else f"{target:.6g}"


@dataclass(kw_only=True)
class EpisodeRecord:
    """One finished episode: its target, what it pruned and how well the pruned model scored."""

    #: The episode's target sparsity (None: the policy chose freely).
    target_sparsity: float | None
    #: Each prunable layer's sparsity at the end, by qualified module name.
    layer_sparsities: dict[str, float] = field(default_factory=dict)
    reward_accuracy: float
    #: The share of prunable weights removed (channel envs: of the parameters).
    overall_sparsity: float
    #: The share of the dense model's FLOPs removed (NaN where the env does not count them).
    flops_reduction: float
    episode_return: float = 0.0
    #: Wall seconds from the start of the work that produced the record to the episode's end:
    #: the episode itself for a rollout, the training run so far for a training episode.
    seconds: float = 0.0
    #: Reported only, never read to choose (None, or NaN in a comparison's row: not scored).
    test_accuracy: float | None = None
    #: A training episode: the agent's steps when it ended.
    timesteps: int | None = None

    @classmethod
    def from_info(cls, info: Mapping[str, Any], **fields: Any) -> Self:
        """The record of the episode whose last step returned ``info``; ``fields`` give what the
        info does not hold (``episode_return``, ``seconds``, ``timesteps``, a subclass's fields)
        or replace what it does (``target_sparsity``, ``test_accuracy``)."""
        target, test = info.get("target_sparsity"), info.get("test_accuracy")
        values: dict[str, Any] = {
            "target_sparsity": None if target is None else float(target),
            "layer_sparsities": {str(name): float(value) for name, value in info["layer_sparsities"].items()},
            "reward_accuracy": float(info["reward_accuracy"]),
            "overall_sparsity": float(info["overall_sparsity"]),
            "flops_reduction": float(info.get("flops_reduction", math.nan)),
            "test_accuracy": None if test is None else float(test),
        }
        return cls(**{**values, **fields})

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON object (the fields a subclass marks ``repr=False`` are left out)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.repr}

    @classmethod
    def from_json(cls, data: Any, source: str = "record") -> Self:
        """A record from its JSON object (:meth:`to_json`), older field names included; a
        ConfigError naming ``source`` and the missing fields when it is not one."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: an episode record is a JSON object, got {type(data).__name__}")
        values = {_OLD_NAMES.get(key, key): value for key, value in data.items()}
        known = {f.name: f for f in dataclasses.fields(cls) if f.init}
        missing = [name for name, f in known.items() if name not in values
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ConfigError(f"{source}: not an episode record, it lacks {', '.join(missing)}")
        return cls(**{name: value for name, value in values.items() if name in known})


def best_per_target(records: Iterable[EpisodeRecord]) -> dict[str, EpisodeRecord]:
    """The record with the highest reward-split accuracy for each target (earliest on ties),
    keyed by :func:`target_key`. The test accuracy is never read."""
    best: dict[str, EpisodeRecord] = {}
    for record in records:
        key = target_key(record.target_sparsity)
        if key not in best or record.reward_accuracy > best[key].reward_accuracy:
            best[key] = record
    return best


def _line(record: EpisodeRecord) -> str:
    return json.dumps(record.to_json()) + "\n"


def append_episode(path: Path, record: EpisodeRecord) -> None:
    """Add ``record`` as a line of the JSON-lines file ``path`` (a training run's ``episodes.jsonl``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(_line(record))


def write_episodes(path: str | os.PathLike, records: Iterable[EpisodeRecord]) -> Path:
    """Write ``records`` as the JSON-lines file ``path``, atomically (a resumed run's, cut back)."""
    return atomic_write_text(path, "".join(_line(record) for record in records))


def read_episodes(path: str | os.PathLike) -> list[EpisodeRecord]:
    """The records of a JSON-lines file, up to a line cut off when its run was killed (nothing
    after such a line is whole)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            records.append(EpisodeRecord.from_json(json.loads(line)))
        except (ValueError, TypeError):  # ConfigError is a ValueError
            break
    return records


def write_best_found(records: Iterable[EpisodeRecord], path: str | os.PathLike) -> Path:
    """Write the best record per target (reward split) as a training run's ``best_found.json``."""
    records = list(records)
    best = {key: record.to_json() for key, record in sorted(best_per_target(records).items())}
    return atomic_write_json(path, {"selected_on": "reward split", "episodes": len(records), "best_per_target": best})


def read_best_found(path: str | os.PathLike) -> tuple[dict[str, EpisodeRecord], int]:
    """A ``best_found.json``: its best record per target and how many episodes it chose from."""
    data = read_json(path, "restore the training run's file")
    best = data.get("best_per_target") if isinstance(data, dict) else None
    if not isinstance(best, dict):
        raise ConfigError(f"{path} is not a training run's best_found.json (it needs 'best_per_target')")
    records = {str(key): EpisodeRecord.from_json(value, f"{path} target {key}") for key, value in best.items()}
    return records, int(data.get("episodes", 0))
