"""The search baseline at equal cost: local search around Global MP on the reward split."""

from __future__ import annotations

import gymnasium as gym
import pytest

import prune_gym  # noqa: F401  (registers the env ids)
from prune_gym.agents.search import local_search

ENV_ID = "PruneResNet20Digits-v1"


@pytest.fixture(scope="module")
def env(digits_model_state):
    made = gym.make(ENV_ID, action_type="continuous", action_mode="absolute", target_sparsity=0.9, device="cpu")
    yield made
    made.close()


def test_search_starts_at_global_mp_and_only_improves_on_the_reward_split(env):
    result = local_search(env, 0.9, episodes=6, seed=0)
    prune_env = env.unwrapped
    # Episode one plays Global MP's own allocation.
    names = prune_env.layer_names()
    global_mp = prune_env.global_mp_sparsities(0.9)
    assert len(result.best_so_far) == 6
    assert result.best_so_far == sorted(result.best_so_far)  # the best so far never falls
    assert result.best.reward_accuracy == result.best_so_far[-1] >= result.best_so_far[0]
    # The chosen allocation ends at the target (the env's projection) and replays to the same accuracy.
    numels = prune_env.state.numels
    pruned = sum(result.best.layer_sparsities[name] * n for name, n in zip(names, numels, strict=True))
    assert pruned == pytest.approx(0.9 * prune_env.state.total, abs=1.0)
    from prune_gym.agents.policies import RecipePolicy
    from prune_gym.agents.rollout import run_episode

    replay = run_episode(RecipePolicy(env, result.best.layer_sparsities), env, 0.9)
    assert replay.reward_accuracy == result.best.reward_accuracy
    first = run_episode(RecipePolicy(env, dict(zip(names, global_mp, strict=True))), env, 0.9)
    assert first.reward_accuracy == result.best_so_far[0]


def test_search_is_reproducible_and_needs_continuous_actions(env, digits_model_state):
    assert local_search(env, 0.9, 3, seed=4).best.layer_sparsities == local_search(env, 0.9, 3, seed=4).best.layer_sparsities
    with pytest.raises(ValueError, match="action_type='continuous'"):
        local_search(gym.make(ENV_ID, device="cpu"), 0.9, 3)
    with pytest.raises(ValueError, match="episodes must be a whole number"):
        local_search(env, 0.9, 0)


def test_the_search_never_scores_a_test_split_read_by_a_loader(monkeypatch):
    """The search's candidates select on the reward split: on the reference env (evaluate_test
    None) none of its episodes decodes the test split; the row compare reports scores it once."""
    from prune_gym import evaluation
    from prune_gym.agents.policies import RecipePolicy
    from prune_gym.agents.rollout import run_episode
    from prune_gym.envs.engine import PruningEngine
    from prune_gym.workflows.methods import make_reference_env

    monkeypatch.setattr(evaluation, "MAX_RESIDENT_SAMPLES", 4)  # the 8-sample synthetic test split: "large"
    reference_env, _, _ = make_reference_env(ENV_ID, [0.5], {"synthetic": True, "synthetic_samples": 8, "device": "cpu"}, None)
    calls = []
    original = PruningEngine.test_accuracy
    monkeypatch.setattr(PruningEngine, "test_accuracy", lambda self: calls.append(1) or original(self))
    result = local_search(reference_env, 0.5, episodes=4, seed=0)
    assert calls == []
    row = run_episode(RecipePolicy(reference_env, result.best.layer_sparsities), reference_env, 0.5, method="local search")
    assert len(calls) == 1 and 0.0 <= row.test_accuracy <= 1.0


def test_search_starts_from_the_allocation_it_is_given(env):
    from prune_gym.agents.policies import RecipePolicy
    from prune_gym.agents.rollout import run_episode

    prune_env = env.unwrapped
    result = local_search(env, 0.9, episodes=2, seed=0, start="lamp")
    lamp = dict(zip(prune_env.layer_names(), prune_env.allocation_sparsities("lamp", 0.9), strict=True))
    assert run_episode(RecipePolicy(env, lamp), env, 0.9).reward_accuracy == result.best_so_far[0]
    with pytest.raises(ValueError, match="unknown allocation method 'best'"):
        local_search(env, 0.9, episodes=2, start="best")
