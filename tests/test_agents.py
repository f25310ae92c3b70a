"""The SB3 agent factory, hyperparameter files, and training with checkpoints and resume.

Mechanics only, so the envs here are synthetic (random weights, 8 samples per split): an
episode costs milliseconds, and the agents train a few hundred steps in seconds.
"""

from __future__ import annotations

import io
import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.base_class import BaseAlgorithm

import prune_gym  # noqa: F401  (registers the env ids)
from prune_gym.agents import ALGORITHMS, algorithms_for, load_hyperparams, make_agent, train_agent
from prune_gym.agents.callbacks import EpisodeRecorder, TrainingProgress
from prune_gym.agents.factory import parse_policy_kwargs
from prune_gym.agents.run_folder import latest_checkpoint, load_agent
from prune_gym.episode import EpisodeRecord, best_per_target

ENV_ID = "PruneResNet20Digits-v1"
SYNTHETIC = {"synthetic": True, "synthetic_samples": 8, "device": "cpu"}

#: Small settings so that every algorithm updates its networks within 200 steps.
QUICK = {
    "dqn": {"learning_starts": 50, "batch_size": 16, "target_update_interval": 50},
    "ppo": {"n_steps": 64, "batch_size": 32, "n_epochs": 2},
    "a2c": {"n_steps": 22},
    "sac": {"learning_starts": 50, "batch_size": 16},
    "td3": {"learning_starts": 50, "batch_size": 16},
    "ddpg": {"learning_starts": 50, "batch_size": 16},
}



@pytest.fixture(scope="module")
def envs() -> dict[str, gym.Env]:
    made = {kind: gym.make(ENV_ID, action_type=kind, **SYNTHETIC) for kind in ("discrete", "continuous")}
    yield made
    for env in made.values():
        env.close()


def parameters_of(agent: BaseAlgorithm) -> list[torch.Tensor]:
    return [p.detach().clone() for p in agent.policy.parameters()]


@pytest.mark.parametrize(
    "algo, action_type",
    [(algo, kind) for kind in ("discrete", "continuous") for algo in algorithms_for(kind)],
)
def test_factory_builds_every_allowed_algorithm_and_it_learns(envs, algo, action_type):
    agent = make_agent(envs[action_type], algo, QUICK[algo], seed=0)
    before = parameters_of(agent)
    agent.learn(total_timesteps=200)
    assert agent.num_timesteps >= 200
    changed = any(not torch.equal(a, b) for a, b in zip(before, parameters_of(agent), strict=True))
    assert changed, f"{algo} did not update its networks in 200 steps"
    action, _ = agent.predict(envs[action_type].reset()[0], deterministic=True)
    assert envs[action_type].action_space.contains(action if action_type == "continuous" else int(action))


@pytest.mark.parametrize("algo, action_type", [("dqn", "discrete"), ("ppo", "discrete"), ("ddpg", "continuous")])
def test_a_channel_env_trains_dqn_ppo_and_ddpg_as_amc_did(algo, action_type):
    """The channel env (one group per step, the share of its channels removed) with the agents
    of the issue: DQN as in PuRL, PPO, and DDPG as AMC used it."""
    env = gym.make("PruneResNet20DigitsChannels-v1", action_type=action_type, **SYNTHETIC)
    agent = make_agent(env, algo, QUICK[algo], seed=0)
    before = parameters_of(agent)
    agent.learn(total_timesteps=200)
    assert any(not torch.equal(a, b) for a, b in zip(before, parameters_of(agent), strict=True))
    observation, _ = env.reset()
    done, info = False, {}
    while not done:  # its policy plays a whole episode within the budget
        action, _ = agent.predict(observation, deterministic=True)
        observation, _, done, _, info = env.step(action if action_type == "continuous" else int(action))
    assert info["flops_reduction"] >= env.unwrapped.target_sparsity - 1e-9
    env.close()


def test_action_type_allows_the_expected_algorithms():
    assert algorithms_for("discrete") == ["dqn", "ppo", "a2c"]
    assert algorithms_for("continuous") == ["ppo", "a2c", "sac", "td3", "ddpg"]
    assert set(ALGORITHMS) == {"dqn", "ppo", "a2c", "sac", "td3", "ddpg"}


@pytest.mark.parametrize("algo, action_type, fix", [("sac", "discrete", "continuous"), ("td3", "discrete", "continuous"),
                                                    ("ddpg", "discrete", "continuous"), ("dqn", "continuous", "discrete")])
def test_wrong_algorithm_for_the_action_type_is_a_clear_error(envs, algo, action_type, fix):
    with pytest.raises(ValueError, match=f"action_type='{fix}'"):
        make_agent(envs[action_type], algo)


def test_unknown_algorithm_is_a_clear_error(envs):
    with pytest.raises(ValueError, match="unknown algorithm 'rainbow'.*dqn"):
        make_agent(envs["discrete"], "rainbow")


def test_shipped_dqn_defaults_are_used(envs):
    settings = load_hyperparams("dqn", ENV_ID)
    agent = make_agent(envs["discrete"], "dqn")
    assert agent.gamma == pytest.approx(settings["gamma"])
    assert agent.batch_size == settings["batch_size"]
    assert agent.target_update_interval == settings["target_update_interval"]
    assert agent.exploration_final_eps == pytest.approx(settings["exploration_final_eps"])
    assert int(settings["n_timesteps"]) > 0
    net_arch = parse_policy_kwargs(settings.get("policy_kwargs"))["net_arch"]
    hidden = [m.out_features for m in agent.q_net.q_net if isinstance(m, torch.nn.Linear)][:-1]
    assert hidden == list(net_arch)


def test_hyperparameters_from_an_rl_zoo_file(envs, tmp_path):
    path = tmp_path / "dqn.yml"
    path.write_text(
        f"{ENV_ID}:\n"
        "  n_timesteps: !!float 1e4\n"
        "  policy: 'MlpPolicy'\n"
        "  policy_kwargs: \"dict(net_arch=[32], activation_fn=nn.Tanh)\"\n"
        "  learning_rate: lin_1e-3\n"
        "  gamma: 0.9\n"
        "default:\n"
        "  gamma: 0.5\n"
    )
    agent = make_agent(envs["discrete"], "dqn", path)
    assert agent.gamma == pytest.approx(0.9)  # the env id's entry wins over `default`
    assert agent.policy_kwargs["activation_fn"] is torch.nn.Tanh
    assert agent.lr_schedule(1.0) == pytest.approx(1e-3) and agent.lr_schedule(0.5) == pytest.approx(5e-4)
    # A dict of settings applies over the shipped defaults.
    agent = make_agent(envs["discrete"], "dqn", {"gamma": 0.8})
    assert agent.gamma == pytest.approx(0.8)
    assert agent.batch_size == load_hyperparams("dqn", ENV_ID)["batch_size"]


def test_bad_hyperparameters_are_clear_errors(envs, tmp_path):
    with pytest.raises(ValueError, match="unsupported expression"):
        parse_policy_kwargs("dict(net_arch=__import__('os').getcwd())")
    with pytest.raises(ValueError, match="rl-zoo3's training script"):
        make_agent(envs["discrete"], "dqn", {"normalize": True})
    with pytest.raises(ValueError, match="bad dqn hyperparameters"):
        make_agent(envs["discrete"], "dqn", {"not_a_setting": 1})
    with pytest.raises(FileNotFoundError, match="missing.yml"):
        make_agent(envs["discrete"], "dqn", tmp_path / "missing.yml")


class InterruptAfter(gym.Wrapper):
    """Raises KeyboardInterrupt (as Ctrl-C would) on the n-th step."""

    def __init__(self, env: gym.Env, steps: int) -> None:
        super().__init__(env)
        self.remaining = steps

    def step(self, action):
        self.remaining -= 1
        if self.remaining < 0:
            raise KeyboardInterrupt
        return self.env.step(action)


def test_train_writes_checkpoints_and_resume_continues_the_step_count(tmp_path):
    output = tmp_path / "run"
    first = train_agent(
        ENV_ID, "dqn", 120, output_dir=output, hyperparams={**QUICK["dqn"], "n_envs": 1, "env_kwargs": {"n_actions": 7}},
        env_kwargs=SYNTHETIC,
        targets=[0.5, 0.8], checkpoint_freq=50,  # progress and TensorBoard on, as users get them
    )
    assert first.num_timesteps == 120
    # The env was built with the env_kwargs of the settings (as tuned settings may ask).
    assert first.model.action_space.n == 7
    assert (output / "model.zip").is_file() and (output / "run.json").is_file()
    assert (output / "checkpoints" / "dqn_50_steps.zip").is_file()
    assert (output / "checkpoints" / "dqn_replay_buffer_50_steps.pkl").is_file()
    assert any((output / "tensorboard").rglob("events.out.tfevents.*"))
    assert latest_checkpoint(output, "dqn").name == "dqn_120_steps.zip"

    resumed = train_agent(
        ENV_ID, "dqn", 300, output_dir=output, env_kwargs={**SYNTHETIC, "n_actions": 7}, targets=[0.5, 0.8],
        n_envs=1,
        checkpoint_freq=0, progress_bar=False, resume=True,
    )
    assert resumed.resumed_from.name == "dqn_120_steps.zip"
    assert resumed.num_timesteps == 300  # 120 + 180: --timesteps is the run's total
    assert resumed.model.replay_buffer.size() == 300  # the first run's transitions came back too
    assert load_agent(output / "model.zip").num_timesteps == 300


def test_ctrl_c_saves_a_checkpoint_and_resume_loses_no_step(tmp_path):
    output = tmp_path / "run"
    env = InterruptAfter(gym.make(ENV_ID, **SYNTHETIC), steps=70)
    with pytest.raises(KeyboardInterrupt):
        train_agent(ENV_ID, "dqn", 200, output_dir=output, hyperparams=QUICK["dqn"], env=env,
                    checkpoint_freq=0, progress_bar=False, tensorboard=False)
    saved = latest_checkpoint(output, "dqn")
    assert saved.name == "dqn_interrupted_70_steps.zip"
    resumed = train_agent(ENV_ID, "dqn", 200, output_dir=output, env_kwargs=SYNTHETIC, checkpoint_freq=0,
                          progress_bar=False, tensorboard=False, resume=True, n_envs=1)
    assert resumed.resumed_from == saved
    assert resumed.num_timesteps == 200


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete dqn checkpoint"):
        train_agent(ENV_ID, "dqn", 10, output_dir=tmp_path, env_kwargs=SYNTHETIC, resume=True, progress_bar=False)
    with pytest.raises(ValueError, match="action_type='continuous'"):
        train_agent(ENV_ID, "sac", 10, output_dir=tmp_path, env_kwargs=SYNTHETIC, progress_bar=False)


def test_training_in_parallel_envs_counts_every_step(tmp_path):
    """n_envs=2: two worker processes step at once; the step count and checkpoints add up."""
    result = train_agent(
        ENV_ID, "dqn", 100, output_dir=tmp_path, hyperparams=QUICK["dqn"], env_kwargs=SYNTHETIC,
        targets=[0.5, 0.8], n_envs=2, checkpoint_freq=50, progress_bar=False, tensorboard=False,
    )
    assert result.model.n_envs == 2
    assert result.num_timesteps == 100
    assert (tmp_path / "checkpoints" / "dqn_50_steps.zip").is_file()
    assert result.model.replay_buffer.size() * 2 == 100  # one row per step of both envs


def test_a_folder_holding_a_run_is_never_trained_into_without_resume(tmp_path):
    output = tmp_path / "run"
    train_agent(ENV_ID, "dqn", 44, output_dir=output, hyperparams=QUICK["dqn"], env_kwargs=SYNTHETIC, n_envs=1,
                checkpoint_freq=0, progress_bar=False, tensorboard=False)
    before = {path: path.stat().st_mtime_ns for path in output.rglob("*")}
    with pytest.raises(ValueError, match="already holds a training run.*--resume"):
        train_agent(ENV_ID, "dqn", 44, output_dir=output, hyperparams=QUICK["dqn"], env_kwargs=SYNTHETIC, n_envs=1,
                    checkpoint_freq=0, progress_bar=False, tensorboard=False)
    assert {path: path.stat().st_mtime_ns for path in output.rglob("*")} == before  # nothing touched


def test_run_record_episodes_and_best_found(tmp_path):
    output = tmp_path / "run"
    env = gym.make(ENV_ID, **SYNTHETIC)
    result = train_agent(ENV_ID, "dqn", 66, output_dir=output, hyperparams=QUICK["dqn"], env=prune_gym.agents.TargetSamplingWrapper(env, [0.5, 0.8]),
                         targets=[0.5, 0.8], env_kwargs=SYNTHETIC, checkpoint_freq=0, progress_bar=False, tensorboard=False)
    record = json.loads((output / "run.json").read_text())
    # The run's own env was passed in: its targets and kwargs are still what run.json says.
    assert record["targets"] == [0.5, 0.8] and record["env_kwargs"] == SYNTHETIC
    assert record["status"] == "finished" and record["num_timesteps"] == 66
    episodes = [json.loads(line) for line in (output / "episodes.jsonl").read_text().splitlines()]
    assert len(episodes) == len(result.episodes.records) == 3  # 22 layers per episode
    assert all(e["target_sparsity"] in (0.5, 0.8) and len(e["layer_sparsities"]) == 22 for e in episodes)
    assert all(e["overall_sparsity"] == pytest.approx(e["target_sparsity"], abs=1e-3) for e in episodes)
    best = json.loads((output / "best_found.json").read_text())
    assert best["selected_on"] == "reward split" and best["episodes"] == 3
    for key, chosen in best["best_per_target"].items():
        at_target = [e for e in episodes if f"{e['target_sparsity']:.6g}" == key]
        assert chosen["reward_accuracy"] == max(e["reward_accuracy"] for e in at_target)


def test_best_found_selection_never_reads_the_test_split():
    def record(reward, test, target=0.8):
        return EpisodeRecord(timesteps=0, seconds=0.0, target_sparsity=target, reward_accuracy=reward,
                             overall_sparsity=target, flops_reduction=0.5, episode_return=0.0, test_accuracy=test)

    records = [record(0.60, 0.99), record(0.90, 0.10), record(0.90, 0.95), record(0.70, 0.50, target=0.5)]
    best = best_per_target(records)
    assert best["0.8"] is records[1]  # the highest reward-split accuracy, earliest on ties, whatever the test split says
    assert best["0.5"] is records[3]


def test_tensorboard_gets_the_pruning_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output = tmp_path / "run"
    train_agent(ENV_ID, "dqn", 132, output_dir=output, hyperparams={**QUICK["dqn"], "n_envs": 1},
                env_kwargs=SYNTHETIC, targets=[0.8], checkpoint_freq=0, progress_bar=False)
    events = next((output / "tensorboard").rglob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0, "histograms": 0})
    accumulator.Reload()
    scalars = set(accumulator.Tags()["scalars"])
    assert {"prune/reward_accuracy", "prune/overall_sparsity", "prune/test_accuracy",
            "prune/best_reward_accuracy/target_0.8"} <= scalars
    assert "prune/layer_sparsity" in accumulator.Tags()["histograms"]
    sparsity = accumulator.Scalars("prune/overall_sparsity")[-1].value
    assert sparsity == pytest.approx(0.8, abs=1e-3)


def test_progress_is_a_plain_line_in_a_log_and_a_bar_on_a_terminal(tmp_path, capsys):
    # Default settings, stderr captured (not a terminal, as in a log file): plain lines.
    train_agent(ENV_ID, "dqn", 66, output_dir=tmp_path / "run", hyperparams=QUICK["dqn"], env_kwargs=SYNTHETIC,
                n_envs=1, targets=[0.5], checkpoint_freq=0, tensorboard=False)
    err = capsys.readouterr().err
    assert "[train] steps 0/66" in err and "[train] steps 66/66 (100%)" in err and "best reward acc 0.5: " in err
    assert "\r" not in err  # no carriage-return bar in a log

    # The same callback on a terminal draws a tqdm bar.
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    recorder = EpisodeRecorder(tensorboard=False)
    agent = make_agent(gym.make(ENV_ID, target_sparsity=0.5, **SYNTHETIC), "dqn", QUICK["dqn"])
    agent.learn(44, callback=[recorder, TrainingProgress(recorder, stream=stream)])
    assert "44/44" in stream.getvalue() and "best reward acc 0.5: " in stream.getvalue()
    assert len(recorder.records) == 2 and np.isfinite(recorder.best_reward_accuracy())


def test_a_resumed_runs_progress_counts_from_where_the_run_stands(tmp_path, capsys):
    output = tmp_path / "run"
    train_agent(ENV_ID, "dqn", 44, output_dir=output, hyperparams={**QUICK["dqn"], "n_envs": 1}, env_kwargs=SYNTHETIC,
                checkpoint_freq=0, tensorboard=False)
    capsys.readouterr()
    train_agent(ENV_ID, "dqn", 88, output_dir=output, env_kwargs=SYNTHETIC, n_envs=1, checkpoint_freq=0,
                tensorboard=False, resume=True)
    err = capsys.readouterr().err
    assert "[train] steps 44/88 (50%)" in err and "[train] steps 88/88 (100%)" in err


def test_training_envs_leave_a_test_split_read_by_a_loader_unscored(monkeypatch):
    """Training never reads the test split: where a pass would decode it again (ImageNet's
    validation JPEGs) the training env skips it, unless the caller asks for it."""
    from prune_gym import evaluation
    from prune_gym.agents.training import make_training_env

    monkeypatch.setattr(evaluation, "MAX_RESIDENT_SAMPLES", 4)  # the 8-sample synthetic splits: "large"
    env = make_training_env(ENV_ID, targets=[0.5], **SYNTHETIC)
    assert not env.unwrapped.engine.test_evaluator.resident and not env.unwrapped.evaluate_test_at_end
    env.reset(seed=0)
    terminated = False
    while not terminated:
        _, _, terminated, _, info = env.step(env.action_space.sample())
    assert "test_accuracy" not in info and "reward_accuracy" in info
    asked = make_training_env(ENV_ID, targets=[0.5], evaluate_test=True, **SYNTHETIC)
    assert asked.unwrapped.evaluate_test_at_end
    assert gym.make(ENV_ID, **SYNTHETIC).unwrapped.evaluate_test_at_end  # gym.make's default: scored


def test_a_second_training_into_a_held_run_folder_refuses_naming_the_holder(tmp_path):
    import os

    from prune_gym.agents.run_folder import run_lock

    folder = tmp_path / "run"
    with run_lock(folder):  # another training holds the folder
        with pytest.raises(ValueError, match=f"is being trained into by process {os.getpid()}"):
            train_agent("PruneResNet20Digits-v1", "dqn", 22, output_dir=folder, env_kwargs={"device": "cpu"},
                        progress_bar=False, tensorboard=False, n_envs=1)
        assert not (folder / "run.json").exists()  # refused before anything was written
    # Released: the folder can be trained into again.
    with run_lock(folder):
        pass


def test_resume_continues_one_record_cut_at_the_checkpoint_and_best_found_covers_all_of_it(tmp_path):
    output = tmp_path / "run"
    train_agent(ENV_ID, "dqn", 120, output_dir=output, hyperparams={**QUICK["dqn"], "n_envs": 1}, env_kwargs=SYNTHETIC,
                targets=[0.5, 0.8], checkpoint_freq=50, progress_bar=False, tensorboard=False)
    first = [json.loads(line) for line in (output / "episodes.jsonl").read_text().splitlines()]
    assert [r["timesteps"] for r in first] == [22, 44, 66, 88, 110]
    # As after a kill at step 120 whose last checkpoint was at 50: resume from that checkpoint.
    resumed = train_agent(ENV_ID, "dqn", 150, output_dir=output, env_kwargs=SYNTHETIC, targets=[0.5, 0.8], n_envs=1,
                          checkpoint_freq=0, progress_bar=False, tensorboard=False,
                          resume=output / "checkpoints" / "dqn_50_steps.zip")
    records = [json.loads(line) for line in (output / "episodes.jsonl").read_text().splitlines()]
    steps = [r["timesteps"] for r in records]
    assert steps[:2] == [22, 44] and steps == sorted(set(steps))  # no episode twice, none out of order
    assert records[:2] == first[:2]
    assert len(resumed.episodes.records) == len(records)  # the recorder holds the whole run ...
    best = json.loads((output / "best_found.json").read_text())
    assert best["episodes"] == len(records)  # ... and so does best_found.json
    for target, chosen in best["best_per_target"].items():
        at_target = [r for r in records if f"{r['target_sparsity']:.6g}" == target]
        assert chosen["reward_accuracy"] == max(r["reward_accuracy"] for r in at_target)


def test_an_agent_file_of_another_algorithm_names_the_one_to_pass(tmp_path):
    env = gym.make(ENV_ID, **SYNTHETIC)
    make_agent(env, "ppo").save(tmp_path / "my_ppo.zip")
    with pytest.raises(ValueError, match=r"does not load as a DQN agent .*ActorCriticPolicy \(trained with ppo or a2c\)"):
        load_agent(tmp_path / "my_ppo.zip", env=env, algo="dqn")
    assert load_agent(tmp_path / "my_ppo.zip", env=env, algo="ppo").num_timesteps == 0


def test_training_without_tensorboard_leaves_nothing_in_the_temporary_folder(tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.delenv("SB3_LOGDIR", raising=False)  # as on a user's machine (conftest sets it)
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    train_agent(ENV_ID, "dqn", 44, output_dir=tmp_path / "run", hyperparams={**QUICK["dqn"], "n_envs": 1},
                env_kwargs=SYNTHETIC, checkpoint_freq=0, progress_bar=False, tensorboard=False)
    assert not [path.name for path in scratch.iterdir() if path.name.startswith("SB3-")]


def test_a_truncated_replay_buffer_makes_its_checkpoint_incomplete(tmp_path):
    from prune_gym.agents.run_folder import is_complete_checkpoint

    output = tmp_path / "run"
    train_agent(ENV_ID, "dqn", 50, output_dir=output, hyperparams={**QUICK["dqn"], "n_envs": 1}, env_kwargs=SYNTHETIC,
                checkpoint_freq=0, progress_bar=False, tensorboard=False)
    checkpoint = output / "checkpoints" / "dqn_50_steps.zip"
    buffer = output / "checkpoints" / "dqn_replay_buffer_50_steps.pkl"
    assert is_complete_checkpoint(checkpoint)
    data = buffer.read_bytes()
    buffer.write_bytes(data[: len(data) // 3])  # as a full disk leaves it
    assert not is_complete_checkpoint(checkpoint)


class DiskFullAfter(InterruptAfter):
    """Raises ENOSPC (as a full disk would, under the env's own writes) on the n-th step."""

    def step(self, action):
        import errno

        self.remaining -= 1
        if self.remaining < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.env.step(action)


def test_a_run_that_dies_of_a_full_disk_is_marked_failed_not_left_running(tmp_path, monkeypatch):
    import errno

    import prune_gym.agents.run_folder as run_folder
    import prune_gym.agents.training as training

    real_write = training.atomic_write_json

    def full_disk_after_start(path, data):
        if data.get("status") != "running":  # the disk fills up after the run started
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, data)

    monkeypatch.setattr(training, "atomic_write_json", full_disk_after_start)
    monkeypatch.setattr(run_folder, "atomic_write_json", full_disk_after_start)
    output = tmp_path / "run"
    with pytest.raises(OSError, match="No space left"):
        train_agent(ENV_ID, "dqn", 200, output_dir=output, hyperparams=QUICK["dqn"], env=DiskFullAfter(
            gym.make(ENV_ID, **SYNTHETIC), steps=30), checkpoint_freq=0, progress_bar=False, tensorboard=False)
    record = json.loads((output / "run.json").read_text())
    assert record["status"] == "failed" and record["algo"] == "dqn"
