"""Per-layer latency tables (HAQ's method) and the channel env's latency budget."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

import prune_gym  # noqa: F401  (registers the envs)
from prune_gym.cli import build_parser
from prune_gym.cli import main as cli_main
from prune_gym.cli_options import BUDGET_CHOICES, env_kwargs_from
from prune_gym.envs.channel_env import BUDGETS
from prune_gym.errors import ConfigError
from prune_gym.latency import GRID, LatencyTable, measure_latency_table
from prune_gym.pruning import find_prunable_layers
from prune_gym.tasks.models.cifar_resnet import resnet20

CHANNELS_ID = "PruneResNet20DigitsChannels-v1"


@pytest.fixture(scope="module")
def latency_env(digits_model_state):
    """The digits channel env with the latency budget (its table measured into the test cache)."""
    return gym.make(CHANNELS_ID, budget="latency", target_sparsity=0.3).unwrapped


def test_a_measured_table_is_monotone_and_adds_up_to_the_dense_time():
    model = resnet20(num_classes=10, in_channels=1).eval()
    layers = find_prunable_layers(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    table = measure_latency_table(model, layers, (1, 8, 8), repeats=3)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # timed, not changed
    ms = np.asarray(table.ms)
    assert ms.shape == (len(layers), len(GRID), len(GRID)) and (ms > 0).all()
    assert (np.diff(ms, axis=1) >= 0).all() and (np.diff(ms, axis=2) >= 0).all()
    assert table.dense_prediction == pytest.approx(max(table.dense_ms, ms[:, -1, -1].sum()))
    assert table.machine["torch_threads"] == torch.get_num_threads() and table.machine["device"] == "cpu"
    ones, half = np.ones(len(layers)), np.full(len(layers), 0.5)
    assert table.predict(half, half) < table.predict(ones, half) <= table.predict(ones, ones)
    # Between grid points the prediction interpolates: never outside its neighbours.
    mid = np.full(len(layers), (GRID[3] + GRID[4]) / 2)
    assert table.predict(np.full(len(layers), GRID[3]), mid) <= table.predict(mid, mid) <= \
        table.predict(np.full(len(layers), GRID[4]), mid)


def test_a_table_round_trips_and_a_wrong_file_or_model_is_refused(tmp_path):
    table = LatencyTable(("a", "b"), (0.5, 1.0), (((1.0, 2.0), (2.0, 3.0)), ((1.0, 1.0), (1.0, 1.0))), 0.5, 4.5,
                         {"device": "cpu"})
    path = table.save(tmp_path / "t.json")
    assert LatencyTable.load(path) == table
    path.write_text(json.dumps({"layers": ["a"]}))
    with pytest.raises(ConfigError, match="is not a latency table.*delete it"):
        LatencyTable.load(path)
    with pytest.raises(ConfigError, match="no latency table at"):
        LatencyTable.load(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="measured on another model"):
        table.check_layers(["a", "c"])
    with pytest.raises(ConfigError, match="ascend to 1.0"):
        LatencyTable(("a",), (1.0, 0.5), (((1.0, 1.0), (1.0, 1.0)),), 0.0, 1.0)
    with pytest.raises(ConfigError, match="one 2x2 grid per layer"):
        LatencyTable(("a", "b"), (0.5, 1.0), (((1.0, 1.0), (1.0, 1.0)),), 0.0, 1.0)


def test_every_latency_episode_meets_its_target_and_every_env_reads_one_table(latency_env):
    env = latency_env
    assert env.latency_table_path.is_file() and env.cost.latency_table is env.latency_table
    # A second env on the same model and machine reads the cached table: one budget for both.
    again = gym.make(CHANNELS_ID, budget="latency", target_sparsity=0.3).unwrapped
    assert again.latency_table == env.latency_table and again.latency_table_path == env.latency_table_path
    rng = np.random.default_rng(0)
    for _ in range(2):
        env.reset()
        done, info = False, {}
        while not done:
            _, reward, done, _, info = env.step(env.action_space.sample() if rng.random() < 0.5 else 5)
            assert np.isfinite(reward) and "latency_reduction" in info
        removed = list(info["removed_channel_counts"].values())
        assert info["latency_reduction"] == pytest.approx(env.cost.latency_reduction(removed))
        assert info["latency_reduction"] >= 0.3
    for method in env.allocation_methods:
        counts = env.allocation_counts(method, 0.3)
        assert env.cost.latency_reduction(counts) >= 0.3, method
    env.render_mode = "ansi"
    try:
        assert "predicted latency removed" in env.render()
    finally:
        env.render_mode = None


def test_a_table_given_as_a_file_is_used_and_latency_kwargs_are_checked(latency_env, tmp_path):
    path = latency_env.latency_table.save(tmp_path / "table.json")
    env = gym.make(CHANNELS_ID, budget="latency", target_sparsity=0.3, latency_table=str(path)).unwrapped
    assert env.latency_table == latency_env.latency_table and env.latency_table_path == path
    with pytest.raises(ConfigError, match="latency_table is read only with budget='latency'"):
        gym.make(CHANNELS_ID, latency_table=str(path))
    other = LatencyTable(("conv",), (0.5, 1.0), (((1.0, 1.0), (1.0, 1.0)),), 0.0, 1.0)
    with pytest.raises(ConfigError, match="measured on another model"):
        gym.make(CHANNELS_ID, budget="latency", target_sparsity=0.3, latency_table=other)


def test_the_cli_budget_option_reaches_channel_envs_and_is_refused_for_weight_envs(tmp_path, capsys):
    output = tmp_path / "run"
    assert cli_main(["train", "PruneResNet20Digits-v1", "--budget", "latency", "--output", str(output)]) == 2
    assert "--budget: for channel envs" in capsys.readouterr().err and not output.exists()
    assert cli_main(["train", "PruneResNet20Digits-v1", "--channel-multiple", "8", "--output", str(output)]) == 2
    assert "--channel-multiple: for channel envs" in capsys.readouterr().err and not output.exists()
    args = build_parser().parse_args(["compare", CHANNELS_ID, "--channel-multiple", "16", "--threads", "1"])
    assert env_kwargs_from(args)["channel_multiple"] == 16
    args = build_parser().parse_args(["compare", CHANNELS_ID, "--budget", "latency", "--threads", "1"])
    assert env_kwargs_from(args)["budget"] == "latency"
    defaults = env_kwargs_from(build_parser().parse_args(["compare", CHANNELS_ID, "--threads", "1"]))
    assert "budget" not in defaults and "channel_multiple" not in defaults  # the env's own defaults
    assert BUDGET_CHOICES == BUDGETS  # the CLI's copy (kept so --help needs no torch)
