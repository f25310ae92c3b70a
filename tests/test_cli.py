"""The `prune-gym` train, baseline and compare commands, through prune_gym.cli.main."""

from __future__ import annotations

import json
import os

import pytest

from prune_gym.cli import main

ENV_ID = "PruneResNet20Digits-v1"



def test_baseline_prints_accuracy_sparsity_and_layers(tmp_path, capsys, digits_model_state):
    path = tmp_path / "baseline.json"
    code = main(["baseline", ENV_ID, "--policy", "global-mp", "--sparsity", "0.8", "--min-threshold", "0.0005",
                 "--device", "cpu", "--json", str(path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "Global MP + MT at sparsity 0.8" in out and "param sparsity 80.00%" in out
    assert "stem.0" in out and "head.2" in out  # the per-layer table
    record = json.loads(path.read_text())
    assert record["overall_sparsity"] == pytest.approx(0.8, abs=1e-5)
    assert record["action_type"] == "continuous"
    assert len(record["layer_sparsities"]) == 22


def test_baseline_rejects_bad_input(capsys):
    assert main(["baseline", ENV_ID, "--policy", "uniform", "--sparsity", "0.8", "--min-threshold", "0.001"]) == 2
    assert "--min-threshold applies to --policy global-mp" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["baseline", ENV_ID, "--sparsity", "1.2"])


def test_train_then_resume_continues_the_step_count(tmp_path, capsys):
    # The defaults a user gets: progress, TensorBoard and checkpoints on.
    output = tmp_path / "run"
    args = ["train", ENV_ID, "--device", "cpu", "--sparsity", "0.5", "0.8", "--output", str(output),
            "--hyperparams", str(_quick_dqn(tmp_path))]
    assert main(args + ["--timesteps", "44"]) == 0
    captured = capsys.readouterr()
    assert "44 steps" in captured.out and "TensorBoard: tensorboard --logdir" in captured.out
    assert "[train] steps 44/44 (100%)" in captured.err  # progress reads in a log too
    assert any((output / "tensorboard").rglob("events.out.tfevents.*"))
    # Running it again into the same folder without --resume is refused, and nothing changes.
    model_bytes = (output / "model.zip").read_bytes()
    assert main(args + ["--timesteps", "44"]) == 2
    assert "already holds a training run" in capsys.readouterr().err
    assert (output / "model.zip").read_bytes() == model_bytes
    assert main(args + ["--timesteps", "88", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "dqn_44_steps.zip" in out and "88 steps" in out
    assert (output / "checkpoints" / "dqn_88_steps.zip").is_file()
    assert json.loads((output / "run.json").read_text())["targets"] == [0.5, 0.8]


def test_train_rejects_an_algorithm_the_action_type_does_not_allow(capsys):
    assert main(["train", ENV_ID, "--algo", "dqn", "--action-type", "continuous", "--timesteps", "10"]) == 2
    assert "action_type='discrete'" in capsys.readouterr().err


def test_compare_prints_the_table_writes_files_and_finetunes(tmp_path, capsys):
    # The user's defaults (shipped hyperparameters with two envs in parallel, progress and
    # TensorBoard on), with a smaller budget.
    output = tmp_path / "cmp"
    code = main(["compare", ENV_ID, "--sparsity", "0.7", "--timesteps", "44", "--finetune-epochs", "1",
                 "--output", str(output)])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0
    assert "[train] steps 44/44 (100%)" in captured.err
    # The package's notes (the logging module) reach the user on stderr; the table on stdout.
    assert "local search at 0.7:" in captured.err and f"wrote {output}/" in captured.err
    assert "local search at" not in out
    assert any((output / "agent" / "tensorboard").rglob("events.out.tfevents.*"))
    methods = ["DQN (greedy)", "DQN (best found)", "local search", "Global MP", "Global MP + MT", "LAMP", "ERK",
               "uniform", "uniform+", "random"]
    for method in methods:
        assert method in out
    assert "paired tests on the same test images, against the strongest rule" in out
    assert (output / "results.json").is_file() and (output / "layer_sparsity.png").is_file()
    rows = json.loads((output / "results.json").read_text())["results"]
    assert {row["method"]: round(row["overall_sparsity"], 4) for row in rows} == dict.fromkeys(methods, 0.7)
    # --finetune-epochs: every method is fine-tuned with its masks, reported next to one-shot.
    assert "after FT (1 ep)" in out
    random = next(row for row in rows if row["method"] == "random")
    assert all(row["finetuned_test_accuracy"] is not None for row in rows)
    assert random["finetuned_test_accuracy"] > random["test_accuracy"] + 0.1


def _quick_dqn(folder) -> str:
    path = folder / "quick_dqn.yml"
    path.write_text("default:\n  n_timesteps: 44\n  learning_starts: 22\n  batch_size: 16\n")
    return str(path)


def test_envs_lists_every_registered_id(capsys):
    assert main(["envs"]) == 0
    out = capsys.readouterr().out
    for env_id in ("PruneResNet20Digits-v1", "PruneResNet50-v1", "PruneFastGRNNHAR2-v1",
                   "PruneResNet20DigitsChannels-v1", "PruneMobileNetV2Channels-v1"):
        assert env_id in out
    # Each task's AMP choice on CUDA: off for digits (no speed, a different reward), on for ResNet-50.
    assert "AMP on CUDA" in out.splitlines()[0]
    lines = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert "off" in lines["PruneResNet20Digits-v1"] and "on" in lines["PruneResNet50-v1"]


def test_a_closed_pipe_is_not_a_traceback(monkeypatch, capsys):
    import prune_gym.cli as cli

    def closed(args):
        raise BrokenPipeError

    monkeypatch.setattr(cli, "_run_envs", closed)
    assert main(["envs"]) == 0


def test_train_resume_needs_the_run_folder_named(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a ./runs/ folder here is never searched for pickles
    code = main(["train", ENV_ID, "--resume", "--timesteps", "22"])
    assert code == 2
    assert "--resume continues the run in the folder you name: add --output DIR" in capsys.readouterr().err


@pytest.mark.parametrize("code", ["ENOSPC", "EROFS"])
def test_a_full_or_read_only_disk_is_one_line_naming_the_path_with_exit_1(tmp_path, capsys, monkeypatch, code):
    import errno

    import prune_gym.io as io_module

    def fail(*args, **kwargs):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), str(tmp_path / "out.json"))

    monkeypatch.setattr(io_module, "atomic_write_json", fail)
    status = main(["baseline", ENV_ID, "--sparsity", "0.5", "--device", "cpu", "--json", str(tmp_path / "out.json")])
    err = capsys.readouterr().err
    assert status == 1
    assert err.count("\n") == 1 and f"while writing {tmp_path / 'out.json'}" in err and "Traceback" not in err


def test_only_prune_gyms_own_errors_become_one_line_messages(capsys, monkeypatch):
    import prune_gym.agents.rollout as rollout_module
    from prune_gym.errors import ConfigError

    def bad_input(*args, **kwargs):
        raise ConfigError("--sparsity 1.5 is not a fraction: give e.g. 0.8")

    monkeypatch.setattr(rollout_module, "run_episode", bad_input)
    assert main(["baseline", ENV_ID, "--sparsity", "0.5", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "prune-gym baseline: error: --sparsity 1.5 is not a fraction: give e.g. 0.8")

    def bug(*args, **kwargs):
        raise ValueError("an internal shape mismatch")  # not the user's to fix: keep the traceback

    monkeypatch.setattr(rollout_module, "run_episode", bug)
    with pytest.raises(ValueError, match="internal shape mismatch"):
        main(["baseline", ENV_ID, "--sparsity", "0.5", "--device", "cpu"])
