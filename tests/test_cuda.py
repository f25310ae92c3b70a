"""The CUDA paths, each checked against the CPU on the same model and data.

A GPU user gets ``device="auto"`` -> cuda, AMP (bf16 autocast) and channels_last by default;
these tests run those defaults. They are skipped where no GPU is visible (CI has none); run
them on a GPU machine with ``python -m pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch

import prune_gym  # noqa: F401  (registers the envs)
from prune_gym.agents.policies import GlobalMagnitudePolicy
from prune_gym.evaluation import evaluate_accuracy
from prune_gym.export import load_pruned
from prune_gym.pruning import find_prunable_layers, global_magnitude_masks
from prune_gym.workflows.export_task import export_task

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU visible: these tests check the CUDA paths")

ENV = "PruneResNet20Digits-v1"


def global_mp_episode(target: float, **env_kwargs) -> dict:
    env = gym.make(ENV, target_sparsity=target, **env_kwargs)
    policy = GlobalMagnitudePolicy(env)
    observation, _ = env.reset(seed=0)
    terminated = False
    while not terminated:
        observation, _, terminated, _, info = env.step(policy(observation))
    env.close()
    return info


def test_global_mp_masks_on_cuda_are_the_cpu_masks(digits_model):
    weights = [layer.weight.detach() for layer in find_prunable_layers(digits_model)]
    for min_threshold in (None, 0.0005):
        cpu = global_magnitude_masks(weights, 0.9, min_threshold)
        cuda = global_magnitude_masks([w.cuda() for w in weights], 0.9, min_threshold)
        assert all(m.is_cuda for m in cuda)
        assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu, cuda, strict=True))


def test_fp32_accuracy_on_cuda_is_the_cpu_accuracy(digits_task, digits_model):
    test = digits_task.load_splits().test
    cpu = evaluate_accuracy(digits_model, test, device="cpu")
    cuda = evaluate_accuracy(digits_model, test, device="cuda", amp=False)
    # Same predictions up to float summation order: at most one image may flip.
    assert abs(cpu - cuda) <= 1 / len(test) + 1e-9, (cpu, cuda)


def test_the_env_on_cuda_with_its_defaults_prunes_like_the_cpu_env():
    cpu = global_mp_episode(0.8, device="cpu")
    cuda = global_mp_episode(0.8)  # device="auto", channels_last=True, the task's fp32: what a GPU user gets
    # The same weights are removed (Global MP reads magnitudes, not activations) ...
    assert cuda["layer_sparsities"] == cpu["layer_sparsities"]
    assert cuda["overall_sparsity"] == cpu["overall_sparsity"]
    # ... and fp32 on the GPU (digits turns AMP off) moves the accuracies by float summation order
    # only: two images at most.
    assert abs(cuda["reward_accuracy"] - cpu["reward_accuracy"]) <= 0.006, (cuda["reward_accuracy"], cpu["reward_accuracy"])
    assert abs(cuda["test_accuracy"] - cpu["test_accuracy"]) <= 0.006, (cuda["test_accuracy"], cpu["test_accuracy"])
    assert abs(cuda["dense_test_accuracy"] - cpu["dense_test_accuracy"]) <= 0.006


def test_a_checkpoint_exported_on_cuda_scores_on_the_cpu_what_export_reported(digits_task, tmp_path):
    exported = export_task("resnet20-digits", tmp_path / "pruned.pt", policy="global-mp", sparsity=0.8, device="cuda")
    model = digits_task.build_model()
    masks, meta = load_pruned(tmp_path / "pruned.pt", model)
    assert all(not m.is_cuda for m in masks)
    assert meta["overall_sparsity"] == pytest.approx(0.8, abs=1e-4)
    test = digits_task.load_splits().test
    on_cpu = evaluate_accuracy(model, test, device="cpu")
    assert abs(on_cpu - exported.accuracy_exported) <= 1 / len(test) + 1e-9, (on_cpu, exported.accuracy_exported)


def test_synthetic_resnet50_env_runs_an_episode_on_cuda_with_amp_and_channels_last():
    env = gym.make("PruneResNet50-v1", synthetic=True, synthetic_samples=16, input_shape=(3, 64, 64),
                   target_sparsity=0.5)
    prune_env = env.unwrapped
    assert prune_env.device.type == "cuda"
    policy = GlobalMagnitudePolicy(env)
    observation, _ = env.reset(seed=0)
    steps, terminated = 0, False
    while not terminated:
        observation, reward, terminated, _, info = env.step(policy(observation))
        steps += 1
        assert 0.0 <= info["reward_accuracy"] <= 1.0
    env.close()
    assert steps == prune_env.num_layers
    assert info["overall_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert next(prune_env.model.parameters()).is_cuda


def test_global_mps_selection_on_cuda_is_the_cpus_on_tied_scores():
    """CUDA tensors take the concatenated selection path, the CPU the part-by-part one: the same
    masks, ties at the threshold broken by index in concatenated order, past the strided sample."""
    from prune_gym.selection import remove_smallest_in_parts

    generator = torch.Generator().manual_seed(3)
    parts = [torch.randint(0, 2000, (n,), generator=generator).float() / 2000 for n in (1728, 147_456, 9, 250_000)]
    total = sum(p.numel() for p in parts)
    for count in (1, total // 10, total // 2, round(0.9 * total), total - 1):
        cpu = remove_smallest_in_parts(parts, count)
        cuda = remove_smallest_in_parts([p.cuda() for p in parts], count)
        assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu, cuda, strict=True)), count


def test_a_sweep_trial_given_half_a_gpu_prunes_on_cuda(tmp_path, digits_model_state):
    """`prune-gym sweep --gpus-per-trial 0.5`: two trials share the GPU, each evaluates on cuda."""
    pytest.importorskip("ray.tune", reason="prune-gym sweep needs the [ray] extra")
    from prune_gym.workflows import sweep

    result = sweep(ENV, ["dqn"], [0, 1], [0.9], timesteps=100, n_envs=1, search=False, cpus_per_trial=1,
                   gpus_per_trial=0.5, output_dir=tmp_path / "gpu", log=lambda message: None)
    assert not result.incomplete and len(result.trials) == 3
    for trial in result.trials:
        assert trial.record["resources"]["gpus"] == 0.5
        assert trial.record["resources"]["device"].startswith("cuda"), trial.record["resources"]
    best = next(r for r in result.rows if r.method == "DQN (best found)")
    assert best.n == 2 and 0.0 < best.test_accuracy_mean <= 1.0
