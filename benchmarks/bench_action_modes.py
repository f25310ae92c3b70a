"""Which action parametrisation can express good allocations: random episodes in each.

The env's default action space was chosen with this measurement. An agent explores before it
exploits, and its best found policy can only be as good as the allocations its actions can
reach, so for each parametrisation (``action_mode="absolute"``, v0's 12 sparsity levels; and
``"relative"``, steps around Global MP's allocation, for several ``relative_range``) this plays
``--episodes`` episodes of uniformly random discrete actions (an agent at epsilon = 1) at each
target on ``PruneResNet20Digits-v1``, and records the reward-split accuracy of every episode:
the mean, the best (selected on the reward split) and the test accuracy of that best, against
Global MP's allocation.

Run from the repository root::

    python benchmarks/bench_action_modes.py --output benchmarks/results
    python benchmarks/bench_action_modes.py --episodes 3 --output /tmp/action_modes   # a smoke test
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import gymnasium as gym
import torch
from machine import machine_info, write_record  # benchmarks/machine.py, beside this script

import prune_gym  # noqa: F401  (registers the env ids)
from prune_gym.agents import GlobalMagnitudePolicy, RandomPolicy
from prune_gym.agents.rollout import run_episode

ENV_ID = "PruneResNet20Digits-v1"
SETTINGS = (
    {"action_mode": "absolute"},
    {"action_mode": "relative", "relative_range": 0.5},
    {"action_mode": "relative", "relative_range": 1.0},
    {"action_mode": "relative", "relative_range": 1.5},
)


def measure(settings: dict, targets: list[float], episodes: int, seed: int) -> list[dict]:
    env = gym.make(ENV_ID, device="cpu", target_sparsity=targets[0], **settings)
    policy = RandomPolicy(env, seed=seed)
    rows = []
    for target in targets:
        played = [run_episode(policy, env, target, deterministic=False) for _ in range(episodes)]
        accuracies = [row.reward_accuracy for row in played]
        best = max(played, key=lambda row: row.reward_accuracy)  # the reward split selects
        rows.append({
            "settings": settings, "target_sparsity": target, "episodes": episodes,
            "reward_accuracy_mean": statistics.mean(accuracies), "reward_accuracy_best": best.reward_accuracy,
            "test_accuracy_of_best": best.test_accuracy,
            "classifier_sparsity_of_best": list(best.layer_sparsities.values())[-1],
        })
    env.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=40, help="random episodes per setting and target (default 40)")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.8, 0.9])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, required=True,
                        help="folder to write action_modes_digits.json and .md into")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error("--episodes must be >= 1")
    torch.set_num_threads(1)
    started = time.perf_counter()
    reference = gym.make(ENV_ID, device="cpu", action_type="continuous", action_mode="absolute")
    global_mp = {}
    for target in args.sparsities:
        row = run_episode(GlobalMagnitudePolicy(reference), reference, target)
        global_mp[str(target)] = {"reward_accuracy": row.reward_accuracy, "test_accuracy": row.test_accuracy}
    reference.close()
    rows = []
    for settings in SETTINGS:
        rows += measure(settings, args.sparsities, args.episodes, args.seed)
        print(f"[{time.perf_counter() - started:5.0f} s] {settings} done", file=sys.stderr, flush=True)
    record = {
        "benchmark": "action_modes_digits", "env_id": ENV_ID, "date": datetime.date.today().isoformat(),
        "command": "python " + " ".join([f"benchmarks/{Path(__file__).name}", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(), "torch_threads": 1, "seed": args.seed, "global_mp": global_mp, "results": rows,
        "total_seconds": time.perf_counter() - started,
    }
    lines = [
        f"`{ENV_ID}`, {args.episodes} episodes of uniformly random discrete actions per setting and target "
        f"(seed {args.seed}; the numbers move with it). Best: the episode with the highest reward-split accuracy; "
        f"its test accuracy is reported only. Machine: {record['machine']['cpu']}, 1 torch thread; {record['date']}.",
        "",
        f"Command: `{record['command']}`",
        "",
        "| action space | target | reward acc. mean | best reward acc. | test acc. of best | Global MP reward / test | classifier sparsity of best |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        label = ", ".join(f"{k}={v}" for k, v in row["settings"].items())
        gmp = global_mp[str(row["target_sparsity"])]
        lines.append(
            f"| {label} | {row['target_sparsity']:g} | {100 * row['reward_accuracy_mean']:.1f} "
            f"| {100 * row['reward_accuracy_best']:.1f} | {100 * row['test_accuracy_of_best']:.1f} "
            f"| {100 * gmp['reward_accuracy']:.1f} / {100 * gmp['test_accuracy']:.1f} "
            f"| {100 * row['classifier_sparsity_of_best']:.1f} |"
        )
    write_record(args.output, "action_modes_digits", record, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
