"""The README's Python examples run as written (they are what a new user copies first)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
ALL_BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
#: The sweep example runs in tests/test_sweep.py, which checks its result further (one Ray sweep, not two).
SWEEP_EXAMPLE = "from prune_gym.workflows import sweep"
BLOCKS = [block for block in ALL_BLOCKS if SWEEP_EXAMPLE not in block]


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 4
    assert sum(SWEEP_EXAMPLE in block for block in ALL_BLOCKS) == 1  # the one tests/test_sweep.py runs


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, digits_model_state, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples write files (an exported model) where they run
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {"__name__": f"readme_block_{index}"})
    # Each example shows what it computed.
    assert capsys.readouterr().out.strip(), f"README.md block {index} prints nothing"


def test_the_hand_written_agent_starts_from_global_mp_as_its_text_says(digits_model_state, capsys):
    """Its start actions, played through the env, are Global MP's allocation weight for weight."""
    import gymnasium as gym

    block = next(block for block in BLOCKS if "preferences" in block)
    namespace: dict = {"__name__": "readme_reinforce"}
    exec(compile(block, "README.md REINFORCE block", "exec"), namespace)
    env = gym.make("PruneResNet20Digits-v1", target_sparsity=0.8)
    prune_env = env.unwrapped
    env.reset(seed=0)
    for action in namespace["start"]:
        _, _, _, _, info = env.step(int(action))
    numels = prune_env.state.numels
    applied = [round(info["layer_sparsities"][name] * n) for name, n in zip(prune_env.layer_names(), numels, strict=True)]
    assert applied == [round(s * n) for s, n in zip(prune_env.global_mp_sparsities(0.8), numels, strict=True)]
    assert "best so far" in capsys.readouterr().out
