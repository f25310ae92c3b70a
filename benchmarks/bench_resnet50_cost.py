"""Benchmark: what one ResNet-50 sweep trial costs, from measured parts.

The README's ResNet-50 sweep (``PruneResNet50-v1``, 20,000 agent steps per trial, a reward split
of 3,000 images at 224x224, 54 prunable layers) costs what its parts cost. Measured here:

- ``step``: one env step (prune a layer, score the reward split with the activation cache,
  AMP and channels_last on CUDA: the env's defaults) on random weights and random images of
  the real size and count (``synthetic=True``; the speed of a step does not depend on the
  weights' values), median over episodes of random actions after one warm-up episode;
- ``forward``: images per second of a full evaluation pass of the dense model (no cache), the
  GPU side of scoring the 50,000-image validation split;
- ``decode``: images per second one process decodes and transforms (the task's evaluation
  transform: resize 256, center crop 224, normalise) from JPEG files this script writes
  (500x375, quality 90, smooth random content, about 40 KB; ImageNet's average file is
  larger, so real decoding is slower than this).

With ``--compile`` the step and the full pass are measured again with the evaluation compiled
(``compile=True``: each stage through ``torch.compile``), beside the eager figures, with the
first compiled pass's seconds (the compilation).

From these it projects one agent trial: steps x step time, and what scoring the validation
split at the end of every training episode would add (what ``evaluate_test=True``, the env's
default, does; the agents' training envs use ``None``, which skips it for ImageNet).

Usage::

    python benchmarks/bench_resnet50_cost.py --device cuda --compile --output benchmarks/results
    python benchmarks/bench_resnet50_cost.py --device cpu --size 32 --samples 64 --episodes 2   # a smoke test
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from machine import machine_info, write_record  # benchmarks/machine.py, beside this script

import prune_gym  # noqa: F401  (registers the envs)
from prune_gym.evaluation import Evaluator
from prune_gym.tasks import get_task
from prune_gym.tasks.imagenet import imagenet_transform

AGENT_STEPS = 20_000  # the agents' hyperparameter budget (n_timesteps) in the README's sweep
VALIDATION_IMAGES = 50_000


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_steps(device: torch.device, size: int, samples: int, episodes: int, compile: bool = False) -> dict:
    env = gym.make("PruneResNet50-v1", synthetic=True, input_shape=(3, size, size), synthetic_samples=samples,
                   device=str(device), evaluate_test=False, compile=compile).unwrapped
    env.action_space.seed(0)
    step_times = []
    for episode in range(episodes + 1):  # the first is a warm-up (kernel selection, compilation, allocations)
        env.reset(seed=episode)
        actions = [env.action_space.sample() for _ in range(env.num_layers)]
        sync(device)
        start = time.perf_counter()
        for action in actions:
            env.step(action)
        sync(device)
        if episode:
            step_times.append((time.perf_counter() - start) / env.num_layers)
    layers = env.num_layers
    env.close()
    step_s = statistics.median(step_times)
    return {"layers": layers, "reward_samples": samples, "step_s": step_s, "episode_s": step_s * layers,
            "step_runs_s": step_times}


def measure_forward(device: torch.device, size: int, samples: int, repeats: int = 3, compile: bool = False) -> dict:
    """A full pass's images/s, and the first pass's seconds (the compilation, when compiled)."""
    task = get_task("resnet50-imagenet")
    model = task.synthetic_model().to(device)
    data = task.synthetic_splits((3, size, size), sizes=(samples, 1, 1)).train
    evaluator = Evaluator(model, data, device, cache_activations=False, compile=compile)
    sync(device)
    start = time.perf_counter()
    evaluator.accuracy()  # warm-up
    sync(device)
    first_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        evaluator.accuracy()
        sync(device)
        times.append(time.perf_counter() - start)
    return {"images_per_s": samples / statistics.median(times), "first_pass_s": first_s}


def measure_decode(images: int = 96) -> float:
    from PIL import Image
    from torchvision.datasets import ImageFolder

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="prune-gym-jpegs-") as folder:
        root = Path(folder)
        for index in range(images):
            klass = root / f"n{index % 2:08d}"
            klass.mkdir(exist_ok=True)
            small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
            Image.fromarray(small).resize((500, 375), Image.BICUBIC).save(klass / f"{index}.JPEG", quality=90)
        dataset = ImageFolder(str(root), transform=imagenet_transform(224))
        for index in range(len(dataset)):  # warm-up: file cache, first decodes
            dataset[index]
        start = time.perf_counter()
        for index in range(len(dataset)):
            dataset[index]
        return len(dataset) / (time.perf_counter() - start)


def markdown(record: dict) -> str:
    """The record as the recorded ``.md`` (``python -c`` on a JSON re-renders it)."""
    machine = record["machine"]
    lines = [
        f"Synthetic ResNet-50 ({record['layers']} layers) on {record['device']} ({machine['gpu'] or machine['cpu']}), "
        f"{record['input_size']}x{record['input_size']}, reward split {record['reward_samples']:,} images; "
        f"torch {machine['torch']}, {machine['torch_threads']} torch thread(s); {record['date']}. "
        f"Command: `{record['command']}`",
        "",
        "| measured | value |",
        "|---|---:|",
        f"| env step (prune + score the reward split; AMP, channels_last, activation cache on CUDA) "
        f"| {1e3 * record['step_s']:.1f} ms |",
        f"| episode ({record['layers']} steps) | {record['episode_s']:.2f} s |",
        f"| full evaluation pass, dense model | {record['forward_images_per_s']:,.0f} images/s |",
        *_compiled_rows(record),
        f"| JPEG decode + evaluation transform, one process | {record['decode_images_per_s_per_process']:,.0f} images/s |",
        "",
        f"Projected for one agent trial of {record['agent_steps']:,} steps ({record['agent_episodes']:.0f} episodes): "
        f"reward-split steps **{record['trial_reward_steps_h']:.2f} h**. Scoring the {VALIDATION_IMAGES:,} validation "
        f"images at the end of every training episode (one loader process) would add "
        f"{record['validation_pass_s']:.0f} s per episode, **{record['validation_every_episode_h']:.1f} h** per trial; "
        f"the agents' training envs skip it (`evaluate_test=None`: training never reads the test split) and a "
        f"report scores it once per method and target.",
    ]
    return "\n".join(lines)


def _compiled_rows(record: dict) -> list[str]:
    """The compiled evaluation beside the eager one (records made with ``--compile``)."""
    compiled = record.get("compiled")
    if not compiled:
        return []
    return [
        f"| env step, compiled stages (`compile=True`) | {1e3 * compiled['step_s']:.1f} ms "
        f"({record['step_s'] / compiled['step_s']:.2f}x eager) |",
        f"| full evaluation pass, compiled | {compiled['forward_images_per_s']:,.0f} images/s "
        f"({compiled['forward_images_per_s'] / record['forward_images_per_s']:.2f}x eager) |",
        f"| first compiled pass (the compilation) | {compiled['first_pass_s']:.1f} s |",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=224, help="input side (224: ImageNet's)")
    parser.add_argument("--samples", type=int, default=3000, help="reward-split size (3,000: the ImageNet tasks')")
    parser.add_argument("--episodes", type=int, default=3, help="timed episodes after the warm-up (median step)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--output", type=Path, default=None, help="folder for resnet50_cost_<device>.json and .md")
    parser.add_argument("--compile", action="store_true",
                        help="also measure the compiled evaluation (compile=True) beside the eager one")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda given, but no GPU is visible")

    print(f"env steps: synthetic ResNet-50, {args.samples} images at {args.size}x{args.size}, {device} ...", flush=True)
    steps = measure_steps(device, args.size, args.samples, args.episodes)
    print("full forward passes ...", flush=True)
    forward_record = measure_forward(device, args.size, args.samples)
    forward = forward_record["images_per_s"]
    compiled = None
    if args.compile:
        print("the same, compiled ...", flush=True)
        compiled_steps = measure_steps(device, args.size, args.samples, args.episodes, compile=True)
        compiled_forward = measure_forward(device, args.size, args.samples, compile=True)
        compiled = {"step_s": compiled_steps["step_s"], "step_runs_s": compiled_steps["step_runs_s"],
                    "forward_images_per_s": compiled_forward["images_per_s"],
                    "first_pass_s": compiled_forward["first_pass_s"]}
    print("JPEG decoding ...", flush=True)
    decode = measure_decode()
    episodes = AGENT_STEPS / steps["layers"]
    trial_steps_h = AGENT_STEPS * steps["step_s"] / 3600
    validation_gpu_s = VALIDATION_IMAGES / forward
    validation_decode_s = VALIDATION_IMAGES / decode  # one process, as the env's loader (num_workers=0)
    validation_s = validation_gpu_s + validation_decode_s  # sequential in that loader
    record = {
        "benchmark": "resnet50_cost",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/bench_resnet50_cost.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": str(device),
        "machine": machine_info(),
        "input_size": args.size,
        **steps,
        "forward_images_per_s": forward,
        "compiled": compiled,
        "decode_images_per_s_per_process": decode,
        "agent_steps": AGENT_STEPS,
        "agent_episodes": episodes,
        "trial_reward_steps_h": trial_steps_h,
        "validation_pass_s": validation_s,
        "validation_every_episode_h": episodes * validation_s / 3600,
    }
    table = markdown(record)
    print(table)
    write_record(args.output, f"resnet50_cost_{device.type}", record, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
