"""The action parametrisations: the relative mode's reference, its centre action (Global MP
exactly), the spread of an under-pruned start, and the projection's per-layer cap."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest

import prune_gym  # noqa: F401  (registers the env ids)
from prune_gym.agents import GlobalMagnitudePolicy, RandomPolicy
from prune_gym.agents.policies import REFERENCE_POLICIES
from prune_gym.cli import ACTION_MODE_CHOICES, POLICY_CHOICES
from prune_gym.cli import DEFAULT_SPARSITIES as CLI_SPARSITIES
from prune_gym.envs.actions import ACTION_MODES, ActionMap, feasible_counts, reference_sparsity
from prune_gym.stats import FEATURE_INDEX
from prune_gym.workflows.compare import DEFAULT_SPARSITIES

ENV_ID = "PruneResNet20Digits-v1"


def play(env, choose, target):
    """One episode at ``target``; ``choose(observation, env)`` gives each action. Returns the
    actions taken and the last info."""
    observation, _ = env.reset(options={"target_sparsity": target})
    actions, done = [], False
    while not done:
        action = choose(observation, env)
        actions.append(action)
        observation, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
    return actions, info


@pytest.fixture(scope="module")
def relative(digits_model_state):
    env = gym.make(ENV_ID, device="cpu")  # the default: discrete, relative
    yield env
    env.close()


def test_reference_spreads_what_earlier_layers_kept_in_proportion_to_global_mp():
    """A hand-worked example: three layers of 100 weights, target 0.6 (180 pruned, 120 kept).
    Global MP prunes 40, 60 and 80 (keeps 60, 40, 20)."""
    numels, counts = [100, 100, 100], [40, 60, 80]
    assert reference_sparsity(0, numels, counts, 0, 180) == 0.4  # on course: Global MP's, exactly
    assert reference_sparsity(1, numels, counts, 40, 180) == 0.6
    # Layer 0 kept 90 (30 more than Global MP): 30 may still be kept by layers 1 and 2, which
    # Global MP gives 40 and 20, so layer 1 keeps 30 * 40 / 60 = 20 (sparsity 0.8) and layer 2
    # would then keep 10: the deficit is shared, not left to the last layer.
    assert reference_sparsity(1, numels, counts, 10, 180) == pytest.approx(0.8)
    assert reference_sparsity(2, numels, counts, 10 + 80, 180) == pytest.approx(0.9)
    # Over-pruned start: layer 0 kept 30, layers 1 and 2 may keep 90 (Global MP: 60).
    assert reference_sparsity(1, numels, counts, 70, 180) == pytest.approx(1 - 40 * 90 / 60 / 100)
    # No target: Global MP's sparsity as it is.
    assert reference_sparsity(2, numels, counts, 0, None) == 0.8


def test_the_centre_action_is_global_mp_exactly_and_global_mp_policy_takes_it(relative):
    prune_env = relative.unwrapped
    centre = prune_env.action_space.n // 2
    assert prune_env.levels[centre] == 0.0
    for target in (0.5, 0.9):
        _, info = play(relative, lambda obs, env: centre, target)
        numels = prune_env.state.numels
        applied = [round(info["layer_sparsities"][name] * n) for name, n in zip(prune_env.layer_names(), numels)]
        assert applied == [round(s * n) for s, n in zip(prune_env.global_mp_sparsities(target), numels)]  # weight for weight
        assert prune_env.state.pruned_count() == round(target * prune_env.state.total)
        policy = GlobalMagnitudePolicy(relative)
        actions, again = play(relative, lambda obs, env, policy=policy: policy(obs), target)
        assert [int(a) for a in actions] == [centre] * prune_env.num_layers
        assert again["reward_accuracy"] == info["reward_accuracy"]


@pytest.mark.parametrize("reference", ["lamp", "erk", "uniform+"])
def test_the_centre_action_reproduces_any_chosen_reference_and_the_feature_follows_it(digits_model_state, reference):
    env = gym.make(ENV_ID, device="cpu", reference=reference)
    prune_env = env.unwrapped
    centre = prune_env.action_space.n // 2
    target = 0.9
    observation, _ = env.reset(options={"target_sparsity": target})
    reference_index = FEATURE_INDEX["reference_sparsity"]
    expected = prune_env.allocation_sparsities(reference, target)
    assert observation[reference_index] == pytest.approx(expected[0], abs=1e-6)
    assert expected != prune_env.global_mp_sparsities(target)
    _, info = play(env, lambda obs, env: centre, target)
    numels = prune_env.state.numels
    applied = [round(info["layer_sparsities"][name] * n) for name, n in zip(prune_env.layer_names(), numels)]
    assert applied == [round(s * n) for s, n in zip(expected, numels)]  # weight for weight
    # The spread follows the reference's keep shares: an under-pruned first layer is paid back
    # by the later layers in proportion to what the reference keeps there.
    env.reset(options={"target_sparsity": target})
    env.step(0)
    pruned = prune_env.state.pruned_count()
    counts = [round(s * n) for s, n in zip(expected, numels)]
    assert prune_env.reference_sparsity() == pytest.approx(
        reference_sparsity(1, numels, counts, pruned, round(target * prune_env.state.total)))
    env.close()


def test_an_unknown_reference_names_the_methods(digits_model_state):
    with pytest.raises(ValueError, match="unknown allocation method 'best': choose one of global-mp"):
        gym.make(ENV_ID, device="cpu", reference="best")


def test_an_under_pruned_start_is_paid_back_by_every_remaining_layer(relative):
    """At 0.9, the first half of the layers take the lowest action (keep more than Global MP):
    every later layer keeps less than Global MP, and the classifier is not emptied to the cap,
    as it was under absolute levels."""
    prune_env = relative.unwrapped
    half = prune_env.num_layers // 2
    _, info = play(relative, lambda obs, env: 0 if env.unwrapped.current_layer < half else env.action_space.n // 2, 0.9)
    applied = np.array([info["layer_sparsities"][name] for name in prune_env.layer_names()])
    gmp = np.array(prune_env.global_mp_sparsities(0.9))
    assert np.all(applied[:half] <= gmp[:half]) and np.any(applied[:half] < gmp[:half])
    later = gmp[half:] < prune_env.max_sparsity
    assert np.all(applied[half:][later] >= gmp[half:][later])
    assert applied[-1] < prune_env.max_sparsity
    assert prune_env.state.pruned_count() == round(0.9 * prune_env.state.total)
    # The same start under absolute levels: 0.0 for the first half leaves the last layers at the cap.
    absolute = gym.make(ENV_ID, device="cpu", action_mode="absolute")
    _, info = play(absolute, lambda obs, env: 0 if env.unwrapped.current_layer < half else 6, 0.9)
    assert info["layer_sparsities"][prune_env.layer_names()[-1]] == pytest.approx(prune_env.max_sparsity, abs=0.002)
    absolute.close()


@pytest.mark.parametrize("kwargs", [{}, {"action_type": "continuous"}, {"action_mode": "absolute"}])
def test_the_projection_keeps_every_layer_within_its_cap_and_the_target_exact(digits_model_state, kwargs):
    env = gym.make(ENV_ID, device="cpu", max_sparsity=0.95, **kwargs)
    prune_env = env.unwrapped
    policy = RandomPolicy(env, seed=1)
    for target in (0.8, 0.9):
        _, info = play(env, lambda obs, env: policy(obs), target)
        applied = np.array(list(info["layer_sparsities"].values()))
        assert applied.max() <= 0.95 and applied.min() >= 0.0
        assert prune_env.state.pruned_count() == round(target * prune_env.state.total)
    env.close()


def test_sparsity_to_action_inverts_the_map_in_both_modes():
    for mode in ACTION_MODES:
        for action_type in ("discrete", "continuous"):
            mapping = ActionMap(action_type, mode)
            references = np.array([0.0, 0.3, 0.9, 0.99])
            for action in ([0, 3, 5, 10] if action_type == "discrete" else [-1.0, -0.2, 0.0, 0.7]):
                sparsities = mapping.to_sparsities(np.full(4, action), references)
                back = mapping.to_actions(sparsities, references)
                again = mapping.to_sparsities(back.reshape(-1), references)
                np.testing.assert_allclose(again, sparsities, atol=1e-6)


def test_bad_action_settings_name_the_fix():
    with pytest.raises(ValueError, match="odd"):
        ActionMap("discrete", "relative", 12)
    with pytest.raises(ValueError, match="action_mode"):
        ActionMap("discrete", "logarithmic")
    with pytest.raises(ValueError, match="relative_range"):
        ActionMap("continuous", "relative", relative_range=0)
    assert ActionMap("discrete", "absolute", 12).n_actions == 12
    assert ACTION_MODE_CHOICES == ACTION_MODES  # the CLI's copies (kept so --help is fast)
    assert POLICY_CHOICES == REFERENCE_POLICIES
    assert CLI_SPARSITIES == DEFAULT_SPARSITIES


def test_v0_keeps_absolute_levels(digits_model_state):
    with pytest.warns(DeprecationWarning, match="out of date"):
        env = gym.make("PruneResNet20Digits-v0", device="cpu")
    assert env.unwrapped.action_mode == "absolute" and env.action_space.n == 12
    env.close()


def test_feasible_counts_never_exceed_a_layers_cap_and_keep_the_target_reachable():
    # Three layers of 100 weights, caps [0, 0.9], target 180 pruned.
    numels = [100, 100, 100]
    assert feasible_counts(0, numels, 0, 180, 0.0, 0.9) == (0, 90)
    # 10 pruned in layer 0: layers 1 and 2 must lose 170, at most 90 each -> layer 1 loses >= 80.
    assert feasible_counts(1, numels, 10, 180, 0.0, 0.9) == (80, 90)
    assert feasible_counts(2, numels, 100, 180, 0.0, 0.9) == (80, 80)  # the last layer: exactly the rest
    # Spread: Global MP prunes 40, 60, 80; the layers after layer 1 (Global MP keeps 20 there) must
    # keep between 20/e and 20e weights: with 10 pruned before, layer 1 may lose 80 to 90 (exactness)
    # and, within that, what leaves layer 2 keeping 7.4 to 54: all of 80..90 qualifies.
    assert feasible_counts(1, numels, 10, 180, 0.0, 0.9, ([40, 60, 80], 1.0)) == (80, 90)
    # On course (40 pruned, 60 kept), layers 1 and 2 keep 60 together; layer 2 must keep between
    # 20/e = 7.4 and 20e = 54.4, so layer 1 loses 48 to 94; the caps (layer 2 loses at most 90 of
    # the 140 still needed, layer 1 at most 90) make it 50 to 90.
    assert feasible_counts(1, numels, 40, 180, 0.0, 0.9, ([40, 60, 80], 1.0)) == (50, 90)
    # With caps of 0.99 the spread binds on both sides.
    assert feasible_counts(1, numels, 40, 180, 0.0, 0.99, ([40, 60, 80], 1.0)) == (48, 94)
    rng = np.random.default_rng(0)
    for _ in range(200):  # random layer sizes, caps, targets and histories
        numels = rng.integers(1, 500, size=6).tolist()
        cap = float(rng.uniform(0.5, 0.99))
        target = int(rng.integers(0, int(cap * sum(numels)) + 1))
        pruned = 0
        for index, numel in enumerate(numels):
            low, high = feasible_counts(index, numels, pruned, target, 0.0, cap)
            assert 0 <= low <= high <= math.floor(cap * numel)
            pruned += int(rng.integers(low, high + 1))
        assert pruned == target


def test_an_under_pruned_start_never_empties_the_last_layer_when_large_layers_are_near_their_cap():
    # As ResNet-20 at 0.95: large layers that Global MP takes to 0.985, close to the cap of 0.99,
    # and a small last layer it keeps half of. Earlier layers that prune as little as they may
    # leave a deficit the large layers cannot absorb past their cap: it must be paid early, not
    # by emptying the last layer (which kept 6 of 640 weights before the spread knew the caps).
    numels = [200, 200, 400, 10_000, 10_000, 640]
    counts = [60, 60, 120, 9_850, 9_850, 320]
    target = sum(counts)
    rng = np.random.default_rng(0)
    histories = [("least", None), ("most", None)] + [("random", seed) for seed in range(20)]
    for policy, _ in histories:
        chosen = []
        for index, numel in enumerate(numels):
            low, high = feasible_counts(index, numels, sum(chosen), target, 0.0, 0.99, (counts, 1.0))
            assert 0 <= low <= high <= math.floor(0.99 * numel)
            chosen.append(low if policy == "least" else high if policy == "most" else int(rng.integers(low, high + 1)))
        assert sum(chosen) == target
        kept_last, global_mp_kept_last = numels[-1] - chosen[-1], numels[-1] - counts[-1]
        assert global_mp_kept_last / math.e - 1 <= kept_last <= global_mp_kept_last * math.e + 1, (policy, chosen)


def test_the_registry_shows_each_ids_settings():
    spec = gym.spec(ENV_ID)
    assert spec.kwargs == {"task": "resnet20-digits", "bn_recalibration_batches": 1, "amp": False}
    assert gym.spec("PruneResNet20Digits-v0").kwargs["action_mode"] == "absolute"
    assert gym.spec("PruneResNet50-v1").kwargs == {"task": "resnet50-imagenet"}
