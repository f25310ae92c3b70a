"""The pruning engine: prunable-layer discovery, masks, magnitude pruning and accounting.

Conventions, as in ``torch.nn.utils.prune``: a mask is a boolean tensor of the weight's shape
with ``True`` for a weight that is *kept*; masks are kept apart from the weights, and applying
one is an in-place multiply on the weight's device. Every Conv (1d/2d/3d, depthwise included)
and Linear weight is prunable; biases and normalisation layers never are.

Exact counts: pruning to sparsity ``s`` removes exactly ``round(s * n)`` weights, the smallest
by magnitude; among weights of equal magnitude at the threshold, those with the lower flat
index go first, so the result never depends on the backend's sort.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from prune_gym.errors import ConfigError
from prune_gym.selection import remove_smallest, remove_smallest_in_parts

LayerKind = Literal["conv", "depthwise", "linear"]

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

#: Minimum Threshold default of the Global MP paper: every layer keeps at least 0.05% of all
#: prunable weights of the network.
DEFAULT_MIN_THRESHOLD = 0.0005


@dataclass(frozen=True, eq=False)
class PrunableLayer:
    """One prunable weight: the module that owns it and its qualified name in the model."""

    name: str
    module: nn.Module

    @property
    def weight(self) -> Tensor:
        return self.module.weight

    @property
    def numel(self) -> int:
        return self.module.weight.numel()

    @property
    def kind(self) -> LayerKind:
        module = self.module
        if isinstance(module, nn.Linear):
            return "linear"
        groups = getattr(module, "groups", 1)
        if groups > 1 and groups == module.in_channels:
            return "depthwise"
        return "conv"


def _name_patterns(exclude_names: Iterable[str] | str | None) -> list[str]:
    """The exclude patterns as a list: a single string is one pattern, not a sequence of
    one-letter patterns; None excludes nothing."""
    if exclude_names is None:
        return []
    if not isinstance(exclude_names, str | Iterable):
        raise ConfigError(f"exclude_names (exclude_layers) must be name patterns, e.g. ['fc', 'layer4.*'], got {exclude_names!r}")
    patterns = [exclude_names] if isinstance(exclude_names, str) else list(exclude_names)
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise ConfigError(f"exclude_names must be name patterns (strings), got {pattern!r}")
    return patterns


def _refuse_tied_weights(layers: Sequence[PrunableLayer]) -> None:
    """ConfigError if two layers share one weight tensor: pruning one would rewrite the other."""
    owners: dict[int, str] = {}
    for layer in layers:
        other = owners.setdefault(id(layer.module.weight), layer.name)
        if other != layer.name:
            raise ConfigError(
                f"layers {other!r} and {layer.name!r} share one weight tensor (tied weights): pruning "
                f"one would rewrite the other. Exclude one of them (exclude_layers=[{layer.name!r}]) "
                f"to prune the shared tensor once"
            )


def find_prunable_layers(
    model: nn.Module,
    example_input: Tensor | None = None,
    exclude_names: Iterable[str] = (),
    exclude_types: Iterable[type[nn.Module]] = (),
) -> list[PrunableLayer]:
    """Return the prunable layers of ``model`` in forward order.

    Args:
        model: any module; every Conv1d/2d/3d and Linear submodule is a candidate.
        example_input: if given, one forward pass records the order in which layers are first
            called (needed when a model's ``forward`` uses its modules in another order than it
            registers them). Otherwise registration order is used, which is forward order for
            ``nn.Sequential`` models, torchvision classifiers and every model of this package.
        exclude_names: shell-style patterns (``fnmatch``) of qualified module names to skip,
            e.g. ``["fc", "layer4.*"]``.
        exclude_types: module types to skip, e.g. ``[nn.Linear]``.

    Raises:
        ValueError: if no prunable layer remains, if an ``exclude_names`` pattern matches no
            prunable layer (a typo would silently exclude nothing), or if two layers share one
            weight tensor (tied weights: pruning one would rewrite the other).
    """
    patterns = _name_patterns(exclude_names)
    skip_types = tuple(exclude_types)
    candidates = [(name, module) for name, module in model.named_modules() if isinstance(module, PRUNABLE_TYPES)]
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(name, p) for name, _ in candidates)]
    if unmatched:
        raise ConfigError(
            f"exclude pattern(s) {unmatched} match no prunable layer; the prunable layers are "
            f"{[name for name, _ in candidates]} (patterns are fnmatch-style, e.g. 'fc' or 'layer4.*')"
        )
    layers = [
        PrunableLayer(name, module)
        for name, module in candidates
        if not (skip_types and isinstance(module, skip_types))
        and not any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
    ]
    _refuse_tied_weights(layers)
    if not layers:
        raise ConfigError(
            f"{type(model).__name__} has no prunable layer (Conv1d/Conv2d/Conv3d/Linear)"
            + (f" left after excluding names {patterns} and types {skip_types}" if patterns or skip_types else "")
            + ": pass a model that has one, or exclude fewer layers."
        )
    if example_input is not None:
        layers = _in_forward_order(model, layers, example_input)
    return layers


def _in_forward_order(model: nn.Module, layers: list[PrunableLayer], example_input: Tensor) -> list[PrunableLayer]:
    first_call = first_calls(model, layers, example_input)
    # Layers never called in forward keep their registration order, after the called ones.
    return sorted(layers, key=lambda layer: first_call.get(layer.name, len(layers) + layers.index(layer)))


def first_calls(model: nn.Module, layers: Sequence[PrunableLayer], example_input: Tensor) -> dict[str, int]:
    """The position of each layer's first call in one forward pass of ``example_input``; layers
    never called as modules (an attention layer's ``out_proj``, whose weight the attention
    function reads) are missing."""
    first_call: dict[str, int] = {}
    handles = []
    for layer in layers:
        def hook(_module, _args, _output, name=layer.name):
            first_call.setdefault(name, len(first_call))
        handles.append(layer.module.register_forward_hook(hook))
    try:
        with eval_mode(model), torch.inference_mode():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return first_call


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run bookkeeping forward passes in eval mode, then restore every module's mode.

    In train mode such a pass would update BatchNorm running statistics (changing the model
    that is about to be pruned) and fail on a batch of one sample.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


# --------------------------------------------------------------------------------------------
# Validation


def check_sparsity(sparsity: float, name: str = "sparsity") -> float:
    """Return ``sparsity`` as a float, or raise ValueError unless it is a number in [0, 1)."""
    if isinstance(sparsity, bool):  # False would pass as 0.0: a typo for None, not a target
        raise ConfigError(f"{name} must be a number in [0, 1), got {sparsity!r}")
    try:
        value = float(sparsity)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number in [0, 1), got {sparsity!r}") from None
    if not (0.0 <= value < 1.0):  # also rejects NaN
        raise ConfigError(
            f"{name} must be in [0, 1) (1.0 would empty a layer), got {sparsity!r}"
        )
    return value


def check_finite(weight: Tensor, name: str) -> None:
    """Raise ValueError if ``weight`` holds NaN or inf: magnitudes would be meaningless."""
    # A NaN or inf anywhere makes the sum non-finite, so a finite sum proves the weights finite
    # in one pass without a boolean tensor; only a non-finite sum (which huge finite weights
    # could also give) needs the element-wise check.
    if not math.isfinite(float(weight.detach().sum())) and not torch.isfinite(weight).all():
        raise ConfigError(
            f"layer {name!r} has NaN or inf weights: load a trained, finite checkpoint before pruning."
        )


def check_mask(mask: Tensor, weight: Tensor, name: str) -> Tensor:
    """Return ``mask`` as a bool tensor on ``weight``'s device, or raise a ValueError naming the layer."""
    if not isinstance(mask, Tensor):
        raise ConfigError(f"mask for layer {name!r} must be a tensor, got {type(mask).__name__}")
    if mask.shape != weight.shape:
        raise ConfigError(
            f"mask for layer {name!r} has shape {tuple(mask.shape)}, but the weight has shape "
            f"{tuple(weight.shape)}"
        )
    return mask.to(device=weight.device, dtype=torch.bool)


# --------------------------------------------------------------------------------------------
# Masks


def magnitude_mask(weight: Tensor, sparsity: float) -> Tensor:
    """Mask removing exactly ``round(sparsity * weight.numel())`` smallest-magnitude weights."""
    sparsity = check_sparsity(sparsity)
    check_finite(weight, "weight")
    count = round(sparsity * weight.numel())
    keep = remove_smallest(weight.detach().abs().flatten().float(), count)
    return keep.view_as(weight)


def keep_top_mask(weight: Tensor, keep: int) -> Tensor:
    """Mask keeping exactly the ``keep`` largest-magnitude weights (ties as in magnitude_mask)."""
    flat = weight.detach().abs().flatten().float()
    return remove_smallest(flat, flat.numel() - keep).view_as(weight)


def _remove_smallest_per_layer(weights: Sequence[Tensor], count: int) -> list[Tensor]:
    """Keep-masks (one per weight, its shape) removing the ``count`` smallest magnitudes overall."""
    scores = [w.detach().abs().flatten().float() for w in weights]
    return [keep.view_as(w) for keep, w in zip(remove_smallest_in_parts(scores, count), weights)]


def minimum_keep(weights: Sequence[Tensor], min_threshold: float) -> int:
    """Number of weights every layer keeps under Minimum Threshold ``min_threshold``.

    ``min_threshold`` is a fraction of all prunable weights of the network (0.0005 = 0.05%, the
    paper's default); as in the official code the count is rounded down.
    """
    if not (0.0 <= float(min_threshold) < 1.0):
        raise ConfigError(f"min_threshold must be a fraction in [0, 1), got {min_threshold!r}")
    return int(float(min_threshold) * sum(w.numel() for w in weights))


def minimum_threshold_sparsities(
    numels: Sequence[int], global_sparsities: Sequence[float], sparsity: float, minimum: int,
    max_rounds: int = 10_000,
) -> list[float]:
    """Minimum Threshold as the official Global MP code does it (``prune_withMT.py``, step 2).

    1. Layers with no more weights than ``minimum`` stay dense.
    2. Every other layer's Global MP sparsity is rescaled by ``sparsity / overall``, so the
       overall sparsity is the target.
    3. Layers now left with fewer than ``minimum`` weights are set to keep exactly ``minimum``
       (sparsity ``1 - minimum / n``); while that leaves the overall sparsity under the target,
       rescale and clamp again.

    The official loop repeats until the float sum reaches the target, which it approaches
    geometrically; here it stops when it is within 1e-12 (or after ``max_rounds``), and the
    integer counts are fixed by :func:`sparsities_to_counts`.

    Raises:
        ValueError: if the target is unreachable with every layer keeping ``minimum`` weights.
    """
    numels = [int(n) for n in numels]
    total = sum(numels)
    floors = [min(n, minimum) for n in numels]
    if sum(floors) > total - round(sparsity * total):
        reachable = 1.0 - sum(floors) / total
        raise ConfigError(
            f"target sparsity {sparsity} is unreachable with a Minimum Threshold of {minimum} weights per "
            f"layer: at most {reachable:.4f} sparsity is possible. Lower the target or the min_threshold."
        )
    small = [n <= minimum for n in numels]
    values = [0.0 if is_small else float(s) for s, is_small in zip(global_sparsities, small)]

    def overall(values: list[float]) -> float:
        return sum(n * s for n, s in zip(numels, values)) / total

    def clamp(values: list[float]) -> list[float]:
        return [
            1.0 - minimum / n if not is_small and (1.0 - s) * n < minimum else s
            for s, n, is_small in zip(values, numels, small)
        ]

    current = overall(values)
    if current <= 0.0:
        return values
    values = clamp([s * sparsity / current for s in values])
    for _ in range(max_rounds):
        current = overall(values)
        if current >= sparsity - 1e-12:
            break
        values = clamp([s * sparsity / current for s in values])
    return values


def sparsities_to_counts(numels: Sequence[int], sparsities: Sequence[float], sparsity: float,
                         keep_at_least: Sequence[int] | None = None) -> list[int]:
    """Per-layer counts of weights to remove that sum to exactly ``round(sparsity * N)``.

    Each layer gets ``floor(s * n)``; the weights still missing go, one each, to the layers with
    the largest remainders (largest-remainder rounding), never below ``keep_at_least``.
    """
    numels = [int(n) for n in numels]
    caps = [n - (keep_at_least[i] if keep_at_least is not None else 0) for i, n in enumerate(numels)]
    counts = [min(int(math.floor(s * n)), cap) for s, n, cap in zip(sparsities, numels, caps)]
    missing = round(sparsity * sum(numels)) - sum(counts)
    order = sorted(range(len(numels)), key=lambda i: (-(sparsities[i] * numels[i] - counts[i]), i))
    while missing > 0:
        progressed = False
        for i in order:
            if missing == 0:
                break
            if counts[i] < caps[i]:
                counts[i] += 1
                missing -= 1
                progressed = True
        if not progressed:
            raise ConfigError("the per-layer caps leave too few weights to reach the target sparsity")
    while missing < 0:
        for i in reversed(order):
            if missing == 0:
                break
            if counts[i] > 0:
                counts[i] -= 1
                missing += 1
    return counts


def global_magnitude_masks(
    weights: Sequence[Tensor], sparsity: float, min_threshold: float | None = None
) -> list[Tensor]:
    """Global Magnitude Pruning: one magnitude threshold for all ``weights`` together.

    Removes exactly ``round(sparsity * N)`` weights of the ``N`` in all layers, the smallest by
    magnitude across the whole network (as ``torch.nn.utils.prune.global_unstructured`` with
    ``L1Unstructured`` does).

    With ``min_threshold=m`` (Minimum Threshold, Gupta et al. 2022, a fraction of all prunable
    weights: 0.0005 is the paper's 0.05%), the per-layer sparsities are those of the official
    procedure (:func:`minimum_threshold_sparsities`): every layer keeps at least ``int(m * N)``
    weights (all of them if it has no more), the others share the rest in proportion to their
    Global MP sparsities. Each layer is then magnitude-pruned to its count, and the counts sum
    to exactly ``round(sparsity * N)``.

    Raises:
        ValueError: for a sparsity outside [0, 1), NaN/inf weights, or a target that the
            minimum makes unreachable (the message gives the highest reachable sparsity).
    """
    sparsity = check_sparsity(sparsity)
    if not weights:
        raise ConfigError("global_magnitude_masks needs at least one weight tensor")
    for index, weight in enumerate(weights):
        check_finite(weight, f"#{index}")
    total = sum(w.numel() for w in weights)
    to_remove = round(sparsity * total)
    global_masks = _remove_smallest_per_layer(weights, to_remove)
    if not min_threshold:
        return global_masks
    minimum = minimum_keep(weights, min_threshold)
    numels = [w.numel() for w in weights]
    sparsities = minimum_threshold_sparsities(numels, [mask_sparsity(m) for m in global_masks], sparsity, minimum)
    counts = sparsities_to_counts(numels, sparsities, sparsity, keep_at_least=[min(n, minimum) for n in numels])
    return [keep_top_mask(w, n - count) for w, n, count in zip(weights, numels, counts)]


def uniform_magnitude_masks(weights: Sequence[Tensor], sparsity: float) -> list[Tensor]:
    """Magnitude pruning at the same sparsity in every layer (a baseline)."""
    return [magnitude_mask(w, sparsity) for w in weights]


def random_masks(
    weights: Sequence[Tensor], sparsity: float, generator: torch.Generator | None = None
) -> list[Tensor]:
    """Random pruning: exactly ``round(sparsity * n)`` weights of each layer, chosen at random."""
    sparsity = check_sparsity(sparsity)
    masks = []
    for w in weights:
        scores = torch.rand(w.numel(), generator=generator).to(w.device)
        masks.append(remove_smallest(scores, round(sparsity * w.numel())).view_as(w))
    return masks


def mask_sparsity(mask: Tensor) -> float:
    """Fraction of weights a mask removes."""
    return 1.0 - int(mask.sum()) / mask.numel()


def overall_sparsity(masks: Sequence[Tensor]) -> float:
    """Fraction of all the masks' weights removed (nan for no weights)."""
    total = sum(m.numel() for m in masks)
    return sum(m.numel() - int(m.sum()) for m in masks) / total if total else math.nan


def global_magnitude_sparsities(
    weights: Sequence[Tensor], sparsity: float, min_threshold: float | None = None
) -> list[float]:
    """Per-layer sparsities that Global MP (optionally with Minimum Threshold) gives ``weights``."""
    return [mask_sparsity(m) for m in global_magnitude_masks(weights, sparsity, min_threshold)]


# --------------------------------------------------------------------------------------------
# Masked model state


class PruningState:
    """The prunable layers of a model, a device copy of their dense weights, and their masks.

    All pruning is done in place on the weights' device: a layer's weight is always
    ``dense * mask``, so pruning a layer again starts from its dense weights, and ``restore()``
    puts every weight back bit for bit. Build it after moving the model to its device.
    """

    def __init__(self, model: nn.Module, layers: Sequence[PrunableLayer] | None = None) -> None:
        self.model = model
        self.layers: list[PrunableLayer] = list(layers) if layers is not None else find_prunable_layers(model)
        if not self.layers:
            raise ConfigError("PruningState needs at least one prunable layer, got layers=[]")
        for layer in self.layers:
            check_finite(layer.weight, layer.name)
        self.dense: list[Tensor] = [layer.weight.detach().clone() for layer in self.layers]
        self.masks: list[Tensor] = [torch.ones_like(w, dtype=torch.bool) for w in self.dense]
        self.index = {layer.name: i for i, layer in enumerate(self.layers)}

    @property
    def numels(self) -> list[int]:
        return [w.numel() for w in self.dense]

    @property
    def total(self) -> int:
        return sum(self.numels)

    @torch.no_grad()
    def set_mask(self, i: int, mask: Tensor) -> None:
        """Prune layer ``i`` with ``mask`` (validated before anything changes)."""
        mask = check_mask(mask, self.dense[i], self.layers[i].name)
        torch.mul(self.dense[i], mask, out=self.layers[i].weight.data)
        # Copy into the state's own buffer: restore() clears masks in place, which must never
        # reach a mask the caller still holds (e.g. cached Global MP masks).
        self.masks[i].copy_(mask)

    @torch.no_grad()
    def prune_current(self, i: int, mask: Tensor) -> None:
        """Prune layer ``i``'s *current* weights with ``mask`` (for weights retrained since the
        dense copy was taken); ``restore()`` still returns to the dense weights."""
        mask = check_mask(mask, self.dense[i], self.layers[i].name)
        self.layers[i].weight.data.mul_(mask)
        self.masks[i].copy_(mask)

    def set_masks(self, masks: Sequence[Tensor]) -> None:
        """Prune every layer; all masks are validated before any weight changes."""
        if len(masks) != len(self.layers):
            raise ConfigError(f"expected {len(self.layers)} masks (one per prunable layer), got {len(masks)}")
        checked = [check_mask(m, w, layer.name) for m, w, layer in zip(masks, self.dense, self.layers)]
        for i, mask in enumerate(checked):
            self.set_mask(i, mask)

    def prune_layer(self, i: int, sparsity: float) -> Tensor:
        """Magnitude-prune layer ``i`` (from its dense weights) to exactly ``sparsity``."""
        mask = magnitude_mask(self.dense[i], sparsity)
        self.set_mask(i, mask)
        return mask

    @torch.no_grad()
    def restore(self) -> None:
        """Put the dense weights back, bit for bit, and clear every mask."""
        for layer, dense, mask in zip(self.layers, self.dense, self.masks):
            layer.weight.data.copy_(dense)
            mask.fill_(True)

    def sparsities(self) -> list[float]:
        return [mask_sparsity(m) for m in self.masks]

    def pruned_count(self) -> int:
        return sum(m.numel() - int(m.sum()) for m in self.masks)

    def overall_sparsity(self) -> float:
        """Fraction of all prunable weights removed."""
        return self.pruned_count() / self.total
