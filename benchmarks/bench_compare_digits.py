"""Time and outcome of the README's main command, ``prune-gym compare PruneResNet20Digits-v0``.

Runs the comparison with the command's defaults (DQN with the shipped hyperparameters, trained
across the sparsities 0.5, 0.7, 0.8 and 0.9, one torch thread) and records the wall-clock time,
the CPU time of the main process (the agent's parallel env workers not counted), the load average before and after (the machine may be shared), the machine, and
the printed table, as JSON and Markdown.

Run from the repository root::

    .venv/bin/python benchmarks/bench_compare_digits.py --output benchmarks/results/compare_digits

Pass ``--timesteps`` or ``--sparsity`` to time other budgets; the rest of the arguments match
``prune-gym compare``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import torch
from machine import machine_info  # benchmarks/machine.py, beside this script

from prune_gym.agents.compare import DEFAULT_SPARSITIES, compare


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="PruneResNet20Digits-v0")
    parser.add_argument("--sparsity", type=float, nargs="+", default=list(DEFAULT_SPARSITIES))
    parser.add_argument("--timesteps", type=int, help="agent budget (default: the shipped n_timesteps)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the command's default: 1)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="write <output>.json and <output>.md")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    started, cpu_started = time.perf_counter(), cpu_seconds()
    with tempfile.TemporaryDirectory() as folder:
        result = compare(
            args.env, args.sparsity, "dqn", timesteps=args.timesteps, output_dir=folder,
            env_kwargs={"device": args.device}, seed=args.seed, progress_bar=False,
        )
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    record = {
        "benchmark": "compare_digits",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": f"prune-gym compare {args.env} --sparsity {' '.join(map(str, args.sparsity))}"
        + (f" --timesteps {args.timesteps}" if args.timesteps else "") + f" --threads {args.threads}",
        "machine": machine_info(),
        "load_average_1_5_15_min": {"start": load_start, "end": os.getloadavg()},
        "wall_seconds": wall,
        # The main process only: the agent's parallel env workers are not counted.
        "cpu_seconds_main_process": cpu,
        "agent_train_seconds": result.metadata["agent"]["train_seconds"],
        "agent_timesteps": result.metadata["agent"]["timesteps"],
        "table": result.table,
        "results": json.loads(json.dumps([vars(row) for row in result.results])),
    }
    print(result.table)
    print(f"\nwall {wall:.0f} s, CPU (main process) {cpu:.0f} s, load average {load_start[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
        info = record["machine"]
        markdown = [
            f"# `{record['command']}`",
            "",
            f"Date {record['date']}; {info['cpu']}, {info['logical_cpus']} logical CPUs, "
            f"{info['torch_threads']} torch thread(s), GPU {info['gpu']}; torch {info['torch']}, "
            f"Python {info['python']}.",
            f"Wall {wall:.0f} s (agent training {record['agent_train_seconds']:.0f} s for "
            f"{record['agent_timesteps']:,} steps), CPU of the main process {cpu:.0f} s; load average "
            f"{load_start[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end.",
            "",
            "```",
            result.table,
            "```",
            "",
        ]
        args.output.with_suffix(".md").write_text("\n".join(markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
