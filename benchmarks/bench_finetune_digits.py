"""Accuracy before and after masked fine-tuning on the digits task, per pruning method.

For each target sparsity (default 0.8 and 0.9) the trained digits ResNet-20 is pruned with

- ``global-mp``: one-shot Global MP (one magnitude threshold for all layers);
- ``global-mp+mt``: the same with the Minimum Threshold of the paper (0.05% of all weights);
- ``uniform``: magnitude pruning at the same sparsity in every layer;
- ``gradual-global-mp``: Global MP in ``--gradual-steps`` steps on the cubic schedule of Zhu &
  Gupta (2017), fine-tuned for ``epochs / steps`` epochs after each step, so it gets the same
  training budget as the one-shot methods;
- every ``--recipe FILE`` (e.g. an agent's, from ``prune-gym export`` or the comparison
  workflow): per-layer magnitude pruning at the recipe's sparsities (its own overall sparsity);

then fine-tuned with its masks for ``--epochs`` epochs (the digits fine-tuning recipe: SGD,
lr 0.01, cosine) with several seeds. Test accuracy before and after fine-tuning and the
FLOPs reduction are reported as a Markdown table (mean +- std over seeds), written with the
machine, date and command to ``<--output>/<--name>.md`` and ``.json``.

Run from the repository root::

    .venv/bin/python benchmarks/bench_finetune_digits.py --output benchmarks/results
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from machine import (  # benchmarks/machine.py, beside this script
    cpu_model,
    machine_info,
    write_record,
)

from prune_gym.accounting import accounting, layer_flops
from prune_gym.calibration import capture_state, recalibrate_batchnorm, restore_state
from prune_gym.evaluation import evaluate_accuracy
from prune_gym.finetune import apply_masks, finetune_pruned
from prune_gym.gradual import gradual_global_magnitude_pruning
from prune_gym.pruning import (
    DEFAULT_MIN_THRESHOLD,
    find_prunable_layers,
    global_magnitude_masks,
    uniform_magnitude_masks,
)
from prune_gym.recipes import apply_recipe, load_recipe, overall_sparsity
from prune_gym.tasks import get_task

TASK = "resnet20-digits"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.8, 0.9])
    parser.add_argument("--epochs", type=int, default=get_task("resnet20-digits").finetune_recipe.epochs, help="fine-tuning epochs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fine-tuning seeds")
    parser.add_argument("--gradual-steps", type=int, default=5, help="steps of gradual Global MP (0: skip it)")
    parser.add_argument(
        "--recipe", action="append", default=[], metavar="FILE",
        help="also prune with this recipe JSON (repeatable), e.g. an agent's",
    )
    parser.add_argument("--methods", nargs="+", default=["global-mp", "global-mp+mt", "uniform", "gradual-global-mp"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--output", type=Path,
                        help="folder to write <name>.md and <name>.json into (default: none, only print)")
    parser.add_argument("--name", default="finetune_digits", help="the files' name (default finetune_digits)")
    return parser.parse_args(argv)


def machine() -> str:
    cpu = cpu_model()
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{cpu} ({torch.get_num_threads()} torch threads){gpu}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, {platform.system()} {platform.release()}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    task = get_task(TASK)
    splits = task.load_splits()
    dense_model = task.load_model()
    dense_state = {k: v.clone() for k, v in dense_model.state_dict().items()}
    device = torch.device(args.device)
    accuracy_dense = evaluate_accuracy(dense_model, splits.test, device=device)
    flops = layer_flops(dense_model, torch.zeros(1, *task.input_shape), find_prunable_layers(dense_model))

    def fresh():
        model = task.build_model()
        model.load_state_dict(dense_state)
        model.to(device).eval()
        return model, find_prunable_layers(model)

    jobs: list[tuple[str, float | None, Path | None]] = [
        (method, sparsity, None) for sparsity in args.sparsities for method in args.methods
        if not (method == "gradual-global-mp" and args.gradual_steps < 1)
    ]
    recipes = {Path(file): load_recipe(file) for file in args.recipe}  # fail early on a bad file
    jobs += [(f"recipe:{recipe.meta.get('method', file.stem)}", None, file) for file, recipe in recipes.items()]

    rows = []
    started = time.perf_counter()
    for method, sparsity, recipe_file in jobs:
        before_runs, recalibrated_runs, after_runs, seconds = [], [], [], []
        reached = flops_reduction = None
        for seed in args.seeds:
            model, layers = fresh()
            tic = time.perf_counter()
            if method == "gradual-global-mp":
                per_step = max(1, args.epochs // args.gradual_steps)
                config = task.recipe("finetune")
                config.seed = seed
                masks, history = gradual_global_magnitude_pruning(
                    model, layers, splits.train, sparsity, args.gradual_steps, per_step,
                    config=config, device=device,
                )
                before = recalibrated = None  # pruning and training interleave: no "before" model
            else:
                weights = [layer.weight for layer in layers]
                if recipe_file is not None:
                    masks = apply_recipe(model, recipes[recipe_file], layers)
                elif method == "global-mp":
                    masks = global_magnitude_masks(weights, sparsity)
                elif method == "global-mp+mt":
                    masks = global_magnitude_masks(weights, sparsity, DEFAULT_MIN_THRESHOLD)
                elif method == "uniform":
                    masks = uniform_magnitude_masks(weights, sparsity)
                else:
                    raise SystemExit(f"unknown method {method!r}")
                apply_masks(layers, masks)
                before = evaluate_accuracy(model, splits.test, device=device)
                # BatchNorm statistics refit on training images, no training: measured on a
                # snapshot, so fine-tuning starts from the pruned model as it is.
                snapshot = capture_state(model)
                recalibrate_batchnorm(model, splits.train.tensors[0].to(device))
                recalibrated = evaluate_accuracy(model, splits.test, device=device)
                restore_state(model, snapshot)
                finetune_pruned(model, layers, masks, splits.train, args.epochs, config=task.recipe("finetune"), seed=seed,
                                device=device)
            after = evaluate_accuracy(model, splits.test, device=device)
            seconds.append(time.perf_counter() - tic)
            reached = overall_sparsity(masks)
            flops_reduction = accounting(model, layers, masks, flops).flops_reduction
            if before is not None:
                before_runs.append(before)
                recalibrated_runs.append(recalibrated)
            after_runs.append(after)
            print(f"{method:>22} s={reached:.3f} seed={seed}: before {before} after {after:.4f}", file=sys.stderr)
        rows.append(
            {
                "method": method,
                "sparsity": reached,
                "flops_reduction": flops_reduction,
                "accuracy_before": before_runs[0] if before_runs else None,
                "accuracy_bn_recalibrated": recalibrated_runs[0] if recalibrated_runs else None,
                "accuracy_after": after_runs,
                "seconds": seconds,
            }
        )

    report = render(args, rows, accuracy_dense, time.perf_counter() - started)
    print(report)
    record = {
        "benchmark": args.name, "date": datetime.date.today().isoformat(), "command": command_line(),
        "machine": machine_info(), "dense_accuracy": accuracy_dense, "epochs": args.epochs, "seeds": args.seeds,
        "rows": rows,
    }
    write_record(args.output, args.name, record, report)
    return 0


def percent(value: float) -> str:
    return f"{100 * value:.2f}"


def command_line() -> str:
    return "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])


def render(args: argparse.Namespace, rows: list[dict], accuracy_dense: float, seconds: float) -> str:
    command = command_line()
    recipe = get_task(TASK).recipe("finetune")
    lines = [
        "# Masked fine-tuning on digits (ResNet-20, 8x8 digits)",
        "",
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Machine: {machine()}",
        f"- Command: `{command}`",
        f"- Fine-tuning: {args.epochs} epochs of masked SGD (digits recipe: lr {recipe.lr}, momentum "
        f"{recipe.momentum} Nesterov, weight decay {recipe.weight_decay}, batch {recipe.batch_size}, cosine), "
        f"seeds {args.seeds}"
        + (f"; gradual Global MP: {args.gradual_steps} cubic steps x "
           f"{max(1, args.epochs // args.gradual_steps)} epochs." if args.gradual_steps > 0 else "."),
        f"- Test split: {accuracy_dense:.4f} dense accuracy; 360 images, so one image is 0.28 points.",
        "- Model: the default digits ResNet-20 (trained on first use with its fixed recipe and seed).",
        f"- Wall time: {seconds:.0f} s in all (a machine shared with other jobs: not a speed figure).",
        "",
        "Test accuracy (%); after fine-tuning: mean +- std over seeds. \"BN recalibrated only\":",
        "the pruned model with its BatchNorm statistics re-estimated on the training images, no",
        "weight trained (`prune_gym.calibration.recalibrate_batchnorm`). FLOPs reduction is the",
        "fraction of the prunable layers' FLOPs removed (unstructured: FLOPs x density).",
        "",
        "| method | sparsity | FLOPs reduction | before fine-tuning | BN recalibrated only | after fine-tuning |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        after = row["accuracy_after"]
        spread = statistics.stdev(after) if len(after) > 1 else 0.0
        before = "-" if row["accuracy_before"] is None else percent(row["accuracy_before"])
        recalibrated = "-" if row["accuracy_bn_recalibrated"] is None else percent(row["accuracy_bn_recalibrated"])
        lines.append(
            f"| {row['method']} | {row['sparsity']:.3f} | {row['flops_reduction']:.3f} | {before} | {recalibrated} | "
            f"{percent(statistics.mean(after))} +- {100 * spread:.2f} |"
        )
    if not args.recipe:
        lines += [
            "",
            "Agent rows: export the agent's pruned model (`prune-gym export ... --recipe` or the",
            "comparison workflow), then rerun with `--recipe agent80.pt.recipe.json --recipe",
            "agent90.pt.recipe.json`; each recipe is applied with per-layer magnitude pruning and",
            "fine-tuned exactly like the rows above.",
        ]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
