"""Shared fixtures. Tests never download: every file a loader reads is written by the test."""

from __future__ import annotations

import os

import pytest
import torch

# The tests run many tiny tensor ops: one intra-op thread avoids oversubscribing small CI
# machines (measured: test_evaluation.py 71 s with 2 threads vs 8.5 s with 1 on a busy 2-core box).
torch.set_num_threads(1)

#: Files whose tests take minutes (Ray sweeps, the benchmark scripts). The suite runs on every
#: core (pytest-xdist, ``-n auto --dist loadfile`` in setup.cfg: a file's tests stay on one worker
#: and share its fixtures); these are handed out first and last so no worker ends with two of them.
FIRST_FILES = ("test_sweep_trials.py", "test_benchmarks.py")
LAST_FILES = ("test_sweep.py",)


def pytest_collection_modifyitems(config, items):
    first = {name: rank for rank, name in enumerate(FIRST_FILES)}
    items.sort(key=lambda item: (item.path.name in LAST_FILES, first.get(item.path.name, len(FIRST_FILES))))


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory) -> str:
    """Trained default weights go to a per-run cache, never the user's."""
    path = str(tmp_path_factory.mktemp("prune-gym-cache"))
    os.environ["PRUNE_GYM_CACHE"] = path
    return path


@pytest.fixture(scope="session", autouse=True)
def sb3_log_folder(tmp_path_factory) -> str:
    """Tests that call an agent's learn() directly (no logger of the package's) make SB3 create
    an empty SB3-<time> folder; they go to the run's temporary folder, not the system's. (The
    package's own training gives SB3 a logger that writes nowhere: test_agents.py checks that
    with this variable unset.)"""
    path = str(tmp_path_factory.mktemp("sb3-logs"))
    os.environ["SB3_LOGDIR"] = path
    return path


@pytest.fixture(scope="session")
def digits_task():
    from prune_gym.tasks import get_task

    return get_task("resnet20-digits")


@pytest.fixture(scope="session")
def digits_model_state(digits_task) -> dict[str, torch.Tensor]:
    """The trained digits ResNet-20 (trained once per test run, ~15 s), as a state dict."""
    return {k: v.clone() for k, v in digits_task.load_model().state_dict().items()}


@pytest.fixture
def digits_model(digits_task, digits_model_state) -> torch.nn.Module:
    """A fresh copy of the trained digits model for each test."""
    model = digits_task.build_model()
    model.load_state_dict(digits_model_state)
    return model.eval()
