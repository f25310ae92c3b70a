"""Channel pruning: coupled channel groups (Torch-Pruning's dependency graph), channel masks
that stand in for removing channels, exact FLOPs and parameter accounting, and the physically
smaller model.

A *channel group* is what must be removed together: a layer's output channels with the
BatchNorm that normalises them, the next layers' input channels, and, across residual
additions, every layer writing to the same sum (Torch-Pruning's ``DependencyGraph`` finds them,
depthwise convolutions and concatenations included). Groups that reach a grouped (not
depthwise) convolution, ResNeXt's, keep their channels. A group's *root* is the layer
Torch-Pruning names it by; its *channels* are the root's output channels.

Within an episode a removed channel is *masked*: every layer producing it (convolution or
Linear rows, their bias, the BatchNorm's scale and shift) is zeroed, so the channel carries
exactly 0 everywhere and the layers reading it get nothing from it: the masked network computes
what the network with those channels removed computes (:func:`check_masks_match_slim` checks it
on the model at hand, and refuses a model where it does not hold). A group whose channels reach
a layer a mask cannot zero (a LayerNorm or GroupNorm normalising across them, an attention
layer, a bare parameter such as a position embedding or a layer scale) keeps its channels, and
a warning names it: the residual streams of ViT and ConvNeXt, whose MLP channels still prune.
:func:`slim_copy` removes the channels for real (Torch-Pruning), for export.

Which channels go: the least important first, by the group's L2 norm over all its layers
(Torch-Pruning's ``GroupMagnitudeImportance(p=2)``), computed once on the dense weights.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch_pruning as tp
from torch import Tensor, nn

from prune_gym.accounting import layer_flops
from prune_gym.errors import ConfigError
from prune_gym.pruning import PrunableLayer, find_prunable_layers, first_calls

if TYPE_CHECKING:
    from prune_gym.latency import LatencyTable

__all__ = [
    "ChannelCost",
    "allowed_counts",
    "check_multiple",
    "ChannelGroup",
    "ChannelMasks",
    "check_masks_match_slim",
    "find_channel_groups",
    "is_depthwise",
    "is_grouped",
    "slim_copy",
]

#: Module types whose output-channel parameters a mask zeroes (dimension 0 of weight and bias).
_MASKABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.modules.batchnorm._BatchNorm)


def _maskable(module: nn.Module) -> bool:
    """Whether zeroing dimension 0 of the module's weight and bias removes an output channel."""
    return isinstance(module, _MASKABLE) and not isinstance(module, nn.modules.conv._ConvTransposeNd)


def _has_parameters(module: object) -> bool:
    """A module with parameters of its own (not an operation such as ReLU, add or flatten)."""
    return isinstance(module, nn.Module) and any(True for _ in module.parameters(recurse=False))


def _side(item: Any) -> str:
    """Whether an item of a Torch-Pruning group (its ``GroupItem``: a dependency and indices) removes
    the module's outputs or its inputs."""
    return "out" if item.dep.handler.__func__.__name__ == "prune_out_channels" else "in"


@dataclass(frozen=True)
class ChannelSlice:
    """Where a group's channels sit in one layer: along its outputs or its inputs.

    ``positions[k]`` is a position along that dimension and ``roots[k]`` the group channel it
    belongs to (a channel maps to several positions after a flatten, to shifted ones after a
    concatenation)."""

    module: str
    side: str  # "out" or "in"
    positions: tuple[int, ...]
    roots: tuple[int, ...]


@dataclass(frozen=True)
class ChannelGroup:
    """Channels removed together: the root layer's name, its channel count, and every slice."""

    name: str
    channels: int
    slices: tuple[ChannelSlice, ...]

    def modules(self, side: str) -> list[str]:
        return sorted({s.module for s in self.slices if s.side == side})


def is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d) and module.groups > 1 and module.groups == module.in_channels


def is_grouped(module: nn.Module) -> bool:
    """A convolution with groups that is not depthwise (each group sees several input channels)."""
    return isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d) and module.groups > 1 and not is_depthwise(module)


def build_graph(model: nn.Module, example_input: Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model`` (traced on ``example_input``)."""
    try:
        with torch.inference_mode(False), torch.enable_grad():  # the graph is traced through autograd
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)
    except Exception as error:  # a trace failure inside Torch-Pruning: say what could not be traced
        raise ConfigError(
            f"Torch-Pruning could not trace the model ({type(error).__name__}: {error}); channel pruning needs a "
            "model whose forward Torch-Pruning's DependencyGraph can follow"
        ) from error


def find_channel_groups(
    model: nn.Module, example_input: Tensor, exclude_names: Iterable[str] = (),
) -> tuple[list[ChannelGroup], list[Tensor]]:
    """The channel groups of ``model`` in forward order (of their first producing layer) and the
    importance of each group's channels (``GroupMagnitudeImportance(p=2)``: the L2 norm over
    every layer of the group, divided by the group's mean so that groups compare).

    The output layer (the last Conv / Linear called) keeps its outputs: they are the classes.
    ``exclude_names`` (shell patterns) keeps the output channels of the matching layers too, and
    so do the groups a mask cannot remove (:func:`_unmaskable`; a ``UserWarning`` names them;
    excluding their roots says so and silences it).
    """
    layers = find_prunable_layers(model)
    if not layers:
        raise ConfigError("the model has no Conv or Linear layer: there are no channels to prune")
    # find_prunable_layers checks the patterns (one that matches nothing is an error).
    kept = {layer.name for layer in find_prunable_layers(model, exclude_names=exclude_names)}
    names = {module: name for name, module in model.named_modules()}
    order = first_calls(model, layers, example_input)
    if not order:
        raise ConfigError("no Conv or Linear layer of the model is called as a module in its forward pass: there are "
                          "no channels to prune that the env can follow")
    # The output layer is the last one called (an attention layer's out_proj, never called as a
    # module, comes after it in registration order).
    output = max(order, key=order.__getitem__)
    ignored = [layer.module for layer in layers if layer.name == output or layer.name not in kept]
    graph = build_graph(model, example_input)
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    found: list[tuple[int, ChannelGroup, Tensor]] = []
    kept_whole: list[str] = []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
        root = names[group[0].dep.target.module]
        reason = _unmaskable(group, names)
        if reason is not None:
            kept_whole.append(f"{root!r} ({reason})")
            continue
        slices = []
        for item in group:
            module = item.dep.target.module
            if not _has_parameters(module):
                continue  # an operation without parameters (ReLU, add, flatten)
            slices.append(ChannelSlice(names[module], _side(item), tuple(int(i) for i in item.idxs),
                                       tuple(int(r) for r in item.root_idxs)))
        channels = len(group[0].idxs)
        if channels < 2:
            continue  # one channel: removing it would empty the layer
        if any(is_grouped(model.get_submodule(piece.module)) for piece in slices):
            # A grouped convolution (ResNeXt's) keeps its groups' sizes equal: its channels stay.
            continue
        producers = [s.module for s in slices if s.side == "out" and s.module in order]
        first = min((order[name] for name in producers), default=len(layers))  # never called: last
        found.append((first, ChannelGroup(root, channels, tuple(slices)), importance(group).detach().float().cpu()))
    if kept_whole:
        warnings.warn(
            f"{len(kept_whole)} channel group(s) keep their channels: a mask cannot stand in for removing them "
            f"({', '.join(kept_whole[:5])}{', ...' if len(kept_whole) > 5 else ''}); pass their roots in "
            "exclude_layers=[...] to say so and silence this", stacklevel=2,
        )
    if not found:
        raise ConfigError(
            "the model has no channel group to prune (every Conv / Linear is excluded or the output layer"
            + (f"; kept whole, as masks cannot stand in for removing them: {', '.join(kept_whole)}" if kept_whole else "")
            + "): prune weights instead"
        )
    found.sort(key=lambda entry: entry[0])
    return [group for _, group, _ in found], [scores for _, _, scores in found]


def _unmaskable(group: tp.Group, names: dict) -> str | None:
    """Why a mask cannot stand in for removing this group's channels, or None when it can: a
    layer with parameters other than Conv / Linear / BatchNorm loses channels (a LayerNorm or
    GroupNorm normalises across them, an attention layer mixes them), or a bare parameter (a
    position embedding, a layer scale) does."""
    for item in group:
        module = item.dep.target.module
        if isinstance(module, nn.Parameter):
            return f"reaches a bare parameter of shape {tuple(module.shape)}"
        if not _has_parameters(module) or _side(item) != "out":
            continue  # an operation, or a layer reading the channels: a zero input is no input
        if not _maskable(module):
            return f"reaches {names.get(module, '?')!r}, a {type(module).__name__}"
    return None


def check_multiple(multiple: object) -> int:
    """``channel_multiple`` as an int, or ConfigError."""
    if isinstance(multiple, bool) or not isinstance(multiple, int | np.integer) or multiple < 1:
        raise ConfigError(f"channel_multiple must be a whole number >= 1 (the kept channels' multiple), got {multiple!r}")
    return int(multiple)


def allowed_counts(channels: int, max_sparsity: float, multiple: int = 1) -> np.ndarray:
    """The removed-channel counts a group of ``channels`` allows, ascending: 0 (the group as it
    is) and every count up to ``max_sparsity`` of it that keeps a multiple of ``multiple``
    channels (at least one multiple; at least one channel)."""
    cap = min(int(max_sparsity * channels), channels - 1)
    counts = [n for n in range(1, cap + 1) if (channels - n) % multiple == 0 and channels - n >= multiple]
    return np.array([0, *counts], dtype=np.int64)


class ChannelMasks:
    """The removed channels of each group, applied as masks on the model's parameters in place.

    Keeps a device copy of every parameter a mask touches, so a group's channels can be set
    again from the dense values and :meth:`restore` puts the dense model back bit for bit.
    Channels leave in the order of ``importance`` (the least important first; ties by index).
    """

    def __init__(self, model: nn.Module, groups: Sequence[ChannelGroup], importance: Sequence[Tensor]) -> None:
        self.groups = list(groups)
        self.order = [torch.argsort(scores, stable=True) for scores in importance]
        self.removed = [0] * len(self.groups)
        # Per group: (parameter, dense copy, positions, roots) for every output slice.
        self._targets: list[list[tuple[Tensor, Tensor, Tensor, Tensor]]] = []
        for group in self.groups:
            targets = []
            for piece in group.slices:
                if piece.side != "out":
                    continue
                module = model.get_submodule(piece.module)
                if not _maskable(module):
                    raise ConfigError(
                        f"layer {piece.module!r} ({type(module).__name__}) loses channels with the group rooted at "
                        f"{group.name!r}, and a mask cannot stand in for removing them (supported: Conv, Linear, "
                        "BatchNorm); exclude the group's root layer (exclude_layers=...) or prune weights instead"
                    )
                for param in (module.weight, getattr(module, "bias", None)):
                    if param is None:
                        continue
                    device = param.device
                    targets.append((param, param.detach().clone(), torch.tensor(piece.positions, device=device),
                                    torch.tensor(piece.roots, device=device)))
            self._targets.append(targets)

    def channels_to_remove(self, index: int, count: int) -> Tensor:
        """The ``count`` least important channels of group ``index``."""
        return self.order[index][:count]

    @torch.no_grad()
    def set_removed(self, index: int, count: int) -> None:
        """Remove the ``count`` least important channels of group ``index`` (from the dense values)."""
        group = self.groups[index]
        if not 0 <= count < group.channels:
            raise ConfigError(f"group {group.name!r} has {group.channels} channels: remove 0 to {group.channels - 1}, not {count}")
        removed = torch.zeros(group.channels, dtype=torch.bool)
        removed[self.channels_to_remove(index, count)] = True
        for param, dense, positions, roots in self._targets[index]:
            # Only this group's positions: a BatchNorm after a concatenation (DenseNet) holds the
            # channels of several groups, and another group's removed channels stay removed.
            param.data.index_copy_(0, positions, dense.index_select(0, positions))
            hit = positions[removed.to(roots.device)[roots]]
            if len(hit):
                param.data.index_fill_(0, hit, 0.0)
        self.removed[index] = count

    def set_all(self, counts: Sequence[int]) -> None:
        if len(counts) != len(self.groups):
            raise ConfigError(f"expected {len(self.groups)} channel counts (one per group), got {len(counts)}")
        for index, count in enumerate(counts):
            self.set_removed(index, int(count))

    def restore(self) -> None:
        """Every channel back: the dense parameters, bit for bit."""
        self.set_all([0] * len(self.groups))

    def removed_channels(self) -> list[list[int]]:
        """The removed channel indices of each group (what :func:`slim_copy` removes)."""
        return [sorted(int(c) for c in self.channels_to_remove(i, n)) for i, n in enumerate(self.removed)]


class ChannelCost:
    """FLOPs and parameters of the network with ``n_g`` channels removed from each group ``g``,
    exact and cheap (numpy, no forward pass): each Conv / Linear costs its dense FLOPs times the
    share of its inputs and of its outputs kept (a depthwise convolution: of its outputs), each
    BatchNorm its affine parameters kept.
    """

    def __init__(self, model: nn.Module, groups: Sequence[ChannelGroup], layers: Sequence[PrunableLayer],
                 example_input: Tensor) -> None:
        self.channels = np.array([group.channels for group in groups], dtype=np.int64)
        flops = layer_flops(model, example_input, layers)
        index = {layer.name: i for i, layer in enumerate(layers)}
        n_layers, n_groups = len(layers), len(groups)
        # share[m, g]: the share of layer m's outputs (or inputs) one channel of group g carries.
        out_share, in_share = np.zeros((n_layers, n_groups)), np.zeros((n_layers, n_groups))
        norms: dict[str, tuple[int, np.ndarray]] = {}
        for g, group in enumerate(groups):
            for piece in group.slices:
                module = model.get_submodule(piece.module)
                if piece.module in index:
                    m = index[piece.module]
                    if piece.side == "out":
                        size = module.weight.shape[0]
                        out_share[m, g] += len(piece.positions) / (group.channels * size)
                    elif not is_depthwise(module):  # a depthwise layer's inputs are its outputs
                        size = module.weight.shape[1] * getattr(module, "groups", 1)
                        in_share[m, g] += len(piece.positions) / (group.channels * size)
                elif piece.side == "out":
                    params = sum(p.numel() for p in module.parameters(recurse=False))
                    row = norms.setdefault(piece.module, (params, np.zeros(n_groups)))[1]
                    row[g] += len(piece.positions) / (group.channels * module.weight.shape[0])
        self._out, self._in = out_share, in_share
        self._flops = np.array(flops, dtype=np.float64)
        self.dense_flops = float(self._flops.sum())
        self._weights = np.array([layer.module.weight.numel() for layer in layers], dtype=np.float64)
        self._biases = np.array([0 if getattr(layer.module, "bias", None) is None else layer.module.bias.numel()
                                 for layer in layers], dtype=np.float64)
        self._norm_params = np.array([params for params, _ in norms.values()], dtype=np.float64)
        self._norm_share = np.array([row for _, row in norms.values()]).reshape(len(norms), n_groups)
        self.total_params = float(sum(p.numel() for p in model.parameters()))
        self.layer_names = [layer.name for layer in layers]
        #: Per-layer latencies (``latency.LatencyTable``) when a budget counts latency.
        self.latency_table: LatencyTable | None = None

    def use_latency_table(self, table: LatencyTable) -> None:
        """Predict latency from ``table`` (measured on these layers, in this order)."""
        table.check_layers(self.layer_names)
        self.latency_table = table

    def _kept(self, removed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        removed = np.asarray(removed, dtype=np.float64)
        return 1.0 - self._in @ removed, 1.0 - self._out @ removed

    def flops(self, removed: Sequence[float]) -> float:
        """FLOPs of the Conv / Linear layers with ``removed[g]`` channels gone from each group."""
        kept_in, kept_out = self._kept(np.asarray(removed))
        return float(self._flops @ (kept_in * kept_out))

    def flops_reduction(self, removed: Sequence[float]) -> float:
        return 1.0 - self.flops(removed) / self.dense_flops

    def params(self, removed: Sequence[float]) -> float:
        """Parameters of the whole model with ``removed[g]`` channels gone from each group."""
        removed = np.asarray(removed, dtype=np.float64)
        kept_in, kept_out = self._kept(removed)
        gone = self._weights @ (1 - kept_in * kept_out) + self._biases @ (1 - kept_out)
        if len(self._norm_params):
            gone += self._norm_params @ (self._norm_share @ removed)
        return self.total_params - float(gone)

    def param_reduction(self, removed: Sequence[float]) -> float:
        return 1.0 - self.params(removed) / self.total_params

    def latency(self, removed: Sequence[float]) -> float:
        """Predicted milliseconds of the network with ``removed[g]`` channels gone from each group
        (each layer's time at its kept shares, from the latency table)."""
        if self.latency_table is None:
            raise ConfigError("no latency table: the env counts latency only with budget='latency'")
        kept_in, kept_out = self._kept(np.asarray(removed))
        return self.latency_table.predict(kept_in, kept_out)

    def latency_reduction(self, removed: Sequence[float]) -> float:
        return 1.0 - self.latency(removed) / self.latency_table.dense_prediction

    def reduction(self, budget: str, removed: Sequence[float]) -> float:
        """The reduction a budget counts: ``"flops"``, ``"params"`` or ``"latency"`` (predicted)."""
        if budget == "latency":
            return self.latency_reduction(removed)
        return self.flops_reduction(removed) if budget == "flops" else self.param_reduction(removed)


def slim_copy(model: nn.Module, roots: Sequence[str], removed: Sequence[Sequence[int]],
              example_input: Tensor) -> nn.Module:
    """A copy of ``model`` with the ``removed[g]`` channels of the group rooted at layer
    ``roots[g]`` physically removed (Torch-Pruning): a smaller network of the same class.
    ``model`` is not changed."""
    if len(removed) != len(roots):
        raise ConfigError(f"expected {len(roots)} lists of removed channels (one per group), got {len(removed)}")
    slim = copy.deepcopy(model)
    graph = build_graph(slim, example_input)
    for name, channels in zip(roots, removed, strict=True):
        if not len(channels):
            continue
        try:
            root = slim.get_submodule(name)
        except AttributeError:
            raise ConfigError(f"the model has no layer {name!r} to remove channels from: was the list made for "
                              "another model?") from None
        pruner = graph.get_pruner_of_module(root)
        try:
            graph.get_pruning_group(root, pruner.prune_out_channels, idxs=[int(c) for c in channels]).prune()
        except Exception as error:  # inside Torch-Pruning: name the group and the way out
            raise ConfigError(
                f"Torch-Pruning could not remove channels of the group rooted at {name!r} ({type(error).__name__}: "
                f"{error}); exclude that layer (exclude_layers=[{name!r}]) or prune weights instead"
            ) from error
    return slim


def check_masks_match_slim(model: nn.Module, groups: Sequence[ChannelGroup], importance: Sequence[Tensor],
                           inputs: Tensor, example_input: Tensor, tolerance: float = 1e-2) -> None:
    """Check on ``inputs`` that masking a third of every group's channels gives the outputs of
    the network with those channels removed (largest difference relative to the largest output
    within ``tolerance``: summing over fewer channels changes the rounding, which a deep network
    with random weights, DenseNet-121, amplifies to ~3e-3; a real mismatch is of the order of the
    outputs); ConfigError naming the first group where it does not. ``model`` is left as it was
    (the check runs on copies)."""
    probe = copy.deepcopy(model).eval()
    masks = ChannelMasks(probe, groups, importance)
    counts = [max(1, group.channels // 3) for group in groups]

    def mismatch(chosen: Sequence[int]) -> float:
        masks.set_all(chosen)
        with torch.no_grad():
            masked = probe(inputs).float()
        slim = slim_copy(probe, [group.name for group in groups], masks.removed_channels(), example_input).eval()
        masks.restore()
        # The slim copy was taken from the masked probe: its kept weights are the dense ones.
        with torch.no_grad():
            outputs = slim(inputs).float()
        return float((masked - outputs).abs().max() / masked.abs().max().clamp_min(1e-12))

    if mismatch(counts) <= tolerance:
        return
    for index, group in enumerate(groups):
        alone = [counts[i] if i == index else 0 for i in range(len(groups))]
        difference = mismatch(alone)
        if difference > tolerance:
            members = ", ".join(group.modules("out")[:6])
            raise ConfigError(
                f"masking channels of the group rooted at {group.name!r} (layers {members}) does not give the outputs "
                f"of the network with those channels removed (relative difference {difference:.2g}): a layer in it "
                "mixes channels (a LayerNorm or GroupNorm across them, an attention head); exclude that root "
                "(exclude_layers=...) or prune weights instead"
            )
    raise ConfigError("masking channels group by group matches the smaller network, all groups together do not: "
                      "prune weights instead")
