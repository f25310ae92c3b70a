"""Writes a miniature "UCI HAR Dataset" folder in the archive's real layout and text format."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIGNALS = [f"{sensor}_{axis}" for sensor in ("body_acc", "body_gyro", "total_acc") for axis in ("x", "y", "z")]


def _format_row(values: np.ndarray) -> str:
    # The archive writes each value as "  2.5717778e-001" (two spaces, sign only if negative).
    return "".join(f"  {v:.7e}" if v >= 0 else f" {v:.7e}" for v in values) + "\n"


def write_uci_har(
    root: Path,
    train_subjects: tuple[int, ...] = (1, 3, 5, 6, 7),
    test_subjects: tuple[int, ...] = (2, 4),
    windows_per_subject: int = 6,
    seed: int = 0,
) -> tuple[Path, dict[str, dict[str, np.ndarray]]]:
    """Write ``root/UCI HAR Dataset/{train,test}/...``; return the folder and the raw arrays.

    Activities cycle through 1..6 per subject. Each channel has its own offset and scale (so
    normalisation has work to do), and class-1 activities (2, 4, 6) oscillate three times
    faster than the others (so a model can learn HAR-2 from a few windows).
    """
    rng = np.random.default_rng(seed)
    folder = root / "UCI HAR Dataset"
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for part, subjects in (("train", train_subjects), ("test", test_subjects)):
        subject_ids = np.repeat(np.array(subjects), windows_per_subject)
        activities = np.tile(np.arange(1, 7), len(subject_ids) // 6 + 1)[: len(subject_ids)]
        time = np.arange(128) / 50.0
        frequency = np.where(activities % 2 == 0, 3.0, 1.0)[:, None]
        base = np.sin(2 * np.pi * frequency * time[None, :])
        signals = np.stack(
            [
                0.1 * channel + (1.0 + 0.5 * channel) * base + 0.1 * rng.standard_normal(base.shape)
                for channel in range(9)
            ],
            axis=-1,
        )  # (N, 128, 9)
        inertial = folder / part / "Inertial Signals"
        inertial.mkdir(parents=True)
        for channel, name in enumerate(SIGNALS):
            with open(inertial / f"{name}_{part}.txt", "w") as handle:
                handle.writelines(_format_row(row) for row in signals[:, :, channel])
        (folder / part / f"y_{part}.txt").write_text("".join(f"{a}\n" for a in activities))
        (folder / part / f"subject_{part}.txt").write_text("".join(f"{s}\n" for s in subject_ids))
        arrays[part] = {"inputs": signals, "activities": activities, "subjects": subject_ids}
    return folder, arrays
