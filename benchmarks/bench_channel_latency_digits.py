"""Latency of the recorded channel-pruned digits networks, dense and pruned side by side: PyTorch
eager as exported, PyTorch with BatchNorm folded into the convolutions (as a deployment does;
``prune_gym.channel_export.fold_batchnorm``), each of these with both networks in the
channels_last memory format (the envs evaluate in it; on this CPU it speeds the dense network up
more than the pruned one), and onnxruntime (which folds on its own).

Takes the recipes that ``bench_compare_channels_digits.py`` recorded (the agent's best found and
the search's, at 50% of the FLOPs removed with the default env and with ``channel_multiple=8``,
and at 30% of the predicted latency removed with ``budget="latency"``), replays each through the
env, removes the channels (Torch-Pruning) and measures: rounds alternate dense and pruned, each
round the median of repeated forward passes, one thread; the speed-up is the median over rounds
of dense / pruned, with its range. Run from the repository root::

    .venv/bin/python benchmarks/bench_channel_latency_digits.py --output benchmarks/results

It writes ``channel_latency_digits.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import tempfile
from pathlib import Path

import gymnasium as gym
import onnxruntime
import torch
from bench_compare_channels_digits import alternate  # beside this script
from machine import machine_info, write_record  # benchmarks/machine.py, beside this script

import prune_gym  # noqa: F401  (registers the envs)
from prune_gym.channel_export import OnnxRunner, export_onnx, fold_batchnorm, slim_model

ENV_ID = "PruneResNet20DigitsChannels-v1"
RESULTS = Path(__file__).resolve().parent / "results"
#: (label, recipe file under the results folder)
RECIPES = (
    ("50% FLOPs, DQN best found", "compare_channels_digits_recipes/dqn-best-found-0.50.json"),
    ("50% FLOPs, local search", "compare_channels_digits_recipes/local-search-0.50.json"),
    ("50% FLOPs, m=8, DQN best found", "compare_channels_digits_m8_recipes/dqn-best-found-0.50.json"),
    ("50% FLOPs, m=8, local search", "compare_channels_digits_m8_recipes/local-search-0.50.json"),
    ("30% latency, DQN best found", "compare_channels_digits_latency_recipes/dqn-best-found-0.30.json"),
    ("30% latency, local search", "compare_channels_digits_latency_recipes/local-search-0.30.json"),
)
RUNTIMES = ("pytorch", "pytorch, BatchNorm folded", "pytorch, channels_last", "pytorch, BatchNorm folded, channels_last",
            "onnxruntime")
#: The table's column headings, by runtime.
HEADINGS = ("pytorch", "pytorch, BN folded", "pytorch, channels_last", "pytorch, BN folded, channels_last", "onnxruntime")


def runners(dense: torch.nn.Module, slim: torch.nn.Module, folder: Path) -> dict[str, dict[str, object]]:
    """For each runtime, the dense and the pruned network as a callable on a numpy batch."""
    example = torch.zeros(1, 1, 8, 8)
    made: dict[str, dict[str, object]] = {runtime: {} for runtime in RUNTIMES}
    for name, model in (("dense", dense), ("pruned", slim)):
        folded = fold_batchnorm(model)
        onnx = OnnxRunner(export_onnx(model, example, folder / f"{name}.onnx"))

        for runtime, network, channels_last in (
                ("pytorch", model, False), ("pytorch, BatchNorm folded", folded, False),
                ("pytorch, channels_last", model, True), ("pytorch, BatchNorm folded, channels_last", folded, True)):
            if channels_last:  # both networks in the format a deployer may choose (the envs evaluate in it)
                network = copy.deepcopy(network).to(memory_format=torch.channels_last)

            def run(x, network=network, channels_last=channels_last):
                inputs = torch.from_numpy(x)
                with torch.inference_mode():
                    network(inputs.contiguous(memory_format=torch.channels_last) if channels_last else inputs)

            made[runtime][name] = run
        # The batch is numpy already: the session is called directly, as OnnxRunner calls it.
        made["onnxruntime"][name] = lambda x, onnx=onnx: onnx.session.run(None, {onnx.input_name: x})
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds (default: 7)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--recipes", type=Path, default=RESULTS, help="the folder holding the recorded recipe folders")
    parser.add_argument("--output", type=Path, help="write channel_latency_digits.json and .md here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    env = gym.make(ENV_ID).unwrapped
    dense = env.dense_architecture().eval()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for label, relative in RECIPES:
            path = args.recipes / relative
            if not path.is_file():
                print(f"skipped {label}: no {path} (run bench_compare_channels_digits.py first)")
                continue
            shares = json.loads(path.read_text())["layers"]
            counts = [round(shares[name] * channels) for name, channels in zip(env.group_names(), env.channels, strict=True)]
            info = env.replay(counts)
            slim = slim_model(env).eval()
            made = runners(dense, slim, Path(folder))
            for batch in args.batches:
                x = torch.randn(batch, 1, 8, 8).numpy()
                for runtime in RUNTIMES:
                    runs = {name: lambda run=run, x=x: run(x) for name, run in made[runtime].items()}
                    rows.append({"recipe": label, "file": relative, "flops_reduction": info["flops_reduction"],
                                 "test_accuracy": info["test_accuracy"], "runtime": runtime, "batch": batch,
                                 **alternate(runs, batch, args.rounds)})
    record = {"benchmark": "channel_latency_digits",
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": "python benchmarks/bench_channel_latency_digits.py", "machine": machine_info(),
              "rounds": args.rounds, "results": rows}
    lines = [
        "# Recorded channel-pruned digits networks: dense vs pruned latency in PyTorch and onnxruntime",
        "",
        f"Date {record['date']}; {record['machine']['cpu']}, 1 thread; torch {record['machine']['torch']}, "
        f"onnxruntime {onnxruntime.__version__}. {args.rounds} alternating rounds; speed-up = median over rounds of "
        "dense / pruned (range).",
        "",
        "| recipe | FLOPs removed | test acc | batch | " + " | ".join(HEADINGS) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(HEADINGS),
    ]
    for label in dict.fromkeys(row["recipe"] for row in rows):
        for batch in args.batches:
            cells = {row["runtime"]: row for row in rows if row["recipe"] == label and row["batch"] == batch}
            first = next(iter(cells.values()))
            lines.append(f"| {label} | {100 * first['flops_reduction']:.1f}% | {100 * first['test_accuracy']:.1f}% | "
                         f"{batch} | " + " | ".join(f"{cells[r]['speedup']:.2f}x ({cells[r]['speedup_min']:.2f}-"
                                                    f"{cells[r]['speedup_max']:.2f})" for r in RUNTIMES) + " |")
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    write_record(args.output, "channel_latency_digits", record, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
