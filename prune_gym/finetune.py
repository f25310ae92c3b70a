"""Training and masked fine-tuning (gradual Global MP, built on them, is in ``prune_gym.gradual``).

- ``train_classifier`` trains a classifier with SGD (Nesterov momentum) and a cosine learning
  rate stepped every batch, optionally with label smoothing, a per-batch ``augment`` function,
  and a resumable checkpoint written after every epoch.
- Given masks, pruned weights are held at exactly zero: their gradients are zeroed before each
  optimiser step (so momentum and weight decay never see them) and the masks are multiplied
  back in after it. ``finetune_pruned`` is that, with a recipe (each task has its own:
  ``Task.recipe("finetune")``).
- ``finetune_steps`` is a short retraining of a few optimiser steps (the PuRL-style schedule
  retrains briefly after each pruning step); ``prune_gym.calibration.capture_state`` /
  ``restore_state`` let an environment undo it on reset.

BatchNorm re-calibration (statistics re-estimated after pruning, without training) lives in
``prune_gym.calibration``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from prune_gym.errors import ConfigError
from prune_gym.io import atomic_save
from prune_gym.pruning import (
    PrunableLayer,
    check_mask,
)

#: A function applied to each training batch of inputs (on the training device) before the
#: forward pass, e.g. random crops and flips. For resumed runs to equal uninterrupted ones it
#: must draw its randomness from torch's global generator, which the checkpoint saves.
Augment = Callable[[Tensor], Tensor]

#: Format version of the resumable training checkpoint (see ``train_classifier``).
CHECKPOINT_VERSION = 1


@dataclass
class TrainConfig:
    """A training recipe: SGD with (Nesterov) momentum and a cosine learning-rate schedule."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    seed: int = 0


#: The recipe ``finetune_pruned`` uses when no config is given (a task's own is
#: ``Task.finetune_recipe``: each task file sets its fine-tuning and pretraining recipes).
DEFAULT_FINETUNE_RECIPE = TrainConfig(epochs=5, batch_size=64, lr=0.01, weight_decay=5e-4)


# --------------------------------------------------------------------------------------------
# Masks during training


@torch.no_grad()
def apply_masks(layers: Sequence[PrunableLayer], masks: Sequence[Tensor]) -> None:
    """Multiply each layer's weight by its mask in place."""
    for layer, mask in zip(layers, masks, strict=True):
        layer.weight.mul_(mask)


def _mask_gradients(layers: Sequence[PrunableLayer], masks: Sequence[Tensor]) -> None:
    # Zeroed gradients keep the momentum buffers of pruned weights at zero, so the optimiser
    # state never pushes a pruned weight away from zero (the mask after the step then only
    # guards against round-off, e.g. weight decay of an exact zero is exactly zero anyway).
    for layer, mask in zip(layers, masks, strict=True):
        grad = layer.weight.grad
        if grad is not None:
            grad.mul_(mask)


def _checked_masks(
    layers: Sequence[PrunableLayer], masks: Sequence[Tensor], device: torch.device
) -> list[Tensor]:
    if len(masks) != len(layers):
        raise ConfigError(f"expected one mask per prunable layer ({len(layers)}), got {len(masks)}")
    return [check_mask(m, layer.weight, layer.name).to(device) for m, layer in zip(masks, layers, strict=True)]


def check_epochs(epochs: object, name: str = "epochs") -> int:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"{name} must be a whole number >= 0, got {epochs!r}")
    return epochs


# --------------------------------------------------------------------------------------------
# Training


def _shuffled_loader(data: Dataset | tuple[Tensor, Tensor], batch_size: int, generator: torch.Generator,
                     num_workers: int, device: torch.device) -> DataLoader:
    data = TensorDataset(*data) if isinstance(data, tuple) else data
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=generator, drop_last=False,
                        num_workers=num_workers, pin_memory=device.type == "cuda")
    if len(loader) == 0:
        raise ConfigError("the training data is empty: it needs at least one sample")
    return loader


def _sgd_with_cosine(model: nn.Module, config: TrainConfig, batches_per_epoch: int):
    """The recipe's optimiser (SGD, Nesterov momentum when there is momentum) and its cosine
    schedule over every step of the run."""
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
        nesterov=config.momentum > 0,  # Nesterov needs momentum; plain SGD without it
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs * batches_per_epoch))
    return optimizer, scheduler


def train_classifier(
    model: nn.Module, data: Dataset | tuple[Tensor, Tensor], config: TrainConfig | None = None,
    device: torch.device | str = "cpu", masks: Sequence[Tensor] | None = None,
    layers: Sequence[PrunableLayer] | None = None, progress: bool = False, description: str = "train", *,
    checkpoint_path: str | Path | None = None, augment: Augment | None = None, amp: bool = False,
    num_workers: int = 0,
) -> nn.Module:
    """Train ``model`` on ``data`` in place and return it in eval mode.

    Args:
        model: the classifier (any module mapping a batch of inputs to logits).
        data: a dataset of ``(input, label)`` pairs or an ``(inputs, labels)`` tuple.
        config: the recipe (``TrainConfig()`` if None).
        device: where to train.
        masks, layers: if given (together), pruned weights are held at exactly zero throughout.
        progress: show a progress bar over epochs.
        description: the progress bar's label.
        checkpoint_path: if given, model, optimiser, scheduler, epoch count and random-number
            state are saved there (atomically) after every epoch. If the file exists, training
            resumes after its last completed epoch and ends exactly as an uninterrupted run with
            the same seed would (on the same machine); a run whose epochs are all done only loads
            the weights. Ctrl-C (KeyboardInterrupt) leaves the last completed epoch's checkpoint.
            The file keeps the final state afterwards: delete it to train again from scratch.
        augment: applied to each batch of inputs on ``device`` before the forward pass (see
            :data:`Augment`).
        amp: bfloat16 autocast on CUDA (ignored on the CPU and on GPUs without bf16).
        num_workers: DataLoader worker processes (for datasets that decode on the fly).

    The run is deterministic for a given ``config.seed`` on a given machine; the global random
    state of the caller is left untouched.

    Raises:
        ValueError: for negative epochs, masks without layers (or vice versa), masks of the wrong
            number or shape, or a checkpoint written by a run with another recipe or dataset.
    """
    config = _checked_config(config or TrainConfig(), masks, layers)
    device = torch.device(device)
    model.to(device).train()
    if masks is not None:
        masks = _checked_masks(layers, masks, device)
        apply_masks(layers, masks)
    generator = torch.Generator().manual_seed(config.seed)
    loader = _shuffled_loader(data, config.batch_size, generator, num_workers, device)
    optimizer, scheduler = _sgd_with_cosine(model, config, len(loader))
    # What a checkpoint must match to be resumed: another recipe or dataset would continue another run.
    saved = _RunCheckpoint(Path(checkpoint_path) if checkpoint_path is not None else None,
                           {**dataclasses.asdict(config), "num_samples": len(loader.dataset)}, generator)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        start_epoch = saved.resume(model, optimizer, scheduler, device)
        if start_epoch:
            apply_masks(layers or [], masks or [])
        epochs = range(start_epoch, config.epochs)
        epochs = tqdm(epochs, desc=description, unit="epoch", initial=start_epoch, total=config.epochs) if progress else epochs
        loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        bf16 = amp and device.type == "cuda" and torch.cuda.is_bf16_supported()
        for epoch in epochs:
            _train_epoch(model, loader, optimizer, scheduler, loss_fn, device, masks, layers, augment, bf16)
            saved.save(epoch + 1, model, optimizer, scheduler, device)
    return model.eval()


def _checked_config(config: TrainConfig, masks: Any, layers: Any) -> TrainConfig:
    check_epochs(config.epochs, "config.epochs")
    if config.batch_size < 1:
        raise ConfigError(f"config.batch_size must be >= 1, got {config.batch_size}")
    if (masks is None) != (layers is None):
        raise ConfigError("pass masks and layers together (one mask per prunable layer)")
    return config


@dataclass
class _RunCheckpoint:
    """Where a training run is saved after every epoch (None: nowhere), and the fingerprint a
    checkpoint must match to be resumed."""

    path: Path | None
    fingerprint: dict[str, Any]
    generator: torch.Generator

    def resume(self, model: nn.Module, optimizer, scheduler, device: torch.device) -> int:
        """The epochs a checkpoint at ``path`` completed, restored into the run (0: none)."""
        if self.path is None or not self.path.exists():
            return 0
        return _resume(self.path, self.fingerprint, model, optimizer, scheduler, self.generator, device)

    def save(self, epochs_done: int, model: nn.Module, optimizer, scheduler, device: torch.device) -> None:
        if self.path is not None:
            _save_checkpoint(self.path, self.fingerprint, epochs_done, model, optimizer, scheduler, self.generator, device)


def _train_epoch(
    model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, loss_fn: nn.Module,
    device: torch.device, masks: Sequence[Tensor] | None, layers: Sequence[PrunableLayer] | None,
    augment: Augment | None, bf16: bool,
) -> None:
    """One pass over ``loader``; pruned weights (``masks``) stay exactly zero after every step."""
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if augment is not None:
            x = augment(x)
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(model(x), y)
        loss.backward()
        if masks is not None:
            _mask_gradients(layers, masks)
        optimizer.step()
        scheduler.step()
        if masks is not None:
            apply_masks(layers, masks)


def _save_checkpoint(
    path: Path,
    fingerprint: dict,
    epochs_done: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    device: torch.device,
) -> None:
    state = {
        "version": CHECKPOINT_VERSION,
        "fingerprint": fingerprint,
        "epochs_done": epochs_done,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "loader": generator.get_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        },
    }
    atomic_save(state, path)


def _resume(
    path: Path,
    fingerprint: dict,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    device: torch.device,
) -> int:
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # a truncated or foreign file: say which and how to recover
        raise ConfigError(
            f"cannot read the training checkpoint {path} ({error}); delete it to train from scratch"
        ) from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise ConfigError(
            f"{path} is not a prune-gym training checkpoint (version {CHECKPOINT_VERSION}); "
            "delete it or pass another checkpoint_path"
        )
    if state["fingerprint"] != fingerprint:
        raise ConfigError(
            f"the checkpoint {path} was written by another run ({state['fingerprint']}), not this "
            f"one ({fingerprint}): delete it to train from scratch, or pass another checkpoint_path"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"].cpu())
    generator.set_state(rng["loader"].cpu())
    if rng.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"].cpu(), device)
    return int(state["epochs_done"])


# --------------------------------------------------------------------------------------------
# Masked fine-tuning


def finetune_pruned(
    model: nn.Module,
    layers: Sequence[PrunableLayer],
    masks: Sequence[Tensor],
    data: Dataset | tuple[Tensor, Tensor],
    epochs: int | None = None,
    *,
    config: TrainConfig | None = None,
    lr: float | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    description: str = "fine-tune",
    checkpoint_path: str | Path | None = None,
    augment: Augment | None = None,
    amp: bool = False,
    seed: int | None = None,
) -> nn.Module:
    """Masked fine-tuning: train a pruned model with its masks re-applied after every step.

    The masks are applied first (so ``model`` may hold dense or already pruned weights); pruned
    weights are exactly zero throughout and at the end, whatever the momentum and weight decay.

    Args:
        model, layers, masks: the model, its prunable layers and one keep-mask per layer.
        data: the training split (a dataset of ``(input, label)`` pairs or a tensor tuple).
        epochs: overrides the recipe's epoch count (0 only applies the masks).
        config: the recipe (a task's is ``task.recipe("finetune")``); default
            ``DEFAULT_FINETUNE_RECIPE``. It is copied, never changed.
        lr, seed: override the recipe's learning rate / seed.
        device, progress, description, checkpoint_path, augment, amp: as in
            :func:`train_classifier` (so fine-tuning is resumable too).

    Returns:
        ``model``, fine-tuned in place, in eval mode.
    """
    config = dataclasses.replace(config if config is not None else DEFAULT_FINETUNE_RECIPE)
    if epochs is not None:
        config.epochs = check_epochs(epochs)
    if lr is not None:
        config.lr = float(lr)
    if seed is not None:
        config.seed = int(seed)
    return train_classifier(
        model, data, config, device=device, masks=masks, layers=layers, progress=progress,
        description=description, checkpoint_path=checkpoint_path, augment=augment, amp=amp,
    )


def _check_step_data(data: Any, batch_size: int, layers: Sequence[PrunableLayer]) -> tuple[Tensor, Tensor]:
    """:func:`finetune_steps`' data, batch size and layers checked: ``(inputs, labels)``."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise ConfigError("data must be an (inputs, labels) tuple of tensors, ideally on the model's device")
    inputs, labels = data
    if len(inputs) == 0 or len(inputs) != len(labels):
        raise ConfigError(f"inputs and labels must be non-empty and of equal length, got {len(inputs)} and {len(labels)}")
    if not layers:
        raise ConfigError("finetune_steps needs the model's prunable layers (find_prunable_layers(model))")
    return inputs, labels


def _train_mode(model: nn.Module, update_batchnorm: bool) -> None:
    """Training mode, with the BatchNorm layers kept in eval mode unless ``update_batchnorm``."""
    model.train()
    if not update_batchnorm:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def finetune_steps(
    model: nn.Module, layers: Sequence[PrunableLayer], masks: Sequence[Tensor], data: tuple[Tensor, Tensor],
    steps: int, lr: float = 0.01, *, batch_size: int = 64, momentum: float = 0.9, weight_decay: float = 5e-4,
    generator: torch.Generator | None = None, update_batchnorm: bool = True, augment: Augment | None = None,
) -> float:
    """A short masked retraining: ``steps`` SGD steps on random batches of ``data``.

    Meant for an environment that retrains briefly after each pruning step (the PuRL-style
    schedule). It is cheap: no DataLoader, no scheduler, nothing copied; batches are drawn with
    replacement from ``data``, which should already be tensors on the model's device (e.g. a
    slice of the train split, kept resident). Pruned weights stay exactly zero.

    Args:
        model, layers, masks: the (pruned) model, its prunable layers and their keep-masks, all
            on the same device.
        data: ``(inputs, labels)`` tensors, ideally on the model's device.
        steps: number of optimiser steps (0 does nothing).
        lr, momentum, weight_decay: plain SGD; the momentum buffer starts empty every call.
        batch_size: samples per step.
        generator: a CPU ``torch.Generator`` for the batch indices (seed it for reproducible
            episodes); torch's global generator if None.
        update_batchnorm: if True, BatchNorm layers run in training mode and update their running
            statistics, as in normal fine-tuning; if False they stay in eval mode, so only the
            trainable parameters change.
        augment: as in :func:`train_classifier`.

    Returns:
        The mean training loss over the steps (nan for 0 steps).

    Notes for an environment:
        - It changes every trainable parameter (and BatchNorm buffers with
          ``update_batchnorm=True``), not only the pruned layer: a reset must restore them all,
          e.g. with :func:`capture_state` once and :func:`restore_state` on every reset.
        - Later layers are retrained too, so pruning the next layer should rank its *current*
          weights, not a copy of its dense weights taken before the episode.
        - The model is left in the mode it was in (eval, for the next evaluation).
    """
    steps = check_epochs(steps, "steps")
    inputs, labels = _check_step_data(data, batch_size, layers)
    if steps == 0:
        return math.nan
    device = layers[0].weight.device
    masks = _checked_masks(layers, masks, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    was_training = model.training
    _train_mode(model, update_batchnorm)
    try:
        apply_masks(layers, masks)
        total_loss = sum(_masked_step(model, layers, masks, optimizer, loss_fn, inputs, labels, batch_size, generator,
                                      augment) for _ in range(steps))
    finally:
        model.train(was_training)
    return total_loss / steps


def _masked_step(model, layers, masks, optimizer, loss_fn, inputs: Tensor, labels: Tensor, batch_size: int,
                 generator: torch.Generator | None, augment: Augment | None) -> float:
    """One SGD step on a random batch (drawn with replacement), pruned weights held at zero; its loss."""
    device = layers[0].weight.device
    index = torch.randint(0, len(inputs), (batch_size,), generator=generator)
    x = inputs[index.to(inputs.device)].to(device, non_blocking=True)
    y = labels[index.to(labels.device)].to(device, non_blocking=True)
    if augment is not None:
        x = augment(x)
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    _mask_gradients(layers, masks)
    optimizer.step()
    apply_masks(layers, masks)
    return float(loss.detach())
