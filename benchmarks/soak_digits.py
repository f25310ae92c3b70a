"""Soak test: many random episodes on the digits env, checking errors and memory growth.

    python benchmarks/soak_digits.py --episodes 1000

Records the process's resident memory (RSS) and Python heap (tracemalloc) after a warm-up and at
the end, and prints them (``--output DIR`` also writes ``DIR/soak_digits.json``; the recorded one:
``--output benchmarks/results``). Exits non-zero if an episode fails, an episode misses the
target, or memory grows by more than --max-growth-mb.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import tracemalloc
from datetime import date
from pathlib import Path

import gymnasium as gym
from machine import machine_info  # benchmarks/machine.py, beside this script

import prune_gym  # noqa: F401  (registers the ids)


def rss_mb() -> float:
    """Current resident set size in MiB (from /proc; falls back to the peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--max-growth-mb", type=float, default=20.0)
    parser.add_argument("--output", type=Path, default=None,
                        help="folder to write soak_digits.json into (default: none, only print)")
    args = parser.parse_args(argv)
    env = gym.make("PruneResNet20Digits-v1")
    unwrapped = env.unwrapped
    env.action_space.seed(0)
    total = unwrapped.state.total
    misses = 0
    start = time.perf_counter()
    for episode in range(args.warmup + args.episodes):
        if episode == args.warmup:
            tracemalloc.start()
            heap_start, rss_start = tracemalloc.get_traced_memory()[0], rss_mb()
            start = time.perf_counter()
        env.reset(seed=episode)
        done = False
        while not done:
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            done = terminated or truncated
        if abs(unwrapped.state.pruned_count() - round(0.8 * total)) > unwrapped.num_layers:
            misses += 1
    elapsed = time.perf_counter() - start
    heap_growth = (tracemalloc.get_traced_memory()[0] - heap_start) / 2**20
    rss_growth = rss_mb() - rss_start
    record = {
        "date": date.today().isoformat(),
        "command": "python benchmarks/soak_digits.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(),
        "episodes": args.episodes,
        "steps": args.episodes * unwrapped.num_layers,
        "seconds": round(elapsed, 1),
        "episodes_missing_target": misses,
        "python_heap_growth_mb": round(heap_growth, 3),
        "rss_start_mb": round(rss_start, 1),
        "rss_growth_mb": round(rss_growth, 1),
    }
    if args.output is not None:
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "soak_digits.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))
    ok = misses == 0 and rss_growth <= args.max_growth_mb and heap_growth <= args.max_growth_mb
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
