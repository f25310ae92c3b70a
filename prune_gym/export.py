"""Getting a pruned model out: checkpoint, ``torch.nn.utils.prune``, the ``prune-gym export`` command.

- :func:`export_pruned` writes a checkpoint (``torch.save``: the state dict with pruned weights
  at zero, the keep-masks by layer name, and metadata) and, next to it, its recipe
  (``<path>.recipe.json``, see ``prune_gym.recipes``).
- :func:`load_pruned` reads a checkpoint back into a model.
- :func:`to_torch_prune` / :func:`from_torch_prune` hand masks to and from
  ``torch.nn.utils.prune`` (``custom_from_mask``, the ``weight_mask`` buffers).
- :func:`export_task` is one call from a task to a pruned checkpoint (the ``prune-gym export``
  command): Global MP, uniform or a recipe, optional fine-tuning, BatchNorm re-calibration as
  the env does it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

from prune_gym.allocation import ALLOCATION_METHODS, allocation_counts
from prune_gym.calibration import (
    BN_RECALIBRATION_BATCH,
    recalibrate_batchnorm,
    recalibration_inputs,
)
from prune_gym.errors import ConfigError, MissingResourceError
from prune_gym.evaluation import evaluate_accuracy, resolve_device
from prune_gym.finetune import apply_masks, finetune_pruned
from prune_gym.gradual import gradual_global_magnitude_pruning
from prune_gym.io import atomic_save, atomic_write_text, check_writable_path
from prune_gym.pruning import (
    DEFAULT_MIN_THRESHOLD,
    PrunableLayer,
    check_mask,
    check_sparsity,
    find_prunable_layers,
    keep_top_mask,
    overall_sparsity,
)
from prune_gym.recipes import (
    FORMAT_VERSION,
    Recipe,
    apply_recipe,
    check_layers_and_masks,
    load_recipe,
    masks_to_recipe,
    recipe_path,
)
from prune_gym.tasks import get_task

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


# --------------------------------------------------------------------------------------------
# One call from a task to a pruned checkpoint (the `prune-gym export` command)

#: Methods ``export_task`` prunes with: every allocation method (a recipe file is the other way in).
EXPORT_POLICIES = tuple(ALLOCATION_METHODS)


@dataclass
class ExportResult:
    """What :func:`export_task` did: files written and test accuracies (in [0, 1])."""

    checkpoint: Path
    recipe: Path
    method: str
    sparsity: float
    accuracy_dense: float
    accuracy_pruned: float | None
    accuracy_finetuned: float | None
    meta: dict[str, Any] = field(default_factory=dict)
    #: Test accuracy of the checkpoint as written, loaded back into a fresh model.
    accuracy_exported: float | None = None
    bn_recalibration_batches: int = 0


def export_task(
    task: str,
    output: str | os.PathLike,
    policy: str | None = None,
    sparsity: float | None = None,
    *,
    min_threshold: float | None = None,
    recipe: str | os.PathLike | Recipe | None = None,
    finetune_epochs: int = 0,
    gradual_steps: int = 1,
    bn_recalibration_batches: int | None = None,
    weights: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: bool = False,
    resume: bool = False,
) -> ExportResult:
    """Prune a task's trained model, optionally fine-tune it with its masks, and export it.

    Args:
        task: task name or env id (see ``prune-gym envs``).
        output: checkpoint path; the recipe goes to ``<output>.recipe.json``.
        policy: an allocation method of ``prune_gym.allocation`` (``"global-mp"``, the default,
            ``"global-mp+mt"``, ``"lamp"``, ``"erk"``, ``"uniform"``, ``"uniform+"``, ``"random"``),
            then magnitude pruning within each layer; not together with ``recipe``.
        sparsity: target fraction of prunable weights removed (needed unless ``recipe``).
        min_threshold: Global MP's Minimum Threshold (fraction of all prunable weights each layer
            keeps, e.g. 0.0005); global-mp / global-mp+mt only (global-mp with it is global-mp+mt).
        recipe: a recipe (file) of per-layer sparsities, e.g. an agent's, applied with
            per-layer magnitude pruning.
        finetune_epochs: masked fine-tuning epochs with the task family's recipe (0: none);
            with ``gradual_steps > 1``, the epochs after each step.
        gradual_steps: > 1 prunes gradually on the cubic schedule (global-mp only).
        bn_recalibration_batches: re-estimate BatchNorm statistics after pruning on this many
            256-image batches of the train split, exactly as the env does after each step
            (the same images), so the checkpoint scores what the env reported. None: the
            recipe's recorded value, else the task's env default (1 for digits, else 0).
        weights, data_dir: the task's weights file and data folder (else its defaults).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        seed: fine-tuning seed (data splits are the task's fixed ones).
        progress: show progress bars.
        resume: continue an interrupted one-shot fine-tuning from ``<output>.finetune.partial``.

    Raises:
        ValueError: for an unknown task or policy, a missing or out-of-range sparsity, or
            options that do not go together.
    """

    # Validate everything, then load and prune.
    policy, sparsity, recipe, output, min_threshold = _check_export_options(
        policy, sparsity, recipe, output, min_threshold, finetune_epochs, gradual_steps
    )
    task_obj = get_task(task)
    if bn_recalibration_batches is None:
        recorded = recipe.meta.get("bn_recalibration_batches") if recipe is not None else None
        bn_recalibration_batches = recorded if recorded is not None else task_obj.env_defaults.get("bn_recalibration_batches", 0)
    if isinstance(bn_recalibration_batches, bool) or not isinstance(bn_recalibration_batches, int) or bn_recalibration_batches < 0:
        raise ConfigError(f"bn_recalibration_batches must be a whole number >= 0, got {bn_recalibration_batches!r}")

    torch_device = resolve_device(device)
    model = task_obj.load_model(weights).to(torch_device)
    splits = task_obj.load_splits(data_dir) if data_dir is not None else task_obj.load_splits()
    layers = find_prunable_layers(model)
    accuracy_dense = evaluate_accuracy(model, splits.test, device=torch_device, amp=task_obj.amp)
    if gradual_steps > 1:
        pruned = _prune_gradually(
            model, layers, task_obj, splits, sparsity, gradual_steps, finetune_epochs, min_threshold,
            bn_recalibration_batches, torch_device, progress,
        )
    else:
        pruned = _prune_once(
            model, layers, task_obj, splits, policy, sparsity, recipe, min_threshold, finetune_epochs,
            bn_recalibration_batches, torch_device, progress, seed, resume, output,
        )

    options = {"min_threshold": min_threshold, "finetune_epochs": finetune_epochs, "gradual_steps": gradual_steps,
               "seed": seed}
    target = sparsity if sparsity is not None else (recipe.overall_sparsity if recipe else None)
    meta = _export_meta(task_obj, pruned, target, options, accuracy_dense)
    checkpoint, recipe_file = export_pruned(model, layers, pruned.masks, output, meta)
    # The accuracy of exactly what was written: the checkpoint loaded into a fresh model.
    written = task_obj.build_model()
    load_pruned(checkpoint, written)
    accuracy_exported = evaluate_accuracy(written.to(torch_device), splits.test, device=torch_device, amp=task_obj.amp)
    return ExportResult(
        checkpoint=checkpoint,
        recipe=recipe_file,
        method=pruned.method,
        sparsity=overall_sparsity(pruned.masks),
        accuracy_dense=accuracy_dense,
        accuracy_pruned=pruned.accuracy_pruned,
        accuracy_finetuned=pruned.accuracy_finetuned,
        meta=meta,
        accuracy_exported=accuracy_exported,
        bn_recalibration_batches=pruned.bn_recalibration_batches,
    )


def _export_meta(task_obj: Any, pruned: _Pruned, target: float | None, options: dict[str, Any],
                 accuracy_dense: float) -> dict[str, Any]:
    """The checkpoint's metadata: what was done, with which options, and the test accuracies."""
    meta: dict[str, Any] = {
        "task": task_obj.name,
        "env_id": task_obj.env_id,
        "method": pruned.method,
        "target_sparsity": target,
        **options,
        "bn_recalibration_batches": pruned.bn_recalibration_batches,
        "test_accuracy_dense": accuracy_dense,
        "test_accuracy_pruned": pruned.accuracy_pruned,
        "test_accuracy_finetuned": pruned.accuracy_finetuned,
    }
    if pruned.history is not None:
        meta["gradual_history"] = [
            {
                "step": h.step,
                "sparsity": h.sparsity,
                "reward_accuracy_pruned": h.accuracy_pruned,
                "reward_accuracy_finetuned": h.accuracy_finetuned,
            }
            for h in pruned.history
        ]
    return meta


def _check_export_options(
    policy: str | None, sparsity: float | None, recipe: Any, output: str | os.PathLike, min_threshold: float | None,
    finetune_epochs: int, gradual_steps: int,
) -> tuple[str | None, float | None, Recipe | None, Path, float | None]:
    """``export_task``'s options checked together: (policy, sparsity, recipe, output path, the
    Minimum Threshold: ``global-mp`` with one is ``global-mp+mt``, which has the paper's by default)."""

    if isinstance(finetune_epochs, bool) or not isinstance(finetune_epochs, int) or finetune_epochs < 0:
        raise ConfigError(f"finetune_epochs must be a whole number >= 0, got {finetune_epochs!r}")
    if isinstance(gradual_steps, bool) or not isinstance(gradual_steps, int) or gradual_steps < 1:
        raise ConfigError(f"gradual_steps must be a whole number >= 1, got {gradual_steps!r}")
    if recipe is not None and policy is not None:
        raise ConfigError("pass either a policy (--policy) or a recipe (--recipe), not both")
    if recipe is not None:
        # A training run's best_found.json holds one recipe per target: --sparsity picks it.
        recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, target=sparsity)
        if sparsity is not None and recipe.meta.get("selected_from") != "best_found":
            raise ConfigError("a recipe fixes every layer's sparsity: drop --sparsity when passing --recipe")
        sparsity = None
    else:
        policy = policy or "global-mp"
        if policy not in EXPORT_POLICIES:
            raise ConfigError(f"unknown policy {policy!r}: choose one of {', '.join(EXPORT_POLICIES)}, or pass --recipe")
        if sparsity is None:
            raise ConfigError(f"policy {policy!r} needs a target sparsity (--sparsity, e.g. 0.8)")
        sparsity = check_sparsity(sparsity)
    if min_threshold is not None and policy not in ("global-mp", "global-mp+mt"):
        raise ConfigError("--min-threshold applies to --policy global-mp / global-mp+mt only")
    if policy == "global-mp" and min_threshold:
        policy = "global-mp+mt"
    if policy == "global-mp+mt" and min_threshold is None:
        min_threshold = DEFAULT_MIN_THRESHOLD
    if gradual_steps > 1 and policy not in ("global-mp", "global-mp+mt"):
        raise ConfigError("gradual pruning (--gradual-steps > 1) is a form of Global MP: use --policy global-mp")
    output = Path(output)
    if output.suffix == ".json":
        raise ConfigError(f"the checkpoint path {output} ends in .json: give a .pt path (the recipe goes next to it)")
    check_writable_path(output, "--output")
    return policy, sparsity, recipe, output, min_threshold


@dataclass
class _Pruned:
    """What one of the two pruning paths of ``export_task`` left in the model."""

    method: str
    masks: list[Tensor]
    accuracy_pruned: float | None
    accuracy_finetuned: float | None
    bn_recalibration_batches: int
    history: list[Any] | None = None


def _prune_gradually(
    model, layers, task_obj, splits, sparsity, steps, finetune_epochs, min_threshold, bn_batches, device, progress,
) -> _Pruned:
    """Global MP on the cubic schedule, ``finetune_epochs`` after every step."""

    masks, history = gradual_global_magnitude_pruning(
        model, layers, splits.train, sparsity, steps, finetune_epochs, min_threshold,
        family=task_obj.family, eval_data=splits.reward, device=device, progress=progress,
    )
    if finetune_epochs:  # fine-tuning after every step re-estimated the statistics
        accuracy = evaluate_accuracy(model, splits.test, device=device, amp=task_obj.amp)
        return _Pruned("gradual-global-mp", masks, None, accuracy, 0, history)
    _recalibrate(model, splits.train, bn_batches, device)
    accuracy = evaluate_accuracy(model, splits.test, device=device, amp=task_obj.amp)
    return _Pruned("gradual-global-mp", masks, accuracy, None, bn_batches, history)


def _prune_once(
    model, layers, task_obj, splits, policy, sparsity, recipe, min_threshold, finetune_epochs, bn_batches, device,
    progress, seed, resume, output: Path,
) -> _Pruned:
    """One-shot masks (a recipe or an allocation method), re-calibration as the env does, then the
    optional masked fine-tuning (resumable from ``<output>.finetune.partial``)."""
    weights_now = [layer.weight for layer in layers]
    if recipe is not None:
        method = str(recipe.meta.get("method", "recipe"))
        masks = apply_recipe(model, recipe, layers)
    else:
        method = policy
        counts = allocation_counts(policy, weights_now, sparsity, min_threshold=min_threshold or None, seed=seed)
        masks = [keep_top_mask(w, w.numel() - count) for w, count in zip(weights_now, counts, strict=True)]
    apply_masks(layers, masks)
    _recalibrate(model, splits.train, bn_batches, device)
    accuracy_pruned = evaluate_accuracy(model, splits.test, device=device, amp=task_obj.amp)
    if not finetune_epochs:
        return _Pruned(method, masks, accuracy_pruned, None, bn_batches)
    partial = output.with_name(output.name + ".finetune.partial")
    if partial.exists() and not resume:
        partial.unlink()  # a stale run: start anew (resume=True continues it)
    try:
        finetune_pruned(
            model, layers, masks, splits.train, finetune_epochs, family=task_obj.family, seed=seed,
            device=device, progress=progress, description=f"fine-tune {method}", checkpoint_path=partial,
        )
    except KeyboardInterrupt:
        if partial.exists():
            logger.warning(f"fine-tuning interrupted; run the same command with --resume to continue from {partial}")
        raise
    accuracy_finetuned = evaluate_accuracy(model, splits.test, device=device, amp=task_obj.amp)
    partial.unlink(missing_ok=True)
    return _Pruned(method, masks, accuracy_pruned, accuracy_finetuned, bn_batches)


def _recalibrate(model: nn.Module, train_data: Any, batches: int, device: torch.device) -> None:
    """What the env does after pruning: BatchNorm statistics from the same train images."""

    if batches:
        inputs = recalibration_inputs(train_data, batches, device)
        recalibrate_batchnorm(model, inputs, batch_size=BN_RECALIBRATION_BATCH)
