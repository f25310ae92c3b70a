"""The comparison workflow on the digits env with a tiny agent budget."""

from __future__ import annotations

import csv
import json

import gymnasium as gym
import pytest

import prune_gym  # noqa: F401  (registers the env ids)
from prune_gym.agents.compare import compare

ENV_ID = "PruneResNet20Digits-v0"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METHODS = ["DQN agent", "Global MP", "Global MP + MT", "uniform", "random"]



@pytest.fixture(scope="module")
def comparison(tmp_path_factory, digits_model_state):
    output = tmp_path_factory.mktemp("compare")
    result = compare(
        ENV_ID, [0.5, 0.8], "dqn", timesteps=66, hyperparams={"learning_starts": 22, "batch_size": 16}, n_envs=1,
        output_dir=output, env_kwargs={"device": "cpu"}, progress_bar=False, log=None,
    )
    return result, output


def test_compare_writes_table_json_csv_plots_and_agent(comparison):
    result, output = comparison
    for name in ("results.json", "results.csv", "accuracy_vs_sparsity.png", "layer_sparsity.png", "table.txt"):
        assert (output / name).is_file(), name
    for name in ("accuracy_vs_sparsity.png", "layer_sparsity.png"):
        data = (output / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, name
    assert (output / "agent" / "model.zip").is_file()
    with (output / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(float(r["target_sparsity"]), r["method"]) for r in rows] == [(t, m) for t in (0.5, 0.8) for m in METHODS]
    for method in METHODS:
        assert method in result.table
    assert "dense test accuracy" in result.table and "80%" in result.table
    # Each method's per-layer sparsities, as a recipe that re-prunes the dense model the same way.
    recipe = json.loads((output / "recipes" / "dqn-agent-0.80.json").read_text())
    assert recipe == result.result("DQN agent", 0.8).layer_sparsities
    assert (output / "recipes" / "global-mp-mt-0.50.json").is_file()


def test_every_method_meets_the_target_and_global_mp_is_exact(comparison):
    result, output = comparison
    record = json.loads((output / "results.json").read_text())
    assert record["agent"]["timesteps"] == 66
    assert record["reference_policies"]["action_type"] == "continuous"
    assert record["agent"]["action_type"] == "discrete"
    assert record["agent"]["levels"] == 12 and record["agent"]["n_envs"] == 1
    assert 0.9 < record["dense_test_accuracy"] <= 1.0
    env = gym.make(ENV_ID, action_type="continuous", device="cpu")
    total = env.unwrapped.state.total
    for row in record["results"]:
        assert row["param_sparsity"] == pytest.approx(row["target_sparsity"], abs=1.5 / total), row["method"]
        assert 0.0 <= row["test_accuracy"] <= 1.0 and 0.0 <= row["flops_sparsity"] <= 1.0
    for target in (0.5, 0.8):
        global_mp = result.result("Global MP", target)
        expected = env.unwrapped.global_mp_sparsities(target)
        for (name, sparsity), exact, numel in zip(global_mp.layer_sparsities.items(), expected, env.unwrapped.state.numels, strict=True):
            assert abs(sparsity - exact) * numel <= 1.0, name
    # Global MP keeps accuracy at 50% on this over-parameterised model; random pruning does not.
    assert result.result("Global MP", 0.5).test_accuracy > 0.9
    assert result.result("Global MP", 0.5).test_accuracy > result.result("random", 0.5).test_accuracy
    env.close()


def test_a_saved_agent_is_loaded_instead_of_trained(comparison):
    _, output = comparison
    again = compare(
        ENV_ID, [0.8], "dqn", agent_path=output / "agent" / "model.zip", min_threshold=None,
        env_kwargs={"device": "cpu"}, write_files=False, log=None,
    )
    assert again.metadata["agent"]["timesteps"] == 66 and again.metadata["agent"]["train_seconds"] == 0.0
    assert [row.method for row in again.results] == ["DQN agent", "Global MP", "uniform", "random"]
    assert again.output_dir is None


def test_max_sparsity_is_raised_so_global_mp_is_not_clipped():
    result = compare(
        ENV_ID, [0.97], "dqn", timesteps=22, hyperparams={"learning_starts": 1000}, min_threshold=None, n_envs=1,
        env_kwargs={"device": "cpu"}, write_files=False, progress_bar=False, log=None,
    )
    matched = result.metadata["matched"]
    layer_max = max(result.result("Global MP", 0.97).layer_sparsities.values())
    assert layer_max > 0.99  # Global MP needs more than the env's default range here ...
    assert matched["max_sparsity"] >= layer_max  # ... so the range was raised
    assert "raised" in matched["max_sparsity_note"]


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown algorithm"):
        compare(ENV_ID, [0.5], "rainbow", output_dir=tmp_path, log=None)
    with pytest.raises(ValueError, match="action_type='continuous'"):
        compare(ENV_ID, [0.5], "sac", env_kwargs={"action_type": "discrete"}, output_dir=tmp_path, log=None)
    with pytest.raises(ValueError, match="sparsity"):
        compare(ENV_ID, [1.5], output_dir=tmp_path, log=None)
