"""`prune-gym sweep`: a real Ray Tune sweep on this machine (two tiny agent trials, CPU), the
aggregate checked against the trials' own results, resume refusing what it must, bad options.
(Trials that fail or stop early: test_sweep_trials.py.)"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray.tune", reason="prune-gym sweep needs the [ray] extra (installed by .[dev])")

from sweep_cli import ENV, TINY, finish, run_cli, trial_rows  # noqa: E402

from prune_gym.cli import main  # noqa: E402
from prune_gym.workflows import resume_sweep  # noqa: E402  (the public API)
from prune_gym.workflows.sweep_report import learning_curve  # noqa: E402


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, digits_model_state) -> tuple[Path, str]:
    """DQN x seeds 0 and 1 (200 steps each), the search per seed and the reference policies."""
    output = tmp_path_factory.mktemp("sweep") / "run"
    code, log = finish(run_cli(ENV, "--algo", "dqn", "--seeds", "0", "1", *TINY, "--output", str(output)))
    assert code == 0, log
    return output, log


def test_the_aggregate_is_the_mean_and_std_of_the_trials_own_results(finished_sweep):
    output, log = finished_sweep
    for name in ("table.txt", "results.json", "results.csv", "trials.csv", "accuracy_vs_sparsity.png",
                 "learning_curves.png", "sweep.json"):
        assert (output / name).stat().st_size > 0, name
    rows = trial_rows(output)
    assert set(rows) == {"dqn-seed0", "dqn-seed1", "search-seed0", "search-seed1", "reference"}
    # The copies in trials/ are the trials' Tune checkpoints, byte for byte.
    for name in rows:
        own = output / "tune" / name / "checkpoint_000000" / "trial.json"
        assert own.read_bytes() == (output / "trials" / name / "trial.json").read_bytes()
    record = json.loads((output / "results.json").read_text())
    aggregate = {(row["target_sparsity"], row["method"]): row for row in record["aggregate"]}
    expected: dict[tuple[float, str], list[dict]] = {}
    for trial in rows.values():
        for row in trial:
            expected.setdefault((row["target_sparsity"], row["method"]), []).append(row)
    assert set(aggregate) == set(expected)
    for key, members in expected.items():
        test = [m["test_accuracy"] for m in members]
        reward = [m["reward_accuracy"] for m in members]
        got = aggregate[key]
        assert got["n"] == len(members)
        assert math.isclose(got["test_accuracy_mean"], statistics.fmean(test))
        assert math.isclose(got["reward_accuracy_mean"], statistics.fmean(reward))
        assert math.isclose(got["test_accuracy_std"], statistics.stdev(test) if len(test) > 1 else 0.0)
        assert math.isclose(got["reward_accuracy_std"], statistics.stdev(reward) if len(reward) > 1 else 0.0)
    # Agents and searches have one value per seed; reference policies run once per target.
    assert aggregate[(0.9, "DQN (best found)")]["n"] == 2 and aggregate[(0.9, "local search")]["n"] == 2
    assert aggregate[(0.9, "Global MP")]["n"] == 1
    # The printed table shows the same numbers.
    greedy = aggregate[(0.8, "DQN (greedy)")]
    cell = f"{100 * greedy['test_accuracy_mean']:.1f} ± {100 * greedy['test_accuracy_std']:.1f}"
    assert cell in (output / "table.txt").read_text() and cell in log
    assert "5 of 5 trials finished" in log


def test_validate_replays_every_trials_recipes(finished_sweep, capsys):
    output, _ = finished_sweep
    recipes = sorted(output.glob("trials/*/recipes/*.json"))
    assert recipes and all("env_kwargs" in json.loads(r.read_text())["meta"] for r in recipes)
    assert main(["validate", str(output)]) == 0
    assert f"{len(recipes)} of {len(recipes)} records replay to their accuracies" in capsys.readouterr().out


def test_each_trial_ran_in_its_own_process_with_threads_and_device_from_its_resources(finished_sweep):
    output, _ = finished_sweep
    records = [json.loads(p.read_text()) for p in output.glob("trials/*/trial.json")]
    assert {r["resources"]["device"] for r in records} == {"cpu"}
    assert {(r["resources"]["cpus"], r["resources"]["torch_threads"]) for r in records} == {(1.0, 1)}
    # At the priority of the command that started the sweep: Ray's default for its workers (nice 15)
    # would starve them beside any other work on the machine.
    assert {r["resources"]["niceness"] for r in records} == {os.nice(0)}
    pids = {json.loads((output / "tune" / r["name"] / "result.json").read_text().splitlines()[0])["pid"] for r in records}
    assert os.getpid() not in pids and len(pids) >= 2


def test_agent_trials_report_their_learning_to_tune_as_they_train(finished_sweep):
    output, _ = finished_sweep
    lines = [json.loads(line) for line in (output / "tune" / "dqn-seed1" / "result.json").read_text().splitlines()]
    training = [line for line in lines if "episodes" in line]
    assert len(training) >= 3  # one report per finished episode (200 steps, 22 per episode)
    steps = [line["agent_timesteps"] for line in training]
    assert steps == sorted(steps) and steps[-1] < 200
    # What Tune was told is what the agent's episodes say, step by step.
    curve = dict(zip(*learning_curve(output / "trials" / "dqn-seed1" / "agent" / "episodes.jsonl", [0.8, 0.9])))
    for line in training:
        assert math.isclose(line["best_reward_accuracy"], curve[line["agent_timesteps"]])
    assert lines[-1]["agent_timesteps"] == 200 and "trial_seconds" in lines[-1]


def test_every_trial_leaves_its_recipes_and_the_agents_their_run(finished_sweep):
    output, _ = finished_sweep
    best = json.loads((output / "trials" / "dqn-seed0" / "recipes" / "dqn-best-found-0.90.json").read_text())
    row = next(r for r in trial_rows(output)["dqn-seed0"] if r["method"] == "DQN (best found)" and r["target_sparsity"] == 0.9)
    assert best["layers"] == row["layer_sparsities"] and best["meta"]["test_accuracy"] == row["test_accuracy"]
    assert (output / "trials" / "dqn-seed0" / "agent" / "model.zip").is_file()
    assert (output / "trials" / "reference" / "recipes" / "global-mp-0.80.json").is_file()


def test_resume_refuses_an_experiment_whose_trials_belong_to_another_sweep(finished_sweep, tmp_path):
    output, _ = finished_sweep
    copy = tmp_path / "copy"
    shutil.copytree(output, copy)
    settings = json.loads((copy / "sweep.json").read_text())
    settings["sweep_id"] = "another"
    settings["experiment"] = str(copy / "tune")
    (copy / "sweep.json").write_text(json.dumps(settings))
    before = (copy / "results.json").read_bytes()
    with pytest.raises(ValueError, match="never mixes two sweeps"):
        resume_sweep(copy)
    assert (copy / "results.json").read_bytes() == before
    assert sorted(p.name for p in (copy / "trials").iterdir()) == sorted(p.name for p in (output / "trials").iterdir())


def test_resume_restores_tune_state_only_from_a_folder_the_user_named(finished_sweep, tmp_path):
    output, _ = finished_sweep
    planted = tmp_path / "planted"
    planted.mkdir()
    settings = json.loads((output / "sweep.json").read_text())
    settings["experiment"] = str(output / "tune")  # outside the folder given to --resume
    (planted / "sweep.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match="outside .*planted.*--storage FOLDER"):
        resume_sweep(planted)
    (planted / "sweep.json").write_text("{not json")
    with pytest.raises(ValueError, match="sweep.json is damaged"):
        resume_sweep(planted)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([ENV, "--algo", "nope"], "unknown algorithm 'nope'"),
        ([ENV, "--seeds", "1", "1"], "seeds must differ"),
        ([ENV, "--hyperparams", "dqn"], "--hyperparams takes ALGO=YAML"),
        ([ENV, "--hyperparams", "ppo=x.yml"], "hyperparams given for ppo"),
        ([ENV, "--algo", "sac", "--action-type", "discrete"], "SAC needs continuous actions"),
        (["NoSuchEnv-v0"], "NoSuchEnv"),
        ([], "give the env id"),
        (["--resume", "somewhere", "--seeds", "2"], "leave out --seeds"),
        (["--resume", "nowhere"], "no sweep.json"),
    ],
)
def test_bad_options_are_refused_before_anything_starts(args, message, tmp_path, capsys):
    output = tmp_path / "out"
    assert main(["sweep", *args, *([] if "--resume" in args else ["--output", str(output)])]) == 2
    assert message in capsys.readouterr().err
    assert not output.exists()


def test_a_folder_that_holds_something_is_not_swept_into(tmp_path, capsys):
    (tmp_path / "old.txt").write_text("results of something else")
    assert main(["sweep", ENV, "--output", str(tmp_path)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["old.txt"]


def test_a_gpu_per_trial_on_a_machine_without_one_is_an_error_not_a_wait(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["sweep", ENV, "--gpus-per-trial", "1", *TINY, "--output", str(tmp_path / "g")]) == 2
    assert "asks for 1 GPU but the Ray cluster has 0" in capsys.readouterr().err


def test_without_ray_the_error_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(["sweep", ENV, "--output", str(tmp_path / "x")]) == 2
    assert 'pip install -e ".[ray]"' in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
