"""The pruning engine under :class:`~prune_gym.envs.prune_env.PruneEnv`: the network, its masks
and what one pruning step does to them.

The env decides how many weights a layer loses (actions, budget, reward, observation); the
engine carries it out: it masks the layer's smallest weights, re-calibrates BatchNorm or
fine-tunes as configured, evaluates the reward split from the first stage that changed, rolls
a failed step back, and restores the dense network bit for bit on reset (an env over a heavy
engine, as CompilerGym's envs are).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from prune_gym.accounting import layer_flops
from prune_gym.calibration import (
    BN_RECALIBRATION_BATCH,
    BN_RECALIBRATION_SEED,
    RESIDENT_TRAIN_SAMPLES,
    BatchNormCalibrator,
    capture_state,
    restore_state,
)
from prune_gym.envs.settings import EngineConfig
from prune_gym.errors import ConfigError
from prune_gym.evaluation import (
    DataLike,
    Evaluator,
    check_finite_model,
    check_model_output,
    check_split_labels,
    sample_tensors,
    stage_of_modules,
)
from prune_gym.finetune import finetune_steps
from prune_gym.pruning import PruningState, find_prunable_layers, keep_top_mask

__all__ = ["PruningEngine"]


class PruningEngine:
    """A trained network, its prunable layers and the splits it is evaluated on.

    Args:
        model: the network, on ``device`` and in eval mode.
        reward_data, test_data, train_data: the splits (``test_data`` and ``train_data`` may be
            None; ``train_data`` is needed for re-calibration and fine-tuning).
        config: the device, the evaluation settings (batch size, AMP, channels-last, activation
            cache, compile: see :class:`~prune_gym.evaluation.Evaluator`), the layers never
            pruned, what follows each pruning step (re-calibration, fine-tuning) and the
            fine-tuning seed (:class:`~prune_gym.envs.settings.EngineConfig`).
        stages: modules whose composition is ``model.forward`` (a task's ``model_stages``), or
            None to let the evaluator find them.

    Raises:
        ValueError: naming the split, if a split does not fit the model (checked here, not at
            the last step of the first episode).
    """

    def __init__(
        self, model: nn.Module, reward_data: DataLike, test_data: DataLike | None, train_data: DataLike | None,
        config: EngineConfig, *, stages: Sequence[nn.Module] | None = None,
    ) -> None:
        check_finite_model(model)
        self.config = config
        self.model, self.device = model, config.device
        device, cache_activations = config.device, config.cache_activations
        self.train_data, self.test_data = train_data, test_data
        options = config.evaluator_options()
        self.evaluator = Evaluator(model, reward_data, device, cache_activations=cache_activations, stages=stages, **options)
        self.num_classes = self.evaluator.check("reward split")
        self.test_evaluator: Evaluator | None = None
        if test_data is not None:
            self.test_evaluator = Evaluator(model, test_data, device, cache_activations=False, **options)
            if self.test_evaluator.sample_shape != self.evaluator.sample_shape:
                raise ConfigError(
                    f"the test split's inputs have shape {self.test_evaluator.sample_shape} per sample, the reward "
                    f"split's {self.evaluator.sample_shape}: give both splits in the model's input shape"
                )
            self.test_evaluator.check("test split")

        example = _example_input(reward_data, device)
        self.layers = find_prunable_layers(model, example_input=example, exclude_names=config.exclude_layers)
        self.state = self._build_state(model)
        self.layer_flops = layer_flops(model, example, self.layers)
        stages = self.evaluator.stages
        modules = [layer.module for layer in self.layers]
        self.layer_stage = stage_of_modules(stages, modules) if stages else [0] * len(self.layers)
        #: The stage where each unit a step prunes starts (a layer here; a channel group in
        #: ``ChannelEngine``): evaluation and re-calibration resume from it.
        self.unit_stage = self.layer_stage
        # Fine-tuning changes every parameter and buffer: keep a device copy of all of them to
        # reset from. Re-calibration alone changes only BatchNorm statistics: keep those.
        self._full_snapshot = capture_state(model) if config.finetune_steps else None
        self._train_tensors: tuple[Tensor, Tensor] | None = None
        if config.bn_recalibration_batches or config.finetune_steps:
            self._check_train_split()
        self.calibrator: BatchNormCalibrator | None = None
        if config.bn_recalibration_batches:
            inputs = self.resident_train()[0][: config.bn_recalibration_batches * BN_RECALIBRATION_BATCH]
            self.calibrator = BatchNormCalibrator(model, inputs, stages if cache_activations else None)
        self._norm_snapshot = self.calibrator.capture(0) if self.calibrator is not None else None
        self._generator = torch.Generator().manual_seed(config.seed)
        #: Test accuracy of the dense network, once :meth:`measure_dense_test_accuracy` ran.
        self.dense_test_accuracy: float | None = None
        #: Per-sample correctness (bool, CPU) of the last :meth:`test_accuracy`, for paired tests.
        self.last_test_correct: Tensor | None = None
        #: What :meth:`rollback` restores: the last pruning step's previous state.
        self._undo: tuple | None = None

    def _build_state(self, model: nn.Module) -> PruningState | None:
        """The weight masks and a device copy of the dense weights (a subclass with other units
        keeps its own copies and returns None)."""
        return PruningState(model, self.layers)

    # -- one step ------------------------------------------------------------------------------

    def prune(self, index: int, count: int) -> float:
        """Prune the ``count`` smallest weights of layer ``index`` (of the dense weights, or of
        the retrained ones when fine-tuning), re-calibrate / fine-tune as configured, and return
        the reward-split accuracy. A step that fails leaves the network as it was before it; a
        step that succeeded can still be taken back with :meth:`rollback` (the env does when
        what follows the pruning, its reward or the test evaluation, fails)."""
        # What the step may change besides the mask, for the rollback.
        before_step = capture_state(self.model) if self._full_snapshot is not None else None
        self._undo = (
            index, self._unit_mask(index), before_step,
            self.calibrator.capture(self.unit_stage[index]) if self.calibrator is not None and before_step is None else None,
            self._generator.get_state(),
        )
        try:
            self._mask_unit(index, count)
            self._after_weights_changed(index)
            return self.evaluator.accuracy(keep_stage=self._next_stage(index))
        except BaseException:
            self.rollback()
            raise

    def _mask_unit(self, index: int, count: int) -> None:
        """Prune ``count`` weights of layer ``index``, the smallest first."""
        numel = self.state.numels[index]
        if self.config.finetune_steps:
            # Retrained weights differ from the dense copy: rank the current ones.
            self.state.prune_current(index, keep_top_mask(self.layers[index].weight, numel - count))
        else:
            self.state.set_mask(index, keep_top_mask(self.state.dense[index], numel - count))

    def _unit_mask(self, index: int):
        """What :meth:`_put_unit_mask` needs to put unit ``index`` back as it is now."""
        return self.state.masks[index].clone()

    def _put_unit_mask(self, index: int, mask) -> None:
        self.state.set_mask(index, mask)

    def _all_masks(self):
        """Every unit's mask as it is now (for :meth:`_put_all_masks`), without touching weights."""
        return [mask.clone() for mask in self.state.masks]

    def _put_all_masks(self, masks) -> None:
        """Record ``masks`` as the units' masks; the weights are put back separately."""
        for own, mask in zip(self.state.masks, masks, strict=True):
            own.copy_(mask)

    def _restore_units(self) -> None:
        self.state.restore()

    def rollback(self) -> None:
        """Put the network back as it was before the last :meth:`prune` (mask, parameters or
        BatchNorm statistics, the fine-tuning generator); a no-op when there is nothing to undo."""
        if self._undo is None:
            return
        index, previous_mask, before_step, norms_before, generator_state = self._undo
        self._undo = None
        if before_step is not None:
            restore_state(self.model, before_step)
            self.state.masks[index].copy_(previous_mask)
        else:
            self._put_unit_mask(index, previous_mask)
        if norms_before is not None:
            BatchNormCalibrator.restore(norms_before)
        self._generator.set_state(generator_state)
        self._mark_changed(0)

    def _next_stage(self, index: int) -> int | None:
        return self.unit_stage[index + 1] if index + 1 < len(self.unit_stage) else None

    def _after_weights_changed(self, index: int) -> None:
        """Fine-tune / re-calibrate as configured, and tell the evaluator the first stage whose
        output changed (it resumes from its cache when that is not before the cached stage)."""
        stage = self.unit_stage[index]
        if self.config.finetune_steps:
            finetune_steps(
                self.model, self.layers, self.state.masks, self.resident_train(), self.config.finetune_steps,
                lr=self.config.finetune_lr, generator=self._generator,
            )
            stage = 0
        if self.calibrator is not None:
            # Statistics before ``stage`` cannot change: re-estimate from there on (exact).
            self.calibrator.mark_changed(stage)
            stage = self.calibrator.recalibrate(keep_stage=self._next_stage(index))
        self.evaluator.mark_changed(stage)

    def _mark_changed(self, stage: int) -> None:
        self.evaluator.mark_changed(stage)
        if self.calibrator is not None:
            self.calibrator.mark_changed(stage)

    # -- the dense network and the test split --------------------------------------------------

    def restore_dense(self, seed: int | None = None) -> None:
        """The dense trained network, bit for bit, from the device copies (masks, and
        parameters or statistics); ``seed`` re-seeds the fine-tuning generator."""
        self._restore_units()
        self.last_test_correct = None
        self._undo = None
        if self._full_snapshot is not None:
            restore_state(self.model, self._full_snapshot)
        if self._norm_snapshot is not None:
            BatchNormCalibrator.restore(self._norm_snapshot)
        self._mark_changed(0)
        if seed is not None:
            self._generator.manual_seed(seed)

    def test_accuracy(self) -> float:
        """Test-split accuracy of the network as it is now (pruned or dense)."""
        if self.test_evaluator is None:
            raise ConfigError("no test split: pass test_data= (or use a task) to get test accuracy")
        self.last_test_correct = self.test_evaluator.correct()
        return int(self.last_test_correct.sum()) / len(self.last_test_correct)

    def reward_correct(self) -> Tensor:
        """Per-sample correctness (bool, CPU) of the network as it is now on the reward split:
        kept from the evaluation that scored the last step, no second pass."""
        return self.evaluator.last_correct()

    def measure_dense_test_accuracy(self) -> float:
        """Test accuracy of the dense network (measured once, then the pruned state is put back)."""
        if self.dense_test_accuracy is None:
            pruned = capture_state(self.model)
            masks = self._all_masks()
            # The pruned model's correctness (for paired tests) and undo record survive the detour.
            last_test_correct, undo = self.last_test_correct, self._undo
            self.restore_dense()
            self.dense_test_accuracy = self.test_accuracy()
            self.last_test_correct, self._undo = last_test_correct, undo
            restore_state(self.model, pruned)
            self._put_all_masks(masks)
            self._mark_changed(0)
        return self.dense_test_accuracy

    def _check_train_split(self) -> None:
        """The train split fits the model (re-calibration and fine-tuning read it at every step):
        checked here, not at the first step."""
        try:
            inputs, labels = self.resident_train()
        except ValueError as error:
            raise ConfigError(f"train split: {error}") from None
        num_classes = check_model_output(self.model, self.model, inputs[:2], "train split")
        check_split_labels(labels, num_classes, "train split")

    def resident_train(self) -> tuple[Tensor, Tensor]:
        """A fixed random sample of the train split, decoded once and kept on the device."""
        if self._train_tensors is None:
            # The same seeded order as ``recalibration_inputs``: export calibrates on a prefix.
            inputs, labels = sample_tensors(self.train_data, RESIDENT_TRAIN_SAMPLES, seed=BN_RECALIBRATION_SEED)
            self._train_tensors = (inputs.to(self.device), labels.to(self.device))
        return self._train_tensors


def _example_input(data: DataLike, device: torch.device) -> Tensor:
    if isinstance(data, tuple | list):
        sample = data[0][:1]
    else:
        dataset = data.dataset if isinstance(data, torch.utils.data.DataLoader) else data
        sample = torch.as_tensor(dataset[0][0]).unsqueeze(0)
    return sample.to(device)
