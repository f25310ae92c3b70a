"""Reference policies: SB3's predict protocol, and Global MP through the env equals Global MP."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

import prune_gym  # noqa: F401  (registers the env ids)
from prune_gym.agents import (
    GlobalMagnitudePolicy,
    RandomPolicy,
    TargetSamplingWrapper,
    UniformMagnitudePolicy,
)
from prune_gym.agents.policies import REFERENCE_POLICIES, reference_policies, reference_policy
from prune_gym.evaluation import evaluate_accuracy
from prune_gym.pruning import find_prunable_layers, global_magnitude_masks, minimum_keep
from prune_gym.stats import FEATURES

ENV_ID = "PruneResNet20Digits-v1"



@pytest.fixture(scope="module")
def envs(digits_model_state) -> dict[str, gym.Env]:
    """One digits env per action type, in absolute mode: the policies' sparsities are requested as
    they are (the relative mode has its own tests in test_actions.py)."""
    made = {kind: gym.make(ENV_ID, action_type=kind, action_mode="absolute", device="cpu") for kind in ("discrete", "continuous")}
    yield made
    for env in made.values():
        env.close()


def make_policy(name: str, env: gym.Env):
    return {
        "global-mp": lambda: GlobalMagnitudePolicy(env),
        "global-mp-mt": lambda: GlobalMagnitudePolicy(env, min_threshold=0.0005),
        "uniform": lambda: UniformMagnitudePolicy(env),
        "random": lambda: RandomPolicy(env, seed=0),
    }[name]()


def final_info_of_evaluation(policy, env: gym.Env, target: float) -> tuple[list[float], list[int], dict]:
    """Run evaluate_policy for one episode at ``target``; return rewards, lengths, last info."""
    last_info: dict = {}

    def keep_last_info(locals_, _globals):
        if locals_["done"]:
            last_info.update(locals_["info"])

    rewards, lengths = evaluate_policy(
        policy, Monitor(TargetSamplingWrapper(env, [target])), n_eval_episodes=1, deterministic=True, return_episode_rewards=True, callback=keep_last_info
    )
    return rewards, lengths, last_info


@pytest.mark.parametrize("action_type", ["discrete", "continuous"])
@pytest.mark.parametrize("name", ["global-mp", "global-mp-mt", "uniform", "random"])
def test_policy_runs_through_evaluate_policy_and_meets_the_target(envs, name, action_type):
    env = envs[action_type]
    policy = make_policy(name, env)
    rewards, lengths, info = final_info_of_evaluation(policy, env, 0.7)
    layers = env.unwrapped.num_layers
    assert lengths == [layers]
    assert np.isfinite(rewards[0])
    total = env.unwrapped.state.total
    assert info["overall_sparsity"] == pytest.approx(0.7, abs=1.5 / total)
    assert set(info["layer_sparsities"]) == set(env.unwrapped.layer_names())


@pytest.mark.parametrize("action_type", ["discrete", "continuous"])
def test_predict_returns_sb3_shapes_for_single_and_batched_observations(envs, action_type):
    env = envs[action_type]
    observation, _ = env.reset(options={"target_sparsity": 0.8})
    batch = np.stack([observation] * 3)
    for policy in (GlobalMagnitudePolicy(env), UniformMagnitudePolicy(env), RandomPolicy(env)):
        single, state = policy.predict(observation, deterministic=True)
        batched, _ = policy.predict(batch, deterministic=True)
        assert state is None
        if action_type == "discrete":
            assert single.shape == () and np.issubdtype(single.dtype, np.integer)
            assert batched.shape == (3,) and np.issubdtype(batched.dtype, np.integer)
        else:
            assert single.shape == (1,) and single.dtype == np.float32
            assert batched.shape == (3, 1) and batched.dtype == np.float32
        assert env.action_space.contains(single if action_type == "continuous" else int(single))
        for action in batched:
            assert env.action_space.contains(action if action_type == "continuous" else int(action))
    with pytest.raises(ValueError, match=f"shape \\({len(FEATURES)},\\)"):
        GlobalMagnitudePolicy(env).predict(np.zeros(3, dtype=np.float32))


def test_batched_prediction_reads_each_rows_layer_and_target(envs):
    """Stateless: a batch of observations from different layers and targets gets each row's action."""
    env = envs["continuous"]
    prune_env = env.unwrapped
    policy = GlobalMagnitudePolicy(env)
    rows, expected = [], []
    for target, steps in ((0.5, 0), (0.9, 5), (0.7, 21)):
        observation, _ = env.reset(options={"target_sparsity": target})
        for _ in range(steps):
            observation, *_ = env.step(policy(observation))
        rows.append(observation)
        expected.append(prune_env.sparsity_to_action(prune_env.global_mp_sparsities(target)[steps])[0])
    actions, _ = policy.predict(np.stack(rows))
    np.testing.assert_allclose(actions[:, 0], expected, atol=1e-6)


def test_global_mp_through_the_env_equals_global_magnitude_pruning(digits_task, digits_model):
    """Through a continuous env at 0.8, Global MP gives the same per-layer sparsities (within one
    weight per layer) and the same test accuracy as global_magnitude_masks on the model itself
    (without the digits env's default BatchNorm re-calibration, which the masks alone lack)."""
    env = gym.make(ENV_ID, action_type="continuous", action_mode="absolute", device="cpu", bn_recalibration_batches=0)
    _, _, info = final_info_of_evaluation(GlobalMagnitudePolicy(env), env, 0.8)
    env.close()

    layers = find_prunable_layers(digits_model, example_input=torch.zeros(1, 1, 8, 8))
    masks = global_magnitude_masks([layer.weight for layer in layers], 0.8)
    with torch.no_grad():
        for layer, mask in zip(layers, masks, strict=True):
            layer.weight.mul_(mask)
    for layer, mask in zip(layers, masks, strict=True):
        direct = 1.0 - int(mask.sum()) / mask.numel()
        assert abs(info["layer_sparsities"][layer.name] - direct) * mask.numel() <= 1.0, layer.name
    test_accuracy = evaluate_accuracy(digits_model, digits_task.load_splits(seed=0).test, "cpu")
    test_size = len(digits_task.load_splits(seed=0).test)
    assert info["test_accuracy"] == pytest.approx(test_accuracy, abs=1.0 / test_size)


def test_global_mp_follows_the_target_set_on_reset(envs):
    env = envs["continuous"]
    prune_env = env.unwrapped
    policy = GlobalMagnitudePolicy(env)
    for target in (0.5, 0.9):
        observation, _ = env.reset(options={"target_sparsity": target})
        done = False
        while not done:
            observation, _, terminated, truncated, info = env.step(policy(observation))
            done = terminated or truncated
        expected = prune_env.global_mp_sparsities(target)
        assert list(info["layer_sparsities"].values()) == pytest.approx(expected, abs=1.0 / 144)
        assert info["overall_sparsity"] == pytest.approx(target, abs=1.0 / prune_env.state.total)


def test_minimum_threshold_keeps_the_minimum_in_every_layer(envs):
    env = envs["continuous"]
    prune_env = env.unwrapped
    _, _, info = final_info_of_evaluation(GlobalMagnitudePolicy(env, min_threshold=0.0005), env, 0.9)
    floor = minimum_keep(prune_env.state.dense, 0.0005)
    for name, numel in zip(prune_env.layer_names(), prune_env.state.numels, strict=True):
        kept = round((1.0 - info["layer_sparsities"][name]) * numel)
        assert kept >= min(floor, numel), name
    plain = prune_env.global_mp_sparsities(0.9)
    # The first conv has 144 weights: plain Global MP keeps fewer than the minimum of 136 there.
    assert round((1 - plain[0]) * 144) < floor
    assert info["overall_sparsity"] == pytest.approx(0.9, abs=1.0 / prune_env.state.total)


def test_uniform_requests_the_target_in_every_layer(envs):
    env = envs["continuous"]
    prune_env = env.unwrapped
    _, _, info = final_info_of_evaluation(UniformMagnitudePolicy(env), env, 0.6)
    applied = list(info["layer_sparsities"].values())
    for sparsity, numel in zip(applied[:-1], prune_env.state.numels[:-1], strict=True):
        assert abs(sparsity - 0.6) * numel <= 1.0
    # With discrete actions the nearest level is requested; the projection still hits the target.
    discrete = envs["discrete"]
    observation, _ = discrete.reset(options={"target_sparsity": 0.6})
    level = discrete.unwrapped.levels[int(UniformMagnitudePolicy(discrete)(observation))]
    assert level == pytest.approx(discrete.unwrapped.levels[np.argmin(np.abs(discrete.unwrapped.levels - 0.6))])


def test_random_policy_is_reproducible_and_covers_the_range(envs):
    env = envs["continuous"]
    observation, _ = env.reset(options={"target_sparsity": 0.8})
    batch = np.stack([observation] * 200)
    first, _ = RandomPolicy(env, seed=3).predict(batch, deterministic=True)
    again, _ = RandomPolicy(env, seed=3).predict(batch, deterministic=True)
    other, _ = RandomPolicy(env, seed=4).predict(batch, deterministic=True)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.min() < -0.8 and first.max() > 0.8  # uniform over [-1, 1], i.e. over the sparsity range
    discrete = envs["discrete"]
    actions, _ = RandomPolicy(discrete, seed=0).predict(np.stack([observation] * 500))
    assert set(actions.tolist()) == set(range(discrete.action_space.n))


def test_policies_work_with_a_vectorised_env(envs):
    vec_env = DummyVecEnv([lambda: Monitor(TargetSamplingWrapper(envs["continuous"], [0.5]))])
    policy = GlobalMagnitudePolicy(vec_env)
    rewards, lengths = evaluate_policy(policy, vec_env, n_eval_episodes=1, return_episode_rewards=True)
    assert lengths == [envs["continuous"].unwrapped.num_layers]
    assert math.isfinite(rewards[0])


def test_no_target_needs_a_sparsity_argument(envs):
    env = gym.make(ENV_ID, action_type="continuous", target_sparsity=None, device="cpu")
    observation, _ = env.reset()
    with pytest.raises(ValueError, match="sparsity="):
        GlobalMagnitudePolicy(env).predict(observation)
    action, _ = GlobalMagnitudePolicy(env, sparsity=0.8).predict(observation)
    expected = env.unwrapped.sparsity_to_action(env.unwrapped.global_mp_sparsities(0.8)[0])
    np.testing.assert_allclose(action, expected, atol=1e-6)
    action, _ = UniformMagnitudePolicy(env, sparsity=0.3).predict(observation)
    np.testing.assert_allclose(action, env.unwrapped.sparsity_to_action(0.3), atol=1e-6)
    env.close()


def test_a_non_prune_gym_env_is_a_clear_error():
    with pytest.raises(ValueError, match="prune-gym env"):
        GlobalMagnitudePolicy(gym.make("CartPole-v1"))
    with pytest.raises(ValueError, match="min_threshold"):
        GlobalMagnitudePolicy(gym.make(ENV_ID, synthetic=True, synthetic_samples=8, device="cpu"), min_threshold=5)


def test_reference_policies_by_name_in_table_order(envs):
    env = envs["continuous"]
    methods = reference_policies(env, seed=3, min_threshold=0.0005)
    labels = ["Global MP", "Global MP + MT", "LAMP", "ERK", "uniform", "uniform+", "random"]
    assert [label for label, _, _ in methods] == labels
    assert all(deterministic for _, _, deterministic in methods)  # random is a seeded draw
    assert methods[1][1].min_threshold == 0.0005 and methods[6][1].seed == 3
    assert [label for label, _, _ in reference_policies(env, min_threshold=None)] == [
        label for label in labels if label != "Global MP + MT"]
    assert [reference_policy(name, env)[0] for name in REFERENCE_POLICIES] == labels
    # `baseline --policy global-mp --min-threshold M` is Global MP + MT.
    assert reference_policy("global-mp", env, min_threshold=0.001)[0] == "Global MP + MT"
    with pytest.raises(ValueError, match="choose one of global-mp, global-mp\\+mt, lamp, erk, uniform, uniform\\+, random"):
        reference_policy("magnitude", env)
    with pytest.raises(ValueError, match="global-mp / global-mp\\+mt only"):
        reference_policy("uniform", env, min_threshold=0.0005)
