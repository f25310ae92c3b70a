"""The ``prune-gym export`` command for a weight env's task: :func:`export_task` loads the task's
trained model, prunes it (an allocation method, a recipe, or gradual Global MP), optionally
fine-tunes it with its masks, re-calibrates BatchNorm as the env does, and writes the checkpoint
and its recipe (``prune_gym.export.export_pruned``), then scores exactly what was written. A
workflow above the library: it reads a task; ``prune_gym.export`` below it does not.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prune_gym.allocation import ALLOCATION_METHODS, allocation_counts
from prune_gym.calibration import (
    BN_RECALIBRATION_BATCH,
    recalibrate_batchnorm,
    recalibration_inputs,
)
from prune_gym.errors import ConfigError
from prune_gym.evaluation import evaluate_accuracy, resolve_device
from prune_gym.export import export_pruned, load_pruned
from prune_gym.finetune import apply_masks, finetune_pruned
from prune_gym.gradual import gradual_global_magnitude_pruning
from prune_gym.io import check_writable_path
from prune_gym.pruning import (
    DEFAULT_MIN_THRESHOLD,
    check_sparsity,
    find_prunable_layers,
    keep_top_mask,
    overall_sparsity,
)
from prune_gym.recipes import (
    Recipe,
    apply_recipe,
    load_recipe,
)
from prune_gym.tasks import get_task

logger = logging.getLogger(__name__)

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
        finetune_epochs: masked fine-tuning epochs with the task's recipe (``Task.finetune_recipe``; 0: none);
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
        config=task_obj.recipe("finetune"), eval_data=splits.reward, device=device, progress=progress,
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
            model, layers, masks, splits.train, finetune_epochs, config=task_obj.recipe("finetune"), seed=seed,
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
