"""How a searched allocation stands against the zero-cost rules, and when it replaces them.

- :func:`strongest_heuristic`: the rule (``prune_gym.allocation.HEURISTICS``) with the highest
  reward-split accuracy at a target; the test split is not read.
- :func:`guard_selection`: an allocation chosen as the best of many on the reward split (an
  agent's best training episode, the search's best candidate) is kept only when it beats the
  strongest rule there by more than noise; otherwise the rule's allocation is used in its place.
- :func:`paired_tests`: every method that spent evaluations against the strongest rule on the
  same test images (the report).
- :func:`fastest_within_noise`: the recipe to export at a target of a channel env: the fastest
  (measured) of those the most accurate one on the reward split does not beat by more than noise.

Why the guard: the best of ~100 episodes on a 359-image reward split is the luckiest of them as
much as the best. Where no allocation is truly better (on the digits model at 50-80% sparsity
every good rule is within a few images of the dense network) the luckiest one scores a few images
above the rules on the reward split and a few below them on the test split. A paired test on the
reward split (McNemar's, one-sided, as the question is whether the searched allocation is better)
tells a real margin (tens of images at 90% sparsity) from that one. The test split is never read:
selection stays on the reward split. The p-value after a best-of-many choice is not a valid test
of that choice; it is used here as a threshold on the margin, which is what the guard needs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from prune_gym.agents.report import MethodResult, recipe_name
from prune_gym.allocation import ALLOCATION_METHODS
from prune_gym.channel_allocation import CHANNEL_METHODS
from prune_gym.errors import ConfigError
from prune_gym.significance import mcnemar

__all__ = ["SELECTION_ALPHA", "fastest_within_noise", "guard_selection", "paired_tests", "strongest_heuristic"]

#: A searched allocation replaces the strongest rule only when McNemar's one-sided p on the
#: reward split is below this.
SELECTION_ALPHA = 0.05


def strongest_heuristic(rows: Sequence[MethodResult], target: float) -> MethodResult | None:
    """The zero-cost rule (a heuristic of ``prune_gym.allocation`` or, for channel envs, of
    ``prune_gym.channel_allocation``; not the random control) with the highest reward-split
    accuracy at ``target``; ties go to the first in registry order. The
    test split is not read."""
    labels = [method.label for registry in (ALLOCATION_METHODS, CHANNEL_METHODS) for method in registry.values()
              if method.heuristic]
    candidates = [row for label in labels for row in rows
                  if row.method == label and math.isclose(row.target_sparsity, target)]
    return max(candidates, key=lambda row: row.reward_accuracy, default=None)


def guard_selection(row: MethodResult, rule: MethodResult, alpha: float = SELECTION_ALPHA) -> MethodResult:
    """``row`` (an allocation chosen on the reward split) if it beats ``rule`` there by more than
    noise (one-sided McNemar p < ``alpha`` on the rows' reward-split correctness), else ``rule``'s
    result under ``row``'s label and cost, with ``fallback`` naming the rule.

    Either way ``selection`` records the verdict and ``row``'s own accuracies, so a report can say
    what the searched allocation scored. ``row`` and ``rule`` are not changed.

    Raises:
        ValueError: if either row lacks its reward-split correctness (``run_episode`` keeps it).
    """
    if row.reward_correct is None or rule.reward_correct is None:
        raise ConfigError(f"guarding {row.method!r} against {rule.method!r} needs both rows' reward-split "
                         "correctness (run_episode with score_test=True records it)")
    test = mcnemar(row.reward_correct, rule.reward_correct)
    p_better = test.p_first_better()  # one-sided: is the searched allocation better?
    kept = p_better < alpha
    selection: dict[str, Any] = {
        "against": rule.method,
        "kept": kept,
        "p_better": p_better,
        "alpha": alpha,
        "reward_samples": test.samples,
        "only_own": test.only_first,
        "only_rule": test.only_second,
        "own": {"test_accuracy": row.test_accuracy, "reward_accuracy": row.reward_accuracy,
                "finetuned_test_accuracy": row.finetuned_test_accuracy},
    }
    if kept:
        return dataclasses.replace(row, selection=selection)
    return dataclasses.replace(rule, method=row.method, evaluations=row.evaluations, cost_seconds=row.cost_seconds,
                               fallback=rule.method, selection=selection)


def paired_tests(rows: Sequence[MethodResult], targets: Sequence[float]) -> list[dict[str, Any]]:
    """At each target, every method that spent evaluations (agent, search) against the strongest
    heuristic on the same test images (McNemar's exact test, ``prune_gym.significance``)."""
    tests = []
    for target in targets:
        best = strongest_heuristic(rows, target)
        if best is None or best.test_correct is None:
            continue
        for row in rows:
            if math.isclose(row.target_sparsity, target) and row.evaluations and row.test_correct is not None:
                test = mcnemar(row.test_correct, best.test_correct)
                tests.append({"target_sparsity": target, "method": row.method, "against": best.method,
                              **test.record(), "summary": test.describe(row.method, best.method)})
    return tests


def fastest_within_noise(rows: Sequence[MethodResult], target: float,
                         alpha: float = SELECTION_ALPHA) -> dict[str, Any] | None:
    """The recipe to export at ``target`` when speed counts too: among the rows with a measured
    speed-up (a channel env's), the most accurate on the reward split, then the fastest (the
    geometric mean of its speed-ups over the batch sizes measured) of the rows that it does not
    beat there by more than noise (one-sided McNemar p >= ``alpha``). When every row was
    fine-tuned, the fine-tuned networks' reward-split accuracy counts (the network a user
    exports), else the one-shot one. The random control is left out; the test split is not
    read. None when no row at ``target`` has a speed-up.

    Where recipes differ by a few reward-split images and by tenths of a speed-up (the agent's and
    the search's on the digits model at 50% of the FLOPs), accuracy alone picks between them by
    chance; this picks the faster one. Its speed-ups are the table's (a few short rounds): an
    export measures again."""
    random_label = CHANNEL_METHODS["random"].label
    candidates = [row for row in rows if math.isclose(row.target_sparsity, target) and row.speedup
                  and row.reward_correct is not None and row.method != random_label]
    if not candidates:
        return None
    finetuned = all(row.finetuned_reward_correct is not None for row in candidates)

    def correct(row: MethodResult) -> np.ndarray:
        return row.finetuned_reward_correct if finetuned else row.reward_correct

    best = max(candidates, key=lambda row: correct(row).mean())  # ties: the first, the table's order

    def p_worse(row: MethodResult) -> float:  # one-sided: does the most accurate beat it?
        return mcnemar(correct(best), correct(row)).p_first_better()

    def speed(row: MethodResult) -> float:
        return math.exp(sum(math.log(x) for x in row.speedup.values()) / len(row.speedup))

    tied = [row for row in candidates if row is best or p_worse(row) >= alpha]
    chosen = max(tied, key=speed)
    return {"target_sparsity": target, "method": chosen.method, "recipe": recipe_name(chosen.method, target),
            "accuracy": "fine-tuned" if finetuned else "one-shot", "reward_accuracy": float(correct(chosen).mean()),
            "speedup": dict(chosen.speedup), "most_accurate": best.method,
            "most_accurate_reward_accuracy": float(correct(best).mean()),
            "p_worse": 1.0 if chosen is best else p_worse(chosen), "alpha": alpha}
