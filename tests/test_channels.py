"""Channel pruning: groups, masks against the physically smaller network, exact accounting, the
channel rules, the channel env and its export."""

from __future__ import annotations

import copy
import json
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import prune_gym
from prune_gym.accounting import layer_flops
from prune_gym.agents.policies import reference_policy
from prune_gym.agents.report import write_recipes
from prune_gym.agents.rollout import run_episode
from prune_gym.channel_allocation import CHANNEL_METHODS, channel_allocation, lamp_scores
from prune_gym.channel_export import (
    OnnxRunner,
    export_channel_recipe,
    export_channel_task,
    export_onnx,
    fold_batchnorm,
    load_slim,
    measure_latency,
    onnx_logits,
    slim_model,
)
from prune_gym.channels import (
    ChannelCost,
    ChannelMasks,
    allowed_counts,
    check_masks_match_slim,
    find_channel_groups,
    slim_copy,
)
from prune_gym.cli import main as cli_main
from prune_gym.envs.channel_env import CHANNEL_FEATURES, ChannelPruneEnv
from prune_gym.errors import ConfigError
from prune_gym.evaluation import evaluate_accuracy, sample_tensors
from prune_gym.pruning import find_prunable_layers
from prune_gym.tasks.models.cifar_resnet import resnet20
from prune_gym.workflows.compare import (
    DEFAULT_CHANNEL_TARGETS,
    DEFAULT_LATENCY_TARGETS,
    DEFAULT_SPARSITIES,
    Experiment,
    compare,
)
from prune_gym.workflows.methods import reference_env_kwargs

CHANNELS_ID = "PruneResNet20DigitsChannels-v1"


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (fresh ones are the identity)."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.rand(size, generator=generator) * 0.2 - 0.1)
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(size, generator=generator) * 0.2 - 0.1)
    return model.eval()


MODELS = {
    "resnet20": (lambda: resnet20(10, 1), (1, 8, 8)),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(num_classes=10), (3, 32, 32)),
    "resnet50": (lambda: torchvision.models.resnet50(num_classes=10), (3, 32, 32)),
    # Concatenations: a BatchNorm reads the channels of several groups (each keeps the others' masks).
    "densenet": (lambda: torchvision.models.DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8,
                                                     bn_size=2, num_classes=10), (3, 16, 16)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_masks_give_the_smaller_network_and_the_accounting_is_exact(name):
    build, shape = MODELS[name]
    torch.manual_seed(0)
    model = _randomise_batchnorm(build())
    x = torch.randn(4, *shape)
    groups, importance = find_channel_groups(model, x[:1])
    masks = ChannelMasks(model, groups, importance)
    cost = ChannelCost(model, groups, find_prunable_layers(model, example_input=x[:1]), x[:1])
    rng = np.random.default_rng(0)
    counts = [int(rng.integers(0, group.channels)) for group in groups]
    with torch.no_grad():
        dense_out = model(x)
    masks.set_all(counts)
    slim = slim_copy(model, [g.name for g in groups], masks.removed_channels(), x[:1]).eval()
    with torch.no_grad():
        masked_out, slim_out = model(x), slim(x)
    assert torch.allclose(masked_out, slim_out, atol=1e-5, rtol=1e-4)
    # What the cost model says the smaller network costs is what it costs.
    slim_layers = find_prunable_layers(slim)
    assert cost.flops(counts) == pytest.approx(sum(layer_flops(slim, x[:1], slim_layers)), rel=1e-9)
    assert cost.params(counts) == pytest.approx(sum(p.numel() for p in slim.parameters()), rel=1e-9)
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in model.parameters())
    # Restoring gives the dense network back, bit for bit.
    masks.restore()
    with torch.no_grad():
        assert torch.equal(model(x), dense_out)


def test_resnet20_groups_follow_the_forward_order():
    model = resnet20(10, 1).eval()
    groups, importance = find_channel_groups(model, torch.randn(1, 1, 8, 8))
    names = [group.name for group in groups]
    # The stem's group is the first stage's residual sum; each block's inner channels are their own group.
    assert names[:2] == ["stem.0", "blocks.0.conv1"]
    assert "blocks.3.shortcut.0" in names and "blocks.6.shortcut.0" in names
    assert len(groups) == 12 and [len(scores) for scores in importance] == [g.channels for g in groups]
    residual = groups[0]
    assert {"stem.0", "blocks.0.conv2", "blocks.1.conv2", "blocks.2.conv2"} <= set(residual.modules("out"))
    assert "head.2" not in {s.module for g in groups for s in g.slices if s.side == "out"}  # the classes stay


class _NormAcrossChannels(nn.Module):
    """Conv -> GroupNorm (statistics over channels) -> Conv: masking is not removal here."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.GroupNorm(1, 8)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.pool(self.conv2(torch.relu(self.norm(self.conv1(x))))).flatten(1))


def test_groups_a_mask_cannot_remove_keep_their_channels_and_say_so():
    model = _NormAcrossChannels().eval()
    x = torch.randn(4, 3, 8, 8)
    with pytest.warns(UserWarning, match=r"'conv1' \(reaches 'norm', a GroupNorm\)"):
        groups, importance = find_channel_groups(model, x[:1])
    assert [group.name for group in groups] == ["conv2"]
    check_masks_match_slim(model, groups, importance, x, x[:1])  # what is left masks exactly
    with warnings.catch_warnings():  # excluding the group says so: no warning
        warnings.simplefilter("error")
        assert [g.name for g in find_channel_groups(model, x[:1], exclude_names=["conv1"])[0]] == ["conv2"]


def test_a_model_with_only_groups_a_mask_cannot_remove_is_refused_naming_them():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 3)).eval()
    with pytest.warns(UserWarning), pytest.raises(ConfigError, match=r"no channel group.*'0' \(reaches '1', a GroupNorm\)"):
        find_channel_groups(model, torch.randn(1, 3, 8, 8))


def test_a_vision_transformer_prunes_its_mlp_channels_and_keeps_its_classes():
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=2,
                                                 hidden_dim=8, mlp_dim=16, num_classes=3).eval()
    nn.init.normal_(model.heads.head.weight)  # initialised to zeros: the outputs would not depend on anything
    x = torch.randn(4, 3, 16, 16)
    # The residual stream reaches the LayerNorms and the position embedding: it keeps its channels.
    with pytest.warns(UserWarning, match="LayerNorm|bare parameter"):
        groups, importance = find_channel_groups(model, x[:1])
    # The attention's out_proj is never called as a module: the head (called last) keeps the classes.
    assert [group.name for group in groups] == [f"encoder.layers.encoder_layer_{i}.mlp.0" for i in range(2)]
    masks = ChannelMasks(model, groups, importance)
    with torch.no_grad():
        dense = model(x)
        masks.set_all([8, 5])
        masked = model(x)
    slim = slim_copy(model, [g.name for g in groups], masks.removed_channels(), x[:1]).eval()
    with torch.no_grad():
        assert torch.allclose(slim(x), masked, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(masked, dense, atol=1e-3)  # the pruning changed the outputs
    assert slim.heads.head.out_features == 3 and slim.encoder.layers[0].mlp[0].out_features == 8


def test_channel_rules_meet_the_target_within_the_caps():
    model = _randomise_batchnorm(resnet20(10, 1))
    x = torch.randn(1, 1, 8, 8)
    groups, importance = find_channel_groups(model, x)
    cost = ChannelCost(model, groups, find_prunable_layers(model, example_input=x), x)
    caps = [int(0.8 * g.channels) for g in groups]
    allowed = [np.arange(cap + 1) for cap in caps]
    for method in CHANNEL_METHODS:
        for budget in ("flops", "params"):
            counts = channel_allocation(method, importance, cost, allowed, budget, 0.5, seed=1)
            assert all(0 <= c <= cap for c, cap in zip(counts, caps, strict=True))
            assert 0.5 <= cost.reduction(budget, counts) < 0.56, (method, budget)
    # Near what the caps allow, too: the random rule's unequal shares scale on until it is met.
    most = cost.flops_reduction(np.array(caps))
    for method in CHANNEL_METHODS:
        counts = channel_allocation(method, importance, cost, allowed, "flops", 0.9 * most, seed=1)
        assert cost.flops_reduction(counts) >= 0.9 * most, method
    uniform = channel_allocation("uniform", importance, cost, allowed, "flops", 0.5)
    shares = {round(c / g.channels, 1) for c, g in zip(uniform, groups, strict=True)}
    assert len(shares) <= 2  # one share, rounded per group
    assert channel_allocation("random", importance, cost, allowed, "flops", 0.5, seed=3) == \
        channel_allocation("random", importance, cost, allowed, "flops", 0.5, seed=3)
    scores = lamp_scores(torch.tensor([3.0, 1.0, 2.0]))
    assert scores.max() == 1.0 and scores.argmax() == 0
    with pytest.raises(ConfigError, match="unknown channel allocation"):
        channel_allocation("erk", importance, cost, allowed, "flops", 0.5)


@pytest.fixture(scope="module")
def channel_env(digits_model_state):
    env = gym.make(CHANNELS_ID, action_type="continuous", action_mode="absolute", target_sparsity=0.5)
    yield env.unwrapped
    env.close()


def test_every_episode_meets_the_flops_target(channel_env):
    env = channel_env
    rng = np.random.default_rng(0)
    for target in (0.3, 0.5, 0.7):
        for _ in range(3):
            env.reset(options={"target_sparsity": target})
            done, info = False, {}
            while not done:
                _, reward, done, _, info = env.step(rng.uniform(-1, 1, size=(1,)).astype(np.float32))
                assert np.isfinite(reward)
            removed = list(info["removed_channel_counts"].values())
            assert info["flops_reduction"] >= target
            # Within one channel of the last group above the target.
            fewer = removed[:-1] + [max(removed[-1] - 1, 0)]
            assert env.cost.flops_reduction(fewer) < target or removed[-1] == 0
            assert info["flops_reduction"] == pytest.approx(env.cost.flops_reduction(removed))


def test_the_reported_accuracy_is_the_smaller_networks(channel_env, digits_task):
    env = channel_env
    counts = env.allocation_counts("uniform", 0.5)
    info = env.replay(counts)
    slim = slim_model(env)
    splits = digits_task.load_splits()
    assert evaluate_accuracy(slim, splits.reward, "cpu", amp=False) == pytest.approx(info["reward_accuracy"])
    assert evaluate_accuracy(slim, splits.test, "cpu", amp=False) == pytest.approx(info["test_accuracy"])
    assert info["flops_reduction"] >= 0.5 and list(info["removed_channel_counts"].values()) == counts


def test_the_centre_action_plays_the_reference_and_reset_restores(digits_model_state):
    env = ChannelPruneEnv("resnet20-digits", target_sparsity=0.5, reference="uniform", render_mode="ansi")
    dense = {k: v.clone() for k, v in env.model.state_dict().items()}
    observation, _ = env.reset()
    assert observation.shape == (len(CHANNEL_FEATURES),) and env.observation_space.contains(observation)
    done, info = False, {}
    while not done:
        _, _, done, _, info = env.step(env.action_space.n // 2)
    played, reference = list(info["removed_channel_counts"].values()), env.allocation_counts("uniform")
    # The rule overshoots the target by its step (one share for every group): the projection trims
    # the last group to the fewest channels that still meet it, as for any policy.
    assert played[:-1] == reference[:-1] and played[-1] <= reference[-1]
    assert env.cost.flops_reduction(reference) >= info["flops_reduction"] >= 0.5
    assert "blocks.0.conv1" in env.render() and "FLOPs removed 0.5" in env.render()
    env.reset()
    assert all(torch.equal(dense[k], v) for k, v in env.model.state_dict().items())
    assert env.reward_accuracy == env.dense_reward_accuracy


def test_bad_channel_env_arguments_are_refused_before_loading(digits_model):
    for kwargs, message in (
        ({"budget": "time"}, "budget must be one of"),
        ({"latency_table": "t.json"}, "latency_table is read only with budget=.latency."),
        ({"reference": "global-mp"}, "reference must be a channel allocation rule"),
        ({"target_sparsity": 1.5}, "target_sparsity"),
        ({"target_sparsity": 0.0}, "above 0"),
    ):
        with pytest.raises(ConfigError, match=message):
            ChannelPruneEnv(model=digits_model, reward_data=(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)),
                            **kwargs)
    with pytest.raises(ConfigError, match="beyond what max_sparsity"):
        ChannelPruneEnv("resnet20-digits", target_sparsity=0.97, max_sparsity=0.5)
    with pytest.raises(ConfigError, match=r"^bn_recalibration_batches needs train_data= \(or a task\)"):
        ChannelPruneEnv(model=digits_model, reward_data=(torch.rand(8, 1, 8, 8), torch.arange(8) % 10),
                        bn_recalibration_batches=1)
    before = {k: v.clone() for k, v in digits_model.state_dict().items()}
    env = ChannelPruneEnv(model=digits_model, reward_data=(torch.rand(8, 1, 8, 8), torch.arange(8) % 10))
    env.reset()
    env.step(env.action_space.n - 1)
    assert all(torch.equal(before[k], v) for k, v in digits_model.state_dict().items())  # the user's model as given


@pytest.mark.parametrize("env_id", ["PruneResNet50Channels-v1", "PruneMobileNetV2Channels-v1"])
def test_synthetic_imagenet_channel_envs_run_an_episode(env_id):
    env = gym.make(env_id, synthetic=True, input_shape=(3, 32, 32), synthetic_samples=4, device="cpu",
                   target_sparsity=0.5)
    env.reset(seed=0)
    done, info, steps = False, {}, 0
    while not done:
        _, _, done, _, info = env.step(env.action_space.sample())
        steps += 1
    assert steps == env.unwrapped.num_groups and info["flops_reduction"] >= 0.5
    slim = slim_model(env.unwrapped)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(slim(x), env.unwrapped.model.float()(x.contiguous(memory_format=torch.channels_last)),
                              atol=1e-4, rtol=1e-3)
    env.close()


def test_export_writes_a_smaller_checkpoint_and_onnx_that_score_what_the_env_said(channel_env, digits_task, tmp_path):
    env = channel_env
    shares = env.allocation_sparsities("global-norm", 0.5)
    result = export_channel_recipe(env, dict(zip(env.group_names(), shares, strict=True)), tmp_path, latency_rounds=2)
    assert result.test_accuracy == pytest.approx(env.evaluate_test())
    assert result.params < result.dense_params and result.flops_reduction >= 0.5
    slim = load_slim(result.checkpoint, digits_task.build_model(), torch.zeros(1, 1, 8, 8))
    splits = digits_task.load_splits()
    assert evaluate_accuracy(slim, splits.test, "cpu", amp=False) == pytest.approx(result.test_accuracy)
    x = sample_tensors(splits.test, 16)[0]
    with torch.no_grad():
        expected = slim(x).numpy()
    assert np.abs(onnx_logits(result.onnx, x) - expected).max() < 1e-4
    assert result.onnx_max_difference < 1e-4
    record = json.loads((tmp_path / "export.json").read_text())
    cpu = record["latency_ms"]["cpu"]
    assert set(cpu) == {"dense", "pruned", "speedup"} and all(v > 0 for v in cpu["pruned"].values())
    assert cpu["speedup"]["256"] == pytest.approx(cpu["dense"]["256"] / cpu["pruned"]["256"], rel=0.5)
    # As deployed, too: BatchNorm folded into the convolutions of both networks.
    assert set(record["latency_ms"]["cpu, BatchNorm folded"]["speedup"]) == {"1", "256"}
    assert "latency on cpu, BatchNorm folded, batch 1" in result.summary()
    # And in onnxruntime: the exported file against the dense network's, side by side.
    ort = record["latency_ms"]["cpu, onnxruntime"]
    assert set(ort["speedup"]) == {"1", "256"} and all(v > 0 for v in ort["pruned"].values())
    assert "latency on cpu, onnxruntime, batch 256" in result.summary()
    with pytest.raises(ConfigError, match="does not fit this env's channel groups"):
        export_channel_recipe(env, {"stem.0": 0.5}, tmp_path / "other")
    with pytest.raises(ConfigError, match="latency_rounds must be"):
        export_channel_recipe(env, dict(zip(env.group_names(), shares, strict=True)), tmp_path / "none", latency_rounds=0)
    assert not (tmp_path / "none").exists()


def test_latency_and_onnx_helpers(tmp_path):
    model = resnet20(10, 1).eval()
    timings = measure_latency(model, (1, 8, 8), batch_sizes=(1, 4), min_seconds=0.01)
    assert set(timings) == {"1", "4"} and all(ms > 0 for ms in timings.values())
    path = export_onnx(model, torch.zeros(1, 1, 8, 8), tmp_path / "m.onnx")
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert np.abs(onnx_logits(path, x) - model(x).numpy()).max() < 1e-4
    runner = OnnxRunner(path)  # timed like a module
    assert set(measure_latency(runner, (1, 8, 8), batch_sizes=(1, 4), min_seconds=0.01)) == {"1", "4"}
    with pytest.raises(ConfigError, match="runs on the CPU"):
        measure_latency(runner, (1, 8, 8), device="cuda")


def test_folding_batchnorm_keeps_the_outputs_and_the_model_and_says_when_it_cannot():
    model = _randomise_batchnorm(resnet20(10, 1)).eval()
    before = copy.deepcopy(model.state_dict())
    folded = fold_batchnorm(model)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-4)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    class Branchy(nn.Module):  # Python control flow on the input: torch.fx cannot trace it
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > 0 else x

    assert fold_batchnorm(Branchy()) is None


def test_load_slim_refuses_what_is_not_a_slim_checkpoint(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ConfigError, match="not a channel-pruned checkpoint"):
        load_slim(path, resnet20(10, 1), torch.zeros(1, 1, 8, 8))


def test_channel_ids_are_registered_for_the_convolutional_tasks():
    ids = [env_id for env_id in prune_gym.ENV_IDS if env_id.endswith("Channels-v1")]
    assert CHANNELS_ID in ids and "PruneResNet50Channels-v1" in ids and "PruneMobileNetV2Channels-v1" in ids
    assert not any("FastGRNN" in env_id for env_id in ids)  # recurrent: weights only
    assert prune_gym.get_task(CHANNELS_ID).name == "resnet20-digits"


def test_the_user_model_given_to_slim_copy_is_unchanged():
    model = resnet20(10, 1).eval()
    before = copy.deepcopy(model.state_dict())
    groups, _ = find_channel_groups(model, torch.zeros(1, 1, 8, 8))
    slim_copy(model, [groups[1].name], [[0, 1]], torch.zeros(1, 1, 8, 8))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.fixture(scope="module")
def channel_comparison(tmp_path_factory, digits_model_state):
    """``prune-gym compare`` on the channel env with a small budget (one target; the defaults
    otherwise: progress bar, TensorBoard, the search at equal cost)."""
    output = tmp_path_factory.mktemp("channels") / "compare"
    comparison = compare(CHANNELS_ID, sparsities=(0.5,), timesteps=200, n_envs=1, output_dir=output, seed=0)
    return comparison, output


def test_compare_on_a_channel_env_plays_the_channel_rules_and_measures_latency(channel_comparison):
    comparison, output = channel_comparison
    methods = [row.method for row in comparison.results]
    assert methods[:3] == ["DQN (greedy)", "DQN (best found)", "local search"]
    assert methods[3:] == [method.label for method in CHANNEL_METHODS.values()]
    meta = comparison.metadata
    assert meta["granularity"] == "channels" and meta["budget"] == "flops"
    assert set(meta["dense_latency_ms"]) == {"1", "256"}
    for row in comparison.results:
        assert row.flops_reduction >= 0.5 and set(row.latency_ms) == set(row.speedup) == {"1", "256"}
    table = (output / "table.txt").read_text()
    assert "ms b256 (x)" in table and "global L2 norm" in table
    assert (output / "recipes" / "global-l2-norm-0.50.json").is_file()
    # The recipe to export: named in the table and in results.json, and the fastest of its ties.
    pick = meta["export_picks"]["0.5"]
    assert f"recipes/{pick['recipe']}" in table and (output / "recipes" / pick["recipe"]).is_file()
    assert json.loads((output / "results.json").read_text())["export_picks"]["0.5"] == pick
    chosen = comparison.result(pick["method"], 0.5)
    assert chosen.speedup == pick["speedup"] and chosen.method != "random"


def test_the_recipe_the_comparison_picks_exports_to_what_the_table_said(channel_comparison, tmp_path, capsys):
    comparison, output = channel_comparison
    pick = comparison.metadata["export_picks"]["0.5"]
    row = comparison.result(pick["method"], 0.5)
    recipe = output / "recipes" / pick["recipe"]
    assert cli_main(["export", CHANNELS_ID, "--recipe", str(recipe), "--output", str(tmp_path / "exported")]) == 0
    printed = capsys.readouterr().out
    assert f"test accuracy {100 * row.test_accuracy:.2f}%" in printed and "latency on cpu, batch 256" in printed
    record = json.loads((tmp_path / "exported" / "export.json").read_text())
    assert record["test_accuracy"] == pytest.approx(row.test_accuracy)
    assert record["flops_reduction"] == pytest.approx(row.flops_reduction)


def test_a_channel_recipe_carries_its_env_kwargs_to_export_and_validate(digits_model_state, tmp_path, capsys):
    """A recipe made on an env with other kwargs (here channel_multiple=8) exports and replays
    through that env, not the defaults: same channel counts, same accuracy as its row."""
    kwargs = {"channel_multiple": 8}
    env = gym.make(CHANNELS_ID, **reference_env_kwargs(kwargs, 0.5))
    row = run_episode(reference_policy("uniform", env)[1], env, 0.5, method="uniform")
    env.close()
    write_recipes([row], tmp_path / "recipes", CHANNELS_ID, 1, kwargs)
    recipe = tmp_path / "recipes" / "uniform-0.50.json"
    assert cli_main(["export", CHANNELS_ID, "--recipe", str(recipe), "--output", str(tmp_path / "exported")]) == 0
    record = json.loads((tmp_path / "exported" / "export.json").read_text())
    assert record["test_accuracy"] == pytest.approx(row.test_accuracy)
    removed = torch.load(tmp_path / "exported" / "model.pt", weights_only=True)["removed"]
    assert any(removed.values()) and all(len(channels) % 8 == 0 for channels in removed.values())
    assert cli_main(["validate", str(recipe)]) == 0
    # Without its kwargs (a recipe from before recipes recorded them) the defaults give another
    # network: validate fails and says why.
    data = json.loads(recipe.read_text())
    del data["meta"]["env_kwargs"]
    recipe.write_text(json.dumps(data))
    capsys.readouterr()
    assert cli_main(["validate", str(recipe)]) == 1
    assert "does not record the env kwargs it was made with" in capsys.readouterr().out


def test_channel_export_refuses_weight_options(tmp_path, capsys):
    code = cli_main(["export", CHANNELS_ID, "--policy", "uniform", "--sparsity", "0.5", "--gradual-steps", "3",
                     "--output", str(tmp_path / "x")])
    assert code == 2 and "--gradual-steps: weight pruning's options" in capsys.readouterr().err
    code = cli_main(["export", CHANNELS_ID, "--policy", "global-norm", "--output", str(tmp_path / "x")])
    assert code == 2 and "needs --sparsity" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_parameter_budget_is_met_too(digits_model_state):
    env = ChannelPruneEnv("resnet20-digits", target_sparsity=0.4, budget="params", action_type="continuous")
    env.reset(seed=0)
    done, info = False, {}
    while not done:
        _, _, done, _, info = env.step(env.action_space.sample())
    assert info["overall_sparsity"] >= 0.4 and info["budget"] == "params"
    assert info["overall_sparsity"] == pytest.approx(env.cost.param_reduction(list(info["removed_channel_counts"].values())))


def test_compare_defaults_to_flops_targets_on_a_channel_env(tmp_path):
    targets = list(Experiment.resolve(CHANNELS_ID).targets)
    assert targets == list(DEFAULT_CHANNEL_TARGETS) == [0.3, 0.5, 0.7]
    targets = list(Experiment.resolve("PruneResNet20Digits-v1").targets)
    assert targets == list(DEFAULT_SPARSITIES)
    # With the latency budget: lower targets (half the predicted latency is often beyond the caps).
    targets = list(Experiment.resolve(CHANNELS_ID, env_kwargs={"budget": "latency"}).targets)
    assert targets == list(DEFAULT_LATENCY_TARGETS) == [0.2, 0.3, 0.4]


def test_channel_multiple_keeps_multiples_in_every_step_and_rule(digits_model_state):
    assert allowed_counts(16, 0.8, 4).tolist() == [0, 4, 8, 12]
    assert allowed_counts(10, 0.8, 4).tolist() == [0, 2, 6]  # keeps 8 or 4 (or all 10)
    env = ChannelPruneEnv("resnet20-digits", target_sparsity=0.5, channel_multiple=8, action_type="continuous")
    for method in CHANNEL_METHODS:
        counts = env.allocation_counts(method)
        assert all((c == 0 or (g - c) % 8 == 0) for c, g in zip(counts, env.channels, strict=True)), method
        assert env.cost.flops_reduction(counts) >= 0.5
    env.reset(seed=0)
    done, info = False, {}
    while not done:
        _, _, done, _, info = env.step(env.action_space.sample())
    kept = [g - c for g, c in zip(env.channels, info["removed_channel_counts"].values(), strict=True)]
    assert all(k % 8 == 0 or k == g for k, g in zip(kept, env.channels, strict=True))
    assert info["flops_reduction"] >= 0.5
    with pytest.raises(ConfigError, match="channel_multiple must be"):
        ChannelPruneEnv("resnet20-digits", channel_multiple=0)
    with pytest.raises(ConfigError, match="each one its group allows"):
        env.replay([1] * env.num_groups)


def test_the_finetuned_export_scores_what_the_comparison_said_in_pytorch_and_onnx(digits_model_state, tmp_path):
    """``prune-gym export --recipe R --finetune-epochs N`` trains the smaller network as
    ``compare --finetune-epochs N`` does (same seed): the same test accuracy, and an ONNX file of
    the fine-tuned network that gives its outputs."""
    from prune_gym.agents.rollout import finetune_and_test

    kwargs = {"channel_multiple": 16}
    env = gym.make(CHANNELS_ID, **reference_env_kwargs(kwargs, 0.5))
    row = run_episode(reference_policy("uniform", env)[1], env, 0.5, method="uniform")
    table_accuracy = finetune_and_test(env, 1, seed=0).test_accuracy  # the comparison's fine-tuned column
    env.close()
    write_recipes([row], tmp_path / "recipes", CHANNELS_ID, 1, kwargs)
    output = tmp_path / "exported"
    result, extra = export_channel_task(CHANNELS_ID, output, recipe=tmp_path / "recipes" / "uniform-0.50.json",
                                        finetune_epochs=1, device="cpu", seed=0, latency=False)
    assert result.test_accuracy == pytest.approx(row.test_accuracy)
    assert extra["finetuned_test_accuracy"] == pytest.approx(table_accuracy) and table_accuracy > row.test_accuracy
    task = prune_gym.get_task(CHANNELS_ID)
    slim = load_slim(output / "model-finetuned.pt", task.build_model(), torch.zeros(1, 1, 8, 8))
    x = sample_tensors(task.load_splits().test, 16)[0]
    with torch.no_grad():
        assert np.abs(onnx_logits(output / "model-finetuned.onnx", x) - slim(x).numpy()).max() < 1e-4
    assert extra["finetuned_onnx_max_difference"] < 1e-4
    removed = torch.load(output / "model-finetuned.pt", weights_only=True)["removed"]
    assert any(removed.values()) and all(len(channels) % 16 == 0 for channels in removed.values())


def test_finetuning_a_channel_env_trains_the_smaller_network_and_leaves_the_env(channel_env):
    from prune_gym.agents.rollout import finetune_and_test

    env = channel_env
    env.replay(env.allocation_counts("uniform", 0.5))
    one_shot = env.evaluate_test()
    state = {k: v.clone() for k, v in env.model.state_dict().items()}
    finetuned = finetune_and_test(env, 1, seed=0)
    assert finetuned.test_accuracy > one_shot and finetuned.seconds > 0  # 1 epoch recovers part of what pruning cost
    # Scored on the reward split too, sample by sample (what the export pick selects on).
    assert len(finetuned.reward_correct) == env.evaluator.num_samples
    assert finetuned.reward_correct.mean() > env.engine.reward_correct().numpy().mean()
    assert all(torch.equal(state[k], v) for k, v in env.model.state_dict().items())
    assert env.evaluate_test() == one_shot
