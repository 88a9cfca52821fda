"""Step 3: erosion until two similar cores, nearest-core split, main parts, 2D holes."""

from __future__ import annotations

import numpy as np

from survfed.common.imaging.preprocess.config import PreprocessConfig
from survfed.common.imaging.preprocess.separate import fill_holes_2d, separate_lungs

CONFIG = PreprocessConfig(spacing_mm=2.0)


def _ellipsoid(shape, centre, axes) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (
        ((z - centre[0]) / axes[0]) ** 2
        + ((y - centre[1]) / axes[1]) ** 2
        + ((x - centre[2]) / axes[2]) ** 2
    ) < 1


def test_two_lungs_joined_by_a_bridge_are_split_left_right() -> None:
    shape = (50, 60, 90)
    right = _ellipsoid(shape, (25, 30, 25), (20, 20, 15))  # low x = patient right
    left = _ellipsoid(shape, (25, 30, 64), (20, 20, 13))
    bridge = np.zeros(shape, dtype=bool)
    bridge[23:27, 28:32, 25:65] = True  # 4 x 4 voxel airway: gone after 2 erosions
    vessel = np.zeros(shape, dtype=bool)
    vessel[25, 28:31, 22:25] = True  # a 2D hole inside the right lung
    mask = (right | left | bridge) & ~vessel
    result = separate_lungs(mask, CONFIG)
    assert result.separated and result.erosion == 2
    assert (result.right & result.left).sum() == 0
    assert (result.right | result.left).sum() >= (right | left).sum()  # hole filled, bridge kept
    assert result.right[right].all() and result.left[left].all()
    assert result.right[25, 28:31, 22:25].all()  # the vessel hole is filled
    # the bridge is split at the mid-point between the cores (Euclidean, nearest core)
    cut = np.flatnonzero(result.left[25, 30])
    assert 43 <= cut[0] <= 46


def test_one_blob_is_one_lung() -> None:
    mask = _ellipsoid((40, 40, 40), (20, 20, 20), (15, 15, 15))
    result = separate_lungs(mask, CONFIG)
    assert not result.separated
    assert (result.right == mask).all() and not result.left.any()


def test_small_detached_pieces_are_dropped_unless_inside_the_hull() -> None:
    shape = (30, 50, 80)
    right = _ellipsoid(shape, (15, 25, 20), (12, 15, 12))
    left = _ellipsoid(shape, (15, 25, 60), (12, 15, 12))
    crumb = np.zeros(shape, dtype=bool)
    crumb[15, 4:6, 4:6] = True  # far outside the right lung: dropped
    result = separate_lungs(right | left | crumb, CONFIG)
    assert result.separated
    assert not result.right[15, 4:6, 4:6].any()
    assert result.right.sum() == right.sum() and result.left.sum() == left.sum()


def test_fill_holes_2d_is_per_slice() -> None:
    mask = np.zeros((3, 10, 10), dtype=bool)
    mask[:, 2:8, 2:8] = True
    mask[1, 4:6, 4:6] = False  # hole in slice 1
    mask[0, 4:6, 4:6] = False
    mask[0, 4:6, 7] = False  # slice 0: the gap opens the hole to the outside
    mask[0, 4:6, 6] = False
    out = fill_holes_2d(mask)
    assert out[1, 4:6, 4:6].all() and not out[0, 4:6, 4:6].any()
