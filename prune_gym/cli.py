"""The ``prune-gym`` command.

Each subcommand has an ``_add_<name>`` function that declares its arguments and sets
``handler``; the work itself lives in the package modules (imported lazily, so ``prune-gym
--help`` is fast).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _add_envs(subparsers) -> None:
    parser = subparsers.add_parser("envs", help="list the registered environments and what they need")
    parser.set_defaults(handler=_run_envs)


def _run_envs(args: argparse.Namespace) -> int:
    from prune_gym.tasks import list_tasks

    rows = [("env id", "task", "layers", "data", "weights", "note")]
    for task in list_tasks():
        available = task.availability()
        rows.append(
            (
                task.env_id,
                f"{task.architecture} / {task.dataset}",
                str(task.num_prunable_layers),
                "yes" if available.data else "no",
                "yes" if available.weights else "no",
                available.detail,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prune-gym",
        description="Learn to prune neural networks layer by layer with RL, and compare against Global MP.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_envs(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as error:
        # Bad input and missing files are the user's to fix: say what, not a traceback.
        print(f"prune-gym {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
