"""The comparison workflow: a trained agent against Global MP, Global MP with MT, uniform and
random pruning, at matched sparsities, through the same environment (``prune-gym compare``).

Matched conditions: every method prunes the same model (same task, weights, split seed,
device, reward function and sparsity range) to the same overall target, and is scored on the
same reward split and test split. The agent acts in its own action type (discrete for DQN);
the reference policies act through a continuous-action env built with the same kwargs, so
Global MP's exact per-layer sparsities are reachable (a discrete env could only approximate
them by the nearest level). The env's ``max_sparsity`` is raised where Global MP needs more
at a requested sparsity, so no reference policy is clipped (the JSON records the value used).

One agent serves all targets: the target of each training episode is drawn from the requested
sparsities (``TargetSamplingWrapper``), the target is part of the observation, and the agent is
then evaluated deterministically at each target. This costs one training budget instead of one
per sparsity, which keeps the default run on ``PruneResNet20Digits-v0`` within minutes on a
2-core CPU.

Outputs (``output_dir``): ``results.json`` (everything, including per-layer sparsities),
``results.csv`` (one row per target and method), ``table.txt``, ``accuracy_vs_sparsity.png``,
``layer_sparsity.png`` (agent vs Global MP per layer at each target), the agent
(``agent/model.zip``), and ``recipes/<method>-<target>.json``: each method's per-layer
sparsities as a recipe for ``prune-gym export --recipe`` (``prune_gym.export.apply_recipe``).
"""

from __future__ import annotations

import copy
import csv
import datetime as _dt
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym

from prune_gym.agents.factory import (
    ALGORITHMS,
    _check_algo,
    default_timesteps,
    env_kwargs_from_hyperparams,
    load_hyperparams,
)
from prune_gym.agents.policies import (
    GlobalMagnitudePolicy,
    RandomPolicy,
    UniformMagnitudePolicy,
    prune_env_of,
)
from prune_gym.agents.training import (
    TargetSamplingWrapper,
    load_agent,
    make_training_env,
    train_agent,
)
from prune_gym.pruning import DEFAULT_MIN_THRESHOLD, PrunableLayer, check_sparsity

__all__ = [
    "Comparison",
    "MethodResult",
    "agent_env_kwargs_for",
    "compare",
    "finetune_and_test",
    "format_table",
    "make_reference_env",
    "run_episode",
]

DEFAULT_SPARSITIES = (0.5, 0.7, 0.8, 0.9)
#: The highest max_sparsity the workflow raises the env's range to (a layer is never emptied).
MAX_SPARSITY_CEILING = 0.999


@dataclass
class MethodResult:
    """One method pruned to one target: the last step's metrics of its episode."""

    method: str
    target_sparsity: float
    test_accuracy: float
    reward_accuracy: float
    param_sparsity: float
    flops_sparsity: float
    seconds: float
    episode_return: float
    action_type: str
    layer_sparsities: dict[str, float] = field(default_factory=dict)
    finetuned_test_accuracy: float | None = None
    finetune_seconds: float | None = None


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


def run_episode(policy: Any, env: gym.Env, target: float | None, deterministic: bool = True, method: str = "") -> MethodResult:
    """Prune with ``policy`` (anything with SB3's ``predict``) for one episode of ``env``.

    Args:
        policy: an SB3 agent or a reference policy.
        env: a prune-gym env (``gym.make(...)``), reset here with ``target``.
        target: the episode's target sparsity (None keeps the env's).
        deterministic: passed to ``predict`` (greedy actions for trained agents).
        method: the label of the result.
    """
    options = {"target_sparsity": target} if target is not None else None
    started = time.perf_counter()
    observation, _ = env.reset(options=options)
    episode_return, done, info = 0.0, False, {}
    while not done:
        action, _ = policy.predict(observation, deterministic=deterministic)
        observation, reward, terminated, truncated, info = env.step(action)
        episode_return += float(reward)
        done = terminated or truncated
    seconds = time.perf_counter() - started
    prune_env = prune_env_of(env)
    return MethodResult(
        method=method,
        target_sparsity=float(target if target is not None else prune_env.target_sparsity or 0.0),
        test_accuracy=float(info.get("test_accuracy", float("nan"))),
        reward_accuracy=float(info["reward_accuracy"]),
        param_sparsity=float(info["overall_sparsity"]),
        flops_sparsity=float(info["flops_reduction"]),
        seconds=seconds,
        episode_return=episode_return,
        action_type=prune_env.action_type,
        layer_sparsities={name: float(value) for name, value in info["layer_sparsities"].items()},
    )


def finetune_and_test(env: gym.Env, epochs: int, seed: int) -> tuple[float, float]:
    """Fine-tune a copy of the env's pruned model (masks held) and return its test accuracy."""
    from prune_gym.evaluation import evaluate_accuracy
    from prune_gym.finetune import finetune_pruned

    prune_env = prune_env_of(env)
    train_data, test_data = prune_env._train_data, prune_env._test_data
    if train_data is None or test_data is None:
        raise ValueError("--finetune-epochs needs an env with train and test splits (a task env)")
    started = time.perf_counter()
    model = copy.deepcopy(prune_env.model)
    layers = [PrunableLayer(layer.name, model.get_submodule(layer.name)) for layer in prune_env.layers]
    masks = [mask.clone() for mask in prune_env.state.masks]
    family = prune_env.task.family if prune_env.task is not None else None
    finetune_pruned(model, layers, masks, train_data, epochs, family=family, device=prune_env.device, seed=seed)
    accuracy = evaluate_accuracy(model, test_data, prune_env.device)
    return accuracy, time.perf_counter() - started


def _required_max_sparsity(reference_env: gym.Env, sparsities: Sequence[float], min_threshold: float | None) -> float:
    prune_env = prune_env_of(reference_env)
    needed = 0.0
    for target in sparsities:
        needed = max(needed, *prune_env.global_mp_sparsities(target))
        if min_threshold:
            needed = max(needed, *prune_env.global_mp_sparsities(target, min_threshold))
    return needed


def make_reference_env(
    env_id: str, targets: Sequence[float], shared: Mapping[str, Any], min_threshold: float | None,
) -> tuple[gym.Env, dict[str, Any], str]:
    """The reference policies' env (continuous actions) at ``targets[0]``, the shared kwargs and
    a note on ``max_sparsity``.

    Where Global MP (with or without the Minimum Threshold) needs a layer sparser than the env's
    ``max_sparsity`` at some target, ``max_sparsity`` is raised to cover it (and set in the
    returned kwargs, so the agent's env gets it too), unless the caller chose ``max_sparsity``
    or the need exceeds ``MAX_SPARSITY_CEILING``; then the note says that Global MP is clipped.
    """
    shared = dict(shared)
    reference_env = gym.make(env_id, action_type="continuous", target_sparsity=targets[0], **shared)
    max_sparsity = prune_env_of(reference_env).max_sparsity
    needed = _required_max_sparsity(reference_env, targets, min_threshold)
    note = f"Global MP needs at most {needed:.4f} per layer; env max_sparsity {max_sparsity}"
    if needed > max_sparsity:
        if "max_sparsity" in shared or needed > MAX_SPARSITY_CEILING:
            note += f": Global MP's per-layer sparsities above {max_sparsity} are clipped by the env"
        else:
            max_sparsity = math.ceil(needed * 1000) / 1000
            note += f", raised to {max_sparsity} so Global MP is not clipped"
            shared["max_sparsity"] = max_sparsity
            reference_env.close()
            reference_env = gym.make(env_id, action_type="continuous", target_sparsity=targets[0], **shared)
    return reference_env, shared, note


def agent_env_kwargs_for(
    algo: str, env_id: str, shared: Mapping[str, Any], action_type: str,
    hyperparams: str | os.PathLike | Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The agent's ``gym.make`` kwargs: the shared kwargs over the env kwargs its hyperparameters
    were tuned with, in ``action_type``, without a fixed target (the target is drawn per episode)."""
    kwargs = {**env_kwargs_from_hyperparams(algo, env_id, hyperparams), **shared, "action_type": action_type}
    kwargs.pop("target_sparsity", None)
    return kwargs


def compare(
    env_id: str = "PruneResNet20Digits-v0",
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    algo: str = "dqn",
    *,
    timesteps: int | None = None,
    hyperparams: str | os.PathLike | Mapping[str, Any] | None = None,
    agent_path: str | os.PathLike | None = None,
    min_threshold: float | None = DEFAULT_MIN_THRESHOLD,
    output_dir: str | os.PathLike | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    n_envs: int | None = None,
    finetune_epochs: int = 0,
    progress_bar: bool = True,
    tensorboard: bool = True,
    write_files: bool = True,
    log: Callable[[str], None] | None = print,
) -> Comparison:
    """Train (or load) an agent and compare it with the reference policies at each sparsity.

    Args:
        env_id: a registered prune-gym id.
        sparsities: the overall target sparsities to compare at.
        algo: the agent's algorithm (``prune_gym.agents.ALGORITHMS``); its action type is the
            first it allows unless ``env_kwargs`` sets ``action_type``.
        timesteps: the agent's training budget (default: the hyperparameters' ``n_timesteps``).
        hyperparams: as in :func:`prune_gym.agents.make_agent`.
        agent_path: a saved agent to evaluate instead of training one.
        min_threshold: Minimum Threshold of the "Global MP + MT" method (None leaves it out).
        output_dir: where to write the files (default ``results/<env_id>-<time>``).
        env_kwargs: extra ``gym.make`` kwargs shared by all methods (``device``, ``reward``,
            ``split_seed``, ``max_sparsity``...).
        seed: seeds the agent, the target draws and the random policy.
        n_envs: envs the agent trains in, in parallel, one process each (default: the
            hyperparameters' ``n_envs``, else 1).
        finetune_epochs: if > 0, every method's pruned model is also fine-tuned with masks for
            this many epochs (same recipe for all) and its test accuracy reported.
        progress_bar, tensorboard: for the agent's training.
        write_files: write JSON, CSV, plots and the agent (False: only return the results).
        log: where progress messages go (None: silent).
    """
    say = log or (lambda _message: None)
    started = time.perf_counter()
    targets = [check_sparsity(s, "sparsity") for s in sparsities]
    if not targets:
        raise ValueError("give at least one sparsity to compare at")
    if int(finetune_epochs) < 0:
        raise ValueError(f"finetune_epochs must be >= 0, got {finetune_epochs}")
    algo = algo.lower()
    if algo not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algo!r}: choose one of {', '.join(ALGORITHMS)}")
    shared = dict(env_kwargs or {})
    agent_action_type = shared.pop("action_type", ALGORITHMS[algo][1][0])
    _check_algo(algo, agent_action_type)
    shared.pop("target_sparsity", None)
    if output_dir is None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        output_dir = Path("results") / f"{env_id}-{stamp}"
    output = Path(output_dir)

    # -- the reference env, and a sparsity range that admits Global MP at every target -------
    say(f"building {env_id} (reference policies: continuous actions)")
    reference_env, shared, max_sparsity_note = make_reference_env(env_id, targets, shared, min_threshold)
    say(max_sparsity_note)
    agent_env_kwargs = agent_env_kwargs_for(algo, env_id, shared, agent_action_type, hyperparams)
    agent_env = gym.make(env_id, target_sparsity=targets[0], **agent_env_kwargs)
    reference = prune_env_of(reference_env)

    # -- the agent --------------------------------------------------------------------------
    train_seconds = 0.0
    if agent_path is not None:
        say(f"loading the agent from {agent_path}")
        agent = load_agent(agent_path, env=agent_env, algo=algo)
        trained_steps = int(agent.num_timesteps)
        saved_agent = Path(agent_path)
    else:
        budget = int(timesteps) if timesteps is not None else default_timesteps(algo, agent_env, hyperparams)
        if n_envs is None:
            n_envs = int(load_hyperparams(algo, env_id, hyperparams).get("n_envs", 1))
        say(f"training {algo.upper()} for {budget:,} steps ({agent_action_type} actions, {n_envs} env"
            f"{'s in parallel' if n_envs > 1 else ''}), one target per episode drawn from {targets}")
        if n_envs > 1:
            training_env = make_training_env(env_id, targets, seed=seed, n_envs=n_envs, **agent_env_kwargs)
        else:
            training_env = TargetSamplingWrapper(agent_env, targets, seed=seed)
        try:
            with tempfile.TemporaryDirectory(prefix="prune-gym-agent-") as scratch:
                run = train_agent(
                    env_id, algo, budget, output_dir=output / "agent" if write_files else scratch,
                    hyperparams=hyperparams, seed=seed, checkpoint_freq=0, progress_bar=progress_bar,
                    tensorboard=tensorboard and write_files, env=training_env, resumable=False,
                )
        finally:
            if n_envs > 1:
                training_env.close()
        agent, trained_steps, train_seconds = run.model, run.num_timesteps, run.seconds
        saved_agent = run.model_path if write_files else None
        say(f"trained {trained_steps:,} steps in {train_seconds:.0f} s")

    # -- every method at every target -------------------------------------------------------
    agent_label = f"{algo.upper()} agent"
    methods: list[tuple[str, Any, gym.Env, bool]] = [
        (agent_label, agent, agent_env, True),
        ("Global MP", GlobalMagnitudePolicy(reference_env), reference_env, True),
    ]
    if min_threshold:
        methods.append(("Global MP + MT", GlobalMagnitudePolicy(reference_env, min_threshold=min_threshold), reference_env, True))
    methods.append(("uniform", UniformMagnitudePolicy(reference_env), reference_env, True))
    methods.append(("random", RandomPolicy(reference_env, seed=seed), reference_env, False))
    results: list[MethodResult] = []
    for target in targets:
        for label, policy, env, deterministic in methods:
            row = run_episode(policy, env, target, deterministic=deterministic, method=label)
            if finetune_epochs:
                row.finetuned_test_accuracy, row.finetune_seconds = finetune_and_test(env, int(finetune_epochs), seed)
            results.append(row)
        say(f"evaluated every method at sparsity {target}")

    dense_test = reference.dense_test_accuracy if reference.dense_test_accuracy is not None else float("nan")
    metadata = {
        "env_id": env_id,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "sparsities": targets,
        "dense_test_accuracy": dense_test,
        "dense_reward_accuracy": reference.dense_reward_accuracy,
        "agent": {
            "algo": algo,
            "action_type": agent_action_type,
            "env_kwargs": agent_env_kwargs,
            "levels": None if prune_env_of(agent_env).levels is None else len(prune_env_of(agent_env).levels),
            "timesteps": trained_steps,
            "n_envs": n_envs if agent_path is None else None,
            "train_seconds": train_seconds,
            "trained_on_targets": targets,
            "evaluation": "deterministic, one episode per target",
            "path": None if saved_agent is None else str(saved_agent),
        },
        "reference_policies": {
            "action_type": "continuous",
            "why": "Global MP's exact per-layer sparsities are reachable only with continuous actions",
            "random": "per-layer sparsity uniform in [min_sparsity, max_sparsity], one seeded episode",
            "min_threshold": min_threshold,
        },
        "matched": {
            "task": reference.task.name if reference.task is not None else None,
            "split_seed": shared.get("split_seed", 0),
            "device": str(reference.device),
            "reward": reference.reward_name,
            "min_sparsity": reference.min_sparsity,
            "max_sparsity": reference.max_sparsity,
            "max_sparsity_note": max_sparsity_note,
            "env_kwargs": {k: v for k, v in shared.items()},
            "same model, reward split, test split and target for every method": True,
        },
        "finetune_epochs": int(finetune_epochs),
        "total_seconds": None,
    }
    metadata["total_seconds"] = time.perf_counter() - started
    table = format_table(results, metadata)
    comparison = Comparison(env_id, results, metadata, output if write_files else None, table)
    if write_files:
        output.mkdir(parents=True, exist_ok=True)
        if agent_path is not None:
            # Keep a copy of the compared agent next to the results.
            (output / "agent").mkdir(exist_ok=True)
            agent.save(output / "agent" / "model.zip")
        write_results(comparison, output)
        metadata["total_seconds"] = time.perf_counter() - started
        write_results(comparison, output)  # again, with the total time including the plots
        say(f"wrote {output}/results.json, results.csv, accuracy_vs_sparsity.png, layer_sparsity.png, agent/model.zip")
    reference_env.close()
    agent_env.close()
    return comparison


# ------------------------------------------------------------------------------------------------
# Table and files


def _percent(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.{digits}f}"


def format_table(results: Sequence[MethodResult], metadata: Mapping[str, Any]) -> str:
    """The comparison as a plain-text table (accuracies and sparsities in %)."""
    agent = metadata["agent"]
    lines = [
        f"{metadata['env_id']}: dense test accuracy {_percent(metadata['dense_test_accuracy'])}%, "
        f"reward-split accuracy {_percent(metadata['dense_reward_accuracy'])}%",
        f"agent: {agent['algo'].upper()}, {agent['timesteps']:,} steps ({agent['action_type']} actions"
        + (f", {agent['levels']} levels" if agent.get("levels") else "")
        + f", trained in {agent['train_seconds']:.0f} s), evaluated deterministically; reference policies "
        f"act through a continuous-action env with the same task, split, target, device and "
        f"max_sparsity {metadata['matched']['max_sparsity']}",
        "",
    ]
    finetuned = any(row.finetuned_test_accuracy is not None for row in results)
    header = ["target", "method", "test acc", "reward acc", "param sparsity", "FLOPs sparsity", "time (s)"]
    if finetuned:
        header.insert(3, f"after FT ({metadata['finetune_epochs']} ep)")
    rows = [header]
    previous = None
    for row in results:
        cells = [
            _percent(row.target_sparsity, 0) + "%" if row.target_sparsity != previous else "",
            row.method,
            _percent(row.test_accuracy),
            _percent(row.reward_accuracy),
            _percent(row.param_sparsity, 2),
            _percent(row.flops_sparsity, 2),
            f"{row.seconds:.2f}",
        ]
        if finetuned:
            cells.insert(3, _percent(row.finetuned_test_accuracy))
        rows.append(cells)
        previous = row.target_sparsity
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    numeric = set(range(2, len(header)))
    for index, cells in enumerate(rows):
        text = "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        lines.append(text.rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(f"accuracies and sparsities in %; time = one pruning episode; total {metadata['total_seconds']:.0f} s")
    return "\n".join(lines)


_CSV_FIELDS = (
    "target_sparsity", "method", "test_accuracy", "reward_accuracy", "param_sparsity", "flops_sparsity",
    "seconds", "episode_return", "action_type", "finetuned_test_accuracy", "finetune_seconds",
)


def write_results(comparison: Comparison, output: Path) -> None:
    """Write ``results.json``, ``results.csv`` and the two plots into ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    record = {**comparison.metadata, "results": [asdict(row) for row in comparison.results]}
    (output / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    with (output / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=_CSV_FIELDS)
        writer.writeheader()
        for row in comparison.results:
            values = asdict(row)
            writer.writerow({key: values[key] for key in _CSV_FIELDS})
    (output / "table.txt").write_text(format_table(comparison.results, comparison.metadata) + "\n")
    # Per-layer sparsities as recipes that `prune-gym export --recipe` and apply_recipe accept.
    recipes = output / "recipes"
    recipes.mkdir(exist_ok=True)
    for row in comparison.results:
        slug = row.method.lower().replace(" + ", "-").replace(" ", "-")
        path = recipes / f"{slug}-{row.target_sparsity:.2f}.json"
        path.write_text(json.dumps(row.layer_sparsities, indent=2) + "\n")
    plot_accuracy(comparison, output / "accuracy_vs_sparsity.png")
    plot_layer_sparsity(comparison, output / "layer_sparsity.png")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(comparison: Comparison, path: Path) -> None:
    """Test accuracy against target sparsity, one line per method (and after fine-tuning)."""
    plt = _pyplot()
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
        axis.set_xlabel("overall sparsity (%)")
        axis.set_ylabel("test accuracy (%)")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(comparison.env_id)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_layer_sparsity(comparison: Comparison, path: Path) -> None:
    """Per-layer sparsity of the agent against Global MP, one panel per target."""
    plt = _pyplot()
    agent_label = next(row.method for row in comparison.results if row.method.endswith("agent"))
    targets = list(dict.fromkeys(row.target_sparsity for row in comparison.results))
    figure, axes = plt.subplots(len(targets), 1, figsize=(10, 2.4 * len(targets) + 0.6), squeeze=False)
    for axis, target in zip(axes[:, 0], targets, strict=True):
        agent = comparison.result(agent_label, target)
        global_mp = comparison.result("Global MP", target)
        names = list(global_mp.layer_sparsities)
        positions = range(len(names))
        width = 0.4
        axis.bar([p - width / 2 for p in positions], [100 * global_mp.layer_sparsities[n] for n in names], width, label="Global MP")
        axis.bar([p + width / 2 for p in positions], [100 * agent.layer_sparsities[n] for n in names], width, label=agent_label)
        axis.set_ylabel("sparsity (%)")
        axis.set_ylim(0, 100)
        axis.set_title(
            f"target {100 * target:.0f}%: test accuracy Global MP {_percent(global_mp.test_accuracy)}%, "
            f"{agent_label} {_percent(agent.test_accuracy)}%", fontsize=9,
        )
        axis.set_xticks(list(positions))
        axis.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
        axis.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=8, loc="upper left")
    figure.suptitle(f"{comparison.env_id}: per-layer sparsity")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
