"""Recipes: per-layer sparsities that prune a dense model the same way again.

- :func:`masks_to_recipe` is the recipe of a pruned model; :func:`load_recipe` /
  :func:`recipe_from_json` read one (validated); :func:`apply_recipe` prunes a dense model
  with it: per-layer magnitude pruning at the recipe's sparsities. For a recipe from a
  magnitude-based method (Global MP, uniform magnitude, the environment's layer-wise magnitude
  pruning) this gives exactly the original masks, since a layer pruned to the same count by
  magnitude, with ties broken by index, keeps the same weights.

Recipe format (JSON)::

    {"format": "prune-gym-recipe", "version": 1,
     "overall_sparsity": 0.8,
     "layers": {"stem.0": 0.31, "blocks.0.conv1": 0.62, ...},
     "meta": {"task": "resnet20-digits", "method": "global-mp", ...}}

A plain ``{layer_name: sparsity}`` mapping is accepted too, so recipes can be written by hand.
Layers a recipe does not name are left dense.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prune_gym.episode import EpisodeRecord, target_key
from prune_gym.errors import ConfigError, MissingResourceError
from prune_gym.io import read_json
from prune_gym.pruning import (
    PrunableLayer,
    check_mask,
    find_prunable_layers,
    magnitude_mask,
    mask_sparsity,
    overall_sparsity,
)

RECIPE_FORMAT = "prune-gym-recipe"
FORMAT_VERSION = 1


@dataclass
class Recipe:
    """Per-layer sparsities (by qualified module name) that prune a model the same way again."""

    layers: dict[str, float]
    overall_sparsity: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": RECIPE_FORMAT,
            "version": FORMAT_VERSION,
            "overall_sparsity": self.overall_sparsity,
            "layers": dict(self.layers),
            "meta": dict(self.meta),
        }


def recipe_path(checkpoint_path: str | os.PathLike) -> Path:
    """Where :func:`export_pruned` writes the recipe of ``checkpoint_path``: ``<path>.recipe.json``."""
    path = Path(checkpoint_path)
    return path.with_name(path.name + ".recipe.json")


def check_layers_and_masks(layers: Sequence[PrunableLayer], masks: Sequence[Tensor]) -> list[Tensor]:
    """The masks, checked: one per layer, each of its layer's shape (ValueError naming the layer)."""
    if len(masks) != len(layers):
        raise ConfigError(f"expected one mask per prunable layer ({len(layers)}), got {len(masks)}")
    return [check_mask(mask, layer.weight, layer.name) for layer, mask in zip(layers, masks, strict=True)]


def masks_to_recipe(
    layers: Sequence[PrunableLayer], masks: Sequence[Tensor], meta: Mapping[str, Any] | None = None
) -> Recipe:
    """The recipe of a pruned model: each layer's sparsity and the overall sparsity."""
    masks = check_layers_and_masks(layers, masks)
    return Recipe(
        layers={layer.name: mask_sparsity(mask) for layer, mask in zip(layers, masks, strict=True)},
        overall_sparsity=overall_sparsity(masks),
        meta=dict(meta or {}),
    )


def load_recipe(path: str | os.PathLike, target: float | None = None) -> Recipe:
    """Read a recipe JSON (the exported format, a plain ``{layer_name: sparsity}`` mapping, or a
    training run's ``best_found.json``, whose best episode at ``target`` is the recipe; ``target``
    may be left out when the run trained at one target only).

    Raises:
        FileNotFoundError: if there is no file at ``path``.
        ValueError: if it is not valid JSON, a sparsity is not a number in [0, 1), or a
            ``best_found.json`` has no episode at ``target`` (the message lists its targets).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingResourceError(
            f"no recipe file at {path}: export one with `prune-gym export ... --output model.pt` "
            "(it writes model.pt.recipe.json)"
        )
    data = read_json(path, "export the recipe again or restore the file")
    if isinstance(data, dict) and isinstance(data.get("best_per_target"), dict):
        return _best_found_recipe(data["best_per_target"], target, str(path))
    return recipe_from_json(data, source=str(path))


def _best_found_recipe(best: Mapping[str, Any], target: float | None, source: str) -> Recipe:
    """The best episode of a training run (``best_found.json``) at ``target`` as a recipe."""
    targets = sorted(best)
    if target is None and len(targets) != 1:
        raise ConfigError(f"{source} holds the best episode of each of the targets {targets}: choose one with "
                         "--sparsity (target=)")
    key = targets[0] if target is None else target_key(float(target))
    if key not in best or not isinstance(best[key], dict):
        raise ConfigError(f"{source} has no episode at target {key}: its targets are {targets}")
    episode = EpisodeRecord.from_json(best[key], f"{source} target {key}")
    meta = {"method": "best found", "selected_from": "best_found", "target_sparsity": episode.target_sparsity,
            "reward_accuracy": episode.reward_accuracy, "selected_on": "reward split"}
    return Recipe(layers=_check_layer_sparsities(episode.layer_sparsities, source),
                  overall_sparsity=episode.overall_sparsity, meta=meta)


def recipe_from_json(data: Any, source: str = "recipe") -> Recipe:
    """A :class:`Recipe` from its JSON form (see :func:`load_recipe`), validated."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a recipe is a JSON object, got {type(data).__name__}")
    if "layers" in data:
        layers, overall, meta = data["layers"], data.get("overall_sparsity"), data.get("meta") or {}
        if not isinstance(layers, dict):
            raise ConfigError(f"{source}: 'layers' must map layer names to sparsities")
        if not isinstance(meta, dict):
            raise ConfigError(f"{source}: 'meta' must be a JSON object (what made the recipe), got {type(meta).__name__}")
    elif "format" in data or "meta" in data:
        raise ConfigError(f"{source}: a recipe file names its layers under 'layers', and this one has none: "
                         "export it again (`prune-gym export ... --output model.pt` writes model.pt.recipe.json)")
    else:
        layers, overall, meta = data, None, {}
    if not layers:
        raise ConfigError(f"{source}: the recipe names no layer, so it would export the dense model; "
                         "give each layer's sparsity ({\"layer_name\": 0.8, ...})")
    return Recipe(layers=_check_layer_sparsities(layers, source), overall_sparsity=overall, meta=dict(meta))


def _check_layer_sparsities(layers: Mapping[str, Any], source: str) -> dict[str, float]:
    checked = {}
    for name, value in layers.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not (0.0 <= value < 1.0):
            raise ConfigError(
                f"{source}: layer {name!r} has sparsity {value!r}; a sparsity is a number in [0, 1) "
                "(1.0 would empty the layer)"
            )
        checked[str(name)] = float(value)
    return checked


@torch.no_grad()
def apply_recipe(
    model: nn.Module,
    recipe: Recipe | Mapping[str, float] | str | os.PathLike,
    layers: Sequence[PrunableLayer] | None = None,
) -> list[Tensor]:
    """Prune ``model`` in place with per-layer magnitude pruning at the recipe's sparsities.

    Each named layer loses exactly ``round(sparsity * n)`` of its ``n`` weights, the smallest
    by magnitude (ties by index, as everywhere in prune-gym); layers the recipe does not name
    stay dense.

    Args:
        model: the dense (trained) model.
        recipe: a :class:`Recipe`, a ``{layer_name: sparsity}`` mapping, or a recipe file path.
        layers: the model's prunable layers (default ``find_prunable_layers(model)``).

    Returns:
        One keep-mask per layer of ``layers``, in that order.

    Raises:
        ValueError: if the recipe names a layer the model does not have (the message lists
            the model's layers) or a sparsity outside [0, 1).
    """
    if isinstance(recipe, str | os.PathLike):
        recipe = load_recipe(recipe)
    if isinstance(recipe, Recipe):
        sparsities = _check_layer_sparsities(recipe.layers, "recipe")
    elif isinstance(recipe, Mapping):
        sparsities = _check_layer_sparsities(recipe, "recipe")
    else:
        raise ConfigError(f"recipe must be a Recipe, a mapping or a path, got {type(recipe).__name__}")
    layers = list(layers) if layers is not None else find_prunable_layers(model)
    names = {layer.name for layer in layers}
    unknown = [name for name in sparsities if name not in names]
    if unknown:
        raise ConfigError(
            f"the recipe names layers this model does not have: {unknown}. The model's prunable "
            f"layers are: {[layer.name for layer in layers]}. Was the recipe made for another model?"
        )
    masks = []
    for layer in layers:
        mask = magnitude_mask(layer.weight, sparsities.get(layer.name, 0.0))
        layer.weight.mul_(mask)
        masks.append(mask)
    return masks


