"""Environment steps per second: PruneEnv against a straightforward implementation.

The straightforward implementation is what one would write first: every step deep-copies the
dense model (in its own memory format), magnitude-prunes every layer chosen so far, re-calibrates
BatchNorm on the same train images when the env does, and evaluates the reward split through a
DataLoader. Both play the same action sequences, side by side in one run, and the script checks
that they report the same accuracies, then prints the median steps per second and the ratio.

    python benchmarks/bench_env_steps.py                   # digits + synthetic ResNet-50 (32x32) on CPU
    python benchmarks/bench_env_steps.py --device cuda --resnet50-size 224 --amp both

Prints the table; ``--output DIR`` also writes ``DIR/env_steps_<device>.json`` (the recorded ones:
``--output benchmarks/results``).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from machine import cpu_model  # benchmarks/machine.py, beside this script
from torch.utils.data import DataLoader

import prune_gym  # noqa: F401  (registers the ids)
from prune_gym.calibration import recalibrate_batchnorm
from prune_gym.pruning import find_prunable_layers, magnitude_mask


class StraightforwardEnv:
    """A first-draft pruning env: deepcopy + re-prune + DataLoader evaluation every step (and,
    when the env re-calibrates BatchNorm, a full re-calibration on the same train images)."""

    def __init__(self, model, reward_data, device, batch_size=256, calibration_inputs=None):
        self.dense = model
        self.device = device
        inputs, labels = reward_data
        self.loader = DataLoader(torch.utils.data.TensorDataset(inputs, labels), batch_size=batch_size)
        self.calibration_inputs = calibration_inputs
        self.sparsities: list[float] = []

    def reset(self):
        self.sparsities = []

    def step(self, applied_sparsity: float) -> float:
        self.sparsities.append(applied_sparsity)
        model = copy.deepcopy(self.dense).to(self.device)
        layers = find_prunable_layers(model)
        with torch.no_grad():
            for layer, sparsity in zip(layers, self.sparsities):
                layer.weight.mul_(magnitude_mask(layer.weight, sparsity))
        if self.calibration_inputs is not None:
            recalibrate_batchnorm(model, self.calibration_inputs.to(self.device))
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in self.loader:
                x, y = x.to(self.device), y.to(self.device)
                correct += int((model(x).argmax(1) == y).sum())
                total += len(y)
        return correct / total




def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {torch.get_num_threads()} threads"


def bench(env_id: str, kwargs: dict, episodes: int, device: torch.device, naive: bool) -> dict:
    env = gym.make(env_id, device=str(device), **kwargs).unwrapped
    env.action_space.seed(0)
    dense_model = copy.deepcopy(env.model).cpu()
    reward_data = (
        torch.cat([x for x, _ in env.evaluator.batches]).float().cpu(),
        torch.cat([y for _, y in env.evaluator.batches]).cpu(),
    )
    calibration = torch.cat(env.calibrator.batches).cpu() if env.calibrator is not None else None
    if calibration is not None:
        # The dense statistics, as the env's reset restores them, before the straightforward copy.
        env.reset(seed=0)
        dense_model = copy.deepcopy(env.model).cpu()
    # The first draft keeps the model's own memory format (PruneEnv's channels_last is one of
    # its optimisations, measured here with the rest).
    dense_model = dense_model.to(memory_format=torch.contiguous_format)
    straightforward = StraightforwardEnv(dense_model, reward_data, device, calibration_inputs=calibration) if naive else None
    fast_times, naive_times, reset_times, mismatches = [], [], [], 0
    for episode in range(episodes):
        env.reset(seed=episode)
        actions = [env.action_space.sample() for _ in range(env.num_layers)]
        start = time.perf_counter()
        accuracies = []
        for action in actions:
            _, _, _, _, info = env.step(action)
            accuracies.append(info["reward_accuracy"])
        _sync(device)
        fast_times.append((time.perf_counter() - start) / env.num_layers)
        if straightforward is not None:
            straightforward.reset()
            start = time.perf_counter()
            for applied, accuracy in zip(env.applied, accuracies):
                if straightforward.step(applied) != accuracy:
                    mismatches += 1
            _sync(device)
            naive_times.append((time.perf_counter() - start) / env.num_layers)
    # Resets timed on their own, back to back: right after the straightforward episode's
    # deep copies the allocator's cold pages would be charged to the reset.
    for repeat in range(10):
        env.reset(seed=repeat)
        env.step(env.action_space.sample())
        start = time.perf_counter()
        env.reset(seed=repeat)
        _sync(device)
        reset_times.append(time.perf_counter() - start)
    result = {
        "env": env_id,
        "kwargs": {k: v for k, v in kwargs.items()},
        "layers": env.num_layers,
        "reward_samples": env.evaluator.num_samples,
        "episodes": episodes,
        "steps_per_s": 1.0 / statistics.median(fast_times),
        "episode_s": statistics.median(fast_times) * env.num_layers,
        "reset_ms": 1000 * statistics.median(reset_times),
    }
    if naive_times:
        result["straightforward_steps_per_s"] = 1.0 / statistics.median(naive_times)
        result["speedup"] = statistics.median(naive_times) / statistics.median(fast_times)
        result["accuracy_mismatches"] = mismatches  # AMP on CUDA may differ from the fp32 loop
    return result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--episodes", type=int, default=5, help="episodes per configuration (median reported)")
    parser.add_argument("--resnet50-size", type=int, default=32, help="input side of synthetic ResNet-50")
    parser.add_argument("--resnet50-samples", type=int, default=64, help="reward-split size of synthetic ResNet-50")
    parser.add_argument("--amp", choices=["on", "off", "both"], default="on", help="autocast on CUDA")
    parser.add_argument("--quick", action="store_true", help="one episode each, for a smoke test")
    parser.add_argument("--output", type=Path, default=None,
                        help="folder to write env_steps_<device>.json into (default: none, only print)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    episodes = 1 if args.quick else args.episodes
    amp_settings = {"on": [True], "off": [False], "both": [True, False]}[args.amp] if device.type == "cuda" else [False]
    # Like for like against the straightforward loop: without BatchNorm re-calibration, and with
    # the digits default (re-calibration after every step, in both implementations).
    configs = [
        ("PruneResNet20Digits-v1", {"bn_recalibration_batches": 0}, episodes, True),
        ("PruneResNet20Digits-v1", {}, episodes, True),
        # The same memory format on both sides: what the rest of PruneEnv's design gives, with
        # bit-identical numerics (channels_last changes the order of float sums, which can flip
        # an argmax on a near-tie).
        ("PruneResNet20Digits-v1", {"channels_last": False}, episodes, True),
    ]
    for amp in amp_settings:
        configs.append((
            "PruneResNet50-v1",
            {"synthetic": True, "input_shape": (3, args.resnet50_size, args.resnet50_size),
             "synthetic_samples": args.resnet50_samples, "amp": amp},
            max(1, episodes // 2 if not args.quick else 1),
            True,
        ))
    rows = []
    for env_id, kwargs, count, naive in configs:
        print(f"{env_id} {kwargs} ...", file=sys.stderr, flush=True)
        rows.append(bench(env_id, kwargs, count, device, naive=naive))
    record = {
        "date": date.today().isoformat(),
        "machine": machine(device),
        "device": str(device),
        "torch": torch.__version__,
        "command": "python benchmarks/bench_env_steps.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "results": rows,
    }
    output = args.output
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        (output / f"env_steps_{device.type}.json").write_text(json.dumps(record, indent=2, default=str))
    print(f"{record['machine']} | torch {record['torch']} | {record['date']}")
    print("| env | setting | layers | reward samples | PruneEnv steps/s | straightforward steps/s | speed-up | episode (s) | reset (ms) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        setting = ", ".join(f"{k}={v}" for k, v in row["kwargs"].items()) or "defaults (BN re-calibration on)"
        print(
            f"| {row['env']} | {setting} | {row['layers']} | {row['reward_samples']} | {row['steps_per_s']:.1f} | "
            f"{row.get('straightforward_steps_per_s', float('nan')):.1f} | {row.get('speedup', float('nan')):.1f}x | "
            f"{row['episode_s']:.2f} | {row['reset_ms']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
