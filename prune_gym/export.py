"""Getting a pruned model out: checkpoint, ``torch.nn.utils.prune``.

- :func:`export_pruned` writes a checkpoint (``torch.save``: the state dict with pruned weights
  at zero, the keep-masks by layer name, and metadata) and, next to it, its recipe
  (``<path>.recipe.json``, see ``prune_gym.recipes``).
- :func:`load_pruned` reads a checkpoint back into a model.
- :func:`to_torch_prune` / :func:`from_torch_prune` hand masks to and from
  ``torch.nn.utils.prune`` (``custom_from_mask``, the ``weight_mask`` buffers).
- ``prune_gym.workflows.export_task.export_task`` (the ``prune-gym export`` command) builds on these.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

from prune_gym.errors import ConfigError, MissingResourceError
from prune_gym.io import atomic_save, atomic_write_text
from prune_gym.pruning import (
    PrunableLayer,
    check_mask,
    find_prunable_layers,
    overall_sparsity,
)
from prune_gym.recipes import (
    FORMAT_VERSION,
    check_layers_and_masks,
    masks_to_recipe,
    recipe_path,
)

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "prune-gym-pruned"


def export_pruned(
    model: nn.Module,
    layers: Sequence[PrunableLayer],
    masks: Sequence[Tensor],
    path: str | os.PathLike,
    meta: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write a pruned model's checkpoint to ``path`` and its recipe to ``<path>.recipe.json``.

    The checkpoint is a dict (load it with ``torch.load(path, weights_only=True)`` or
    :func:`load_pruned`):

    - ``"state_dict"``: the model's state dict with every pruned weight exactly zero (the
      masks are applied to the saved copy; ``model`` itself is not changed);
    - ``"masks"``: ``{layer_name: bool tensor}``, ``True`` = kept;
    - ``"meta"``: ``meta`` (e.g. task, method, target sparsity, accuracies) plus the measured
      ``overall_sparsity`` and ``layer_sparsities``;
    - ``"format"``, ``"version"``.

    Both files are written atomically. Returns ``(checkpoint_path, recipe_path)``.
    """
    masks = check_layers_and_masks(layers, masks)
    path = Path(path)
    if path.suffix == ".json":
        raise ConfigError(f"the checkpoint path {path} ends in .json: give a .pt path (the recipe goes next to it)")
    recipe = masks_to_recipe(layers, masks, meta)
    state = {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
    for layer, mask in zip(layers, masks, strict=True):
        key = f"{layer.name}.weight" if layer.name else "weight"
        if key not in state:
            raise ConfigError(
                f"layer {layer.name!r} has no {key!r} entry in the model's state dict: pass the "
                "layers of this model (find_prunable_layers(model)), not of another one"
            )
        state[key].mul_(mask.cpu())
    full_meta = {
        **recipe.meta,
        "overall_sparsity": recipe.overall_sparsity,
        "layer_sparsities": recipe.layers,
    }
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "version": FORMAT_VERSION,
        "state_dict": state,
        "masks": {layer.name: mask.cpu() for layer, mask in zip(layers, masks, strict=True)},
        "meta": full_meta,
    }
    atomic_save(checkpoint, path)
    recipe_file = recipe_path(path)
    atomic_write_text(recipe_file, json.dumps(recipe.to_json(), indent=2) + "\n")
    return path, recipe_file


def load_pruned(
    path: str | os.PathLike, model: nn.Module, layers: Sequence[PrunableLayer] | None = None
) -> tuple[list[Tensor], dict[str, Any]]:
    """Load a checkpoint written by :func:`export_pruned` into ``model`` (in place).

    Returns:
        The keep-masks, one per layer of ``layers`` (default ``find_prunable_layers(model)``;
        a layer the checkpoint has no mask for gets an all-True mask), and the metadata.

    Raises:
        FileNotFoundError: if there is no file at ``path``.
        ValueError: if the file is not a prune-gym checkpoint or does not fit ``model``.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingResourceError(f"no pruned checkpoint at {path}: write one with `prune-gym export`")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path} is not a prune-gym pruned checkpoint (written by export_pruned)")
    state, saved, meta = checkpoint.get("state_dict"), checkpoint.get("masks"), checkpoint.get("meta") or {}
    if not isinstance(state, dict) or not isinstance(saved, dict) or not isinstance(meta, dict):
        raise ConfigError(f"checkpoint {path} lacks its state_dict, masks or meta: write it again with `prune-gym export`")
    # Everything is checked against the checkpoint itself before the model is touched.
    _check_fits(path, model, state)
    layers = list(layers) if layers is not None else find_prunable_layers(model)
    unknown = sorted(set(saved) - {layer.name for layer in layers})
    if unknown:
        raise ConfigError(f"checkpoint {path} has masks for layers this model does not have: {unknown}")
    masks = []
    for layer in layers:
        mask = saved.get(layer.name)
        weight = state[f"{layer.name}.weight" if layer.name else "weight"]
        mask = torch.ones_like(weight, dtype=torch.bool) if mask is None else check_mask(mask, weight, layer.name)
        contradictions = int(((weight != 0) & ~mask).sum())
        if contradictions:
            raise ConfigError(
                f"checkpoint {path}: {contradictions} weights of layer {layer.name!r} are marked pruned but are not "
                "zero, so its masks and weights disagree (a damaged or edited file): export the model again"
            )
        masks.append(mask)
    recorded = meta.get("overall_sparsity")
    if isinstance(recorded, int | float) and masks:
        measured = overall_sparsity(masks)
        if abs(measured - float(recorded)) * sum(m.numel() for m in masks) > 1.0:
            raise ConfigError(
                f"checkpoint {path}: its masks prune {measured:.4f} of the weights, its metadata says {recorded:.4f} "
                "(a damaged or edited file): export the model again"
            )
    model.load_state_dict(state)
    return [mask.to(layer.weight.device) for mask, layer in zip(masks, layers, strict=True)], dict(meta)


def _check_fits(path: Path, model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """ValueError naming the differences if ``state`` is not a state dict of ``model``'s architecture."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [f"{key}: {tuple(state[key].shape)} in the file, {tuple(own[key].shape)} in the model"
              for key in own if key in state and tuple(state[key].shape) != tuple(own[key].shape)]
    if missing or unexpected or shapes:
        details = "; ".join(part for part in (
            f"missing {missing[:5]}" if missing else "", f"unexpected {unexpected[:5]}" if unexpected else "",
            f"shapes differ: {shapes[:3]}" if shapes else "") if part)
        raise ConfigError(f"checkpoint {path} does not fit this model ({details}): load it into the architecture it was "
                         "exported from (task.build_model())")


# --------------------------------------------------------------------------------------------
# torch.nn.utils.prune interop


def to_torch_prune(model: nn.Module, layers: Sequence[PrunableLayer], masks: Sequence[Tensor]) -> nn.Module:
    """Attach ``masks`` with ``torch.nn.utils.prune.custom_from_mask`` to each layer's weight.

    Afterwards each module has a ``weight_orig`` parameter and a ``weight_mask`` buffer, and
    ``weight`` is recomputed as their product before every forward, as with any
    ``torch.nn.utils.prune`` method; ``torch.nn.utils.prune.remove`` (or
    ``from_torch_prune(model, remove=True)``) makes it permanent. Masks are validated (one per
    layer, right shape) before any layer changes. Returns ``model``.
    """
    masks = check_layers_and_masks(layers, masks)
    for layer, mask in zip(layers, masks, strict=True):
        # custom_from_mask multiplies into any existing mask: a layer pruned before keeps
        # the intersection, as torch's PruningContainer does.
        torch_prune.custom_from_mask(layer.module, name="weight", mask=mask.to(layer.weight.device))
    return model


def from_torch_prune(
    model: nn.Module, layers: Sequence[PrunableLayer] | None = None, remove: bool = False
) -> list[Tensor]:
    """Read the ``weight_mask`` buffers of a ``torch.nn.utils.prune``-pruned model as masks.

    Args:
        model: a model pruned with any ``torch.nn.utils.prune`` method on its layers' weights.
        layers: its prunable layers (default ``find_prunable_layers(model)``); a layer without
            a ``weight_mask`` gets an all-True mask.
        remove: also call ``torch.nn.utils.prune.remove`` on each pruned layer, making the
            pruning permanent (``weight`` becomes a plain parameter with zeros, the
            reparametrisation and its hooks are gone).

    Returns:
        One bool keep-mask per layer, in the order of ``layers``.
    """
    layers = list(layers) if layers is not None else find_prunable_layers(model)
    masks = []
    for layer in layers:
        module = layer.module
        buffer = getattr(module, "weight_mask", None)
        if buffer is None:
            masks.append(torch.ones_like(module.weight, dtype=torch.bool))
            continue
        masks.append(buffer.detach().to(torch.bool).clone())
        if remove:
            torch_prune.remove(module, "weight")
    return masks
