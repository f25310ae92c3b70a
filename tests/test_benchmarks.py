"""The benchmark scripts: ``run_all.py --quick`` end to end, and the pieces that build the tables.

The smoke test runs every benchmark with its tiny quick budget into a temporary folder (a few
minutes on a 2-core CPU) and checks what the scripts recorded, not only that they exited: the
masks equal torch's, the fast env agrees with the straightforward one, and the quality table has
a finite accuracy for every method and target.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # the scripts import machine.py from their own folder

import bench_quality_digits as quality  # noqa: E402
import run_all  # noqa: E402


def test_run_all_quick_smoke(tmp_path, digits_model_state):
    # digits_model_state: the trained digits model is in the test cache, which the scripts share.
    output = tmp_path / "quick"
    recorded = {path: path.stat().st_mtime_ns for path in (BENCHMARKS / "results").rglob("*") if path.is_file()}
    result = subprocess.run(
        # Two scripts side by side (--jobs 2): the same scripts, in about half the wall time.
        [sys.executable, str(BENCHMARKS / "run_all.py"), "--quick", "--jobs", "2", "--output", str(output)],
        capture_output=True, text=True, timeout=1200, env={**os.environ},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    summary = (output / "SUMMARY.md").read_text()
    for benchmark in run_all.BENCHMARKS:
        assert f"## {benchmark.title}" in summary
    assert "(no results written)" not in summary

    global_mp = json.loads((output / "global_mp_cpu.json").read_text())
    assert global_mp["results"] and all(row["masks_equal"] for row in global_mp["results"])

    env_steps = json.loads((output / "env_steps_cpu.json").read_text())
    compared = [row for row in env_steps["results"] if "straightforward_steps_per_s" in row]
    assert compared and all(row["accuracy_mismatches"] == 0 for row in compared)

    soak = json.loads((output / "soak_digits.json").read_text())
    assert soak["episodes"] == 10 and soak["episodes_missing_target"] == 0

    record = json.loads((output / "quality_digits.json").read_text())
    targets = record["config"]["sparsities"]
    assert record["methods"] == [
        "DQN (greedy)", "DQN (best found)", "PPO (greedy)", "PPO (best found)", "local search", *quality.REFERENCE_METHODS
    ]
    run = record["runs"][0]
    # The best found policy is the best training episode on the reward split, replayed exactly,
    # then guarded: kept, or the strongest rule's allocation in its place.
    for target in targets:
        best = max(acc for _, _, t, acc in run["agents"]["dqn"]["episodes"] if f"{t:g}" == f"{target:g}")
        (replayed,) = [r for r in run["rows"] if r["method"] == "DQN (best found)" and r["target_sparsity"] == target]
        assert replayed["selection"]["own"]["reward_accuracy"] == pytest.approx(best, abs=1e-9)
        (rule,) = [r for r in run["rows"] if r["method"] == run["strongest_rule"][str(target)] and r["target_sparsity"] == target]
        if replayed["fallback"] is not None:
            assert replayed["fallback"] == rule["method"] and replayed["layer_sparsities"] == rule["layer_sparsities"]
            assert replayed["finetuned_test_accuracy"] == rule["finetuned_test_accuracy"]
        else:
            assert replayed["reward_accuracy"] == pytest.approx(best, abs=1e-9)
    assert run["search"]["episodes_per_target"] == max(run["agents"]["dqn"]["training_episodes"] // len(targets), 1)
    for entry in record["summary"]:
        for key in ("test_accuracy", "finetuned_test_accuracy"):
            assert 0.0 <= entry[f"{key}_mean"] <= 1.0 and math.isfinite(entry[f"{key}_std"])
    rows = record["runs"][0]["rows"]
    for row in rows:
        assert abs(row["overall_sparsity"] - row["target_sparsity"]) < 1e-3, row["method"]
    # Global MP at half sparsity keeps the digits model's accuracy (dense 98%).
    gmp = next(r for r in rows if r["method"] == "Global MP" and r["target_sparsity"] == min(targets))
    assert gmp["test_accuracy"] > 0.9
    for name in ("quality_digits_accuracy.png", "quality_digits_learning_curve.png", "quality_digits.md"):
        assert (output / name).stat().st_size > 0
    sweep_record = json.loads((output / "sweep_digits.json").read_text())
    for run in sweep_record["runs"].values():
        assert run["finished"] == run["trials"] == 3  # the DQN seed, its search, the reference
    assert sweep_record["speedup"] > 0 and sweep_record["same_aggregate"], sweep_record["largest_accuracy_difference"]
    # --quick never writes the recorded results: every script wrote into --output only.
    assert not (BENCHMARKS / "results" / "SUMMARY.md").exists()
    assert {path: path.stat().st_mtime_ns for path in (BENCHMARKS / "results").rglob("*") if path.is_file()} == recorded


def test_quick_refuses_to_overwrite_recorded_results():
    with pytest.raises(SystemExit):
        run_all.parse_args(["--quick", "--output", str(BENCHMARKS / "results")])


def test_scripts_side_by_side_only_for_quick_runs(capsys):
    # Side by side the scripts skew each other's timings: never for the recorded (full) run.
    with pytest.raises(SystemExit):
        run_all.parse_args(["--jobs", "2"])
    assert "only with --quick" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_all.parse_args(["--quick", "--jobs", "0"])
    assert run_all.parse_args(["--quick", "--jobs", "2"]).jobs == 2


def test_update_readme_rebuilds_generated_blocks_only(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "soak_digits.json").write_text(json.dumps({
        "date": "2026-01-02", "command": "python benchmarks/soak_digits.py --episodes 7", "episodes": 7,
        "steps": 154, "seconds": 3.2, "episodes_missing_target": 0, "python_heap_growth_mb": 0.001,
        "rss_start_mb": 800.0, "rss_growth_mb": 0.5,
    }))
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Benchmarks\n\nhand-written text\n\n"
        "<!-- BEGIN GENERATED: soak -->\nold soak table\n<!-- END GENERATED: soak -->\n\n"
        "<!-- BEGIN GENERATED: quality -->\nold quality table\n<!-- END GENERATED: quality -->\n\nmore text\n"
    )
    updated = run_all.update_readme(readme, results)
    text = readme.read_text()
    assert "soak" in updated and "quality" not in updated  # no quality results: its block is kept
    assert "old soak table" not in text and "| 7 | 154 | 3 | 0 | 0.001 | 800 | 0.5 |" in text
    assert "`python benchmarks/soak_digits.py --episodes 7`" in text
    assert "old quality table" in text
    assert text.startswith("# Benchmarks\n\nhand-written text\n") and text.endswith("more text\n")


def test_recorded_readme_tables_match_the_recorded_results(tmp_path):
    """benchmarks/README.md's generated blocks are what run_all.py builds from results/."""
    copy = tmp_path / "README.md"
    copy.write_text((BENCHMARKS / "README.md").read_text())
    run_all.update_readme(copy, BENCHMARKS / "results")
    assert copy.read_text() == (BENCHMARKS / "README.md").read_text(), (
        "benchmarks/README.md is out of date with benchmarks/results: run "
        "`python benchmarks/run_all.py --update-readme`"
    )


def test_quality_budgets():
    assert quality.budgets(["500"], ["dqn", "ppo"]) == {"dqn": 500, "ppo": 500}
    assert quality.budgets(["dqn=default", "ppo=300"], ["dqn", "ppo"]) == {"dqn": 10000, "ppo": 300}
    with pytest.raises(ValueError, match="no budget for ppo"):
        quality.budgets(["dqn=100"], ["dqn", "ppo"])
    with pytest.raises(ValueError, match="positive number"):
        quality.budgets(["-3"], ["dqn"])


def test_best_so_far_and_first_beat_read_one_target_in_order():
    # rows: env steps, seconds, target, reward-split accuracy
    episodes = [[22, 1.0, 0.5, 0.90], [44, 2.0, 0.9, 0.30], [66, 3.0, 0.5, 0.96], [88, 4.0, 0.9, 0.25],
                [110, 5.0, 0.9, 0.61], [132, 6.0, 0.5, 0.95]]
    assert quality.best_so_far(episodes, "0.5") == [[22, 1.0, 0.90], [66, 3.0, 0.96]]
    assert quality.best_so_far(episodes, "0.9") == [[44, 2.0, 0.30], [110, 5.0, 0.61]]
    assert quality.first_beat(episodes, "0.5", 0.95) == {"timesteps": 66, "episodes": 3, "train_seconds": 3.0}
    assert quality.first_beat(episodes, "0.9", 0.6) == {"timesteps": 110, "episodes": 5, "train_seconds": 5.0}
    assert quality.first_beat(episodes, "0.9", 0.61) is None  # equal is not beating
    assert quality._step_curve([[22, 1.0, 0.9], [66, 3.0, 0.96]], [0, 22, 50, 70], 0)[1:] == [0.9, 0.9, 0.96]


def test_aggregate_mean_and_sample_std():
    runs = [
        {"rows": [{"method": "Global MP", "target_sparsity": 0.5, "seed": seed, "test_accuracy": accuracy}]}
        for seed, accuracy in enumerate([0.90, 0.94, 0.98])
    ]
    (entry,) = quality.aggregate(runs, ["Global MP"], [0.5])
    assert entry["seeds"] == [0, 1, 2]
    assert entry["test_accuracy_mean"] == pytest.approx(0.94)
    assert entry["test_accuracy_std"] == pytest.approx(0.04)
