"""The ``prune-gym`` command.

Each subcommand has an ``_add_<name>`` function that declares its arguments and sets
``handler``; the work itself lives in the package modules (imported lazily, so ``prune-gym
--help`` is fast).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence

from prune_gym.cli_options import (
    ACTION_MODE_CHOICES,
    CHANNEL_POLICY_CHOICES,
    DEFAULT_SPARSITIES,
    POLICY_CHOICES,
    add_agent_arguments,
    add_threads_argument,
    count_arg,
    env_kwargs_from,
    hyperparams_by_algo,
    machine_fault,
    positive_int,
    set_threads,
    sparsity_arg,
    user_error,
    writable_file_arg,
)
from prune_gym.errors import ConfigError


def _add_envs(subparsers) -> None:
    parser = subparsers.add_parser("envs", help="list the registered environments and what they need")
    parser.set_defaults(handler=_run_envs)


def _run_envs(args: argparse.Namespace) -> int:
    from prune_gym.tasks import list_tasks

    rows = [("env id", "channel env id", "task", "layers", "AMP on CUDA", "data", "weights", "note")]
    for task in list_tasks():
        available = task.availability()
        rows.append(
            (
                task.env_id,
                task.channel_env_id or "-",
                f"{task.architecture} / {task.dataset}",
                str(task.num_prunable_layers),
                "on" if task.amp else "off",
                "yes" if available.data else "no",
                "yes" if available.weights else "no",
                available.detail,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def _add_pretrain(subparsers) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="train a task's model from scratch and save it where the task loads its weights",
        description=(
            "Train TASK's architecture on its train split with the task's own recipe (Task.pretrain_recipe), "
            "report the test accuracy and save the weights (by default to the path the task "
            "loads them from). A checkpoint <output>.partial is written after every epoch: "
            "after Ctrl-C, run the same command with --resume to continue."
        ),
    )
    parser.add_argument("task", metavar="TASK", help="task name or env id, e.g. fastgrnn-har2 (see `prune-gym envs`)")
    parser.add_argument("--data-dir", metavar="DIR", help="the task's data folder (else its environment variable)")
    parser.add_argument("--epochs", type=int, metavar="N", help="number of epochs (default: the recipe's)")
    parser.add_argument("--output", metavar="PATH", help="where to save the weights (default: the task's weights path)")
    parser.add_argument("--resume", action="store_true", help="continue from <output>.partial")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--seed", type=int, default=0, help="split, initialisation and shuffling seed (default: 0)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.set_defaults(handler=_run_pretrain)


def _run_pretrain(args: argparse.Namespace) -> int:
    from prune_gym.workflows.pretrain import pretrain

    path = pretrain(args.task, data_dir=args.data_dir, epochs=args.epochs, output=args.output, resume=args.resume,
                    device=args.device, progress=args.progress, seed=args.seed)
    print(path)
    return 0


def _add_export(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="prune a task's trained model, optionally fine-tune it, and save checkpoint + recipe",
        description=(
            "Load TASK's trained model, prune it (an allocation method: Global MP, LAMP, ERK, uniform, "
            "uniform+..., or a recipe of per-layer sparsities such as an agent's), optionally fine-tune it with its masks, "
            "report test accuracy before and after, and write the checkpoint to --output and the "
            "per-layer sparsity recipe to <output>.recipe.json. For a channel env (...Channels-v1): a "
            "channel rule at --sparsity (FLOPs removed) or a recipe that compare wrote; --output is a "
            "folder that gets the physically smaller network (model.pt, load_slim), model.onnx and "
            "export.json, with its test accuracy checked against the env's and its CPU latency "
            "measured beside the dense network's."
        ),
    )
    parser.add_argument("task", metavar="ENV_OR_TASK", help="task name or env id, e.g. resnet20-digits (see `prune-gym envs`)")
    parser.add_argument("--policy", choices=POLICY_CHOICES + CHANNEL_POLICY_CHOICES, help="allocation method (default: global-mp): " + ", ".join(POLICY_CHOICES) + "; for a ...Channels-v1 env a channel rule: " + ", ".join(CHANNEL_POLICY_CHOICES))
    parser.add_argument("--sparsity", type=float, metavar="S", help="target fraction of prunable weights removed, e.g. 0.8 (a channel env: of FLOPs, e.g. 0.5)")
    parser.add_argument("--min-threshold", type=float, metavar="M", help="Global MP Minimum Threshold, e.g. 0.0005 (0.05%% of all weights per layer)")
    parser.add_argument("--recipe", metavar="JSON", help="prune with this recipe of per-layer sparsities instead of a policy")
    parser.add_argument("--finetune-epochs", type=int, default=0, metavar="N", help="masked fine-tuning epochs (default: 0)")
    parser.add_argument("--gradual-steps", type=int, default=1, metavar="K", help="Global MP in K steps on the cubic schedule, fine-tuning --finetune-epochs after each (default: 1, one-shot)")
    parser.add_argument("--bn-recalibration-batches", type=count_arg, metavar="N", help="re-estimate BatchNorm statistics on N batches of 256 train images after pruning, as the env does (default: the recipe's recorded value, else the env's default: 1 for digits, 0 elsewhere)")
    parser.add_argument("--output", required=True, metavar="PATH", help="checkpoint path, e.g. pruned.pt")
    parser.add_argument("--weights", metavar="PATH", help="the task's trained weights (else its default)")
    parser.add_argument("--data-dir", metavar="DIR", help="the task's data folder (else its environment variable)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--seed", type=int, default=0, help="fine-tuning seed (default: 0)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted fine-tuning of the same command")
    add_threads_argument(parser)
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.set_defaults(handler=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from prune_gym.registration import is_channel_env
    from prune_gym.workflows.export_task import export_task

    set_threads(args)  # the latency measured, and the fine-tuning, run on these threads
    if is_channel_env(args.task):
        return _run_channel_export(args)

    result = export_task(
        args.task, args.output, policy=args.policy, sparsity=args.sparsity, min_threshold=args.min_threshold,
        recipe=args.recipe, finetune_epochs=args.finetune_epochs, gradual_steps=args.gradual_steps,
        bn_recalibration_batches=args.bn_recalibration_batches, weights=args.weights, data_dir=args.data_dir,
        device=args.device, seed=args.seed, progress=args.progress, resume=args.resume,
    )

    def percent(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.2f}%"

    print(f"{result.meta['task']}: {result.method} at sparsity {result.sparsity:.4f}"
          f" (BatchNorm re-calibrated on {result.bn_recalibration_batches} x 256 train images)"
          if result.bn_recalibration_batches else f"{result.meta['task']}: {result.method} at sparsity {result.sparsity:.4f}")
    print(f"  test accuracy  dense {percent(result.accuracy_dense)}  pruned {percent(result.accuracy_pruned)}"
          f"  fine-tuned {percent(result.accuracy_finetuned)}")
    print(f"  checkpoint     {result.checkpoint}: test accuracy {percent(result.accuracy_exported)} (loaded back as written)")
    print(f"  recipe         {result.recipe}")
    print("  load it with   prune_gym.export.load_pruned(path, model)")
    print("  note           pruned weights are zeros in dense tensors: dense kernels run no faster, so the "
          "sparsity is a theoretical saving; for a smaller, faster network prune channels (the ...Channels-v1 ids)")
    return 0


def _run_channel_export(args: argparse.Namespace) -> int:
    from prune_gym.channel_export import export_channel_task

    unsupported = [flag for flag, given in (("--min-threshold", args.min_threshold is not None),
                                            ("--gradual-steps", args.gradual_steps != 1),
                                            ("--bn-recalibration-batches", args.bn_recalibration_batches is not None),
                                            ("--resume", args.resume)) if given]
    if unsupported:
        raise ConfigError(f"{', '.join(unsupported)}: weight pruning's options, not for a channel env")
    result, extra = export_channel_task(
        args.task, args.output, policy=args.policy, sparsity=args.sparsity, recipe=args.recipe,
        finetune_epochs=args.finetune_epochs, weights=args.weights, data_dir=args.data_dir, device=args.device,
        seed=args.seed,
    )
    print(result.summary())
    if extra:
        onnx = f" and {args.output}/model-finetuned.onnx" if "finetuned_onnx_max_difference" in extra else ""
        print(f"fine-tuned {args.finetune_epochs} epoch(s): test accuracy {100 * extra['finetuned_test_accuracy']:.2f}% "
              f"({args.output}/model-finetuned.pt{onnx}; the same architecture, so the latency above holds for it)")
    print("load it with   prune_gym.channel_export.load_slim(path, task.build_model(), example_input)")
    return 0


def _add_train(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train an SB3 agent (DQN by default) on an env, with checkpoints and TensorBoard logs",
        description=(
            "Train an agent on ENV. Writes <output>/model.zip, periodic checkpoints in "
            "<output>/checkpoints and TensorBoard logs in <output>/tensorboard. Ctrl-C saves a "
            "checkpoint; run the same command with --resume to continue from the newest one "
            "(--timesteps is the total, so no step is lost or repeated)."
        ),
    )
    parser.add_argument("env", metavar="ENV", help="env id, e.g. PruneResNet20Digits-v1 (see `prune-gym envs`)")
    add_agent_arguments(parser)
    parser.add_argument("--sparsity", type=sparsity_arg, nargs="+", metavar="S", help="target sparsity; several: one drawn per episode (default: the env's, 0.8)")
    parser.add_argument("--output", metavar="DIR", help="run folder (default: runs/<ENV>-<algo>)")
    parser.add_argument("--checkpoint-freq", type=count_arg, default=5000, metavar="N", help="save a checkpoint every N steps (default: 5000; 0: only at the end)")
    parser.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT", help="continue from the newest complete checkpoint in the run folder named by --output (or from CHECKPOINT). Unpickles that checkpoint (an SB3 zip) and its replay buffer (.pkl) beside it, which can run code: resume only from files you trust")
    parser.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from prune_gym.agents.factory import ALGORITHMS, algo_name
    from prune_gym.agents.training import train_agent

    algo = algo_name(args.algo)
    if args.resume is True and args.output is None:
        # Checkpoints are pickles: load only from a folder the user names, never one found here.
        raise ConfigError("--resume continues the run in the folder you name: add --output DIR (or give --resume CHECKPOINT)")
    env_kwargs = env_kwargs_from(args)
    env_kwargs.setdefault("action_type", ALGORITHMS[algo][1][0])
    result = train_agent(
        args.env, algo, args.timesteps, output_dir=args.output, hyperparams=args.hyperparams,
        targets=args.sparsity, env_kwargs=env_kwargs, seed=args.seed, checkpoint_freq=args.checkpoint_freq,
        resume=args.resume, progress_bar=args.progress, tensorboard=args.tensorboard, n_envs=args.n_envs,
    )
    if result.resumed_from is not None:
        print(f"resumed from {result.resumed_from}")
    print(f"{algo.upper()}: {result.num_timesteps:,} steps, this run {result.seconds:.0f} s; saved {result.model_path}")
    if args.tensorboard:
        print(f"TensorBoard: tensorboard --logdir {result.output_dir / 'tensorboard'}")
    return 0


def _add_baseline(subparsers) -> None:
    parser = subparsers.add_parser(
        "baseline",
        help="run an allocation method (Global MP, LAMP, ERK, uniform+, ...) through an env at one sparsity",
        description=(
            "Prune ENV's model with an allocation method through the environment, exactly as an "
            "agent would, and report test and reward-split accuracy, parameter and FLOPs "
            "sparsity and the per-layer sparsities. Continuous actions by default, so Global "
            "MP's per-layer sparsities are applied exactly."
        ),
    )
    parser.add_argument("env", metavar="ENV", help="env id, e.g. PruneResNet20Digits-v1 (see `prune-gym envs`)")
    parser.add_argument("--policy", default="global-mp", choices=POLICY_CHOICES, help="allocation method (default: global-mp): " + ", ".join(POLICY_CHOICES))
    parser.add_argument("--sparsity", type=sparsity_arg, required=True, metavar="S", help="overall target sparsity, e.g. 0.8")
    parser.add_argument("--min-threshold", type=float, metavar="M", help="Global MP Minimum Threshold, e.g. 0.0005 (0.05%% of all weights per layer)")
    parser.add_argument("--action-type", default="continuous", choices=("discrete", "continuous"), help="env action type (default: continuous, exact)")
    parser.add_argument("--action-mode", default="absolute", choices=ACTION_MODE_CHOICES, help="env action mode (default: absolute, so every policy's sparsities are exact)")
    parser.add_argument("--max-sparsity", type=float, metavar="S", help="highest per-layer sparsity (default: the env's, 0.99)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda (default: auto)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random policy (default: 0)")
    add_threads_argument(parser)
    parser.add_argument("--json", type=writable_file_arg, metavar="PATH", help="also write the result as JSON")
    parser.set_defaults(handler=_run_baseline)


def _run_baseline(args: argparse.Namespace) -> int:

    import gymnasium as gym

    from prune_gym.agents.policies import reference_policy
    from prune_gym.agents.report import format_episode
    from prune_gym.agents.rollout import run_episode

    if args.min_threshold is not None and args.policy not in ("global-mp", "global-mp+mt"):
        raise ConfigError("--min-threshold applies to --policy global-mp / global-mp+mt only")
    env = gym.make(args.env, target_sparsity=args.sparsity, **env_kwargs_from(args))
    label, policy, deterministic = reference_policy(args.policy, env, seed=args.seed, min_threshold=args.min_threshold)
    result = run_episode(policy, env, args.sparsity, deterministic=deterministic, method=label)
    prune_env = env.unwrapped
    print(format_episode(args.env, result, prune_env))
    if args.json:
        from prune_gym.io import atomic_write_json

        record = {"env_id": args.env, "dense_test_accuracy": prune_env.dense_test_accuracy, **result.to_json()}
        atomic_write_json(args.json, record)
        print(f"wrote {args.json}")
    env.close()
    return 0


def _add_compare(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="train (or load) an agent and compare it with every allocation rule and a search at equal cost",
        description=(
            "Train one agent across the given sparsities (a target drawn per episode), or load one "
            "with --agent, then prune with the agent, a local search at equal cost and every "
            "allocation rule (Global MP, Global MP + MT, LAMP, ERK, uniform, uniform+, random) at every "
            "sparsity through the same env (continuous actions for all but the agent, so every "
            "allocation is exact). On a channel env (...Channels-v1) the targets are shares of FLOPs "
            "removed, the rules are the channel rules (global L2 norm, LAMP, uniform, random) and every "
            "row has the measured CPU latency of its physically smaller network. The agent's best found and the search's best are kept only where "
            "they beat the strongest rule on the reward split by more than noise (else that rule's "
            "allocation, marked). Prints a table with paired tests against the strongest rule and "
            "writes results.json, results.csv, accuracy_vs_sparsity.png, layer_sparsity.png, recipes/ "
            "and the agent to --output."
        ),
    )
    parser.add_argument("env", metavar="ENV", help="env id, e.g. PruneResNet20Digits-v1 (see `prune-gym envs`)")
    parser.add_argument("--sparsity", type=sparsity_arg, nargs="+", metavar="S", help="targets (default: 0.5 0.7 0.8 0.9 0.95, the weights' overall sparsity; for a ...Channels-v1 env 0.3 0.5 0.7, the share of FLOPs removed)")
    add_agent_arguments(parser)
    parser.add_argument("--agent", metavar="ZIP", help="evaluate this saved agent instead of training one: unpickles this file only (an SB3 zip, which can run code: load only files you trust); the best_found.json beside it (JSON) brings its best-found recipes")
    parser.add_argument("--min-threshold", type=float, metavar="M", help="Minimum Threshold of 'Global MP + MT' (default: the paper's 0.05%%, pruning.DEFAULT_MIN_THRESHOLD; 0 leaves the method out)")
    parser.add_argument("--finetune-epochs", type=count_arg, default=0, metavar="N", help="also fine-tune every method's pruned model for N epochs with its masks (default: 0)")
    parser.add_argument("--no-search", dest="search", action="store_false", help="leave out the search baseline at equal cost (local search around the agent env's reference allocation with as many env episodes as the agent trained)")
    parser.add_argument("--output", metavar="DIR", help="output folder (default: results/<ENV>-<time>)")
    parser.set_defaults(handler=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    from prune_gym.pruning import DEFAULT_MIN_THRESHOLD
    from prune_gym.workflows.compare import compare

    min_threshold = DEFAULT_MIN_THRESHOLD if args.min_threshold is None else args.min_threshold
    comparison = compare(
        args.env, args.sparsity, args.algo, timesteps=args.timesteps, hyperparams=args.hyperparams,
        agent_path=args.agent, min_threshold=min_threshold or None, output_dir=args.output,
        env_kwargs=env_kwargs_from(args), seed=args.seed, n_envs=args.n_envs, finetune_epochs=args.finetune_epochs,
        search=args.search, progress_bar=args.progress, tensorboard=args.tensorboard,
    )
    print()
    print(comparison.table)
    return 0


def _add_sweep(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="compare over algorithms and seeds as Ray Tune trials, here or on a Ray cluster (needs the [ray] extra)",
        description=(
            "Run compare's agent part for every (algorithm, seed) as a Ray Tune trial, the search at "
            "equal cost per seed and the reference policies once, then aggregate: a table with mean "
            "± std over seeds, results.json, results.csv, trials.csv, plots with spread bands and "
            "every trial's recipes in --output. Without --address, Ray starts on this machine. A "
            "sweep cut off (Ctrl-C, a lost node) or with failed trials goes on with --resume DIR."
        ),
    )
    parser.add_argument("env", metavar="ENV", nargs="?", help="env id, e.g. PruneResNet20Digits-v1 (not with --resume)")
    parser.add_argument("--algo", nargs="+", metavar="ALGO", help="algorithms, one trial per seed each (default: dqn)")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="N", help="seeds (default: 0)")
    parser.add_argument("--sparsity", type=sparsity_arg, nargs="+", metavar="S", help="target sparsities (default: 0.5 0.7 0.8 0.9 0.95)")
    parser.add_argument("--timesteps", type=count_arg, metavar="N", help="each agent's training steps (default: its hyperparameters' n_timesteps)")
    parser.add_argument("--hyperparams", nargs="+", metavar="ALGO=YAML", help="an rl-zoo3 style file per algorithm, e.g. dqn=my_dqn.yml (default: the shipped ones)")
    parser.add_argument("--action-type", choices=("discrete", "continuous"), help="the agents' action type (default: the first each algorithm allows)")
    parser.add_argument("--action-mode", choices=ACTION_MODE_CHOICES, help="relative (the env's default) or absolute (v0's levels)")
    parser.add_argument("--reward", help="reward function: purl (default), terminal, accuracy-sparsity, flops")
    parser.add_argument("--max-sparsity", type=float, metavar="S", help="highest per-layer sparsity (default: the env's, 0.99)")
    parser.add_argument("--min-threshold", type=float, metavar="M", help="Minimum Threshold of 'Global MP + MT' (default: 0.05%%; 0 leaves it out)")
    parser.add_argument("--finetune-epochs", type=count_arg, metavar="N", help="also fine-tune every pruned model for N epochs (default: 0)")
    parser.add_argument("--no-search", dest="search", action="store_false", default=None, help="leave out the search at equal cost")
    parser.add_argument("--n-envs", type=positive_int, metavar="N", help="envs per agent trial, one process each (default: the hyperparameters')")
    parser.add_argument("--cpus-per-trial", type=float, metavar="C", help="Tune CPUs per trial; torch threads follow (default: an agent's n_envs, else 1)")
    parser.add_argument("--gpus-per-trial", type=float, metavar="G", help="Tune GPUs per trial, fractions share a GPU; trials with one run on CUDA (default: 0)")
    parser.add_argument("--max-concurrent", type=positive_int, metavar="N", help="at most N trials at once (default: as resources allow)")
    parser.add_argument("--scheduler", choices=("fifo", "asha"), help="fifo: every trial to the end (default); asha: stop trailing agent trials early")
    parser.add_argument("--address", metavar="ADDR", help="an existing Ray cluster, e.g. auto (default: start Ray on this machine)")
    parser.add_argument("--storage", metavar="PATH_OR_URI", help="where Tune keeps the experiment: a folder or e.g. s3://bucket/sweeps (default: <output>/tune)")
    parser.add_argument("--output", metavar="DIR", help="the sweep's folder (default: results/<ENV>-sweep-<time>)")
    parser.add_argument("--resume", metavar="DIR", help="go on with the sweep in DIR: re-runs only the trials that did not finish, with its own settings")
    parser.set_defaults(handler=_run_sweep)


def _run_sweep(args: argparse.Namespace) -> int:
    from prune_gym.pruning import DEFAULT_MIN_THRESHOLD
    from prune_gym.workflows.sweeps import resume_sweep, sweep

    settings = ("env", "algo", "seeds", "sparsity", "timesteps", "hyperparams", "action_type", "action_mode", "reward",
                "max_sparsity", "min_threshold", "finetune_epochs", "search", "n_envs", "cpus_per_trial",
                "gpus_per_trial", "max_concurrent", "scheduler", "output")
    if args.resume is not None:
        given = [name for name in settings if getattr(args, name) is not None]
        if given:
            raise ConfigError(f"--resume takes the sweep's own settings (its sweep.json): leave out "
                             f"{', '.join(('ENV' if n == 'env' else '--' + n.replace('_', '-')) for n in given)}")
        result = resume_sweep(args.resume, address=args.address, storage=args.storage)
    else:
        if args.env is None:
            raise ConfigError("give the env id (e.g. PruneResNet20Digits-v1), or --resume DIR")
        hyperparams = hyperparams_by_algo(args.hyperparams or [])
        env_kwargs = {key: value for key, value in (
            ("action_type", args.action_type), ("action_mode", args.action_mode), ("reward", args.reward),
            ("max_sparsity", args.max_sparsity)) if value is not None}
        min_threshold = DEFAULT_MIN_THRESHOLD if args.min_threshold is None else args.min_threshold
        result = sweep(
            args.env, args.algo or ["dqn"], args.seeds if args.seeds is not None else [0],
            args.sparsity or list(DEFAULT_SPARSITIES), timesteps=args.timesteps, hyperparams=hyperparams,
            env_kwargs=env_kwargs, min_threshold=min_threshold or None, search=args.search is not False,
            finetune_epochs=args.finetune_epochs or 0, n_envs=args.n_envs, cpus_per_trial=args.cpus_per_trial,
            gpus_per_trial=args.gpus_per_trial or 0.0, max_concurrent=args.max_concurrent,
            scheduler=args.scheduler or "fifo", address=args.address, storage=args.storage, output_dir=args.output,
        )
    print()
    print(result.table)
    return 1 if result.incomplete else 0


def _add_validate(subparsers) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="replay what a comparison recorded (results.json rows, recipes) and check each scores what it says",
        description=(
            "Prune the dense model again with each record's per-layer sparsities, through the env the "
            "comparison used (its env id and kwargs, continuous actions), and check that the "
            "reward-split and test accuracies are the recorded ones. PATH: a comparison's folder "
            "(results.json and recipes/), a sweep's folder (its trials' recipes), a results.json, a folder "
            "of recipes or one recipe file. "
            "Exits 1 if any record does not replay to its accuracies, naming the method, the target "
            "and both accuracies. Fine-tuned accuracies are not replayed."
        ),
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="comparison folders, results.json files or recipe files")
    parser.add_argument("--tolerance", type=float, default=0.0, metavar="T", help="largest accuracy difference that passes, a fraction (default: 0, the same to the sample, as on the machine and device that made the record; e.g. 0.005 across CPU and CUDA)")
    parser.add_argument("--device", help="replay on this device: cpu, cuda (default: the recorded env kwargs', else auto)")
    add_threads_argument(parser)
    parser.set_defaults(handler=_run_validate)


def _run_validate(args: argparse.Namespace) -> int:
    from prune_gym.workflows.validate import format_replays, validate

    set_threads(args)
    replays = validate(args.paths, tolerance=args.tolerance, device=args.device)
    print(format_replays(replays))
    return 0 if all(replay.ok for replay in replays) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prune-gym",
        description="Learn to prune neural networks layer by layer with RL, and compare against Global MP.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_envs(subparsers)
    _add_pretrain(subparsers)
    _add_export(subparsers)
    _add_train(subparsers)
    _add_baseline(subparsers)
    _add_compare(subparsers)
    _add_sweep(subparsers)
    _add_validate(subparsers)
    return parser


class _StderrHandler(logging.Handler):
    """The package's log messages, as plain lines on the stderr of the moment (progress and
    notes go there; tables and results go to stdout)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr, flush=True)


def _show_library_messages() -> None:
    package_logger = logging.getLogger("prune_gym")
    package_logger.setLevel(logging.INFO)
    if not any(isinstance(handler, _StderrHandler) for handler in package_logger.handlers):
        package_logger.addHandler(_StderrHandler())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _show_library_messages()
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`prune-gym baseline ... | head`): not an error of ours. Point
        # stdout at /dev/null so the interpreter's flush at exit does not raise again.
        with contextlib.suppress(OSError, ValueError, AttributeError):  # no real descriptor: nothing to flush
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as error:
        fault = machine_fault(error)
        if fault is not None:
            # The machine's fault, not the user's input: exit 1, one line naming the path.
            print(f"prune-gym {args.command}: error: {fault}", file=sys.stderr)
            return 1
        message = user_error(error)
        if message is None:
            raise
        # Bad input, missing or unreadable files are the user's to fix: say what, not a traceback.
        print(f"prune-gym {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
