"""Getting a channel-pruned model out, physically smaller: a checkpoint of the smaller network,
an ONNX file, and its measured latency beside the dense model's.

- :func:`slim_model`: the channel env's pruned network with the removed channels gone
  (Torch-Pruning), on the CPU; it computes what the env's masked network computes.
- :func:`save_slim` / :func:`load_slim`: a checkpoint that rebuilds the smaller architecture
  from the dense one (the removed channels of each group) and loads its weights, with
  ``weights_only`` loading (no pickled code).
- :func:`export_onnx` / :func:`onnx_logits`: ``torch.onnx.export`` (dynamic batch) and
  onnxruntime's predictions, to check them against PyTorch's; :class:`OnnxRunner` runs an ONNX
  file like a module, for timing.
- :func:`measure_latency`: median seconds of a forward pass at each batch size, after warm-up.
- :func:`export_channel_recipe`: replay a recipe through a channel env, write checkpoint and
  ONNX, measure dense against pruned; :func:`export_channel_task` is the ``prune-gym export``
  command for channel env ids (a rule or a recipe, optional fine-tuning of the smaller network).
"""

from __future__ import annotations

import copy
import platform
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import onnxruntime
import torch
from torch import Tensor, nn

from prune_gym.channels import slim_copy
from prune_gym.errors import ConfigError
from prune_gym.evaluation import evaluate_accuracy, sample_tensors
from prune_gym.finetune import finetune_pruned
from prune_gym.io import atomic_save, atomic_write_json, check_writable_path
from prune_gym.pruning import find_prunable_layers
from prune_gym.recipes import load_recipe

__all__ = [
    "LATENCY_BATCHES",
    "ChannelExport",
    "OnnxRunner",
    "export_channel_recipe",
    "export_channel_task",
    "export_onnx",
    "granularity_record",
    "latency_side_by_side",
    "load_slim",
    "measure_latency",
    "onnx_logits",
    "save_slim",
    "slim_model",
]

#: The batch sizes latency is measured at: one sample (interactive use) and a batch (throughput).
LATENCY_BATCHES = (1, 256)
#: How a comparison's rows and an export measure a smaller network beside the dense one: this
#: many alternating rounds, each timing every batch size for at least this many seconds. One
#: setting for both, so a row and the export of its recipe report the same speed-up within noise.
LATENCY_ROUNDS = 5
LATENCY_MIN_SECONDS = 0.2
#: The checkpoint's format version.
SLIM_FORMAT = 1


def _example(env: Any) -> Tensor:
    return torch.zeros(1, *env.evaluator.sample_shape)


def slim_model(env: Any) -> nn.Module:
    """The channel env's network as it is now, with its removed channels physically gone: a copy
    on the CPU in the default memory format, in eval mode (the env is not changed)."""
    model = env.model
    device = next(model.parameters()).device
    slim = slim_copy(model, env.group_names(), env.removed_channels(), _example(env).to(device))
    return slim.to("cpu", memory_format=torch.contiguous_format).eval()


def save_slim(model: nn.Module, path: str | Path, removed: Mapping[str, Sequence[int]],
              meta: Mapping[str, Any] | None = None) -> Path:
    """Write the smaller network: its state dict, the removed channels of each group (by root
    layer) that rebuild its architecture from the dense one, and ``meta``."""
    path = Path(path)
    atomic_save({"format": SLIM_FORMAT, "removed": {name: [int(c) for c in channels] for name, channels in removed.items()},
                 "state_dict": model.state_dict(), "meta": dict(meta or {})}, path)
    return path


def load_slim(path: str | Path, dense: nn.Module, example_input: Tensor) -> nn.Module:
    """The smaller network saved by :func:`save_slim`, rebuilt from ``dense`` (the architecture
    built as for the unpruned model, e.g. ``task.build_model()``; not changed)."""
    record = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(record, dict) or record.get("format") != SLIM_FORMAT:
        raise ConfigError(f"{path} is not a channel-pruned checkpoint of prune-gym (format {SLIM_FORMAT})")
    removed = record["removed"]
    slim = slim_copy(dense.eval(), list(removed), list(removed.values()), example_input)
    try:
        slim.load_state_dict(record["state_dict"])
    except RuntimeError as error:
        raise ConfigError(f"{path} does not fit this architecture ({error}); was it saved from another model?") from None
    return slim.eval()


def export_onnx(model: nn.Module, example_input: Tensor, path: str | Path) -> Path:
    """``model`` as ONNX (``torch.onnx.export``, the batch dimension dynamic), input ``input``,
    output ``logits``."""
    path = Path(path)
    batch = torch.export.Dim("batch", min=1)
    # An example batch of 1 would be specialised to 1 by torch.export: trace with 2.
    example_input = example_input[:1].expand(2, *example_input.shape[1:]).contiguous()
    torch.onnx.export(model.eval(), (example_input,), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_shapes=({0: batch},), dynamo=True, external_data=False, verbose=False)
    return path


def onnx_logits(path: str | Path, inputs: Tensor) -> np.ndarray:
    """onnxruntime's outputs for ``inputs`` (one CPU thread)."""
    return OnnxRunner(path)(inputs)


class OnnxRunner:
    """An ONNX file run by onnxruntime (CPU, one thread) and called like a module: a CPU tensor
    in, the first output as numpy out. :func:`measure_latency` and :func:`latency_side_by_side`
    time it as they time a module. onnxruntime's default (full) graph optimisation: BatchNorm
    folded, and blocked (NCHWc) kernels for convolutions whose channels are multiples of the CPU's
    vector width (16 floats with AVX-512, 8 with AVX2)."""

    def __init__(self, path: str | Path) -> None:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, inputs: Tensor) -> np.ndarray:
        return self.session.run(None, {self.input_name: inputs.numpy()})[0]


@torch.inference_mode()
def measure_latency(model: nn.Module | OnnxRunner, sample_shape: Sequence[int],
                    batch_sizes: Sequence[int] = LATENCY_BATCHES, device: str | torch.device = "cpu",
                    min_seconds: float = 0.5, max_repeats: int = 200) -> dict[str, float]:
    """Median milliseconds of one forward pass of ``model`` (a module, or an :class:`OnnxRunner`
    on the CPU) at each batch size on ``device`` (random inputs; warm-up first; repeats until
    ``min_seconds`` or ``max_repeats``), keyed by the batch size as a string. Runs with this
    process's torch threads."""
    device = torch.device(device)
    if isinstance(model, nn.Module):
        model = model.to(device).eval()
    elif device.type != "cpu":
        raise ConfigError(f"an ONNX file runs on the CPU here (onnxruntime's CPU provider), not {device}")
    timings = {}
    for batch in batch_sizes:
        x = torch.randn(batch, *sample_shape, device=device)
        for _ in range(3):
            model(x)
        _synchronize(device)
        samples, spent = [], 0.0
        while len(samples) < 5 or (spent < min_seconds and len(samples) < max_repeats):
            started = time.perf_counter()
            model(x)
            _synchronize(device)
            samples.append(time.perf_counter() - started)
            spent += samples[-1]
        timings[str(batch)] = 1000 * statistics.median(samples)
    return timings


def latency_side_by_side(dense: nn.Module | OnnxRunner, pruned: nn.Module | OnnxRunner, sample_shape: Sequence[int],
                         batch_sizes: Sequence[int] = LATENCY_BATCHES, rounds: int = LATENCY_ROUNDS,
                         min_seconds: float = LATENCY_MIN_SECONDS,
                         device: str | torch.device = "cpu") -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """The dense and the pruned network measured alternately (``rounds`` rounds of
    :func:`measure_latency` each, on ``device``): their median milliseconds and the speed-up, the
    median over rounds of dense / pruned, by batch size. Alternating keeps a shared machine's
    drift out of the ratio."""
    dense_ms: dict[str, list[float]] = {str(b): [] for b in batch_sizes}
    pruned_ms: dict[str, list[float]] = {str(b): [] for b in batch_sizes}
    for _ in range(rounds):
        for model, into in ((dense, dense_ms), (pruned, pruned_ms)):
            for batch, ms in measure_latency(model, sample_shape, batch_sizes, device, min_seconds).items():
                into[batch].append(ms)
    speedup = {b: statistics.median(d / p for d, p in zip(dense_ms[b], pruned_ms[b], strict=True)) for b in dense_ms}
    return ({b: statistics.median(v) for b, v in dense_ms.items()}, {b: statistics.median(v) for b, v in pruned_ms.items()},
            speedup)


#: What a channel env's target counts, for tables and plots.
BUDGET_LABELS = {"flops": "FLOPs removed", "params": "parameters removed", "latency": "predicted latency removed"}


def fold_batchnorm(model: nn.Module) -> nn.Module | None:
    """A copy of ``model`` in eval mode with every BatchNorm that follows a convolution folded into
    it (torch.fx's ``fuse``), as a deployment runtime does (onnxruntime does it on its own): the
    same outputs up to float rounding, one layer fewer per convolution. None when torch.fx cannot
    trace the model. ``model`` is not changed."""
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(copy.deepcopy(model).eval())
    except Exception:  # torch.fx could not trace it (Python control flow on the input, ...)
        return None


def granularity_record(env: Any) -> dict[str, Any]:
    """What a comparison on ``env`` prunes, for its metadata: weights (the overall sparsity of the
    prunable weights), or channels (the share of the budget removed, and the dense network's CPU
    latency to set the rows' beside)."""
    if not hasattr(env, "groups"):
        return {"granularity": "weights", "target_label": "overall sparsity"}
    dense = env.dense_architecture()
    return {
        "granularity": "channels",
        "budget": env.budget,
        "target_label": BUDGET_LABELS[env.budget],
        **({"latency_table": env.latency_table.machine} if env.latency_table is not None else {}),
        "dense_latency_ms": measure_latency(dense, env.evaluator.sample_shape),
        "latency_note": f"{torch.get_num_threads()} torch thread(s), {platform.processor() or platform.machine()}",
    }


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class ChannelExport:
    """What :func:`export_channel_recipe` wrote and measured."""

    checkpoint: Path
    onnx: Path | None
    test_accuracy: float
    reward_accuracy: float
    flops_reduction: float
    param_reduction: float
    dense_params: int
    params: int
    onnx_max_difference: float | None
    #: By device or runtime ("cpu", "cpu, BatchNorm folded", "cpu, onnxruntime", "cuda"): the dense and
    #: the pruned network's median milliseconds and the speed-up, by batch size.
    latency_ms: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    #: The latency table's prediction (batch 1, the env's device) when the env's budget is latency.
    predicted_speedup: float | None = None
    #: The torch threads the latency was measured with (small networks run fastest on one).
    torch_threads: int = 1

    def summary(self) -> str:
        lines = [f"wrote {self.checkpoint}" + (f" and {self.onnx}" if self.onnx else ""),
                 f"test accuracy {100 * self.test_accuracy:.2f}% (reward split {100 * self.reward_accuracy:.2f}%), "
                 f"FLOPs removed {100 * self.flops_reduction:.1f}%, parameters {self.params:,} of {self.dense_params:,}"]
        if self.onnx_max_difference is not None:
            lines.append(f"ONNX (onnxruntime) against PyTorch on the test inputs: largest logit difference "
                         f"{self.onnx_max_difference:.2g}")
        if self.predicted_speedup is not None:
            lines.append(f"the latency table predicted {self.predicted_speedup:.2f}x at batch 1")
        for where, timings in self.latency_ms.items():
            threads = "1 onnxruntime thread" if "onnxruntime" in where else f"{self.torch_threads} torch thread(s)"
            lines += [f"latency on {where}, batch {batch}: dense {timings['dense'][batch]:.3f} ms, pruned {ms:.3f} ms "
                      f"({timings['speedup'][batch]:.2f}x, measured alternately, {threads})"
                      for batch, ms in timings["pruned"].items()]
        return "\n".join(lines)


def _write_onnx(model: nn.Module, env: Any, path: Path) -> tuple[Path, float]:
    """``model`` (a channel env's smaller network, on the CPU) as ONNX at ``path``, and the largest
    difference between onnxruntime's and PyTorch's logits on 64 of the env's test inputs."""
    path = export_onnx(model, _example(env), path)
    probe = sample_tensors(env.test_data, 64, seed=0)[0].float()
    with torch.inference_mode():
        expected = model(probe).numpy()
    return path, float(np.abs(onnx_logits(path, probe) - expected).max())


def export_channel_recipe(env: Any, layer_sparsities: Mapping[str, float], output: str | Path, *, onnx: bool = True,
                          latency: bool = True, latency_rounds: int = LATENCY_ROUNDS,
                          meta: Mapping[str, Any] | None = None) -> ChannelExport:
    """Replay per-group shares of removed channels (a recipe's ``layers``) through the channel
    env ``env``, and write ``output/model.pt`` (:func:`save_slim`) and ``output/model.onnx``;
    the smaller network's test accuracy is measured on the env's test split (it equals the
    env's, which a check asserts), and its latency beside the dense network's, alternating over
    ``latency_rounds`` rounds (CPU: PyTorch, with BatchNorm folded, and onnxruntime with
    ``onnx``; and CUDA where the env runs there)."""
    output = Path(output)
    if latency and (not isinstance(latency_rounds, int) or latency_rounds < 1):
        raise ConfigError(f"latency_rounds must be a whole number >= 1, got {latency_rounds!r}")
    names = env.group_names()
    unknown = sorted(set(layer_sparsities) - set(names))
    missing = [name for name in names if name not in layer_sparsities]
    if unknown or missing:
        raise ConfigError(f"the recipe does not fit this env's channel groups (missing {missing}, unknown {unknown}): "
                          "was it written for another env or model?")
    check_writable_path(output / "model.pt")
    counts = [round(float(layer_sparsities[name]) * channels) for name, channels in zip(names, env.channels, strict=True)]
    info = env.replay(counts)
    test_accuracy = env.evaluate_test()
    slim = slim_model(env)
    slim_accuracy = evaluate_accuracy(slim, env.test_data, "cpu", amp=False)
    if abs(slim_accuracy - test_accuracy) > 1.5 / max(env.engine.test_evaluator.num_samples, 1):
        raise RuntimeError(f"the smaller network scores {slim_accuracy:.4f} on the test split, the env's masked one "
                           f"{test_accuracy:.4f}: please report this model")
    removed = dict(zip(names, env.removed_channels(), strict=True))
    record = {**dict(meta or {}), "env_id": getattr(env.spec, "id", None), "layer_sparsities": dict(layer_sparsities),
              "test_accuracy": slim_accuracy, "reward_accuracy": info["reward_accuracy"],
              "flops_reduction": info["flops_reduction"], "param_reduction": info["overall_sparsity"]}
    if "latency_reduction" in info:  # the latency budget's table: what it predicted, beside what is measured
        record["predicted_speedup"] = 1.0 / max(1.0 - info["latency_reduction"], 1e-12)
    output.mkdir(parents=True, exist_ok=True)
    checkpoint = save_slim(slim, output / "model.pt", removed, record)
    onnx_path, difference = _write_onnx(slim, env, output / "model.onnx") if onnx else (None, None)
    timings: dict[str, dict[str, dict[str, float]]] = {}
    if latency:
        dense = env.dense_architecture()
        shape = env.evaluator.sample_shape
        pairs = {place: (dense, slim, place) for place in ["cpu"] + (["cuda"] if env.device.type == "cuda" else [])}
        folded = [fold_batchnorm(model) for model in (dense.to("cpu"), slim.to("cpu"))]
        if all(model is not None for model in folded):  # as deployed: BatchNorm folded into the convolutions
            pairs["cpu, BatchNorm folded"] = (*folded, "cpu")
        with tempfile.TemporaryDirectory() as folder:
            if onnx_path is not None:  # onnxruntime folds BatchNorm itself and runs blocked kernels
                dense_onnx = export_onnx(dense.to("cpu"), _example(env), Path(folder) / "dense.onnx")
                pairs["cpu, onnxruntime"] = (OnnxRunner(dense_onnx), OnnxRunner(onnx_path), "cpu")
            for where, (dense_runner, pruned_runner, place) in pairs.items():
                measured = latency_side_by_side(dense_runner, pruned_runner, shape, rounds=latency_rounds, device=place)
                timings[where] = dict(zip(("dense", "pruned", "speedup"), measured, strict=True))
    atomic_write_json(output / "export.json", {**record, "latency_ms": timings, "torch_threads": torch.get_num_threads(),
                                               "onnx_max_difference": difference})
    return ChannelExport(checkpoint, onnx_path, slim_accuracy, info["reward_accuracy"], info["flops_reduction"],
                         info["overall_sparsity"], int(env.cost.total_params), sum(p.numel() for p in slim.parameters()),
                         difference, timings, record.get("predicted_speedup"), torch.get_num_threads())


def export_channel_task(env_id: str, output: str | Path, *, policy: str | None = None, sparsity: float | None = None,
                        recipe: str | Path | None = None, finetune_epochs: int = 0, weights: str | None = None,
                        data_dir: str | None = None, device: str = "auto", seed: int = 0, onnx: bool = True,
                        latency: bool = True) -> tuple[ChannelExport, dict[str, Any]]:
    """The ``prune-gym export`` command for a channel env id: a channel rule at ``sparsity`` (the
    share of FLOPs removed) or a recipe (``layers``: each group's share of channels removed, as
    ``prune-gym compare`` writes them), exported by :func:`export_channel_recipe` into the folder
    ``output``; with ``finetune_epochs`` the smaller network is then trained on the task's train
    split and written as ``model-finetuned.pt`` (its test accuracy in the returned record)."""
    if (recipe is None) == (policy is None):
        raise ConfigError("give a recipe (--recipe, e.g. one `prune-gym compare` wrote) or a channel rule (--policy) "
                          "with --sparsity, not both")
    if policy is not None and sparsity is None:
        raise ConfigError(f"--policy {policy} needs --sparsity (the share of FLOPs removed, e.g. 0.5)")
    if int(finetune_epochs) < 0:
        raise ConfigError(f"finetune_epochs must be >= 0, got {finetune_epochs}")
    loaded = load_recipe(recipe) if recipe is not None else None
    # A recipe from `prune-gym compare` records the env kwargs its methods shared (granularity,
    # budget, ...): the same env gives the same channel counts and the accuracy the table said.
    recorded = loaded.meta.get("env_kwargs", {}) if loaded is not None else {}
    if not isinstance(recorded, dict):
        raise ConfigError(f"{recipe}: meta.env_kwargs must be a JSON object (the env kwargs of the comparison)")
    given = {"device": device, "weights": weights, "data_dir": data_dir, "evaluate_test": True}
    kwargs: dict[str, Any] = {**recorded, **{key: value for key, value in given.items() if value is not None}}
    if loaded is not None and "bn_recalibration_batches" in loaded.meta:
        kwargs["bn_recalibration_batches"] = int(loaded.meta["bn_recalibration_batches"])
    env = gym.make(env_id, target_sparsity=sparsity if sparsity is not None else 0.5, **kwargs)
    try:
        prune_env = env.unwrapped
        shares = loaded.layers if loaded is not None else dict(zip(
            prune_env.group_names(), prune_env.allocation_sparsities(policy, sparsity), strict=True))
        meta = {"method": loaded.meta.get("method") if loaded is not None else policy, "recipe": None if recipe is None
                else str(recipe)}
        result = export_channel_recipe(prune_env, shares, output, onnx=onnx, latency=latency, meta=meta)
        extra: dict[str, Any] = {}
        if finetune_epochs:
            slim = load_slim(result.checkpoint, prune_env.task.build_model(), _example(prune_env))
            layers = find_prunable_layers(slim)
            masks = [torch.ones_like(layer.weight, dtype=torch.bool) for layer in layers]
            finetune_pruned(slim, layers, masks, prune_env.train_data, int(finetune_epochs), config=prune_env.task.recipe("finetune"),
                            device=prune_env.device, seed=seed)
            extra["finetuned_test_accuracy"] = evaluate_accuracy(slim, prune_env.test_data, prune_env.device,
                                                                 amp=prune_env.amp)
            slim = slim.to("cpu").eval()
            save_slim(slim, Path(output) / "model-finetuned.pt", dict(zip(
                prune_env.group_names(), prune_env.removed_channels(), strict=True)), {**meta, **extra})
            if onnx:  # the same architecture as model.onnx: the latency measured above holds for it
                _, extra["finetuned_onnx_max_difference"] = _write_onnx(slim, prune_env, Path(output) / "model-finetuned.onnx")
    finally:
        env.close()
    return result, extra
