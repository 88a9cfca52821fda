"""Step 5: intensities to uint8, fill outside the mask, bone clipping, crop (seed 003 §III.B.3).

HU are clipped to ``hu_window`` ([-1200, 600]) and mapped linearly to [0, 255] (truncated, as the
paper's code). Outside the final mask every voxel is ``pad_value`` (170, soft tissue); in the
band the hulls and the dilation added around the lungs, values above ``bone_threshold`` (210)
become ``pad_value`` too, so ribs and vertebrae do not look like calcified nodules. The crop is
the lungs' bounding box grown by ``margin_mm`` on every side (clipped to the grid); it holds the
whole final mask whenever the margin is at least the dilation.
"""

from __future__ import annotations

import numpy as np

from survfed.common.imaging.preprocess.config import PreprocessConfig

__all__ = ["crop_box", "normalize", "to_uint8"]


def to_uint8(hu: np.ndarray, hu_window: tuple[float, float], nan_hu: float) -> np.ndarray:
    """``floor(255 * clip((hu - lo) / (hi - lo), 0, 1))`` as uint8; NaN counts as ``nan_hu``.

    Args:
        hu: float32 HU, any shape.
    """
    lo, hi = (np.float32(v) for v in hu_window)
    scaled = np.nan_to_num(hu.astype(np.float32, copy=False), nan=np.float32(nan_hu))
    scaled = (scaled - lo) / (hi - lo)
    np.clip(scaled, np.float32(0), np.float32(1), out=scaled)
    scaled *= np.float32(255)
    return scaled.astype(np.uint8)


def crop_box(lungs: np.ndarray, margin: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Start and stop ``(z, y, x)`` of the lungs' bounding box grown by ``margin``, clipped.

    Args:
        lungs: bool ``(Z, Y, X)``, not empty.
    """
    start, stop = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(lungs.any(axis=other))
        start.append(max(0, int(hit[0]) - margin))
        stop.append(min(lungs.shape[axis], int(hit[-1]) + 1 + margin))
    return tuple(start), tuple(stop)  # type: ignore[return-value]


def normalize(
    hu: np.ndarray, lungs: np.ndarray, mask: np.ndarray, config: PreprocessConfig
) -> np.ndarray:
    """The detector's input on one grid (usually the crop).

    Args:
        hu: float32 ``(Z, Y, X)`` HU (NaN = not measured, treated as ``outside_hu``).
        lungs: bool, the lungs after step 3.
        mask: bool, the final mask of step 4.

    Returns:
        uint8 ``(Z, Y, X)``.
    """
    image = to_uint8(hu, config.hu_window, config.outside_hu)
    pad = np.uint8(config.pad_value)
    image[~mask] = pad
    band = mask & ~lungs
    image[band & (image > config.bone_threshold)] = pad
    return image
