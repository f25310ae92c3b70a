"""What machine a benchmark ran on, for its recorded results, and how a result is written."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_info() -> dict[str, object]:
    """CPU, threads, GPU and software versions, as recorded next to every result."""
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write_record(folder: Path | None, stem: str, record: Any, markdown: str) -> None:
    """Write a benchmark's ``<stem>.json`` (the record, machine included) and ``<stem>.md`` (its
    table, ending in one newline) into ``folder`` (None: nothing written)."""
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    (folder / f"{stem}.md").write_text(markdown.rstrip("\n") + "\n")
