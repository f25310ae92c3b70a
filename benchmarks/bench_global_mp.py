"""Benchmark: Global Magnitude Pruning (prune_gym) against torch.nn.utils.prune.global_unstructured.

On torchvision ResNet-50 (random init, seed 0; 25.5M prunable weights) at several sparsities,
side by side in one run: for each sparsity and repeat, the two implementations run one after
the other on the same dense weights, and their masks are checked to be equal every time.

Timed (median over ``--repeats`` runs each):

- ``prune_gym masks``: ``global_magnitude_masks(weights, s)``, the masks only;
- ``prune_gym apply``: ``PruningState.set_masks(masks)``, the in-place mask multiply;
- ``torch global_unstructured``: ``global_unstructured(params, L1Unstructured, amount=s)``, which
  computes the masks and the pruned weights (so it compares with masks + apply);
- the two paths of the exact selection under Global MP's masks
  (``prune_gym.selection``): ``remove_smallest_part_by_part`` (what the CPU uses) and
  ``remove_smallest_concatenated`` (what CUDA uses), on the same scores, masks checked equal;
- ``PruningState.restore()`` of the whole network (the cost of an environment reset), with
  ``model.load_state_dict`` from a copy kept in memory for reference.

Prints the markdown table; ``--output DIR`` also writes ``DIR/global_mp_<device>.json`` and ``.md``
(the recorded ones: ``--output benchmarks/results``).

Usage::

    python benchmarks/bench_global_mp.py                      # CPU, and CUDA when present
    python benchmarks/bench_global_mp.py --devices cpu --threads 1 --repeats 5
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from machine import cpu_model, write_record  # benchmarks/machine.py, beside this script
from torch.nn.utils import prune as torch_prune

from prune_gym.pruning import PruningState, find_prunable_layers, global_magnitude_masks
from prune_gym.selection import remove_smallest_concatenated, remove_smallest_part_by_part


def machine_info(device: torch.device) -> dict:
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


#: CPU seconds of this process per call, next to wall-clock seconds: on a shared machine the
#: wall clock also counts time spent waiting for a core, the CPU time does not.
cpu_seconds: dict[str, list[float]] = {}


def timed(function: Callable[[], object], device: torch.device, label: str = "") -> tuple[float, object]:
    """Wall-clock seconds one call takes (GPU work included), and its result."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    result = function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if label:
        cpu_seconds.setdefault(label, []).append(time.process_time() - start_cpu)
    return time.perf_counter() - start, result


def torch_global_l1(layers, sparsity: float) -> list[torch.Tensor]:
    """Run torch's global L1 pruning (the timed call) and return its masks as bool tensors."""
    parameters = [(layer.module, "weight") for layer in layers]
    torch_prune.global_unstructured(parameters, pruning_method=torch_prune.L1Unstructured, amount=sparsity)
    return [layer.module.weight_mask for layer in layers]


def undo_torch_pruning(layers, state: PruningState) -> None:
    """Remove torch's reparametrisation and put the dense weights back (not timed)."""
    for layer in layers:
        torch_prune.remove(layer.module, "weight")
    state.restore()


def bench_device(device: torch.device, sparsities: list[float], repeats: int) -> dict:
    torch.manual_seed(0)
    model = torchvision.models.resnet50().to(device).eval()
    layers = find_prunable_layers(model)
    state = PruningState(model, layers)
    weights = [layer.weight for layer in layers]
    total = state.total
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    load_average_start = os.getloadavg()

    # Warm-up (first allocations, kernel selection), not recorded.
    masks = global_magnitude_masks(weights, sparsities[0])
    state.set_masks(masks)
    state.restore()
    torch_global_l1(layers, sparsities[0])
    undo_torch_pruning(layers, state)
    assert all(torch.equal(layer.weight, dense) for layer, dense in zip(layers, state.dense, strict=True))

    rows = []
    for sparsity in sparsities:
        runs: dict[str, list[float]] = {"masks": [], "apply": [], "torch": []}
        masks_equal = True
        for _ in range(repeats):
            seconds, masks = timed(lambda s=sparsity: global_magnitude_masks(weights, s), device, f"masks {sparsity}")
            runs["masks"].append(seconds)
            seconds, _ = timed(lambda m=masks: state.set_masks(m), device, f"apply {sparsity}")
            runs["apply"].append(seconds)
            removed = state.pruned_count()
            state.restore()
            seconds, reference = timed(lambda s=sparsity: torch_global_l1(layers, s), device, f"torch {sparsity}")
            runs["torch"].append(seconds)
            masks_equal &= all(torch.equal(mine, theirs.bool()) for mine, theirs in zip(masks, reference, strict=True))
            masks_equal &= removed == round(sparsity * total)
            undo_torch_pruning(layers, state)
            del masks, reference
        masks_s = statistics.median(runs["masks"])
        apply_s = statistics.median(runs["apply"])
        total_s = statistics.median([m + a for m, a in zip(runs["masks"], runs["apply"], strict=True)])
        torch_s = statistics.median(runs["torch"])
        cpu = {key: cpu_seconds[f"{key} {sparsity}"] for key in ("masks", "apply", "torch")}
        cpu_total = statistics.median([m + a for m, a in zip(cpu["masks"], cpu["apply"], strict=True)])
        cpu_torch = statistics.median(cpu["torch"])
        rows.append({
            "sparsity": sparsity,
            "prune_gym_masks_s": masks_s,
            "prune_gym_apply_s": apply_s,
            "prune_gym_masks_and_apply_s": total_s,
            "torch_global_unstructured_s": torch_s,
            "speedup_vs_masks_and_apply": torch_s / total_s,
            "speedup_vs_masks_only": torch_s / masks_s,
            "masks_equal": bool(masks_equal),
            "runs_s": runs,
            "cpu_time_prune_gym_masks_and_apply_s": cpu_total,
            "cpu_time_torch_global_unstructured_s": cpu_torch,
            "cpu_time_speedup_vs_masks_and_apply": cpu_torch / cpu_total,
            "cpu_time_runs_s": cpu,
        })
        print(f"  sparsity {sparsity}: prune_gym {total_s:.3f} s, torch {torch_s:.3f} s, "
              f"x{torch_s / total_s:.2f}, masks equal: {masks_equal}", flush=True)

    # The selection's two paths, side by side on the same scores (global_magnitude_masks's own).
    scores = [w.detach().abs().flatten().float() for w in weights]
    selection_rows = []
    for sparsity in sparsities:
        count = round(sparsity * total)
        paths: dict[str, list[float]] = {"part_by_part": [], "concatenated": []}
        same = True
        for _ in range(repeats):
            seconds, by_part = timed(lambda c=count: remove_smallest_part_by_part(scores, c), device)
            paths["part_by_part"].append(seconds)
            seconds, concatenated = timed(lambda c=count: remove_smallest_concatenated(scores, c), device)
            paths["concatenated"].append(seconds)
            same &= all(torch.equal(a, b) for a, b in zip(by_part, concatenated, strict=True))
            del by_part, concatenated
        part_s, concatenated_s = statistics.median(paths["part_by_part"]), statistics.median(paths["concatenated"])
        selection_rows.append({"sparsity": sparsity, "part_by_part_s": part_s, "concatenated_s": concatenated_s,
                               "concatenated_speedup": part_s / concatenated_s, "masks_equal": bool(same),
                               "runs_s": paths})
        print(f"  selection at {sparsity}: part by part {part_s:.4f} s, concatenated {concatenated_s:.4f} s, "
              f"masks equal: {same}", flush=True)

    pruned_masks = global_magnitude_masks(weights, 0.9)
    restore_runs = []
    for _ in range(max(repeats, 5)):
        state.set_masks(pruned_masks)
        seconds, _ = timed(state.restore, device)
        restore_runs.append(seconds)
    load_runs = []
    for _ in range(max(repeats, 5)):
        seconds, _ = timed(lambda: model.load_state_dict(dense_state), device)
        load_runs.append(seconds)
    state.restore()
    assert all(torch.equal(value, dense_state[key]) for key, value in model.state_dict().items())

    return {
        "benchmark": "global_mp",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/bench_global_mp.py " + " ".join(sys.argv[1:]),
        "device": str(device),
        "machine": machine_info(device),
        "load_average_1_5_15_min": {"start": load_average_start, "end": os.getloadavg()},
        "model": "torchvision resnet50, random init (torch.manual_seed(0)), eval mode",
        "prunable_layers": len(layers),
        "prunable_weights": total,
        "repeats": repeats,
        "results": rows,
        "selection_path_used": "concatenated" if device.type == "cuda" else "part_by_part",
        "selection_paths": selection_rows,
        "restore_s": statistics.median(restore_runs),
        "restore_runs_s": restore_runs,
        "load_state_dict_s": statistics.median(load_runs),
        "load_state_dict_runs_s": load_runs,
    }


def markdown(result: dict) -> str:
    machine = result["machine"]
    where = machine["gpu"] or f"{machine['cpu']}, {machine['torch_threads']} torch thread(s)"
    on_cpu = result["device"] == "cpu"
    lines = [
        f"ResNet-50 ({result['prunable_weights']:,} prunable weights, {result['prunable_layers']} layers) "
        f"on {result['device']} ({where}); torch {machine['torch']}; {result['date']}; "
        f"median of {result['repeats']} runs; load average (1 min) at start "
        f"{result['load_average_1_5_15_min']['start'][0]:.1f}, at end {result['load_average_1_5_15_min']['end'][0]:.1f}.",
        "",
        "| sparsity | prune_gym masks (s) | masks + apply (s) | torch global_unstructured (s) "
        "| speed-up vs masks + apply | speed-up vs masks only "
        + ("| CPU time: masks + apply / torch (s) | CPU-time speed-up " if on_cpu else "")
        + "| masks equal |",
        "|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if on_cpu else "") + ":---:|",
    ]
    for row in result["results"]:
        cpu_columns = (
            f"| {row['cpu_time_prune_gym_masks_and_apply_s']:.3f} / {row['cpu_time_torch_global_unstructured_s']:.3f} "
            f"| {row['cpu_time_speedup_vs_masks_and_apply']:.2f}x " if on_cpu else ""
        )
        lines.append(
            f"| {row['sparsity']} | {row['prune_gym_masks_s']:.3f} | {row['prune_gym_masks_and_apply_s']:.3f} "
            f"| {row['torch_global_unstructured_s']:.3f} | {row['speedup_vs_masks_and_apply']:.2f}x "
            f"| {row['speedup_vs_masks_only']:.2f}x {cpu_columns}| {'yes' if row['masks_equal'] else 'NO'} |"
        )
    used = result["selection_path_used"].replace("_", " ")
    lines += [
        "",
        f"The exact selection's two paths on the same scores (Global MP on {result['device']} uses the {used} one):",
        "",
        "| sparsity | part by part (s) | concatenated (s) | concatenated speed-up | masks equal |",
        "|---:|---:|---:|---:|:---:|",
        *[f"| {row['sparsity']} | {row['part_by_part_s']:.4f} | {row['concatenated_s']:.4f} "
          f"| {row['concatenated_speedup']:.2f}x | {'yes' if row['masks_equal'] else 'NO'} |"
          for row in result["selection_paths"]],
    ]
    lines += [
        "",
        f"`PruningState.restore()` of all {result['prunable_layers']} layers (environment reset): "
        f"{result['restore_s'] * 1e3:.1f} ms (`model.load_state_dict` from a copy in memory: "
        f"{result['load_state_dict_s'] * 1e3:.1f} ms).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", nargs="+", default=None,
                        help="devices to run on (default: cpu, and cuda when available)")
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.8, 0.9, 0.95])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per sparsity (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--output", type=Path, default=None,
                        help="folder to write global_mp_<device>.json and .md into (default: none, only print)")
    args = parser.parse_args(argv)
    if args.repeats < 3:
        parser.error("--repeats must be at least 3 (the median of fewer runs is not robust)")
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    failed = False
    for name in devices:
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            parser.error("--devices cuda given, but no GPU is visible")
        print(f"Global MP vs torch.nn.utils.prune.global_unstructured on {device}", flush=True)
        result = bench_device(device, args.sparsities, args.repeats)
        table = markdown(result)
        stem = f"global_mp_{device.type}"
        write_record(args.output, stem, result, table)
        print(table, flush=True)
        failed |= not all(row["masks_equal"] for row in [*result["results"], *result["selection_paths"]])
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
