"""The README's Python examples run as written (they are what a new user copies first)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, digits_model_state, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples write files (an exported model) where they run
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {"__name__": f"readme_block_{index}"})
    # Each example shows what it computed.
    assert capsys.readouterr().out.strip(), f"README.md block {index} prints nothing"
