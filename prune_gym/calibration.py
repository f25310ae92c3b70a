"""BatchNorm re-calibration after pruning, and the model state an env rolls back to.

- ``recalibration_inputs`` is the seeded sample of the train split that the env and ``export``
  both re-calibrate on, so a recipe exports to a model that scores what the env reported.
- ``recalibrate_batchnorm`` re-estimates every BatchNorm's statistics on those inputs, without
  training; ``BatchNormCalibrator`` does it from one model stage on (earlier statistics cannot
  change after pruning a later layer: the result equals a full re-calibration), keeping the
  activations of the stage before the pruned layer, and captures / restores the statistics.
- ``capture_state`` / ``restore_state`` copy every parameter and buffer on the device (the
  env's reset after per-step fine-tuning, and the rollback of a failed step).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from prune_gym.errors import ConfigError
from prune_gym.evaluation import sample_tensors

#: Samples per BatchNorm re-calibration batch: enough for stable statistics, far cheaper than a
#: full evaluation batch (the env runs a train-mode forward after every step).
BN_RECALIBRATION_BATCH = 256
#: Seed of the train-split sample the calibration batches are drawn from (env and export alike).
BN_RECALIBRATION_SEED = 0
#: Train-split samples an env keeps on the device for BN re-calibration and per-step
#: fine-tuning; calibration uses at most these.
RESIDENT_TRAIN_SAMPLES = 4096


def recalibration_inputs(train_data, batches: int, device: torch.device | str = "cpu") -> Tensor:
    """The train images BatchNorm is re-calibrated on: ``batches`` x 256 of a fixed sample.

    The env re-calibrates on exactly these after every step, and ``export`` re-calibrates the
    exported model on them too, so an exported model scores what the env reported.
    """

    count = min(int(batches) * BN_RECALIBRATION_BATCH, RESIDENT_TRAIN_SAMPLES)
    inputs, _ = sample_tensors(train_data, count, seed=BN_RECALIBRATION_SEED)
    return inputs.to(device)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, inputs: Tensor, batch_size: int = 256) -> nn.Module:
    """Re-estimate every BatchNorm layer's running statistics on ``inputs``; no weight changes.

    Pruning shifts the activations each BatchNorm layer sees, so its running mean and variance
    no longer fit, and much of the accuracy lost right after pruning is that mismatch (on the
    digits task at 0.8 Global MP sparsity, test accuracy goes from about 22% to about 96% by
    this alone). The statistics are the plain average over the batches of ``inputs`` (as
    ``torch.optim.swa_utils.update_bn``); other layers stay in eval mode. ``inputs`` should be
    training images (never the reward or test split), on the model's device. Returns ``model``
    in eval mode.
    """
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model.eval()
    if len(inputs) == 0:
        raise ConfigError("recalibrate_batchnorm needs at least one input")
    # A full re-calibration is the calibrator without stages (one mechanism for both).
    BatchNormCalibrator(model, inputs, stages=None, batch_size=batch_size).recalibrate()
    return model.eval()


class BatchNormCalibrator:
    """:func:`recalibrate_batchnorm` after each pruning step, resumed from the changed stage.

    Layers are pruned in forward order. When a layer in stage ``s`` changes, the BatchNorm
    layers of stages before ``s`` see the same calibration inputs through unchanged weights, so
    their statistics cannot change, and neither can the activations (train-mode BatchNorm, batch
    statistics) that leave stage ``s - 1``. The calibrator keeps those activations for the
    stage of the next layer to change and re-estimates only the BatchNorm layers from ``s`` on,
    running only those stages. The result equals a full :func:`recalibrate_batchnorm` on the
    same inputs (a test compares them); without ``stages`` every call is a full one.

    Args:
        model: the model (on the device of ``inputs``).
        inputs: the calibration images (``recalibration_inputs``).
        stages: modules whose composition is ``model.forward`` (``evaluation.model_stages``),
            or None.
        batch_size: calibration batch size.
    """

    def __init__(self, model: nn.Module, inputs: Tensor, stages: Sequence[nn.Module] | None, batch_size: int = BN_RECALIBRATION_BATCH) -> None:
        if len(inputs) == 0:
            raise ConfigError("BatchNorm re-calibration needs at least one input")
        self.model = model
        self.batches = list(inputs.split(batch_size))
        self.stages = list(stages) if stages else None
        self.norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.stage_norms = (
            [[m for m in stage.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] for stage in self.stages]
            if self.stages else None
        )
        self._cached_stage: int | None = None
        self._cache: list[Tensor] = []

    def mark_changed(self, stage: int = 0) -> None:
        """Weights in ``stage`` changed outside :meth:`recalibrate` (0: anything, e.g. a reset)."""
        if self._cached_stage is not None and stage < self._cached_stage:
            self._cached_stage, self._cache = None, []

    def norms_from(self, stage: int) -> list[nn.Module]:
        """The BatchNorm layers a :meth:`recalibrate` from ``stage`` may change."""
        if self.stage_norms is None or stage <= 0:
            return list(self.norms)
        return [norm for norms in self.stage_norms[stage:] for norm in norms]

    @property
    def resume_stage(self) -> int:
        """The stage the next :meth:`recalibrate` starts at: the cached one (0: a full one)."""
        return self._cached_stage if self.stages is not None and self._cached_stage else 0

    def capture(self, changed_stage: int = 0) -> list[tuple[nn.Module, tuple[Tensor, ...]]]:
        """A copy of the statistics a :meth:`recalibrate` after a change in ``changed_stage``
        may change (0: all of them). With :meth:`restore`, the rollback of a failed step;
        cheaper than a copy of the model."""
        start = self.resume_stage if self.resume_stage <= changed_stage else 0
        return [(norm, tuple(t.clone() for t in _norm_buffers(norm))) for norm in self.norms_from(start)]

    @staticmethod
    @torch.no_grad()
    def restore(saved: list[tuple[nn.Module, tuple[Tensor, ...]]]) -> None:
        """Put back what :meth:`capture` took."""
        for norm, buffers in saved:
            for own, value in zip(_norm_buffers(norm), buffers, strict=True):
                own.copy_(value)

    @torch.no_grad()
    def recalibrate(self, keep_stage: int | None = None) -> int:
        """Re-estimate the statistics of every BatchNorm layer from the cached stage on (all of
        them when nothing is cached, or a stage before the cached one changed: what
        :meth:`mark_changed` was told); keep the calibration activations that enter
        ``keep_stage`` for the next call. Returns the first stage that was re-estimated."""
        start = self.resume_stage
        if not self.norms:
            return start
        norms = self.norms_from(start)
        keep = keep_stage if self.stages is not None and keep_stage is not None and start <= keep_stage < len(self.stages) else None
        momenta = [norm.momentum for norm in norms]
        self.model.eval()
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average over the batches
            norm.train()
        # BatchNorm layers before ``start`` are not re-estimated, but their outputs must be the
        # train-mode (batch statistics) outputs a full re-calibration computes: the cache holds them.
        new_cache: list[Tensor] = []
        try:
            for index, batch in enumerate(self.batches):
                if self.stages is None:
                    self.model(batch)
                    continue
                h = self._cache[index] if start > 0 else batch
                for stage_index in range(start, len(self.stages)):
                    if stage_index == keep:
                        new_cache.append(h)
                    h = self.stages[stage_index](h)
        finally:
            for norm, momentum in zip(norms, momenta, strict=True):
                norm.momentum = momentum
            for norm in self.norms:
                norm.eval()
        if keep is not None:
            self._cached_stage, self._cache = keep, new_cache
        else:
            self._cached_stage, self._cache = None, []
        return start


def _norm_buffers(norm: nn.Module) -> tuple[Tensor, ...]:
    return tuple(t for t in (norm.running_mean, norm.running_var, norm.num_batches_tracked) if t is not None)


def capture_state(model: nn.Module) -> dict[str, Tensor]:
    """A copy of every parameter and buffer of ``model``, on the device where each lives.

    Together with :func:`restore_state` this undoes any training in place (no model copy, no
    host-device transfer), e.g. on an environment's reset after :func:`finetune_steps`.
    """
    return {name: tensor.detach().clone() for name, tensor in model.state_dict(keep_vars=True).items()}


@torch.no_grad()
def restore_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy ``state`` (from :func:`capture_state`) back into ``model``'s tensors, bit for bit."""
    current = model.state_dict(keep_vars=True)
    if current.keys() != state.keys():
        raise ConfigError("state does not belong to this model: capture it with capture_state(model)")
    for name, tensor in current.items():
        tensor.copy_(state[name])
