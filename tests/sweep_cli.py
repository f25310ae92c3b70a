"""`prune-gym sweep` run as a user runs it, for the sweep tests (test_sweep.py, test_sweep_trials.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ENV = "PruneResNet20Digits-v1"
TINY = ["--timesteps", "200", "--n-envs", "1", "--sparsity", "0.8", "0.9"]


def run_cli(*args: str, **popen) -> subprocess.Popen:
    """`prune-gym sweep ...` as a user runs it: its own process, Ray started and stopped by it."""
    command = [sys.executable, "-c", "import sys; from prune_gym.cli import main; sys.exit(main())", "sweep", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def finish(process: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def trial_rows(folder: Path) -> dict[str, list[dict]]:
    """Each finished trial's rows, read from its own record."""
    return {path.parent.name: json.loads(path.read_text())["rows"] for path in sorted(folder.glob("trials/*/trial.json"))}
