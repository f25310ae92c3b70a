"""Per-layer latency tables (HAQ's method, Wang et al. 2019): every Conv / Linear layer of a
network timed alone, on the machine at hand, at a grid of kept input and output channel shares;
a channel env with ``budget="latency"`` predicts the pruned network's latency from it.

The prediction for removed channels is the sum over layers of each layer's time at its kept
shares (bilinear between grid points) plus ``rest_ms``: the dense network's measured time less
its layers' (BatchNorm, activations, additions, pooling), held constant. The table is monotone by
construction (a layer with more channels is never predicted faster), so the budget rises with
every channel removed and the env's projection and the allocation rules' searches stay exact.

A table is measured once per model, input shape, batch, device and machine and kept as JSON in
the cache (``prune_gym.tasks.cache_dir() / "latency"``): every env built on the same model
reads the same table, so an agent's env and the reference env share one budget. The table says
where it was measured (processor, device, torch threads and version, date); delete its file, or
pass ``latency_table=`` a path, to use another.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from prune_gym.channels import is_depthwise, is_grouped
from prune_gym.errors import ConfigError
from prune_gym.pruning import PrunableLayer
from prune_gym.tasks.base import cache_dir

__all__ = ["LatencyTable", "latency_table_for", "measure_latency_table", "resolve_latency_table"]

#: Kept shares of a layer's input and output channels the table times (1/8 steps).
GRID = tuple(k / 8 for k in range(1, 9))


@dataclass(frozen=True)
class LatencyTable:
    """Milliseconds of each layer alone at kept input / output shares ``grid`` (``ms[layer][i][o]``),
    the rest of the network's time, and where it was measured."""

    layers: tuple[str, ...]
    grid: tuple[float, ...]
    ms: tuple[tuple[tuple[float, ...], ...], ...]
    rest_ms: float
    dense_ms: float
    machine: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = np.shape(self.ms)
        if len(self.grid) < 2 or list(self.grid) != sorted(self.grid) or self.grid[-1] != 1.0:
            raise ConfigError(f"a latency table's grid must ascend to 1.0, got {self.grid}")
        if shape != (len(self.layers), len(self.grid), len(self.grid)):
            raise ConfigError(f"a latency table needs one {len(self.grid)}x{len(self.grid)} grid per layer, got {shape} "
                              f"for {len(self.layers)} layers")

    @cached_property
    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The grid and the milliseconds as arrays (converted once: predict runs in every step)."""
        return np.asarray(self.grid, dtype=np.float64), np.asarray(self.ms, dtype=np.float64)

    def predict(self, kept_in: Sequence[float], kept_out: Sequence[float]) -> float:
        """Predicted milliseconds of the network whose layers keep these shares of their inputs and
        outputs (one share per layer, in the table's layer order)."""
        grid, table = self._arrays
        kept_in = np.clip(np.asarray(kept_in, dtype=np.float64), grid[0], 1.0)
        kept_out = np.clip(np.asarray(kept_out, dtype=np.float64), grid[0], 1.0)
        i = np.clip(np.searchsorted(grid, kept_in, side="right") - 1, 0, len(grid) - 2)
        o = np.clip(np.searchsorted(grid, kept_out, side="right") - 1, 0, len(grid) - 2)
        u = (kept_in - grid[i]) / (grid[i + 1] - grid[i])
        v = (kept_out - grid[o]) / (grid[o + 1] - grid[o])
        rows = np.arange(len(self.layers))
        ms = ((1 - u) * (1 - v) * table[rows, i, o] + u * (1 - v) * table[rows, i + 1, o]
              + (1 - u) * v * table[rows, i, o + 1] + u * v * table[rows, i + 1, o + 1])
        return float(ms.sum() + self.rest_ms)

    @cached_property
    def dense_prediction(self) -> float:
        ones = np.ones(len(self.layers))
        return self.predict(ones, ones)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(asdict(self), indent=1))
        partial.replace(path)  # atomic: a reader never sees half a table
        return path

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        path = Path(path)
        try:
            record = json.loads(path.read_text())
            return cls(tuple(record["layers"]), tuple(record["grid"]),
                       tuple(tuple(tuple(row) for row in layer) for layer in record["ms"]),
                       float(record["rest_ms"]), float(record["dense_ms"]), dict(record.get("machine", {})))
        except FileNotFoundError:
            raise ConfigError(f"no latency table at {path}") from None
        except (ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"{path} is not a latency table ({error}); delete it to measure a new one") from error

    def check_layers(self, names: Sequence[str]) -> None:
        if list(self.layers) != list(names):
            raise ConfigError(f"the latency table times layers {list(self.layers)[:4]}..., this model has "
                              f"{list(names)[:4]}...: it was measured on another model")


def _time_ms(run, device: torch.device, repeats: int) -> float:
    for _ in range(2):
        run()
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append(time.perf_counter() - started)
    return 1000 * statistics.median(samples)


def _layer_inputs(model: nn.Module, layers: Sequence[PrunableLayer], example: Tensor) -> dict[str, tuple[tuple[int, ...], int]]:
    """Each layer's input shape (its first call) and how many times one forward calls it."""
    seen: dict[str, tuple[tuple[int, ...], int]] = {}
    handles = []
    for layer in layers:
        def hook(_module, args, name=layer.name):
            shape, calls = seen.get(name, (tuple(args[0].shape), 0))
            seen[name] = (shape, calls + 1)
        handles.append(layer.module.register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _resized(module: nn.Module, kept_in: float, kept_out: float) -> tuple[nn.Module, int]:
    """A fresh layer like ``module`` with the kept shares of its channels, and its input channels."""
    if isinstance(module, nn.Linear):
        n_in, n_out = max(1, round(kept_in * module.in_features)), max(1, round(kept_out * module.out_features))
        return nn.Linear(n_in, n_out, bias=module.bias is not None), n_in
    if is_depthwise(module):  # its inputs are its outputs
        n = max(1, round(kept_out * module.out_channels))
        n_in, n_out, groups = n, n, n
    elif is_grouped(module):  # a grouped convolution keeps its channels (its groups are never pruned)
        n_in, n_out, groups = module.in_channels, module.out_channels, module.groups
    else:
        n_in, n_out, groups = max(1, round(kept_in * module.in_channels)), max(1, round(kept_out * module.out_channels)), 1
    layer = type(module)(n_in, n_out, module.kernel_size, module.stride, module.padding, module.dilation, groups,
                         module.bias is not None, module.padding_mode)
    return layer, n_in


def measure_layer_grid(module: nn.Module, input_shape: Sequence[int], device: torch.device, grid: Sequence[float],
                       repeats: int, channels_last: bool) -> np.ndarray:
    """Milliseconds of ``module``'s kind alone at every (kept input, kept output) share of ``grid``."""
    ms = np.zeros((len(grid), len(grid)))
    for i, kept_in in enumerate(grid):
        for o, kept_out in enumerate(grid):
            layer, n_in = _resized(module, kept_in, kept_out)
            layer = layer.to(device).eval()
            shape = list(input_shape)
            shape[1 if not isinstance(module, nn.Linear) else -1] = n_in
            x = torch.randn(shape, device=device)
            if channels_last and x.dim() == 4:
                layer, x = layer.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                ms[i, o] = _time_ms(lambda layer=layer, x=x: layer(x), device, repeats)
    # Monotone: more channels are never predicted faster (timing noise would say so at times).
    return np.maximum.accumulate(np.maximum.accumulate(ms, axis=0), axis=1)


def measure_latency_table(model: nn.Module, layers: Sequence[PrunableLayer], sample_shape: Sequence[int], *,
                          batch_size: int = 1, device: str | torch.device = "cpu", repeats: int = 20,
                          channels_last: bool = False, grid: Sequence[float] = GRID, progress: bool = True) -> LatencyTable:
    """Time every layer of ``model`` alone at each kept share of ``grid`` (median of ``repeats``),
    and the dense network, at ``batch_size`` inputs of ``sample_shape`` on ``device``, with this
    process's torch threads. ``model`` is not changed (it is put in eval mode for the timing)."""
    from tqdm.auto import tqdm

    device = torch.device(device)
    model = model.to(device).eval()
    example = torch.randn(batch_size, *sample_shape, device=device)
    inputs = _layer_inputs(model, layers, example)
    tables, layer_dense = [], 0.0
    for layer in tqdm(layers, desc="latency table", unit="layer", disable=not progress, mininterval=5):
        shape, calls = inputs[layer.name]
        ms = calls * measure_layer_grid(layer.module, shape, device, grid, repeats, channels_last)
        tables.append(ms)
        layer_dense += ms[-1, -1]
    with torch.inference_mode():
        dense_ms = _time_ms(lambda: model(example), device, repeats)
    return LatencyTable(
        tuple(layer.name for layer in layers), tuple(float(g) for g in grid),
        tuple(tuple(tuple(float(v) for v in row) for row in ms) for ms in tables),
        rest_ms=max(dense_ms - layer_dense, 0.0), dense_ms=dense_ms, machine=machine_record(device, batch_size),
    )


def machine_record(device: torch.device, batch_size: int) -> dict:
    """Where and how a table was measured."""
    return {
        "processor": platform.processor() or platform.machine(), "system": platform.system(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "batch_size": batch_size,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _table_key(model: nn.Module, layers: Sequence[PrunableLayer], sample_shape: Sequence[int], batch_size: int,
               device: torch.device, channels_last: bool) -> str:
    """What a table depends on: the layers' kinds and shapes, the input, the device and the machine."""
    described = [(layer.name, type(layer.module).__name__, tuple(layer.module.weight.shape),
                  getattr(layer.module, "stride", None), getattr(layer.module, "groups", None)) for layer in layers]
    machine = machine_record(device, batch_size)
    machine.pop("date")
    text = repr((described, tuple(sample_shape), channels_last, sorted(machine.items())))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def latency_table_for(model: nn.Module, layers: Sequence[PrunableLayer], sample_shape: Sequence[int], *,
                      batch_size: int = 1, device: str | torch.device = "cpu", channels_last: bool = False,
                      cache: Path | None = None, progress: bool = True) -> tuple[LatencyTable, Path]:
    """The cached table for this model, input, device and machine, measured first if there is none
    (see the module docstring), and its file."""
    device = torch.device(device)
    folder = cache if cache is not None else cache_dir() / "latency"
    path = folder / f"{_table_key(model, layers, sample_shape, batch_size, device, channels_last)}.json"
    if path.is_file():
        return LatencyTable.load(path), path
    table = measure_latency_table(model, layers, sample_shape, batch_size=batch_size, device=device,
                                  channels_last=channels_last, progress=progress)
    return table, table.save(path)


def resolve_latency_table(table: str | Path | LatencyTable | None, model: nn.Module, layers: Sequence[PrunableLayer],
                          sample_shape: Sequence[int], device: torch.device,
                          channels_last: bool) -> tuple[LatencyTable, Path | None]:
    """A channel env's latency table: the one given (a table or its file), else the cached one for
    this model, input and machine (measured first if there is none); and its file."""
    if isinstance(table, str | Path):
        return LatencyTable.load(table), Path(table)
    if table is None:
        return latency_table_for(model, layers, sample_shape, device=device, channels_last=channels_last)
    return table, None
