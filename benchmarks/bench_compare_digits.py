"""Time and outcome of the README's main command, ``prune-gym compare PruneResNet20Digits-v1``.

Runs the comparison with the command's defaults (DQN with the shipped hyperparameters, trained
across the sparsities 0.5, 0.7, 0.8, 0.9 and 0.95, one torch thread) and records the wall-clock time,
the CPU time of the main process (the agent's parallel env workers not counted), the load average before and after (the machine may be shared), the machine, and
the printed table, as JSON and Markdown.

Run from the repository root::

    .venv/bin/python benchmarks/bench_compare_digits.py --empty-cache --output benchmarks/results

``--empty-cache`` times it as on a fresh machine (the digits model is trained first, in a
temporary cache). In the folder ``--output`` it writes ``compare_digits.json`` and ``.md`` and
keeps the command's plots (``compare_digits_accuracy_vs_sparsity.png``,
``compare_digits_layer_sparsity.png``) and recipes (``compare_digits_recipes/``), which the
README shows.

Pass ``--timesteps`` or ``--sparsity`` to time other budgets; the rest of the arguments match
``prune-gym compare``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import torch
from machine import machine_info  # benchmarks/machine.py, beside this script

from prune_gym.workflows.compare import DEFAULT_SPARSITIES, compare


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="PruneResNet20Digits-v1")
    parser.add_argument("--sparsity", type=float, nargs="+", default=list(DEFAULT_SPARSITIES))
    parser.add_argument("--timesteps", type=int, help="agent budget (default: the shipped n_timesteps)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the command's default: 1)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path,
                        help="folder to write compare_digits.json, .md, the plots and the recipes into "
                             "(default: none, only print)")
    parser.add_argument("--empty-cache", action="store_true", help="time it from an empty model cache (a fresh machine)")
    args = parser.parse_args(argv)
    cache = tempfile.TemporaryDirectory() if args.empty_cache else None
    if cache is not None:
        os.environ["PRUNE_GYM_CACHE"] = cache.name

    torch.set_num_threads(args.threads)
    stem = args.output / "compare_digits" if args.output is not None else None
    load_start = os.getloadavg()
    started, cpu_started = time.perf_counter(), cpu_seconds()
    with tempfile.TemporaryDirectory() as folder:
        result = compare(
            args.env, args.sparsity, "dqn", timesteps=args.timesteps, output_dir=Path(folder) / "compare",
            env_kwargs={"device": args.device}, seed=args.seed,
        )
        wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
        if stem is not None:
            stem.parent.mkdir(parents=True, exist_ok=True)
            for name in ("accuracy_vs_sparsity.png", "layer_sparsity.png"):
                shutil.copyfile(result.output_dir / name, stem.with_name(f"{stem.name}_{name}"))
            recipes = stem.with_name(f"{stem.name}_recipes")
            shutil.rmtree(recipes, ignore_errors=True)
            shutil.copytree(result.output_dir / "recipes", recipes)
    record = {
        "benchmark": "compare_digits",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": f"prune-gym compare {args.env} --sparsity {' '.join(map(str, args.sparsity))}"
        + (f" --timesteps {args.timesteps}" if args.timesteps else "") + f" --threads {args.threads}",
        "model_cache": "empty (the digits model trained first)" if args.empty_cache else "as found",
        "agent_episodes": result.metadata["agent"]["episodes"],
        "machine": machine_info(),
        "load_average_1_5_15_min": {"start": load_start, "end": os.getloadavg()},
        "wall_seconds": wall,
        # The main process only: the agent's parallel env workers are not counted.
        "cpu_seconds_main_process": cpu,
        "agent_train_seconds": result.metadata["agent"]["train_seconds"],
        "agent_timesteps": result.metadata["agent"]["timesteps"],
        "table": result.table,
        "results": [row.to_json() for row in result.results],
    }
    print(result.table)
    print(f"\nwall {wall:.0f} s, CPU (main process) {cpu:.0f} s, load average {load_start[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    if stem is not None:
        stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
        info = record["machine"]
        markdown = [
            f"# `{record['command']}`",
            "",
            f"Date {record['date']}; {info['cpu']}, {info['logical_cpus']} logical CPUs, "
            f"{info['torch_threads']} torch thread(s), GPU {info['gpu']}; torch {info['torch']}, "
            f"Python {info['python']}.",
            f"Wall {wall:.0f} s, model cache {record['model_cache']} (agent training "
            f"{record['agent_train_seconds']:.0f} s for {record['agent_timesteps']:,} steps, "
            f"{record['agent_episodes']:,} episodes), CPU of the main process {cpu:.0f} s; load average "
            f"{load_start[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end.",
            "",
            "```",
            result.table,
            "```",
            "",
        ]
        stem.with_suffix(".md").write_text("\n".join(markdown))
    if cache is not None:
        cache.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
