"""Benchmark: which torchvision classifiers the channel env handles.

For every classification model of ``torchvision.models`` (random weights; BatchNorm statistics,
zero-initialised classifiers and layer scales randomised so that masks are tested against
non-trivial normalisation and change the outputs: ``randomise``), in its own process with a time
limit:

1. build ``ChannelPruneEnv(model=..., reward_data=...)`` on random inputs of the model's size
   (64x64, or 224x224 for the models that need it): Torch-Pruning's dependency graph, the channel
   groups, and the construction-time check that masks give the outputs of the network with the
   channels removed;
2. play one episode of random actions at 30% of the FLOPs removed;
3. export the physically smaller network (``channel_export.slim_model``) and compare its outputs
   with the masked network's on fresh inputs.

A model passes when all three work, the smaller network has fewer parameters, the episode
changed the outputs (by more than 1e-3 of the largest, relative), and the masked and smaller
networks' outputs agree (relative difference < 1e-2, the env's own check). Groups whose channels a
mask cannot remove exactly (a LayerNorm across them, a position embedding) keep their channels, as
the env does; the ``groups`` column counts the groups the episode prunes. Prints the table; ``--output DIR`` writes
``DIR/channel_conformance.json`` and ``.md`` (recorded: ``--output benchmarks/results``).

Usage::

    python benchmarks/bench_channel_conformance.py --output benchmarks/results
    python benchmarks/bench_channel_conformance.py --models resnet18 mobilenet_v2
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import sys
import time
import traceback
from pathlib import Path

import torch
import torchvision
from machine import machine_info, write_record  # benchmarks/machine.py, beside this script

#: Models whose architecture fixes the input size (vision transformers, Swin, MaxViT).
NEEDS_224 = ("vit_", "swin_", "maxvit")
#: Largest output difference, relative to the largest output, of masked and smaller network (the
#: env's own construction-time check uses the same bound: rounding in deep random networks).
TOLERANCE = 1e-2
#: Smallest output change, relative to the largest output, that the random episode must make
#: (a smaller network that matches an unchanged one proves nothing).
MIN_CHANGE = 1e-3
#: Inception-v3 needs at least 75x75 inputs; 64x64 is too small for it alone.
INPUT_SIZES = {"inception_v3": 96}


def input_size(name: str) -> int:
    return 224 if name.startswith(NEEDS_224) else INPUT_SIZES.get(name, 64)


def randomise(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Weights that make the comparison say something: random BatchNorm statistics (fresh ones are
    the identity), random values for a classifier initialised to zeros (ViT's head) and for layer
    scales initialised to 1e-6 (ConvNeXt's: the blocks would add nothing to the outputs)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                size = module.num_features
                module.running_mean.copy_(torch.rand(size, generator=generator) * 0.2 - 0.1)
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            if isinstance(module, torch.nn.Linear | torch.nn.Conv2d) and not module.weight.any():
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.02)
        for name, param in model.named_parameters():
            if name.endswith("layer_scale"):
                param.copy_(torch.rand(param.shape, generator=generator) + 0.5)


def relative_difference(reference: torch.Tensor, other: torch.Tensor) -> float:
    return float((reference - other).abs().max() / reference.abs().max().clamp_min(1e-12))


def check_model(name: str) -> dict:
    """Build the env, play an episode, export and compare (in a worker process)."""
    import numpy as np

    from prune_gym.channel_export import slim_model
    from prune_gym.envs.channel_env import ChannelPruneEnv

    torch.set_num_threads(1)
    torch.manual_seed(0)
    started = time.perf_counter()
    record: dict = {"model": name, "input": input_size(name)}
    try:
        kwargs = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
        model = torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs).eval()
        generator = torch.Generator().manual_seed(0)
        randomise(model, generator)
        size = input_size(name)
        inputs = torch.randn(2, 3, size, size, generator=generator)
        labels = torch.tensor([0, 1])
        record["params"] = sum(p.numel() for p in model.parameters())
        env = ChannelPruneEnv(model=model, reward_data=(inputs, labels), target_sparsity=0.3, device="cpu",
                              action_type="continuous", channels_last=False, evaluate_test=False)
        record["groups"] = env.num_groups
        env.reset(seed=0)
        probe = torch.randn(2, 3, size, size, generator=generator)
        with torch.no_grad():
            dense = env.model(probe).float()
        rng = np.random.default_rng(0)
        done, info = False, {}
        while not done:
            _, _, done, _, info = env.step(rng.uniform(-1, 1, size=(1,)).astype(np.float32))
        record["flops_reduction"] = info["flops_reduction"]
        slim = slim_model(env)
        with torch.no_grad():
            masked, smaller = env.model(probe).float(), slim(probe).float()
        difference = relative_difference(masked, smaller)
        record["slim_params"] = sum(p.numel() for p in slim.parameters())
        record["difference"] = difference
        # Pruning must change the outputs, or the comparison says nothing.
        record["pruning_changed"] = relative_difference(dense, masked)
        record["passed"] = (difference < TOLERANCE and record["slim_params"] < record["params"]
                            and record["pruning_changed"] > MIN_CHANGE)
        if not record["passed"]:
            record["error"] = (f"outputs differ by {difference:.2g}" if difference >= TOLERANCE
                               else "no parameter removed" if record["slim_params"] >= record["params"]
                               else f"pruning changed the outputs by only {record['pruning_changed']:.1g}")
    except Exception as error:  # noqa: BLE001 - every failure is a result here
        record["passed"] = False
        record["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
        record["traceback_tail"] = traceback.format_exc().splitlines()[-3:]
    record["seconds"] = time.perf_counter() - started
    return record


def _worker(name: str, queue) -> None:
    queue.put(check_model(name))


def run(name: str, timeout: float) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_worker, args=(name, queue))
    process.start()
    process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join()
        return {"model": name, "passed": False, "error": f"over the time limit ({timeout:.0f} s) on this machine",
                "timed_out": True, "seconds": timeout}
    if process.exitcode != 0 and queue.empty():
        return {"model": name, "passed": False, "error": f"the worker died (exit code {process.exitcode}; memory?)"}
    return queue.get()


def to_markdown(record: dict) -> str:
    rows = record["results"]
    passed = sum(row["passed"] for row in rows)
    timed_out = sum(bool(row.get("timed_out")) for row in rows)
    lines = [
        f"# Channel env conformance over torchvision's classifiers ({record['date']})",
        "",
        f"Machine: {record['machine']['cpu']}, {record['machine']['torch_threads']} torch thread per model, "
        f"torch {record['machine']['torch']}, torchvision {torchvision.__version__}, torch-pruning "
        f"{record['torch_pruning']}. Command: `{record['command']}`.",
        "",
        f"**{passed} of {len(rows)} models pass** (build the channel env, an episode of random actions at 30% FLOPs "
        f"removed that changes the outputs, a physically smaller network whose outputs match the masked one's; groups "
        "a mask cannot remove keep their channels, as in the env: `groups` counts the pruned ones)"
        + (f"; {timed_out} did not finish within the {record['timeout']:.0f} s limit on this 2-core CPU" if timed_out else "")
        + ".",
        "",
        "| model | params | input | groups | FLOPs removed | params after | change by pruning | max rel. diff | s | result |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        def cell(key, fmt, row=row):
            return fmt.format(row[key]) if key in row and row[key] is not None else "-"
        lines.append(
            f"| {row['model']} | {cell('params', '{:,}')} | {cell('input', '{}')} | {cell('groups', '{}')} | "
            f"{cell('flops_reduction', '{:.3f}')} | {cell('slim_params', '{:,}')} | {cell('pruning_changed', '{:.1e}')} | "
            f"{cell('difference', '{:.1e}')} | "
            f"{cell('seconds', '{:.0f}')} | {'ok' if row['passed'] else row.get('error', 'failed').replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", help="model names (default: every torchvision classifier)")
    parser.add_argument("--timeout", type=float, default=150.0,
                        help="seconds per model (default: 150; the transformers' graphs take longer on a 2-core CPU)")
    parser.add_argument("--output", type=Path, help="write channel_conformance.json and .md here")
    args = parser.parse_args()
    import torch_pruning

    names = args.models or sorted(torchvision.models.list_models(module=torchvision.models))
    results = []
    for index, name in enumerate(names, 1):
        row = run(name, args.timeout)
        results.append(row)
        print(f"[{index}/{len(names)}] {name}: {'ok' if row['passed'] else row.get('error')} "
              f"({row.get('seconds', 0):.0f} s)", flush=True)
    record = {
        "date": datetime.date.today().isoformat(),
        "command": "python benchmarks/bench_channel_conformance.py " + " ".join(sys.argv[1:]),
        "machine": {**machine_info(), "torch_threads": 1},
        "torch_pruning": torch_pruning.__version__,
        "timeout": args.timeout,
        "results": results,
    }
    markdown = to_markdown(record)
    print(markdown)
    write_record(args.output, "channel_conformance", record, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
