"""Train a task's model from scratch and save it where the task looks for its weights.

``pretrain("fastgrnn-har2", data_dir=...)`` (CLI: ``prune-gym pretrain TASK``) builds the
task's architecture, trains it on the train split with the task's own recipe
(``Task.pretrain_recipe``, set in each task's file: SGD with Nesterov momentum, cosine learning
rate stepped per batch; the digits task's is the recipe of its cached model, so the result
equals it), reports the test accuracy and saves the weights atomically to ``output`` or the
task's default weights path. The CIFAR-10 tasks (``Task.train_augment``) decode the train split
once and take random crops (4-pixel zero padding) and flips of tensor batches on the device;
ImageNet trains from the data folder through worker processes with its loader's augmentation.

Resumable: after every epoch, model, optimiser, scheduler, epoch count and random state are
saved atomically to ``<output>.partial``. ``resume=True`` continues from it and ends exactly as
an uninterrupted run would (same machine); Ctrl-C leaves the last completed epoch there. The
partial checkpoint is removed once the final weights are saved; without ``resume`` an old one
is discarded and training starts from scratch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from prune_gym.errors import ConfigError
from prune_gym.evaluation import Evaluator, as_tensors, resolve_device
from prune_gym.finetune import Augment, TrainConfig, train_classifier
from prune_gym.io import atomic_save, check_writable_path
from prune_gym.tasks import get_task
from prune_gym.tasks.base import Splits, Task

logger = logging.getLogger(__name__)

def pretrain_recipe(task: Task) -> TrainConfig:
    """The recipe ``pretrain`` uses for ``task`` (a fresh copy of ``task.pretrain_recipe``)."""
    return task.recipe("pretrain")


def default_output(task: Task) -> Path:
    """Where the task loads its trained weights from by default."""
    return Path(task.default_weights_path())


def partial_path(output: str | os.PathLike) -> Path:
    """The resumable checkpoint kept next to ``output`` while training runs."""
    output = Path(output)
    return output.with_name(output.name + ".partial")




def pretrain(
    task_name: str, data_dir: str | os.PathLike | None = None, epochs: int | None = None,
    output: str | os.PathLike | None = None, resume: bool = False, device: str | torch.device = "auto",
    progress: bool = True, seed: int = 0,
) -> Path:
    """Train ``task_name``'s model from scratch; return the path of the saved weights.

    Args:
        task_name: a task name or env id (``"fastgrnn-har2"``, ``"PruneResNet32CIFAR10-v1"``).
        data_dir: the task's data folder (else its environment variable, e.g. ``$PRUNE_GYM_HAR_DIR``).
        epochs: overrides the recipe's number of epochs (the cosine schedule spans them all).
        output: where to save the weights; default: the task's default weights path, so
            ``load_model()`` finds them.
        resume: continue from ``<output>.partial`` if it exists (same task, recipe and epochs).
        device: ``"auto"`` (CUDA if present), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        progress: show a progress bar and report the test accuracy on stderr.
        seed: split seed (the task's ``load_splits(seed=)``), initialisation and shuffling seed.

    The saved file is ``{"state_dict", "task", "recipe", "test_accuracy"}``; every task's
    ``load_model(weights=PATH)`` reads it.

    Raises:
        ValueError: unknown task, bad ``epochs`` or ``device``, or a partial checkpoint from
            another run when resuming.
        MissingResourceError: if the task's data is not found.
    """
    task = get_task(task_name)
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ConfigError(f"epochs must be a whole number >= 1, got {epochs!r}")
    torch_device = resolve_device(device)
    config = dataclasses.replace(pretrain_recipe(task), seed=seed)
    if epochs is not None:
        config.epochs = epochs
    output = check_writable_path(Path(output).expanduser() if output is not None else default_output(task), "output")
    checkpoint = partial_path(output)
    # Data first: a missing folder must not cost the user a partial checkpoint.
    splits, train, augment, loader_workers, amp = _training_data(task, data_dir, seed, torch_device)
    _resume_or_start_anew(checkpoint, resume)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = task.build_model()
    logger.info(
        f"training {task.name} ({task.architecture} on {task.dataset}) on {torch_device} for "
        f"{config.epochs} epochs ({len(splits.train)} training samples)"
    )
    try:
        train_classifier(model, train, config, device=torch_device, progress=progress, description=f"pretrain {task.name}",
                         checkpoint_path=checkpoint, augment=augment, amp=amp, num_workers=loader_workers)
    except KeyboardInterrupt:
        if checkpoint.exists():
            logger.warning(f"interrupted; continue with `prune-gym pretrain {task.name} --resume` (checkpoint {checkpoint})")
        raise

    accuracy = Evaluator(model, splits.test, device=torch_device, cache_activations=False).accuracy()
    model.cpu()
    atomic_save({"state_dict": model.state_dict(), "task": task.name, "recipe": dataclasses.asdict(config),
                 "test_accuracy": accuracy}, output)
    checkpoint.unlink(missing_ok=True)
    logger.info(f"test accuracy {accuracy:.4f} ({len(splits.test)} samples); weights saved to {output}")
    return output


def _resume_or_start_anew(checkpoint: Path, resume: bool) -> None:
    """Keep the partial checkpoint to resume from, or discard it: ``train_classifier`` resumes
    from any checkpoint it finds, so without ``resume`` an old one must go."""
    if resume and checkpoint.exists():
        logger.info(f"resuming from {checkpoint}")
    elif checkpoint.exists():
        logger.info(f"discarding the partial checkpoint {checkpoint} (pass resume=True / --resume to continue it)")
        checkpoint.unlink()
    elif resume:
        logger.info(f"no partial checkpoint at {checkpoint}: training from scratch")


def _training_data(
    task: Task, data_dir: str | os.PathLike | None, seed: int, device: torch.device
) -> tuple[Splits, Dataset | tuple[Tensor, Tensor], Augment | None, int, bool]:
    """``(splits, training data, augment, loader workers, amp)`` for the task's family."""
    on_cuda = device.type == "cuda"
    if task.streams_train_split:
        # Too large to decode up front: stream through workers with the task's own augmentation.
        splits = task.training_splits(data_dir, seed=seed)
        return splits, splits.train, None, min(8, os.cpu_count() or 1), on_cuda
    splits = task.load_splits(data_dir, seed=seed)
    if task.train_augment is not None:
        # Decoded once; the task's augmentation then runs on tensor batches on the device.
        return splits, as_tensors(splits.train), task.train_augment, 0, on_cuda
    return splits, splits.train, None, 0, False
