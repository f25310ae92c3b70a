"""How a sweep is reported: the trials' rows aggregated over seeds, as a table, JSON, CSV and plots.

:func:`prune_gym.workflows.sweeps.sweep` collects its trials (:class:`~prune_gym.workflows.sweeps.TrialOutcome`);
:func:`aggregate` groups their rows by (target, method) and takes the mean and the sample
standard deviation over the trials that finished (the seeds); :func:`write_sweep` writes
``table.txt``, ``results.json`` (settings, every trial with its status, error and rows, the
aggregate), ``results.csv`` (the aggregate), ``trials.csv`` (every trial's rows),
``accuracy_vs_sparsity.png`` (mean with a band of one standard deviation, each seed as a dot)
and ``learning_curves.png`` (the agents' best reward-split accuracy so far against steps).
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prune_gym.agents.report import MethodResult, percent, pyplot, text_table
from prune_gym.episode import read_episodes, target_key
from prune_gym.io import atomic_write_json, atomic_write_text

__all__ = ["AggregateRow", "SweepResult", "TrialOutcome", "aggregate", "format_sweep_table", "mean_std", "write_sweep"]


@dataclass
class TrialOutcome:
    """One trial of a sweep: what it was, how it ended and, when it finished, its record."""

    name: str
    kind: str  # "agent", "search" or "reference"
    algo: str | None
    seed: int | None
    status: str  # "finished", "failed", "stopped" (by the scheduler) or "unfinished"
    error: str | None = None
    #: ``trial.json`` of a finished trial (its rows, resources, timing).
    record: dict[str, Any] | None = None
    #: The trial's last metrics reported to Tune.
    metrics: dict[str, Any] = field(default_factory=dict)
    #: Where its files were copied in the output folder (finished trials).
    folder: Path | None = None

    def rows(self) -> list[MethodResult]:
        return [MethodResult.from_json(row, f"trial {self.name}") for row in (self.record or {}).get("rows", [])]


@dataclass
class SweepResult:
    """What :func:`sweep` produced: the aggregate rows, every trial and where it was written."""

    output_dir: Path
    settings: dict[str, Any]
    trials: list[TrialOutcome]
    rows: list[AggregateRow]
    table: str

    @property
    def incomplete(self) -> list[TrialOutcome]:
        """Trials that failed or did not finish (``resume_sweep`` re-runs them)."""
        return [t for t in self.trials if t.status in ("failed", "unfinished")]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


@dataclass
class AggregateRow:
    """One method at one target over the trials that finished (one value per seed)."""

    target_sparsity: float
    method: str
    n: int
    test_accuracy_mean: float
    test_accuracy_std: float
    reward_accuracy_mean: float
    reward_accuracy_std: float
    overall_sparsity_mean: float
    flops_reduction_mean: float
    finetuned_test_accuracy_mean: float | None = None
    finetuned_test_accuracy_std: float | None = None
    trials: list[str] = field(default_factory=list)
    test_accuracies: list[float] = field(default_factory=list)


def aggregate(trials: Sequence[TrialOutcome], targets: Sequence[float]) -> list[AggregateRow]:
    """The finished trials' rows grouped by (target, method), in the order the trials list them."""
    groups: dict[tuple[float, str], list[tuple[str, Any]]] = {}
    for trial in trials:
        if trial.status != "finished":
            continue
        for row in trial.rows():
            target = next((t for t in targets if math.isclose(t, row.target_sparsity)), row.target_sparsity)
            groups.setdefault((target, row.method), []).append((trial.name, row))
    out = []
    for target in targets:
        for (group_target, method), members in groups.items():
            if group_target != target:
                continue
            rows = [row for _, row in members]
            test = mean_std([r.test_accuracy for r in rows])
            reward = mean_std([r.reward_accuracy for r in rows])
            tuned = [r.finetuned_test_accuracy for r in rows if r.finetuned_test_accuracy is not None]
            tuned_stats = mean_std(tuned) if len(tuned) == len(rows) and tuned else (None, None)
            out.append(AggregateRow(
                target, method, len(rows), *test, *reward,
                statistics.fmean(r.overall_sparsity for r in rows), statistics.fmean(r.flops_reduction for r in rows),
                *tuned_stats, [name for name, _ in members], [r.test_accuracy for r in rows],
            ))
    return out


def _cell(mean: float | None, std: float | None, n: int) -> str:
    if mean is None:
        return "-"
    return percent(mean) + (f" ± {percent(std)}" if n > 1 else "")


def format_sweep_table(settings: Mapping[str, Any], trials: Sequence[TrialOutcome], rows: Sequence[AggregateRow],
                       seconds: float) -> str:
    """The aggregate as a plain-text table (accuracies and sparsities in %), with the trials that
    did not finish listed below it."""
    finished = [t for t in trials if t.status == "finished"]
    dense = next((t.record["dense_test_accuracy"] for t in finished), float("nan"))
    budgets = ", ".join(f"{algo.upper()} {a['timesteps']:,} steps" for algo, a in settings["agents"].items())
    lines = [
        f"{settings['env_id']} sweep {settings['sweep_id']}: {budgets}; seeds {' '.join(map(str, settings['seeds']))}; "
        f"dense test accuracy {percent(dense)}%",
        "mean ± sample std over the seeds whose trial finished (n); greedy = the agent's deterministic policy, best "
        "found = its best training episode on the reward split, replayed; reference policies once per target "
        f"(random: seed {settings['seeds'][0]})"
        + (f"; local search: {settings['search_episodes_per_target']:,} env episodes per target" if settings["search_episodes_per_target"] else ""),
        "",
    ]
    tuned = any(r.finetuned_test_accuracy_mean is not None for r in rows)
    header = ["target", "method", "n", "test acc", "reward acc", "param sparsity"]
    if tuned:
        header.insert(4, f"after FT ({settings['finetune_epochs']} ep)")
    table = [header]
    previous = None
    for row in rows:
        cells = [
            percent(row.target_sparsity, 0) + "%" if row.target_sparsity != previous else "", row.method, str(row.n),
            _cell(row.test_accuracy_mean, row.test_accuracy_std, row.n),
            _cell(row.reward_accuracy_mean, row.reward_accuracy_std, row.n), percent(row.overall_sparsity_mean, 2),
        ]
        if tuned:
            cells.insert(4, _cell(row.finetuned_test_accuracy_mean, row.finetuned_test_accuracy_std, row.n))
        table.append(cells)
        previous = row.target_sparsity
    lines += text_table(table, text_columns=2)
    lines.append("")
    for trial in trials:
        if trial.status == "stopped":
            lines.append(f"trial {trial.name}: stopped by the {settings['scheduler']} scheduler after "
                         f"{trial.metrics.get('agent_timesteps', '?'):,} steps (not averaged in)")
        elif trial.status != "finished":
            lines.append(f"trial {trial.name}: {trial.status}" + (f" ({trial.error})" if trial.error else ""))
    busy = sum(t.record["seconds"] for t in finished)
    lines.append(f"{len(finished)} of {len(trials)} trials finished; wall time {seconds:.0f} s, trials' own time "
                 f"{busy:.0f} s in all; accuracies and sparsities in %")
    return "\n".join(lines)


_CSV_FIELDS = (
    "target_sparsity", "method", "n", "test_accuracy_mean", "test_accuracy_std", "reward_accuracy_mean",
    "reward_accuracy_std", "overall_sparsity_mean", "flops_reduction_mean", "finetuned_test_accuracy_mean",
    "finetuned_test_accuracy_std",
)
_TRIAL_FIELDS = ("trial", "kind", "algo", "seed", "target_sparsity", "method", "test_accuracy", "reward_accuracy",
                 "overall_sparsity", "flops_reduction", "finetuned_test_accuracy", "seconds")


def _csv(fields: Sequence[str], records: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields))
    writer.writeheader()
    for record in records:
        writer.writerow({key: record.get(key) for key in fields})
    return buffer.getvalue()


def write_sweep(settings: Mapping[str, Any], trials: Sequence[TrialOutcome], output: Path, seconds: float) -> SweepResult:
    """Aggregate the trials and write every file of the sweep's report into ``output``."""
    rows = aggregate(trials, settings["sparsities"])
    table = format_sweep_table(settings, trials, rows, seconds)
    record = {
        "settings": dict(settings),
        "wall_seconds": seconds,
        "trials": [{"name": t.name, "kind": t.kind, "algo": t.algo, "seed": t.seed, "status": t.status, "error": t.error,
                    "metrics": _plain(t.metrics), "record": t.record} for t in trials],
        "aggregate": [asdict(row) for row in rows],
    }
    atomic_write_json(output / "results.json", record)
    atomic_write_text(output / "results.csv", _csv(_CSV_FIELDS, [asdict(r) for r in rows]))
    per_trial = [{"trial": t.name, "kind": t.kind, "algo": t.algo, "seed": t.seed, **row.to_json()}
                 for t in trials if t.status == "finished" for row in t.rows()]
    atomic_write_text(output / "trials.csv", _csv(_TRIAL_FIELDS, per_trial))
    atomic_write_text(output / "table.txt", table + "\n")
    if rows:
        plot_accuracy_bands(settings, trials, rows, output / "accuracy_vs_sparsity.png")
    plot_learning_curves(settings, trials, output / "learning_curves.png")
    return SweepResult(output, dict(settings), list(trials), rows, table)


def _plain(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Tune's metrics, JSON-safe (numbers and strings only)."""
    return {k: v for k, v in metrics.items() if isinstance(v, int | float | str | bool) or v is None}


def plot_accuracy_bands(settings: Mapping[str, Any], trials: Sequence[TrialOutcome], rows: Sequence[AggregateRow],
                        path: Path) -> None:
    """Test and reward-split accuracy against sparsity: per method the mean over seeds, a band of
    one standard deviation, and each seed's value as a dot."""
    plt = pyplot()
    methods = list(dict.fromkeys(r.method for r in rows))
    by_trial = {(t.name, row.method, row.target_sparsity): row for t in trials if t.status == "finished" for row in t.rows()}
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    for axis, (title, key) in zip(axes, (("test accuracy", "test_accuracy"), ("reward-split accuracy", "reward_accuracy"))):
        for index, method in enumerate(methods):
            colour = f"C{index % 10}"
            mine = sorted((r for r in rows if r.method == method), key=lambda r: r.target_sparsity)
            x = [100 * r.target_sparsity for r in mine]
            mean = [100 * getattr(r, f"{key}_mean") for r in mine]
            std = [100 * getattr(r, f"{key}_std") for r in mine]
            axis.plot(x, mean, marker="o", color=colour, label=f"{method} (n={max(r.n for r in mine)})")
            if any(r.n > 1 for r in mine):
                axis.fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                                  color=colour, alpha=0.15, linewidth=0)
                for r in mine:
                    values = [getattr(by_trial[(name, method, r.target_sparsity)], key) for name in r.trials]
                    axis.scatter([100 * r.target_sparsity] * len(values), [100 * v for v in values], s=8, color=colour, alpha=0.6)
        axis.set_xlabel("overall sparsity (%)")
        axis.set_ylabel(f"{title} (%)")
        axis.set_title(f"{title}: mean ± std over seeds, dots = seeds")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.suptitle(f"{settings['env_id']}: sweep {settings['sweep_id']}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def learning_curve(episodes_file: Path, targets: Sequence[float]) -> tuple[list[int], list[float]]:
    """From an agent's ``episodes.jsonl``: after each episode, the best reward-split accuracy so
    far averaged over the targets (0 for a target not yet drawn), as Tune was told."""
    keys = [target_key(t) for t in targets]
    best = dict.fromkeys(keys, 0.0)
    steps, values = [], []
    for episode in read_episodes(episodes_file):
        key = target_key(episode.target_sparsity)
        if key in best:
            best[key] = max(best[key], episode.reward_accuracy)
        steps.append(int(episode.timesteps))
        values.append(statistics.fmean(best.values()))
    return steps, values


def plot_learning_curves(settings: Mapping[str, Any], trials: Sequence[TrialOutcome], path: Path) -> None:
    """The agents' best reward-split accuracy so far against training steps, one line per
    trial (by algorithm colour); Global MP's mean over the targets as a dashed line."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.2))
    labelled: set[str] = set()
    for index, algo in enumerate(settings["algos"]):
        for trial in trials:
            file = trial.folder / "agent" / "episodes.jsonl" if trial.folder is not None else None
            if trial.algo != algo or file is None or not file.is_file():
                continue
            steps, values = learning_curve(file, settings["sparsities"])
            axis.plot(steps, [100 * v for v in values], color=f"C{index % 10}", alpha=0.8,
                      label=None if algo in labelled else algo.upper())
            labelled.add(algo)
    reference = next((t for t in trials if t.kind == "reference" and t.status == "finished"), None)
    if reference is not None:
        values = [r.reward_accuracy for r in reference.rows() if r.method == "Global MP"]
        if values:
            axis.axhline(100 * statistics.fmean(values), color="grey", linestyle="--", linewidth=1, label="Global MP")
    axis.set_xlabel("training steps")
    axis.set_ylabel("best reward-split accuracy so far (%), mean over targets")
    axis.set_title("agents' learning curves, one line per seed" if labelled else "no agent trial finished")
    axis.grid(alpha=0.3)
    if labelled or reference is not None:
        axis.legend(fontsize=8)
    figure.suptitle(f"{settings['env_id']}: sweep {settings['sweep_id']}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
