"""Bad input never gives a wrong answer or a stuck env: a clear error, and nothing changed.

Most cases use a tiny model of the user's own (milliseconds per episode); the CLI cases use
the registered digits env with a small budget.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from prune_gym import PruneEnv
from prune_gym.cli import main

ENV_ID = "PruneResNet20Digits-v1"


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 4))


def tiny_data(n: int = 64, labels_shape: tuple[int, ...] | None = None):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 16, generator=generator)
    y = torch.randint(0, 4, labels_shape or (n,), generator=generator)
    return x, y


def tiny_env(**kwargs) -> PruneEnv:
    options = {"model": tiny_model(), "reward_data": tiny_data(), "test_data": tiny_data(), "device": "cpu"}
    return PruneEnv(**{**options, **kwargs})


# -- constructor arguments ---------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({"bn_recalibration_batches": 1}, "bn_recalibration_batches needs"),
    ({"finetune_steps": 1}, "finetune_steps needs"),
    ({"bn_recalibration_batches": 1, "finetune_steps": 2}, "bn_recalibration_batches and finetune_steps need"),
])
def test_training_after_each_step_needs_train_data(kwargs, message):
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=rf"^{message} train_data= \(or a task\)"):
        tiny_env(model=model, **kwargs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert tiny_env(train_data=tiny_data(), **kwargs).engine.train_data is not None


def test_a_target_below_min_sparsity_is_refused():
    with pytest.raises(ValueError, match=r"outside \[min_sparsity, max_sparsity\].*lower min_sparsity"):
        tiny_env(target_sparsity=0.3, min_sparsity=0.5)
    env = tiny_env(target_sparsity=0.6, min_sparsity=0.5)
    with pytest.raises(ValueError, match="lower min_sparsity"):
        env.reset(options={"target_sparsity": 0.3})


@pytest.mark.parametrize("weight", [float("nan"), float("inf"), "1", None, True])
def test_sparsity_weight_must_be_a_finite_number(weight):
    with pytest.raises(ValueError, match="sparsity_weight must be a finite number"):
        tiny_env(sparsity_weight=weight)


@pytest.mark.parametrize("batch_size", [2.7, 0, "64", True])
def test_batch_size_must_be_a_whole_number(batch_size):
    with pytest.raises(ValueError, match="batch_size must be a whole number"):
        tiny_env(batch_size=batch_size)


def test_exclude_layers_as_one_string_is_one_pattern():
    env = tiny_env(exclude_layers="3")  # the Linear layer's name
    assert env.layer_names() == ["0"]


def test_an_exclude_pattern_that_matches_nothing_is_an_error():
    with pytest.raises(ValueError, match=r"match no prunable layer.*\['0', '3'\]"):
        tiny_env(exclude_layers=["fc"])


def test_tied_weights_are_refused_with_the_fix():
    model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))
    model[2].weight = model[0].weight
    data = (torch.randn(32, 6), torch.randint(0, 3, (32,)))
    with pytest.raises(ValueError, match="share one weight tensor.*exclude_layers=\\['2'\\]"):
        PruneEnv(model=model, reward_data=data, device="cpu")
    env = PruneEnv(model=model, reward_data=data, device="cpu", exclude_layers=["2"])
    assert env.state.total == 6 * 6 + 6 * 3  # the shared tensor is counted once


# -- splits are checked at construction -------------------------------------------------------


def test_labels_of_shape_n_by_1_are_refused_at_construction():
    with pytest.raises(ValueError, match=r"1-D tensor of class indices, got shape \(64, 1\): squeeze"):
        tiny_env(reward_data=tiny_data(labels_shape=(64, 1)))


def test_one_hot_and_fractional_labels_are_refused():
    x, y = tiny_data()
    with pytest.raises(ValueError, match="1-D tensor of class indices"):
        tiny_env(reward_data=(x, nn.functional.one_hot(y, 4).float()))
    with pytest.raises(ValueError, match="fractional"):
        tiny_env(reward_data=(x, y.float() + 0.5))


def test_test_split_problems_surface_at_construction_not_at_the_last_step():
    x, y = tiny_data()
    with pytest.raises(ValueError, match="test split: a label is 9 but the model has 4 outputs"):
        tiny_env(test_data=(x, torch.full_like(y, 9)))
    with pytest.raises(ValueError, match="test split's inputs have shape"):
        tiny_env(test_data=(torch.randn(64, 3, 8), y))


def test_a_model_that_fails_on_the_data_names_model_and_split():
    with pytest.raises(ValueError, match=r"Sequential fails on the reward split's inputs \(shape \(2, 5, 16\)"):
        tiny_env(reward_data=(torch.randn(64, 5, 16), tiny_data()[1]), test_data=None)


def test_tuple_outputs_are_a_clear_error():
    class TupleModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = tiny_model()

        def forward(self, x):
            return self.body(x), x

    with pytest.raises(ValueError, match=r"must return logits of shape \(batch, classes\)"):
        tiny_env(model=TupleModel())


# -- reset and step never leave state half-changed --------------------------------------------


def test_a_rejected_reset_target_leaves_the_target_and_the_episode_as_they_were():
    env = tiny_env(target_sparsity=0.5)
    env.reset(seed=0)
    env.step(env.action_space.sample())
    with pytest.raises(ValueError, match="raise max_sparsity"):
        env.reset(options={"target_sparsity": 0.995})
    assert env.target_sparsity == 0.5 and env.current_layer == 1  # the episode goes on unchanged
    env.reset()  # and a plain reset still works
    assert env.current_layer == 0


def test_unknown_reset_options_change_nothing():
    env = tiny_env(target_sparsity=0.5)
    env.reset(seed=0)
    env.step(env.action_space.sample())
    with pytest.raises(ValueError, match=r"unknown reset options \['foo'\]"):
        env.reset(options={"target_sparsity": 0.7, "foo": 1})
    assert env.target_sparsity == 0.5 and env.current_layer == 1


@pytest.mark.parametrize("action", ["0.5", True, np.array([[0.1]]), 1j, np.array([0.5 + 0j]), [0.2]])
def test_continuous_actions_accept_what_the_box_contains_only(action):
    env = tiny_env(action_type="continuous")
    env.reset(seed=0)
    before = [mask.clone() for mask in env.state.masks]
    with pytest.raises(ValueError, match="finite real number in \\[-1, 1\\]"):
        env.step(action)
    assert all(torch.equal(a, b) for a, b in zip(before, env.state.masks, strict=True))
    assert env.current_layer == 0


@pytest.mark.parametrize("action", [0.25, np.float32(-0.5), np.array([0.0], dtype=np.float32), np.array(0.9)])
def test_continuous_actions_in_the_box_are_taken(action):
    env = tiny_env(action_type="continuous")
    env.reset(seed=0)
    env.step(action)
    assert env.current_layer == 1


# -- training checkpoints ------------------------------------------------------------------------


def test_resume_skips_an_incomplete_newest_checkpoint(tmp_path, caplog):
    from prune_gym.agents.run_folder import latest_checkpoint
    from prune_gym.agents.training import train_agent

    synthetic = {"synthetic": True, "synthetic_samples": 8, "device": "cpu"}
    quick = {"learning_starts": 20, "batch_size": 8}
    output = tmp_path / "run"
    train_agent(ENV_ID, "dqn", 44, output_dir=output, hyperparams=quick, env_kwargs=synthetic, n_envs=1,
                checkpoint_freq=22, progress_bar=False, tensorboard=False)
    checkpoints = output / "checkpoints"
    # A kill between the model's zip and its replay buffer: the newest zip has no buffer.
    (checkpoints / "dqn_replay_buffer_44_steps.pkl").unlink()
    assert latest_checkpoint(output, "dqn").name == "dqn_22_steps.zip"
    resumed = train_agent(ENV_ID, "dqn", 66, output_dir=output, hyperparams=quick, env_kwargs=synthetic, n_envs=1,
                          checkpoint_freq=0, progress_bar=False, tensorboard=False, resume=True)
    assert resumed.resumed_from.name == "dqn_22_steps.zip"
    assert "dqn_44_steps.zip is incomplete" in caplog.text  # a warning of the prune_gym logger
    # The checkpoint's buffer came back (SB3 saves it before storing the 22nd transition: 21),
    # plus the 44 steps of this run; an empty buffer would give 44.
    assert resumed.model.replay_buffer.size() == 21 + 44

    # A complete-looking newest checkpoint that cannot be read: fall back to the next one, and say so.
    train_agent(ENV_ID, "dqn", 88, output_dir=output, hyperparams=quick, env_kwargs=synthetic, n_envs=1,
                checkpoint_freq=0, progress_bar=False, tensorboard=False, resume=True)  # writes dqn_88
    (checkpoints / "dqn_replay_buffer_88_steps.pkl").write_bytes(b"not a pickle.")  # ends like one
    caplog.clear()
    again = train_agent(ENV_ID, "dqn", 110, output_dir=output, hyperparams=quick, env_kwargs=synthetic, n_envs=1,
                        checkpoint_freq=0, progress_bar=False, tensorboard=False, resume=True)
    assert again.resumed_from.name == "dqn_66_steps.zip"
    assert "cannot read dqn_88_steps.zip" in caplog.text

    # No complete checkpoint at all: say so, never resume with an empty buffer.
    for path in checkpoints.glob("*.pkl"):
        path.unlink()
    with pytest.raises(FileNotFoundError, match="no complete dqn checkpoint.*incomplete"):
        train_agent(ENV_ID, "dqn", 132, output_dir=output, hyperparams=quick, env_kwargs=synthetic, n_envs=1,
                    checkpoint_freq=0, progress_bar=False, tensorboard=False, resume=True)
    # A truncated zip is incomplete too.
    damaged = checkpoints / "dqn_110_steps.zip"
    damaged.write_bytes(damaged.read_bytes()[:100])
    assert not zipfile.is_zipfile(damaged)


@pytest.mark.parametrize("freq", [-1, 2.5])
def test_checkpoint_freq_must_be_a_whole_number(tmp_path, freq):
    from prune_gym.agents.training import train_agent

    with pytest.raises(ValueError, match="checkpoint_freq must be a whole number"):
        train_agent(ENV_ID, "dqn", 10, output_dir=tmp_path / "run", env_kwargs={"synthetic": True, "device": "cpu"},
                    n_envs=1, checkpoint_freq=freq, progress_bar=False, tensorboard=False)
    assert not (tmp_path / "run").exists()


# -- the command line ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["train", ENV_ID, "--checkpoint-freq", "-1"],
        ["train", ENV_ID, "--n-envs", "0"],
        ["compare", ENV_ID, "--threads", "0"],
        ["baseline", ENV_ID, "--sparsity", "0.5", "--json", "missing_dir/x.json"],
    ],
)
def test_bad_numbers_and_paths_are_usage_errors_before_any_work(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_unknown_env_id_is_one_line(capsys):
    assert main(["baseline", "PruneNoSuchNet-v1", "--sparsity", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "prune-gym envs" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("content", [b"", b"not a torch file"])
def test_a_corrupt_weights_file_is_one_line(tmp_path, capsys, content):
    weights = tmp_path / "weights.pt"
    weights.write_bytes(content)
    code = main(["export", "resnet20-digits", "--sparsity", "0.5", "--weights", str(weights),
                 "--output", str(tmp_path / "x.pt"), "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot read the checkpoint" in err and "weights.pt" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.pt").exists()


def test_malformed_yaml_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yml"
    bad.write_text("default: [unclosed\n")
    assert main(["train", ENV_ID, "--hyperparams", str(bad), "--output", str(tmp_path / "run"), "--timesteps", "10"]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_an_unwritable_output_is_one_line(tmp_path, capsys, digits_model_state):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["export", "resnet20-digits", "--sparsity", "0.5", "--output", str(blocker / "x.pt"),
                 "--device", "cpu"]) == 2
    assert "which is a file: choose another path" in capsys.readouterr().err


def test_an_empty_recipe_is_refused(tmp_path, capsys):
    recipe = tmp_path / "empty.json"
    recipe.write_text(json.dumps({"format": "prune-gym-recipe", "layers": {}, "overall_sparsity": 0.8}))
    assert main(["export", "resnet20-digits", "--recipe", str(recipe), "--output", str(tmp_path / "x.pt")]) == 2
    assert "names no layer" in capsys.readouterr().err


def test_the_help_warns_that_agent_files_are_unpickled(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    assert "unpickles" in capsys.readouterr().out


# -- a step or reset that fails never leaves the episode half-changed ------------------------------


def _snapshot(env: PruneEnv):
    return (env.current_layer, [w.detach().clone() for w in (layer.weight for layer in env.layers)],
            [m.clone() for m in env.state.masks], env.state.pruned_count(), list(env.applied))


def _same(before, after) -> bool:
    return (before[0] == after[0] and before[3:] == after[3:]
            and all(torch.equal(a, b) for a, b in zip(before[1], after[1], strict=True))
            and all(torch.equal(a, b) for a, b in zip(before[2], after[2], strict=True)))


@pytest.mark.parametrize("reward, message", [
    (lambda context: None, "returned None, not a number"),
    (lambda context: float("nan"), "returned nan, not a finite number"),
    (lambda context: float("inf"), "returned inf, not a finite number"),
    (lambda: 0.0, "positional argument"),
])
def test_a_failing_reward_takes_the_step_back(reward, message):
    env = tiny_env(reward=reward, target_sparsity=0.5)
    env.reset(seed=0)
    before = _snapshot(env)
    with pytest.raises((ValueError, TypeError), match=message):
        env.step(3)
    assert _same(before, _snapshot(env))  # the layer is not pruned, not counted, not advanced
    env.reward_fn = lambda context: 0.0  # a fixed reward: the same step now goes through
    _, _, _, _, info = env.step(3)
    assert info["layer_index"] == 0


@pytest.mark.parametrize("at_last_step, part, method, error", [
    (False, "evaluator", "accuracy", RuntimeError("simulated out-of-memory")),  # the reward split, mid-episode
    (True, "engine", "test_accuracy", OSError("test split unreadable")),  # the test split, at the last step
])
def test_a_failing_evaluation_takes_the_step_back(at_last_step, part, method, error, monkeypatch):
    env = tiny_env(target_sparsity=0.5)
    env.reset(seed=0)
    for _ in range(env.num_layers - 1 if at_last_step else 1):
        env.step(5)
    before = _snapshot(env)

    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(getattr(env, part), method, failing)
    with pytest.raises(type(error), match=str(error)):
        env.step(5)
    assert _same(before, _snapshot(env))
    monkeypatch.undo()
    terminated = False
    while not terminated:  # the same step now goes through, and the episode ends at its target
        _, _, terminated, _, info = env.step(5)
    assert "test_accuracy" in info and info["overall_sparsity"] == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("seed, options, message", [
    (2**64, None, "seed must be None or a whole number"),
    (-1, None, "seed must be None or a whole number"),
    (True, None, "seed must be None or a whole number"),
    (None, "x", "options must be a dict"),
])
def test_a_bad_reset_changes_nothing(seed, options, message):
    env = tiny_env(target_sparsity=0.5)
    env.reset(seed=0)
    env.step(3)
    before = _snapshot(env)
    with pytest.raises(ValueError, match=message):
        env.reset(seed=seed, options=options)
    assert _same(before, _snapshot(env))  # the episode goes on where it was
    _, _, _, _, info = env.step(3)
    assert info["layer_index"] == 1
    assert info["overall_sparsity"] == pytest.approx(env.state.overall_sparsity())


def test_the_users_model_keeps_its_weights_and_memory_format():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    before = {name: value.clone() for name, value in model.state_dict().items()}
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 3, (32,))
    env = PruneEnv(model=model, reward_data=(x, y), test_data=(x, y), target_sparsity=0.8, device="cpu")
    env.reset(seed=0)
    for _ in range(env.num_layers):
        env.step(0)
    assert env.state.overall_sparsity() == pytest.approx(0.8, abs=1e-3)  # the env's copy is pruned ...
    for name, value in model.state_dict().items():  # ... the user's model is not
        assert torch.equal(value, before[name]), name
    assert model[0].weight.is_contiguous()  # not switched to channels_last
    torch_prune.global_unstructured(  # and torch's own pruning still works on it
        [(model[0], "weight"), (model[3], "weight")], pruning_method=torch_prune.L1Unstructured, amount=0.5)


def test_a_model_pruned_with_torch_is_refused_with_the_fix():
    model = tiny_model()
    torch_prune.l1_unstructured(model[0], "weight", amount=0.5)
    with pytest.raises(ValueError, match=r"already pruned with torch.nn.utils.prune \(layers \['0'\]\).*prune.remove"):
        PruneEnv(model=model, reward_data=tiny_data(), test_data=tiny_data(), device="cpu")
    torch_prune.remove(model[0], "weight")
    env = PruneEnv(model=model, reward_data=tiny_data(), test_data=tiny_data(), device="cpu")
    assert env.num_layers == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"target_sparsity": False}, "target_sparsity must be a number in \\[0, 1\\), got False"),
    ({"amp": "false"}, "amp must be True or False, got 'false'"),
    ({"channels_last": "false"}, "channels_last must be True or False"),
    ({"cache_activations": 0}, "cache_activations must be True or False"),
    ({"finetune_lr": float("inf")}, "finetune_lr must be a finite number > 0"),
    ({"relative_range": 1000}, "relative_range must be a number in \\(0, 5\\]"),
])
def test_settings_that_were_silently_accepted_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_env(**kwargs)


def test_synthetic_settings_that_were_silently_ignored_are_refused():
    from prune_gym.envs.prune_env import PruneEnv as Env

    with pytest.raises(ValueError, match="synthetic_samples must be a whole number >= 1, got 1.5"):
        Env("resnet20-digits", synthetic=True, synthetic_samples=1.5, device="cpu")
    with pytest.raises(ValueError, match="weights= has no effect with synthetic=True"):
        Env("resnet20-digits", synthetic=True, weights="model.pt", device="cpu")


def test_a_repeated_target_is_refused_before_anything_runs(tmp_path):
    from prune_gym.workflows.compare import compare

    with pytest.raises(ValueError, match="sparsity 0.5 given more than once"):
        compare(ENV_ID, [0.5, 0.5], timesteps=22, hyperparams={"learning_starts": 1000}, n_envs=1, search=False,
                env_kwargs={"device": "cpu"}, output_dir=tmp_path / "out", progress_bar=False, tensorboard=False, log=None)
    assert not (tmp_path / "out").exists()


def test_a_recipe_file_without_layers_says_so():
    from prune_gym.recipes import recipe_from_json

    with pytest.raises(ValueError, match="names its layers under 'layers', and this one has none"):
        recipe_from_json({"format": "prune-gym-recipe", "meta": {"method": "x"}})


def test_a_training_target_the_env_cannot_reach_fails_before_training():
    from prune_gym.agents import TargetSamplingWrapper

    env = tiny_env(max_sparsity=0.9)
    with pytest.raises(ValueError, match="target_sparsity 0.95 is outside \\[min_sparsity, max_sparsity\\]"):
        TargetSamplingWrapper(env, [0.5, 0.95])


@pytest.mark.parametrize("kwargs, message", [
    ({"split_seed": "a"}, "split_seed must be a whole number"),
    ({"exclude_layers": 3}, "exclude_layers must be name patterns"),  # checked before anything loads
])
def test_raw_errors_from_deep_inside_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_env(**kwargs)
    assert tiny_env(exclude_layers=None).num_layers == 2  # None: nothing excluded


def test_a_dataset_of_dicts_and_a_bad_synthetic_shape_are_named():
    class Dicts(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return {"x": torch.zeros(3, 16), "y": 0}

    with pytest.raises(ValueError, match="must be an \\(input, label\\) pair, got a dict with keys \\['x', 'y'\\]"):
        PruneEnv(model=tiny_model(), reward_data=Dicts(), device="cpu")
    with pytest.raises(ValueError, match="input_shape must be positive whole numbers"):
        PruneEnv("resnet20-digits", synthetic=True, input_shape=(-1, 8, 8), device="cpu")


def test_a_corrupt_weights_file_and_a_recipe_with_a_list_as_meta_are_named(tmp_path):
    from prune_gym.recipes import recipe_from_json
    from prune_gym.tasks import get_task

    corrupt = tmp_path / "w.pt"
    corrupt.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with pytest.raises(ValueError, match="cannot read the checkpoint"):
        get_task("resnet20-digits").load_model(corrupt)
    with pytest.raises(ValueError, match="'meta' must be a JSON object"):
        recipe_from_json({"layers": {"conv1": 0.5}, "meta": [1, 2]})


def test_a_failed_step_with_per_step_fine_tuning_leaves_the_rest_of_the_episode_as_a_clean_run(monkeypatch):
    def episode(fail_at: int | None) -> list[float]:
        env = tiny_env(target_sparsity=0.5, train_data=tiny_data(128), finetune_steps=2)
        env.reset(seed=3)
        accuracies = []
        for index in range(env.num_layers):
            if index == fail_at:
                original = env.evaluator.accuracy

                def broken(*args, **kwargs):
                    raise RuntimeError("simulated out-of-memory")

                monkeypatch.setattr(env.evaluator, "accuracy", broken)
                with pytest.raises(RuntimeError, match="simulated"):
                    env.step(3)
                monkeypatch.setattr(env.evaluator, "accuracy", original)
            accuracies.append(env.step(3)[4]["reward_accuracy"])
        return accuracies

    assert episode(fail_at=0) == episode(fail_at=None)  # the fine-tuning generator was put back too


def test_non_finite_inputs_and_weights_are_refused_at_construction():
    x, y = tiny_data()
    x[5, 0, 3] = float("nan")
    x[9, 1, 0] = float("inf")
    with pytest.raises(ValueError, match=r"test split: 2 input sample\(s\) hold NaN or infinite values"):
        tiny_env(test_data=(x, y))
    model = tiny_model()
    with torch.no_grad():
        model[3].bias[1] = float("nan")
    with pytest.raises(ValueError, match=r"parameter '3.bias' holds 1 NaN or infinite value"):
        tiny_env(model=model)


def test_a_dataloader_that_drops_its_last_batch_is_refused():
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(*tiny_data(64)), batch_size=24, drop_last=True)
    with pytest.raises(ValueError, match="drop_last=True would leave 16 of the split's 64 samples out"):
        tiny_env(reward_data=loader)
    # Nothing dropped when the batches divide the split.
    env = tiny_env(reward_data=DataLoader(TensorDataset(*tiny_data(64)), batch_size=16, drop_last=True))
    assert env.evaluator.num_samples == 64


@pytest.mark.parametrize("train, message", [
    ((torch.randn(20, 3, 9), torch.randint(0, 4, (20,))), "fails on the train split's inputs"),
    ((torch.randn(20, 3, 16), torch.randint(0, 4, (15,))), "train split: inputs and labels differ in length: 20 vs 15"),
    ((torch.randn(20, 3, 16), torch.full((20,), 7)), "train split: a label is 7 but the model has 4 outputs"),
])
def test_a_train_split_that_does_not_fit_fails_at_construction(train, message):
    # Fine-tuning reads the train split at every step: it is checked before the first one.
    with pytest.raises(ValueError, match=message):
        tiny_env(train_data=train, finetune_steps=1)


def test_amp_none_takes_the_tasks_choice_and_true_or_false_is_kept():
    import gymnasium as gym

    assert tiny_env().amp is True  # your own model: on (it only acts on CUDA)
    assert tiny_env(amp=False).amp is False
    digits = gym.make(ENV_ID, synthetic=True, synthetic_samples=8, device="cpu")
    assert digits.unwrapped.amp is False  # the digits task turns it off
    assert gym.make(ENV_ID, synthetic=True, synthetic_samples=8, device="cpu", amp=True).unwrapped.amp is True
    assert PruneEnv(task="resnet20-digits", synthetic=True, synthetic_samples=8, device="cpu").amp is False
