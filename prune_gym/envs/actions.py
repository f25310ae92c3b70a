"""How an action becomes a layer's sparsity: steps around Global MP, or absolute levels.

Two parametrisations (``PruneEnv(action_mode=...)``):

- ``"relative"`` (the default since v1): an action is a step in logit space away from the
  layer's *reference sparsity*, Global MP's sparsity for the layer with the keep budget that
  the earlier layers left spread over the remaining ones (:func:`reference_sparsity`). The
  centre action (``n_actions`` is odd) takes the reference exactly, so playing it at every
  step reproduces Global MP bit for bit, and an under-pruned start is paid back by every
  remaining layer in proportion to what Global MP keeps there, never by the last layers alone.
  Steps are fine where it matters: with the defaults (11 steps over [-1, 1]) one step of 0.2
  changes the weights a layer keeps by about 18% at sparsity 0.9 and at 0.99 alike, where
  absolute levels 0.09 apart keep 10 times more weights at 0.90 than at 0.99.
- ``"absolute"`` (v0's): the action is the sparsity itself, one of ``n_actions`` evenly
  spaced levels in ``[min_sparsity, max_sparsity]`` (discrete) or the interval mapped
  linearly onto ``[-1, 1]`` (continuous). Recipes and search allocations are replayed exactly
  through a continuous absolute env.

Everything here is a pure function of numbers (no torch), shared by the env and the reference
policies (which map their per-layer sparsities to actions with :meth:`ActionMap.to_actions`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from gymnasium import spaces

from prune_gym.errors import ConfigError

ACTION_TYPES = ("discrete", "continuous")
ACTION_MODES = ("relative", "absolute")
#: Largest step away from the reference, in logit space (discrete levels span [-R, R]).
DEFAULT_RELATIVE_RANGE = 1.0
#: The widest range accepted: a step of 5 in logit space already moves a layer's keep ~150-fold.
MAX_RELATIVE_RANGE = 5.0
#: Default number of discrete actions per mode (odd for "relative": one action is the reference).
DEFAULT_N_ACTIONS = {"relative": 11, "absolute": 12}
# The logit of a reference of 0 (a layer Global MP leaves dense) or 1 is infinite: steps start
# from the reference clipped into this interval (the centre action still takes it exactly).
_LOGIT_LOW, _LOGIT_HIGH = 0.01, 0.999
# Sparsities this close to the reference request the centre action (float32 observations).
_SAME = 1e-6

__all__ = [
    "ACTION_MODES",
    "ACTION_TYPES",
    "DEFAULT_N_ACTIONS",
    "DEFAULT_RELATIVE_RANGE",
    "ActionMap",
    "feasible_counts",
    "reference_sparsity",
    "spread_bounds",
]


def _logit(values: np.ndarray) -> np.ndarray:
    values = np.clip(values, _LOGIT_LOW, _LOGIT_HIGH)
    return np.log(values / (1.0 - values))


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values))


def reference_sparsity(
    index: int, numels: Sequence[int], global_mp_counts: Sequence[int], pruned_so_far: int, target_count: int | None
) -> float:
    """The sparsity of layer ``index`` that keeps the remaining layers on Global MP's course.

    Global MP keeps ``numels[i] - global_mp_counts[i]`` weights in layer ``i``. The weights the
    network may still keep (all weights minus the target count, minus what layers before
    ``index`` kept) are shared among the layers from ``index`` on in proportion to what Global
    MP keeps in them. If every earlier layer followed Global MP, the share is Global MP's own
    count, exactly. With no target (``target_count=None``), Global MP's sparsity as it is.
    """
    numel = numels[index]
    if target_count is None:
        return global_mp_counts[index] / numel
    total = sum(numels)
    kept_before = sum(numels[:index]) - pruned_so_far
    keep_budget = (total - target_count) - kept_before
    global_mp_keep_rest = sum(n - c for n, c in zip(numels[index:], global_mp_counts[index:], strict=True))
    if global_mp_keep_rest <= 0:
        return global_mp_counts[index] / numel
    if keep_budget == global_mp_keep_rest:  # on course: Global MP's count, exactly
        return global_mp_counts[index] / numel
    keep = (numel - global_mp_counts[index]) * keep_budget / global_mp_keep_rest
    return float(min(max(1.0 - keep / numel, 0.0), 1.0))


def spread_bounds(
    index: int, numels: Sequence[int], global_mp_counts: Sequence[int], pruned_so_far: int, target_count: int,
    relative_range: float, min_sparsity: float = 0.0, max_sparsity: float = 1.0,
) -> tuple[int, int]:
    """Bounds on the weights layer ``index`` may lose so that every layer after it can still keep
    between ``exp(-relative_range)`` and ``exp(relative_range)`` times what Global MP keeps in it,
    within its cap (``[min_sparsity, max_sparsity]``): one layer's choice cannot leave a later
    layer (in the end, the last small one) to be emptied, nor hand the rest more than they can use.

    Each later layer ``j`` keeps between ``max(keep_j / e^R, what its cap leaves)`` and
    ``min(keep_j * e^R, what its floor leaves)`` weights; layer ``index`` loses what leaves the
    rest, together, within the sums of those. If every layer chooses within its bounds, the next
    layer's bounds are never empty (the interval argument), so the caps of large layers near
    ``max_sparsity`` cannot push an earlier layer's deficit onto the last one.
    ``(low, high)`` pruned counts (``low > high`` when the earlier layers already left the rest
    outside those bounds)."""
    numel = numels[index]
    total = sum(numels)
    keep_budget = (total - target_count) - (sum(numels[:index]) - pruned_so_far)
    low_keep = high_keep = 0.0
    for n, count in zip(numels[index + 1:], global_mp_counts[index + 1:], strict=True):
        keep = n - count
        low_keep += max(keep * math.exp(-relative_range), n - math.floor(max_sparsity * n))
        high_keep += min(keep * math.exp(relative_range), n - math.ceil(min_sparsity * n))
    # This layer keeps keep_budget - (what the rest keeps): numel - count weights.
    low = math.ceil(numel - keep_budget + low_keep)
    high = math.floor(numel - keep_budget + high_keep)
    return low, high


def feasible_counts(
    index: int, numels: Sequence[int], pruned_so_far: int, target_count: int | None,
    min_sparsity: float, max_sparsity: float, spread: tuple[Sequence[int], float] | None = None,
) -> tuple[int, int]:
    """The projection: bounds on the weights layer ``index`` may lose.

    Every layer stays within ``[min_sparsity, max_sparsity]`` (its cap); with a target
    (``target_count`` weights pruned in all), the layers after ``index`` must still be able to
    reach it exactly without overshooting. With ``spread = (global_mp_counts, relative_range)``
    the bounds are narrowed by :func:`spread_bounds` (to the exact counts nearest to them where
    the two do not meet).
    Returns ``(low, high)`` with ``low <= high``.
    """
    numel = numels[index]
    low, high = math.ceil(min_sparsity * numel), math.floor(max_sparsity * numel)
    if target_count is None:
        return low, high
    rest = numels[index + 1:]
    still_needed = target_count - pruned_so_far
    low = max(low, still_needed - sum(math.floor(max_sparsity * n) for n in rest))
    high = min(high, still_needed - sum(math.ceil(min_sparsity * n) for n in rest))
    if spread is not None and rest:
        spread_low, spread_high = spread_bounds(
            index, numels, spread[0], pruned_so_far, target_count, spread[1], min_sparsity, max_sparsity
        )
        high = max(low, high)
        # Exactness first, then the spread: where the two intervals do not meet (Global MP itself
        # beyond the caps, or a history from outside the bounds), the exact count nearest to them.
        low, high = min(max(spread_low, low), high), max(min(spread_high, high), low)
    return low, max(low, high)


@dataclass(frozen=True)
class ActionMap:
    """The action space of one env and the map between its actions and layer sparsities."""

    action_type: str = "discrete"
    mode: str = "relative"
    n_actions: int | None = None
    min_sparsity: float = 0.0
    max_sparsity: float = 0.99
    relative_range: float = DEFAULT_RELATIVE_RANGE

    def __post_init__(self) -> None:
        if self.action_type not in ACTION_TYPES:
            raise ConfigError(f"action_type must be one of {ACTION_TYPES}, got {self.action_type!r}")
        if self.mode not in ACTION_MODES:
            raise ConfigError(f"action_mode must be one of {ACTION_MODES}, got {self.mode!r}")
        n = self.n_actions
        if self.action_type == "discrete":
            if n is None:
                object.__setattr__(self, "n_actions", DEFAULT_N_ACTIONS[self.mode])
            elif isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 2:
                raise ConfigError(f"n_actions must be an integer >= 2 for discrete actions, got {n!r}")
            elif self.mode == "relative" and n % 2 == 0:
                raise ConfigError(
                    f"n_actions must be odd with action_mode='relative' (the centre action takes Global MP's "
                    f"sparsity exactly), got {n}: use {n + 1} or {n - 1}, or action_mode='absolute'"
                )
        r = self.relative_range
        if isinstance(r, bool) or not isinstance(r, int | float | np.number) or not (math.isfinite(r) and 0 < r <= MAX_RELATIVE_RANGE):
            raise ConfigError(f"relative_range must be a number in (0, {MAX_RELATIVE_RANGE:g}] (the largest logit step; "
                             f"{MAX_RELATIVE_RANGE:g} already moves a layer's keep ~150-fold), got {r!r}")

    @property
    def levels(self) -> np.ndarray | None:
        """The discrete actions' values: sparsities (absolute) or logit steps (relative)."""
        if self.action_type != "discrete":
            return None
        if self.mode == "absolute":
            return np.linspace(self.min_sparsity, self.max_sparsity, int(self.n_actions))
        steps = np.linspace(-self.relative_range, self.relative_range, int(self.n_actions))
        steps[len(steps) // 2] = 0.0  # exactly: the centre action takes the reference
        return steps

    def space(self) -> spaces.Space:
        if self.action_type == "discrete":
            return spaces.Discrete(int(self.n_actions))
        return spaces.Box(-1.0, 1.0, (1,), np.float32)

    def value_of(self, action: object) -> float:
        """The level (discrete) or the number in [-1, 1] (continuous) an action stands for;
        ValueError, naming what to give instead, if the action is not in the action space."""
        if self.action_type == "discrete":
            if isinstance(action, np.ndarray) and action.shape in ((1,), ()) and np.issubdtype(action.dtype, np.integer):
                action = action.reshape(-1)[0]
            if isinstance(action, bool | np.bool_) or not isinstance(action, int | np.integer) or not 0 <= int(action) < self.n_actions:
                raise ConfigError(
                    f"action {action!r} is not in {self.space()}: give an integer in [0, {self.n_actions - 1}]"
                )
            return float(self.levels[int(action)])
        # What the Box contains, plus a plain real number: no strings, bools, complex numbers or
        # other shapes (a (1, 1) array is a batch, not an action).
        is_number = isinstance(action, int | float | np.integer | np.floating) and not isinstance(action, bool | np.bool_)
        is_array = isinstance(action, np.ndarray) and action.shape in ((1,), ()) and np.issubdtype(action.dtype, np.number) \
            and not np.issubdtype(action.dtype, np.complexfloating)
        value = np.asarray(action, dtype=np.float64).reshape(-1) if is_number or is_array else None
        if value is None or not np.isfinite(value).all() or not -1.0 <= float(value[0]) <= 1.0:
            raise ConfigError(
                f"action {action!r} is not in {self.space()}: give one finite real number in [-1, 1] "
                "(a float or an array of shape (1,))"
            )
        return float(value[0])

    def to_sparsity(self, action: object, reference: float) -> float:
        """The sparsity ``action`` requests for a layer whose reference sparsity is ``reference``."""
        return float(self.to_sparsities(np.array([self.value_of(action)]), np.array([reference]), values=True)[0])

    def to_sparsities(self, actions: np.ndarray, references: np.ndarray, values: bool = False) -> np.ndarray:
        """Vectorised :meth:`to_sparsity` (``values=True``: ``actions`` are already levels /
        numbers in [-1, 1], as :meth:`value_of` returns them)."""
        actions = np.asarray(actions, dtype=np.float64).reshape(-1)
        if not values and self.action_type == "discrete":
            actions = self.levels[actions.astype(np.int64)]
        if self.mode == "absolute":
            if self.action_type == "discrete":
                sparsities = actions
            else:
                sparsities = self.min_sparsity + (actions + 1.0) / 2.0 * (self.max_sparsity - self.min_sparsity)
        else:
            steps = actions if self.action_type == "discrete" else actions * self.relative_range
            references = np.asarray(references, dtype=np.float64).reshape(-1)
            moved = _sigmoid(_logit(references) + steps)
            # A step never moves the wrong way (from a reference outside the logit interval).
            moved = np.where(steps > 0.0, np.maximum(moved, references), np.minimum(moved, references))
            sparsities = np.where(steps == 0.0, references, moved)
        return np.clip(sparsities, self.min_sparsity, self.max_sparsity)

    def to_actions(self, sparsities: np.ndarray, references: np.ndarray) -> np.ndarray:
        """The actions that request ``sparsities`` (the nearest level for discrete actions):
        ``(n,)`` int64 for discrete, ``(n, 1)`` float32 for continuous actions."""
        sparsities = np.clip(np.asarray(sparsities, dtype=np.float64).reshape(-1), self.min_sparsity, self.max_sparsity)
        if self.mode == "absolute":
            if self.action_type == "discrete":
                return np.argmin(np.abs(self.levels[None, :] - sparsities[:, None]), axis=1).astype(np.int64)
            fraction = (sparsities - self.min_sparsity) / (self.max_sparsity - self.min_sparsity)
            return (2.0 * fraction - 1.0).astype(np.float32)[:, None]
        references = np.asarray(references, dtype=np.float64).reshape(-1)
        steps = np.where(np.abs(sparsities - references) < _SAME, 0.0, _logit(sparsities) - _logit(references))
        if self.action_type == "discrete":
            return np.argmin(np.abs(self.levels[None, :] - steps[:, None]), axis=1).astype(np.int64)
        return np.clip(steps / self.relative_range, -1.0, 1.0).astype(np.float32)[:, None]
