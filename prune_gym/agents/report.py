"""How a comparison is reported: the result records, the table, JSON, CSV, recipes and plots.

:func:`prune_gym.workflows.compare.compare` produces a :class:`Comparison`; this module turns it
into ``table.txt``, ``results.json``, ``results.csv``, ``recipes/<method>-<target>.json`` (each
method's per-layer sparsities, with the env's post-pruning steps, for ``prune-gym export
--recipe``), ``accuracy_vs_sparsity.png`` and ``layer_sparsity.png``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prune_gym.agents.policies import prune_env_of
from prune_gym.channel_export import LATENCY_ROUNDS
from prune_gym.episode import EpisodeRecord, target_key
from prune_gym.io import atomic_write_json, atomic_write_text
from prune_gym.recipes import Recipe

__all__ = [
    "Comparison",
    "MethodResult",
    "format_episode",
    "format_table",
    "method_slug",
    "plot_accuracy",
    "plot_layer_sparsity",
    "text_table",
    "write_figures",
    "write_recipes",
    "write_results",
    "write_tables",
]


@dataclass(kw_only=True)
class MethodResult(EpisodeRecord):
    """One method pruned to one target: its episode's record (test accuracy NaN when the env
    has no test split), the method's name and what choosing its allocation cost."""

    target_sparsity: float
    method: str
    action_type: str
    finetuned_test_accuracy: float | None = None
    #: The fine-tuned network's reward-split accuracy (what the export pick selects on when the
    #: rows were fine-tuned).
    finetuned_reward_accuracy: float | None = None
    finetune_seconds: float | None = None
    #: What choosing the allocation cost: network evaluations on the reward split (an agent's
    #: training steps, the search's episodes x layers; 0 for a zero-cost rule) and seconds.
    evaluations: int | None = None
    cost_seconds: float | None = None
    #: The strongest rule whose allocation this row carries in place of its own, when its own
    #: (chosen on the reward split) did not beat that rule there by more than noise
    #: (``prune_gym.agents.verdict.guard_selection``); None: its own allocation.
    fallback: str | None = None
    #: The guard's verdict and the row's own accuracies (None: not guarded).
    selection: dict[str, Any] | None = None
    #: Channel envs: median milliseconds of a forward pass of the physically smaller network on
    #: the CPU, and its speed-up over the dense network measured alternately with it, by batch
    #: size (``prune_gym.channel_export.latency_side_by_side``); None elsewhere.
    latency_ms: dict[str, float] | None = None
    speedup: dict[str, float] | None = None
    #: Whether each test image, and each reward-split sample, was classified right (for paired
    #: tests; not written to files).
    test_correct: np.ndarray | None = field(default=None, repr=False, compare=False)
    reward_correct: np.ndarray | None = field(default=None, repr=False, compare=False)
    finetuned_reward_correct: np.ndarray | None = field(default=None, repr=False, compare=False)


@dataclass
class Comparison:
    """The results of :func:`compare` and where they were written."""

    env_id: str
    results: list[MethodResult]
    metadata: dict[str, Any]
    output_dir: Path | None
    table: str

    def result(self, method: str, target: float) -> MethodResult:
        """The row of ``method`` at ``target``."""
        for row in self.results:
            if row.method == method and math.isclose(row.target_sparsity, target):
                return row
        raise KeyError(f"no result for {method!r} at {target}")


def percent(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.{digits}f}"


def _table_preamble(metadata: Mapping[str, Any]) -> list[str]:
    """The lines above the table: the model, the agent and the search."""
    agent = metadata["agent"]
    lines = [
        f"{metadata['env_id']}: dense test accuracy {percent(metadata['dense_test_accuracy'])}%, "
        f"reward-split accuracy {percent(metadata['dense_reward_accuracy'])}%",
        f"agent: {agent['algo'].upper()}, {agent['timesteps']:,} steps ({agent['action_type']} actions"
        + (f", {agent['levels']} levels" if agent.get("levels") else "")
        + (f", trained here in {agent['train_seconds']:.0f} s, {agent['episodes']:,} episodes)"
           if agent.get("trained_here", True) else f", loaded from {agent['path']})")
        + "; greedy = its deterministic policy, best found = its best training episode on the reward "
        "split, replayed (selection guard below). Reference policies act through a continuous-action env with the same task, "
        f"split, target, device and max_sparsity {metadata['matched']['max_sparsity']}",
    ]
    search = metadata.get("search") or {}
    if search.get("episodes_per_target"):
        lines.append(f"local search: around {search.get('start', 'global-mp')}, {search['episodes_per_target']:,} env "
                     "episodes per target (the agent's training episodes, split over the targets), best on the reward split")
    elif str(search.get("budget", "")).startswith("off:"):
        lines.append(f"local search: {search['budget']}")
    return lines


def format_table(results: Sequence[MethodResult], metadata: Mapping[str, Any]) -> str:
    """The comparison as a plain-text table (accuracies and sparsities in %)."""
    lines = _table_preamble(metadata)
    strongest = metadata.get("strongest_heuristic") or {}
    lines.append("")
    finetuned = any(row.finetuned_test_accuracy is not None for row in results)
    header = ["target", "method", "test acc", "reward acc", "param sparsity", "FLOPs sparsity", "time (s)", "evals",
              "cost (s)"]
    if finetuned:
        header.insert(3, f"after FT ({metadata['finetune_epochs']} ep)")
    dense_latency = metadata.get("dense_latency_ms") or {}
    header += [f"ms b{batch} (x)" for batch in dense_latency]
    rows = [header]
    previous = None
    for row in results:
        marked = strongest.get(target_key(row.target_sparsity)) == row.method
        cells = [
            percent(row.target_sparsity, 0) + "%" if row.target_sparsity != previous else "",
            row.method + (f" -> {row.fallback}" if row.fallback else "") + (" *" if marked else ""),
            percent(row.test_accuracy),
            percent(row.reward_accuracy),
            percent(row.overall_sparsity, 2),
            percent(row.flops_reduction, 2),
            f"{row.seconds:.2f}",
            "-" if row.evaluations is None else f"{row.evaluations:,}",
            "-" if row.cost_seconds is None else f"{row.cost_seconds:.2f}",
        ]
        if finetuned:
            cells.insert(3, percent(row.finetuned_test_accuracy))
        for batch in dense_latency:
            own, speedup = (row.latency_ms or {}).get(batch), (row.speedup or {}).get(batch)
            cells.append("-" if own is None or speedup is None else f"{own:.2f} ({speedup:.2f}x)")
        rows.append(cells)
        previous = row.target_sparsity
    lines += text_table(rows, text_columns=2)
    lines.append("")
    lines.append(f"accuracies and sparsities in %; time = one pruning episode; evals, cost = network evaluations "
                 "and seconds spent choosing the allocation (0 for a zero-cost rule); "
                 f"total {metadata['total_seconds']:.0f} s")
    if dense_latency:
        lines.append("ms bN (x) = median CPU latency of the physically smaller network at batch N, and its speed-up "
                     f"over the dense network measured alternately with it (the median of {LATENCY_ROUNDS} rounds, as "
                     "prune-gym export measures it; the dense one: "
                     + ", ".join(f"{ms:.2f} ms at b{b}" for b, ms in dense_latency.items()) + "), "
                     f"{metadata.get('latency_note', '')}".rstrip(", "))
    if strongest:
        lines.append("* the strongest zero-cost rule at the target on the reward split (the random control excluded)")
    lines += _selection_notes(results)
    lines += _export_picks(metadata.get("export_picks") or {})
    tests = metadata.get("paired_tests") or []
    if tests:
        lines += ["", "paired tests on the same test images, against the strongest rule (McNemar's exact test):"]
        lines += [f"  {100 * test['target_sparsity']:.0f}%: {test['summary']}" for test in tests]
    return "\n".join(lines)


def _selection_notes(results: Sequence[MethodResult]) -> list[str]:
    """What the selection guard decided for each searched row (best found, local search)."""
    guarded = [row for row in results if row.selection is not None]
    if not guarded:
        return []
    alpha = guarded[0].selection["alpha"]
    lines = ["", f"selection guard: a searched allocation (best of many on the reward split) is kept only if it "
                 f"beats the strongest rule there by more than noise (one-sided McNemar p < {alpha:g}); "
                 "'-> rule': it did not, so the rule's allocation is used in its place:"]
    for row in guarded:
        verdict = row.selection
        own = verdict["own"]
        outcome = "kept" if verdict["kept"] else f"-> {verdict['against']}"
        lines.append(
            f"  {100 * row.target_sparsity:.0f}% {row.method}: {outcome} ({verdict['only_own']} vs "
            f"{verdict['only_rule']} of {verdict['reward_samples']} reward-split samples differ from "
            f"{verdict['against']}, p = {verdict['p_better']:.2g}); its own allocation: reward "
            f"{percent(own['reward_accuracy'])}%, test {percent(own['test_accuracy'])}%")
    return lines


def _export_picks(picks: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Which recipe to export at each target when speed counts (``verdict.fastest_within_noise``)."""
    if not picks:
        return []
    first = next(iter(picks.values()))
    # Older results.json files (before fine-tuned picks) hold one-shot picks.
    networks = " (the fine-tuned networks)" if first.get("accuracy") == "fine-tuned" else ""
    lines = ["", f"to export (speed counts): the fastest of the rows that the most accurate on the reward split{networks} "
                 f"does not beat there by more than noise (one-sided McNemar p >= {first['alpha']:g}; speed = geometric "
                 "mean of the speed-ups):"]
    for pick in picks.values():
        speed = " / ".join(f"{x:.2f}x b{batch}" for batch, x in pick["speedup"].items())
        against = ("the most accurate" if pick["method"] == pick["most_accurate"] else
                   f"most accurate: {pick['most_accurate']}, {percent(pick['most_accurate_reward_accuracy'])}%, "
                   f"p = {pick['p_worse']:.2g}")
        lines.append(f"  {100 * pick['target_sparsity']:.0f}%: {pick['method']}, reward {percent(pick['reward_accuracy'])}% "
                     f"({against}), {speed}: recipes/{pick['recipe']}")
    return lines


def format_episode(env_id: str, result: MethodResult, env: Any) -> str:
    """One method's episode on a weight env (``prune-gym baseline``): accuracies beside the dense
    model's, sparsities, time, and each layer's weights and sparsity."""
    width = max(len(name) for name in result.layer_sparsities)
    lines = [
        f"{env_id}: {result.method} at sparsity {result.target_sparsity} ({env.action_type} actions)",
        f"  test accuracy  {percent(result.test_accuracy, 2)}%  (dense {percent(env.dense_test_accuracy, 2)}%)",
        f"  reward acc.    {percent(result.reward_accuracy, 2)}%  (dense {percent(env.dense_reward_accuracy, 2)}%)",
        f"  param sparsity {percent(result.overall_sparsity, 2)}%   FLOPs sparsity {percent(result.flops_reduction, 2)}%   "
        f"{result.seconds:.2f} s",
        f"  {'layer'.ljust(width)}  weights  sparsity",
    ]
    lines += [f"  {name.ljust(width)}  {numel:7d}  {100 * result.layer_sparsities[name]:7.2f}%"
              for name, numel in zip(env.layer_names(), env.state.numels, strict=True)]
    return "\n".join(lines)


def text_table(rows: Sequence[Sequence[str]], text_columns: int) -> list[str]:
    """``rows`` (the first is the header) as aligned lines with a rule under the header: the
    first ``text_columns`` columns left-aligned, the numbers after them right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, cells in enumerate(rows):
        lines.append("  ".join(c.rjust(w) if i >= text_columns else c.ljust(w)
                               for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


_CSV_FIELDS = (
    "target_sparsity", "method", "test_accuracy", "reward_accuracy", "overall_sparsity", "flops_reduction",
    "seconds", "episode_return", "action_type", "finetuned_test_accuracy", "finetune_seconds", "evaluations",
    "cost_seconds", "fallback", "latency_ms", "speedup",
)


def write_results(comparison: Comparison, output: Path, env: Any | None = None) -> None:
    """Write ``results.json``, ``results.csv``, ``table.txt``, the recipes and the two plots
    (:func:`write_figures`, then :func:`write_tables`)."""
    write_figures(comparison, output, env)
    write_tables(comparison, output)


def write_figures(comparison: Comparison, output: Path, env: Any | None = None) -> None:
    """Write the recipes and the two plots.

    Each recipe (``recipes/<method>-<target>.json``) records the env's post-pruning steps
    (BatchNorm re-calibration), so ``prune-gym export --recipe`` writes a model that scores
    what the table says; ``env`` is the env the methods ran through (for that record).
    """
    output.mkdir(parents=True, exist_ok=True)
    matched = comparison.metadata["matched"]
    bn_batches = prune_env_of(env).bn_recalibration_batches if env is not None else matched.get("bn_recalibration_batches", 0)
    write_recipes(comparison.results, output / "recipes", comparison.env_id, bn_batches, matched.get("env_kwargs", {}))
    plot_accuracy(comparison, output / "accuracy_vs_sparsity.png")
    plot_layer_sparsity(comparison, output / "layer_sparsity.png")


def write_tables(comparison: Comparison, output: Path) -> None:
    """Write ``results.json``, ``results.csv`` and ``table.txt``."""
    output.mkdir(parents=True, exist_ok=True)
    record = {**comparison.metadata, "results": [row.to_json() for row in comparison.results]}
    atomic_write_json(output / "results.json", record)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_CSV_FIELDS)
    writer.writeheader()
    for row in comparison.results:
        values = row.to_json()
        writer.writerow({key: json.dumps(values[key]) if isinstance(values[key], dict) else values[key]
                         for key in _CSV_FIELDS})
    atomic_write_text(output / "results.csv", buffer.getvalue())
    atomic_write_text(output / "table.txt", comparison.table + "\n")


def write_recipes(results: Sequence[MethodResult], folder: Path, env_id: str, bn_recalibration_batches: int,
                  env_kwargs: Mapping[str, Any]) -> None:
    """Each row's per-layer sparsities as ``<folder>/<method>-<target>.json``, a recipe that
    ``prune-gym export --recipe`` and ``apply_recipe`` accept, with the env's post-pruning step
    (``bn_recalibration_batches``) so the exported model scores what the row says, and the env
    kwargs the methods shared (``env_kwargs``: a channel env's granularity and budget, the raised
    ``max_sparsity``), so ``prune-gym validate`` and the channel export rebuild the same env."""
    for row in results:
        recipe = Recipe(
            layers=row.layer_sparsities, overall_sparsity=row.overall_sparsity,
            meta={"env_id": env_id, "env_kwargs": dict(env_kwargs), "method": row.method,
                  "target_sparsity": row.target_sparsity,
                  "bn_recalibration_batches": bn_recalibration_batches, "test_accuracy": row.test_accuracy,
                  "reward_accuracy": row.reward_accuracy, **({"fallback": row.fallback} if row.fallback else {})},
        )
        atomic_write_json(folder / recipe_name(row.method, row.target_sparsity), recipe.to_json())


def recipe_name(method: str, target: float) -> str:
    """The file a comparison writes a row's recipe to, in its ``recipes/`` folder."""
    return f"{method_slug(method)}-{target:.2f}.json"


def method_slug(method: str) -> str:
    """A method's label as a file-name part: ``"Global MP + MT"`` -> ``"global-mp-mt"``."""
    return method.lower().replace(" + ", "-").replace("(", "").replace(")", "").replace(" ", "-")


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(comparison: Comparison, path: Path) -> None:
    """Test accuracy against target sparsity, one line per method (and after fine-tuning)."""
    plt = pyplot()
    methods = list(dict.fromkeys(row.method for row in comparison.results))
    finetuned = any(row.finetuned_test_accuracy is not None for row in comparison.results)
    panels = [("test accuracy (one-shot)", "test_accuracy")]
    if finetuned:
        epochs = comparison.metadata["finetune_epochs"]
        panels.append((f"after {epochs} epoch{'s' if epochs != 1 else ''} of masked fine-tuning", "finetuned_test_accuracy"))
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    for axis, (title, key) in zip(axes[0], panels, strict=True):
        for method in methods:
            rows = sorted((r for r in comparison.results if r.method == method), key=lambda r: r.target_sparsity)
            axis.plot([100 * r.target_sparsity for r in rows], [100 * getattr(r, key) for r in rows], marker="o", label=method)
        dense = comparison.metadata["dense_test_accuracy"]
        if dense == dense:  # not NaN
            axis.axhline(100 * dense, color="grey", linestyle="--", linewidth=1, label="dense")
        axis.set_xlabel(comparison.metadata.get("target_label", "overall sparsity") + " (%)")
        axis.set_ylabel("test accuracy (%)")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(comparison.env_id)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_layer_sparsity(comparison: Comparison, path: Path) -> None:
    """Per-layer sparsity of the agent against Global MP and the strongest zero-cost rule at each
    target (when it is another), one panel per target."""
    plt = pyplot()
    agent_label = next(row.method for row in comparison.results if row.method.endswith("(greedy)"))
    best_label = agent_label.replace("(greedy)", "(best found)")
    targets = list(dict.fromkeys(row.target_sparsity for row in comparison.results))
    figure, axes = plt.subplots(len(targets), 1, figsize=(10, 2.4 * len(targets) + 0.6), squeeze=False)
    # One colour per role in every panel (the strongest rule changes with the target), so one
    # legend reads right for all of them.
    anchor = comparison.metadata.get("anchor_rule", "Global MP")  # the registry's first rule
    colours = {anchor: "tab:blue", agent_label: "tab:orange", best_label: "tab:green"}
    legend: dict[str, Any] = {}
    for axis, target in zip(axes[:, 0], targets, strict=True):
        strongest = (comparison.metadata.get("strongest_heuristic") or {}).get(target_key(target))
        bars = [comparison.result(anchor, target)]
        if strongest not in (None, anchor):
            bars.append(comparison.result(strongest, target))
        bars.append(comparison.result(agent_label, target))
        bars += [row for row in comparison.results if row.method == best_label and row.target_sparsity == target]
        names = list(bars[0].layer_sparsities)
        positions = range(len(names))
        width = 0.8 / len(bars)
        for offset, row in enumerate(bars):
            shift = (offset - (len(bars) - 1) / 2) * width
            role = row.method if row.method in colours else "the strongest rule"
            label = row.method if role != "the strongest rule" else "the strongest rule at the target (reward split)"
            legend[label] = axis.bar([p + shift for p in positions], [100 * row.layer_sparsities[n] for n in names], width,
                                     color=colours.get(role, "tab:purple"))
        axis.set_ylabel("sparsity (%)")
        axis.set_ylim(0, 100)
        axis.set_title(
            f"target {100 * target:.0f}%: test accuracy "
            + ", ".join(f"{row.method} {percent(row.test_accuracy)}%" for row in bars), fontsize=9,
        )
        axis.set_xticks(list(positions))
        axis.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
        axis.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(list(legend.values()), list(legend), fontsize=8, loc="upper left", bbox_to_anchor=(1.005, 1.0))
    figure.suptitle(f"{comparison.env_id}: per-layer sparsity")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
