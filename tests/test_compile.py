"""Compiled evaluation (``compile=True``): the same predictions as eager, through an episode.

On this CPU the compilation costs more than it saves (``compile="auto"`` leaves it off here); the
test runs it anyway on a tiny model, as the CUDA path does on ImageNet-sized ones.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from prune_gym import PruneEnv
from prune_gym.agents.policies import GlobalMagnitudePolicy


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()),
        nn.Linear(32, 5),
    ).eval()


def _episode(compile: bool) -> tuple[PruneEnv, list[float], dict]:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 3, 8, 8, generator=generator), torch.randint(0, 5, (40,), generator=generator)
    env = PruneEnv(model=_model(), reward_data=(x, y), test_data=(x[:24], y[:24]), device="cpu",
                   action_type="continuous", target_sparsity=0.8, compile=compile)
    return _episode_on(env)


def _episode_on(env: PruneEnv) -> tuple[PruneEnv, list[float], dict]:
    policy = GlobalMagnitudePolicy(env)
    observation, _ = env.reset()
    accuracies, done, info = [], False, {}
    while not done:
        observation, _, terminated, truncated, info = env.step(policy.predict(observation)[0])
        accuracies.append(info["reward_accuracy"])
        done = terminated or truncated
    return env, accuracies, info


def test_auto_compiles_only_on_cuda_for_the_tasks_that_pay_it_back():
    generator = torch.Generator().manual_seed(0)
    data = (torch.randn(8, 3, 8, 8, generator=generator), torch.randint(0, 5, (8,), generator=generator))
    assert PruneEnv(model=_model(), reward_data=data, device="cpu").compiled is False
    assert PruneEnv(task="resnet20-digits", synthetic=True, synthetic_samples=8, device="cpu").compiled is False
    with pytest.raises(ValueError, match="compile must be 'auto', True or False"):
        PruneEnv(model=_model(), reward_data=data, device="cpu", compile="yes")


def test_a_compiled_episode_scores_every_step_as_the_eager_one():
    from torch._dynamo.utils import counters

    counters.clear()
    eager_env, eager, eager_info = _episode(compile=False)
    assert counters["stats"]["unique_graphs"] == 0
    compiled_env, compiled, compiled_info = _episode(compile=True)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 3  # the three stages (and the test split's whole model) were compiled
    assert compiled_env.compiled and not eager_env.compiled
    # Each stage compiled on its own: the activation cache still resumes from the changed stage.
    assert all(isinstance(stage, torch._dynamo.eval_frame.OptimizedModule) for stage in compiled_env.evaluator._run_stages)
    # Masks applied in place between steps reach the compiled graphs: the same accuracy at every step.
    np.testing.assert_allclose(compiled, eager, atol=1e-9)
    assert compiled_info["test_accuracy"] == eager_info["test_accuracy"]
    assert compiled_info["layer_sparsities"] == eager_info["layer_sparsities"]
    # Reset and a second episode: the dense network again, through the same compiled stages.
    compiled_env.reset()
    assert compiled_env.reward_accuracy == pytest.approx(eager_env.dense_reward_accuracy)
    _, again, _ = _episode_on(compiled_env)
    np.testing.assert_allclose(again, eager, atol=1e-9)
    # Pruning in place and a new episode recompiled nothing beyond the first shapes seen.
    assert counters["stats"]["unique_graphs"] == graphs
