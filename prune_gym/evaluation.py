"""The evaluator: accuracy of a model on a split, with the data resident on the device.

An episode's cost is the cost of its evaluations, so the evaluator keeps the split on the
device as ready tensors (decoded once, no DataLoader per step), runs in ``inference_mode`` with
large batches, in the ``channels_last`` memory format for image models (faster on CUDA and, measured
in ``benchmarks/``, on the CPU too), and with bf16/fp16 autocast on CUDA.

Activation cache: many models are a chain of stages (stem, residual blocks, head). Layers are
pruned in forward order, so when layer *t* in stage *s* changes, every stage before *s* is
unchanged since the last evaluation, and the input of stage *s* can be reused. The evaluator
keeps the input of one stage (the one the next changed layer lives in, ``accuracy(keep_stage)``);
the caller tells it which stage changed (:meth:`Evaluator.mark_changed`), the cache is dropped
whenever a stage before it changes, and the next evaluation resumes from the cached stage, so
results stay exactly those of a full forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from prune_gym.errors import ConfigError

#: A split given as ready tensors, a dataset of (input, label) pairs, or a DataLoader.
DataLike = tuple[Tensor, Tensor] | Dataset | DataLoader

#: Datasets up to this many samples are decoded once and kept on the device.
MAX_RESIDENT_SAMPLES = 20_000


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` is CUDA when present, else the CPU; anything else is passed to ``torch.device``."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} asked for CUDA, but no GPU is visible: use device='cpu' or 'auto'")
    return resolved


def as_tensors(data: DataLike, batch_size: int = 512, num_workers: int = 0) -> tuple[Tensor, Tensor]:
    """Decode a split once into ``(inputs, labels)`` CPU tensors."""
    if isinstance(data, tuple | list) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        inputs, labels = data
        if len(inputs) != len(labels):
            raise ConfigError(f"inputs and labels differ in length: {len(inputs)} vs {len(labels)}")
        return inputs, check_labels(labels)
    if isinstance(data, Dataset):
        data = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    if isinstance(data, DataLoader) and data.drop_last and data.batch_size and len(data.dataset) % data.batch_size:
        raise ConfigError(
            f"a DataLoader with drop_last=True would leave {len(data.dataset) % data.batch_size} of the split's "
            f"{len(data.dataset)} samples out of every accuracy: pass drop_last=False (or the Dataset itself)")
    if not isinstance(data, DataLoader):
        raise ConfigError(
            "data must be an (inputs, labels) tuple of tensors, a Dataset of (input, label) pairs "
            f"or a DataLoader, got {type(data).__name__}"
        )
    xs, ys = [], []
    for batch in data:
        if isinstance(batch, dict) or not isinstance(batch, tuple | list) or len(batch) != 2:
            what = f"a dict with keys {sorted(batch)}" if isinstance(batch, dict) else type(batch).__name__
            raise ConfigError(f"each sample of the split must be an (input, label) pair, got {what}: wrap the dataset "
                             "so that it returns (input, label)")
        xs.append(torch.as_tensor(batch[0]))
        ys.append(torch.as_tensor(batch[1]))
    if not xs:
        raise ConfigError("the split is empty: it needs at least one sample")
    return torch.cat(xs), check_labels(torch.cat(ys))


def check_labels(labels: Tensor, num_classes: int | None = None) -> Tensor:
    """Labels as a 1-D int64 tensor of class indices, or ValueError saying what is wrong.

    Catches what would otherwise give a silently wrong accuracy: labels of shape ``(N, 1)``
    (``argmax(1) == y`` would broadcast to ``(N, N)``), one-hot or soft labels, fractional or
    negative values, and (given ``num_classes``, the model's output width) labels the model
    cannot predict.
    """
    if labels.dim() != 1:
        hint = "squeeze the label tensor" if labels.dim() == 2 and labels.shape[1] == 1 else "give class indices (e.g. one_hot.argmax(1))"
        raise ConfigError(f"labels must be a 1-D tensor of class indices, got shape {tuple(labels.shape)}: {hint}")
    if labels.dtype == torch.bool or labels.is_complex():
        raise ConfigError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise ConfigError("labels must be integer class indices, got fractional values (soft labels?)")
    labels = labels.long()
    if len(labels) and int(labels.min()) < 0:
        raise ConfigError(f"labels must be class indices >= 0, got {int(labels.min())}")
    if num_classes is not None and len(labels) and int(labels.max()) >= num_classes:
        raise ConfigError(
            f"a label is {int(labels.max())} but the model has {num_classes} outputs: do the labels and the "
            f"model's classes match?"
        )
    return labels


def check_model_output(forward: Callable[[Tensor], Any], model: nn.Module, x: Tensor, split: str) -> int:
    """Run ``forward`` (the model, as it evaluates) on a few samples ``x`` of ``split`` and return
    the number of classes; ValueError naming the model and the split when it fails on them or does
    not return ``(batch, classes)`` logits."""
    name = type(model).__name__
    try:
        with torch.inference_mode():
            logits = forward(x)
    except (RuntimeError, TypeError, ValueError, IndexError) as error:
        raise ConfigError(
            f"{name} fails on the {split}'s inputs (shape {tuple(x.shape)}, dtype {x.dtype}): {error}"
        ) from None
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != len(x):
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ConfigError(
            f"{name} must return logits of shape (batch, classes) on the {split}; got {shape} "
            f"for a batch of {len(x)} (wrap the model so that forward returns one logits tensor)"
        )
    return int(logits.shape[1])


def check_split_labels(labels: Tensor, num_classes: int, split: str) -> None:
    """:func:`check_labels` against the model's classes, the error naming ``split``."""
    try:
        check_labels(labels, num_classes)
    except ValueError as error:
        raise ConfigError(f"{split}: {error}") from None


def check_finite_model(model: nn.Module) -> None:
    """ValueError naming the first parameter or buffer that holds NaN or infinity: such a network
    has no meaningful accuracy to prune from (a diverged training, a broken checkpoint)."""
    for kind, named in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, tensor in named:
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise ConfigError(f"the model's {kind} {name!r} holds {bad} NaN or infinite value(s): "
                                  "load a checkpoint whose weights are finite")


def sample_tensors(data: DataLike, count: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """The first ``count`` examples of a seeded random order of ``data``, as CPU tensors.

    The order depends only on ``len(data)`` and ``seed``, so a shorter sample is a prefix of a
    longer one: the env's resident train sample and an export's BatchNorm calibration batch
    (its first examples) are the same images. Only the chosen examples are decoded.
    """
    if isinstance(data, DataLoader):
        data = data.dataset
    if isinstance(data, tuple | list) and len(data) == 2 and len(data[0]) != len(data[1]):
        raise ConfigError(f"inputs and labels differ in length: {len(data[0])} vs {len(data[1])}")
    size = len(data[0]) if isinstance(data, tuple | list) else len(data)
    chosen = torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:count]
    if isinstance(data, tuple | list):
        return data[0][chosen], check_labels(data[1][chosen])
    return as_tensors(torch.utils.data.Subset(data, chosen.tolist()))


def model_stages(model: nn.Module) -> list[nn.Module] | None:
    """Modules whose composition in order equals ``model.forward``, or None if not known.

    Known here: models with a ``stages()`` method (this package's own models) and
    ``nn.Sequential``. A task knows its models' stages (``Task.model_stages``: the ImageNet tasks
    decompose torchvision's ResNet and MobileNet-V2) and hands them to the :class:`Evaluator`.
    """
    if callable(getattr(model, "stages", None)):
        return list(model.stages())
    if isinstance(model, nn.Sequential):
        return list(model)
    return None


def stage_of_modules(stages: Sequence[nn.Module], modules: Sequence[nn.Module]) -> list[int]:
    """For each module, the index of the stage that contains it."""
    owner: dict[int, int] = {}
    for index, stage in enumerate(stages):
        for sub in stage.modules():
            owner.setdefault(id(sub), index)
    missing = [m for m in modules if id(m) not in owner]
    if missing:
        raise ConfigError(f"{len(missing)} prunable module(s) are not inside any stage")
    return [owner[id(m)] for m in modules]


class Evaluator:
    """Top-1 accuracy of ``model`` on one split, fast and exact.

    Args:
        model: the model, already on ``device`` and in eval mode.
        data: the split (see :data:`DataLike`).
        device: where to evaluate.
        batch_size: evaluation batch size (large: no gradients are kept).
        amp: bf16 (or fp16) autocast on CUDA; ignored on the CPU.
        channels_last: channels-last memory format for 4-D inputs, on every device (on a 2-core
            CPU the digits ResNet-20 evaluates 1.4x faster with it, same predictions: see
            ``benchmarks/README.md``); False keeps the model's own format.
        cache_activations: reuse the input of the first changed stage (see module docstring).
        resident: keep the split on the device; None decides by size (MAX_RESIDENT_SAMPLES).
        num_workers: loader workers for a split that is not resident.
        stages: modules whose composition is ``model.forward``, for the activation cache
            (None: :func:`model_stages`; a task's ``model_stages`` knows more models).
        compile: run the passes through ``torch.compile``, each stage on its own (the cache still
            resumes from the changed one), else the whole model. Masking weights in place needs
            no recompilation. The first pass pays the compilation (ResNet-50 on an H200: 17 s,
            then 1.48x eager).
    """

    def __init__(
        self,
        model: nn.Module,
        data: DataLike,
        device: torch.device | str = "cpu",
        batch_size: int = 1024,
        amp: bool = True,
        channels_last: bool = True,
        cache_activations: bool = True,
        resident: bool | None = None,
        num_workers: int = 0,
        stages: Sequence[nn.Module] | None = None,
        compile: bool = False,
    ) -> None:
        if not isinstance(compile, bool):
            raise ConfigError(f"compile must be True or False, got {compile!r}")
        self.model, self.compiled = model, compile
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size}")
        on_cuda = self.device.type == "cuda"
        self.amp_dtype: torch.dtype | None = None
        if amp and on_cuda:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if resident is None:
            resident = not isinstance(data, Dataset | DataLoader) or _length(data) <= MAX_RESIDENT_SAMPLES
        self.loader: DataLoader | None = None
        self.batches: list[tuple[Tensor, Tensor]] = []
        if resident:
            self._hold_on_device(data, num_workers, channels_last)
        else:
            self._stream(data, num_workers, channels_last)
        if self.num_samples == 0:
            raise ConfigError("the split is empty: it needs at least one sample")
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if stages is None:
            stages = model_stages(model)
        self.stages = list(stages) if stages is not None and cache_activations and resident else None
        # What the passes call: the stages and the model, compiled or as they are.
        self._run_stages = [torch.compile(stage) for stage in self.stages] if compile and self.stages else self.stages
        self._forward = torch.compile(model) if compile else model
        self._cached_stage: int | None = None
        self._cache: list[Tensor] = []
        #: Which samples the last :meth:`accuracy` got right (None once the weights changed).
        self._last_hits: Tensor | None = None

    def _hold_on_device(self, data: DataLike, num_workers: int, channels_last: bool) -> None:
        """The whole split as batches of tensors on the device (read once)."""
        inputs, labels = as_tensors(data, num_workers=num_workers)
        self.channels_last = channels_last and inputs.dim() == 4
        inputs = inputs.to(self.device, non_blocking=True)
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        labels = labels.to(self.device, non_blocking=True)
        self.batches = list(zip(inputs.split(self.batch_size), labels.split(self.batch_size)))
        self.num_samples = len(labels)
        self.sample_shape = tuple(inputs.shape[1:])

    def _stream(self, data: DataLike, num_workers: int, channels_last: bool) -> None:
        """A loader that reads the split again at every pass (too large to hold on the device)."""
        dataset = data.dataset if isinstance(data, DataLoader) else data
        self.loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=num_workers,
                                 pin_memory=self.device.type == "cuda")
        self.num_samples = len(dataset)
        self.sample_shape = tuple(torch.as_tensor(dataset[0][0]).shape) if self.num_samples else ()
        self.channels_last = channels_last and len(self.sample_shape) == 3

    @property
    def resident(self) -> bool:
        """Whether the split is held on the device as tensors (else a loader reads it per pass)."""
        return self.loader is None

    def check(self, split: str = "split") -> int:
        """Run the model on two samples and check its output against the labels; returns the
        number of classes. Raises ValueError naming the model and ``split`` when the model
        fails on the inputs, does not return ``(batch, classes)`` logits, or a label is out of
        range, so a bad split fails at construction, not at the first wrong number."""
        if self.loader is not None:
            first, y = next(iter(self.loader))
            x, y = first[:2].to(self.device), check_labels(torch.as_tensor(y))
        else:
            x, y = self.batches[0][0][:2], self.batches[0][1]
        # No compilation for a two-sample check: the eager model, under the evaluation's autocast.
        num_classes = check_model_output(lambda batch: self._logits(batch, eager=True), self.model, x, split)
        inputs = [x for x, _ in self.batches] if self.loader is None else [torch.as_tensor(first)]
        if any(x.is_floating_point() and not bool(torch.isfinite(x).all()) for x in inputs):
            bad = sum(int((~torch.isfinite(x)).reshape(len(x), -1).any(1).sum()) for x in inputs if x.is_floating_point())
            where = "" if self.loader is None else " (in its first batch)"
            raise ConfigError(f"{split}: {bad} input sample(s){where} hold NaN or infinite values: clean or drop them "
                              "(every accuracy would count them as whatever class NaN logits argmax to)")
        labels = torch.cat([labels for _, labels in self.batches]) if self.loader is None else y
        check_split_labels(labels, num_classes, split)
        return num_classes

    # -- cache bookkeeping -----------------------------------------------------------------

    def mark_changed(self, stage: int = 0) -> None:
        """Tell the evaluator that weights in ``stage`` changed (0: anything, e.g. a reset)."""
        self._last_hits = None
        if self._cached_stage is not None and stage < self._cached_stage:
            self._cached_stage = None
            self._cache = []

    @property
    def cached_stage(self) -> int | None:
        return self._cached_stage

    # -- evaluation ----------------------------------------------------------------------

    @torch.inference_mode()
    def accuracy(self, keep_stage: int | None = None) -> float:
        """Top-1 accuracy in [0, 1].

        Resumes from the cached input of a stage when no earlier stage changed since it was
        cached (what :meth:`mark_changed` was told), else runs the whole network; caches the
        input of ``keep_stage`` (the stage of the next layer to change) for the next call.
        Without ``keep_stage`` nothing is cached, so a caller that never passes one never
        needs :meth:`mark_changed`. Which samples it got right is kept for
        :meth:`last_correct` until the weights change.
        """
        if self.loader is not None:
            hits = self.correct()
        elif self.stages is None:
            hits = torch.cat([self._logits(x).argmax(1) == y for x, y in self.batches])
        else:
            hits = self._staged_hits(keep_stage)
        self._last_hits = hits
        return int(hits.sum()) / self.num_samples

    def _staged_hits(self, keep_stage: int | None) -> Tensor:
        start = self._cached_stage or 0
        # A stage past the end has no input to cache; keeping it would leave an empty cache.
        keep = keep_stage if keep_stage is not None and start <= keep_stage < len(self.stages) else None
        hits: list[Tensor] = []
        new_cache: list[Tensor] = []
        for index, (x, y) in enumerate(self.batches):
            h = self._cache[index] if start > 0 else x
            with self._autocast():
                for stage_index in range(start, len(self.stages)):
                    if stage_index == keep:
                        new_cache.append(h)
                    h = self._run_stages[stage_index](h)
            hits.append(h.argmax(1) == y)
        if keep is not None:
            self._cached_stage, self._cache = keep, new_cache
        return torch.cat(hits)

    def last_correct(self) -> Tensor:
        """Per-sample correctness (bool, CPU, split order) of the network as the last
        :meth:`accuracy` scored it; a full pass (:meth:`correct`) when the weights changed since
        (what :meth:`mark_changed` was told) or nothing was scored yet."""
        return self.correct() if self._last_hits is None else self._last_hits.cpu()

    @torch.inference_mode()
    def logits(self) -> Tensor:
        """Full-forward logits for the whole split (float32), for tests and analysis."""
        if self.loader is not None:
            return torch.cat([self._logits(x.to(self.device)).float() for x, _ in self.loader])
        return torch.cat([self._logits(x).float() for x, _ in self.batches])

    @torch.inference_mode()
    def correct(self, model: nn.Module | None = None) -> Tensor:
        """Whether each sample of the split is classified right: a bool CPU tensor in split
        order, from a full forward pass (for paired tests between two pruned models). ``model``:
        another network to score on this split (e.g. a fine-tuned smaller one; in eval mode, on
        this evaluator's device), instead of the evaluator's."""
        if self.loader is None:
            return torch.cat([(self._logits(x, forward=model).argmax(1) == y).cpu() for x, y in self.batches])
        parts = []
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True)
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            parts.append(self._logits(x, forward=model).argmax(1).cpu() == torch.as_tensor(y))
        return torch.cat(parts)

    def _logits(self, x: Tensor, eager: bool = False, forward: nn.Module | None = None) -> Tensor:
        with self._autocast():
            if forward is None:
                forward = self.model if eager else self._forward
            return forward(x)

    def _autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def _length(data: Dataset | DataLoader) -> int:
    return len(data.dataset if isinstance(data, DataLoader) else data)


def evaluate_accuracy(
    model: nn.Module, data: DataLike, device: torch.device | str = "auto", batch_size: int = 1024, amp: bool = True
) -> float:
    """One-off top-1 accuracy of ``model`` on ``data`` (moves the model to ``device``, in eval
    mode). The evaluation runs in ``channels_last`` for image inputs, as the envs do; the model's
    parameters are given back in the memory format they came in (a latency measured afterwards
    compares like with like)."""
    device = resolve_device(device)
    model = model.to(device).eval()
    contiguous = [param for param in model.parameters() if param.is_contiguous()]
    try:
        return Evaluator(model, data, device, batch_size=batch_size, amp=amp, cache_activations=False).accuracy()
    finally:
        for param in contiguous:
            if not param.is_contiguous():
                param.data = param.data.contiguous()

