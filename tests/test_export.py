"""Exporting a pruned model: checkpoint, recipe round trip, torch.nn.utils.prune interop, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from prune_gym.cli import main
from prune_gym.export import export_pruned, from_torch_prune, load_pruned, to_torch_prune
from prune_gym.finetune import apply_masks
from prune_gym.pruning import (
    find_prunable_layers,
    global_magnitude_masks,
    uniform_magnitude_masks,
)
from prune_gym.recipes import apply_recipe, load_recipe, recipe_path


@pytest.fixture
def fresh_digits_model(digits_task, digits_model_state):
    """A factory of fresh copies of the trained digits model."""

    def make() -> nn.Module:
        model = digits_task.build_model()
        model.load_state_dict(digits_model_state)
        return model.eval()

    return make


def global_mp(model, sparsity, min_threshold=None):
    layers = find_prunable_layers(model)
    return layers, global_magnitude_masks([layer.weight for layer in layers], sparsity, min_threshold)


def same_masks(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x.bool(), y.bool()) for x, y in zip(a, b, strict=True))


# --------------------------------------------------------------------------------------------
# Checkpoint and recipe


def test_export_writes_checkpoint_and_recipe(digits_model, tmp_path):
    layers, masks = global_mp(digits_model, 0.8)
    dense = {n: t.clone() for n, t in digits_model.state_dict().items()}
    checkpoint_path, recipe_file = export_pruned(
        digits_model, layers, masks, tmp_path / "pruned.pt", meta={"task": "resnet20-digits", "method": "global-mp"}
    )
    assert recipe_file == recipe_path(checkpoint_path) == tmp_path / "pruned.pt.recipe.json"
    # The model itself is untouched: masks go to the saved copy.
    assert all(torch.equal(t, dense[n]) for n, t in digits_model.state_dict().items())

    checkpoint = torch.load(checkpoint_path, weights_only=True)
    for layer, mask in zip(layers, masks, strict=True):
        saved = checkpoint["state_dict"][f"{layer.name}.weight"]
        assert torch.count_nonzero(saved[~mask]) == 0
        assert torch.equal(saved[mask], dense[f"{layer.name}.weight"][mask])
        assert torch.equal(checkpoint["masks"][layer.name], mask)
    total = sum(m.numel() for m in masks)
    assert checkpoint["meta"]["overall_sparsity"] == round(0.8 * total) / total
    assert checkpoint["meta"]["method"] == "global-mp"

    recipe = json.loads(recipe_file.read_text())
    assert recipe["overall_sparsity"] == checkpoint["meta"]["overall_sparsity"]
    assert list(recipe["layers"]) == [layer.name for layer in layers]
    assert recipe["meta"]["task"] == "resnet20-digits"


@pytest.mark.parametrize("min_threshold", [None, 0.0005])
def test_global_mp_recipe_reproduces_identical_masks(fresh_digits_model, tmp_path, min_threshold):
    model = fresh_digits_model()
    layers, masks = global_mp(model, 0.9, min_threshold)
    apply_masks(layers, masks)
    _, recipe_file = export_pruned(model, layers, masks, tmp_path / "gmp.pt")

    dense = fresh_digits_model()
    reproduced = apply_recipe(dense, load_recipe(recipe_file))
    assert same_masks(reproduced, masks)
    # ...and the model is pruned in place exactly like the exported one.
    assert all(torch.equal(a, b) for a, b in zip(dense.state_dict().values(), model.state_dict().values(), strict=True))


def test_uniform_recipe_reproduces_identical_masks(fresh_digits_model, tmp_path):
    model = fresh_digits_model()
    layers = find_prunable_layers(model)
    masks = uniform_magnitude_masks([layer.weight for layer in layers], 0.7)
    _, recipe_file = export_pruned(model, layers, masks, tmp_path / "uniform.pt")
    assert same_masks(apply_recipe(fresh_digits_model(), recipe_file), masks)


def test_recipe_round_trip_breaks_ties_like_global_mp():
    # Weights with many equal magnitudes: per-layer pruning at Global MP's per-layer sparsities
    # must pick the same tied weights as the global ranking (ties go by index in both).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 12), nn.ReLU(), nn.Linear(12, 6))
    with torch.no_grad():
        for module in (model[0], model[2]):
            module.weight.copy_(torch.randint(-3, 4, module.weight.shape).float())
    layers = find_prunable_layers(model)
    for sparsity in (0.3, 0.55, 0.8):
        masks = global_magnitude_masks([layer.weight for layer in layers], sparsity)
        recipe = {layer.name: 1 - int(m.sum()) / m.numel() for layer, m in zip(layers, masks, strict=True)}
        copy = nn.Sequential(nn.Linear(10, 12), nn.ReLU(), nn.Linear(12, 6))
        copy.load_state_dict(model.state_dict())
        assert same_masks(apply_recipe(copy, recipe), masks)


def test_hand_written_recipe_leaves_unnamed_layers_dense(digits_model):
    layers = find_prunable_layers(digits_model)
    masks = apply_recipe(digits_model, {layers[3].name: 0.5})
    assert [1 - int(m.sum()) / m.numel() for m in masks][3] == pytest.approx(0.5, abs=1 / layers[3].numel)
    assert all(bool(m.all()) for i, m in enumerate(masks) if i != 3)
    assert torch.count_nonzero(layers[3].weight) == int(masks[3].sum())


def test_load_pruned_restores_weights_and_masks(fresh_digits_model, tmp_path):
    model = fresh_digits_model()
    layers, masks = global_mp(model, 0.8)
    apply_masks(layers, masks)
    path, _ = export_pruned(model, layers, masks, tmp_path / "pruned.pt", meta={"task": "resnet20-digits"})
    other = fresh_digits_model()
    loaded_masks, meta = load_pruned(path, other)
    assert same_masks(loaded_masks, masks)
    assert meta["task"] == "resnet20-digits"
    x = torch.rand(5, 1, 8, 8)
    with torch.inference_mode():
        assert torch.equal(other(x), model(x))


def test_load_pruned_refuses_masks_that_contradict_the_weights_before_touching_the_model(fresh_digits_model, tmp_path):
    model = fresh_digits_model()
    layers, masks = global_mp(model, 0.5)
    apply_masks(layers, masks)
    path, _ = export_pruned(model, layers, masks, tmp_path / "pruned.pt", meta={"task": "resnet20-digits"})
    checkpoint = torch.load(path, weights_only=True)
    name = layers[2].name
    checkpoint["masks"][name] = ~checkpoint["masks"][name]  # kept <-> pruned: the weights say otherwise
    torch.save(checkpoint, tmp_path / "tampered.pt")
    target = fresh_digits_model()
    before = {key: value.clone() for key, value in target.state_dict().items()}
    with pytest.raises(ValueError, match=f"weights of layer '{name}' are marked pruned but are not zero"):
        load_pruned(tmp_path / "tampered.pt", target)
    assert all(torch.equal(value, before[key]) for key, value in target.state_dict().items())
    # Masks that agree with the weights but not with the recorded sparsity are refused too.
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["meta"]["overall_sparsity"] = 0.9
    torch.save(checkpoint, tmp_path / "mislabelled.pt")
    with pytest.raises(ValueError, match="its masks prune 0.5000 of the weights, its metadata says 0.9000"):
        load_pruned(tmp_path / "mislabelled.pt", target)


def test_load_pruned_checks_the_architecture_first(fresh_digits_model, tmp_path):
    model = fresh_digits_model()
    layers, masks = global_mp(model, 0.5)
    path, _ = export_pruned(model, layers, masks, tmp_path / "pruned.pt")
    other = nn.Sequential(nn.Linear(10, 12), nn.ReLU(), nn.Linear(12, 6))
    before = {key: value.clone() for key, value in other.state_dict().items()}
    with pytest.raises(ValueError, match="does not fit this model \\(missing \\['0.bias', '0.weight'"):
        load_pruned(path, other)
    assert all(torch.equal(value, before[key]) for key, value in other.state_dict().items())


# --------------------------------------------------------------------------------------------
# torch.nn.utils.prune


def test_torch_prune_round_trip_matches_the_masked_model(fresh_digits_model):
    x = torch.rand(7, 1, 8, 8)
    masked = fresh_digits_model()
    layers, masks = global_mp(masked, 0.85, 0.0005)
    apply_masks(layers, masks)

    model = fresh_digits_model()
    torch_layers = find_prunable_layers(model)
    to_torch_prune(model, torch_layers, masks)
    assert all(hasattr(layer.module, "weight_mask") and hasattr(layer.module, "weight_orig") for layer in torch_layers)
    with torch.inference_mode():
        expected = masked(x)
        assert torch.equal(model(x), expected)

    assert same_masks(from_torch_prune(model), masks)
    # remove=True makes it permanent: plain weights with zeros, no reparametrisation left.
    read_back = from_torch_prune(model, remove=True)
    assert same_masks(read_back, masks)
    for layer, mask in zip(torch_layers, masks, strict=True):
        assert not hasattr(layer.module, "weight_mask")
        assert isinstance(layer.module.weight, nn.Parameter)
        assert torch.count_nonzero(layer.module.weight.detach()[~mask]) == 0
    with torch.inference_mode():
        assert torch.equal(model(x), expected)


def test_from_torch_prune_reads_masks_of_any_torch_method(digits_model):
    from torch.nn.utils import prune

    layers = find_prunable_layers(digits_model)
    prune.global_unstructured(
        [(layer.module, "weight") for layer in layers], pruning_method=prune.L1Unstructured, amount=0.6
    )
    masks = from_torch_prune(digits_model, layers)
    total = sum(m.numel() for m in masks)
    assert sum(m.numel() - int(m.sum()) for m in masks) == round(0.6 * total)
    assert all(m.dtype == torch.bool for m in masks)


def test_unpruned_layers_read_as_dense(digits_model):
    masks = from_torch_prune(digits_model)
    assert all(bool(m.all()) for m in masks)


# --------------------------------------------------------------------------------------------
# Bad input


def test_bad_recipes_are_clear_errors(digits_model, tmp_path):
    layers = find_prunable_layers(digits_model)
    with pytest.raises(ValueError, match="does not have.*'nope'.*another model"):
        apply_recipe(digits_model, {"nope": 0.5})
    with pytest.raises(ValueError, match=f"layer '{layers[0].name}' has sparsity 1.0"):
        apply_recipe(digits_model, {layers[0].name: 1.0})
    with pytest.raises(ValueError, match="has sparsity -0.1"):
        apply_recipe(digits_model, {layers[0].name: -0.1})
    with pytest.raises(FileNotFoundError, match="prune-gym export"):
        load_recipe(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_recipe(broken)
    strings = tmp_path / "strings.json"
    strings.write_text(json.dumps({"layers": {layers[0].name: "half"}}))
    with pytest.raises(ValueError, match="'half'"):
        load_recipe(strings)


def test_wrong_masks_are_clear_errors(digits_model, tmp_path):
    layers, masks = global_mp(digits_model, 0.5)
    bad = [*masks[:-1], torch.ones(2, 2, dtype=torch.bool)]
    with pytest.raises(ValueError, match=f"mask for layer '{layers[-1].name}' has shape"):
        export_pruned(digits_model, layers, bad, tmp_path / "x.pt")
    with pytest.raises(ValueError, match=f"mask for layer '{layers[-1].name}' has shape"):
        to_torch_prune(digits_model, layers, bad)
    assert not hasattr(layers[0].module, "weight_mask")  # validated before any layer changed
    with pytest.raises(ValueError, match="one mask per prunable layer"):
        export_pruned(digits_model, layers, masks[:2], tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_load_pruned_rejects_other_files(digits_model, tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(digits_model.state_dict(), path)
    with pytest.raises(ValueError, match="not a prune-gym pruned checkpoint"):
        load_pruned(path, digits_model)
    with pytest.raises(FileNotFoundError):
        load_pruned(tmp_path / "missing.pt", digits_model)


# --------------------------------------------------------------------------------------------
# CLI


def test_exported_global_mp_scores_what_baseline_reported(digits_model_state, tmp_path, capsys):
    """The env re-calibrates BatchNorm after each step; export does the same, so the written
    checkpoint scores what `prune-gym baseline` reported (the user's defaults on both sides)."""
    record = tmp_path / "baseline.json"
    assert main(["baseline", "PruneResNet20Digits-v1", "--sparsity", "0.8", "--json", str(record)]) == 0
    reported = json.loads(record.read_text())["test_accuracy"]
    output = tmp_path / "gmp80.pt"
    assert main(["export", "PruneResNet20Digits-v1", "--sparsity", "0.8", "--output", str(output)]) == 0
    out = capsys.readouterr().out
    assert "BatchNorm re-calibrated on 1 x 256 train images" in out
    meta = torch.load(output, weights_only=True)["meta"]
    assert meta["bn_recalibration_batches"] == 1
    assert json.loads(recipe_path(output).read_text())["meta"]["bn_recalibration_batches"] == 1
    # The checkpoint as written, loaded into a fresh model and scored on the test split.
    from prune_gym.evaluation import evaluate_accuracy
    from prune_gym.tasks import get_task

    task = get_task("resnet20-digits")
    model = task.build_model()
    load_pruned(output, model)
    written = evaluate_accuracy(model, task.load_splits().test, device="cpu")
    assert abs(written - reported) <= 0.01
    assert f"test accuracy {100 * written:.2f}% (loaded back as written)" in out


def test_cli_export_writes_loadable_files(digits_model_state, fresh_digits_model, tmp_path, capsys):
    output = tmp_path / "gmp80.pt"
    code = main(["export", "resnet20-digits", "--policy", "global-mp", "--sparsity", "0.8",
                 "--min-threshold", "0.0005", "--output", str(output), "--device", "cpu", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "global-mp" in printed and "test accuracy" in printed and str(output) in printed

    model = fresh_digits_model()
    masks, meta = load_pruned(output, model)
    assert meta["method"] == "global-mp+mt" and meta["task"] == "resnet20-digits"  # --min-threshold: Global MP + MT
    assert 0.0 <= meta["test_accuracy_pruned"] <= 1.0 and meta["test_accuracy_finetuned"] is None
    expected = global_mp(fresh_digits_model(), 0.8, 0.0005)[1]
    assert same_masks(masks, expected)

    # The recipe goes back in through --recipe and gives the same masks.
    again = tmp_path / "again.pt"
    assert main(["export", "PruneResNet20Digits-v1", "--recipe", str(recipe_path(output)),
                 "--output", str(again), "--device", "cpu", "--no-progress"]) == 0
    assert same_masks(load_pruned(again, fresh_digits_model())[0], expected)


def test_cli_export_fine_tunes_with_masks(digits_model_state, fresh_digits_model, tmp_path, monkeypatch):
    # One quick epoch: the fine-tuning recipe's batch size is raised to keep the test short.
    from prune_gym.finetune import TrainConfig
    from prune_gym.tasks import get_task

    monkeypatch.setattr(get_task("resnet20-digits"), "finetune_recipe", TrainConfig(epochs=5, batch_size=256, lr=0.01))
    output = tmp_path / "uniform.pt"
    assert main(["export", "resnet20-digits", "--policy", "uniform", "--sparsity", "0.5",
                 "--finetune-epochs", "1", "--output", str(output), "--device", "cpu", "--no-progress"]) == 0
    model = fresh_digits_model()
    masks, meta = load_pruned(output, model)
    assert meta["finetune_epochs"] == 1 and meta["test_accuracy_finetuned"] is not None
    assert all(1 - int(m.sum()) / m.numel() == pytest.approx(0.5, abs=1 / m.numel()) for m in masks)
    for layer, mask in zip(find_prunable_layers(model), masks, strict=True):
        assert torch.count_nonzero(layer.weight.detach()[~mask]) == 0
    assert not (tmp_path / "uniform.pt.finetune.partial").exists()


def test_cli_export_gradual_global_mp(digits_model_state, fresh_digits_model, tmp_path):
    output = tmp_path / "gradual.pt"
    assert main(["export", "resnet20-digits", "--sparsity", "0.9", "--gradual-steps", "3",
                 "--output", str(output), "--device", "cpu", "--no-progress"]) == 0
    masks, meta = load_pruned(output, fresh_digits_model())
    assert meta["method"] == "gradual-global-mp"
    assert [step["step"] for step in meta["gradual_history"]] == [1, 2, 3]
    total = sum(m.numel() for m in masks)
    assert sum(m.numel() - int(m.sum()) for m in masks) == round(0.9 * total)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--sparsity", "1.5"], "sparsity must be in"),
        (["--sparsity", "0.5", "--finetune-epochs", "-1"], "finetune_epochs must be a whole number"),
        (["--policy", "uniform", "--recipe", "r.json"], "either a policy"),
        (["--policy", "uniform", "--sparsity", "0.5", "--min-threshold", "0.001"], "global-mp / global-mp+mt only"),
        ([], "needs a target sparsity"),
        (["--recipe", "missing.json"], "no recipe file"),
    ],
)
def test_cli_export_bad_input_is_a_clear_error(tmp_path, capsys, extra, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["export", "resnet20-digits", "--output", str(tmp_path / "x.pt"), "--device", "cpu", *extra])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_cli_export_recipe_with_unknown_layer(digits_model_state, tmp_path, capsys):
    recipe = tmp_path / "foreign.json"
    recipe.write_text(json.dumps({"layers": {"features.0": 0.5}, "overall_sparsity": 0.5}))
    code = main(["export", "resnet20-digits", "--recipe", str(recipe), "--output", str(tmp_path / "x.pt"),
                 "--device", "cpu", "--no-progress"])
    assert code == 2
    assert "'features.0'" in capsys.readouterr().err
