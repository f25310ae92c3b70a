"""Layer statistics -> observation features.

The observation at step *t* describes layer *t* (static features, computed once from the dense
model) and the episode so far (dynamic features). Every feature lies in [0, 1] except the
accuracy ratio, which lies in [0, 2]. ``FEATURES`` documents them in order; the env's
observation space is built from it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from prune_gym.errors import ConfigError
from prune_gym.pruning import PrunableLayer


@dataclass(frozen=True)
class Feature:
    name: str
    description: str
    high: float = 1.0


FEATURES: tuple[Feature, ...] = (
    Feature("position", "index of the layer in forward order / (layers - 1)"),
    Feature("is_conv", "1 for a dense convolution"),
    Feature("is_depthwise", "1 for a depthwise convolution (groups == in_channels > 1)"),
    Feature("is_linear", "1 for a Linear layer"),
    Feature("log_size", "log(weights in the layer) / log(weights in the largest layer)"),
    Feature("param_share", "weights in the layer / all prunable weights"),
    Feature("flops_share", "dense FLOPs of the layer / dense FLOPs of all prunable layers"),
    Feature("in_channels", "input channels (features) / the largest over layers"),
    Feature("out_channels", "output channels (features) / the largest over layers"),
    Feature("kernel_size", "kernel area (1 for Linear) / the largest over layers"),
    Feature("stride", "1 if the layer downsamples (stride > 1), else 0"),
    Feature("weight_mean_abs", "mean absolute weight of the dense layer / the largest over layers"),
    Feature("weight_std", "std of w of the dense layer / the largest over layers"),
    Feature("global_mp_sparsity", "sparsity Global MP gives this layer at the target (at 0.5 with no target)"),
    Feature("reference_sparsity", "the reference allocation's sparsity for the layer (Global MP's by default) with the budget earlier layers left spread (the relative centre action)"),
    Feature("sparsity_so_far", "overall sparsity of all prunable weights before this step"),
    Feature("budget_left", "sparsity the remaining layers (this one included) need on average to reach the target; 0 with no target"),
    Feature("accuracy_ratio", "reward-split accuracy after the previous step / dense accuracy (clipped to [0, 2])", 2.0),
    Feature("previous_sparsity", "sparsity applied to the previous layer (0 at the first step)"),
    Feature("target_sparsity", "the episode's target sparsity (0 with no target)"),
    Feature("flops_reduction_so_far", "fraction of the prunable layers' FLOPs removed so far"),
)

FEATURE_INDEX = {feature.name: index for index, feature in enumerate(FEATURES)}
NUM_STATIC = FEATURE_INDEX["global_mp_sparsity"]  # features before it never change


def observation_bounds() -> tuple[np.ndarray, np.ndarray]:
    low = np.zeros(len(FEATURES), dtype=np.float32)
    high = np.array([feature.high for feature in FEATURES], dtype=np.float32)
    return low, high


def static_features(layers: Sequence[PrunableLayer], dense: Sequence[Tensor], flops: Sequence[int]) -> np.ndarray:
    """The static part of every layer's observation, shape ``(layers, NUM_STATIC)``."""
    count = len(layers)
    sizes = np.array([w.numel() for w in dense], dtype=np.float64)
    flops_arr = np.array(flops, dtype=np.float64)
    in_ch, out_ch, kernel, strides, means, stds = [], [], [], [], [], []
    for layer, weight in zip(layers, dense):
        module = layer.module
        if layer.kind == "linear":
            in_ch.append(module.in_features)
            out_ch.append(module.out_features)
            kernel.append(1)
            strides.append(1)
        else:
            in_ch.append(module.in_channels)
            out_ch.append(module.out_channels)
            kernel.append(math.prod(module.kernel_size))
            strides.append(max(module.stride))
        magnitude = weight.detach().float().abs()
        means.append(float(magnitude.mean()))
        stds.append(float(weight.detach().float().std()) if weight.numel() > 1 else 0.0)

    def scaled(values: list[float]) -> np.ndarray:
        arr = np.asarray(values, dtype=np.float64)
        top = arr.max()
        return arr / top if top > 0 else np.zeros_like(arr)

    kinds = [layer.kind for layer in layers]
    largest = sizes.max()
    columns = {
        "position": np.arange(count) / max(count - 1, 1),
        "is_conv": [kind == "conv" for kind in kinds],
        "is_depthwise": [kind == "depthwise" for kind in kinds],
        "is_linear": [kind == "linear" for kind in kinds],
        "log_size": np.log(sizes) / np.log(largest) if largest > 1 else 1.0,
        "param_share": sizes / sizes.sum(),
        "flops_share": flops_arr / flops_arr.sum() if flops_arr.sum() > 0 else 0.0,
        "in_channels": scaled(in_ch),
        "out_channels": scaled(out_ch),
        "kernel_size": scaled(kernel),
        "stride": [stride > 1 for stride in strides],
        "weight_mean_abs": scaled(means),
        "weight_std": scaled(stds),
    }
    table = np.zeros((count, NUM_STATIC), dtype=np.float64)
    for name, values in columns.items():
        table[:, FEATURE_INDEX[name]] = values
    return np.clip(table, 0.0, 1.0).astype(np.float32)


def observation(static: np.ndarray, **dynamic: float) -> np.ndarray:
    """One observation: a layer's row of :func:`static_features` and the dynamic features by
    name (each clipped to its bounds; a dynamic feature not given is 0)."""
    unknown = sorted(set(dynamic) - {feature.name for feature in FEATURES[NUM_STATIC:]})
    if unknown:
        raise ConfigError(f"unknown dynamic features {unknown}: see prune_gym.stats.FEATURES")
    values = np.zeros(len(FEATURES), dtype=np.float32)
    values[:NUM_STATIC] = static
    for name, value in dynamic.items():
        values[FEATURE_INDEX[name]] = np.clip(value, 0.0, FEATURES[FEATURE_INDEX[name]].high)
    return values


def layer_index_from_observation(observation: np.ndarray, num_layers: int) -> np.ndarray:
    """Recover the layer index from the ``position`` feature (works on batches of observations)."""
    position = np.asarray(observation)[..., FEATURE_INDEX["position"]]
    return np.rint(position * max(num_layers - 1, 1)).astype(np.int64)
