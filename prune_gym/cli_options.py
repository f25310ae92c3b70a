"""The ``prune-gym`` command's shared pieces: the choices spelt out so that ``--help`` needs no
torch, argument types checked before any work starts, the options several subcommands take and
what they become (env kwargs), and the one-line messages for errors the user can fix."""

from __future__ import annotations

import argparse
import os

from prune_gym.errors import ConfigError, Error

# prune_gym.envs.actions.ACTION_MODES, spelt out so `--help` need not import torch (a test
# checks that the two agree).
ACTION_MODE_CHOICES = ("relative", "absolute")
# prune_gym.allocation.ALLOCATION_METHODS (= agents.policies.REFERENCE_POLICIES), likewise.
POLICY_CHOICES = ("global-mp", "global-mp+mt", "lamp", "erk", "uniform", "uniform+", "random")
# prune_gym.channel_allocation.CHANNEL_METHODS, likewise (those not already above).
CHANNEL_POLICY_CHOICES = ("global-norm",)
# prune_gym.workflows.compare.DEFAULT_SPARSITIES, likewise.
DEFAULT_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)
# prune_gym.envs.channel_env.BUDGETS, likewise.
BUDGET_CHOICES = ("flops", "params", "latency")


def whole_number_at_least(minimum: int):
    """An argparse type: a whole number >= ``minimum`` (checked before any work starts)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text}")
        return value

    return parse


positive_int = whole_number_at_least(1)
count_arg = whole_number_at_least(0)


def writable_file_arg(text: str) -> str:
    """A path whose folder exists, checked before any work (not after a long run)."""
    folder = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"the folder of {text} does not exist: create it first")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a folder: give a file path")
    return text


def sparsity_arg(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"sparsity must be a fraction in [0, 1), e.g. 0.8; got {text}")
    return value


def set_threads(args: argparse.Namespace) -> None:
    import torch

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)


def hyperparams_by_algo(items: list[str]) -> dict[str, str]:
    """``sweep --hyperparams dqn=a.yml ppo=b.yml`` as ``{"dqn": "a.yml", "ppo": "b.yml"}``."""
    hyperparams = {}
    for item in items:
        algo, sep, path = item.partition("=")
        if not sep or not algo or not path:
            raise ConfigError(f"--hyperparams takes ALGO=YAML, e.g. dqn=my_dqn.yml; got {item!r}")
        hyperparams[algo.lower()] = path
    return hyperparams


def env_kwargs_from(args: argparse.Namespace) -> dict:
    set_threads(args)
    kwargs = {"device": args.device}
    if getattr(args, "action_type", None):
        kwargs["action_type"] = args.action_type
    if getattr(args, "action_mode", None):
        kwargs["action_mode"] = args.action_mode
    if getattr(args, "reward", None):
        kwargs["reward"] = args.reward
    if getattr(args, "reference", None):
        kwargs["reference"] = args.reference
    if getattr(args, "max_sparsity", None) is not None:
        kwargs["max_sparsity"] = args.max_sparsity
    channel_options = {key: value for key, value in (("budget", getattr(args, "budget", None)),
                                                     ("channel_multiple", getattr(args, "channel_multiple", None)))
                       if value is not None}
    if channel_options:
        from prune_gym.registration import is_channel_env

        if not is_channel_env(args.env):
            flags = ", ".join("--" + key.replace("_", "-") for key in channel_options)
            raise ConfigError(f"{flags}: for channel envs (Prune<Task>Channels-v1); {args.env} prunes weights "
                              "to an overall sparsity")
        kwargs.update(channel_options)
    return kwargs


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads", type=positive_int, default=1, metavar="N",
        help="torch CPU threads (default: 1, the fastest for small models and on a shared CPU; "
        "raise it for large models on a free CPU)",
    )


def add_agent_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--algo", default="dqn", help="dqn (default), ppo, a2c; sac, td3, ddpg with continuous actions")
    parser.add_argument("--timesteps", type=count_arg, metavar="N", help="training steps in total (default: the hyperparameters' n_timesteps)")
    parser.add_argument("--hyperparams", metavar="YAML", help="rl-zoo3 style hyperparameter file (default: the shipped one for --algo)")
    parser.add_argument("--action-type", choices=("discrete", "continuous"), help="the agent's action type (default: the first --algo allows)")
    parser.add_argument("--action-mode", choices=ACTION_MODE_CHOICES, help="relative: steps around the reference allocation (the env's default); absolute: sparsity levels (v0's)")
    parser.add_argument("--reference", choices=POLICY_CHOICES, help="the allocation the agent's relative actions step around and the local search starts from (default: the hyperparameters' env_kwargs, else the env's: global-mp)")
    parser.add_argument("--reward", help="reward function: purl (default), terminal, accuracy-sparsity, flops")
    parser.add_argument("--max-sparsity", type=float, metavar="S", help="highest per-layer sparsity (default: the env's, 0.99)")
    parser.add_argument("--budget", choices=BUDGET_CHOICES, help="channel envs: what --sparsity counts, the share of "
                        "FLOPs (default), parameters or latency predicted by a per-layer table measured here removed")
    parser.add_argument("--channel-multiple", type=positive_int, metavar="N", help="channel envs: every pruned group "
                        "keeps a multiple of N channels (default: the env's, 1); 16 on an AVX-512 CPU (8 with AVX2) "
                        "lets onnxruntime run the smaller network with its fast blocked kernels")
    parser.add_argument("--device", default="auto", help="where the pruned model runs: auto (CUDA if present), cpu, cuda (default: auto)")
    parser.add_argument("--seed", type=int, default=0, help="agent and target-draw seed (default: 0)")
    parser.add_argument("--n-envs", type=positive_int, metavar="N", help="envs the agent trains in, in parallel, one process each (default: the hyperparameters' n_envs, else 1)")
    add_threads_argument(parser)
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", help="no TensorBoard logs")



def machine_fault(error: Exception) -> str | None:
    """The one-line message for a fault of the machine (a full disk, a read-only file system, an
    I/O error), naming the path; None for anything else."""
    import errno

    if not isinstance(error, OSError) or error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO):
        return None
    path = error.filename or "a file"
    return f"{error.strerror or error} while writing {path}: free space or choose another folder (--output); " \
        "files written before stay whole"


def user_error(error: Exception) -> str | None:
    """The one-line message for an error the user can fix (None: a bug, show the traceback)."""
    import pickle
    import zipfile

    import gymnasium
    import yaml

    if isinstance(error, gymnasium.error.Error):
        return f"{error} (`prune-gym envs` lists the registered ids)"
    if isinstance(error, yaml.YAMLError):
        return f"the hyperparameter file is not valid YAML: {error}"
    first_line = (str(error).strip().splitlines() or [""])[0]
    if isinstance(error, pickle.UnpicklingError | EOFError | zipfile.BadZipFile):
        return (f"a file could not be read ({type(error).__name__}: {first_line}): it is truncated, empty or "
                "not in the expected format; check the path (weights, agent or checkpoint) or rewrite the file")
    if isinstance(error, PermissionError | IsADirectoryError | NotADirectoryError | FileExistsError):
        return f"{first_line}: choose a path you can write to (e.g. --output)"
    if isinstance(error, ImportError) and "optional extra" in str(error):
        return str(error)  # an extra that is not installed (prune-gym sweep without ray)
    if isinstance(error, Error):  # prune-gym's own: the message names the argument or path and the fix
        return str(error)
    if isinstance(error, FileNotFoundError):  # a path the user gave that the system could not open
        return f"{error}: check the path"
    return None  # anything else is a bug: its traceback is shown
