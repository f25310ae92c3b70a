"""PruneEnv: the environment contract of DESIGN.md, checked on the digits env and a custom model."""

from __future__ import annotations

import copy
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

import prune_gym
from prune_gym import PruneEnv
from prune_gym.evaluation import evaluate_accuracy
from prune_gym.pruning import find_prunable_layers, global_magnitude_masks
from prune_gym.stats import FEATURES

DIGITS = "PruneResNet20Digits-v1"


@pytest.fixture
def env(digits_model_state):
    env = gym.make(DIGITS)
    yield env
    env.close()


def rollout(env, actions=None, seed=0, options=None):
    obs, info = env.reset(seed=seed, options=options)
    observations, rewards, infos = [obs], [], [info]
    done, t = False, 0
    while not done:
        action = env.action_space.sample() if actions is None else actions[t]
        obs, reward, terminated, truncated, info = env.step(action)
        observations.append(obs)
        rewards.append(reward)
        infos.append(info)
        done = terminated or truncated
        t += 1
    return observations, rewards, infos


def weights_of(env) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in env.unwrapped.model.state_dict().items()}


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# -- registration ----------------------------------------------------------------------------


def test_every_task_is_registered_with_episode_length_equal_to_layer_count():
    assert DIGITS in prune_gym.ENV_IDS
    for task in prune_gym.TASKS.values():
        spec = gym.spec(task.env_id)
        assert spec.max_episode_steps == task.num_prunable_layers
        assert spec.kwargs["task"] == task.name


def test_make_with_module_prefix_and_episode_length(digits_model_state):
    env = gym.make(f"prune_gym:{DIGITS}")
    _, rewards, infos = rollout(env)
    assert len(rewards) == env.unwrapped.num_layers == 22
    assert "test_accuracy" in infos[-1]


def test_unknown_kwarg_is_rejected_by_name(digits_model_state):
    with pytest.raises(TypeError, match="target_sparsty"):
        gym.make(DIGITS, target_sparsty=0.5)


# -- spaces, projection and info -------------------------------------------------------------


@pytest.mark.parametrize("action_type", ["discrete", "continuous"])
def test_random_episodes_end_at_the_target(digits_model_state, action_type):
    env = gym.make(DIGITS, action_type=action_type, target_sparsity=0.7)
    env.action_space.seed(1)
    unwrapped = env.unwrapped
    total = unwrapped.state.total
    for episode in range(3):
        _, _, infos = rollout(env, seed=episode)
        pruned = unwrapped.state.pruned_count()
        # every finished episode ends at the target to within one weight per layer
        assert pruned == round(0.7 * total)  # exact, not within a weight per layer
        assert infos[-1]["overall_sparsity"] == pytest.approx(pruned / total)
        for info in infos[1:]:
            assert 0.0 <= info["applied_sparsity"] <= unwrapped.max_sparsity
            assert unwrapped.min_sparsity <= info["requested_sparsity"] <= unwrapped.max_sparsity
        assert set(infos[-1]["layer_sparsities"]) == set(unwrapped.layer_names())


def test_no_target_applies_the_requested_sparsity(digits_model_state):
    env = gym.make(DIGITS, target_sparsity=None, reward="accuracy-sparsity", action_mode="absolute")
    _, _, infos = rollout(env, actions=[3] * 22)
    level = env.unwrapped.levels[3]
    for info in infos[1:]:
        numel = env.unwrapped.state.numels[info["layer_index"]]
        assert info["applied_sparsity"] == round(level * numel) / numel


def test_observations_are_in_the_space_and_the_docstring_lists_every_feature(env):
    assert env.observation_space.shape == (len(FEATURES),)
    observations, _, _ = rollout(env)
    for obs in observations:
        assert obs.dtype == np.float32
        assert env.observation_space.contains(obs)
    documented = [line.strip() for line in PruneEnv.__doc__.splitlines() if line.strip().startswith("- ") and "``: " in line]
    expected = [f"- {i}. ``{feature.name}``: {feature.description}" for i, feature in enumerate(FEATURES)]
    assert [line for line in documented if line[2:3].isdigit()] == expected


def test_every_observation_feature_on_a_small_model():
    """Each feature's value, worked out by hand for a conv (stride 2) and a Linear layer."""
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 2, 3, stride=2, bias=False)  # 18 weights, 1x6x6 -> 2x2x2
    linear = nn.Linear(8, 3)  # 24 weights
    with torch.no_grad():
        conv.weight.copy_(torch.arange(1, 19, dtype=torch.float32).reshape(2, 1, 3, 3) / 18)
        linear.weight.copy_(torch.linspace(-1, 1, 24).reshape(3, 8))
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), linear)
    x, y = torch.randn(30, 1, 6, 6), torch.randint(0, 3, (30,))
    env = PruneEnv(model=model, reward_data=(x, y), target_sparsity=0.5, device="cpu", action_type="continuous",
                   action_mode="absolute", channels_last=False)
    names = [feature.name for feature in FEATURES]
    first, _ = env.reset()
    values = dict(zip(names, first.tolist(), strict=True))
    flops = [2 * 2 * 2 * 9, 24]  # multiply-accumulates: conv 8 outputs x 9, linear 24
    gmp = env.global_mp_sparsities(0.5)
    conv_w, linear_w = conv.weight.detach(), linear.weight.detach()
    conv_mean, linear_mean = float(conv_w.abs().mean()), float(linear_w.abs().mean())
    expected = {
        "position": 0.0, "is_conv": 1.0, "is_depthwise": 0.0, "is_linear": 0.0,
        "log_size": np.log(18) / np.log(24), "param_share": 18 / 42, "flops_share": flops[0] / sum(flops),
        "in_channels": 1 / 8, "out_channels": 2 / 3, "kernel_size": 1.0, "stride": 1.0,
        "weight_mean_abs": conv_mean / max(conv_mean, linear_mean),
        "weight_std": float(conv_w.std()) / max(float(conv_w.std()), float(linear_w.std())),
        "global_mp_sparsity": gmp[0], "reference_sparsity": gmp[0], "sparsity_so_far": 0.0, "budget_left": 0.5,
        "accuracy_ratio": 1.0, "previous_sparsity": 0.0, "target_sparsity": 0.5, "flops_reduction_so_far": 0.0,
    }
    assert set(expected) == set(names)
    for name in names:
        assert values[name] == pytest.approx(expected[name], abs=1e-6), name
    # After pruning 9 of the conv's 18 weights: the episode features of the Linear layer.
    second, *_ = env.step(env.sparsity_to_action(0.5))
    values = dict(zip(names, second.tolist(), strict=True))
    accuracy = env.reward_accuracy / env.dense_reward_accuracy
    expected = {
        "position": 1.0, "is_conv": 0.0, "is_linear": 1.0, "log_size": 1.0, "param_share": 24 / 42,
        "in_channels": 1.0, "out_channels": 1.0, "kernel_size": 1 / 9, "stride": 0.0,
        "global_mp_sparsity": gmp[1], "sparsity_so_far": 9 / 42, "budget_left": 12 / 24,
        "accuracy_ratio": accuracy, "previous_sparsity": 0.5, "flops_reduction_so_far": flops[0] * 0.5 / sum(flops),
        "reference_sparsity": 12 / 24,  # absolute mode observes it too: the remaining budget, all in one layer
    }
    for name, value in expected.items():
        assert values[name] == pytest.approx(value, abs=1e-6), name


def test_step_info_keys(env):
    _, _, infos = rollout(env)
    for info in infos[1:]:
        for key in ("layer", "requested_sparsity", "applied_sparsity", "overall_sparsity", "flops_reduction", "reward_accuracy"):
            assert key in info
    last = infos[-1]
    assert 0.0 <= last["test_accuracy"] <= 1.0
    assert last["dense_test_accuracy"] > 0.95


# -- determinism, reset ----------------------------------------------------------------------


def test_seeded_rollouts_are_identical(digits_model_state):
    runs = []
    for _ in range(2):
        env = gym.make(DIGITS)
        env.action_space.seed(7)
        observations, rewards, _ = rollout(env, seed=7)
        runs.append((np.stack(observations), np.array(rewards)))
    assert np.array_equal(runs[0][0], runs[1][0])
    assert np.array_equal(runs[0][1], runs[1][1])


def test_reset_restores_dense_weights_bit_for_bit(env):
    env = gym.make(DIGITS, action_mode="absolute")
    env.reset(seed=0)
    dense = weights_of(env)
    rollout(env, actions=[6] * 22)  # 0.54 requested everywhere: every layer loses weights
    pruned = weights_of(env)
    assert all(not torch.equal(pruned[name + ".weight"], dense[name + ".weight"]) for name in env.unwrapped.layer_names())
    env.reset()
    assert_same_state(weights_of(env), dense)


def test_reset_option_changes_the_target(env):
    rollout(env, options={"target_sparsity": 0.5})
    unwrapped = env.unwrapped
    assert unwrapped.state.pruned_count() == round(0.5 * unwrapped.state.total)
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"sparsity": 0.5})


# -- Global MP through the env --------------------------------------------------------------------


@pytest.mark.parametrize("bn_recalibration_batches", [0, 1])
def test_global_mp_played_through_the_env_equals_global_mp_applied_directly(
    digits_model, digits_model_state, bn_recalibration_batches
):
    # On the CPU, as the direct application below: the comparison is exact (a GPU's bf16 autocast
    # moves accuracies by an image or two; tests/test_cuda.py compares the two devices).
    env = gym.make(
        DIGITS, action_type="continuous", action_mode="absolute", target_sparsity=0.8,
        bn_recalibration_batches=bn_recalibration_batches, device="cpu",
    )
    unwrapped = env.unwrapped
    sparsities = unwrapped.global_mp_sparsities()
    _, _, infos = rollout(env, actions=[unwrapped.sparsity_to_action(s) for s in sparsities])
    applied = [infos[-1]["layer_sparsities"][name] for name in unwrapped.layer_names()]
    numels = unwrapped.state.numels
    for got, want, numel in zip(applied, sparsities, numels):
        assert abs(got - want) * numel <= 1.0  # within one weight per layer

    # Direct application on a separate copy of the trained model (re-calibrated on the same
    # train batch when the env re-calibrates).
    layers = find_prunable_layers(digits_model)
    masks = global_magnitude_masks([layer.weight for layer in layers], 0.8)
    with torch.no_grad():
        for layer, mask in zip(layers, masks):
            layer.weight.mul_(mask)
    if bn_recalibration_batches:
        from prune_gym.calibration import BN_RECALIBRATION_BATCH, recalibrate_batchnorm

        inputs = unwrapped.engine.resident_train()[0][:BN_RECALIBRATION_BATCH]
        recalibrate_batchnorm(digits_model, inputs, batch_size=BN_RECALIBRATION_BATCH)
    test = unwrapped.task.load_splits().test
    assert infos[-1]["test_accuracy"] == evaluate_accuracy(digits_model, test, "cpu")
    assert [torch.equal(a, b) for a, b in zip(unwrapped.state.masks, masks)] == [True] * len(masks)
    if bn_recalibration_batches:
        assert infos[-1]["test_accuracy"] > 0.9  # re-calibration is what keeps 0.8 sparsity usable


def test_digits_env_recalibrates_batchnorm_by_default(digits_model_state):
    assert gym.make(DIGITS).unwrapped.bn_recalibration_batches == 1
    assert gym.make(DIGITS, bn_recalibration_batches=0).unwrapped.bn_recalibration_batches == 0


# -- the activation cache is exact ------------------------------------------------------------------


def test_activation_cache_gives_the_same_episode_as_full_forward(digits_model_state):
    results = []
    for cache in (True, False):
        # Without re-calibration, which changes every stage and so always runs the full forward.
        env = gym.make(DIGITS, cache_activations=cache, bn_recalibration_batches=0)
        env.action_space.seed(3)
        _, rewards, infos = rollout(env, seed=3)
        results.append(([i.get("reward_accuracy") for i in infos[1:]], rewards))
    assert results[0] == results[1]
    assert gym.make(DIGITS).unwrapped.evaluator.stages is not None


def test_staged_recalibration_equals_a_full_recalibration_at_every_step(digits_model_state):
    """The env re-estimates BatchNorm only from the pruned layer's stage on and resumes the
    evaluation from its cache; a full re-calibration and a full forward pass after every step
    must give the same statistics and the same accuracies, bit for bit."""
    from prune_gym.calibration import recalibrate_batchnorm

    staged = gym.make(DIGITS).unwrapped
    assert staged.calibrator is not None and staged.calibrator.stages is not None
    full = gym.make(DIGITS, cache_activations=False).unwrapped  # no stages: full re-calibration, full forward
    assert full.calibrator.stages is None
    inputs = staged.calibrator.batches[0]
    staged.reset(seed=5)
    full.reset(seed=5)
    staged.action_space.seed(5)
    started_late = 0
    for _ in range(staged.num_layers):
        action = staged.action_space.sample()
        _, reward, *_, info = staged.step(action)
        _, reward_full, *_, info_full = full.step(action)
        assert info["reward_accuracy"] == info_full["reward_accuracy"] and reward == reward_full
        started_late += staged.calibrator._cached_stage is not None
        # Statistics equal those of a full re-calibration of the same pruned weights.
        reference = copy.deepcopy(staged.model)
        recalibrate_batchnorm(reference, inputs)
        for (name, ours), theirs in zip(staged.model.state_dict().items(), reference.state_dict().values(), strict=True):
            assert torch.equal(ours, theirs), name
    assert started_late > staged.num_layers // 2  # the staged path was taken, not only full passes
    assert info["test_accuracy"] == info_full["test_accuracy"]


# -- errors leave the model unchanged ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("action_type", "action"),
    [
        ("discrete", 12),
        ("discrete", -1),
        ("discrete", 1.5),
        ("discrete", "3"),
        ("continuous", np.array([np.nan], dtype=np.float32)),
        ("continuous", np.array([1.5], dtype=np.float32)),
        ("continuous", np.array([0.1, 0.2], dtype=np.float32)),
    ],
)
def test_out_of_space_actions_are_rejected_without_changing_the_model(digits_model_state, action_type, action):
    env = gym.make(DIGITS, action_type=action_type).unwrapped
    env.reset(seed=0)
    env.step(env.sparsity_to_action(0.5))
    before = weights_of(env)
    with pytest.raises(ValueError, match="not in"):
        env.step(action)
    assert_same_state(weights_of(env), before)
    assert env.current_layer == 1
    env.step(env.sparsity_to_action(0.5))  # the episode goes on normally


def test_stepping_after_the_episode_or_before_reset_is_an_error(digits_model_state):
    env = gym.make(DIGITS).unwrapped
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)
    rollout(env)
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step(0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_sparsity": 1.0}, "target_sparsity"),
        ({"target_sparsity": -0.1}, "target_sparsity"),
        ({"target_sparsity": float("nan")}, "target_sparsity"),
        ({"action_type": "multi"}, "action_type"),
        ({"n_actions": 1}, "n_actions"),
        ({"max_sparsity": 1.0}, "max_sparsity"),
        ({"min_sparsity": 0.5, "max_sparsity": 0.4}, "min_sparsity"),
        ({"reward": "nope"}, "unknown reward"),
        ({"device": "cuda:0"} if not torch.cuda.is_available() else {"device": "tpu"}, "device"),
        ({"render_mode": "human"}, "render_mode"),
        ({"evaluate_test": "yes"}, "evaluate_test"),
    ],
)
def test_bad_kwargs_are_clear_errors(digits_model_state, kwargs, message):
    # PruneEnv directly: gym.make itself wraps some render modes before the env sees them.
    with pytest.raises(ValueError, match=message):
        PruneEnv("resnet20-digits", **kwargs)


def test_target_above_max_sparsity_is_rejected_at_construction_and_reset(digits_model_state):
    with pytest.raises(ValueError, match="raise max_sparsity"):
        gym.make(DIGITS, target_sparsity=0.95, max_sparsity=0.9)
    env = gym.make(DIGITS, target_sparsity=0.85, max_sparsity=0.9)
    with pytest.raises(ValueError, match="raise max_sparsity"):
        env.reset(options={"target_sparsity": 0.95})
    assert env.unwrapped.target_sparsity == 0.85


# -- rewards ------------------------------------------------------------------------------------------


def test_purl_return_telescopes_to_final_relative_accuracy(env):
    _, rewards, infos = rollout(env)
    unwrapped = env.unwrapped
    expected = infos[-1]["reward_accuracy"] / unwrapped.dense_reward_accuracy - 1 + infos[-1]["overall_sparsity"]
    assert sum(rewards) == pytest.approx(expected, abs=1e-9)
    assert any(r != 0 for r in rewards[:-1])  # paid at every step, not only at the end


def test_terminal_reward_pays_only_at_the_end_the_same_return(digits_model_state):
    returns = {}
    for reward in ("purl", "terminal"):
        env = gym.make(DIGITS, reward=reward)
        env.action_space.seed(5)
        _, rewards, _ = rollout(env, seed=5)
        returns[reward] = sum(rewards)
        if reward == "terminal":
            assert rewards[:-1] == [0.0] * (len(rewards) - 1)
    assert returns["purl"] == pytest.approx(returns["terminal"], abs=1e-9)


def test_custom_reward_callable(digits_model_state):
    seen = []

    def reward(context):
        seen.append(context)
        return -context.sparsity

    env = gym.make(DIGITS, reward=reward)
    _, rewards, _ = rollout(env)
    assert len(seen) == 22 and seen[-1].terminal and not seen[0].terminal
    assert rewards[-1] == pytest.approx(-seen[-1].sparsity)


def test_flops_reward_tracks_flops_reduction(digits_model_state):
    env = gym.make(DIGITS, reward="flops", sparsity_weight=2.0)
    _, rewards, infos = rollout(env)
    final = infos[-1]
    expected = final["reward_accuracy"] / env.unwrapped.dense_reward_accuracy - 1 + 2.0 * final["flops_reduction"]
    assert sum(rewards) == pytest.approx(expected, abs=1e-9)


# -- a user's own model ----------------------------------------------------------------------------------


def test_custom_model_with_conv1d_and_linear():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv1d(8, 8, 3, groups=8, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 16, 4),
    )
    x = torch.randn(40, 3, 16)
    y = torch.randint(0, 4, (40,))
    env = PruneEnv(model=model, reward_data=(x[:20], y[:20]), test_data=(x[20:], y[20:]), target_sparsity=0.5, device="cpu")
    assert [layer.kind for layer in env.layers] == ["conv", "depthwise", "linear"]
    _, _, infos = rollout(env, actions=[10, 10, 0])
    assert env.state.pruned_count() == round(0.5 * env.state.total)
    assert "test_accuracy" in infos[-1]
    with pytest.raises(ValueError, match="model="):
        PruneEnv(reward_data=(x, y))


def test_the_test_split_is_scored_at_the_end_only_where_it_is_on_the_device(monkeypatch):
    """evaluate_test=None (the agents' training envs) scores a resident test split at each
    episode's end and leaves one read by a loader (ImageNet's validation JPEGs) to whoever
    reports; the default (True) always scores it; compare's episodes score it either way, with
    the same number."""
    from torch.utils.data import TensorDataset

    from prune_gym import evaluation
    from prune_gym.agents.policies import GlobalMagnitudePolicy
    from prune_gym.agents.rollout import run_episode

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    x, y = torch.randn(90, 12), torch.randint(0, 3, (90,))
    monkeypatch.setattr(evaluation, "MAX_RESIDENT_SAMPLES", 50)  # a 60-sample Dataset is now "large"
    split = {"reward_data": (x[:30], y[:30]), "target_sparsity": 0.5, "device": "cpu"}

    def last_info(**kwargs):
        env = PruneEnv(model=copy.deepcopy(model), **split, **kwargs)
        return env, rollout(env, actions=[5, 5])[2][-1]

    env, info = last_info(test_data=TensorDataset(x[30:], y[30:]), evaluate_test=None)  # a loader's: not scored
    assert not env.engine.test_evaluator.resident and "test_accuracy" not in info and env.dense_test_accuracy is None
    expected = env.evaluate_test()
    played = run_episode(GlobalMagnitudePolicy(env), env, 0.5, deterministic=True, method="Global MP")
    assert played.test_accuracy == env.evaluate_test() and not np.isnan(played.test_accuracy)
    env, info = last_info(test_data=TensorDataset(x[30:], y[30:]))  # the default: always scored
    assert info["test_accuracy"] == expected and "dense_test_accuracy" in info
    env, info = last_info(test_data=(x[30:], y[30:]), evaluate_test=None)  # tensors: on the device, scored
    assert env.engine.test_evaluator.resident and info["test_accuracy"] == expected
    env, info = last_info(test_data=(x[30:], y[30:]), evaluate_test=False)
    assert "test_accuracy" not in info


# -- BatchNorm re-calibration ------------------------------------------------------------------------


def test_bn_recalibration_changes_statistics_and_reset_restores_them(digits_model_state):
    env = gym.make(DIGITS, bn_recalibration_batches=2).unwrapped
    env.reset(seed=0)
    dense = weights_of(env)
    env.step(9)
    after = weights_of(env)
    assert not torch.equal(after["stem.1.running_mean"], dense["stem.1.running_mean"])
    env.reset()
    assert_same_state(weights_of(env), dense)


# -- rendering -------------------------------------------------------------------------------------------


def test_render_ansi_and_rgb_array(digits_model_state):
    env = gym.make(DIGITS, render_mode="ansi")
    env.reset(seed=0)
    env.step(5)
    text = env.render()
    assert "blocks.0.conv1" in text and "overall sparsity" in text
    env = gym.make(DIGITS, render_mode="rgb_array")
    env.reset(seed=0)
    image = env.render()
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.std() > 0  # something is drawn


# -- vectorised use ------------------------------------------------------------------------------------


def test_make_vec_and_sb3_dummy_vec_env(digits_model_state):
    from stable_baselines3.common.vec_env import DummyVecEnv

    vec = gym.make_vec(DIGITS, num_envs=2, vectorization_mode="sync")
    obs, _ = vec.reset(seed=0)
    assert obs.shape == (2, len(FEATURES))
    obs, rewards, terminated, truncated, _ = vec.step(np.array([1, 2]))
    assert rewards.shape == (2,)
    vec.close()
    dummy = DummyVecEnv([lambda: gym.make(DIGITS)] * 2)
    dummy.reset()
    for _ in range(22):
        _, _, dones, infos = dummy.step(np.array([4, 6]))
    assert dones.all() and "test_accuracy" in infos[0]


def _live_tensor_bytes() -> tuple[int, int]:
    """Count and bytes of the tensor storages Python can reach (tracemalloc cannot see them)."""
    import gc

    storages = {}
    with warnings.catch_warnings():  # isinstance() on every object touches deprecated torch aliases
        warnings.simplefilter("ignore")
        for obj in gc.get_objects():
            try:
                is_tensor = isinstance(obj, torch.Tensor)
            except ReferenceError:  # a weak proxy whose object is gone (torch.export leaves some)
                continue
            if is_tensor:
                try:
                    storage = obj.untyped_storage()
                    storages[storage.data_ptr()] = storage.nbytes()
                except (RuntimeError, NotImplementedError):
                    continue  # a fake tensor torch.compile traced with (another test compiled): no storage
    return len(storages), sum(storages.values())


def test_memory_does_not_grow_over_many_episodes(digits_model_state):
    import tracemalloc

    env = gym.make(DIGITS)  # the defaults: BatchNorm re-calibration and both activation caches on
    env.action_space.seed(0)
    for _ in range(3):
        rollout(env)
    tensors_before = _live_tensor_bytes()
    tracemalloc.start()
    python_before = tracemalloc.get_traced_memory()[0]
    for _ in range(12):
        rollout(env)
    python_growth = tracemalloc.get_traced_memory()[0] - python_before
    tracemalloc.stop()
    tensors_after = _live_tensor_bytes()
    # Tensor storage (the caches, masks, snapshots) is the same after 12 more episodes: nothing
    # accumulates per step or per episode. Python objects grow by less than 200 kB.
    assert tensors_after == tensors_before, f"live tensors {tensors_before} -> {tensors_after} (count, bytes)"
    assert python_growth < 200_000, f"the Python heap grew by {python_growth} bytes over 12 episodes"


def test_check_env_passes_for_digits_without_warnings(digits_model_state):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    for action_type in ("discrete", "continuous"):
        env = gym.make(DIGITS, action_type=action_type).unwrapped
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            check_env(env)
            sb3_check_env(env)


def test_per_step_finetuning_keeps_pruned_weights_zero_and_reset_restores_everything(digits_model_state):
    env = gym.make(DIGITS, finetune_steps=2, target_sparsity=0.6).unwrapped
    env.reset(seed=0)
    dense = weights_of(env)
    env.step(9)
    env.step(9)
    # Retraining touched layers that are not pruned yet (and BN), pruned weights stayed zero.
    later = env.layers[5].name + ".weight"
    assert not torch.equal(env.model.state_dict()[later], dense[later])
    for layer, mask in zip(env.layers[:2], env.state.masks[:2]):
        assert int((layer.weight[~mask] != 0).sum()) == 0
        assert not mask.all()
    while env.current_layer is not None:
        env.step(env.action_space.sample())
    assert env.state.pruned_count() == round(0.6 * env.state.total)
    for layer, mask in zip(env.layers, env.state.masks):
        assert int((layer.weight[~mask] != 0).sum()) == 0
    env.reset()
    assert_same_state(weights_of(env), dense)


def test_failed_step_with_finetuning_rolls_back_every_parameter(digits_model_state, monkeypatch):
    env = gym.make(DIGITS, finetune_steps=1).unwrapped
    env.reset(seed=0)
    env.step(4)
    before = weights_of(env)
    monkeypatch.setattr(env.evaluator, "accuracy", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        env.step(4)
    assert_same_state(weights_of(env), before)
    assert env.current_layer == 1


def test_the_last_step_terminates_and_gym_makes_time_limit_also_truncates(env):
    """As the docstring says: the env ends the episode itself (terminated); gym.make's TimeLimit
    of the same length flags the last step as truncated too, and never an earlier one."""
    env.reset(seed=0)
    flags = []
    for _ in range(env.unwrapped.num_layers):
        _, _, terminated, truncated, _ = env.step(env.action_space.n // 2)
        flags.append((terminated, truncated))
    assert flags[-1] == (True, True)
    assert all(flag == (False, False) for flag in flags[:-1])
    bare = env.unwrapped
    bare.reset(seed=0)
    for _ in range(bare.num_layers):
        _, _, terminated, truncated, _ = bare.step(bare.action_space.n // 2)
    assert terminated and not truncated
