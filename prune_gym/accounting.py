"""Parameter and FLOPs accounting of prunable layers: dense FLOPs per layer, and what masks remove."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prune_gym.pruning import PrunableLayer, eval_mode


def layer_flops(model: nn.Module, example_input: Tensor, layers: Sequence[PrunableLayer]) -> list[int]:
    """Dense FLOPs of each prunable layer for one forward pass of ``example_input``.

    Counted by ``torch.utils.flop_counter`` (one multiply-accumulate = 2 FLOPs); a layer called
    several times in one forward (a recurrent cell) is counted for every call. Divide by the
    batch size of ``example_input`` for per-sample figures.
    """
    from torch.utils.flop_counter import FlopCounterMode

    per_layer = dict.fromkeys((layer.name for layer in layers), 0)
    module_to_name = {id(layer.module): layer.name for layer in layers}
    handles = []
    counter = FlopCounterMode(display=False)

    # Count each layer's own ops by diffing the counter's running total around its forward.
    def pre_hook(module, _args):
        module._prune_gym_flops_before = _total_flops(counter)

    def post_hook(module, _args, _output):
        per_layer[module_to_name[id(module)]] += _total_flops(counter) - module._prune_gym_flops_before
        del module._prune_gym_flops_before

    for layer in layers:
        handles.append(layer.module.register_forward_pre_hook(pre_hook))
        handles.append(layer.module.register_forward_hook(post_hook))
    try:
        with eval_mode(model), counter, torch.inference_mode():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return [per_layer[layer.name] for layer in layers]


def _total_flops(counter) -> int:
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class Accounting:
    """Parameter and FLOPs accounting of a (possibly pruned) model."""

    total_params: int
    prunable_params: int
    remaining_params: int
    dense_flops: int
    remaining_flops: int

    @property
    def param_sparsity(self) -> float:
        """Fraction of prunable weights removed."""
        return 1.0 - (self.remaining_params - (self.total_params - self.prunable_params)) / self.prunable_params

    @property
    def flops_reduction(self) -> float:
        """Fraction of the prunable layers' FLOPs removed (unstructured: FLOPs x density)."""
        return 1.0 - self.remaining_flops / self.dense_flops if self.dense_flops else 0.0


def flops_removed(flops: Sequence[float], sparsities: Sequence[float | None]) -> float:
    """Fraction of the prunable layers' dense FLOPs removed when layer ``i`` loses the fraction
    ``sparsities[i]`` of its weights (None: not pruned), the unstructured-sparsity convention
    (a layer's FLOPs scale with its density). The env's ``flops_reduction``, and
    :attr:`Accounting.flops_reduction` of the same masks."""
    total = sum(flops)
    if not total:
        return 0.0
    return sum(f * s for f, s in zip(flops, sparsities, strict=True) if s is not None) / total


def accounting(
    model: nn.Module, layers: Sequence[PrunableLayer], masks: Sequence[Tensor], flops: Sequence[int]
) -> Accounting:
    """Parameter counts and FLOPs, dense and after pruning with ``masks``.

    ``flops`` are the dense per-layer FLOPs (``layer_flops``); a pruned layer's FLOPs are its
    dense FLOPs times its density, the unstructured-sparsity convention.
    """
    total = sum(p.numel() for p in model.parameters())
    prunable = sum(layer.numel for layer in layers)
    kept = sum(int(m.sum()) for m in masks)
    sparsities = [1.0 - int(m.sum()) / m.numel() for m in masks]
    remaining_flops = sum(flops) * (1.0 - flops_removed(flops, sparsities))
    return Accounting(
        total_params=total,
        prunable_params=prunable,
        remaining_params=total - prunable + kept,
        dense_flops=int(sum(flops)),
        remaining_flops=round(remaining_flops),
    )
