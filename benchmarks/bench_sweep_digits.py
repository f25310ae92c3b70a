"""A sweep on Ray Tune: trials two at a time against the same trials one after another.

Runs :func:`prune_gym.agents.sweep` twice with the same settings (DQN and PPO x seeds 0 and 1
on ``PruneResNet20Digits-v1``, targets 0.5 0.7 0.8 0.9, ``--timesteps`` each, one env process
and one Tune CPU per trial, the search at equal cost per seed and the reference policies):
once with at most two trials at once (``max_concurrent=2``), once with one at a time
(``max_concurrent=1``). Records each run's wall time (Ray's start and stop included), the
speed-up, the trials' own time, the machine, and whether both runs gave the same aggregate
(each trial is seeded and runs one torch thread, so they should).

Run from the repository root (the ``[ray]`` extra installed)::

    python benchmarks/bench_sweep_digits.py --output benchmarks/results

In the folder ``--output`` it writes ``sweep_digits.json`` and ``.md`` and keeps the concurrent
run's table and plots (``sweep_digits_accuracy_vs_sparsity.png``,
``sweep_digits_learning_curves.png``). Without ``--output`` it only prints.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

from machine import machine_info  # benchmarks/machine.py, beside this script

from prune_gym.workflows import sweep


def run(settings: dict, max_concurrent: int, folder: Path) -> tuple[float, object]:
    started = time.perf_counter()
    result = sweep(**settings, max_concurrent=max_concurrent, output_dir=folder)
    return time.perf_counter() - started, result


def same_aggregate(a, b) -> tuple[bool, float]:
    """Whether two sweeps' aggregates agree row for row; the largest difference in accuracy."""
    keys_a = {(r.target_sparsity, r.method): r for r in a.rows}
    keys_b = {(r.target_sparsity, r.method): r for r in b.rows}
    if set(keys_a) != set(keys_b):
        return False, math.inf
    gap = max(abs(getattr(keys_a[k], f) - getattr(keys_b[k], f))
              for k in keys_a for f in ("test_accuracy_mean", "reward_accuracy_mean"))
    return gap == 0.0, gap


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algos", nargs="+", default=["dqn", "ppo"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.7, 0.8, 0.9])
    parser.add_argument("--timesteps", type=int, default=2000, help="each agent's budget (default: 2000)")
    parser.add_argument("--concurrent", type=int, default=2, help="trials at once in the parallel run (default: 2)")
    parser.add_argument("--output", type=Path, help="folder to write sweep_digits.json, .md and the plots into "
                                                    "(default: none, only print)")
    args = parser.parse_args(argv)
    settings = {
        "env_id": "PruneResNet20Digits-v1", "algos": args.algos, "seeds": args.seeds, "sparsities": args.sparsity,
        "timesteps": args.timesteps, "n_envs": 1, "cpus_per_trial": 1,
    }
    runs = {}
    with tempfile.TemporaryDirectory() as scratch:
        for label, concurrent in (("concurrent", args.concurrent), ("sequential", 1)):
            load = os.getloadavg()[0]
            wall, result = run(settings, concurrent, Path(scratch) / label)
            runs[label] = {"max_concurrent": concurrent, "wall_seconds": wall, "load_average_at_start": load,
                           "trials": len(result.trials), "finished": sum(t.status == "finished" for t in result.trials),
                           "trial_seconds": sum(t.record["seconds"] for t in result.trials if t.record),
                           "result": result}
            print(f"{label}: max_concurrent {concurrent}, wall {wall:.0f} s", flush=True)
        same, gap = same_aggregate(runs["concurrent"]["result"], runs["sequential"]["result"])
        table = runs["concurrent"]["result"].table
        if args.output is not None:
            args.output.mkdir(parents=True, exist_ok=True)
            for name in ("accuracy_vs_sparsity.png", "learning_curves.png"):
                shutil.copyfile(Path(scratch) / "concurrent" / name, args.output / f"sweep_digits_{name}")
    speedup = runs["sequential"]["wall_seconds"] / runs["concurrent"]["wall_seconds"]
    command = (f"python benchmarks/bench_sweep_digits.py --algos {' '.join(args.algos)} --seeds "
               f"{' '.join(map(str, args.seeds))} --sparsity {' '.join(map(str, args.sparsity))} "
               f"--timesteps {args.timesteps} --concurrent {args.concurrent}")
    record = {
        "benchmark": "sweep_digits",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "equivalent_cli": (f"prune-gym sweep PruneResNet20Digits-v1 --algo {' '.join(args.algos)} --seeds "
                           f"{' '.join(map(str, args.seeds))} --timesteps {args.timesteps} --n-envs 1 --cpus-per-trial 1 "
                           f"--max-concurrent N"),
        "machine": machine_info(),
        "runs": {label: {k: v for k, v in entry.items() if k != "result"} for label, entry in runs.items()},
        "speedup": speedup,
        "same_aggregate": same,
        "largest_accuracy_difference": gap,
        "table": table,
    }
    info = record["machine"]
    lines = [
        "# A digits sweep on Ray Tune: trials two at a time vs one after another",
        "",
        f"Date {record['date']}; {info['cpu']}, {info['logical_cpus']} logical CPUs, GPU {info['gpu']}; torch "
        f"{info['torch']}, Python {info['python']}. Command: `{command}` (as `{record['equivalent_cli']}`).",
        "",
        "| run | max concurrent trials | trials finished | wall (s) | trials' own time (s) | load avg at start |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, entry in record["runs"].items():
        lines.append(f"| {label} | {entry['max_concurrent']} | {entry['finished']}/{entry['trials']} | "
                     f"{entry['wall_seconds']:.0f} | {entry['trial_seconds']:.0f} | {entry['load_average_at_start']:.1f} |")
    lines += [
        "",
        f"Speed-up of {args.concurrent} trials at once: **{speedup:.2f}x** (wall times include Ray's start and stop). "
        + ("Both runs gave the same aggregate, to the last digit." if same else
           f"The aggregates differ by up to {100 * gap:.2f} accuracy points."),
        "",
        "The concurrent run's table:",
        "",
        "```",
        table,
        "```",
        "",
    ]
    print("\n".join(lines))
    if args.output is not None:
        (args.output / "sweep_digits.json").write_text(json.dumps(record, indent=2) + "\n")
        (args.output / "sweep_digits.md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
