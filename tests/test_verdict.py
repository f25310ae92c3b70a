"""The paired test, the strongest rule and the selection guard, on hand-made rows."""

from __future__ import annotations

import numpy as np
import pytest

from prune_gym.agents.report import MethodResult, format_table
from prune_gym.agents.verdict import (
    SELECTION_ALPHA,
    fastest_within_noise,
    guard_selection,
    strongest_heuristic,
)
from prune_gym.significance import mcnemar


def _correct(samples: int, wrong: list[int]) -> np.ndarray:
    correct = np.ones(samples, dtype=bool)
    correct[wrong] = False
    return correct


def _row(method: str, reward_correct: np.ndarray, test_accuracy: float, sparsities: dict[str, float],
         evaluations: int = 0, finetuned: float | None = None) -> MethodResult:
    return MethodResult(
        method=method, target_sparsity=0.7, test_accuracy=test_accuracy,
        reward_accuracy=float(reward_correct.mean()), overall_sparsity=0.7, flops_reduction=0.6, seconds=0.1,
        episode_return=1.0, action_type="continuous", layer_sparsities=sparsities, evaluations=evaluations,
        cost_seconds=float(evaluations), finetuned_test_accuracy=finetuned, reward_correct=reward_correct,
        test_correct=np.ones(10, dtype=bool),
    )


def test_mcnemar_counts_the_discordant_images_and_gives_the_exact_binomial_p():
    first = _correct(100, wrong=[0, 1])                       # right where second is wrong: 8 images
    second = _correct(100, wrong=[10, 11, 12, 13, 14, 15, 16, 17])
    test = mcnemar(first, second)
    assert (test.only_first, test.only_second, test.samples) == (8, 2, 100)
    assert test.difference == pytest.approx(0.06)
    # Two-sided: 2 * P(X <= 2) for X ~ Binomial(10, 1/2) = 2 * (1 + 10 + 45) / 1024.
    assert test.p_value == pytest.approx(112 / 1024)
    # One-sided: half of it when the first is ahead; 1 when it is not.
    assert test.p_first_better() == pytest.approx(56 / 1024) and mcnemar(second, first).p_first_better() == 1.0
    assert not test.significant()
    assert mcnemar(first, first).p_value == 1.0
    with pytest.raises(ValueError, match="equally long"):
        mcnemar(first, second[:50])


def test_the_strongest_rule_is_read_from_the_reward_split_only():
    rows = [_row("Global MP", _correct(100, [0, 1, 2]), 0.99, {}),
            _row("LAMP", _correct(100, [0]), 0.50, {}),         # best on the reward split, worst on test
            _row("ERK", _correct(100, [0]), 0.98, {}),          # tied with LAMP: registry order decides
            _row("random", _correct(100, []), 0.99, {}),        # a control, never the strongest rule
            _row("DQN (best found)", _correct(100, []), 0.99, {}, evaluations=5)]
    assert strongest_heuristic(rows, 0.7).method == "LAMP"
    assert strongest_heuristic(rows, 0.5) is None


def test_a_searched_allocation_is_kept_only_when_it_beats_the_rule_by_more_than_noise():
    rule = _row("ERK", _correct(359, list(range(20))), 0.986, {"a": 0.5, "b": 0.8}, finetuned=0.99)
    # Two images ahead on the reward split (3 vs 1 discordant): the luck of a best-of-many choice.
    lucky = _row("DQN (best found)", _correct(359, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 50]),
                 0.980, {"a": 0.6, "b": 0.75}, evaluations=10_000)
    before = (lucky.method, dict(lucky.layer_sparsities), lucky.test_accuracy)
    guarded = guard_selection(lucky, rule)
    # The rule's allocation and accuracies (fine-tuned too) under the searched row's label and cost.
    assert guarded.fallback == "ERK" and guarded.method == "DQN (best found)"
    assert guarded.layer_sparsities == rule.layer_sparsities
    assert (guarded.test_accuracy, guarded.reward_accuracy, guarded.finetuned_test_accuracy) == (0.986, rule.reward_accuracy, 0.99)
    assert guarded.evaluations == 10_000
    verdict = guarded.selection
    assert (verdict["kept"], verdict["only_own"], verdict["only_rule"], verdict["against"]) == (False, 3, 1, "ERK")
    assert verdict["p_better"] == pytest.approx(mcnemar(lucky.reward_correct, rule.reward_correct).p_value / 2)
    assert verdict["own"]["test_accuracy"] == 0.980 and verdict["own"]["reward_accuracy"] == lucky.reward_accuracy
    assert (lucky.method, dict(lucky.layer_sparsities), lucky.test_accuracy) == before  # the input is not changed
    assert lucky.fallback is None and rule.fallback is None

    # Twenty images ahead, none behind: a real margin, kept as it is.
    strong = _row("DQN (best found)", _correct(359, []), 0.95, {"a": 0.6, "b": 0.75}, evaluations=10_000)
    kept = guard_selection(strong, rule)
    assert kept.fallback is None and kept.layer_sparsities == {"a": 0.6, "b": 0.75}
    assert kept.selection["kept"] and kept.selection["p_better"] < SELECTION_ALPHA
    # Behind the rule: never kept, whatever the margin.
    weak = _row("local search", _correct(359, list(range(60))), 0.9, {"a": 0.9, "b": 0.1}, evaluations=100)
    assert guard_selection(weak, rule).fallback == "ERK"
    assert guard_selection(weak, rule).selection["p_better"] == 1.0


def test_the_guard_needs_each_rows_reward_split_correctness():
    rule = _row("ERK", _correct(10, []), 0.9, {})
    row = _row("local search", _correct(10, []), 0.9, {}, evaluations=3)
    row.reward_correct = None
    with pytest.raises(ValueError, match="reward-split correctness"):
        guard_selection(row, rule)


def test_the_table_marks_a_row_that_fell_back_and_says_what_its_own_allocation_scored():
    rule = _row("ERK", _correct(359, list(range(20))), 0.986, {"a": 0.5})
    lucky = _row("DQN (best found)", _correct(359, list(range(17)) + [50]), 0.980, {"a": 0.6}, evaluations=100)
    metadata = {
        "env_id": "PruneResNet20Digits-v1", "dense_test_accuracy": 0.98, "dense_reward_accuracy": 0.99,
        "agent": {"algo": "dqn", "timesteps": 100, "action_type": "discrete", "levels": 9, "trained_here": True,
                  "train_seconds": 1.0, "episodes": 4},
        "matched": {"max_sparsity": 0.99}, "total_seconds": 2.0, "finetune_epochs": 0,
    }
    table = format_table([guard_selection(lucky, rule), rule], metadata)
    assert "DQN (best found) -> ERK" in table
    assert "70% DQN (best found): -> ERK (3 vs 1 of 359 reward-split samples differ from ERK" in table
    assert "test 98.0%" in table


def test_the_recipe_to_export_is_the_fastest_that_the_most_accurate_does_not_beat_by_more_than_noise():
    def timed(method, wrong, speedup):
        row = _row(method, _correct(359, wrong), 0.9, {})
        row.speedup = {"1": speedup[0], "256": speedup[1]}
        return row

    rows = [timed("local search", [0, 1], (1.3, 1.4)),                 # the most accurate
            timed("DQN (best found)", [0, 1, 2, 3], (1.25, 1.6)),       # 2 images behind: noise, and faster
            timed("LAMP", list(range(30)), (1.5, 2.5)),                 # fastest, but 28 images behind
            timed("random", [0, 1], (2.0, 3.0))]                        # a control: never the pick
    pick = fastest_within_noise(rows, 0.7)
    assert pick["method"] == "DQN (best found)" and pick["recipe"] == "dqn-best-found-0.70.json"
    assert pick["most_accurate"] == "local search" and pick["p_worse"] >= SELECTION_ALPHA
    assert pick["speedup"] == {"1": 1.25, "256": 1.6} and pick["accuracy"] == "one-shot"
    # Fine-tuned rows: the fine-tuned networks' reward-split accuracy counts. LAMP's network,
    # 28 images behind one-shot, ties the others once trained: the fastest, it is the pick.
    for row in rows:
        row.finetuned_reward_correct = _correct(359, [5])
    rows[1].finetuned_reward_correct = _correct(359, list(range(40)))  # the agent's trains worse
    pick = fastest_within_noise(rows, 0.7)
    assert pick["method"] == "LAMP" and pick["accuracy"] == "fine-tuned"
    assert pick["reward_accuracy"] == pytest.approx(358 / 359)
    # Not every row fine-tuned: one-shot accuracy for all.
    rows[2].finetuned_reward_correct = None
    assert fastest_within_noise(rows, 0.7)["method"] == "DQN (best found)"
    for row in rows:
        row.finetuned_reward_correct = None
    # Only the most accurate is fast: it is its own pick.
    rows[1].speedup = {"1": 1.0, "256": 1.0}
    assert fastest_within_noise(rows, 0.7)["method"] == "local search"
    # No measured speed (a weight env), or another target: nothing to pick.
    assert fastest_within_noise(rows, 0.5) is None
    for row in rows:
        row.speedup = None
    assert fastest_within_noise(rows, 0.7) is None
