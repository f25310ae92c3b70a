"""The comparison workflow on the digits env with a tiny agent budget."""

from __future__ import annotations

import csv
import json
import logging
import shutil

import gymnasium as gym
import pytest

import prune_gym  # noqa: F401  (registers the env ids)
from prune_gym.agents.report import method_slug
from prune_gym.cli import main as cli_main
from prune_gym.errors import ConfigError, MissingResourceError
from prune_gym.workflows.compare import compare
from prune_gym.workflows.validate import validate

ENV_ID = "PruneResNet20Digits-v1"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RULES = ["Global MP", "Global MP + MT", "LAMP", "ERK", "uniform", "uniform+"]
METHODS = ["DQN (greedy)", "DQN (best found)", "local search", *RULES, "random"]



@pytest.fixture(scope="module")
def comparison(tmp_path_factory, digits_model_state):
    output = tmp_path_factory.mktemp("compare")
    result = compare(
        ENV_ID, [0.5, 0.8], "dqn", timesteps=66, hyperparams={"learning_starts": 22, "batch_size": 16}, n_envs=1,
        output_dir=output, env_kwargs={"device": "cpu"}, progress_bar=False, log=None,
    )
    return result, output


def test_compare_writes_table_json_csv_plots_and_agent(comparison):
    result, output = comparison
    for name in ("results.json", "results.csv", "accuracy_vs_sparsity.png", "layer_sparsity.png", "table.txt"):
        assert (output / name).is_file(), name
    for name in ("accuracy_vs_sparsity.png", "layer_sparsity.png"):
        data = (output / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, name
    assert (output / "agent" / "model.zip").is_file()
    with (output / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    # "best found" is there for each target the agent trained on (the target is drawn per episode).
    trained_on = {json.loads(line)["target_sparsity"] for line in (output / "agent" / "episodes.jsonl").read_text().splitlines()}
    assert trained_on  # 66 steps = 3 episodes
    expected = [(t, m) for t in (0.5, 0.8) for m in METHODS if m != "DQN (best found)" or t in trained_on]
    assert [(float(r["target_sparsity"]), r["method"]) for r in rows] == expected
    for method in METHODS:
        assert method in result.table
    assert "dense test accuracy" in result.table and "80%" in result.table
    # Each method's per-layer sparsities, as a recipe that re-prunes the dense model the same way,
    # with the env's post-pruning step (BatchNorm re-calibration) recorded.
    recipe = json.loads((output / "recipes" / "dqn-greedy-0.80.json").read_text())
    assert recipe["layers"] == result.result("DQN (greedy)", 0.8).layer_sparsities
    assert recipe["meta"]["bn_recalibration_batches"] == 1
    assert (output / "recipes" / "global-mp-mt-0.50.json").is_file()
    for target in trained_on:
        assert (output / "recipes" / f"dqn-best-found-{target:.2f}.json").is_file()
    # Written in full: no staging folder is left behind.
    assert not output.with_name(output.name + ".partial").exists()


def test_every_method_meets_the_target_and_global_mp_is_exact(comparison):
    result, output = comparison
    record = json.loads((output / "results.json").read_text())
    assert record["agent"]["timesteps"] == 66
    assert record["reference_policies"]["action_type"] == "continuous"
    assert record["agent"]["action_type"] == "discrete"
    assert record["agent"]["levels"] == 11 and record["agent"]["n_envs"] == 1  # relative steps (the default)
    assert record["agent"]["action_mode"] == "relative" and record["reference_policies"]["action_mode"] == "absolute"
    assert record["agent"]["episodes"] == 3  # 66 steps of 22-layer episodes
    assert record["search"]["episodes_per_target"] == 1  # equal cost: 3 episodes over 2 targets
    assert 0.9 < record["dense_test_accuracy"] <= 1.0
    env = gym.make(ENV_ID, action_type="continuous", device="cpu")
    total = env.unwrapped.state.total
    for row in record["results"]:
        assert row["overall_sparsity"] == pytest.approx(row["target_sparsity"], abs=1.5 / total), row["method"]
        assert 0.0 <= row["test_accuracy"] <= 1.0 and 0.0 <= row["flops_reduction"] <= 1.0
    for target in (0.5, 0.8):
        global_mp = result.result("Global MP", target)
        expected = env.unwrapped.global_mp_sparsities(target)
        for (name, sparsity), exact, numel in zip(global_mp.layer_sparsities.items(), expected, env.unwrapped.state.numels, strict=True):
            assert abs(sparsity - exact) * numel <= 1.0, name
    # Global MP keeps accuracy at 50% on this over-parameterised model; random pruning does not.
    assert result.result("Global MP", 0.5).test_accuracy > 0.9
    assert result.result("Global MP", 0.5).test_accuracy > result.result("random", 0.5).test_accuracy
    env.close()


def test_the_strongest_rule_is_chosen_on_the_reward_split_and_the_margins_are_tested_on_paired_images(comparison):
    from prune_gym.significance import mcnemar

    result, output = comparison
    record = json.loads((output / "results.json").read_text())
    for target in (0.5, 0.8):
        rules = [result.result(rule, target) for rule in RULES]
        strongest = record["strongest_heuristic"][f"{target:.6g}"]
        assert result.result(strongest, target).reward_accuracy == max(row.reward_accuracy for row in rules)
        # The first in registry order among equals: the test split never breaks a tie.
        assert strongest == next(row.method for row in rules if row.reward_accuracy == max(r.reward_accuracy for r in rules))
        assert f"{strongest} *" in result.table
        tested = [test for test in record["paired_tests"] if test["target_sparsity"] == target]
        assert {test["method"] for test in tested} >= {"DQN (greedy)", "local search"}
        for test in tested:
            row = result.result(test["method"], target)
            assert test["against"] == strongest
            # Recomputed from the rows' own per-image correctness on the same test images.
            again = mcnemar(row.test_correct, result.result(strongest, target).test_correct)
            assert test["p_value"] == again.p_value and test["only_first"] == again.only_first
            assert test["difference"] == pytest.approx(row.test_accuracy - result.result(strongest, target).test_accuracy)
            assert test["summary"] in result.table
    # What choosing each allocation cost: the agent's training, the search's episodes, nothing for a rule.
    assert result.result("DQN (greedy)", 0.8).evaluations == 66
    assert result.result("local search", 0.8).evaluations == record["search"]["episodes_per_target"] * 22
    assert all(result.result(rule, 0.8).evaluations == 0 for rule in RULES)
    # A rule's seconds are those of computing its allocation (LAMP sorts every layer's ~270,000
    # weights), not of a look-up in the env's cache, which the max_sparsity check filled first.
    assert result.result("LAMP", 0.8).cost_seconds > 1e-3
    assert "test_correct" not in record["results"][0]


def test_a_saved_agent_is_loaded_instead_of_trained(comparison):
    _, output = comparison
    again = compare(
        ENV_ID, [0.8], "dqn", agent_path=output / "agent" / "model.zip", min_threshold=None,
        env_kwargs={"device": "cpu"}, write_files=False, log=None,
    )
    assert again.metadata["agent"]["timesteps"] == 66 and again.metadata["agent"]["trained_here"] is False
    assert again.metadata["agent"]["train_seconds"] is None
    assert "loaded from" in again.table and "trained here" not in again.table
    # The run's best_found.json beside the agent brings its best-found recipe along.
    best = json.loads((output / "agent" / "best_found.json").read_text())["best_per_target"]
    assert [row.method for row in again.results] == (
        ["DQN (greedy)"] + (["DQN (best found)"] if "0.8" in best else [])
        + ["local search", *[rule for rule in RULES if rule != "Global MP + MT"], "random"]
    )
    assert again.metadata["search"]["episodes_per_target"] == 3  # the run's 3 training episodes, one target
    assert again.output_dir is None


def test_max_sparsity_is_raised_so_global_mp_is_not_clipped():
    result = compare(
        ENV_ID, [0.97], "dqn", timesteps=22, hyperparams={"learning_starts": 1000}, min_threshold=None, n_envs=1,
        env_kwargs={"device": "cpu"}, write_files=False, progress_bar=False, log=None,
    )
    matched = result.metadata["matched"]
    layer_max = max(result.result("Global MP", 0.97).layer_sparsities.values())
    assert layer_max > 0.99  # Global MP needs more than the env's default range here ...
    assert matched["max_sparsity"] >= layer_max  # ... so the range was raised
    assert "raised" in matched["max_sparsity_note"]


def test_progress_notes_go_to_the_log_or_the_callable_given(comparison, caplog):
    notes = []
    with caplog.at_level(logging.INFO, logger="prune_gym"):
        compare(ENV_ID, [0.5], "dqn", agent_path=comparison[1] / "agent" / "model.zip", search=False,
                env_kwargs={"device": "cpu"}, write_files=False)
        compare(ENV_ID, [0.5], "dqn", agent_path=comparison[1] / "agent" / "model.zip", search=False,
                env_kwargs={"device": "cpu"}, write_files=False, log=notes.append)
    logged = [record.getMessage() for record in caplog.records if record.name == "prune_gym.workflows.compare"]
    assert any(message.startswith("loading the agent from") for message in logged)
    assert len(logged) == len(notes) and any(note.startswith("loading the agent from") for note in notes)


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown algorithm"):
        compare(ENV_ID, [0.5], "rainbow", output_dir=tmp_path, log=None)
    with pytest.raises(ValueError, match="action_type='continuous'"):
        compare(ENV_ID, [0.5], "sac", env_kwargs={"action_type": "discrete"}, output_dir=tmp_path, log=None)
    with pytest.raises(ValueError, match="sparsity"):
        compare(ENV_ID, [1.5], output_dir=tmp_path, log=None)


def test_best_found_is_the_best_training_episode_on_the_reward_split_replayed(comparison):
    result, output = comparison
    episodes = [json.loads(line) for line in (output / "agent" / "episodes.jsonl").read_text().splitlines()]
    assert len(episodes) == 3
    assert {e["target_sparsity"] for e in episodes} <= {0.5, 0.8}
    for target in {e["target_sparsity"] for e in episodes}:
        at_target = [e for e in episodes if e["target_sparsity"] == target]
        best = max(at_target, key=lambda e: e["reward_accuracy"])
        row = result.result("DQN (best found)", target)
        # Replayed through the reference env: the same accuracy (its own, when the guard put the
        # strongest rule's allocation in its place) and the same per-layer sparsities.
        assert row.selection["own"]["reward_accuracy"] == pytest.approx(best["reward_accuracy"], abs=1e-9)
        if row.fallback is None:
            assert row.reward_accuracy == pytest.approx(best["reward_accuracy"], abs=1e-9)
            for name, sparsity in best["layer_sparsities"].items():
                assert row.layer_sparsities[name] == pytest.approx(sparsity, abs=1e-9)


def test_the_searched_rows_pass_the_selection_guard_against_the_strongest_rule(comparison):
    result, output = comparison
    record = json.loads((output / "results.json").read_text())
    searched = [row for row in result.results if row.method in ("DQN (best found)", "local search")]
    assert searched
    for row in result.results:
        # Each reported row's reward-split correctness is the accuracy its episode was paid for.
        assert row.reward_correct.mean() == pytest.approx(row.reward_accuracy, abs=1e-9)
        assert (row.selection is not None) == (row in searched)
    for row in searched:
        strongest = record["strongest_heuristic"][f"{row.target_sparsity:.6g}"]
        verdict = row.selection
        assert verdict["against"] == strongest
        assert verdict["kept"] == (verdict["p_better"] < 0.05 and verdict["only_own"] > verdict["only_rule"])
        assert verdict["kept"] == (row.fallback is None)
        recipe = json.loads((output / "recipes" / f"{method_slug(row.method)}-{row.target_sparsity:.2f}.json").read_text())
        if row.fallback is not None:
            # The rule's allocation and accuracies in the searched row, and in the recipe a user exports.
            rule = result.result(strongest, row.target_sparsity)
            assert row.fallback == strongest and row.layer_sparsities == rule.layer_sparsities
            assert (row.test_accuracy, row.reward_accuracy) == (rule.test_accuracy, rule.reward_accuracy)
            assert recipe["layers"] == rule.layer_sparsities and recipe["meta"]["fallback"] == strongest
            assert f"{row.method} -> {strongest}" in result.table
        else:
            assert recipe["layers"] == row.layer_sparsities and "fallback" not in recipe["meta"]
        assert f"{100 * row.target_sparsity:.0f}% {row.method}: " in result.table


def test_a_failed_run_leaves_no_finished_looking_folder(tmp_path, monkeypatch):
    import prune_gym.workflows.compare as compare_module

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(compare_module, "write_tables", broken)
    output = tmp_path / "cmp"
    with pytest.raises(OSError, match="disk full"):
        compare(ENV_ID, [0.5], "dqn", timesteps=22, hyperparams={"learning_starts": 1000}, min_threshold=None, n_envs=1,
                env_kwargs={"device": "cpu"}, output_dir=output, progress_bar=False, log=None)
    assert not output.exists()
    assert (tmp_path / "cmp.partial" / "agent" / "model.zip").is_file()  # kept for inspection, clearly unfinished


def test_an_existing_results_folder_is_never_mixed_into(tmp_path):
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(ValueError, match="not empty"):
        compare(ENV_ID, [0.5], "dqn", output_dir=tmp_path, log=None)


def test_an_exported_agent_recipe_scores_what_the_table_said(comparison, tmp_path):
    from prune_gym.workflows.export_task import export_task

    result, output = comparison
    row = result.result("DQN (greedy)", 0.8)
    exported = export_task("resnet20-digits", tmp_path / "agent.pt", recipe=output / "recipes" / "dqn-greedy-0.80.json",
                           device="cpu")
    assert exported.bn_recalibration_batches == 1  # read from the recipe
    assert abs(exported.accuracy_exported - row.test_accuracy) <= 0.01


class _Planted:
    """A pickle that leaves a marker file when it is unpickled (as a malicious one would run code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_compare_unpickles_only_the_agent_file_it_was_given(comparison, tmp_path):
    import pickle
    import shutil

    agent = tmp_path / "model.zip"
    shutil.copy(comparison[1] / "agent" / "model.zip", agent)
    marker = tmp_path / "ran"
    (tmp_path / "model_replay_buffer.pkl").write_bytes(pickle.dumps(_Planted(marker)))
    compare(ENV_ID, [0.5], "dqn", agent_path=agent, search=False, env_kwargs={"device": "cpu"}, write_files=False, log=None)
    assert not marker.exists()


def test_a_training_runs_best_found_exports_directly_and_scores_what_the_table_said(comparison, tmp_path):
    from prune_gym.workflows.export_task import export_task

    result, output = comparison
    best_file = output / "agent" / "best_found.json"
    targets = sorted(json.loads(best_file.read_text())["best_per_target"])
    target = float(targets[-1])
    exported = export_task("resnet20-digits", tmp_path / "best.pt", recipe=best_file, sparsity=target, device="cpu")
    # The run's own best episode (the table's row may carry the strongest rule's allocation instead).
    own = result.result("DQN (best found)", target).selection["own"]
    assert abs(exported.accuracy_exported - own["test_accuracy"]) <= 0.01
    assert exported.meta["method"] == "best found"
    with pytest.raises(ValueError, match="has no episode at target 0.33"):
        export_task("resnet20-digits", tmp_path / "x.pt", recipe=best_file, sparsity=0.33, device="cpu")
    if len(targets) > 1:
        with pytest.raises(ValueError, match="choose one with --sparsity"):
            export_task("resnet20-digits", tmp_path / "x.pt", recipe=best_file, device="cpu")


def test_the_table_says_why_the_search_is_off_for_an_agent_without_its_run(comparison, tmp_path):
    import shutil

    agent = tmp_path / "model.zip"
    shutil.copy(comparison[1] / "agent" / "model.zip", agent)  # no best_found.json beside it
    result = compare(ENV_ID, [0.5], "dqn", agent_path=agent, env_kwargs={"device": "cpu"}, write_files=False, log=None)
    assert "local search" not in [row.method for row in result.results]
    assert "local search: off: the agent's run records no training episodes" in result.table


def test_validate_replays_every_row_and_recipe_compare_wrote(comparison, capsys):
    result, output = comparison
    recipes = sorted((output / "recipes").glob("*.json"))
    recipe = json.loads(recipes[0].read_text())
    assert recipe["meta"]["env_kwargs"] == result.metadata["matched"]["env_kwargs"]  # the env to rebuild
    assert cli_main(["validate", str(output)]) == 0
    printed = capsys.readouterr().out
    total = len(result.results) + len(recipes)
    assert f"{total} of {total} records replay to their accuracies" in printed and "FAILED" not in printed


def test_validate_names_the_method_target_and_both_accuracies_of_a_tampered_record(comparison, tmp_path, capsys):
    _, output = comparison
    tampered = tmp_path / "tampered"
    shutil.copytree(output, tampered, ignore=shutil.ignore_patterns("agent", "*.png"))
    recipe_file = tampered / "recipes" / "lamp-0.80.json"
    recipe = json.loads(recipe_file.read_text())
    recipe["meta"]["test_accuracy"] -= 0.05
    recipe_file.write_text(json.dumps(recipe))
    # A row whose allocation was edited: the network it describes scores otherwise.
    results = json.loads((tampered / "results.json").read_text())
    row = next(r for r in results["results"] if r["method"] == "Global MP" and r["target_sparsity"] == 0.5)
    row["layer_sparsities"] = {name: 0.0 for name in row["layer_sparsities"]}
    (tampered / "results.json").write_text(json.dumps(results))
    replays = validate([recipe_file, tampered / "results.json"])
    failed = [replay for replay in replays if not replay.ok]
    assert [(r.record.method, r.record.target) for r in failed] == [("LAMP", 0.8), ("Global MP", 0.5)]
    assert cli_main(["validate", str(recipe_file)]) == 1
    printed = capsys.readouterr().out
    lamp = f"{100 * (recipe['meta']['test_accuracy'] + 0.05):.2f}%"
    assert (f"FAILED LAMP at 0.8: recorded test accuracy {100 * recipe['meta']['test_accuracy']:.2f}%, "
            f"replayed {lamp}") in printed
    # A tolerance admits a difference within it (records from another machine or device).
    assert all(replay.ok for replay in validate([recipe_file], tolerance=0.06))


def test_validate_refuses_what_it_cannot_replay(tmp_path, capsys):
    assert cli_main(["validate", str(tmp_path / "missing")]) == 2
    assert "nothing at" in capsys.readouterr().err
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"stem.0": 0.5}))
    assert cli_main(["validate", str(plain)]) == 2
    assert "needs meta.env_id and meta.reward_accuracy" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="tolerance"):
        validate([plain], tolerance=1.5)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingResourceError, match="no record to replay"):
        validate([empty])


def test_the_agents_settings_are_read_once_per_comparison(tmp_path, monkeypatch):
    from prune_gym.agents import factory

    yaml_file = tmp_path / "dqn.yml"
    yaml_file.write_text(factory._hyperparams_file("dqn").read_text())
    reads = []
    read_yaml = factory._read_yaml
    monkeypatch.setattr(factory, "_read_yaml", lambda path: reads.append(str(path)) or read_yaml(path))
    compare(ENV_ID, [0.5], "dqn", timesteps=30, hyperparams=yaml_file, n_envs=1, search=False, write_files=False,
            progress_bar=False, env_kwargs={"device": "cpu"}, log=lambda _: None)
    assert reads == [str(yaml_file)]  # checked before anything loads, then passed on resolved
