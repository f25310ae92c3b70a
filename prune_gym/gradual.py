"""Gradual Global Magnitude Pruning on the cubic schedule of Zhu & Gupta (2017).

``gradual_global_magnitude_pruning`` prunes to a target over several steps with masked
fine-tuning between them; the Global MP paper found this helps FLOPs sparsity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from prune_gym.errors import ConfigError
from prune_gym.evaluation import evaluate_accuracy
from prune_gym.finetune import (
    DEFAULT_FINETUNE_RECIPE,
    Augment,
    TrainConfig,
    apply_masks,
    check_epochs,
    train_classifier,
)
from prune_gym.pruning import (
    PrunableLayer,
    check_sparsity,
    global_magnitude_masks,
    mask_sparsity,
    overall_sparsity,
)


def cubic_sparsity_schedule(final_sparsity: float, steps: int, initial: float = 0.0) -> list[float]:
    """Sparsity after each of ``steps`` pruning steps on the cubic schedule of Zhu & Gupta (2017).

    ``s_t = s_f + (s_i - s_f) * (1 - t / n) ** 3`` for ``t = 1..n``: pruning is fast at first,
    while many redundant weights remain, and slows down towards the target. The result rises
    monotonically and its last entry is exactly ``final_sparsity``.
    """
    final_sparsity = check_sparsity(final_sparsity, "final_sparsity")
    initial = check_sparsity(initial, "initial")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be a whole number >= 1, got {steps!r}")
    if initial > final_sparsity:
        raise ConfigError(f"initial sparsity {initial} exceeds final_sparsity {final_sparsity}")
    schedule = [final_sparsity + (initial - final_sparsity) * (1 - t / steps) ** 3 for t in range(1, steps + 1)]
    schedule[-1] = final_sparsity  # exact, not up to round-off
    return schedule


@dataclass
class GradualStep:
    """One step of gradual pruning: the scheduled and reached sparsity, and accuracies if measured."""

    step: int
    target_sparsity: float
    sparsity: float
    layer_sparsities: list[float] = field(repr=False)
    accuracy_pruned: float | None = None
    accuracy_finetuned: float | None = None


def _prune_further(layers: Sequence[PrunableLayer], masks: list[Tensor], target: float,
                   min_threshold: float | None) -> list[Tensor]:
    """One step of the schedule: Global MP to ``target`` on the current weights, with every weight
    pruned so far kept pruned; the new masks, applied."""
    # Surviving weights score at least `tiny` and pruned ones 0, so the pruned ones are removed
    # first and never come back (the removal count only grows along the schedule).
    tiny = torch.finfo(torch.float32).tiny
    scores = [torch.where(mask, layer.weight.detach().abs().float().clamp_min(tiny), 0.0)
              for layer, mask in zip(layers, masks, strict=True)]
    masks = global_magnitude_masks(scores, target, min_threshold)
    apply_masks(layers, masks)
    return masks


def gradual_global_magnitude_pruning(
    model: nn.Module, layers: Sequence[PrunableLayer], data: Dataset | tuple[Tensor, Tensor], final_sparsity: float,
    steps: int, epochs_per_step: int, min_threshold: float | None = None, *, initial_sparsity: float = 0.0,
    config: TrainConfig | None = None, eval_data: Dataset | tuple[Tensor, Tensor] | None = None,
    device: torch.device | str = "cpu", progress: bool = False, augment: Augment | None = None,
) -> tuple[list[Tensor], list[GradualStep]]:
    """Gradual Global MP: prune to ``final_sparsity`` in ``steps`` steps, fine-tuning between.

    At step ``t`` the sparsity is ``cubic_sparsity_schedule(final_sparsity, steps,
    initial_sparsity)[t]``; Global MP (one magnitude threshold over all layers, with Minimum
    Threshold ``min_threshold`` if given) ranks the *current* weights, already fine-tuned, and
    weights pruned at an earlier step rank below every surviving weight, so they stay pruned.
    After every step (the last included) the model is fine-tuned with its masks for
    ``epochs_per_step`` epochs (0: one-shot pruning at each step, no training).

    Args:
        model, layers: the trained model (modified in place) and its prunable layers.
        data: the training split for fine-tuning.
        final_sparsity, steps, initial_sparsity: the schedule.
        epochs_per_step: fine-tuning epochs after each step.
        min_threshold: Global MP's Minimum Threshold (fraction of all prunable weights each
            layer keeps), respected at every step.
        config: the fine-tuning recipe (as in :func:`finetune_pruned`); each step uses a
            different shuffling seed.
        eval_data: if given, accuracy on it (e.g. the reward split) before and after each
            step's fine-tuning is recorded in the history.

    Returns:
        The final masks (exactly ``round(final_sparsity * N)`` of the ``N`` prunable weights
        removed) and one :class:`GradualStep` per step.
    """
    epochs_per_step = check_epochs(epochs_per_step, "epochs_per_step")
    schedule = cubic_sparsity_schedule(final_sparsity, steps, initial_sparsity)
    layers = list(layers)
    device = torch.device(device)
    model.to(device)
    # Fail before any training if Minimum Threshold makes the target unreachable.
    global_magnitude_masks([layer.weight for layer in layers], final_sparsity, min_threshold)
    base = config if config is not None else DEFAULT_FINETUNE_RECIPE

    evaluate = (lambda: evaluate_accuracy(model, eval_data, device=device)) if eval_data is not None else None
    masks = [torch.ones_like(layer.weight, dtype=torch.bool) for layer in layers]
    history: list[GradualStep] = []
    for step, target in enumerate(schedule):
        masks = _prune_further(layers, masks, target, min_threshold)
        record = GradualStep(step=step + 1, target_sparsity=target, sparsity=overall_sparsity(masks),
                             layer_sparsities=[mask_sparsity(m) for m in masks])
        if evaluate is not None:
            record.accuracy_pruned = evaluate()
        if epochs_per_step:
            step_config = dataclasses.replace(base, epochs=epochs_per_step, seed=base.seed + step)
            train_classifier(
                model, data, step_config, device=device, masks=masks, layers=layers, progress=progress,
                description=f"gradual step {step + 1}/{steps} ({target:.3f})", augment=augment,
            )
            if evaluate is not None:
                record.accuracy_finetuned = evaluate()
        history.append(record)
    model.eval()
    return masks, history
