"""The channel env's main command, ``prune-gym compare PruneResNet20DigitsChannels-v1``, and the
export of its best recipe at 50% of the FLOPs, with the latency of the smaller network measured
beside the dense one's.

1. Runs the comparison with the command's defaults (DQN with the shipped hyperparameters across
   the FLOPs targets 0.3, 0.5 and 0.7, the search at equal cost, every channel rule, one torch
   thread) and records the wall-clock time and the table.
2. Exports the recipe that the comparison names to export at 0.5 (``verdict.fastest_within_noise``:
   the fastest of the rows that the most accurate on the reward split does not beat there by more
   than noise; the test split only reports) with
   ``prune-gym export``'s code: the smaller network's checkpoint and ONNX file, its test accuracy
   (checked against the table's).
3. Measures the latency of the dense and the smaller network side by side: rounds alternate the
   two (each round the median of repeated forward passes), on one CPU thread, in PyTorch and in
   onnxruntime, at batch 1 and 256 (PyTorch also with BatchNorm folded into the convolutions, as a
   deployment does); the speed-up is the median over rounds of the ratio.

Run from the repository root::

    .venv/bin/python benchmarks/bench_compare_channels_digits.py --output benchmarks/results

It writes ``compare_channels_digits.json`` and ``.md`` (and keeps the table's recipes in
``compare_channels_digits_recipes/``); ``--channel-multiple 8`` runs the same with the env's
``channel_multiple=8`` into ``compare_channels_digits_m8.*``; ``--budget latency`` with the env's
latency budget (targets = shares of the latency that the per-layer latency table, measured first
on this machine, predicts removed) into ``compare_channels_digits_latency.*``, with the table's
prediction for the exported network beside the measured speed-up; ``--finetune-epochs N`` fine-tunes
every row's smaller network for N epochs (the table's fine-tuned column) and exports the pick
fine-tuned the same way (checkpoint and ONNX; the record's name gets _ft<N>).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import gymnasium as gym
import torch
from machine import machine_info, write_record  # benchmarks/machine.py, beside this script

from prune_gym.channel_export import (
    BUDGET_LABELS,
    OnnxRunner,
    export_channel_task,
    export_onnx,
    fold_batchnorm,
    load_slim,
)
from prune_gym.episode import target_key
from prune_gym.tasks import get_task
from prune_gym.workflows.compare import compare
from prune_gym.workflows.experiment import DEFAULT_CHANNEL_TARGETS, DEFAULT_LATENCY_TARGETS

ENV_ID = "PruneResNet20DigitsChannels-v1"


def median_ms(run, repeats: int) -> float:
    run()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return 1000 * statistics.median(samples)


def alternate(runs: Mapping[str, Callable[[], object]], batch: int, rounds: int) -> dict[str, float]:
    """``runs["dense"]`` and ``runs["pruned"]`` timed alternately, ``rounds`` times (each round the
    median of repeated calls: 200 at batch 1, 20 above): the median milliseconds of each and the
    speed-up, the median over rounds of dense / pruned, with its range."""
    repeats = 200 if batch == 1 else 20
    times: dict[str, list[float]] = {"dense": [], "pruned": []}
    for _ in range(rounds):
        for name in ("dense", "pruned"):
            times[name].append(median_ms(runs[name], repeats))
    ratios = [d / p for d, p in zip(times["dense"], times["pruned"], strict=True)]
    return {"dense_ms": statistics.median(times["dense"]), "pruned_ms": statistics.median(times["pruned"]),
            "speedup": statistics.median(ratios), "speedup_min": min(ratios), "speedup_max": max(ratios)}


def side_by_side(dense: torch.nn.Module, slim: torch.nn.Module, dense_onnx: Path, slim_onnx: Path,
                 shape: tuple[int, ...], batches: tuple[int, ...], rounds: int) -> dict:
    """Alternate dense and smaller network, ``rounds`` times, in PyTorch (as exported, and with
    BatchNorm folded into the convolutions as a deployment does) and onnxruntime."""
    networks = {"pytorch": {"dense": dense, "pruned": slim},
                "pytorch, BN folded": {"dense": fold_batchnorm(dense), "pruned": fold_batchnorm(slim)},
                "onnxruntime": {"dense": OnnxRunner(dense_onnx), "pruned": OnnxRunner(slim_onnx)}}

    def timed(network: Callable[[torch.Tensor], object], x: torch.Tensor) -> Callable[[], object]:
        if isinstance(network, OnnxRunner):  # no autograd to turn off: time the session call alone
            return lambda: network(x)

        def run() -> None:
            with torch.inference_mode():
                network(x)
        return run

    results: dict = {}
    for batch in batches:
        x = torch.randn(batch, *shape)
        for runtime, pair in networks.items():
            results[f"{runtime} batch {batch}"] = alternate({name: timed(network, x) for name, network in pair.items()},
                                                            batch, rounds)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timesteps", type=int, help="agent budget (default: the shipped n_timesteps)")
    parser.add_argument("--sparsity", type=float, nargs="+",
                        help="targets (default: compare's for the budget, 0.3 0.5 0.7; with --budget latency 0.2 0.3 0.4)")
    parser.add_argument("--export-target", type=float,
                        help="the target whose best recipe is exported (default 0.5; with --budget latency 0.3)")
    parser.add_argument("--rounds", type=int, default=7, help="alternating latency rounds (default: 7)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--channel-multiple", type=int, default=1,
                        help="the env's channel_multiple (default 1, the env's default; the record's name gets _m<N>)")
    parser.add_argument("--budget", choices=("flops", "params", "latency"), default="flops",
                        help="what the targets count (default flops, the env's default; the record's name gets _<budget>)")
    parser.add_argument("--finetune-epochs", type=int, default=0,
                        help="fine-tune every row's smaller network, and the export, for N epochs (default 0)")
    parser.add_argument("--output", type=Path, help="write compare_channels_digits.json and .md here")
    args = parser.parse_args(argv)
    latency = args.budget == "latency"
    args.sparsity = args.sparsity or list(DEFAULT_LATENCY_TARGETS if latency else DEFAULT_CHANNEL_TARGETS)
    args.export_target = args.export_target if args.export_target is not None else (0.3 if latency else 0.5)
    torch.set_num_threads(1)
    env_kwargs = {key: value for key, value, default in (("channel_multiple", args.channel_multiple, 1),
                                                         ("budget", args.budget, "flops")) if value != default}
    stem = "compare_channels_digits" + (f"_m{args.channel_multiple}" if args.channel_multiple != 1 else "") + (
        f"_{args.budget}" if args.budget != "flops" else "") + (f"_ft{args.finetune_epochs}" if args.finetune_epochs else "")
    load_start = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        result = compare(ENV_ID, args.sparsity, "dqn", timesteps=args.timesteps, output_dir=folder / "compare",
                         seed=args.seed, env_kwargs=env_kwargs or None, finetune_epochs=args.finetune_epochs)
        compare_seconds = time.perf_counter() - started
        pick = result.metadata["export_picks"][target_key(args.export_target)]  # reward split + measured speed
        chosen = next(row for row in result.results if row.method == pick["method"]
                      and abs(row.target_sparsity - args.export_target) < 1e-9)
        recipe = folder / "compare" / "recipes" / pick["recipe"]
        exported, finetuned = export_channel_task(ENV_ID, folder / "export", recipe=recipe, device="cpu", latency=False,
                                                  finetune_epochs=args.finetune_epochs, seed=args.seed)
        task = get_task(ENV_ID)
        # The network a deployer takes: the fine-tuned one when the rows were fine-tuned.
        suffix = "-finetuned" if args.finetune_epochs else ""
        slim = load_slim(folder / "export" / f"model{suffix}.pt", task.build_model(), torch.zeros(1, 1, 8, 8))
        dense = task.load_model().eval()
        dense_onnx = export_onnx(dense, torch.zeros(1, 1, 8, 8), folder / "dense.onnx")
        latency = side_by_side(dense, slim, dense_onnx, folder / "export" / f"model{suffix}.onnx", (1, 8, 8), (1, 256),
                               args.rounds)
        predicted = None
        if args.budget == "latency":  # the table's prediction for the exported network (read from the cache)
            env = gym.make(ENV_ID, **env_kwargs).unwrapped
            shares = json.loads(recipe.read_text())["layers"]
            counts = [round(shares[name] * channels) for name, channels in zip(env.group_names(), env.channels, strict=True)]
            predicted = {"speedup": env.latency_table.dense_prediction / env.cost.latency(counts),
                         "table_machine": env.latency_table.machine}
        if args.output is not None:
            recipes = args.output / f"{stem}_recipes"
            shutil.rmtree(recipes, ignore_errors=True)
            shutil.copytree(folder / "compare" / "recipes", recipes)
    record = {
        "benchmark": "compare_channels_digits",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": f"prune-gym compare {ENV_ID}" + (f" --timesteps {args.timesteps}" if args.timesteps else "")
        + (f" --finetune-epochs {args.finetune_epochs}" if args.finetune_epochs else "")
        + (f" (env kwargs {env_kwargs})" if env_kwargs else ""),
        "machine": machine_info(),
        "load_average_1_5_15_min": {"start": load_start, "end": os.getloadavg()},
        "compare_wall_seconds": compare_seconds,
        "agent_train_seconds": result.metadata["agent"]["train_seconds"],
        "table": result.table,
        "results": [row.to_json() for row in result.results],
        "export_pick": pick,
        "exported": {"method": chosen.method, "target": args.export_target, "table_test_accuracy": chosen.test_accuracy,
                     "exported_test_accuracy": exported.test_accuracy, "flops_reduction": exported.flops_reduction,
                     "params": exported.params, "dense_params": exported.dense_params,
                     "onnx_max_difference": exported.onnx_max_difference,
                     **({"table_finetuned_test_accuracy": chosen.finetuned_test_accuracy, **finetuned} if finetuned else {})},
        "latency": latency,
        "predicted": predicted,
    }
    lines = [
        f"# `{record['command']}`, and its best recipe at {args.export_target:.0%} {BUDGET_LABELS[args.budget]} exported",
        "",
        f"Date {record['date']}; {record['machine']['cpu']}, {record['machine']['logical_cpus']} logical CPUs, 1 torch "
        f"thread; torch {record['machine']['torch']}. Compare: {compare_seconds:.0f} s wall (agent "
        f"{record['agent_train_seconds']:.0f} s); load average {load_start[0]:.1f} at the start.",
        "",
        "```", result.table, "```", "",
        f"Exported: {chosen.method} at {args.export_target:.0%} (the comparison's pick to export: the fastest of the rows "
        f"that the most accurate on the reward split, {pick['most_accurate']}, does not beat there by more than noise): "
        f"test accuracy {100 * exported.test_accuracy:.2f}% (the table: "
        f"{100 * chosen.test_accuracy:.2f}%), FLOPs removed {100 * exported.flops_reduction:.1f}%, parameters "
        f"{exported.params:,} of {exported.dense_params:,}; ONNX against PyTorch: largest logit difference "
        f"{exported.onnx_max_difference:.1e}."
        + (f" Fine-tuned {args.finetune_epochs} epochs: test accuracy {100 * finetuned['finetuned_test_accuracy']:.2f}% "
           f"(the table: {100 * chosen.finetuned_test_accuracy:.2f}%), its ONNX against PyTorch "
           f"{finetuned['finetuned_onnx_max_difference']:.1e}; the latency below is the fine-tuned network's."
           if finetuned else ""),
        "",
        f"Latency, dense and pruned alternating over {args.rounds} rounds (median of each round's median; speed-up = "
        "median over rounds of dense / pruned, with its range):",
        "",
        *([f"The latency table ({predicted['table_machine']['processor']}, batch 1, "
           f"{predicted['table_machine']['torch_threads']} thread) predicted {predicted['speedup']:.2f}x for it.", ""]
          if predicted else []),
        "| runtime, batch | dense (ms) | pruned (ms) | speed-up | range |",
        "|---|---:|---:|---:|---|",
        *[f"| {key} | {v['dense_ms']:.3f} | {v['pruned_ms']:.3f} | {v['speedup']:.2f}x | "
          f"{v['speedup_min']:.2f}-{v['speedup_max']:.2f} |" for key, v in latency.items()],
        "",
    ]
    markdown = "\n".join(lines)
    print(markdown)
    write_record(args.output, stem, record, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
