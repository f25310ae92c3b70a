"""Files written atomically: a temporary file in the same folder, then a rename over the path.

A reader (or a second writer) never sees a half-written file, and a run killed mid-write
leaves the previous file intact. Every file prune-gym writes that a later command reads goes
through here.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from prune_gym.errors import ConfigError

__all__ = [
    "atomic_save", "atomic_write", "atomic_write_json", "atomic_write_text", "check_writable_path", "json_text", "read_json",
]


def check_writable_path(path: str | os.PathLike, what: str = "output") -> Path:
    """Check, before any work, that a file can be created at ``path``: no part of its folder is a
    file, and the nearest existing folder is writable. Returns ``path``; ValueError otherwise."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"the {what} path {path} is a folder: give a file path")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"the {what} path {path} lies under {parent}, which is a file: choose another path")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"cannot write under {parent} (permission denied): choose another {what} path")
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(handle)`` on a temporary binary file next to ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_save(obj: object, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path``, atomically."""
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path``, atomically."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def json_text(data: Any) -> str:
    """``data`` as the package writes JSON files: indented, one trailing newline."""
    return json.dumps(data, indent=2, default=str) + "\n"


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path``, atomically."""
    return atomic_write_text(path, json_text(data))


def read_json(path: str | os.PathLike, fix: str) -> Any:
    """The JSON in the file ``path``; a ConfigError naming the file and ``fix`` (what to do about
    it) when it is not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path} is not valid JSON ({error}): {fix}") from None
