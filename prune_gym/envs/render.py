"""Rendering of a PruneEnv: a per-layer table (ansi) and per-layer sparsity bars (rgb_array); of a
ChannelPruneEnv: a per-group table (ansi)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from prune_gym.envs.channel_env import ChannelPruneEnv
    from prune_gym.envs.prune_env import PruneEnv


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def render_ansi(env: PruneEnv) -> str:
    """The per-layer table: requested and applied sparsity, Global MP's, accuracy after the step."""
    global_mp = env.global_mp_sparsities()
    header = f"{'#':>3}  {'layer':<28} {'kind':<9} {'weights':>9} {'requested':>9} {'applied':>8} {'globalMP':>8} {'acc':>6}"
    lines = [header, "-" * len(header)]
    for i, layer in enumerate(env.layers):
        marker = ">" if env.current_layer == i else " "
        lines.append(
            f"{marker}{i:>2}  {layer.name[-28:]:<28} {layer.kind:<9} {layer.numel:>9} "
            f"{_fmt(env.requested[i]):>9} {_fmt(env.applied[i]):>8} {global_mp[i]:>8.3f} {_fmt(env.accuracies[i]):>6}"
        )
    target = "none" if env.target_sparsity is None else f"{env.target_sparsity:.3f}"
    lines.append(
        f"overall sparsity {env.state.overall_sparsity():.4f} (target {target}), "
        f"reward-split accuracy {env.reward_accuracy:.4f} (dense {env.dense_reward_accuracy:.4f})"
    )
    if env.synthetic:
        lines.append("SYNTHETIC: random weights and random data, for mechanics and speed only")
    return "\n".join(lines) + "\n"


def render_channels_ansi(env: ChannelPruneEnv) -> str:
    """The per-group table: channels and channels removed so far; the reductions and the accuracy."""
    rows = [f"{'group':<28} {'channels':>8} {'removed':>8}"]
    for group, applied in zip(env.groups, env.applied, strict=True):
        removed = "-" if applied is None else f"{round(applied * group.channels)}"
        rows.append(f"{group.name:<28} {group.channels:>8} {removed:>8}")
    reductions = env._reductions(env._removed)
    latency = f", predicted latency removed {reductions['latency']:.3f}" if "latency" in reductions else ""
    rows.append(f"FLOPs removed {reductions['flops']:.3f}, parameters removed {reductions['params']:.3f}{latency}, "
                f"reward-split accuracy {env.reward_accuracy:.4f}")
    return "\n".join(rows)


def render_rgb_array(env: PruneEnv) -> np.ndarray:
    """Per-layer sparsity bars, requested vs applied vs Global MP, as an RGB image (H, W, 3)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    count = env.num_layers
    positions = np.arange(count)
    width = 0.28
    requested = [np.nan if v is None else v for v in env.requested]
    applied = [np.nan if v is None else v for v in env.applied]
    figure = Figure(figsize=(max(6.0, 0.25 * count), 3.2), dpi=100)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.bar(positions - width, requested, width, label="requested", color="#9ecae1")
    axes.bar(positions, applied, width, label="applied", color="#3182bd")
    axes.bar(positions + width, env.global_mp_sparsities(), width, label="Global MP", color="#fd8d3c")
    axes.set_xlim(-0.8, count - 0.2)
    axes.set_ylim(0, 1)
    axes.set_xlabel("layer (forward order)")
    axes.set_ylabel("sparsity")
    axes.set_title(f"overall sparsity {env.state.overall_sparsity():.3f}")
    axes.legend(loc="upper left", fontsize=7, ncols=3)
    figure.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
