"""The one episode record: parsed once from an env's last ``info``, one reader and writer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from prune_gym.agents.report import MethodResult
from prune_gym.episode import (
    EpisodeRecord,
    append_episode,
    read_best_found,
    read_episodes,
    write_best_found,
    write_episodes,
)

INFO = {"target_sparsity": np.float32(0.8), "layer_sparsities": {"a": 0.5, "b": np.float64(0.9)},
        "reward_accuracy": 0.75, "overall_sparsity": 0.8, "flops_reduction": 0.7, "test_accuracy": 0.71}


def test_a_record_is_parsed_from_the_last_info_and_round_trips_through_json():
    record = EpisodeRecord.from_info(INFO, episode_return=1.5, seconds=2.0, timesteps=44)
    assert record.target_sparsity == pytest.approx(0.8) and record.layer_sparsities == {"a": 0.5, "b": 0.9}
    assert (record.reward_accuracy, record.test_accuracy, record.timesteps) == (0.75, 0.71, 44)
    text = json.dumps(record.to_json())  # plain Python numbers only
    assert EpisodeRecord.from_json(json.loads(text)) == record
    # The info says nothing of a test split the env did not score; a field given replaces the info's.
    bare = EpisodeRecord.from_info({**INFO, "test_accuracy": None}, target_sparsity=None)
    assert bare.test_accuracy is None and bare.target_sparsity is None and math.isnan(
        EpisodeRecord.from_info({k: v for k, v in INFO.items() if k != "flops_reduction"}).flops_reduction)


def test_a_comparison_row_is_a_record_and_reads_the_older_field_names():
    row = MethodResult.from_info(INFO, method="LAMP", action_type="continuous", test_correct=np.ones(3, bool))
    values = row.to_json()
    assert values["method"] == "LAMP" and "test_correct" not in values and values["overall_sparsity"] == 0.8
    # A results.json written before the record named two fields otherwise.
    old = {**{k: v for k, v in values.items() if k not in ("overall_sparsity", "flops_reduction")},
           "param_sparsity": 0.8, "flops_sparsity": 0.7}
    assert MethodResult.from_json(old) == MethodResult.from_json(values)
    with pytest.raises(ValueError, match=r"row 3: not an episode record, it lacks method"):
        MethodResult.from_json({k: v for k, v in values.items() if k != "method"}, "results.json row 3")
    with pytest.raises(ValueError, match="is a JSON object, got list"):
        EpisodeRecord.from_json([1, 2])


def test_episode_files_are_read_up_to_a_line_cut_off(tmp_path):
    path = tmp_path / "episodes.jsonl"
    records = [EpisodeRecord.from_info(INFO, timesteps=step, reward_accuracy=accuracy)
               for step, accuracy in ((22, 0.5), (44, 0.9), (66, 0.7))]
    for record in records:
        append_episode(path, record)
    assert read_episodes(path) == records
    with path.open("a") as handle:
        handle.write('{"target_sparsity": 0.8, "layer_sp')  # the run was killed mid-line
    assert read_episodes(path) == records
    write_episodes(path, records[:1])
    assert read_episodes(path) == records[:1]


def test_best_found_keeps_the_best_on_the_reward_split_and_reads_back(tmp_path):
    records = [EpisodeRecord.from_info(INFO, reward_accuracy=0.6, test_accuracy=0.99),
               EpisodeRecord.from_info(INFO, reward_accuracy=0.9, test_accuracy=0.10),
               EpisodeRecord.from_info(INFO, target_sparsity=0.5, reward_accuracy=0.7)]
    path = write_best_found(records, tmp_path / "best_found.json")
    best, episodes = read_best_found(path)
    assert episodes == 3 and best == {"0.5": records[2], "0.8": records[1]}
    path.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_best_found(path)
    path.write_text("{}")
    with pytest.raises(ValueError, match="needs 'best_per_target'"):
        read_best_found(path)
