"""`prune-gym sweep` trials that fail, stop early or run from Python: a killed trial reported and
resumed, ASHA stopping trailing trials, the README's Python example. (Apart from test_sweep.py so
that a parallel test run can put the two files' Ray sweeps on different workers.)"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

pytest.importorskip("ray.tune", reason="prune-gym sweep needs the [ray] extra (installed by .[dev])")

from sweep_cli import ENV, finish, run_cli  # noqa: E402


def test_a_killed_trial_is_reported_the_others_finish_and_resume_reruns_only_it(tmp_path, digits_model_state):
    output = tmp_path / "sweep"
    process = run_cli(ENV, "--algo", "dqn", "--seeds", "0", "1", "--timesteps", "200", "--n-envs", "1", "--sparsity",
                      "0.9", "--no-search", "--output", str(output))
    progress = output / "tune" / "dqn-seed1" / "result.json"
    deadline = time.monotonic() + 300
    while not (progress.is_file() and progress.read_text().strip()):
        assert process.poll() is None and time.monotonic() < deadline, "the trial never reported"
        time.sleep(0.2)
    os.kill(json.loads(progress.read_text().splitlines()[0])["pid"], signal.SIGKILL)  # a node lost
    code, log = finish(process)
    assert code == 1, log
    record = json.loads((output / "results.json").read_text())
    status = {t["name"]: (t["status"], t["error"]) for t in record["trials"]}
    assert status["dqn-seed1"][0] == "failed" and "died" in status["dqn-seed1"][1].lower()
    assert status["dqn-seed0"] == ("finished", None) and status["reference"] == ("finished", None)
    assert {(r["method"], r["n"]) for r in record["aggregate"] if r["method"].startswith("DQN")} == {
        ("DQN (greedy)", 1), ("DQN (best found)", 1)}
    assert "trial dqn-seed1: failed" in log and f"--resume {output}" in log
    kept = (output / "tune" / "dqn-seed0" / "checkpoint_000000" / "trial.json").read_bytes()

    code, log = finish(run_cli("--resume", str(output)))
    assert code == 0, log
    record = json.loads((output / "results.json").read_text())
    assert {t["status"] for t in record["trials"]} == {"finished"}
    # The finished trial was not run again; the aggregate holds both seeds.
    assert (output / "tune" / "dqn-seed0" / "checkpoint_000000" / "trial.json").read_bytes() == kept
    assert "Trial dqn-seed0 started" not in log and "Trial dqn-seed1 started" in log
    assert {r["n"] for r in record["aggregate"] if r["method"].startswith("DQN")} == {2}


def test_the_python_api_runs_the_readmes_sweep_example(tmp_path, monkeypatch, capsys, digits_model_state):
    """The README's Python sweep example, run as written (here rather than in test_readme.py, so
    the suite starts Ray for it once), and its result checked against the trials' own records."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (example,) = [block for block in re.findall(r"```python\n(.*?)```", readme, flags=re.S)
                  if "from prune_gym.workflows import sweep" in block]
    monkeypatch.chdir(tmp_path)  # it writes its folder where it runs
    namespace: dict = {}
    exec(compile(example, "README.md sweep example", "exec"), namespace)
    result = namespace["result"]
    assert capsys.readouterr().out.strip()  # it prints the table
    assert not result.incomplete and [t.name for t in result.trials] == ["dqn-seed0", "reference"]
    agent = result.trials[0]
    assert agent.record["resources"]["torch_threads"] == 1  # one Tune CPU per env process by default
    best = next(r for r in result.rows if r.method == "DQN (best found)")
    own = next(r for r in agent.rows() if r.method == "DQN (best found)")
    assert best.n == 1 and best.test_accuracy_mean == own.test_accuracy
    assert result.table == (result.output_dir / "table.txt").read_text().rstrip("\n")


def test_asha_stops_trailing_agent_trials_which_the_aggregate_leaves_out(tmp_path, digits_model_state):
    output = tmp_path / "asha"
    code, log = finish(run_cli(ENV, "--algo", "dqn", "--seeds", "0", "1", "2", "--timesteps", "300", "--n-envs", "1",
                               "--sparsity", "0.9", "--no-search", "--scheduler", "asha", "--output", str(output)))
    assert code == 0, log  # a trial the scheduler stops is its decision, not a failure
    record = json.loads((output / "results.json").read_text())
    agents = [t for t in record["trials"] if t["kind"] == "agent"]
    assert {t["status"] for t in agents} <= {"finished", "stopped"}
    for trial in agents:
        # Every agent trial reported as it learned; a stopped one ended before its budget.
        steps = trial["metrics"]["agent_timesteps"]
        assert steps == 300 if trial["status"] == "finished" else steps < 300
        if trial["status"] == "stopped":
            assert f"trial {trial['name']}: stopped by the asha scheduler after {steps:,} steps" in log
    finished = sorted(t["name"] for t in agents if t["status"] == "finished")
    (best,) = [r for r in record["aggregate"] if r["method"] == "DQN (best found)"]
    assert best["n"] == len(finished) and sorted(best["trials"]) == finished
